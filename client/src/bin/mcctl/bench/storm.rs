//! `mcctl storm`: the client side of a lease-expiry storm set up by
//! `scripts/storm-bench` (which seeds the fleet and starts the server).
//!
//! The fleet is `PREFIX-0000000` on, each agent's token `mca_PREFIX-N` (the
//! script stores its hash). Agent N expires in the storm when
//! `N % every == 0`, falls in the quiet trickle before it when
//! `N % every == trickle`, and is one of "the others" otherwise. From
//! `--beat-from` before the due second on, heartbeats of the others go out
//! at `--rate` a second, open loop, each with its own token, and each is
//! timed from when it was due to be sent; a watch of OFFLINE agents records
//! when each storm agent's lease-expiry event reached this client (after
//! the server committed it and published it to watchers). Prints one JSON
//! object.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use mission_control_client::agent_lifecycle_client::AgentLifecycleClient;
use mission_control_client::{
    AGENT_TOKEN_HEADER, AgentStatus, Endpoints, HeartbeatRequest, TransitionReason,
    WatchAgentRequest, watch_agent_response::Kind,
};
use tonic::metadata::AsciiMetadataValue;

use super::stats::{Latencies, load_average};
use crate::context::Context;
use crate::failure::Failure;

#[derive(Debug, Args)]
pub struct StormArgs {
    /// Agents in the fleet (ids PREFIX-0000000 on).
    #[arg(long, default_value_t = 1_000_000)]
    pub agents: u64,
    #[arg(long, default_value = "storm")]
    pub prefix: String,
    /// Agent N is in the storm when N % EVERY == 0.
    #[arg(long, default_value_t = 10)]
    pub every: u64,
    /// Agent N is in the trickle when N % EVERY == TRICKLE (never beaten).
    #[arg(long, default_value_t = 5)]
    pub trickle: u64,
    /// The storm's due second, in milliseconds since the Unix epoch.
    #[arg(long)]
    pub due_at_ms: u64,
    /// Heartbeats a second, spread over the others, open loop.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Heartbeats start this long before the due second.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub beat_from: Duration,
    /// Give up this long after the due second.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub patience: Duration,
    /// Heartbeats go on this long after the last storm event.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub beat_after: Duration,
    /// Connections the heartbeats are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
}

/// Heartbeats in the first this long after they start are not counted.
const WARM_UP: Duration = Duration::from_secs(2);
/// The slowest heartbeats of each window listed with when they went out.
const SLOWEST_SHOWN: usize = 12;

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The storm agents' OFFLINE events as they arrived: ms after the due second.
#[derive(Default)]
struct Arrivals {
    seen: HashSet<u64>,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    other_offline: u64,
}

