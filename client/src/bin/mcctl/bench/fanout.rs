//! `mcctl bench --watchers N`: watch fan-out under load. N watches of every
//! agent's events stay open while `--transitions-per-second` re-provisions
//! of a separate set of agents commit transitions, during the health and
//! heartbeat rounds (so their ratio is measured under the fan-out). Every
//! event each watcher receives is timed from its commit time (`at`, same
//! machine clock) to its arrival, and each watcher's revisions are checked
//! for loss and duplicates against what any watcher received.
//!
//! The watches decode only what is measured (revision, reason, time): the
//! load generator shares the machine with the server, and decoding every
//! agent in full a million times a second would measure the client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use mission_control_client::{AgentRole, ProvisionRequest, WatchAgentRequest};
use serde_json::{Value, json};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use super::Connection;
use super::load::{Until, drive};
use super::stats::{Latencies, load_average};
use super::tally::{Histogram, Seen, cpu_seconds, cpu_seconds_of};

const WATCH_PATH: &str = "/missioncontrol.lifecycle.v1.AgentLifecycle/WatchAgent";
/// `TRANSITION_REASON_SNAPSHOT`: a snapshot entry, not a change.
const REASON_SNAPSHOT: i32 = 1;
/// After the transitions stop, how long watchers may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Watches of every agent's events held open during the health and
    /// heartbeat rounds (0: no fan-out).
    #[arg(long, default_value_t = 0)]
    pub watchers: usize,
    /// Watches per connection of their own (apart from the calls').
    #[arg(long, default_value_t = 100)]
    pub watchers_per_connection: usize,
    /// Transitions a second driven meanwhile: re-provisions (each a
    /// committed `UPDATED` event) of `--churn-agents` agents of their own.
    #[arg(long, default_value_t = 5000)]
    pub transitions_per_second: u64,
    /// Agents re-provisioned in turn for the transitions (PREFIX-churn-...).
    #[arg(long, default_value_t = 1000)]
    pub churn_agents: u64,
    /// Open each watch with a snapshot of the fleet instead of from the
    /// current revision.
    #[arg(long)]
    pub watch_snapshot: bool,
    /// Fail (exit 4) when the delivery p99 over every watcher's events is
    /// above this, any event is lost or duplicated, a watch ends early, or
    /// the transitions ran below 90 % of the asked rate.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub max_delivery_p99: Duration,
}

