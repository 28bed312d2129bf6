//! `mcctl watch`: a snapshot, the marker, then the changes we cause.

use mission_control_client::{AgentRole, ProvisionRequest};
use serde_json::Value;

use crate::support::{Running, server};

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_watch_prints_the_snapshot_the_marker_and_then_each_change() {
    let server = server("30s", "30s", "10s").await;
    server
        .operator
        .register_gateway("gw", "", false)
        .await
        .unwrap();
    let before = ProvisionRequest::new("before", "gw", AgentRole::GatewayMain);
    server.operator.provision(before).await.unwrap();

    let mut watch = Running::spawn(
        &server.endpoint,
        &["watch", "--output", "json", "--gateway", "gw"],
    );
    let snapshot = watch
        .lines_until(|line| parse(line)["kind"] == "snapshot_complete")
        .await;
    let first = parse(&snapshot[0]);
    assert_eq!(first["kind"], "event");
    assert_eq!(first["reason"], "snapshot");
    assert_eq!(first["agent"]["id"], "before");
    assert_eq!(
        snapshot.len(),
        2,
        "one agent, then the marker: {snapshot:?}"
    );

    let after = ProvisionRequest::new("after", "gw", AgentRole::BoardLead).on_board("b");
    server.operator.provision(after).await.unwrap();
    server.operator.delete("before").await.unwrap();
    let is_event = |line: &str, kind: &str, id: &str| {
        let value = parse(line);
        value["type"] == kind && value["agent"]["id"] == id
    };
    let changes = watch
        .lines_until(|l| is_event(l, "deleted", "before"))
        .await;
    let added = changes
        .iter()
        .map(|l| parse(l))
        .find(|v| v["type"] == "added")
        .unwrap();
    assert_eq!(added["agent"]["id"], "after");
    assert_eq!(added["reason"], "provisioned");
    assert_eq!(added["agent"]["status"], "provisioning");
    let deleted = parse(changes.last().unwrap());
    assert!(deleted["revision"].as_u64() > added["revision"].as_u64());

    watch.child.kill().await.unwrap();
    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_table_watch_prints_one_line_per_message() {
    let server = server("30s", "30s", "10s").await;
    server
        .operator
        .register_gateway("gw", "", false)
        .await
        .unwrap();
    let agent = ProvisionRequest::new("a1", "gw", AgentRole::GatewayMain);
    server.operator.provision(agent).await.unwrap();

    let mut watch = Running::spawn(&server.endpoint, &["watch", "--agent", "a1"]);
    let snapshot = watch
        .lines_until(|line| line.starts_with("-- snapshot complete"))
        .await;
    assert!(
        snapshot[0].starts_with("snapshot  a1  PROVISIONING  attempts 1"),
        "{snapshot:?}"
    );
    server.operator.wake("a1").await.unwrap();
    let woken = watch.next_line().await;
    assert!(woken.contains("  changed  a1  PROVISIONING  "), "{woken}");

    watch.child.kill().await.unwrap();
    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ended_by_the_server_exits_non_zero_with_the_status() {
    let server = server("30s", "30s", "10s").await;
    let mut watch = Running::spawn(&server.endpoint, &["watch"]);
    watch
        .lines_until(|line| line.starts_with("-- snapshot complete"))
        .await;
    server.app.shutdown().await;
    let (code, stderr) = watch.exit().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.starts_with("error: UNAVAILABLE: "), "{stderr}");
    assert!(stderr.contains("the service went away"), "{stderr}");
}
