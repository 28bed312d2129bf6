//! `mcctl rollout` and `mcctl drift`: template versions across the fleet.

mod view;

use std::io::IsTerminal;

use clap::{Args, Subcommand};
use futures_util::StreamExt;
use mission_control_client::{Rollout, RolloutState, StartRolloutRequest};

use crate::context::Context;
use crate::context::Output;
use crate::failure::Failure;
use crate::stdout;

#[derive(Debug, Clone, Subcommand)]
pub enum RolloutCommand {
    /// Start re-provisioning a selection of agents with a template version,
    /// wave by wave. Prints the rollout (and follows it with --watch).
    Start(StartArgs),
    /// One rollout's waves, counts and failed agents (every rollout
    /// without an id). --watch follows it live.
    Status {
        rollout_id: Option<String>,
        #[command(flatten)]
        follow: Follow,
    },
    /// Start no new wave; agents in flight are still judged.
    Pause { rollout_id: String },
    /// Start waves again.
    Resume {
        rollout_id: String,
        /// A new failure budget: a number ("5") or a share ("10%"). Needed
        /// when the rollout paused itself because its budget was spent.
        #[arg(long, default_value = "", hide_default_value = true)]
        failure_budget: String,
        #[command(flatten)]
        follow: Follow,
    },
    /// End the rollout: agents not started keep their version.
    Cancel { rollout_id: String },
}

#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// The template version to roll out.
    pub template_version: String,
    /// Every agent on this gateway (with --board: the board's agents on it).
    #[arg(long, default_value = "", hide_default_value = true)]
    pub gateway: String,
    /// Every agent on this board.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub board: String,
    /// These agents (comma-separated), instead of a gateway or board.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["gateway", "board"])]
    pub agents: Vec<String>,
    /// Agents awaiting their check-in at once, at most: a number ("10") or
    /// a share of the selection ("25%").
    #[arg(long, default_value = "25%")]
    pub max_in_flight: String,
    /// Failed agents tolerated before the rollout pauses itself: a number
    /// ("0") or a share of the selection ("10%").
    #[arg(long, default_value = "0")]
    pub failure_budget: String,
    #[command(flatten)]
    pub follow: Follow,
}

#[derive(Debug, Clone, Args)]
pub struct Follow {
    /// Follow the rollout until it completes, pauses or is cancelled: a
    /// live progress bar on a terminal, a line per change otherwise, an
    /// object per change with -o json. Exits 0 when it completed, 3 when
    /// it paused or was cancelled.
    #[arg(long, short)]
    pub watch: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DriftArgs {
    /// Only agents on this gateway.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub gateway: String,
    /// Only agents on this board.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub board: String,
}

pub async fn drift(ctx: &Context, args: &DriftArgs) -> Result<(), Failure> {
    let drift = ctx.operator.drift(&args.gateway, &args.board).await?;
    ctx.print(|| view::drift_json(&drift), || view::drift_table(&drift));
    Ok(())
}

pub async fn run(ctx: &Context, command: &RolloutCommand) -> Result<(), Failure> {
    let (rollout, follow) = match command {
        RolloutCommand::Start(args) => {
            let request = StartRolloutRequest {
                template_version: args.template_version.clone(),
                gateway_id: args.gateway.clone(),
                board_id: args.board.clone(),
                agent_ids: args.agents.clone(),
                max_in_flight: args.max_in_flight.clone(),
                failure_budget: args.failure_budget.clone(),
            };
            (
                ctx.operator.start_rollout(request).await?,
                args.follow.watch,
            )
        }
        RolloutCommand::Status {
            rollout_id: None, ..
        } => {
            let rollouts = ctx.operator.rollouts().await?;
            ctx.print(
                || rollouts.iter().map(view::json).collect(),
                || view::list(&rollouts),
            );
            return Ok(());
        }
        RolloutCommand::Status {
            rollout_id: Some(id),
            follow,
        } => (ctx.operator.rollout(id).await?, follow.watch),
        RolloutCommand::Pause { rollout_id } => {
            (ctx.operator.pause_rollout(rollout_id).await?, false)
        }
        RolloutCommand::Resume {
            rollout_id,
            failure_budget,
            follow,
        } => (
            ctx.operator
                .resume_rollout(rollout_id, failure_budget)
                .await?,
            follow.watch,
        ),
        RolloutCommand::Cancel { rollout_id } => {
            (ctx.operator.cancel_rollout(rollout_id).await?, false)
        }
    };
    if follow {
        return watch(ctx, &rollout.id).await;
    }
    ctx.print(|| view::json(&rollout), || view::summary(&rollout));
    Ok(())
}

/// Follows a rollout until it is no longer running.
async fn watch(ctx: &Context, rollout_id: &str) -> Result<(), Failure> {
    let live = ctx.output == Output::Table && std::io::stdout().is_terminal();
    let mut stream = ctx.operator.watch_rollout(rollout_id).await?;
    let mut last: Option<Rollout> = None;
    while let Some(item) = stream.next().await {
        let rollout = item.map_err(|status| Failure::Stream {
            status,
            hint: format!("see where it is with `mcctl rollout status {rollout_id}`"),
        })?;
        let shown = match ctx.output {
            Output::Json => stdout::emit_line(&view::json(&rollout).to_string()),
            // Redrawn in place: carriage return, clear the line.
            Output::Table if live => {
                stdout::emit(&format!("\r\x1b[2K{}", view::progress_line(&rollout)))
            }
            Output::Table => stdout::emit_line(&view::progress_line(&rollout)),
        };
        let running = rollout.state == RolloutState::Running as i32;
        last = Some(rollout);
        if !shown || !running {
            break;
        }
    }
    let Some(rollout) = last else {
        return Ok(());
    };
    if ctx.output == Output::Table {
        let _ = stdout::emit(&format!(
            "{}{}",
            if live { "\n" } else { "" },
            view::summary(&rollout)
        ));
    }
    match RolloutState::try_from(rollout.state) {
        Ok(RolloutState::Completed) => Ok(()),
        _ => Err(Failure::Halted(format!(
            "rollout {} is {}{}",
            rollout.id,
            view::state(rollout.state),
            match rollout.reason.as_str() {
                "" => String::new(),
                why => format!(": {why}"),
            }
        ))),
    }
}
