//! Conversions between domain types and protocol messages.

use mission_control_proto::prost_types;
use mission_control_proto::v1 as pb;

use crate::engine::{
    Agent, Event, EventKind, GatewayState, GatewayTransition, PendingRetire, Reason, Role, Status,
    Timestamp, WakeOrder,
};
use crate::runtime::{GatewayCommand, GatewayView};

pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    let micros = t.as_micros();
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn opt_timestamp(t: Option<Timestamp>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

pub fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn status(s: Status) -> pb::AgentStatus {
    match s {
        Status::Provisioning => pb::AgentStatus::Provisioning,
        Status::Updating => pb::AgentStatus::Updating,
        Status::Online => pb::AgentStatus::Online,
        Status::Offline => pb::AgentStatus::Offline,
    }
}

pub fn status_from(s: pb::AgentStatus) -> Option<Status> {
    match s {
        pb::AgentStatus::Unspecified => None,
        pb::AgentStatus::Provisioning => Some(Status::Provisioning),
        pb::AgentStatus::Updating => Some(Status::Updating),
        pb::AgentStatus::Online => Some(Status::Online),
        pb::AgentStatus::Offline => Some(Status::Offline),
    }
}

pub fn role(r: Role) -> pb::AgentRole {
    match r {
        Role::GatewayMain => pb::AgentRole::GatewayMain,
        Role::BoardLead => pb::AgentRole::BoardLead,
        Role::BoardWorker => pb::AgentRole::BoardWorker,
    }
}

pub fn role_from(r: pb::AgentRole) -> Option<Role> {
    match r {
        pb::AgentRole::Unspecified => None,
        pb::AgentRole::GatewayMain => Some(Role::GatewayMain),
        pb::AgentRole::BoardLead => Some(Role::BoardLead),
        pb::AgentRole::BoardWorker => Some(Role::BoardWorker),
    }
}

pub fn agent(a: &Agent) -> pb::Agent {
    pb::Agent {
        id: a.id.to_string(),
        name: a.name.to_string(),
        gateway_id: a.gateway_id.to_string(),
        board_id: a
            .board_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        role: role(a.role).into(),
        status: status(a.status).into(),
        generation: a.generation,
        wake_attempts: a.wake_attempts,
        last_wake_sent_at: opt_timestamp(a.last_wake_sent_at),
        checkin_deadline_at: opt_timestamp(a.checkin_deadline_at),
        last_seen_at: opt_timestamp(a.last_seen_at),
        lease_expires_at: opt_timestamp(a.lease_expires_at),
        last_provision_error: a
            .last_provision_error
            .clone()
            .map(String::from)
            .unwrap_or_default(),
        offline_reason: a
            .offline_reason
            .clone()
            .map(String::from)
            .unwrap_or_default(),
        desired_template_version: a.desired_template_version.to_string(),
        reported_template_version: a.reported_template_version.to_string(),
        created_at: Some(timestamp(a.created_at)),
        updated_at: Some(timestamp(a.updated_at)),
        revision: a.revision,
        wake_held: a.wake_held,
    }
}

fn reason(r: Reason) -> pb::TransitionReason {
    use pb::TransitionReason as T;
    match r {
        Reason::Provisioned => T::Provisioned,
        Reason::Updated => T::Updated,
        Reason::Woken => T::Woken,
        Reason::DeadlineMissed => T::DeadlineMissed,
        Reason::MaxAttemptsReached => T::MaxAttemptsReached,
        Reason::CheckedIn => T::CheckedIn,
        Reason::LeaseExpired => T::LeaseExpired,
        Reason::WakeFailed => T::WakeFailed,
        Reason::RestartGrace => T::RestartGrace,
        Reason::TemplateReported => T::TemplateReported,
        Reason::Deleted => T::Deleted,
        Reason::RolloutUpdate => T::RolloutUpdate,
        Reason::WakeHeld => T::WakeHeld,
        Reason::WakeReleased => T::WakeReleased,
    }
}

pub fn event(e: &Event) -> pb::AgentEvent {
    pb::AgentEvent {
        revision: e.revision,
        r#type: match e.kind {
            EventKind::Added => pb::EventType::Added,
            EventKind::Changed => pb::EventType::Changed,
            EventKind::Deleted => pb::EventType::Deleted,
        }
        .into(),
        agent: Some(agent(&e.agent)),
        previous_status: e
            .previous_status
            .map_or(pb::AgentStatus::Unspecified, status)
            .into(),
        reason: reason(e.reason).into(),
        description: e.description(),
        attempt: e.attempt,
        error: e.error.clone().unwrap_or_default(),
        at: Some(timestamp(e.at)),
        rollout_id: e
            .rollout_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// A snapshot entry: the agent as it is, at the revision of its last change.
pub fn snapshot_event(a: &Agent) -> pb::AgentEvent {
    pb::AgentEvent {
        revision: a.revision,
        r#type: pb::EventType::Added.into(),
        agent: Some(agent(a)),
        previous_status: pb::AgentStatus::Unspecified.into(),
        reason: pb::TransitionReason::Snapshot.into(),
        description: "current state".into(),
        attempt: a.wake_attempts,
        error: a
            .last_provision_error
            .clone()
            .map(String::from)
            .unwrap_or_default(),
        at: Some(timestamp(a.updated_at)),
        rollout_id: String::new(),
    }
}

pub fn gateway(view: &GatewayView) -> pb::Gateway {
    pb::Gateway {
        id: view.gateway.id.to_string(),
        name: view.gateway.name.clone(),
        connected: view.connected_since.is_some(),
        connected_since: opt_timestamp(view.connected_since),
        created_at: Some(timestamp(view.gateway.created_at)),
        state: gateway_state(view.gateway.state()).into(),
        state_since: Some(timestamp(view.gateway.state_since().0)),
        state_reason: view.gateway.state_since().1.to_owned(),
        commands_pending: view.commands_pending as u32,
    }
}

fn gateway_state(state: GatewayState) -> pb::GatewayState {
    match state {
        GatewayState::Connected => pb::GatewayState::Connected,
        GatewayState::Disconnected => pb::GatewayState::Disconnected,
        GatewayState::Suspected => pb::GatewayState::Suspected,
        GatewayState::Draining => pb::GatewayState::Draining,
    }
}

pub fn gateway_transition(t: &GatewayTransition) -> pb::GatewayTransition {
    pb::GatewayTransition {
        gateway_id: t.gateway_id.to_string(),
        at: Some(timestamp(t.at)),
        from: gateway_state(t.from).into(),
        to: gateway_state(t.to).into(),
        reason: t.reason.clone(),
        wakes_released: t.wakes_released,
    }
}

pub fn gateway_command(command_id: u64, command: &GatewayCommand) -> pb::GatewayCommand {
    let command = match command {
        GatewayCommand::Wake(order) => pb::gateway_command::Command::Wake(wake(order)),
        GatewayCommand::Retire(retire) => {
            pb::gateway_command::Command::Retire(retire_command(retire))
        }
        GatewayCommand::TemplateSync(sync) => {
            pb::gateway_command::Command::TemplateSync(pb::TemplateSyncCommand {
                template_version: sync.template_version.clone(),
            })
        }
    };
    pb::GatewayCommand {
        command_id: command_id.to_string(),
        command: Some(command),
    }
}

fn wake(order: &WakeOrder) -> pb::WakeCommand {
    pb::WakeCommand {
        agent_id: order.agent_id.to_string(),
        agent_name: order.agent_name.clone(),
        board_id: order
            .board_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        role: role(order.role).into(),
        generation: order.generation,
        attempt: order.attempt,
        template_version: order.template_version.clone(),
        checkin_deadline_at: Some(timestamp(order.checkin_deadline_at)),
    }
}

fn retire_command(retire: &PendingRetire) -> pb::RetireCommand {
    pb::RetireCommand {
        agent_id: retire.agent_id.to_string(),
        generation: retire.generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_before_and_after_the_epoch() {
        let t = timestamp(Timestamp::from_micros(1_500_000));
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
        let t = timestamp(Timestamp::from_micros(-1_500_000));
        assert_eq!((t.seconds, t.nanos), (-2, 500_000_000));
    }

    #[test]
    fn every_status_and_role_round_trips() {
        for s in Status::ALL {
            assert_eq!(status_from(status(s)), Some(s));
        }
        for r in Role::ALL {
            assert_eq!(role_from(role(r)), Some(r));
        }
    }
}
