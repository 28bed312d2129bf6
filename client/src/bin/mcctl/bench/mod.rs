//! `mcctl bench`: provisions a fleet of agents, each with its own token,
//! checks them in, then alternates the server's health `Check` (the
//! baseline: a call that does nothing) with heartbeats spread over every
//! agent, through the same connections. Prints throughput, latency
//! percentiles and the heartbeat/health ratio, and fails when the ratio is
//! below `--min-ratio`, so it can be run as a check.

mod fanout;
mod load;
mod paced;
mod report;
mod stats;
pub mod storm;
mod tally;
pub mod watchers;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Args;
use mission_control_client::agent_lifecycle_client::AgentLifecycleClient;
use mission_control_client::operator::OperatorClient;
use mission_control_client::{
    AGENT_TOKEN_HEADER, AgentRole, AgentStatus, Endpoints, Error, HeartbeatRequest,
    ProvisionRequest,
};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::context::Context;
use crate::failure::Failure;
use load::{Phase, Until, drive};
use report::Report;

const EXAMPLE: &str = "\
Example: the issue's heartbeat target (100,000 distinct agents, at least
0.8x the health check). A release server, with leases long enough to outlast
the set-up and a heartbeat budget the spread load stays within:
  cargo build --release
  target/release/mission-control --database-url postgres://... \\
      --lease-ttl 1h --heartbeat-interval 1s --log-format text &
  target/release/mcctl bench --agents 100000 --duration 30s --server-pid $!
Re-running against the same server re-provisions the same agents (new
tokens). See BENCHMARKS.md for figures and how they were taken.";

/// Measures the server under a fleet of agents against its own health check.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLE)]
pub struct BenchArgs {
    /// How many agents to provision and heartbeat (ids PREFIX-0000000 on).
    #[arg(long, default_value_t = 100_000)]
    pub agents: u64,
    /// The agents' id prefix.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// The gateway the agents belong to; registered if missing.
    #[arg(long, default_value = "bench-gw")]
    pub gateway: String,
    /// How many boards the agents are spread over (board-0, board-1, ...).
    #[arg(long, default_value_t = 100)]
    pub boards: u64,
    /// Connections to the server (as h2load's -c).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Calls in flight on each connection (as h2load's -m).
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Length of each measured health and heartbeat phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Health/heartbeat phase pairs, alternated so drift in the machine's
    /// load falls on both alike.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// End each measured health and heartbeat phase after this many calls
    /// instead of --duration: the same work in both, for counting
    /// instructions per call under a profiler (scripts/heartbeat-instructions).
    #[arg(long)]
    pub calls: Option<u64>,
    /// Before each measured phase and after the last, stay idle this long
    /// and say so on stderr ("mcctl bench: pause before ..."), so a
    /// profiler can be switched or dumped between phases.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub pause: Option<Duration>,
    /// Fail (exit 4) when heartbeats run below this multiple of the health
    /// check's rate, or any heartbeat fails. The target: 0.8 over
    /// at least 100,000 distinct agents.
    #[arg(long, default_value_t = 0.8)]
    pub min_ratio: f64,
    /// Fail (exit 4) when the heartbeat rounds reached fewer distinct
    /// agents than this (raise --duration or --rounds to reach them).
    #[arg(long, default_value_t = 100_000)]
    pub min_distinct: u64,
    /// The server's process id, to report its resident memory per agent
    /// (same machine only).
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub fanout: fanout::FanoutArgs,
    /// Then provision the fleet's agents again, and check them in again,
    /// at this fixed rate (calls a second, for --duration each, at most
    /// one per agent), timing each call from when it was due. With
    /// --rounds 0 only these phases are measured.
    #[arg(long)]
    pub paced: Option<f64>,
    /// Before those, steady heartbeats spread over the fleet at this fixed
    /// rate for --duration; repeat the flag for several rates (see
    /// scripts/statements-vs-heartbeats).
    #[arg(long)]
    pub paced_heartbeats: Vec<f64>,
    /// Fail (exit 4) when a --paced phase's p99 latency is above this.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub max_p99: Duration,
}

/// One connection, for both raw calls and the operator's.
#[derive(Clone)]
struct Connection {
    channel: Channel,
    operator: OperatorClient,
}

