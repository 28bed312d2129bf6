//! `mcctl`: the operator's command line for mission-control, and a fleet
//! simulator (`mcctl simulate`) to watch the lifecycle policy at work.

mod cli;
mod commands;
mod failure;
mod json;
mod names;
mod simulate;
mod stdout;
mod table;
mod time;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use mission_control_client::operator::OperatorClient;

use cli::{Cli, Command};
use commands::Context;
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
    let channel = mission_control_client::channel(&cli.endpoint)?;
    let mut operator = OperatorClient::new(channel.clone());
    if let Some(token) = &cli.operator_token {
        operator = operator.with_operator_token(token)?;
    }
    let ctx = Context {
        operator,
        channel,
        output: cli.output,
    };
    match cli.command {
        Command::Gateway(command) => commands::gateway(&ctx, command).await,
        Command::Provision(args) => commands::provision(&ctx, args).await,
        Command::Get { agent_id } => commands::get(&ctx, &agent_id).await,
        Command::List(filters) => commands::list(&ctx, &filters).await,
        Command::Wake { agent_id } => commands::wake(&ctx, &agent_id).await,
        Command::Delete { agent_id } => commands::delete(&ctx, &agent_id).await,
        Command::History { agent_id, limit } => commands::history(&ctx, &agent_id, limit).await,
        Command::Heartbeat { token } => commands::heartbeat(&ctx, &token).await,
        Command::Watch(args) => watch::run(&ctx, args).await,
        Command::Simulate(args) => simulate::run(&ctx, args).await,
    }
}
