//! `mcctl bench-watchers`: what full-fleet watches cost the server. Opens
//! many `WatchAgent` streams with no filter at once (each starts with a
//! snapshot of every agent), reads their snapshots or never reads them,
//! closes them, and reports the server's resident memory before, at the
//! peak, while they are open and after they closed, with the latency of
//! health checks made meanwhile on a connection of their own.
//!
//! Load the fleet first (`mcctl bench`, or seed the database as
//! scripts/watch-bench does); this opens watches only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use mission_control_client::operator::OperatorClient;
use mission_control_client::watch_agent_response::Kind;
use mission_control_client::{Endpoints, WatchAgentRequest};
use serde_json::json;
use tokio::sync::watch;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::stats::{Latencies, load_average, resident_bytes};
use crate::context::Context;
use crate::failure::Failure;

/// A signal many tasks wait on.
#[derive(Clone)]
struct CancellationToken(Arc<watch::Sender<bool>>);

impl CancellationToken {
    fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    fn cancel(&self) {
        self.0.send_replace(true);
    }

    fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    async fn cancelled(&self) {
        let _ = self.0.subscribe().wait_for(|c| *c).await;
    }
}

/// Opens full-fleet watches and measures the server's memory and health.
#[derive(Debug, Args)]
pub struct WatchersArgs {
    /// Watch streams to open at once.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// Connections they are spread over.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Open the streams and never read them (the server may buffer what
    /// flow control lets it).
    #[arg(long)]
    pub unread: bool,
    /// How long the streams stay open: until every snapshot is read (or
    /// this passes) when reading; this long when not.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// How long after closing them the memory is read again.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// The server's process id (same machine), to read its resident memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Close every stream at once when the server's resident memory passes
    /// this many MB (so a server that copies the fleet per watcher does not
    /// take the machine's memory).
    #[arg(long, default_value_t = 6_000)]
    pub max_rss_mb: u64,
    /// A health check counts as late past this.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    open_failed: AtomicU64,
    snapshots_done: AtomicU64,
    snapshot_items: AtomicU64,
    stream_errors: AtomicU64,
}