pub async fn run(ctx: &Context, args: BenchArgs) -> Result<(), Failure> {
    if args.agents == 0 || args.connections == 0 || args.streams == 0 || args.boards == 0 {
        return Err(Failure::Usage(
            "--agents, --connections, --streams and --boards must be at least 1".into(),
        ));
    }
    let rates = args.paced.iter().chain(&args.paced_heartbeats);
    if rates
        .into_iter()
        .any(|rate| !(*rate > 0.0 && rate.is_finite()))
    {
        return Err(Failure::Usage(
            "--paced and --paced-heartbeats take positive rates".into(),
        ));
    }
    let connections = connect(ctx, args.connections)?;
    let channels: Vec<Channel> = connections.iter().map(|c| c.channel.clone()).collect();
    let mut report = Report::new(&args);
    report.memory("before provisioning", args.server_pid, 0);

    ctx.operator
        .register_gateway(&args.gateway, "", false)
        .await?;
    let tokens: Arc<Vec<OnceLock<AsciiMetadataValue>>> =
        Arc::new((0..args.agents).map(|_| OnceLock::new()).collect());
    let provisioned = provision(&connections, &args, tokens.clone()).await;
    report.phase("Provision (committed)", provisioned);
    report.memory(
        "provisioned, awaiting check-in",
        args.server_pid,
        args.agents,
    );
    if tokens.iter().any(|t| t.get().is_none()) {
        report.print(ctx);
        return Err(Failure::Halted("some agents were not provisioned".into()));
    }
    let tokens: Arc<Vec<AsciiMetadataValue>> =
        Arc::new(tokens.iter().filter_map(|t| t.get().cloned()).collect());

    let key = AsciiMetadataKey::from_static(AGENT_TOKEN_HEADER);
    let checked_in = {
        let (tokens, key) = (tokens.clone(), key.clone());
        let check_in =
            move |channel, n| heartbeat(channel, key.clone(), token_of(&tokens, 0, n), true);
        drive(&channels, args.streams, Until::Calls(args.agents), check_in).await
    };
    report.phase("check-in (first Heartbeat)", checked_in);
    report.memory("online, leases armed", args.server_pid, args.agents);

    let fan_out = match args.fanout.watchers {
        0 => None,
        n => {
            let watches = connect(ctx, n.div_ceil(args.fanout.watchers_per_connection.max(1)))?
                .into_iter()
                .map(|c| c.channel)
                .collect();
            let authorization = match &ctx.operator_token {
                Some(token) => Some(
                    format!("Bearer {}", token.trim())
                        .parse()
                        .map_err(|_| Failure::Usage("the operator token is not ASCII".into()))?,
                ),
                None => None,
            };
            let seconds = args.duration.as_secs() * 2 * u64::from(args.rounds);
            let started = fanout::start(&connections, watches, authorization, &args, seconds);
            Some(started.await.map_err(Failure::Halted)?)
        }
    };

    let measured = match args.calls {
        Some(calls) => Until::Calls(calls),
        None => Until::Elapsed(args.duration),
    };
    let mut health = Vec::new();
    let mut beats = Vec::new();
    let mut offset = 0;
    for round in 1..=args.rounds {
        pause(&args, &format!("health Check, round {round}")).await;
        health.push(drive(&channels, args.streams, measured, check).await);
        pause(&args, &format!("Heartbeat, round {round}")).await;
        let (tokens, key) = (tokens.clone(), key.clone());
        let beat =
            move |channel, n| heartbeat(channel, key.clone(), token_of(&tokens, offset, n), false);
        let phase = drive(&channels, args.streams, measured, beat).await;
        offset += phase.ok + phase.failed();
        beats.push(phase);
    }
    if args.rounds > 0 {
        pause(&args, "the end").await;
    }
    let fan_out = match fan_out {
        Some(fan_out) => Some(fan_out.finish(args.fanout.max_delivery_p99).await),
        None => None,
    };
    report.memory("after the heartbeat rounds", args.server_pid, args.agents);
    let beats_paced = paced::heartbeats(
        &connections,
        &args,
        &args.paced_heartbeats,
        tokens.clone(),
        &mut report,
    )
    .await;
    let paced = match args.paced {
        Some(rate) => paced::run(&connections, &args, rate, tokens.clone(), &mut report).await,
        None => Ok(()),
    };
    let target = report::Target {
        min_ratio: args.min_ratio,
        min_distinct: args.min_distinct,
    };
    let mut verdict = if args.rounds > 0 {
        report.compare(health, beats, args.agents.min(offset), target)
    } else {
        Ok(())
    };
    if let Some((section, missed)) = fan_out {
        report.fanout(section);
        if !missed.is_empty() {
            let missed = missed.join("; ");
            verdict = Err(match verdict {
                Ok(()) => missed,
                Err(other) => format!("{other}; {missed}"),
            });
        }
    }
    report.print(ctx);
    let missed: Vec<String> = [verdict.err(), beats_paced.err(), paced.err()]
        .into_iter()
        .flatten()
        .collect();
    if missed.is_empty() {
        Ok(())
    } else {
        Err(Failure::TargetMissed(missed.join("; ")))
    }
}

