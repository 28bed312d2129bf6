//! A restart mid-cycle loses nothing: agents, tokens, attempts, history and
//! the escalation itself carry over to the next server on the same database.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mission_control_client::agent::AgentClient;
use mission_control_client::gateway::GatewayEvent;
use mission_control_client::{
    AgentRole, AgentStatus, ProvisionRequest, TransitionReason, WatchAgentRequest,
};

use crate::support::*;

/// Per agent, the (generation, attempt) of each wake received.
type WakeLog = BTreeMap<String, Vec<(u64, u32)>>;

/// A port free now, so both servers can use the same address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_restart_mid_cycle_loses_nothing() {
    let db = database().await;
    let port = free_port();
    let flags = || {
        let mut flags = fast_flags(db.url());
        flags[2] = format!("127.0.0.1:{port}");
        // Long enough that the first server sends only the first wake.
        flags[6] = "3s".into();
        flags
    };
    let first = spawn_app(flags()).await;
    let gateway_token = first.gateway("gw").await;
    let mut gateway = first.connect_gateway(&gateway_token);
    connected(&mut gateway).await;

    first
        .operator
        .provision(ProvisionRequest::new(
            "silent",
            "gw",
            AgentRole::GatewayMain,
        ))
        .await
        .unwrap();
    let steady = first
        .operator
        .provision(ProvisionRequest::new("steady", "gw", AgentRole::BoardLead).on_board("b"))
        .await
        .unwrap();
    let mut steady_agent = AgentClient::connect(&first.endpoint, &steady.agent_token).unwrap();
    assert_eq!(
        steady_agent.heartbeat().await.unwrap().status,
        AgentStatus::Online as i32
    );

    let wakes: Arc<Mutex<WakeLog>> = Arc::default();
    let recorded = wakes.clone();
    let first_wake = Arc::new(tokio::sync::Notify::new());
    let woken = first_wake.clone();
    let reconnected = Arc::new(tokio::sync::Notify::new());
    let back = reconnected.clone();
    tokio::spawn(async move {
        let mut connections = 0;
        while let Some(event) = gateway.recv().await {
            match event {
                GatewayEvent::Wake { command, ack } => {
                    recorded
                        .lock()
                        .unwrap()
                        .entry(command.agent_id.clone())
                        .or_default()
                        .push((command.generation, command.attempt));
                    ack.delivered().await.expect("ack sent");
                    woken.notify_one();
                }
                GatewayEvent::Connected { .. } => {
                    connections += 1;
                    if connections == 1 {
                        back.notify_one();
                    }
                }
                _ => {}
            }
        }
    });
    first_wake.notified().await;
    let history_before = first.operator.history("silent", 100).await.unwrap();
    first.app.shutdown().await;

    let second = spawn_app(flags()).await;
    reconnected.notified().await;
    let restored = second.operator.get("silent").await.unwrap();
    assert_eq!(restored.wake_attempts, 1, "the attempt count survived");
    assert_eq!(restored.status, AgentStatus::Provisioning as i32);
    assert_eq!(
        second.operator.get("steady").await.unwrap().status,
        AgentStatus::Online as i32
    );

    // The steady agent's token still works on the new server.
    let mut steady_agent = AgentClient::connect(&second.endpoint, &steady.agent_token).unwrap();
    assert_eq!(
        steady_agent.heartbeat().await.unwrap().status,
        AgentStatus::Online as i32
    );

    // The escalation goes on where it was and ends after three wakes in all.
    let mut watch = second
        .watch(WatchAgentRequest {
            agent_id: "silent".into(),
            ..Default::default()
        })
        .await;
    loop {
        let event = next_event(&mut watch).await;
        if event.agent.unwrap().status == AgentStatus::Offline as i32 {
            break;
        }
    }
    assert_eq!(wakes.lock().unwrap()["silent"], [(1, 1), (1, 2), (1, 3)]);

    let history = second.operator.history("silent", 100).await.unwrap();
    assert!(history.len() > history_before.len());
    assert!(
        history_before
            .iter()
            .all(|old| history.iter().any(|e| e.revision == old.revision)),
        "no event lost"
    );
    assert_eq!(
        history[0].reason,
        TransitionReason::MaxAttemptsReached as i32
    );
    second.app.shutdown().await;
}