pub async fn run(ctx: &Context, args: WatchersArgs) -> Result<(), Failure> {
    if args.watchers == 0 || args.connections == 0 {
        return Err(Failure::Usage(
            "--watchers and --connections must be at least 1".into(),
        ));
    }
    let pid = args.server_pid;
    let rss = move || pid.and_then(resident_bytes).map(|b| b as f64 / 1e6);
    let load_start = load_average();
    let before = rss();

    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let endpoints = Endpoints::parse(ctx.endpoints.current(), Some(&ctx.tls))?;
        let mut operator = OperatorClient::with_endpoints(endpoints);
        if let Some(token) = &ctx.operator_token {
            operator = operator.with_operator_token(token)?;
        }
        clients.push(operator);
    }

    let stop_health = CancellationToken::new();
    let health = health_loop(ctx, args.deadline, stop_health.clone())?;

    // The peak, sampled; and the guard against a runaway server.
    let (peak_tx, peak_rx) = watch::channel(before.unwrap_or(0.0));
    let close = CancellationToken::new();
    let over_limit = Arc::new(AtomicBool::new(false));
    let stop_sampler = CancellationToken::new();
    let sampler = {
        let (close, over_limit, limit) = (close.clone(), over_limit.clone(), args.max_rss_mb);
        let stop = stop_sampler.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let now = rss().unwrap_or(0.0);
                peak_tx.send_if_modified(|peak| {
                    let higher = now > *peak;
                    *peak = peak.max(now);
                    higher
                });
                if now > limit as f64 && !over_limit.swap(true, Ordering::SeqCst) {
                    close.cancel();
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.cancelled() => {}
                }
            }
        })
    };

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let last_snapshot_at = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let mut tasks = Vec::with_capacity(args.watchers);
    for n in 0..args.watchers {
        let client = clients[n % clients.len()].clone();
        let (counters, close, last) = (counters.clone(), close.clone(), last_snapshot_at.clone());
        let read = !args.unread;
        tasks.push(tokio::spawn(async move {
            let opened = tokio::select! {
                opened = client.watch(WatchAgentRequest::default()) => opened,
                _ = close.cancelled() => return,
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(_) => {
                    counters.open_failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            counters.opened.fetch_add(1, Ordering::Relaxed);
            if !read {
                close.cancelled().await;
                return;
            }
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    _ = close.cancelled() => return,
                };
                match message {
                    Ok(Some(response)) => match response.kind {
                        Some(Kind::Event(_)) => {
                            counters.snapshot_items.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Kind::SnapshotComplete(_)) => {
                            counters.snapshots_done.fetch_add(1, Ordering::Relaxed);
                            *last.lock().unwrap() = Some(started.elapsed());
                            // Open, reading what follows, until closed.
                            loop {
                                tokio::select! {
                                    m = stream.message() => if !matches!(m, Ok(Some(_))) { return },
                                    _ = close.cancelled() => return,
                                }
                            }
                        }
                        _ => {}
                    },
                    Ok(None) | Err(_) => {
                        counters.stream_errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }

    // Held open: until every snapshot is read (reading), or for --hold.
    let deadline = tokio::time::Instant::now() + args.hold;
    loop {
        let done = counters.snapshots_done.load(Ordering::Relaxed)
            + counters.stream_errors.load(Ordering::Relaxed)
            + counters.open_failed.load(Ordering::Relaxed)
            >= args.watchers as u64;
        if close.is_cancelled() || tokio::time::Instant::now() >= deadline || (!args.unread && done)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_rss = rss();
    stop_sampler.cancel();
    let _ = sampler.await;
    let open_peak = *peak_rx.borrow();
    let held_for = started.elapsed();

    close.cancel();
    for task in tasks {
        let _ = task.await;
    }
    drop(clients);
    tokio::time::sleep(args.settle).await;
    let after = rss();
    stop_health.cancel();
    let health = tokio::task::spawn_blocking(move || health.join())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let load_end = load_average();

    let c = &counters;
    let mut latencies = health.latencies;
    let summary = latencies.summary();
    let report = json!({
        "watchers": args.watchers,
        "connections": args.connections,
        "reading": !args.unread,
        "opened": c.opened.load(Ordering::Relaxed),
        "open_failed": c.open_failed.load(Ordering::Relaxed),
        "snapshots_read": c.snapshots_done.load(Ordering::Relaxed),
        "snapshot_items_read": c.snapshot_items.load(Ordering::Relaxed),
        "stream_errors": c.stream_errors.load(Ordering::Relaxed),
        "all_snapshots_read_after_s": last_snapshot_at.lock().unwrap().map(|d| d.as_secs_f64()),
        "held_s": held_for.as_secs_f64(),
        "closed_over_rss_limit": over_limit.load(Ordering::SeqCst),
        "rss_mb": {
            "before": before,
            "peak": open_peak,
            "open": open_rss,
            "after_close": after,
        },
        "health": {
            "checks": health.ok,
            "failed": health.failed,
            "late": health.late,
            "p99_ms": summary.p99,
            "max_ms": summary.max,
        },
        "load_average": { "start": load_start, "end": load_end },
    });
    ctx.print(
        || report.clone(),
        || serde_json::to_string_pretty(&report).unwrap_or_default(),
    );
    Ok(())
}

#[derive(Default)]
struct Health {
    ok: u64,
    failed: u64,
    late: u64,
    latencies: Latencies,
}

/// Health checks one after another on a connection of their own, every
/// 20 ms, until stopped: on a thread and runtime of their own, so that a
/// check waits for the server and not behind this process's 1,000 watch
/// streams (with the server idle, checks on the shared runtime took over a
/// second: the load generator's own queue).
fn health_loop(
    ctx: &Context,
    deadline: Duration,
    stop: CancellationToken,
) -> Result<std::thread::JoinHandle<Health>, Failure> {
    let (list, tls) = (ctx.endpoints.current().to_owned(), ctx.tls.clone());
    // Checked here, so a bad endpoint is a usage error, not a silent thread.
    Endpoints::parse(&list, Some(&tls))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(format!("a runtime for the health checks: {e}")))?;
    Ok(std::thread::spawn(move || {
        runtime.block_on(async move {
            let endpoints = Endpoints::parse(&list, Some(&tls)).expect("parsed above");
            let mut client = HealthClient::new(endpoints.pick().1);
            let mut health = Health::default();
            while !stop.is_cancelled() {
                let at = Instant::now();
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                match client.check(request).await {
                    Ok(_) => health.ok += 1,
                    Err(_) => health.failed += 1,
                }
                let took = at.elapsed();
                health.late += u64::from(took > deadline);
                health.latencies.record(took);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stop.cancelled() => {}
                }
            }
            health
        })
    }))
}