/// The parts of `WatchAgentResponse` the bench reads; prost skips the rest
/// (the agent, the description) without building it.
#[derive(Clone, PartialEq, prost::Message)]
struct Light {
    #[prost(message, optional, tag = "1")]
    event: Option<LightEvent>,
    #[prost(message, optional, tag = "2")]
    snapshot_complete: Option<LightRevision>,
    #[prost(message, optional, tag = "3")]
    bookmark: Option<LightRevision>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LightEvent {
    #[prost(uint64, tag = "1")]
    revision: u64,
    #[prost(int32, tag = "5")]
    reason: i32,
    #[prost(message, optional, tag = "9")]
    at: Option<prost_types::Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LightRevision {
    #[prost(uint64, tag = "1")]
    revision: u64,
}

/// What one watcher saw.
struct Watched {
    /// The revision the changes it received start after.
    start: u64,
    last: u64,
    received: u64,
    duplicates: u64,
    snapshot: u64,
    latencies: Histogram,
    /// How the stream ended, if it ended before the bench closed it.
    ended: Option<String>,
}

/// The fan-out while it runs.
pub struct Fanout {
    watchers: Vec<tokio::task::JoinHandle<Watched>>,
    driver: tokio::task::JoinHandle<Driven>,
    stop_driving: Arc<AtomicBool>,
    caught_up_to: tokio::sync::watch::Sender<u64>,
    seen: Arc<Seen>,
    started: Instant,
    asked_rate: u64,
    load_at_start: Option<String>,
    /// CPU seconds of the server (if its pid is known) and of this process
    /// when the transitions started.
    cpu_at_start: (Option<f64>, Option<f64>),
    server_pid: Option<u32>,
}

#[derive(Default)]
struct Driven {
    ok: u64,
    failed: u64,
    /// Each transition's call, sent to committed.
    latencies: Latencies,
    last_revision: u64,
    elapsed: Duration,
}

/// Provisions the churn agents, opens the watches and starts the
/// transitions; the caller runs its rounds, then calls [`Fanout::finish`].
pub async fn start(
    calls: &[Connection],
    watches: Vec<Channel>,
    authorization: Option<AsciiMetadataValue>,
    args: &super::BenchArgs,
    expected_seconds: u64,
) -> Result<Fanout, String> {
    let fan = &args.fanout;
    let churn = churn_ids(&args.prefix, fan.churn_agents);
    let (gateway, boards) = (args.gateway.clone(), args.boards);
    let ids = churn.clone();
    let provisioned = drive(
        calls,
        args.streams,
        Until::Calls(fan.churn_agents),
        move |connection: Connection, n| {
            let request = churn_request(&ids, &gateway, boards, n);
            async move {
                connection
                    .operator
                    .provision(request)
                    .await
                    .map(drop)
                    .map_err(super::into_status)
            }
        },
    )
    .await;
    if provisioned.failed() > 0 {
        return Err(format!(
            "{} churn agents could not be provisioned: {:?}",
            provisioned.failed(),
            provisioned.failures
        ));
    }

    // The current revision, from a one-agent snapshot.
    let mut probe = open(&watches[0], &authorization, 0, Some(&churn[0])).await?;
    let current = loop {
        match probe.message().await {
            Ok(Some(Light {
                snapshot_complete: Some(done),
                ..
            })) => break done.revision,
            Ok(Some(_)) => continue,
            Ok(None) => return Err("the probe watch ended before its snapshot".into()),
            Err(status) => return Err(format!("probe watch: {status}")),
        }
    };
    drop(probe);

    // Room for every revision of the run, several events per transition.
    let capacity = fan.transitions_per_second.max(1000) * (expected_seconds + 120) * 4;
    let seen = Arc::new(Seen::new(current, capacity));
    let (caught_up_to, until) = tokio::sync::watch::channel(u64::MAX);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel(fan.watchers.max(1));
    let start_revision = if fan.watch_snapshot { 0 } else { current };
    let mut watchers = Vec::with_capacity(fan.watchers);
    for i in 0..fan.watchers {
        let channel = watches[i % watches.len()].clone();
        let (authorization, seen, until, opened) = (
            authorization.clone(),
            seen.clone(),
            until.clone(),
            opened_tx.clone(),
        );
        watchers.push(tokio::spawn(async move {
            watch(channel, authorization, start_revision, seen, until, opened).await
        }));
    }
    drop(opened_tx);
    for _ in 0..fan.watchers {
        match opened_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err(format!("a watch did not open: {error}")),
            None => break,
        }
    }

    let stop_driving = Arc::new(AtomicBool::new(false));
    let driver = tokio::spawn(transitions(
        calls.to_vec(),
        args.streams,
        churn,
        args.gateway.clone(),
        args.boards,
        fan.transitions_per_second,
        stop_driving.clone(),
    ));
    Ok(Fanout {
        watchers,
        driver,
        stop_driving,
        caught_up_to,
        seen,
        started: Instant::now(),
        asked_rate: fan.transitions_per_second,
        load_at_start: load_average(),
        cpu_at_start: (cpu_seconds_of(args.server_pid), cpu_seconds(None)),
        server_pid: args.server_pid,
    })
}

fn churn_ids(prefix: &str, count: u64) -> Arc<Vec<String>> {
    Arc::new(
        (0..count.max(1))
            .map(|n| format!("{prefix}-churn-{n:07}"))
            .collect(),
    )
}

/// A re-provision of churn agent `n % count`: an `UPDATED` transition.
fn churn_request(ids: &[String], gateway: &str, boards: u64, n: u64) -> ProvisionRequest {
    let i = (n % ids.len() as u64) as usize;
    ProvisionRequest::new(ids[i].clone(), gateway, AgentRole::BoardWorker)
        .on_board(format!("board-{}", i as u64 % boards))
}

async fn open(
    channel: &Channel,
    authorization: &Option<AsciiMetadataValue>,
    start_revision: u64,
    agent_id: Option<&str>,
) -> Result<tonic::Streaming<Light>, String> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    let mut request = tonic::Request::new(WatchAgentRequest {
        start_revision,
        agent_id: agent_id.unwrap_or_default().to_string(),
        ..Default::default()
    });
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert(mission_control_client::OPERATOR_TOKEN_HEADER, value.clone());
    }
    let codec = tonic_prost::ProstCodec::<WatchAgentRequest, Light>::default();
    grpc.server_streaming(
        request,
        tonic::codegen::http::uri::PathAndQuery::from_static(WATCH_PATH),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
    .map_err(|status| status.to_string())
}

