//! The one-shot subcommands: one or two calls, then print the result.

use std::time::SystemTime;

use mission_control_client::agent::AgentClient;
use mission_control_client::{Agent, ListAgentsRequest, ProvisionRequest};
use serde_json::{Value, json};

use crate::cli::{Filters, GatewayCommand, ProvisionArgs};
use crate::context::Context;
use crate::failure::Failure;
use crate::time::{countdown, described, instant, short};
use crate::{json, names, table};

pub async fn gateway(ctx: &Context, command: GatewayCommand) -> Result<(), Failure> {
    match command {
        GatewayCommand::Register {
            gateway_id,
            name,
            rotate_token,
        } => {
            let reply = ctx
                .operator
                .register_gateway(&gateway_id, &name, rotate_token)
                .await?;
            let gateway = reply.gateway.unwrap_or_default();
            ctx.print(
                || {
                    json!({
                        "gateway": json::gateway(&gateway),
                        "created": reply.created,
                        "token": token_or_null(&reply.gateway_token),
                    })
                },
                || {
                    let verb = if reply.created {
                        "registered"
                    } else {
                        "updated"
                    };
                    let mut text = format!("gateway {} {verb}\n", gateway.id);
                    text.push_str(&token_notice(&reply.gateway_token, "x-gateway-token"));
                    text
                },
            );
        }
        GatewayCommand::List => {
            let gateways = ctx.operator.list_gateways().await?;
            ctx.print(
                || gateways.iter().map(json::gateway).collect(),
                || table::gateways(&gateways, SystemTime::now()),
            );
        }
        GatewayCommand::Sync {
            gateway_id,
            template_version,
        } => {
            let reply = ctx
                .operator
                .sync_gateway_templates(&gateway_id, &template_version)
                .await?;
            ctx.print(
                || {
                    json!({
                        "gateway_id": gateway_id,
                        "template_version": template_version,
                        "command_id": reply.command_id,
                        "sent": reply.sent,
                    })
                },
                || {
                    let when = if reply.sent {
                        "sent"
                    } else {
                        "kept until the gateway connects"
                    };
                    format!(
                        "template sync to {template_version} for gateway {gateway_id}: {when} (command {})\n",
                        reply.command_id
                    )
                },
            );
        }
        GatewayCommand::History { gateway_id } => {
            let transitions = ctx.operator.gateway_history(&gateway_id).await?;
            ctx.print(
                || transitions.iter().map(json::gateway_transition).collect(),
                || table::gateway_history(&transitions),
            );
        }
    }
    Ok(())
}

pub async fn provision(ctx: &Context, args: ProvisionArgs) -> Result<(), Failure> {
    let request = ProvisionRequest {
        rotate_token: args.rotate_token,
        ..ProvisionRequest::new(args.agent_id, args.gateway, args.role.into())
            .on_board(args.board)
            .named(args.name)
            .with_template_version(args.template_version)
    };
    let reply = ctx.operator.provision(request).await?;
    let agent = reply.agent.unwrap_or_default();
    ctx.print(
        || {
            json!({
                "agent": json::agent(&agent),
                "created": reply.created,
                "token": token_or_null(&reply.agent_token),
            })
        },
        || {
            let verb = if reply.created { "created" } else { "updated" };
            let mut text = format!("agent {} {verb}; woken (attempt 1)\n", agent.id);
            text.push_str(&detail(&agent, SystemTime::now()));
            text.push_str(&token_notice(&reply.agent_token, "x-agent-token"));
            text
        },
    );
    Ok(())
}

pub async fn get(ctx: &Context, agent_id: &str) -> Result<(), Failure> {
    let agent = ctx.operator.get(agent_id).await?;
    ctx.print(|| json::agent(&agent), || detail(&agent, SystemTime::now()));
    Ok(())
}

pub async fn list(ctx: &Context, filters: &Filters) -> Result<(), Failure> {
    let request = ListAgentsRequest {
        gateway_id: filters.gateway.clone(),
        board_id: filters.board.clone(),
        statuses: filters.statuses(),
        drifted: filters.drifted,
        ..ListAgentsRequest::default()
    };
    let agents = ctx.operator.list(request).await?;
    ctx.print(
        || agents.iter().map(json::agent).collect(),
        || table::agents(&agents.iter().collect::<Vec<_>>(), SystemTime::now()),
    );
    Ok(())
}

