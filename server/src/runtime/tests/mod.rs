//! The runtime on paused tokio time: the real writer, the in-memory store
//! and a gateway session, driven through the same API the gRPC layer uses.
//! Nothing here sleeps in real time: tokio advances the clock when idle.

mod brake;
mod budgets;
mod durability;
mod escalation;
mod flags;
mod gateway;
mod leadership;
mod paged;
mod pipeline;
mod redelivery;
mod rollouts;
mod shedding;
mod snapshots;
mod takeover;
mod template_sync;
mod timer_lag;
mod wake_rate;
mod watching;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::engine::{BoardId, GatewayId, LinkState, Reason, Role, WakeOrder};
use crate::store::MemoryStore;

const EPOCH: i64 = 1_800_000_000_000_000;

struct Fixture {
    lifecycle: Lifecycle,
    store: Arc<MemoryStore>,
    clock: Clock,
    gateway_token: String,
}

async fn start(settings: Settings) -> Fixture {
    start_on(Arc::new(MemoryStore::new()), settings).await
}

async fn start_on(store: Arc<MemoryStore>, settings: Settings) -> Fixture {
    start_at(store, settings, Timestamp::from_micros(EPOCH)).await
}

/// A (re)start on `store` with the clock reading `now`.
async fn start_at(store: Arc<MemoryStore>, settings: Settings, now: Timestamp) -> Fixture {
    let clock = Clock::starting_at(now);
    let lifecycle = Lifecycle::start(store.clone(), settings, clock)
        .await
        .expect("start");
    let registered = lifecycle
        .register_gateway(GatewaySpec {
            gateway_id: gateway(),
            name: Some("Gateway one".into()),
            // A fresh token even when restarting on a store that has it.
            rotate_token: true,
        })
        .await
        .expect("register gateway");
    Fixture {
        lifecycle,
        store,
        clock,
        gateway_token: registered.token.unwrap_or_default(),
    }
}

/// A sample's value in rendered metrics, by its whole name and labels.
fn metric(metrics: &str, sample: &str) -> u64 {
    let prefix = format!("{sample} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {sample} in {metrics}"))
        .parse()
        .expect("a whole number")
}

fn gateway() -> GatewayId {
    GatewayId::parse("gw-1").unwrap()
}

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

fn spec(agent: &str) -> ProvisionSpec {
    ProvisionSpec {
        agent_id: id(agent),
        name: agent.to_owned(),
        gateway_id: gateway(),
        board_id: Some(BoardId::parse("board").unwrap()),
        role: Role::BoardWorker,
        template_version: "v1".into(),
        rotate_token: false,
    }
}

impl Fixture {
    /// Seconds since the first fixture's clock started.
    fn elapsed(&self) -> f64 {
        self.clock
            .now()
            .since(Timestamp::from_micros(EPOCH))
            .as_secs_f64()
    }

    async fn provision(&self, agent: &str) -> ProvisionOutcome {
        self.lifecycle
            .provision(spec(agent))
            .await
            .expect("provision")
    }

    fn connect(&self) -> (GatewaySession, mpsc::Receiver<Outbound>) {
        self.lifecycle
            .connect_gateway(&self.gateway_token)
            .expect("connect gateway")
    }

    fn agent(&self, agent: &str) -> Agent {
        self.lifecycle.get(&id(agent)).expect("agent")
    }
}

/// The next command, waiting (in paused time) up to `within`.
async fn next_command(
    rx: &mut mpsc::Receiver<Outbound>,
    within: Duration,
) -> Option<(u64, GatewayCommand)> {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(Outbound::Command {
            command_id,
            command,
        })) => Some((command_id, command)),
        _ => None,
    }
}

async fn next_wake(
    rx: &mut mpsc::Receiver<Outbound>,
    within: Duration,
) -> Option<(u64, WakeOrder)> {
    loop {
        match next_command(rx, within).await? {
            (id, GatewayCommand::Wake(order)) => return Some((id, order)),
            (_, GatewayCommand::Retire(_) | GatewayCommand::TemplateSync(_)) => continue,
        }
    }
}

/// Wakes sent at `(time since a start, agent)` kept within `burst` at once
/// and `rate` a second after it, and were no slower than that allows (a
/// round late at most).
fn assert_paced(sent: &[(Duration, String)], burst: usize, rate: usize) {
    let round = crate::engine::RELEASE_ROUND.as_secs_f64();
    for (index, (after, agent)) in sent.iter().enumerate() {
        let count = (index + 1) as f64;
        let at = after.as_secs_f64();
        assert!(
            count <= burst as f64 + rate as f64 * at + 1e-9,
            "wake {index} ({agent}) at {at}s: over the budget"
        );
        let due = ((count - burst as f64) / rate as f64).max(0.0);
        assert!(
            at <= due + round + 1e-9,
            "wake {index} ({agent}) at {at}s: later than the budget makes it"
        );
    }
}

fn fast_settings() -> Settings {
    Settings {
        // Far apart, so the tests below see only what they cause.
        checkpoint_interval: Duration::from_secs(3600),
        compaction_interval: Duration::from_secs(3600),
        health_check_interval: Duration::from_secs(3600),
        // Tests that leave wakes unacknowledged see each once; the
        // `redelivery` tests set the real timeout.
        gateway_ack_timeout: Duration::from_secs(3600),
        // Wakes to a disconnected gateway fail at once, as the per-agent
        // policy alone says; the `gateway` tests hold them.
        policy: Policy {
            gateway_grace: Duration::ZERO,
            ..Policy::default()
        },
        ..Settings::default()
    }
}
