//! Throughput and memory, as ratios measured in one run (the machine is
//! shared and noisy; absolute figures mean little).
//!
//!     cargo bench -p mission-control-server --bench throughput
//!
//! - steady-state Heartbeat (lease renewed in memory) against a no-op RPC
//!   (grpc.health.v1.Health/Check) through the same clients;
//! - Provision against the same no-op, on the in-memory store and on Postgres
//!   (every call a committed transition with its event row);
//! - engine memory per agent.
//!
//! Postgres: MC_TEST_DATABASE_URL or postgres://postgres@127.0.0.1:5432/postgres
//! (a scratch database is created and dropped). Set MC_BENCH_SECONDS to
//! change the length of each phase (default 5).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use mission_control_proto::v1::agent_lifecycle_client::AgentLifecycleClient;
use mission_control_proto::v1::gateways_client::GatewaysClient;
use mission_control_proto::v1::{
    AgentRole, HeartbeatRequest, ProvisionRequest, RegisterGatewayRequest,
};
use mission_control_server::app::App;
use mission_control_server::config::Config;
use mission_control_server::testing::TestDatabase;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const CONNECTIONS: usize = 4;
const CONCURRENCY: usize = 64;
const AGENTS: usize = 1000;

fn seconds() -> Duration {
    let secs = std::env::var("MC_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

async fn channels(addr: std::net::SocketAddr) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(channel);
    }
    channels
}

/// Runs `call` from CONCURRENCY tasks for the phase length; calls per second.
async fn rate<F, Fut>(channels: &[Channel], call: F) -> f64
where
    F: Fn(Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..CONCURRENCY {
        let (call, done, stop) = (call.clone(), done.clone(), stop.clone());
        let channel = channels[task % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut n = task as u64;
            while !stop.load(Ordering::Relaxed) {
                call(channel.clone(), n).await.expect("call succeeds");
                done.fetch_add(1, Ordering::Relaxed);
                n += CONCURRENCY as u64;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(seconds()).await;
    stop.store(true, Ordering::Relaxed);
    let calls = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        task.await.unwrap();
    }
    calls as f64 / elapsed.as_secs_f64()
}

async fn measure(label: &str, flags: &[&str]) {
    let mut args = vec!["mission-control", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    let config = Config::parse_from(args);
    let app = App::start(&config).await.expect("server starts");
    let chans = channels(app.addr()).await;

    GatewaysClient::new(chans[0].clone())
        .register_gateway(RegisterGatewayRequest {
            gateway_id: "bench".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for n in 0..AGENTS {
        let request = ProvisionRequest::new(format!("agent-{n}"), "bench", AgentRole::GatewayMain);
        let reply = AgentLifecycleClient::new(chans[0].clone())
            .provision(request)
            .await
            .unwrap();
        tokens.push(reply.into_inner().agent_token);
    }
    let tokens: Arc<Vec<tonic::metadata::AsciiMetadataValue>> =
        Arc::new(tokens.iter().map(|t| t.parse().unwrap()).collect());
    // The first heartbeat is a check-in (a committed transition); after it,
    // heartbeats are steady-state renewals.
    for token in tokens.iter() {
        let mut request = tonic::Request::new(HeartbeatRequest::default());
        request
            .metadata_mut()
            .insert(mission_control_proto::metadata::AGENT_TOKEN, token.clone());
        AgentLifecycleClient::new(chans[0].clone())
            .heartbeat(request)
            .await
            .unwrap();
    }

    let noop = rate(&chans, |channel, _| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map(drop)
    })
    .await;
    let beat_tokens = tokens.clone();
    let heartbeat = rate(&chans, move |channel, n| {
        let token = beat_tokens[n as usize % beat_tokens.len()].clone();
        async move {
            let mut request = tonic::Request::new(HeartbeatRequest::default());
            request
                .metadata_mut()
                .insert(mission_control_proto::metadata::AGENT_TOKEN, token);
            AgentLifecycleClient::new(channel)
                .heartbeat(request)
                .await
                .map(drop)
        }
    })
    .await;
    let provision = rate(&chans, |channel, n| async move {
        let request = ProvisionRequest::new(
            format!("agent-{}", n % AGENTS as u64),
            "bench",
            AgentRole::GatewayMain,
        );
        AgentLifecycleClient::new(channel)
            .provision(request)
            .await
            .map(drop)
    })
    .await;

    println!("{label}:");
    println!("  no-op Health/Check        {noop:>10.0} calls/s  (baseline 1.00)");
    println!(
        "  Heartbeat (steady state)  {heartbeat:>10.0} calls/s  ratio {:.2}",
        heartbeat / noop
    );
    println!(
        "  Provision (committed)     {provision:>10.0} calls/s  ratio {:.2}",
        provision / noop
    );
    app.shutdown().await;
}

fn engine_bytes_per_agent() -> f64 {
    use mission_control_server::engine::{
        AgentId, BoardId, Engine, GatewayId, GatewaySpec, Policy, ProvisionSpec, Role, Timestamp,
        TokenHash,
    };
    const COUNT: usize = 100_000;
    let rss = || -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    };
    let before = rss();
    let mut engine = Engine::new(Policy::default());
    let now = Timestamp::from_micros(1_800_000_000_000_000);
    let mut batch = engine.begin(now);
    let gateway = GatewayId::parse("gw").unwrap();
    engine.register_gateway(
        &mut batch,
        GatewaySpec {
            gateway_id: gateway.clone(),
            name: Some("gw".into()),
            rotate_token: false,
        },
        TokenHash([0; 32]),
    );
    engine.commit(batch);
    for chunk in 0..COUNT / 1000 {
        let mut batch = engine.begin(now);
        for n in chunk * 1000..(chunk + 1) * 1000 {
            let mut token = [0u8; 32];
            token[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
            let spec = ProvisionSpec {
                agent_id: AgentId::parse(format!("agent-{n:06}")).unwrap(),
                name: format!("Agent {n}"),
                gateway_id: gateway.clone(),
                board_id: Some(BoardId::parse("board-1").unwrap()),
                role: Role::BoardWorker,
                template_version: "2026.11.1".into(),
                rotate_token: false,
            };
            engine
                .provision(&mut batch, spec, Some(TokenHash(token)))
                .unwrap();
        }
        engine.commit(batch);
    }
    let after = rss();
    assert_eq!(engine.agent_count(), COUNT);
    (after.saturating_sub(before)) as f64 / COUNT as f64
}

#[tokio::main]
async fn main() {
    // The heap as the server's binary sets it, for its memory figures.
    mission_control_server::heap::configure();
    let per_agent = engine_bytes_per_agent();
    println!(
        "engine memory: {per_agent:.0} bytes per agent awaiting check-in (RSS growth over 100,000 agents, timers included)"
    );

    measure("in-memory store (--dev)", &["--dev"]).await;
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    measure("Postgres store", &["--database-url", &url]).await;
}
