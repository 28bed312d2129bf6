//! The gateway judged before its agents: wakes held while it is away.

use super::*;
use crate::engine::GatewayState;

const GRACE: u64 = 180;

fn disconnect(h: &mut Harness) {
    h.run(|engine, batch| {
        engine
            .gateway_disconnected(batch, &gw(), "stream closed")
            .unwrap()
    });
}

fn connect(h: &mut Harness) -> (usize, Committed) {
    h.run(|engine, batch| engine.gateway_connected(batch, &gw()).unwrap())
}

#[test]
fn a_wake_for_an_away_gateway_is_held_not_counted_and_sent_on_reconnect() {
    let mut h = Harness::new();
    disconnect(&mut h);
    h.now = t(10);
    let (_, provisioned) = h.provision("a");
    assert!(wakes(&provisioned).is_empty(), "nothing sent");
    let agent = h.agent("a");
    assert!(agent.wake_held);
    assert_eq!(agent.wake_attempts, 1);
    assert_eq!(agent.last_wake_sent_at, None);
    assert_eq!(
        agent.checkin_deadline_at,
        Some(t(10)),
        "when it fell due: its place in the queue, not a deadline"
    );

    // Its first deadline would have been t(40): nothing happens then.
    assert!(h.advance_to(t(100)).events.is_empty());

    h.now = t(130);
    let (released, committed) = connect(&mut h);
    assert_eq!(released, 1);
    assert_eq!(wakes(&committed), [("a".into(), 1, 1)]);
    assert_eq!(reasons(&committed), [Reason::WakeReleased]);
    let agent = h.agent("a");
    assert!(!agent.wake_held);
    assert_eq!(agent.last_wake_sent_at, Some(t(130)));
    assert_eq!(
        agent.checkin_deadline_at,
        Some(t(160)),
        "the deadline starts at delivery"
    );
    // The seed's policy runs from delivery; the hold's timer is stale.
    let second = h.advance_to(t(160));
    assert_eq!(wakes(&second), [("a".into(), 1, 2)]);
    assert!(h.advance_to(t(GRACE as i64)).events.is_empty());
}

#[test]
fn held_wakes_go_out_in_deadline_order() {
    let mut h = Harness::new();
    for agent in ["a", "b", "c"] {
        h.provision(agent);
    }
    // Each found no stream at another time: each holds until its own end.
    for (at, agent) in [(10, "b"), (11, "c"), (12, "a")] {
        h.now = t(at);
        h.run(|engine, batch| engine.wake_undelivered(batch, &id(agent), 1, 1, "gone"));
    }
    h.now = t(13);
    disconnect(&mut h);
    h.now = t(60);
    let (released, committed) = connect(&mut h);
    assert_eq!(released, 3);
    let order: Vec<String> = wakes(&committed).into_iter().map(|w| w.0).collect();
    assert_eq!(order, ["b", "c", "a"]);
}

#[test]
fn past_the_grace_a_held_wake_fails_naming_the_gateway_and_the_policy_runs_on() {
    let mut h = Harness::new();
    disconnect(&mut h);
    h.provision("a");
    let expired = h.advance_to(t(GRACE as i64));
    assert_eq!(reasons(&expired), [Reason::WakeFailed]);
    let error = h.agent("a").last_provision_error.unwrap();
    assert!(
        error.contains("wake attempt 1 failed: gateway gw-1 not connected since"),
        "{error}"
    );
    assert!(!h.agent("a").wake_held);
    assert_eq!(h.agent("a").checkin_deadline_at, Some(t(GRACE as i64 + 30)));

    // Past the grace wakes are sent (the runtime finds no stream and
    // reports them failed); the third missed deadline ends it.
    let second = h.advance_to(t(GRACE as i64 + 30));
    assert_eq!(wakes(&second), [("a".into(), 1, 2)]);
    h.advance_to(t(GRACE as i64 + 60));
    let last = h.advance_to(t(GRACE as i64 + 90));
    assert_eq!(reasons(&last), [Reason::MaxAttemptsReached]);
    let agent = h.agent("a");
    assert_eq!(agent.status, Status::Offline);
    assert!(
        agent
            .offline_reason
            .unwrap()
            .starts_with("no check-in after 3 wake attempts")
    );
}

