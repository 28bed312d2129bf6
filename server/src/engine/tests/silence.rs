//! The brake's census kept incrementally (the silence index) equals a full
//! count of every agent, after random transitions, heartbeats, gateway
//! outages and jumps of time, with and without staged agents laid over it.

use super::*;
use crate::engine::BrakeState;

fn gateways() -> Vec<GatewayId> {
    (1..=4)
        .map(|n| GatewayId::parse(format!("gw-{n}")).unwrap())
        .collect()
}

/// A census of the fleet as the batch sees it, from the index and by a full
/// count: they must be equal.
fn compare(h: &mut Harness, batch: &Batch, step: usize) {
    let incremental = h.engine.take_census(batch);
    let full = h.engine.full_census(batch);
    assert_eq!(incremental, full, "step {step} at {:?}", batch.now());
}

/// What the random runs went through, so that the test shows it covered
/// every kind of agent and brake the census counts.
#[derive(Debug, Default)]
struct Seen {
    suspected: usize,
    draining: usize,
    let_go: usize,
    held: usize,
    retriggered: usize,
    always_silent: usize,
    away_waiting: usize,
}

impl Seen {
    fn look(&mut self, engine: &Engine, now: Timestamp) {
        let window = engine.policy().brake_window;
        for gateway in engine.gateways() {
            match gateway.brake.as_ref().map(|b| b.state) {
                Some(BrakeState::Suspected) => self.suspected += 1,
                Some(BrakeState::Draining) => self.draining += 1,
                None => {}
            }
        }
        for agent in engine.agents() {
            let gateway = engine.gateway(&agent.gateway_id);
            if agent.wake_held {
                self.held += 1;
            }
            if agent.awaiting_checkin() && gateway.is_some_and(|g| !g.link.is_connected()) {
                self.away_waiting += 1;
            }
            if let (Some(deadline), Some(sent)) =
                (agent.checkin_deadline_at, agent.last_wake_sent_at)
                && agent.wake_attempts > 1
                && !agent.wake_held
            {
                self.retriggered += usize::from(sent.plus(window) > now);
                self.always_silent += usize::from(sent.plus(window) >= deadline);
            }
            let braked_since = gateway.and_then(|g| g.brake.as_ref()).map(|b| b.since);
            if agent.status == Status::Offline
                && braked_since.is_some_and(|s| agent.updated_at >= s)
            {
                self.let_go += 1;
            }
        }
    }
}

