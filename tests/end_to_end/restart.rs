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

/// Waits for `notify`, failing with `what` instead of hanging.
async fn notified(notify: &tokio::sync::Notify, what: &str) {
    within(what, notify.notified()).await
}

#[tokio::test]
async fn a_restart_mid_cycle_loses_nothing() {
    let db = database().await;
    let port = free_port();
    let flags = |checkin_deadline: &str| {
        let mut flags = fast_flags(db.url());
        set_flag(&mut flags, "--listen", &format!("127.0.0.1:{port}"));
        set_flag(&mut flags, "--checkin-deadline", checkin_deadline);
        // The agent that checked in stays online across the restart, however
        // slow the machine.
        set_flag(&mut flags, "--lease-ttl", "5m");
        flags
    };
    // Long enough that the first server sends only the first wake, even on a
    // machine that stalls for seconds. The deadline it sets is stored, so
    // the second server keeps it; the later ones are short.
    let first = within("the first start", spawn_app(flags("5s"))).await;
    let gateway_token = within("registering", first.gateway("gw")).await;
    let mut gateway = first.connect_gateway(&gateway_token);
    connected(&mut gateway).await;

    let silent = ProvisionRequest::new("silent", "gw", AgentRole::GatewayMain);
    within("provisioning", first.operator.provision(silent))
        .await
        .unwrap();
    let steady = ProvisionRequest::new("steady", "gw", AgentRole::BoardLead).on_board("b");
    let steady = within("provisioning", first.operator.provision(steady))
        .await
        .unwrap();
    let mut steady_agent = AgentClient::connect(&first.endpoint, &steady.agent_token).unwrap();
    assert_eq!(
        within("the check-in", steady_agent.heartbeat())
            .await
            .unwrap()
            .status,
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
    notified(&first_wake, "the first wake").await;
    let history_before = within("the history", first.operator.history("silent", 100))
        .await
        .unwrap();
    within("the first shutdown", first.app.shutdown()).await;

    let second = within("the second start", spawn_app(flags("400ms"))).await;
    notified(&reconnected, "the gateway reconnected").await;
    let restored = within("get", second.operator.get("silent")).await.unwrap();
    assert_eq!(restored.wake_attempts, 1, "the attempt count survived");
    assert_eq!(restored.status, AgentStatus::Provisioning as i32);
    assert_eq!(
        within("get", second.operator.get("steady"))
            .await
            .unwrap()
            .status,
        AgentStatus::Online as i32
    );

    // The steady agent's token still works on the new server.
    let mut steady_agent = AgentClient::connect(&second.endpoint, &steady.agent_token).unwrap();
    assert_eq!(
        within("a heartbeat", steady_agent.heartbeat())
            .await
            .unwrap()
            .status,
        AgentStatus::Online as i32
    );

    // The escalation goes on where it was and ends after three wakes in all.
    let request = WatchAgentRequest {
        agent_id: "silent".into(),
        ..Default::default()
    };
    let mut watch = within("opening a watch", second.watch(request)).await;
    loop {
        let event = next_event(&mut watch).await;
        if event.agent.unwrap().status == AgentStatus::Offline as i32 {
            break;
        }
    }
    // The gateway task may record the last wake after the watch saw the end.
    let all_three = async {
        while wakes.lock().unwrap()["silent"].len() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    within("the third wake recorded", all_three).await;
    assert_eq!(wakes.lock().unwrap()["silent"], [(1, 1), (1, 2), (1, 3)]);

    let history = within("the history", second.operator.history("silent", 100))
        .await
        .unwrap();
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
    within("the second shutdown", second.app.shutdown()).await;
}