#[test]
fn an_undelivered_wake_is_held_within_the_grace_and_failed_after_it() {
    let mut h = Harness::new();
    h.provision("a");
    // The stream was gone before the engine heard: held from now.
    h.now = t(5);
    let (held, committed) = h.run(|engine, batch| {
        engine.wake_undelivered(batch, &id("a"), 1, 1, "gateway gw-1 is not connected")
    });
    assert!(held);
    assert_eq!(reasons(&committed), [Reason::WakeHeld]);
    assert_eq!(h.agent("a").checkin_deadline_at, Some(t(5)));
    // A second report of the same wake changes nothing.
    let (again, _) = h.run(|engine, batch| engine.wake_undelivered(batch, &id("a"), 1, 1, "again"));
    assert!(!again);
    // The news of the disconnection follows: held for the grace from then.
    h.now = t(6);
    disconnect(&mut h);
    assert!(h.advance_to(t(5 + GRACE as i64)).events.is_empty());
    let expired = h.advance_to(t(6 + GRACE as i64));
    assert_eq!(reasons(&expired), [Reason::WakeFailed]);

    // Had no such news come (a stream replaced in between), the wake is
    // tried again in the next round, same attempt.
    let mut h = Harness::new();
    h.provision("c");
    h.run(|engine, batch| engine.wake_undelivered(batch, &id("c"), 1, 1, "gone"));
    let again = h.advance_to(t(0).plus(RELEASE_ROUND));
    assert_eq!(wakes(&again), [("c".into(), 1, 1)]);
    assert_eq!(reasons(&again), [Reason::WakeReleased]);

    // Long away: a wake now is sent and its failure counts.
    let mut h = Harness::new();
    disconnect(&mut h);
    h.now = t(GRACE as i64 + 1);
    let (_, provisioned) = h.provision("b");
    assert_eq!(wakes(&provisioned).len(), 1, "past the grace: sent");
    let (counted, committed) = h.run(|engine, batch| {
        engine.wake_undelivered(batch, &id("b"), 1, 1, "gateway gw-1 is not connected")
    });
    assert!(counted);
    assert_eq!(reasons(&committed), [Reason::WakeFailed]);
    assert_eq!(
        h.agent("b").last_provision_error.as_deref(),
        Some("wake attempt 1 failed: gateway gw-1 is not connected")
    );
}

#[test]
fn a_check_in_while_held_ends_the_hold_and_a_grace_of_zero_holds_nothing() {
    let mut h = Harness::new();
    disconnect(&mut h);
    let (provisioned, _) = h.provision("a");
    let token = provisioned.agent.token_hash;
    h.run(|engine, batch| engine.check_in(batch, &id("a"), &token, None).unwrap());
    let agent = h.agent("a");
    assert_eq!(agent.status, Status::Online);
    assert!(!agent.wake_held && !agent.awaiting_checkin());
    let later = h.advance_to(t(GRACE as i64));
    assert_eq!(reasons(&later), [Reason::LeaseExpired], "the hold is stale");

    let mut h = Harness::with_policy(Policy {
        gateway_grace: Duration::ZERO,
        ..Policy::default()
    });
    disconnect(&mut h);
    let (_, provisioned) = h.provision("b");
    assert_eq!(wakes(&provisioned).len(), 1);
    assert!(!h.agent("b").wake_held);
}

#[test]
fn a_restart_keeps_held_wakes_and_starts_a_connected_gateways_grace_anew() {
    let mut h = Harness::new();
    disconnect(&mut h);
    h.provision("held");
    connect(&mut h);
    // Held again via an undelivered report, then the service restarts.
    h.now = t(10);
    h.run(|engine, batch| engine.wake_undelivered(batch, &id("held"), 1, 1, "gone"));
    let state = StoredState {
        agents: h.engine.agents().cloned().collect(),
        gateways: h.engine.gateways().cloned().collect(),
        pending_retires: vec![],
        tombstones: vec![],
        revision: h.engine.revision(),
        rollouts: vec![],
        checkpoint: 0,
        pending_syncs: vec![],
    };
    assert!(state.gateways[0].link.is_connected());
    let restart = t(100);
    let (mut engine, grace) = Engine::restore(Policy::default(), state, restart);
    let links: Vec<_> = grace
        .gateway_events()
        .iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        links,
        [(GatewayState::Connected, GatewayState::Disconnected)]
    );
    engine.commit(grace);
    let agent = engine.agent(&id("held")).unwrap();
    assert!(agent.wake_held, "held wakes survive the restart");
    assert_eq!(agent.checkin_deadline_at, Some(t(10)), "its place kept");
    // Held for the gateway's whole grace from the restart, then failed.
    let mut h = Harness {
        engine,
        now: restart,
        next_token: 50,
    };
    let end = restart.plus(Duration::from_secs(GRACE));
    assert!(h.advance_to(t(99 + GRACE as i64)).events.is_empty());
    assert_eq!(reasons(&h.advance_to(end)), [Reason::WakeFailed]);
}
