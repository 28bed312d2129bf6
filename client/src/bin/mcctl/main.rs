//! `mcctl`: the operator's command line for mission-control, and a fleet
//! simulator (`mcctl simulate`) to watch the lifecycle policy at work.

mod bench;
mod cli;
mod commands;
mod context;
mod failure;
mod json;
mod names;
mod rollout;
mod simulate;
mod stdout;
mod table;
mod time;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use mission_control_client::operator::OperatorClient;
use mission_control_client::{ClientTls, Endpoints};

use cli::{Cli, Command};
use context::Context;
use failure::Failure;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.describe());
            failure.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let tls = ClientTls::from_files(
        cli.cacert.as_deref(),
        cli.cert.as_deref(),
        cli.key.as_deref(),
    )
    .map_err(|e| Failure::Usage(e.to_string()))?;
    let endpoints = Endpoints::parse(&cli.endpoint, Some(&tls))?;
    let mut operator = OperatorClient::with_endpoints(endpoints.clone());
    if let Some(token) = &cli.operator_token {
        operator = operator.with_operator_token(token)?;
    }
    let ctx = Context {
        operator,
        endpoints,
        output: cli.output,
        tls,
        operator_token: cli.operator_token.clone(),
    };
    // A one-shot command that finds its endpoint unavailable is tried on
    // the next one, once per endpoint (the client moves on by itself).
    // Not a rollout start: one whose answer was lost may have started.
    if !matches!(
        cli.command,
        Command::Watch(_)
            | Command::Simulate(_)
            | Command::Bench(_)
            | Command::Storm(_)
            | Command::BenchWatchers(_)
            | Command::Rollout(rollout::RolloutCommand::Start(_))
    ) {
        let mut tries = ctx.endpoints.len();
        loop {
            match one_shot(&ctx, &cli.command).await {
                Err(failure) if tries > 1 && failure.endpoint_unavailable() => tries -= 1,
                result => return result,
            }
        }
    }
    match cli.command {
        Command::Watch(args) => watch::run(&ctx, args).await,
        Command::Simulate(args) => simulate::run(&ctx, args).await,
        Command::Bench(args) => bench::run(&ctx, args).await,
        Command::Storm(args) => bench::storm::run(&ctx, args).await,
        Command::BenchWatchers(args) => bench::watchers::run(&ctx, args).await,
        Command::Rollout(command) => rollout::run(&ctx, &command).await,
        _ => unreachable!("one-shot commands are run above"),
    }
}

async fn one_shot(ctx: &Context, command: &Command) -> Result<(), Failure> {
    match command {
        Command::Gateway(command) => commands::gateway(ctx, command.clone()).await,
        Command::Provision(args) => commands::provision(ctx, args.clone()).await,
        Command::Get { agent_id } => commands::get(ctx, agent_id).await,
        Command::List(filters) => commands::list(ctx, filters).await,
        Command::Wake { agent_id } => commands::wake(ctx, agent_id).await,
        Command::Delete { agent_id } => commands::delete(ctx, agent_id).await,
        Command::History { agent_id, limit } => commands::history(ctx, agent_id, *limit).await,
        Command::Heartbeat { token } => commands::heartbeat(ctx, token).await,
        Command::Drift(args) => rollout::drift(ctx, args).await,
        Command::Rollout(command) => rollout::run(ctx, command).await,
        Command::Watch(_)
        | Command::Simulate(_)
        | Command::Bench(_)
        | Command::Storm(_)
        | Command::BenchWatchers(_) => {
            unreachable!("not one-shot")
        }
    }
}