pub async fn run(ctx: &Context, args: StormArgs) -> Result<(), Failure> {
    if args.every < 2 || args.trickle == 0 || args.trickle >= args.every || args.rate == 0 {
        return Err(Failure::Usage(
            "--every must be at least 2, --trickle in 1..every, --rate at least 1".into(),
        ));
    }
    let due = args.due_at_ms as i64;
    let storm_size = args.agents.div_ceil(args.every);
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let watching = watch(ctx, &args, arrivals.clone(), due).await?;

    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        let endpoints = Endpoints::parse(ctx.endpoints.current(), Some(&ctx.tls))?;
        channels.push(endpoints.pick().1);
    }
    // Wait for the heartbeats' start.
    let start_ms = due - args.beat_from.as_millis() as i64;
    let wait = start_ms - unix_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let load_before = load_average();
    let beats = Arc::new(Mutex::new(Vec::<(i64, Result<Duration, String>)>::new()));
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    let give_up = due + args.patience.as_millis() as i64;
    loop {
        let now_ms = unix_ms();
        let done = {
            let arrivals = arrivals.lock().expect("not poisoned");
            arrivals.seen.len() as u64 >= storm_size
                && arrivals
                    .last_ms
                    .is_some_and(|last| now_ms - due > last + args.beat_after.as_millis() as i64)
        };
        if done || now_ms > give_up {
            break;
        }
        // Every call due by now goes out now, each timed from when it was due.
        let due_calls = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
        while sent < due_calls {
            let intended = started + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            let agent = other_agent(sent, &args);
            let token: AsciiMetadataValue = format!("mca_{}-{agent}", args.prefix)
                .parse()
                .expect("ascii");
            let channel = channels[(sent as usize) % channels.len()].clone();
            let beats = beats.clone();
            let sent_ms = unix_ms() - due;
            tasks.spawn(async move {
                let mut request = tonic::Request::new(HeartbeatRequest::default());
                request.metadata_mut().insert(AGENT_TOKEN_HEADER, token);
                let outcome = AgentLifecycleClient::new(channel)
                    .heartbeat(request)
                    .await
                    .map_err(|status| format!("{:?}", status.code()))
                    .and_then(|reply| match reply.into_inner().status() {
                        AgentStatus::Online => Ok(intended.elapsed()),
                        other => Err(format!("{other:?}")),
                    });
                beats.lock().expect("not poisoned").push((sent_ms, outcome));
            });
            sent += 1;
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    while !tasks.is_empty() && Instant::now() < stop_deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), tasks.join_next()).await;
    }
    tasks.abort_all();
    watching.abort();
    let load_after = load_average();

    let arrivals = arrivals.lock().expect("not poisoned");
    let last_ms = arrivals.last_ms.unwrap_or(i64::MAX);
    let beats = beats.lock().expect("not poisoned");
    // The first seconds open connections: not counted in any window.
    let warm_until = WARM_UP.as_millis() as i64 - args.beat_from.as_millis() as i64;
    let mut windows = [
        ("warm_up", Latencies::default(), 0u64, 0u64),
        ("before_due", Latencies::default(), 0, 0),
        ("storm", Latencies::default(), 0, 0),
        ("after_storm", Latencies::default(), 0, 0),
    ];
    // When the slowest of each window went out: a stall shows as a cluster.
    let mut slowest: [Vec<(Duration, i64)>; 4] = Default::default();
    for (sent_ms, outcome) in beats.iter() {
        let window = if *sent_ms < warm_until {
            0
        } else if *sent_ms < 0 {
            1
        } else if *sent_ms <= last_ms {
            2
        } else {
            3
        };
        match outcome {
            Ok(latency) => {
                windows[window].1.record(*latency);
                windows[window].2 += 1;
                slowest[window].push((*latency, *sent_ms));
            }
            Err(_) => windows[window].3 += 1,
        }
    }
    let mut heartbeats = serde_json::Map::new();
    for ((name, latencies, ok, failed), slowest) in windows.iter_mut().zip(&mut slowest) {
        let s = latencies.summary();
        slowest.sort_unstable_by(|a, b| b.cmp(a));
        let slowest: Vec<_> = slowest
            .iter()
            .take(SLOWEST_SHOWN)
            .map(|(latency, sent_ms)| serde_json::json!([sent_ms, latency.as_secs_f64() * 1e3]))
            .collect();
        heartbeats.insert(
            (*name).to_owned(),
            serde_json::json!({
                "ok": ok, "failed": failed,
                "p50_ms": s.p50, "p99_ms": s.p99, "p999_ms": s.p999, "max_ms": s.max,
                "slowest_sent_after_due_ms_and_ms": slowest,
            }),
        );
    }
    let report = serde_json::json!({
        "storm_agents": storm_size,
        "offline_seen": arrivals.seen.len(),
        "other_offline_seen": arrivals.other_offline,
        "first_offline_after_due_ms": arrivals.first_ms,
        "last_offline_after_due_ms": arrivals.last_ms,
        "heartbeat_rate": args.rate,
        "heartbeats_sent": sent,
        "heartbeats": heartbeats,
        "load_average_before": load_before,
        "load_average_after": load_after,
    });
    println!("{report}");
    if (arrivals.seen.len() as u64) < storm_size {
        return Err(Failure::Halted(format!(
            "only {} of {storm_size} storm agents were seen OFFLINE within {:?} of the due second",
            arrivals.seen.len(),
            args.patience
        )));
    }
    Ok(())
}

/// The `n`th heartbeat's agent: one of the others (neither storm nor
/// trickle), cycling through them.
fn other_agent(n: u64, args: &StormArgs) -> String {
    let per_block = args.every - 2;
    let others = args.agents / args.every * per_block;
    let k = n % others.max(1);
    let (block, mut offset) = (k / per_block, k % per_block + 1);
    if offset >= args.trickle {
        offset += 1;
    }
    format!("{:07}", block * args.every + offset)
}

/// Opens a watch of OFFLINE agents and records each storm agent's
/// lease-expiry event as it arrives.
async fn watch(
    ctx: &Context,
    args: &StormArgs,
    arrivals: Arc<Mutex<Arrivals>>,
    due: i64,
) -> Result<tokio::task::JoinHandle<()>, Failure> {
    let request = WatchAgentRequest {
        statuses: vec![AgentStatus::Offline as i32],
        ..Default::default()
    };
    let mut stream = ctx.operator.watch(request).await?;
    let (prefix, every) = (format!("{}-", args.prefix), args.every);
    Ok(tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            let Some(Kind::Event(event)) = message.kind else {
                continue;
            };
            if event.reason() != TransitionReason::LeaseExpired {
                continue;
            }
            let at = unix_ms() - due;
            let Some(agent) = event.agent else { continue };
            let n = agent
                .id
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<u64>().ok());
            let mut arrivals = arrivals.lock().expect("not poisoned");
            match n {
                Some(n) if n % every == 0 => {
                    if arrivals.seen.insert(n) {
                        arrivals.first_ms.get_or_insert(at);
                        arrivals.last_ms = Some(at);
                    }
                }
                _ => arrivals.other_offline += 1,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_others_are_neither_storm_nor_trickle_agents() {
        let args = StormArgs {
            agents: 100,
            prefix: "s".into(),
            every: 10,
            trickle: 5,
            due_at_ms: 0,
            rate: 1,
            beat_from: Duration::ZERO,
            patience: Duration::ZERO,
            beat_after: Duration::ZERO,
            connections: 1,
        };
        let picked: Vec<u64> = (0..80)
            .map(|n| other_agent(n, &args).parse().unwrap())
            .collect();
        assert!(
            picked
                .iter()
                .all(|n| n % 10 != 0 && n % 10 != 5 && *n < 100)
        );
        assert_eq!(picked.iter().collect::<HashSet<_>>().len(), 80);
        assert_eq!(other_agent(80, &args), other_agent(0, &args));
    }
}