/// `--pause`: idle before `next`, announced on stderr.
async fn pause(args: &BenchArgs, next: &str) {
    if let Some(pause) = args.pause {
        eprintln!("mcctl bench: pause before {next}");
        tokio::time::sleep(pause).await;
    }
}

fn connect(ctx: &Context, count: usize) -> Result<Vec<Connection>, Failure> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        // Endpoints of their own: a connection of their own.
        let endpoints = Endpoints::parse(ctx.endpoints.current(), Some(&ctx.tls))?;
        let channel = endpoints.pick().1;
        let mut operator = OperatorClient::with_endpoints(endpoints);
        if let Some(token) = &ctx.operator_token {
            operator = operator.with_operator_token(token)?;
        }
        connections.push(Connection { channel, operator });
    }
    Ok(connections)
}

async fn provision(
    connections: &[Connection],
    args: &BenchArgs,
    tokens: Arc<Vec<OnceLock<AsciiMetadataValue>>>,
) -> Phase {
    let (prefix, gateway, boards) = (args.prefix.clone(), args.gateway.clone(), args.boards);
    drive(
        connections,
        args.streams,
        Until::Calls(args.agents),
        move |connection: Connection, n| {
            let mut request = ProvisionRequest::new(
                format!("{prefix}-{n:07}"),
                gateway.as_str(),
                AgentRole::BoardWorker,
            )
            .on_board(format!("board-{}", n % boards));
            // A fresh token also for an agent left by an earlier run.
            request.rotate_token = true;
            let tokens = tokens.clone();
            async move {
                let reply = connection
                    .operator
                    .provision(request)
                    .await
                    .map_err(into_status)?;
                let mut token: AsciiMetadataValue = reply
                    .agent_token
                    .parse()
                    .map_err(|_| tonic::Status::internal("the reply carries no usable token"))?;
                // As the client library's agents send it: a secret stays out
                // of HTTP/2 header compression tables, on both sides.
                token.set_sensitive(true);
                let _ = tokens[n as usize].set(token);
                Ok(())
            }
        },
    )
    .await
}

/// Agent `(offset + n) % agents`'s token.
fn token_of(tokens: &[AsciiMetadataValue], offset: u64, n: u64) -> AsciiMetadataValue {
    tokens[((offset + n) % tokens.len() as u64) as usize].clone()
}

/// One heartbeat with the agent's own token, as the client library's agents
/// send it (`key` is the header's name, parsed once); a check-in must leave
/// the agent online. Called from closures at each phase, so that its future
/// is not boxed, as the health check's is not.
async fn heartbeat(
    channel: Channel,
    key: AsciiMetadataKey,
    token: AsciiMetadataValue,
    check_in: bool,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(HeartbeatRequest::default());
    request.metadata_mut().insert(key, token);
    let reply = AgentLifecycleClient::new(channel)
        .heartbeat(request)
        .await?
        .into_inner();
    if check_in && reply.status() != AgentStatus::Online {
        return Err(tonic::Status::failed_precondition(
            "not online after check-in",
        ));
    }
    Ok(())
}

async fn check(channel: Channel, _: u64) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
}

fn into_status(error: Error) -> tonic::Status {
    match error {
        Error::Status(status) => status,
        other => tonic::Status::unknown(other.to_string()),
    }
}
