//! The mass-failure brake through the runtime, on paused time: two gateways
//! of heartbeating agents, some of which fall silent together.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::engine::{Event, GatewayState, Status};

fn gw2() -> GatewayId {
    GatewayId::parse("gw-2").unwrap()
}

/// The production policy: the brake on, as the binary runs it.
fn settings() -> Settings {
    Settings {
        policy: Policy::default(),
        ..fast_settings()
    }
}

/// A wake a gateway received: when (seconds since the fleet started), for
/// whom, which attempt.
type Received = Arc<Mutex<Vec<(f64, String, u32)>>>;

struct Fleet {
    f: Fixture,
    tokens: BTreeMap<String, String>,
    received: BTreeMap<GatewayId, Received>,
    started: tokio::time::Instant,
}

impl Fleet {
    /// Both gateways connected and answering every command, and `n`
    /// agents checked in on each (named `a00..` and `b00..`).
    async fn start(f: Fixture, n: usize) -> Self {
        let second = f
            .lifecycle
            .register_gateway(GatewaySpec {
                gateway_id: gw2(),
                name: None,
                rotate_token: true,
            })
            .await
            .unwrap()
            .token
            .unwrap();
        let mut fleet = Self {
            tokens: BTreeMap::new(),
            received: BTreeMap::new(),
            started: tokio::time::Instant::now(),
            f,
        };
        let first = fleet.f.gateway_token.clone();
        fleet.serve(gateway(), &first);
        fleet.serve(gw2(), &second);
        for (prefix, gateway) in [("a", gateway()), ("b", gw2())] {
            for i in 0..n {
                fleet.provision(&format!("{prefix}{i:02}"), &gateway).await;
            }
        }
        fleet
    }

    /// Connects the gateway and acknowledges every command it gets.
    fn serve(&mut self, gateway_id: GatewayId, token: &str) {
        let (session, mut commands) = self.f.lifecycle.connect_gateway(token).unwrap();
        let received: Received = Arc::default();
        self.received.insert(gateway_id, received.clone());
        let started = self.started;
        tokio::spawn(async move {
            while let Some(out) = commands.recv().await {
                if let Outbound::Command {
                    command_id,
                    command,
                } = out
                {
                    if let GatewayCommand::Wake(order) = &command {
                        let at = started.elapsed().as_secs_f64();
                        let agent = order.agent_id.to_string();
                        received.lock().unwrap().push((at, agent, order.attempt));
                    }
                    let _ = session.acknowledge(command_id, Ok(()));
                }
            }
        });
    }

    /// Provisions the agent and checks it in (online).
    async fn provision(&mut self, agent: &str, gateway: &GatewayId) {
        let mut spec = spec(agent);
        spec.gateway_id = gateway.clone();
        let token = self
            .f
            .lifecycle
            .provision(spec)
            .await
            .unwrap()
            .token
            .unwrap();
        self.f.lifecycle.heartbeat(&token, None).await.unwrap();
        self.tokens.insert(agent.to_owned(), token);
    }

    async fn beat(&self, agents: &[String]) {
        for agent in agents {
            self.f
                .lifecycle
                .heartbeat(&self.tokens[agent], None)
                .await
                .unwrap();
        }
    }

    /// `seconds` pass; `healthy` agents heartbeat every 10 s meanwhile.
    async fn run(&self, seconds: u64, healthy: &[String]) {
        for _ in 0..seconds / 10 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            self.beat(healthy).await;
        }
    }

    fn names(&self, prefix: &str) -> Vec<String> {
        self.tokens
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn state(&self, gateway: &GatewayId) -> (GatewayState, String) {
        let view = self
            .f
            .lifecycle
            .list_gateways()
            .into_iter()
            .find(|v| v.gateway.id == *gateway)
            .unwrap();
        let reason = view.gateway.state_since().1.to_owned();
        (view.gateway.state(), reason)
    }

    fn offline(&self) -> Vec<String> {
        let (agents, _) = self.f.lifecycle.list(&AgentFilter::default(), None, 1000);
        agents
            .iter()
            .filter(|a| a.status == Status::Offline)
            .map(|a| a.id.to_string())
            .collect()
    }

    /// Every OFFLINE transition the agents' histories hold.
    async fn offline_events(&self) -> Vec<Event> {
        let mut offline = Vec::new();
        for agent in self.tokens.keys() {
            let history = self.f.lifecycle.history(&id(agent), None, 100).await;
            offline.extend(
                history
                    .unwrap()
                    .into_iter()
                    .filter(|e| e.agent.status == Status::Offline),
            );
        }
        offline
    }

    fn wakes_to(&self, gateway: &GatewayId) -> Vec<(f64, String, u32)> {
        self.received[gateway].lock().unwrap().clone()
    }

    async fn history(&self, gateway: &GatewayId) -> Vec<(GatewayState, GatewayState, String)> {
        let history = self
            .f
            .lifecycle
            .gateway_history(gateway, 100)
            .await
            .unwrap();
        history
            .into_iter()
            .rev()
            .filter(|t| t.from != t.to)
            .map(|t| (t.from, t.to, t.reason))
            .collect()
    }
}

