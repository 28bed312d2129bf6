//! Durable transitions at a fixed rate (`--paced RATE`): the fleet's agents
//! are provisioned again (each an update: a committed transition with its
//! event row), then checked in again (another committed transition each),
//! RATE calls a second. The calls go out on a schedule whatever the
//! server's answers (open loop), and each latency counts from when the call
//! was due, so a server that falls behind is charged for the queue it
//! causes. The target: p99 under 20 ms at half etcd's `Put` rate.
//!
//! `--paced-heartbeats RATE` (repeatable) first runs steady heartbeats
//! spread over the fleet at each rate, and records when each phase ran (in
//! `--output json`): `scripts/statements-vs-heartbeats` counts the SQL
//! statements Postgres ran meanwhile, which must not grow with the rate.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mission_control_client::ProvisionRequest;
use mission_control_client::agent_lifecycle_client::AgentLifecycleClient;
use mission_control_client::{AGENT_TOKEN_HEADER, AgentRole, AgentStatus, HeartbeatRequest};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;

use super::load::Phase;
use super::report::Report;
use super::{BenchArgs, Connection, into_status};

/// Steady heartbeats spread over the fleet, at each of `rates` in turn.
pub async fn heartbeats(
    connections: &[Connection],
    args: &BenchArgs,
    rates: &[f64],
    tokens: Arc<Vec<AsciiMetadataValue>>,
    report: &mut Report,
) -> Result<(), String> {
    let mut missed = Vec::new();
    let mut offset = 0;
    for &rate in rates {
        let calls = (rate * args.duration.as_secs_f64()).round() as u64;
        let tokens = tokens.clone();
        let from = SystemTime::now();
        let phase = paced(
            connections,
            rate,
            calls,
            move |connection: Connection, n| {
                let token = tokens[((offset + n) % tokens.len() as u64) as usize].clone();
                async move {
                    let mut request = tonic::Request::new(HeartbeatRequest::default());
                    request.metadata_mut().insert(AGENT_TOKEN_HEADER, token);
                    AgentLifecycleClient::new(connection.channel)
                        .heartbeat(request)
                        .await
                        .map(drop)
                }
            },
        )
        .await;
        offset += calls;
        let label = format!("Heartbeat at {rate}/s");
        if phase.failed() > 0 {
            missed.push(format!("{label}: {} calls failed", phase.failed()));
        }
        report.window(&label, from, SystemTime::now());
        report.phase(&label, phase);
    }
    if missed.is_empty() {
        Ok(())
    } else {
        Err(missed.join("; "))
    }
}

/// Runs the paced Provision and check-in phases; `Err` names the phases
/// whose p99 exceeded `--max-p99` or that had failures.
pub async fn run(
    connections: &[Connection],
    args: &BenchArgs,
    rate: f64,
    tokens: Arc<Vec<AsciiMetadataValue>>,
    report: &mut Report,
) -> Result<(), String> {
    // Every agent provisioned again is then checked in again, so no more
    // of them than the fleet holds.
    let calls = ((rate * args.duration.as_secs_f64()).round() as u64).min(args.agents);
    let (prefix, gateway, boards) = (args.prefix.clone(), args.gateway.clone(), args.boards);
    let provisions = paced(
        connections,
        rate,
        calls,
        move |connection: Connection, n| {
            let request = ProvisionRequest::new(
                format!("{prefix}-{n:07}"),
                gateway.as_str(),
                AgentRole::BoardWorker,
            )
            .on_board(format!("board-{}", n % boards));
            async move {
                connection
                    .operator
                    .provision(request)
                    .await
                    .map(drop)
                    .map_err(into_status)
            }
        },
    )
    .await;
    let check_ins = paced(
        connections,
        rate,
        calls,
        move |connection: Connection, n| {
            let token = tokens[n as usize].clone();
            async move {
                let mut request = tonic::Request::new(HeartbeatRequest::default());
                request.metadata_mut().insert(AGENT_TOKEN_HEADER, token);
                let reply = AgentLifecycleClient::new(connection.channel)
                    .heartbeat(request)
                    .await?
                    .into_inner();
                if reply.status() != AgentStatus::Online {
                    return Err(tonic::Status::failed_precondition(
                        "not online after check-in",
                    ));
                }
                Ok(())
            }
        },
    )
    .await;
    let mut missed = Vec::new();
    for (label, mut phase) in [
        (format!("Provision at {rate}/s"), provisions),
        (format!("check-in at {rate}/s"), check_ins),
    ] {
        let p99 = phase.latencies.summary().p99;
        if phase.failed() > 0 {
            missed.push(format!("{label}: {} calls failed", phase.failed()));
        }
        if p99 > args.max_p99.as_secs_f64() * 1000.0 {
            missed.push(format!(
                "{label}: p99 {p99:.1} ms, above {:?}",
                args.max_p99
            ));
        }
        report.phase(&label, phase);
    }
    if missed.is_empty() {
        Ok(())
    } else {
        Err(missed.join("; "))
    }
}

/// Makes `calls` calls, `rate` a second, spread over the connections;
/// call `n` is due `n / rate` seconds after the start, and its latency is
/// counted from then (sending late, by up to the timer's millisecond,
/// counts too).
async fn paced<F, Fut>(connections: &[Connection], rate: f64, calls: u64, call: F) -> Phase
where
    F: Fn(Connection, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let mut running = JoinSet::new();
    for n in 0..calls {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due).await;
        let connection = connections[n as usize % connections.len()].clone();
        let call = call.clone();
        running.spawn(async move {
            let result = call(connection, n).await;
            (due.elapsed(), result)
        });
    }
    let mut phase = Phase::default();
    while let Some(done) = running.join_next().await {
        match done {
            Ok((latency, Ok(()))) => {
                phase.latencies.record(latency);
                phase.ok += 1;
            }
            Ok((_, Err(status))) => {
                *phase
                    .failures
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
            }
            Err(_) => *phase.failures.entry("panicked".into()).or_default() += 1,
        }
    }
    phase.elapsed = started.elapsed();
    phase
}