pub async fn wake(ctx: &Context, agent_id: &str) -> Result<(), Failure> {
    let agent = ctx.operator.wake(agent_id).await?;
    ctx.print(
        || json::agent(&agent),
        || {
            let deadline = countdown(instant(&agent.checkin_deadline_at), SystemTime::now());
            format!(
                "woke {}: attempt {} of generation {}, check-in deadline {deadline}\n",
                agent.id, agent.wake_attempts, agent.generation
            )
        },
    );
    Ok(())
}

pub async fn delete(ctx: &Context, agent_id: &str) -> Result<(), Failure> {
    let agent = ctx.operator.delete(agent_id).await?;
    ctx.print(
        || json::agent(&agent),
        || {
            let status = names::status(agent.status);
            format!(
                "deleted {} (was {status}); its token no longer works\n",
                agent.id
            )
        },
    );
    Ok(())
}

pub async fn history(ctx: &Context, agent_id: &str, limit: usize) -> Result<(), Failure> {
    let events = ctx.operator.history(agent_id, limit).await?;
    ctx.print(
        || events.iter().map(json::event).collect(),
        || table::history(&events),
    );
    Ok(())
}

pub async fn heartbeat(ctx: &Context, token: &str) -> Result<(), Failure> {
    let mut agent = AgentClient::with_endpoints(ctx.endpoints.clone(), token)?;
    let reply = agent.heartbeat().await?;
    ctx.print(
        || json::heartbeat_reply(&reply),
        || {
            let now = SystemTime::now();
            let next = reply.next_heartbeat_in.as_ref().map_or("-".into(), |d| {
                short(mission_control_client::to_duration(d))
            });
            format!(
                "agent {} is {} (generation {})\nnext heartbeat in {next}\nlease expires {}\n",
                reply.agent_id,
                names::status(reply.status).to_uppercase(),
                reply.generation,
                countdown(instant(&reply.lease_expires_at), now),
            )
        },
    );
    Ok(())
}

/// Every field of one agent, one per line, times with a relative hint.
fn detail(agent: &Agent, now: SystemTime) -> String {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let rows = [
        ("id", agent.id.clone()),
        ("name", or_dash(&agent.name)),
        ("gateway", agent.gateway_id.clone()),
        ("board", or_dash(&agent.board_id)),
        ("role", names::role(agent.role)),
        ("status", names::status(agent.status).to_uppercase()),
        ("generation", agent.generation.to_string()),
        ("wake attempts", agent.wake_attempts.to_string()),
        ("last wake sent", described(&agent.last_wake_sent_at, now)),
        (
            "check-in deadline",
            described(&agent.checkin_deadline_at, now),
        ),
        ("last seen", described(&agent.last_seen_at, now)),
        ("lease expires", described(&agent.lease_expires_at, now)),
        ("offline reason", or_dash(&agent.offline_reason)),
        ("last wake error", or_dash(&agent.last_provision_error)),
        (
            "template (desired)",
            or_dash(&agent.desired_template_version),
        ),
        (
            "template (reported)",
            or_dash(&agent.reported_template_version),
        ),
        ("created", described(&agent.created_at, now)),
        ("updated", described(&agent.updated_at, now)),
        ("revision", agent.revision.to_string()),
    ];
    rows.iter()
        .map(|(name, value)| format!("{:<22}{value}\n", format!("{name}:")))
        .collect()
}

fn token_or_null(token: &str) -> Value {
    if token.is_empty() {
        Value::Null
    } else {
        token.into()
    }
}

fn token_notice(token: &str, header: &str) -> String {
    if token.is_empty() {
        return "token: unchanged (not shown again; use --rotate-token for a new one)\n".into();
    }
    format!(
        "\ntoken: {token}\n  Save it now: it is shown only once. It is sent as `{header}` metadata.\n"
    )
}
