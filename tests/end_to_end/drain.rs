//! A drain keeps its word: calls in flight when SIGTERM comes finish, and
//! the wakes they cause reach the gateway before its stream ends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mission_control_client::gateway::GatewayEvent;
use mission_control_client::{AgentRole, ProvisionRequest};

use crate::support::*;

const IN_FLIGHT: usize = 30;

#[tokio::test]
async fn provisions_in_flight_at_a_drain_commit_and_their_wakes_reach_the_gateway() {
    let db = database().await;
    let mut flags = fast_flags(db.url());
    let timeout = flags.iter().position(|f| f == "--drain-timeout").unwrap() + 1;
    flags[timeout] = "30s".into();
    let helper = spawn_app(flags).await;
    let gateway_token = helper.gateway("gw-drain").await;
    let mut gateway = helper.connect_gateway(&gateway_token);
    connected(&mut gateway).await;
    let woken: Arc<Mutex<HashSet<String>>> = Arc::default();
    let recorded = woken.clone();
    tokio::spawn(async move {
        while let Some(event) = gateway.recv().await {
            if let GatewayEvent::Wake { command, ack } = event {
                recorded.lock().unwrap().insert(command.agent_id.clone());
                let _ = ack.delivered().await;
            }
        }
    });

    // Every commit waits on a table lock, so the provisions pile up in the
    // writer while the drain begins.
    let (locker, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE agents IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let provisions: Vec<_> = (0..IN_FLIGHT)
        .map(|n| {
            let operator = helper.operator.clone();
            tokio::spawn(async move {
                let id = format!("drained-{n:02}");
                let request = ProvisionRequest::new(id.clone(), "gw-drain", AgentRole::BoardWorker)
                    .on_board("b1");
                operator.provision(request).await.map(|_| id)
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = locker
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let finished = provisions.iter().filter(|p| p.is_finished()).count();
            let mut outcomes = Vec::new();
            for provision in provisions {
                if provision.is_finished() {
                    outcomes.push(format!("{:?}", provision.await.unwrap()));
                }
            }
            panic!(
                "the commit never blocked: {finished} of {IN_FLIGHT} provisions \
                 had returned: {outcomes:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the other calls reach the writer's queue (the calls are local).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let drain = tokio::spawn(helper.app.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    tokio::time::timeout(PATIENCE, drain)
        .await
        .expect("the drain ends")
        .unwrap();

    let mut acknowledged = Vec::new();
    for provision in provisions {
        if let Ok(id) = provision.await.unwrap() {
            acknowledged.push(id);
        }
    }
    assert_eq!(
        acknowledged.len(),
        IN_FLIGHT,
        "every call in flight finished"
    );
    let woken = woken.lock().unwrap().clone();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !woken.contains(*id))
        .collect();
    assert!(missing.is_empty(), "wakes never sent: {missing:?}");
    let failed: i64 = locker
        .query_one(
            "SELECT count(*) FROM agent_events WHERE reason = 'wake_failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0, "no wake recorded as failed");
}