/// The agents of `names` outside `silent`.
fn except(names: &[String], silent: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| !silent.contains(n))
        .cloned()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn sixty_percent_of_one_gateway_silent_suspects_it_alone_and_it_recovers_with_no_false_offline()
 {
    let fleet = Fleet::start(start(settings()).await, 10).await;
    let (a, b) = (fleet.names("a"), fleet.names("b"));
    let silent = a[..6].to_vec();
    let mut healthy = except(&a, &silent);
    healthy.extend(b.iter().cloned());
    let wakes_before = fleet.wakes_to(&gateway()).len();

    // Their leases (30 s) run out; two minutes pass.
    fleet.run(120, &healthy).await;
    let (state, reason) = fleet.state(&gateway());
    assert_eq!(state, GatewayState::Suspected);
    assert!(
        reason.starts_with("6 of 10 agents silent for over 15s (over 55%)"),
        "{reason}"
    );
    assert_eq!(
        fleet.state(&gw2()).0,
        GatewayState::Connected,
        "the other is unaffected"
    );
    assert_eq!(fleet.offline(), Vec::<String>::new(), "no agent OFFLINE");
    assert_eq!(
        fleet.wakes_to(&gateway()).len(),
        wakes_before,
        "no wake cycle"
    );
    let suspicions: Vec<_> = fleet
        .history(&gateway())
        .await
        .into_iter()
        .filter(|(_, to, _)| *to == GatewayState::Suspected)
        .collect();
    assert_eq!(suspicions.len(), 1, "one event says why: {suspicions:?}");
    let metrics = fleet.f.lifecycle.render_metrics();
    assert!(
        metrics.contains("mission_control_gateways_suspected 1"),
        "{metrics}"
    );

    // Their heartbeats come back: the gateway recovers, and so do they.
    fleet.beat(&silent).await;
    let all: Vec<String> = fleet.tokens.keys().cloned().collect();
    fleet.run(120, &all).await;
    assert_eq!(fleet.state(&gateway()).0, GatewayState::Connected);
    let history = fleet.history(&gateway()).await;
    let (from, to, reason) = history.last().unwrap();
    assert_eq!(
        (*from, *to),
        (GatewayState::Suspected, GatewayState::Connected)
    );
    assert_eq!(reason, "recovered: 0 of 10 agents silent now");
    assert!(
        fleet.offline_events().await.is_empty(),
        "no false OFFLINE, ever"
    );
    assert!(
        fleet
            .f
            .lifecycle
            .render_metrics()
            .contains("mission_control_gateways_suspected 0")
    );
}