fn random_transitions(seed: u64, steps: usize, seen: &mut Seen) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let policy = match seed % 3 {
        0 => Policy::DEFAULT,
        // A window longer than the check-in deadline: a retriggered agent
        // is silent until its deadline passes, and from then on.
        1 => Policy {
            checkin_deadline: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(5),
            brake_window: Duration::from_secs(20),
            lease_ttl: Duration::from_secs(25),
            ..Policy::DEFAULT
        },
        _ => Policy {
            brake_min_agents: 1,
            brake_drain_rate: 0.5,
            ..Policy::DEFAULT
        },
    };
    let mut h = Harness::with_policy(Policy {
        brake_suspect_for: Duration::from_secs(40),
        wake_on_lease_expiry: seed.is_multiple_of(2),
        gateway_grace: Duration::from_secs(20),
        ..policy
    });
    let gateways = gateways();
    for (n, gateway) in gateways.iter().enumerate().skip(1) {
        h.run(|engine, batch| {
            engine.register_gateway(
                batch,
                GatewaySpec {
                    gateway_id: gateway.clone(),
                    name: None,
                    rotate_token: false,
                },
                token(2 + n as u8),
            );
            engine.gateway_connected(batch, gateway).unwrap()
        });
    }
    let mut agents: Vec<String> = Vec::new();
    for step in 0..steps {
        let pick = |rng: &mut fastrand::Rng, agents: &[String]| {
            (!agents.is_empty()).then(|| agents[rng.usize(..agents.len())].clone())
        };
        match rng.u32(..100) {
            // A new agent (or a re-provision of one) on a random gateway.
            0..12 => {
                let name = if agents.len() < 60 && rng.bool() {
                    let name = format!("a{step}");
                    agents.push(name.clone());
                    name
                } else if let Some(name) = pick(&mut rng, &agents) {
                    name
                } else {
                    continue;
                };
                let mut spec = h.spec(&name, false);
                spec.gateway_id = gateways[rng.usize(..gateways.len())].clone();
                let minted = h.new_token();
                let _ = h.run(|e, b| e.provision(b, spec, Some(minted)));
            }
            // A check-in, judged in a batch (staged, compared, committed).
            12..30 => {
                let Some(name) = pick(&mut rng, &agents) else {
                    continue;
                };
                let Some(agent) = h.engine.agent(&id(&name)).cloned() else {
                    continue;
                };
                let mut batch = h.engine.begin(h.now);
                let _ = h
                    .engine
                    .check_in(&mut batch, &id(&name), &agent.token_hash, None);
                compare(&mut h, &batch, step);
                h.engine.commit(batch);
            }
            // Steady heartbeats of a few agents.
            30..55 => {
                for _ in 0..rng.usize(1..8) {
                    let Some(name) = pick(&mut rng, &agents) else {
                        break;
                    };
                    if let Some(agent) = h.engine.agent(&id(&name)) {
                        let hash = agent.token_hash;
                        h.engine.renew_lease(&hash, None, h.now);
                    }
                }
            }
            // Time passes, by microseconds to a minute, and timers fire.
            55..85 => {
                let jump = match rng.u32(..4) {
                    0 => Duration::from_micros(rng.u64(1..2_000_000)),
                    1 => Duration::from_secs(1),
                    2 => Duration::from_secs(rng.u64(1..16)),
                    _ => Duration::from_secs(rng.u64(10..60)),
                };
                let at = h.now.plus(jump);
                h.now = at;
                let mut batch = h.engine.begin(at);
                h.engine.fire_due(&mut batch);
                compare(&mut h, &batch, step);
                h.engine.commit(batch);
            }
            // A gateway's stream drops or comes back.
            85..93 => {
                let gateway = gateways[rng.usize(..gateways.len())].clone();
                let connected = h
                    .engine
                    .gateway(&gateway)
                    .is_some_and(|g| g.link.is_connected());
                h.run(|e, b| {
                    if connected {
                        let _ = e.gateway_disconnected(b, &gateway, "test");
                    } else {
                        let _ = e.gateway_connected(b, &gateway);
                    }
                });
            }
            // A restart: the engine restored from what a load would return
            // (every gateway away until it connects again).
            93..95 => {
                let state = h.engine.warm_state(
                    h.engine.gateways().cloned().collect(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    0,
                );
                let (engine, batch) = Engine::restore(h.engine.policy().clone(), state, h.now);
                h.engine = engine;
                compare(&mut h, &batch, step);
                h.engine.commit(batch);
            }
            // An agent deleted.
            _ => {
                let Some(name) = pick(&mut rng, &agents) else {
                    continue;
                };
                agents.retain(|a| *a != name);
                let _ = h.run(|e, b| e.delete(b, &id(&name)));
            }
        }
        let batch = h.engine.begin(h.now);
        compare(&mut h, &batch, step);
        seen.look(&h.engine, h.now);
    }
}

#[test]
fn the_silence_index_equals_a_full_count_after_random_transitions() {
    let mut seen = Seen::default();
    for seed in 0..24 {
        random_transitions(seed, 600, &mut seen);
    }
    let covered = [
        seen.suspected,
        seen.draining,
        seen.let_go,
        seen.held,
        seen.retriggered,
        seen.always_silent,
        seen.away_waiting,
    ];
    assert!(covered.iter().all(|n| *n > 0), "{seen:?}");
}

#[test]
fn the_silence_index_is_rebuilt_after_a_restart() {
    let mut h = Harness::with_policy(Policy::DEFAULT);
    let minted = h.new_token();
    let spec = h.spec("a", false);
    h.run(|e, b| e.provision(b, spec, Some(minted))).0.unwrap();
    h.check_in("a");
    let state = h.engine.warm_state(
        h.engine.gateways().cloned().collect(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        0,
    );
    let (mut engine, _) = Engine::restore(Policy::DEFAULT, state, t(100));
    let batch = engine.begin(t(200));
    assert_eq!(engine.take_census(&batch), engine.full_census(&batch));
    assert_eq!(
        engine.take_census(&batch).fleet,
        Census {
            expected: 1,
            silent: 1
        }
    );
}
