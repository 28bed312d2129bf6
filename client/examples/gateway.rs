//! A gateway: open the command stream, print each wake and retire command,
//! and acknowledge it as delivered. Reconnects by itself; Ctrl-C stops it.
//!
//! ```text
//! cargo run -p mission-control-client --example gateway -- mcg_…
//! MC_GATEWAY_TOKEN=mcg_… cargo run -p mission-control-client --example gateway
//! ```

use std::process::ExitCode;

use futures_util::StreamExt;
use mission_control_client::gateway::{GatewayClient, GatewayEvent};

#[tokio::main]
async fn main() -> ExitCode {
    let Some(token) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("MC_GATEWAY_TOKEN").ok())
    else {
        eprintln!("usage: gateway <TOKEN>   (or set MC_GATEWAY_TOKEN)");
        return ExitCode::from(2);
    };
    let endpoint =
        std::env::var("MC_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let mut events = match GatewayClient::connect(&endpoint, &token) {
        Ok(client) => client.events(),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            _ = &mut ctrl_c => return ExitCode::SUCCESS,
            event = events.next() => event,
        };
        match event {
            Some(GatewayEvent::Connected { gateway_id }) => {
                println!("connected as gateway {gateway_id}; waiting for commands")
            }
            Some(GatewayEvent::Wake { command, ack }) => {
                println!(
                    "wake {} (attempt {}, generation {}): start it now",
                    command.agent_id, command.attempt, command.generation
                );
                // A real gateway starts the agent process here, handing it
                // its token; `ack.failed(reason)` if it cannot.
                if let Err(error) = ack.delivered().await {
                    eprintln!("{error}");
                }
            }
            Some(GatewayEvent::Retire { command, ack }) => {
                println!("retire {}: stop it and forget it", command.agent_id);
                if let Err(error) = ack.delivered().await {
                    eprintln!("{error}");
                }
            }
            Some(GatewayEvent::TemplateSync { command, ack }) => {
                println!("sync templates to {}", command.template_version);
                // A real gateway fetches the templates here; `ack.failed`
                // with the reason if it cannot.
                if let Err(error) = ack.delivered().await {
                    eprintln!("{error}");
                }
            }
            Some(GatewayEvent::Disconnected { error, retry_in }) => {
                eprintln!("disconnected ({error}); reconnecting in {retry_in:?}")
            }
            Some(GatewayEvent::Rejected(error)) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
            None => return ExitCode::FAILURE,
        }
    }
}
