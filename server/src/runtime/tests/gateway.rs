//! The gateway judged before its agents, through the runtime: wakes for a
//! disconnected gateway are held for its grace and go out in deadline
//! order, within the wake rate limits, when it reconnects.

use std::time::Duration;

use super::*;
use crate::engine::GatewayState;

const LONG: Duration = Duration::from_secs(3600);

/// The production policy (3 min gateway grace, 100 held wakes a second).
fn settings() -> Settings {
    Settings {
        policy: Policy::default(),
        ..fast_settings()
    }
}

fn since_start(t: Timestamp) -> Duration {
    t.since(Timestamp::from_micros(EPOCH))
}

#[tokio::test(start_paused = true)]
async fn a_gateway_down_two_minutes_with_1000_agents_costs_none_of_them_and_wakes_go_out_in_order_at_the_rate()
 {
    let f = start(settings()).await;
    let (session, mut commands) = f.connect();
    // Ten waves of 100, a second apart: ten distinct deadlines.
    for wave in 0..10 {
        for n in 0..100 {
            f.provision(&format!("a{wave}-{n:03}")).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for _ in 0..1000 {
        let (command_id, _) = next_wake(&mut commands, LONG).await.unwrap();
        session.acknowledge(command_id, Ok(())).unwrap();
    }

    // The gateway goes away before any agent checked in, for 2 minutes:
    // every first deadline passes meanwhile.
    drop(session);
    drop(commands);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let (agents, _) = f.lifecycle.list(&AgentFilter::default(), None, 2000);
    assert_eq!(agents.len(), 1000);
    assert!(
        agents.iter().all(|a| a.status == Status::Provisioning),
        "0 OFFLINE within the grace"
    );
    assert!(
        agents
            .iter()
            .all(|a| a.wake_held && a.wake_attempts == 2 && a.last_provision_error.is_none()),
        "the second wake held, not counted as failed"
    );
    let listed = f.lifecycle.list_gateways();
    assert_eq!(listed[0].gateway.link.state, LinkState::Disconnected);
    let metrics = f.lifecycle.render_metrics();
    assert!(metrics.contains("mission_control_wakes_held 1000"));
    assert!(metrics.contains("mission_control_wakes_queued{gateway=\"gw-1\"} 1000"));
    assert!(metrics.contains("mission_control_gateways_disconnected 1"));

    // Back: the held wakes go out within the gateway's wake budget (100 a
    // second), earliest deadline first, each with a deadline from when it
    // was sent.
    let (session, mut commands) = f.connect();
    let back = f.lifecycle.now();
    let mut sent = Vec::new();
    for _ in 0..1000 {
        let (command_id, wake) = next_wake(&mut commands, LONG).await.unwrap();
        session.acknowledge(command_id, Ok(())).unwrap();
        let at = f.lifecycle.now();
        assert_eq!(wake.attempt, 2);
        assert_eq!(wake.checkin_deadline_at, at.plus(Duration::from_secs(30)));
        sent.push((at.since(back), wake.agent_id.to_string()));
    }
    // A second's budget at once, then 10 every 100 ms: 1,000 in 9 s.
    assert_paced(&sent, 100, 100);
    assert_eq!(sent.last().unwrap().0, Duration::from_secs(9));
    for (index, (_, agent)) in sent.iter().enumerate() {
        // Wave w's wakes fell due at second 30 + w: the waves in order.
        let wave = index / 100;
        assert!(agent.starts_with(&format!("a{wave}-")), "{index}: {agent}");
    }
    let (agents, _) = f.lifecycle.list(&AgentFilter::default(), None, 2000);
    assert!(agents.iter().all(|a| !a.wake_held));
    assert_eq!(
        f.lifecycle.list_gateways()[0].gateway.link.state,
        LinkState::Connected
    );
    let history = f.lifecycle.gateway_history(&gateway(), 10).await.unwrap();
    let states: Vec<_> = history.iter().map(|t| (t.to, t.wakes_released)).collect();
    assert_eq!(
        states,
        [
            (GatewayState::Connected, 1000),
            (GatewayState::Disconnected, 0),
            (GatewayState::Connected, 0),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_gateway_down_longer_than_the_grace_ends_in_the_seeds_outcome_naming_the_gateway() {
    let f = start(settings()).await;
    let (session, mut commands) = f.connect();
    f.provision("a").await;
    let (command_id, _) = next_wake(&mut commands, LONG).await.unwrap();
    session.acknowledge(command_id, Ok(())).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(session);
    drop(commands);

    tokio::time::sleep(Duration::from_secs(600)).await;
    let agent = f.agent("a");
    assert_eq!(agent.status, Status::Offline);
    assert_eq!(agent.wake_attempts, 3);
    let error = agent.last_provision_error.unwrap();
    assert!(
        error.starts_with("no check-in after 3 wake attempts (last error: wake attempt 3 failed: gateway gw-1 is not connected"),
        "{error}"
    );
    let history = f.lifecycle.history(&id("a"), None, 10).await.unwrap();
    let story: Vec<_> = history
        .iter()
        .rev()
        .map(|e| (since_start(e.at).as_secs(), e.reason, e.attempt))
        .collect();
    // Held from the missed first deadline to the end of the grace (3 min
    // after the gateway left at 1 s), then the seed's policy: 30 s a wake.
    assert_eq!(
        story,
        [
            (0, Reason::Provisioned, 1),
            (30, Reason::DeadlineMissed, 2),
            (181, Reason::WakeFailed, 2),
            (211, Reason::DeadlineMissed, 3),
            (211, Reason::WakeFailed, 3),
            (241, Reason::MaxAttemptsReached, 3),
        ]
    );
    assert!(
        history[3]
            .error
            .as_deref()
            .unwrap()
            .contains("gateway gw-1 not connected since")
    );
}

#[tokio::test(start_paused = true)]
async fn a_healthy_gateway_sees_the_seeds_exact_policy() {
    let f = start(settings()).await;
    let (_session, mut commands) = f.connect();
    f.provision("silent").await;
    let mut woken_at = Vec::new();
    while let Some((_, order)) = next_wake(&mut commands, Duration::from_secs(100)).await {
        woken_at.push((order.attempt, f.elapsed()));
    }
    assert_eq!(woken_at, [(1, 0.0), (2, 30.0), (3, 60.0)]);
    let agent = f.agent("silent");
    assert_eq!(agent.status, Status::Offline);
    assert_eq!(
        agent.last_provision_error.as_deref(),
        Some("no check-in after 3 wake attempts")
    );
    let history = f.lifecycle.history(&id("silent"), None, 1).await.unwrap();
    assert_eq!(since_start(history[0].at), Duration::from_secs(90));
}

#[tokio::test(start_paused = true)]
async fn held_wakes_survive_a_restart_and_go_out_when_the_gateway_reaches_the_new_process() {
    let store = Arc::new(MemoryStore::new());
    let f = start_on(store.clone(), settings()).await;
    // Never connected: the provision's wake is held.
    f.provision("a").await;
    assert!(f.agent("a").wake_held);
    f.lifecycle.stop().await;

    let restarted = start_at(store, settings(), f.lifecycle.now()).await;
    assert!(restarted.agent("a").wake_held, "held, from the store");
    let (_session, mut commands) = restarted.connect();
    let (_, wake) = next_wake(&mut commands, LONG).await.unwrap();
    assert_eq!((wake.generation, wake.attempt), (1, 1));
    assert!(!restarted.agent("a").wake_held);
}