/// One watcher: reads until it has every revision up to `until` (set when
/// the transitions stop), or its stream ends.
async fn watch(
    channel: Channel,
    authorization: Option<AsciiMetadataValue>,
    start_revision: u64,
    seen: Arc<Seen>,
    mut until: tokio::sync::watch::Receiver<u64>,
    opened: tokio::sync::mpsc::Sender<Result<(), String>>,
) -> Watched {
    let mut watched = Watched {
        start: start_revision,
        last: start_revision,
        received: 0,
        duplicates: 0,
        snapshot: 0,
        latencies: Histogram::new(),
        ended: None,
    };
    let mut stream = match open(&channel, &authorization, start_revision, None).await {
        Ok(stream) => {
            let _ = opened.send(Ok(())).await;
            stream
        }
        Err(error) => {
            let _ = opened.send(Err(error.clone())).await;
            watched.ended = Some(error);
            return watched;
        }
    };
    drop(opened);
    loop {
        if watched.last >= *until.borrow() {
            return watched;
        }
        let message = tokio::select! {
            message = stream.message() => message,
            _ = until.changed() => continue,
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => {
                watched.ended = Some("the stream ended".into());
                return watched;
            }
            Err(status) => {
                watched.ended = Some(format!("{:?}: {}", status.code(), status.message()));
                return watched;
            }
        };
        if let Some(event) = message.event {
            if event.reason == REASON_SNAPSHOT {
                watched.snapshot += 1;
                continue;
            }
            if event.revision <= watched.last {
                watched.duplicates += 1;
                continue;
            }
            watched.last = event.revision;
            watched.received += 1;
            seen.mark(event.revision);
            if let Some(at) = event.at {
                watched.latencies.record(since(&at));
            }
        } else if let Some(done) = message.snapshot_complete {
            watched.start = done.revision;
            watched.last = done.revision;
        }
    }
}

/// Microseconds from `at` to now, by the machine's clock.
fn since(at: &prost_types::Timestamp) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let at = Duration::new(
        u64::try_from(at.seconds).unwrap_or(0),
        u32::try_from(at.nanos).unwrap_or(0),
    );
    u64::try_from(now.saturating_sub(at).as_micros()).unwrap_or(u64::MAX)
}

/// Re-provisions churn agents at `rate` a second (as far as the server
/// keeps up) from `streams` calls in flight per connection, until `stop`.
async fn transitions(
    connections: Vec<Connection>,
    streams: usize,
    ids: Arc<Vec<String>>,
    gateway: String,
    boards: u64,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> Driven {
    let next = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tasks = Vec::new();
    for connection in &connections {
        for _ in 0..streams {
            let (connection, next, stop, ids, gateway) = (
                connection.clone(),
                next.clone(),
                stop.clone(),
                ids.clone(),
                gateway.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut driven = Driven::default();
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    // Paced: call n is due n periods after the start.
                    tokio::time::sleep_until(started + period.mul_f64(n as f64)).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let request = churn_request(&ids, &gateway, boards, n);
                    let began = Instant::now();
                    match connection.operator.provision(request).await {
                        Ok(reply) => {
                            driven.latencies.record(began.elapsed());
                            driven.ok += 1;
                            let revision = reply.agent.map_or(0, |a| a.revision);
                            driven.last_revision = driven.last_revision.max(revision);
                        }
                        Err(_) => driven.failed += 1,
                    }
                }
                driven
            }));
        }
    }
    let mut total = Driven::default();
    for task in tasks {
        if let Ok(d) = task.await {
            total.ok += d.ok;
            total.failed += d.failed;
            total.latencies.extend(d.latencies);
            total.last_revision = total.last_revision.max(d.last_revision);
        }
    }
    total.elapsed = started.elapsed();
    total
}

