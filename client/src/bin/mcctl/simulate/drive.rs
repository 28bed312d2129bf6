//! The simulation's event loop: gateway commands, provision replies, watch
//! events and agent reports, one at a time, until the fleet settles.

use std::io::IsTerminal;
use std::time::Duration;

use futures_util::StreamExt;
use mission_control_client::gateway::{GatewayClient, GatewayEvent};
use mission_control_client::operator::OperatorClient;
use mission_control_client::{
    AgentRole, Backoff, Error, ProvisionRequest, ProvisionResponse, WatchAgentRequest,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::SimulateArgs;
use super::agent::AgentReport;
use super::fleet::Fleet;
use super::outage::Phase;
use crate::context::Context;
use crate::failure::Failure;
use crate::time::short;

/// How long the gateway stream may take to open before the run gives up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// Provision calls in flight at once.
const PROVISION_CONCURRENCY: usize = 8;

pub struct Ending {
    pub elapsed: Duration,
    pub settled: bool,
}

pub async fn drive(
    ctx: &Context,
    args: &SimulateArgs,
    token: &str,
    fleet: &mut Fleet,
    mut reports: mpsc::UnboundedReceiver<AgentReport>,
) -> Result<Ending, Failure> {
    let mut stream = gateway_stream(ctx, token)?;
    // Connected first, so the first wakes are delivered, not failed.
    let connected_as = await_connected(&mut stream).await?;
    let mut commands = Some(stream);
    if connected_as != args.gateway {
        return Err(Failure::Usage(format!(
            "the gateway token belongs to gateway {connected_as}, not --gateway {}",
            args.gateway
        )));
    }
    // Watching before provisioning, so no change goes unseen.
    let request = WatchAgentRequest {
        gateway_id: args.gateway.clone(),
        ..WatchAgentRequest::default()
    };
    let mut watch = ctx.operator.watch(request).await?;
    let ids: Vec<String> = (0..args.agents)
        .map(|i| super::plan::agent_id(&args.prefix, i))
        .collect();
    let mut provisions = provision_all(ctx.operator.clone(), ids, args);

    let started = Instant::now();
    let stop_at = args.duration.map(|d| started + d);
    let live = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut phase = Phase::Before;
    let mut gateway_seen = String::new();
    let mut offline_before_outage = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep_until(stop_at.unwrap_or(started)), if stop_at.is_some() => break,
            _ = tick.tick() => {
                if let Some(outage) = &args.gateway_outage {
                    let now = outage.phase(started, Instant::now());
                    if now != phase {
                        phase = now;
                        announce_outage(fleet, phase, live, &mut offline_before_outage);
                        match phase {
                            Phase::Down => commands = None,
                            Phase::Back => commands = Some(gateway_stream(ctx, token)?),
                            Phase::Before => {}
                        }
                    }
                    if phase != Phase::Before {
                        show_gateway_state(ctx, &args.gateway, &mut gateway_seen, live).await;
                    }
                }
                print_progress(fleet, args.agents, started.elapsed(), live);
            }
            event = next_command(&mut commands) => match event {
                // An ack that cannot be sent means the stream broke: the
                // Disconnected event that follows says so.
                Some(GatewayEvent::Wake { command, ack }) => {
                    ack.delivered().await.ok();
                    fleet.on_wake(&command);
                }
                Some(GatewayEvent::Retire { ack, .. }) => {
                    ack.delivered().await.ok();
                }
                // The simulated gateway has no templates to fetch: a sync
                // succeeds at once (its agents report the version they run).
                Some(GatewayEvent::TemplateSync { command, ack }) => {
                    ack.delivered().await.ok();
                    eprintln!("template sync to {} acknowledged", command.template_version);
                }
                Some(GatewayEvent::Connected { .. }) => {}
                Some(GatewayEvent::Disconnected { error, retry_in }) => {
                    eprintln!("gateway stream lost ({error}); reconnecting in {retry_in:?}");
                }
                Some(GatewayEvent::Rejected(error)) => return Err(error.into()),
                None => return Err(tonic::Status::unavailable("the gateway stream ended").into()),
            },
            Some((id, reply)) = provisions.recv() => fleet.on_provisioned(&id, reply?),
            message = watch.next() => match message {
                Some(Ok(message)) => fleet.on_watch(&message),
                Some(Err(status)) => {
                    let hint = "the simulator's own watch ended; run it again".to_owned();
                    return Err(Failure::Stream { status, hint });
                }
                None => return Err(tonic::Status::unavailable("the watch ended").into()),
            },
            Some(report) = reports.recv() => fleet.on_report(report),
        }
        let outage_over = args
            .gateway_outage
            .is_none_or(|outage| Instant::now() >= outage.over_at(started));
        if stop_at.is_none() && outage_over && fleet.settled() {
            break;
        }
    }
    let elapsed = started.elapsed();
    print_progress(fleet, args.agents, elapsed, live);
    if live {
        eprintln!();
    }
    Ok(Ending {
        elapsed,
        settled: fleet.settled(),
    })
}

