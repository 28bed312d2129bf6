//! The mass-failure brake: its arithmetic (window, share, minimum), and what
//! it does to a gateway's agents on explicit timestamps.

use super::*;
use crate::engine::{BrakeState, Census, GatewayState};

fn gw2() -> GatewayId {
    GatewayId::parse("gw-2").unwrap()
}

impl Harness {
    /// The seed's policy with the brake on, as the binary runs it.
    fn braked() -> Self {
        let mut h = Self::with_policy(Policy::DEFAULT);
        h.run(|engine, batch| {
            engine.register_gateway(
                batch,
                GatewaySpec {
                    gateway_id: gw2(),
                    name: None,
                    rotate_token: false,
                },
                token(2),
            );
            engine.gateway_connected(batch, &gw2()).unwrap()
        });
        h
    }

    /// `n` agents on `gateway`, checked in (online) now.
    fn online(&mut self, prefix: &str, gateway: GatewayId, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i:02}")).collect();
        for name in &names {
            let mut spec = self.spec(name, false);
            spec.gateway_id = gateway.clone();
            let minted = self.new_token();
            self.run(|e, b| e.provision(b, spec, Some(minted)))
                .0
                .unwrap();
            self.check_in(name);
        }
        names
    }

    /// A steady heartbeat from each agent, at the current time.
    fn beat(&mut self, agents: &[String]) {
        for name in agents {
            let hash = self.agent(name).token_hash;
            match self.engine.renew_lease(&hash, None, self.now) {
                Renewal::Renewed(_) => {}
                other => panic!("{name}: not a steady beat: {other:?}"),
            }
        }
    }

    /// Advances second by second to `to`, the `healthy` agents beating
    /// every 10 s, and returns every batch's events and gateway changes.
    fn run_until(
        &mut self,
        to: Timestamp,
        healthy: &[String],
    ) -> (Vec<Event>, Vec<GatewayTransition>) {
        let (mut events, mut gateways) = (Vec::new(), Vec::new());
        while self.now < to {
            let next = self.now.plus(Duration::from_secs(1));
            if next.since(t(0)).as_secs().is_multiple_of(10) {
                self.now = next;
                self.beat(healthy);
            }
            let committed = self.advance_to(next);
            events.extend(committed.events);
            gateways.extend(committed.gateway_events);
        }
        (events, gateways)
    }

    fn offline(&self, agents: &[String]) -> usize {
        agents
            .iter()
            .filter(|a| self.agent(a).status == Status::Offline)
            .count()
    }

    fn state(&self, gateway: &GatewayId) -> GatewayState {
        self.engine.gateway(gateway).unwrap().state()
    }
}

#[test]
fn a_share_trips_only_above_the_threshold_and_at_the_minimum_count() {
    let census = |silent, expected| Census { expected, silent };
    // 55%: more than 55 of 100, not 55 itself.
    assert!(census(56, 100).trips(0.55, 3));
    assert!(!census(55, 100).trips(0.55, 3));
    // The minimum: one or two silent agents of a small gateway never do.
    assert!(!census(1, 1).trips(0.55, 3));
    assert!(!census(2, 2).trips(0.55, 3));
    assert!(census(3, 3).trips(0.55, 3));
    assert!(census(3, 5).trips(0.55, 3));
    assert!(!census(2, 3).trips(0.55, 3), "2 is under the minimum of 3");
    // 1.0 turns the brake off; a minimum of 0 still needs one silent agent.
    assert!(!census(100, 100).trips(1.0, 3));
    assert!(!census(0, 0).trips(0.0001, 0));
    assert!(census(1, 1).trips(0.5, 0));
}

#[test]
fn silence_is_more_than_the_window_unheard_or_a_deadline_missed_within_it() {
    let mut h = Harness::braked();
    h.online("a", gw(), 1);
    h.provision("waiting");
    let engine = &h.engine;
    let agent = h.agent("a00");
    let window = Policy::DEFAULT.brake_window;
    assert_eq!(engine.silent(&agent, t(0).plus(window)), Some(false));
    assert_eq!(
        engine.silent(&agent, t(0).plus(window).plus(Duration::from_micros(1))),
        Some(true)
    );
    // Waiting for a check-in: silent once the deadline has passed.
    let waiting = h.agent("waiting");
    assert_eq!(engine.silent(&waiting, t(29)), Some(false));
    assert_eq!(engine.silent(&waiting, t(30)), Some(true));
    // Woken again after a missed deadline: silent for the window after it.
    let mut retriggered = waiting.clone();
    retriggered.wake_attempts = 2;
    retriggered.last_wake_sent_at = Some(t(30));
    retriggered.checkin_deadline_at = Some(t(60));
    assert_eq!(engine.silent(&retriggered, t(44)), Some(true));
    assert_eq!(engine.silent(&retriggered, t(45)), Some(false));
    // A held wake and an offline agent are not expected to speak.
    let mut held = retriggered.clone();
    held.wake_held = true;
    assert_eq!(engine.silent(&held, t(44)), None);
    let mut offline = agent.clone();
    offline.status = Status::Offline;
    assert_eq!(engine.silent(&offline, t(100)), None);
}