impl Fanout {
    /// Stops the transitions, lets the watchers catch up with the last
    /// one, and judges: the report's section and the targets missed.
    pub async fn finish(self, max_p99: Duration) -> (Value, Vec<String>) {
        self.stop_driving.store(true, Ordering::Relaxed);
        let mut driven = self.driver.await.unwrap_or_default();
        let committed = driven.latencies.summary();
        let until = driven.last_revision;
        let _ = self.caught_up_to.send(until);
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        let mut all = Histogram::new();
        let (mut lost, mut duplicates, mut ended, mut worst_p99) = (0u64, 0u64, Vec::new(), 0.0);
        let (mut received, mut snapshot) = (0u64, 0u64);
        let watchers = self.watchers.len();
        for handle in self.watchers {
            let abort = handle.abort_handle();
            let watched = match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(watched)) => watched,
                _ => {
                    abort.abort();
                    ended.push(format!("did not reach revision {until} in time"));
                    continue;
                }
            };
            let expected = self.seen.count(watched.start, until.max(watched.start));
            lost += expected.saturating_sub(watched.received);
            duplicates += watched.duplicates;
            received += watched.received;
            snapshot += watched.snapshot;
            worst_p99 = f64::max(worst_p99, watched.latencies.quantile(0.99));
            all.merge(&watched.latencies);
            if let Some(end) = watched.ended {
                ended.push(end);
            }
        }
        // Whatever else the two processes did meanwhile is in these too
        // (the health and heartbeat rounds, the transitions' calls).
        let server_cpu = cpu_seconds_of(self.server_pid)
            .zip(self.cpu_at_start.0)
            .map(|(end, start)| end - start);
        let own_cpu = cpu_seconds(None)
            .zip(self.cpu_at_start.1)
            .map(|(end, start)| end - start);
        let per_event = |cpu: Option<f64>| {
            cpu.filter(|_| received > 0)
                .map(|cpu| (cpu * 1e6 / received as f64 * 100.0).round() / 100.0)
        };
        let seconds = driven.elapsed.as_secs_f64().max(1e-9);
        let transition_rate = driven.ok as f64 / seconds;
        let (p50, p99, max) = (
            all.quantile(0.5),
            all.quantile(0.99),
            all.max as f64 / 1000.0,
        );
        let section = json!({
            "watchers": watchers,
            "transitions_asked_per_second": self.asked_rate,
            "transitions": driven.ok,
            "transitions_failed": driven.failed,
            "transitions_per_second": transition_rate.round(),
            "transition_call_ms": {"p50": committed.p50, "p99": committed.p99, "max": committed.max},
            "seconds": seconds,
            "events_delivered": received,
            "events_delivered_per_second": (received as f64 / seconds).round(),
            "snapshot_events": snapshot,
            "delivery_ms": {"p50": p50, "p99": p99, "max": max, "worst_watcher_p99": worst_p99},
            "cpu_seconds": {
                "server": server_cpu.map(|c| (c * 100.0).round() / 100.0),
                "load_generator": own_cpu.map(|c| (c * 100.0).round() / 100.0),
            },
            "cpu_us_per_delivered_event": {"server": per_event(server_cpu), "load_generator": per_event(own_cpu)},
            "lost": lost,
            "duplicated": duplicates,
            "watches_ended_early": ended.len(),
            "first_ending": ended.first(),
            "load_average_at_start": self.load_at_start,
            "load_average_at_end": load_average(),
            "measured_for_seconds": self.started.elapsed().as_secs_f64(),
        });
        let mut missed = Vec::new();
        let max_p99_ms = max_p99.as_secs_f64() * 1000.0;
        if p99 > max_p99_ms {
            missed.push(format!(
                "watch delivery p99 {p99:.1} ms is above {max_p99_ms:.0} ms"
            ));
        }
        if lost > 0 || duplicates > 0 {
            missed.push(format!(
                "watchers lost {lost} and duplicated {duplicates} events"
            ));
        }
        if !ended.is_empty() {
            missed.push(format!(
                "{} watches ended early (first: {})",
                ended.len(),
                ended[0]
            ));
        }
        if transition_rate < 0.9 * self.asked_rate as f64 {
            missed.push(format!(
                "transitions ran at {transition_rate:.0}/s, below 90 % of the {} asked",
                self.asked_rate
            ));
        }
        if driven.failed > 0 {
            missed.push(format!("{} transitions failed", driven.failed));
        }
        (section, missed)
    }
}

/// The section's lines in the table output.
pub fn text(section: &Value) -> String {
    let d = &section["delivery_ms"];
    format!(
        "\nwatch fan-out: {} watchers, {} transitions/s asked, {} run ({} failed) over {:.1} s, \
         each call to its commit p50 {} ms, p99 {} ms\n  \
         delivered {} events ({}/s), delivery p50 {} ms, p99 {} ms, max {} ms, \
         worst watcher's p99 {} ms\n  CPU during the fan-out: server {} s ({} µs per delivered event), \
         load generator {} s ({} µs per event)\n  lost {}, duplicated {}, watches ended early {}; \
         load average {} at the start, {} at the end\n",
        section["watchers"],
        section["transitions_asked_per_second"],
        section["transitions_per_second"],
        section["transitions_failed"],
        section["seconds"].as_f64().unwrap_or(0.0),
        section["transition_call_ms"]["p50"],
        section["transition_call_ms"]["p99"],
        section["events_delivered"],
        section["events_delivered_per_second"],
        d["p50"],
        d["p99"],
        d["max"],
        d["worst_watcher_p99"],
        section["cpu_seconds"]["server"],
        section["cpu_us_per_delivered_event"]["server"],
        section["cpu_seconds"]["load_generator"],
        section["cpu_us_per_delivered_event"]["load_generator"],
        section["lost"],
        section["duplicated"],
        section["watches_ended_early"],
        section["load_average_at_start"].as_str().unwrap_or("?"),
        section["load_average_at_end"].as_str().unwrap_or("?"),
    )
}
