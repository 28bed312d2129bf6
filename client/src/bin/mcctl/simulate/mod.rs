//! `mcctl simulate`: plays a gateway hosting a fleet of agents with mixed
//! behaviours against a running service, then reports how the lifecycle
//! policy treated them.

mod agent;
mod drive;
mod fleet;
mod outage;
mod plan;
mod report;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use mission_control_client::ListAgentsRequest;

use crate::context::Context;
use crate::context::Output;
use crate::failure::Failure;
use crate::stdout;
use fleet::{Fleet, Settings};
use plan::Shares;
use report::Report;

const DEMO: &str = "\
Demo: the whole policy in well under a minute. In one terminal:
  mission-control --dev --checkin-deadline 5s --lease-ttl 6s --heartbeat-interval 2s
In a second one, the live view:
  mcctl watch
In a third:
  mcctl simulate
First-wake agents go online within a second; later-wake agents after the
second or third wake (5 or 10 s); never agents go offline after the third
missed deadline (15 s, \"no check-in after 3 wake attempts\"); flaky agents go
online, then offline when their lease lapses (\"lease expired\"). The run ends
by itself once every agent has settled, and prints a report (`--output json`
for scripts). Ctrl-C ends it early, still with a report.";

/// Plays a gateway with a fleet of simulated agents against a running service.
#[derive(Debug, Args)]
#[command(after_long_help = DEMO)]
pub struct SimulateArgs {
    /// How many agents to provision.
    #[arg(long, default_value_t = 20)]
    pub agents: usize,
    /// The gateway to play; registered (or its token rotated) unless
    /// --gateway-token is given.
    #[arg(long, default_value = "sim-gw")]
    pub gateway: String,
    /// Use this gateway token instead of registering the gateway (it must
    /// be --gateway's token; the run stops if it is another gateway's).
    #[arg(long, env = "MC_GATEWAY_TOKEN", hide_env_values = true)]
    pub gateway_token: Option<String>,
    /// Rotate the token of a gateway that is connected right now, ending
    /// its session (without this the run refuses: it may be a real one).
    #[arg(long)]
    pub take_over: bool,
    /// Share of agents that check in on the first wake.
    #[arg(long, default_value_t = 0.5)]
    pub first_wake: f64,
    /// Share that check in on wake 2 or 3 (chosen at random).
    #[arg(long, default_value_t = 0.2)]
    pub later_wake: f64,
    /// Share that never check in.
    #[arg(long, default_value_t = 0.2)]
    pub never: f64,
    /// Share that check in, heartbeat a while, then stop so the lease expires.
    #[arg(long, default_value_t = 0.1)]
    pub flaky: f64,
    /// Heartbeats a flaky agent sends before it goes silent.
    #[arg(long, default_value_t = 3)]
    pub flaky_beats: u32,
    /// How long to run; by default, until every agent has settled (online
    /// and heartbeating, or offline).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Longest time an agent takes to start after its wake (random, and at
    /// most half the time left to its check-in deadline).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub startup_delay: Duration,
    /// Agent ids are PREFIX-0001, PREFIX-0002, ...
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Seed for who-does-what and start-up times, to repeat a run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The template version agents are provisioned with (and report).
    #[arg(long, default_value = "v1")]
    pub template_version: String,
    /// Share of agents that, woken with another template version (by a
    /// rollout), restart but keep reporting the old one.
    #[arg(long, default_value_t = 0.0)]
    pub keeps_old_template: f64,
    /// Share that crash on another template version: they never check in
    /// again, and go offline after the policy's wakes.
    #[arg(long, default_value_t = 0.0)]
    pub crashes_on_new_template: f64,
    /// The gateway's host goes down AFTER the start, FOR this long
    /// (AFTER+FOR, e.g. 20s+15s): its stream closes and every agent on it
    /// falls silent together, then all come back. With the service's
    /// mass-failure brake the gateway is suspected meanwhile and no agent
    /// is marked offline. The run lasts until the host has been back 5 s.
    #[arg(long, value_parser = outage::parse, value_name = "AFTER+FOR")]
    pub gateway_outage: Option<outage::Outage>,
}

impl SimulateArgs {
    fn shares(&self) -> Shares {
        Shares {
            first_wake: self.first_wake,
            later_wake: self.later_wake,
            never: self.never,
            flaky: self.flaky,
        }
    }
}

/// How long the final listing may take before the report goes without it.
const FINAL_LIST_PATIENCE: Duration = Duration::from_secs(10);

pub async fn run(ctx: &Context, args: SimulateArgs) -> Result<(), Failure> {
    args.shares().validate().map_err(Failure::Usage)?;
    if args.agents == 0 {
        return Err(Failure::Usage("--agents must be at least 1".into()));
    }
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let behaviours = plan::deal(&args.shares(), args.agents, &mut rng);
    let templates = plan::deal_templates(
        args.keeps_old_template,
        args.crashes_on_new_template,
        args.agents,
        &mut rng,
    )
    .map_err(Failure::Usage)?;
    let plan: Vec<_> = behaviours
        .into_iter()
        .zip(templates)
        .enumerate()
        .map(|(i, (behaviour, template))| (plan::agent_id(&args.prefix, i), behaviour, template))
        .collect();
    let token = match &args.gateway_token {
        Some(token) => token.clone(),
        None => gateway_token(ctx, &args.gateway, args.take_over).await?,
    };
    let settings = Settings {
        endpoints: ctx.endpoints.clone(),
        startup_delay: args.startup_delay,
        flaky_beats: args.flaky_beats.max(1),
        rng,
    };
    let (mut fleet, reports) = Fleet::new(plan, settings);
    let outcome = drive::drive(ctx, &args, &token, &mut fleet, reports).await?;
    // The final view is taken while the agents still heartbeat: once they
    // stop, their leases lapse and every one of them ends offline.
    let listing = ListAgentsRequest {
        gateway_id: args.gateway.clone(),
        ..ListAgentsRequest::default()
    };
    let finals: BTreeMap<_, _> =
        match tokio::time::timeout(FINAL_LIST_PATIENCE, ctx.operator.list(listing)).await {
            Ok(listed) => listed?
                .into_iter()
                .map(|agent| (agent.id.clone(), agent))
                .collect(),
            Err(_) => {
                eprintln!("warning: the final listing timed out; reporting what the watch showed");
                BTreeMap::new()
            }
        };
    fleet.stop().await;
    let report = Report {
        gateway_id: args.gateway,
        seed,
        elapsed: outcome.elapsed,
        settled: outcome.settled,
        outcomes: fleet.outcomes(&finals),
        tally: std::mem::take(&mut fleet.tally),
    };
    let _ = match ctx.output {
        Output::Json => stdout::emit_line(&report.to_json().to_string()),
        Output::Table => stdout::emit(&report.to_text()),
    };
    Ok(())
}

/// A token for the simulated gateway: registers it, or, if it already
/// exists (an earlier run), mints a new token and keeps its name. A gateway
/// connected right now is only taken over when asked to.
async fn gateway_token(
    ctx: &Context,
    gateway_id: &str,
    take_over: bool,
) -> Result<String, Failure> {
    let existing = ctx
        .operator
        .list_gateways()
        .await?
        .into_iter()
        .find(|gateway| gateway.id == gateway_id);
    if let Some(gateway) = &existing {
        if gateway.connected && !take_over {
            return Err(Failure::Usage(format!(
                "gateway {gateway_id} is connected right now: simulating it would rotate its \
                 token and end that session. Use another --gateway, or --take-over"
            )));
        }
        eprintln!("gateway {gateway_id} already exists: minting a new token for this run");
    }
    // No name: an existing gateway keeps its own.
    let reply = ctx
        .operator
        .register_gateway(gateway_id, "", existing.is_some())
        .await?;
    if reply.gateway_token.is_empty() {
        return Err(Failure::Usage(format!(
            "gateway {gateway_id} was registered by someone else meanwhile; run again"
        )));
    }
    Ok(reply.gateway_token)
}
