//! An operator: register a gateway, provision an agent on it, print the
//! tokens (shown only once), then list the gateway's agents.
//!
//! ```text
//! cargo run -p mission-control-client --example operator -- [GATEWAY_ID] [AGENT_ID]
//! ```

use std::process::ExitCode;

use mission_control_client::operator::OperatorClient;
use mission_control_client::{AgentRole, Error, ListAgentsRequest, ProvisionRequest};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let gateway_id = args.next().unwrap_or_else(|| "example-gw".to_owned());
    let agent_id = args.next().unwrap_or_else(|| "example-agent".to_owned());
    let endpoint =
        std::env::var("MC_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    match run(&endpoint, &gateway_id, &agent_id).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(endpoint: &str, gateway_id: &str, agent_id: &str) -> Result<(), Error> {
    let mut operator = OperatorClient::connect(endpoint)?;
    if let Ok(token) = std::env::var("MC_OPERATOR_TOKEN") {
        operator = operator.with_operator_token(&token)?;
    }

    let gateway = operator.register_gateway(gateway_id, "", false).await?;
    match gateway.gateway_token.as_str() {
        "" => println!("gateway {gateway_id} already registered (token unchanged)"),
        token => println!("gateway {gateway_id} registered; token: {token}"),
    }

    let request = ProvisionRequest::new(agent_id, gateway_id, AgentRole::GatewayMain);
    let provisioned = operator.provision(request).await?;
    match provisioned.agent_token.as_str() {
        "" => println!("agent {agent_id} updated and woken (token unchanged)"),
        token => println!("agent {agent_id} provisioned and woken; token: {token}"),
    }
    // A wake to a gateway that is not connected still counts as an attempt;
    // the next one follows when the check-in deadline passes.
    let connected = operator
        .list_gateways()
        .await?
        .iter()
        .any(|gateway| gateway.id == gateway_id && gateway.connected);
    if !connected {
        println!(
            "  gateway {gateway_id} is not connected, so this wake fails; start the \
             gateway example and it receives the next one"
        );
    }

    let filter = ListAgentsRequest {
        gateway_id: gateway_id.to_owned(),
        ..ListAgentsRequest::default()
    };
    println!("agents on {gateway_id}:");
    for agent in operator.list(filter).await? {
        println!(
            "  {}  {:?}  wake attempts {}  {}",
            agent.id,
            agent.status(),
            agent.wake_attempts,
            agent.last_provision_error
        );
    }
    Ok(())
}
