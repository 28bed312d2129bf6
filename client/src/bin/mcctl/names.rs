//! Short, stable names for protocol enums, shared by tables and JSON:
//! `AGENT_STATUS_ONLINE` -> `online`, `TRANSITION_REASON_DEADLINE_MISSED`
//! -> `deadline_missed`. Unknown numbers (a newer server) print as numbers.

use mission_control_client::{AgentRole, AgentStatus, EventType, GatewayState, TransitionReason};

pub fn status(value: i32) -> String {
    short(
        AgentStatus::try_from(value).map(|s| s.as_str_name()),
        "AGENT_STATUS_",
        value,
    )
}

/// Roles as the CLI takes them: `board-worker`.
pub fn role(value: i32) -> String {
    short(
        AgentRole::try_from(value).map(|r| r.as_str_name()),
        "AGENT_ROLE_",
        value,
    )
    .replace('_', "-")
}

pub fn reason(value: i32) -> String {
    short(
        TransitionReason::try_from(value).map(|r| r.as_str_name()),
        "TRANSITION_REASON_",
        value,
    )
}

pub fn gateway_state(value: i32) -> String {
    short(
        GatewayState::try_from(value).map(|s| s.as_str_name()),
        "GATEWAY_STATE_",
        value,
    )
}

pub fn event_type(value: i32) -> String {
    short(
        EventType::try_from(value).map(|t| t.as_str_name()),
        "EVENT_TYPE_",
        value,
    )
}

fn short<E>(name: Result<&str, E>, prefix: &str, value: i32) -> String {
    match name {
        Ok(name) => name.trim_start_matches(prefix).to_ascii_lowercase(),
        Err(_) => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_the_prefix_and_shout_less() {
        assert_eq!(status(AgentStatus::Online as i32), "online");
        assert_eq!(role(AgentRole::BoardWorker as i32), "board-worker");
        assert_eq!(
            reason(TransitionReason::DeadlineMissed as i32),
            "deadline_missed"
        );
        assert_eq!(event_type(EventType::Deleted as i32), "deleted");
        assert_eq!(status(99), "99");
    }
}
