//! JSON for scripts. Field names follow the protocol's (snake_case) and do
//! not change; enums are short lowercase names (see `names`), timestamps are
//! RFC3339 strings or null.

use mission_control_client::{
    Agent, AgentEvent, Gateway, GatewayTransition, HeartbeatResponse, HeartbeatSeen,
    WatchAgentResponse, watch_agent_response::Kind,
};
use serde_json::{Value, json};

use crate::names;
use crate::time::rfc3339_or_null;

pub fn agent(agent: &Agent) -> Value {
    json!({
        "id": agent.id,
        "name": agent.name,
        "gateway_id": agent.gateway_id,
        "board_id": agent.board_id,
        "role": names::role(agent.role),
        "status": names::status(agent.status),
        "generation": agent.generation,
        "wake_attempts": agent.wake_attempts,
        "wake_held": agent.wake_held,
        "last_wake_sent_at": rfc3339_or_null(&agent.last_wake_sent_at),
        "checkin_deadline_at": rfc3339_or_null(&agent.checkin_deadline_at),
        "last_seen_at": rfc3339_or_null(&agent.last_seen_at),
        "lease_expires_at": rfc3339_or_null(&agent.lease_expires_at),
        "last_provision_error": agent.last_provision_error,
        "offline_reason": agent.offline_reason,
        "desired_template_version": agent.desired_template_version,
        "reported_template_version": agent.reported_template_version,
        "created_at": rfc3339_or_null(&agent.created_at),
        "updated_at": rfc3339_or_null(&agent.updated_at),
        "revision": agent.revision,
    })
}

pub fn gateway(gateway: &Gateway) -> Value {
    json!({
        "id": gateway.id,
        "name": gateway.name,
        "connected": gateway.connected,
        "connected_since": rfc3339_or_null(&gateway.connected_since),
        "state": names::gateway_state(gateway.state),
        "state_since": rfc3339_or_null(&gateway.state_since),
        "state_reason": gateway.state_reason,
        "commands_pending": gateway.commands_pending,
        "created_at": rfc3339_or_null(&gateway.created_at),
    })
}

pub fn gateway_transition(transition: &GatewayTransition) -> Value {
    json!({
        "gateway_id": transition.gateway_id,
        "at": rfc3339_or_null(&transition.at),
        "from": names::gateway_state(transition.from),
        "to": names::gateway_state(transition.to),
        "reason": transition.reason,
        "wakes_released": transition.wakes_released,
    })
}

pub fn event(event: &AgentEvent) -> Value {
    json!({
        "revision": event.revision,
        "type": names::event_type(event.r#type),
        "reason": names::reason(event.reason),
        "description": event.description,
        "attempt": event.attempt,
        "error": event.error,
        "previous_status": names::status(event.previous_status),
        "at": rfc3339_or_null(&event.at),
        "rollout_id": event.rollout_id,
        "agent": event.agent.as_ref().map_or(Value::Null, agent),
    })
}

pub fn heartbeat_reply(reply: &HeartbeatResponse) -> Value {
    json!({
        "agent_id": reply.agent_id,
        "status": names::status(reply.status),
        "generation": reply.generation,
        "next_heartbeat_at": rfc3339_or_null(&reply.next_heartbeat_at),
        "next_heartbeat_in_ms": reply
            .next_heartbeat_in
            .as_ref()
            .map(|d| mission_control_client::to_duration(d).as_millis() as u64),
        "lease_expires_at": rfc3339_or_null(&reply.lease_expires_at),
    })
}

/// One watch stream message as one line: `kind` says which of the four.
pub fn watch_item(message: &WatchAgentResponse) -> Option<Value> {
    let value = match message.kind.as_ref()? {
        Kind::Event(e) => {
            let mut value = event(e);
            value["kind"] = "event".into();
            value
        }
        Kind::SnapshotComplete(marker) => {
            json!({"kind": "snapshot_complete", "revision": marker.revision})
        }
        Kind::Bookmark(bookmark) => json!({"kind": "bookmark", "revision": bookmark.revision}),
        Kind::Heartbeat(seen) => heartbeat_seen(seen),
    };
    Some(value)
}

fn heartbeat_seen(seen: &HeartbeatSeen) -> Value {
    json!({
        "kind": "heartbeat",
        "agent_id": seen.agent_id,
        "last_seen_at": rfc3339_or_null(&seen.last_seen_at),
        "lease_expires_at": rfc3339_or_null(&seen.lease_expires_at),
    })
}

#[cfg(test)]
mod tests {
    use mission_control_client::{AgentStatus, Bookmark, EventType, TransitionReason};
    use prost_types::Timestamp;

    use super::*;

    #[test]
    fn agents_have_stable_names_and_readable_values() {
        let value = agent(&Agent {
            id: "a1".into(),
            gateway_id: "gw".into(),
            status: AgentStatus::Offline as i32,
            wake_attempts: 3,
            offline_reason: "no check-in after 3 wake attempts".into(),
            last_seen_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Agent::default()
        });
        assert_eq!(value["id"], "a1");
        assert_eq!(value["status"], "offline");
        assert_eq!(value["role"], "unspecified");
        assert_eq!(value["wake_attempts"], 3);
        assert_eq!(value["last_seen_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(value["checkin_deadline_at"], Value::Null);
    }

    #[test]
    fn watch_items_say_what_kind_they_are() {
        let event = WatchAgentResponse {
            kind: Some(Kind::Event(AgentEvent {
                revision: 9,
                r#type: EventType::Changed as i32,
                reason: TransitionReason::CheckedIn as i32,
                agent: Some(Agent {
                    id: "a1".into(),
                    ..Agent::default()
                }),
                ..AgentEvent::default()
            })),
        };
        let value = watch_item(&event).unwrap();
        assert_eq!(value["kind"], "event");
        assert_eq!(value["type"], "changed");
        assert_eq!(value["reason"], "checked_in");
        assert_eq!(value["agent"]["id"], "a1");

        let bookmark = WatchAgentResponse {
            kind: Some(Kind::Bookmark(Bookmark { revision: 4 })),
        };
        assert_eq!(
            watch_item(&bookmark).unwrap(),
            json!({"kind": "bookmark", "revision": 4})
        );
        assert!(watch_item(&WatchAgentResponse { kind: None }).is_none());
    }
}
