//! An agent: check in with its token, then heartbeat at the pace the service
//! asks for until Ctrl-C, printing each beat.
//!
//! ```text
//! cargo run -p mission-control-client --example agent -- mca_…
//! MC_AGENT_TOKEN=mca_… MC_ENDPOINT=http://127.0.0.1:50051 \
//!     cargo run -p mission-control-client --example agent
//! ```

use std::process::ExitCode;

use mission_control_client::agent::{AgentClient, LoopEvent};

#[tokio::main]
async fn main() -> ExitCode {
    let Some(token) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("MC_AGENT_TOKEN").ok())
    else {
        eprintln!("usage: agent <TOKEN>   (or set MC_AGENT_TOKEN)");
        return ExitCode::from(2);
    };
    let endpoint =
        std::env::var("MC_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());

    let agent = match AgentClient::connect(&endpoint, &token) {
        Ok(agent) => agent.with_template_version("example-1"),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stop = Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    // Poll it once now: that installs the Ctrl-C handler, so a Ctrl-C during
    // the first heartbeat stops the loop instead of killing the process.
    if futures_util::poll!(&mut stop).is_ready() {
        return ExitCode::SUCCESS;
    }
    // The first accepted heartbeat is the check-in; the rest renew the lease.
    let result = agent
        .run_with(stop, |event| match event {
            LoopEvent::Beat(reply) => println!(
                "beat: {} is {:?} (generation {}), next in {:?}",
                reply.agent_id,
                reply.status(),
                reply.generation,
                reply
                    .next_heartbeat_in
                    .as_ref()
                    .map(mission_control_client::to_duration)
                    .unwrap_or_default(),
            ),
            LoopEvent::Retrying { error, delay } => {
                eprintln!("service unavailable ({error}); retrying in {delay:?}")
            }
        })
        .await;
    match result {
        Ok(()) => {
            println!("stopped; the lease lapses on its own");
            ExitCode::SUCCESS
        }
        // A rejected token: the agent was deleted or its token rotated.
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
