//! Held wakes with the real server on Postgres and the client library's
//! gateway helper: wakes for a gateway that is away are held, not counted,
//! survive a restart of the server, and reach the gateway when it connects,
//! once each, in the order they fell due, within its wake rate, each with a
//! check-in deadline from its delivery.

use std::time::{Duration, SystemTime};

use mission_control_client::gateway::GatewayEvent;
use mission_control_client::{AgentRole, ProvisionRequest, TransitionReason};

use crate::support::*;

const AGENTS: usize = 40;
const RATE: usize = 20;

fn at(timestamp: &Option<prost_types::Timestamp>) -> SystemTime {
    let t = timestamp.as_ref().expect("a timestamp");
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

#[tokio::test]
async fn held_wakes_survive_a_restart_and_reach_the_gateway_once_each_in_order_within_its_rate() {
    let db = database().await;
    let flags = || {
        let mut flags = fast_flags(db.url());
        set_flag(&mut flags, "--checkin-deadline", "30s");
        set_flag(&mut flags, "--gateway-grace", "3m");
        set_flag(&mut flags, "--gateway-wake-rate", &RATE.to_string());
        flags
    };
    let first = within("the first start", spawn_app(flags())).await;
    let token = within("registering", first.gateway("gw")).await;
    // The gateway has never connected: every wake is held. Provisioned in
    // the reverse of id order, so the order they fell due in is not the
    // order of their ids.
    let agents: Vec<String> = (0..AGENTS).rev().map(|n| format!("h{n:02}")).collect();
    for agent in &agents {
        let request = ProvisionRequest::new(agent.as_str(), "gw", AgentRole::GatewayMain);
        within("provisioning", first.operator.provision(request))
            .await
            .unwrap();
    }
    within("stopping", first.app.shutdown()).await;

    let second = within("the second start", spawn_app(flags())).await;
    for agent in &agents {
        let held = second.operator.get(agent).await.unwrap();
        assert!(held.wake_held, "held across the restart: {held:?}");
        assert_eq!(held.wake_attempts, 1, "not counted");
        assert_eq!(held.last_provision_error, "");
    }

    let mut gateway = second.connect_gateway(&token);
    connected(&mut gateway).await;
    let mut received = Vec::new();
    while received.len() < AGENTS {
        let event = within("the held wakes", gateway.recv()).await;
        match event.expect("the gateway stream stays open") {
            GatewayEvent::Wake { command, ack } => {
                within("acknowledging", ack.delivered()).await.unwrap();
                received.push(command);
            }
            GatewayEvent::Connected { .. } | GatewayEvent::Disconnected { .. } => {}
            other => panic!("expected held wakes, got {other:?}"),
        }
    }
    let order: Vec<&str> = received.iter().map(|c| c.agent_id.as_str()).collect();
    assert_eq!(order, agents, "in the order they fell due");

    // Each went out once, as the attempt that was held, with a deadline
    // from its own delivery; no faster than the gateway's rate.
    let mut sent_at = Vec::new();
    for command in &received {
        assert_eq!((command.generation, command.attempt), (1, 1));
        let agent = second.operator.get(&command.agent_id).await.unwrap();
        assert!(!agent.wake_held);
        assert_eq!(agent.wake_attempts, 1);
        assert_eq!(agent.checkin_deadline_at, command.checkin_deadline_at);
        let sent = at(&agent.last_wake_sent_at);
        assert_eq!(
            sent + Duration::from_secs(30),
            at(&agent.checkin_deadline_at)
        );
        sent_at.push(sent);
        let history = second
            .operator
            .history(&command.agent_id, 20)
            .await
            .unwrap();
        let released = history
            .iter()
            .filter(|e| e.reason == TransitionReason::WakeReleased as i32)
            .count();
        assert_eq!(released, 1, "{:?}", command.agent_id);
    }
    let first_sent = sent_at[0];
    for (index, sent) in sent_at.iter().enumerate() {
        let after = sent.duration_since(first_sent).unwrap().as_secs_f64();
        assert!(
            (index + 1) as f64 <= (RATE as f64) * (1.0 + after) + 1e-6,
            "wake {index} {after}s after the first: over {RATE} a second"
        );
    }
    within("stopping", second.app.shutdown()).await;
}