#[test]
fn sixty_percent_silent_suspects_the_gateway_once_and_no_agent_goes_offline() {
    let mut h = Harness::braked();
    let agents = h.online("a", gw(), 10);
    let others = h.online("b", gw2(), 10);
    let (silent, healthy) = agents.split_at(6);
    let mut beating = healthy.to_vec();
    beating.extend(others.iter().cloned());

    // Their leases run out at 30 s; by then all six are 30 s unheard.
    let (events, gateways) = h.run_until(t(120), &beating);
    assert_eq!(h.offline(silent), 0, "no OFFLINE while suspected");
    assert!(events.is_empty(), "no transition, no wake: {events:?}");
    assert_eq!(gateways.len(), 1, "one event says why: {gateways:?}");
    let suspected = &gateways[0];
    assert_eq!(suspected.gateway_id, gw());
    assert_eq!(suspected.at, t(30), "at the first lost lease");
    assert_eq!(
        (suspected.from, suspected.to),
        (GatewayState::Connected, GatewayState::Suspected)
    );
    assert!(
        suspected
            .reason
            .starts_with("6 of 10 agents silent for over 15s (over 55%)"),
        "{}",
        suspected.reason
    );
    assert_eq!(h.state(&gw()), GatewayState::Suspected);
    assert_eq!(
        h.state(&gw2()),
        GatewayState::Connected,
        "the other is untouched"
    );
    assert!(silent.iter().all(|a| h.agent(a).status == Status::Online));

    // They come back: the gateway recovers within a second, no OFFLINE.
    let mut all = beating.clone();
    all.extend(silent.iter().cloned());
    h.now = t(121);
    h.beat(silent);
    let (events, gateways) = h.run_until(t(200), &all);
    assert_eq!(h.offline(&all), 0, "no false OFFLINE");
    assert!(events.is_empty());
    assert_eq!(gateways.len(), 1);
    assert_eq!(gateways[0].at, t(122));
    assert_eq!(gateways[0].to, GatewayState::Connected);
    assert_eq!(gateways[0].reason, "recovered: 0 of 10 agents silent now");
    assert!(h.engine.gateway(&gw()).unwrap().brake.is_none());
}

#[test]
fn thirty_percent_silent_is_judged_agent_by_agent_as_the_seed_does() {
    let mut h = Harness::braked();
    let agents = h.online("a", gw(), 10);
    let (silent, healthy) = agents.split_at(3);
    let (events, gateways) = h.run_until(t(100), healthy);
    assert!(gateways.is_empty(), "no suspicion: {gateways:?}");
    let offline: Vec<_> = events
        .iter()
        .map(|e| (e.agent.id.to_string(), e.reason, e.at))
        .collect();
    let expected: Vec<_> = silent
        .iter()
        .map(|a| (a.clone(), Reason::LeaseExpired, t(30)))
        .collect();
    assert_eq!(offline, expected, "each at its own lease expiry");
}

#[test]
fn a_small_gateway_below_the_minimum_is_never_suspected() {
    let mut h = Harness::braked();
    let pair = h.online("a", gw(), 2);
    let (events, gateways) = h.run_until(t(60), &[]);
    assert!(gateways.is_empty());
    assert_eq!(events.len(), 2, "both OFFLINE at their lease expiry");
    assert_eq!(h.offline(&pair), 2);
}

#[test]
fn a_gateway_suspected_past_the_bound_drains_at_the_slow_rate() {
    let policy = Policy {
        brake_suspect_for: Duration::from_secs(60),
        brake_drain_rate: 0.5,
        ..Policy::DEFAULT
    };
    let mut h = Harness::with_policy(policy);
    let agents = h.online("a", gw(), 10);
    let (silent, healthy) = agents.split_at(8);
    let (events, gateways) = h.run_until(t(89), healthy);
    assert!(events.is_empty());
    assert_eq!(gateways.len(), 1, "suspected at 30 s");
    let (events, gateways) = h.run_until(t(91), healthy);
    assert_eq!(gateways.len(), 1);
    assert_eq!(gateways[0].at, t(90), "the bound: 60 s after the suspicion");
    assert_eq!(gateways[0].to, GatewayState::Draining);
    assert!(
        gateways[0]
            .reason
            .contains("judging its silent agents at 0.5/s")
    );
    assert_eq!(
        h.engine
            .gateway(&gw())
            .unwrap()
            .brake
            .as_ref()
            .unwrap()
            .state,
        BrakeState::Draining
    );
    // One verdict every 2 s from the start of the drain.
    let (more, _) = h.run_until(t(120), healthy);
    let at: Vec<Timestamp> = events.iter().chain(&more).map(|e| e.at).collect();
    assert_eq!(at.len(), 8, "all eight judged: {at:?}");
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1].since(w[0]).as_secs()).collect();
    assert!(gaps.iter().all(|g| *g >= 2), "at most one per 2 s: {at:?}");
    assert_eq!(h.offline(silent), 8);
    assert_eq!(h.offline(healthy), 0);
}