#[tokio::test(start_paused = true)]
async fn thirty_percent_silent_is_no_brake_and_each_goes_offline_at_its_lease_expiry() {
    let fleet = Fleet::start(start(settings()).await, 10).await;
    let last_heard = fleet.f.clock.now();
    let (a, b) = (fleet.names("a"), fleet.names("b"));
    let silent = a[..3].to_vec();
    let mut healthy = except(&a, &silent);
    healthy.extend(b.iter().cloned());

    fleet.run(120, &healthy).await;
    assert_eq!(fleet.state(&gateway()).0, GatewayState::Connected);
    assert_eq!(fleet.offline(), silent);
    let offline = fleet.offline_events().await;
    assert_eq!(offline.len(), 3);
    let lease_ttl = Policy::DEFAULT.lease_ttl;
    for event in &offline {
        assert_eq!(event.reason, Reason::LeaseExpired);
        assert_eq!(event.at, last_heard.plus(lease_ttl), "at the exact expiry");
    }
    let changes = fleet.history(&gateway()).await;
    assert!(
        changes
            .iter()
            .all(|(_, to, _)| *to == GatewayState::Connected),
        "{changes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fleet_wide_silence_suspects_every_gateway_though_none_is_over_its_own_share() {
    let fleet = Fleet::start(start(settings()).await, 10).await;
    let (a, b) = (fleet.names("a"), fleet.names("b"));
    // Half of each: under a gateway's 55%, over the fleet's 40%.
    let mut silent = a[..5].to_vec();
    silent.extend(b[..5].iter().cloned());
    let healthy = except(&fleet.tokens.keys().cloned().collect::<Vec<_>>(), &silent);

    fleet.run(120, &healthy).await;
    for gateway in [gateway(), gw2()] {
        let (state, reason) = fleet.state(&gateway);
        assert_eq!(state, GatewayState::Suspected, "{gateway}");
        assert!(
            reason.starts_with("fleet-wide: 10 of 20 agents silent for over 15s (over 40%)"),
            "{reason}"
        );
    }
    assert!(fleet.offline().is_empty());

    fleet.beat(&silent).await;
    let all: Vec<String> = fleet.tokens.keys().cloned().collect();
    fleet.run(30, &all).await;
    assert_eq!(fleet.state(&gateway()).0, GatewayState::Connected);
    assert_eq!(fleet.state(&gw2()).0, GatewayState::Connected);
    assert!(fleet.offline_events().await.is_empty(), "no false OFFLINE");
}

#[tokio::test(start_paused = true)]
async fn a_healthy_gateway_keeps_the_seeds_exact_policy() {
    let mut fleet = Fleet::start(start(settings()).await, 9).await;
    let healthy: Vec<String> = fleet.tokens.keys().cloned().collect();
    // One agent that never checks in, among nine heartbeating ones.
    let t0 = fleet.started.elapsed().as_secs_f64();
    let token = fleet.f.provision("stuck").await.token.unwrap();
    fleet.tokens.insert("stuck".into(), token);

    fleet.run(120, &healthy).await;
    let wakes: Vec<(f64, u32)> = fleet
        .wakes_to(&gateway())
        .into_iter()
        .filter(|(_, agent, _)| agent == "stuck")
        .map(|(at, _, attempt)| (at - t0, attempt))
        .collect();
    assert_eq!(wakes, [(0.0, 1), (30.0, 2), (60.0, 3)]);
    let offline = fleet.offline_events().await;
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].agent.id.as_str(), "stuck");
    assert_eq!(offline[0].reason, Reason::MaxAttemptsReached);
    assert_eq!(
        offline[0]
            .at
            .since(Timestamp::from_micros(EPOCH))
            .as_secs_f64()
            - t0,
        90.0,
        "OFFLINE at 90 s"
    );
    assert_eq!(fleet.state(&gateway()).0, GatewayState::Connected);
}

#[tokio::test(start_paused = true)]
async fn a_restart_during_suspicion_keeps_it_and_nobody_is_marked_offline() {
    let store = Arc::new(MemoryStore::new());
    let fleet = Fleet::start(start_on(store.clone(), settings()).await, 10).await;
    let a = fleet.names("a");
    let silent = a[..6].to_vec();
    let healthy = except(&fleet.tokens.keys().cloned().collect::<Vec<_>>(), &silent);
    fleet.run(60, &healthy).await;
    let brake = fleet.f.lifecycle.list_gateways()[0].gateway.brake.clone();
    let brake = brake.expect("suspected before the restart");
    fleet.f.lifecycle.stop().await;

    // Down for 30 s, then a new process on the same store.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let now = fleet.f.clock.now();
    let tokens = fleet.tokens.clone();
    let mut second = Fleet {
        f: start_at(store, settings(), now).await,
        tokens,
        received: BTreeMap::new(),
        started: fleet.started,
    };
    let first = second.f.gateway_token.clone();
    second.serve(gateway(), &first);
    second.beat(&healthy).await;
    second.run(120, &healthy).await;
    let view = second.f.lifecycle.list_gateways()[0].clone();
    let kept = view.gateway.brake.expect("still suspected");
    assert_eq!(
        kept.since, brake.since,
        "the bound runs from the first suspicion"
    );
    assert!(second.offline().is_empty(), "no OFFLINE past every lease");
    let flips = second
        .history(&gateway())
        .await
        .into_iter()
        .filter(|(from, _, _)| *from == GatewayState::Suspected)
        .filter(|(_, to, _)| *to != GatewayState::Suspected)
        .count();
    assert_eq!(flips, 0, "no false recovery after the restart");

    second.beat(&silent).await;
    let all: Vec<String> = second.tokens.keys().cloned().collect();
    second.run(30, &all).await;
    assert_eq!(second.state(&gateway()).0, GatewayState::Connected);
    assert!(second.offline_events().await.is_empty());
}