/// The next command; none while the host is down (no stream).
async fn next_command<S>(commands: &mut Option<S>) -> Option<S::Item>
where
    S: futures_util::Stream + Unpin,
{
    match commands {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// The simulated gateway's command stream (reconnecting by itself).
fn gateway_stream(
    ctx: &Context,
    token: &str,
) -> Result<impl futures_util::Stream<Item = GatewayEvent> + Unpin + use<>, Failure> {
    Ok(GatewayClient::with_endpoints(ctx.endpoints.clone(), token)?
        .with_backoff(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .with_reconnect_spread(Duration::from_millis(200))
        .events())
}

/// The host goes down (its agents freeze; the caller closes its stream)
/// or comes back (they heartbeat again; the caller reconnects).
fn announce_outage(fleet: &Fleet, phase: Phase, live: bool, offline_before: &mut usize) {
    if live {
        eprintln!();
    }
    match phase {
        Phase::Before => {}
        Phase::Down => {
            eprintln!("gateway host down: its stream is closed and its agents fall silent");
            fleet.set_host_down(true);
            *offline_before = fleet.progress().offline;
        }
        Phase::Back => {
            let marked = fleet.progress().offline.saturating_sub(*offline_before);
            eprintln!(
                "gateway host back: reconnecting, agents heartbeat again \
                 (agents marked offline during the outage: {marked})"
            );
            fleet.set_host_down(false);
        }
    }
}

/// Prints the gateway's state as the service sees it, when it changes.
async fn show_gateway_state(ctx: &Context, gateway_id: &str, seen: &mut String, live: bool) {
    let Ok(Ok(gateways)) =
        tokio::time::timeout(Duration::from_secs(1), ctx.operator.list_gateways()).await
    else {
        return;
    };
    let Some(gateway) = gateways.into_iter().find(|g| g.id == gateway_id) else {
        return;
    };
    let mut state = crate::names::gateway_state(gateway.state);
    if !gateway.state_reason.is_empty() {
        state = format!("{state}: {}", gateway.state_reason);
    }
    if *seen != state {
        if live {
            eprintln!();
        }
        eprintln!("service says gateway {gateway_id} is {state}");
        *seen = state;
    }
}

/// Waits for the stream to be established; the gateway it belongs to.
async fn await_connected(
    commands: &mut (impl futures_util::Stream<Item = GatewayEvent> + Unpin),
) -> Result<String, Failure> {
    let mut last_error = None;
    let connected = tokio::time::timeout(CONNECT_PATIENCE, async {
        while let Some(event) = commands.next().await {
            match event {
                GatewayEvent::Connected { gateway_id } => return Ok(gateway_id),
                GatewayEvent::Rejected(error) => return Err(error),
                GatewayEvent::Disconnected { error, .. } => last_error = Some(error),
                // Nothing is sent before Connected; acknowledge defensively.
                GatewayEvent::Wake { ack, .. }
                | GatewayEvent::Retire { ack, .. }
                | GatewayEvent::TemplateSync { ack, .. } => {
                    ack.delivered().await.ok();
                }
            }
        }
        Err(Error::Status(tonic::Status::unavailable(
            "the gateway stream ended",
        )))
    })
    .await;
    match connected {
        Ok(result) => Ok(result?),
        Err(_) => Err(last_error
            .unwrap_or_else(|| Error::Status(tonic::Status::deadline_exceeded("no Connected")))
            .into()),
    }
}

/// Provisions every agent (rotating tokens, so a rerun gets fresh ones) and
/// hands each reply to the loop as it comes.
fn provision_all(
    operator: OperatorClient,
    ids: Vec<String>,
    args: &SimulateArgs,
) -> mpsc::UnboundedReceiver<(String, Result<ProvisionResponse, Error>)> {
    let (replies, receiver) = mpsc::unbounded_channel();
    let (gateway, board) = (args.gateway.clone(), args.prefix.clone());
    let template = args.template_version.clone();
    tokio::spawn(async move {
        let calls = futures_util::stream::iter(ids).map(|id| {
            let request =
                ProvisionRequest::new(id.clone(), gateway.clone(), AgentRole::BoardWorker)
                    .on_board(board.clone())
                    .with_template_version(template.clone())
                    .rotating_token();
            let operator = operator.clone();
            async move { (id, operator.provision(request).await) }
        });
        let mut calls = calls.buffer_unordered(PROVISION_CONCURRENCY);
        while let Some(reply) = calls.next().await {
            if replies.send(reply).is_err() {
                return; // the run has ended
            }
        }
    });
    receiver
}

/// The live one-line summary on stderr: rewritten in place on a terminal,
/// one line per second otherwise.
fn print_progress(fleet: &Fleet, total: usize, elapsed: Duration, live: bool) {
    let p = fleet.progress();
    let line = format!(
        "[{}] wakes {} | online {} | offline {} | awaiting {} | provisioned {}/{total}",
        short(elapsed),
        fleet.tally.wakes(),
        p.online,
        p.offline,
        p.awaiting,
        p.provisioned,
    );
    if live {
        eprint!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
}