#[test]
fn a_fleet_wide_silence_suspects_every_gateway_at_once() {
    let mut h = Harness::braked();
    let a = h.online("a", gw(), 10);
    let b = h.online("b", gw2(), 10);
    // 5 of 10 on each: under each gateway's 55%, over the fleet's 40%.
    let mut healthy = a[5..].to_vec();
    healthy.extend(b[5..].iter().cloned());
    let (events, gateways) = h.run_until(t(100), &healthy);
    assert!(events.is_empty(), "no OFFLINE: {events:?}");
    assert_eq!(gateways.len(), 2, "both at once: {gateways:?}");
    for transition in &gateways {
        assert_eq!(transition.at, t(30));
        assert_eq!(transition.to, GatewayState::Suspected);
        assert!(
            transition
                .reason
                .starts_with("fleet-wide: 10 of 20 agents silent"),
            "{}",
            transition.reason
        );
    }
}

#[test]
fn no_wake_goes_to_a_suspected_gateway_until_it_recovers() {
    let mut h = Harness::braked();
    let agents = h.online("a", gw(), 10);
    // Seven: the one woken below is not silent while its wake waits, and
    // the other six keep the gateway suspected meanwhile.
    let (silent, healthy) = agents.split_at(7);
    h.run_until(t(35), healthy);
    assert_eq!(h.state(&gw()), GatewayState::Suspected);
    // An operator's wake of a silent agent is held, not sent, and nothing
    // counts against it while the gateway is suspected.
    let (_, committed) = h.run(|e, b| e.wake(b, &id(&silent[0])).unwrap());
    assert!(wakes(&committed).is_empty(), "held, not sent");
    let (events, _) = h.run_until(t(120), healthy);
    assert!(
        events.iter().all(|e| e.agent.id.as_str() != silent[0]),
        "{events:?}"
    );
    let agent = h.agent(&silent[0]);
    assert!(agent.wake_held);
    assert_eq!(agent.wake_attempts, 1);
    assert!(agent.last_provision_error.is_none());
    assert_eq!(h.state(&gw()), GatewayState::Suspected);

    // They come back: the held wake goes out with the recovery.
    let mut all = healthy.to_vec();
    all.extend(silent.iter().cloned());
    h.now = t(121);
    h.beat(&silent[1..]);
    let committed = h.advance_to(t(122));
    assert_eq!(committed.gateway_events.len(), 1, "recovered");
    assert_eq!(wakes(&committed), [(silent[0].clone(), 2, 1)]);
    assert!(!h.agent(&silent[0]).wake_held);
}

#[test]
fn a_restart_keeps_the_suspicion_and_its_bound_and_judges_nobody_at_once() {
    let mut h = Harness::braked();
    let agents = h.online("a", gw(), 10);
    let (silent, healthy) = agents.split_at(6);
    h.run_until(t(40), healthy);
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
    // Down 60 s. Every agent is unheard since before the restart.
    let restart = t(100);
    let (engine, grace) = Engine::restore(Policy::DEFAULT, state, restart);
    h.engine = engine;
    h.now = restart;
    let committed = h.engine.commit(grace);
    let brake = h.engine.gateway(&gw()).unwrap().brake.clone().unwrap();
    assert_eq!(brake.since, t(30), "the first suspicion's time is kept");
    assert!(committed.events.is_empty());
    // The healthy agents beat again after the restart, the silent ones do
    // not: still suspected, and nobody OFFLINE, well past the leases.
    let mut batch = h.engine.begin(restart);
    h.engine.gateway_connected(&mut batch, &gw()).unwrap();
    h.engine.commit(batch);
    let (events, gateways) = h.run_until(t(200), healthy);
    assert!(events.is_empty(), "{events:?}");
    assert!(
        gateways
            .iter()
            .all(|g| g.to != GatewayState::Connected || g.from != GatewayState::Suspected),
        "no false recovery: {gateways:?}"
    );
    assert_eq!(h.state(&gw()), GatewayState::Suspected);
    assert_eq!(h.offline(silent), 0);
}
