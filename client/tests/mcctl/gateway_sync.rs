//! `mcctl gateway sync` against a real server, with the client library's
//! gateway helper on the other end: the sync is kept while the gateway is
//! away, resent on its next stream with the same id until acknowledged,
//! and the request and the outcome land in the gateway's history.

use futures_util::StreamExt;
use mission_control_client::gateway::{GatewayClient, GatewayEvent};

use crate::support::{PATIENCE, fails, json, ok, server};

/// The next template sync on the stream (acknowledging anything else).
async fn next_sync(
    events: &mut (impl futures_util::Stream<Item = GatewayEvent> + Unpin),
) -> (
    mission_control_client::TemplateSyncCommand,
    mission_control_client::gateway::Ack,
) {
    loop {
        match tokio::time::timeout(PATIENCE, events.next()).await {
            Ok(Some(GatewayEvent::TemplateSync { command, ack })) => return (command, ack),
            Ok(Some(GatewayEvent::Wake { ack, .. } | GatewayEvent::Retire { ack, .. })) => {
                ack.delivered().await.ok();
            }
            Ok(Some(GatewayEvent::Connected { .. } | GatewayEvent::Disconnected { .. })) => {}
            other => panic!("expected a template sync, got {other:?}"),
        }
    }
}

/// The gateway's template sync history, oldest first, polled (with a
/// bound) until `done` holds.
async fn sync_history(
    server: &crate::support::Server,
    gateway: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut history = server.operator.gateway_history(gateway).await.unwrap();
        history.reverse();
        let syncs: Vec<String> = history
            .into_iter()
            .map(|t| t.reason)
            .filter(|r| r.starts_with("template sync"))
            .collect();
        if done(&syncs) || tokio::time::Instant::now() > deadline {
            return syncs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_sync_acknowledged_and_resent_across_a_reconnect() {
    let server = server("30s", "30s", "10s").await;
    let endpoint = server.endpoint.as_str();
    let registered = json(endpoint, &["gateway", "register", "gw1"]).await;
    let token = registered["token"].as_str().unwrap().to_owned();

    // Asked for while the gateway is away: kept.
    let text = ok(endpoint, &["gateway", "sync", "gw1", "v2"]).await;
    assert!(
        text.contains("template sync to v2 for gateway gw1: kept until the gateway connects"),
        "{text}"
    );
    let command_id = text
        .trim_end()
        .rsplit("(command ")
        .next()
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap()
        .to_owned();

    // The first stream gets it and never answers: its token is rotated.
    let mut first = GatewayClient::connect(endpoint, &token).unwrap().events();
    let (command, _unanswered) = next_sync(&mut first).await;
    assert_eq!(command.template_version, "v2");
    let rotated = json(endpoint, &["gateway", "register", "gw1", "--rotate-token"]).await;
    let new_token = rotated["token"].as_str().unwrap().to_owned();
    loop {
        match tokio::time::timeout(PATIENCE, first.next()).await {
            Ok(Some(GatewayEvent::Rejected(_))) => break,
            Ok(Some(_)) => {}
            other => panic!("expected the old token refused, got {other:?}"),
        }
    }

    // The next stream gets the same command, same id, and acknowledges it.
    let mut second = GatewayClient::connect(endpoint, &new_token)
        .unwrap()
        .events();
    let (command, ack) = next_sync(&mut second).await;
    assert_eq!(command.template_version, "v2");
    ack.delivered().await.unwrap();
    let synced = format!("template sync to v2 (command {command_id}) synced");
    let history = sync_history(&server, "gw1", |h| h.len() >= 2).await;
    assert_eq!(
        history,
        [
            format!("template sync to v2 (command {command_id}) requested"),
            synced
        ]
    );

    // Connected now: sent at once; a failure is recorded with its reason.
    let sent = json(endpoint, &["gateway", "sync", "gw1", "v3"]).await;
    assert_eq!(sent["sent"], true);
    assert_eq!(sent["template_version"], "v3");
    let (command, ack) = next_sync(&mut second).await;
    assert_eq!(command.template_version, "v3");
    ack.failed("registry unreachable").await.unwrap();
    let v3_id = sent["command_id"].as_str().unwrap();
    let failed = format!("template sync to v3 (command {v3_id}) failed: registry unreachable");
    let history = sync_history(&server, "gw1", |h| h.len() >= 4).await;
    assert_eq!(
        history[2..],
        [
            format!("template sync to v3 (command {v3_id}) requested"),
            failed
        ]
    );

    // Bad input: an unknown gateway, a missing version.
    let (code, stderr) = fails(endpoint, &["gateway", "sync", "nope", "v2"]).await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("gateway nope is not registered"),
        "{stderr}"
    );
    let (_, stderr) = fails(endpoint, &["gateway", "sync", "gw1", " "]).await;
    assert!(stderr.contains("template_version"), "{stderr}");
    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_gateway_acknowledges_a_template_sync() {
    let server = server("30s", "30s", "10s").await;
    let endpoint = server.endpoint.as_str();
    let registered = json(endpoint, &["gateway", "register", "gw-sim"]).await;
    let token = registered["token"].as_str().unwrap();
    let requested = json(endpoint, &["gateway", "sync", "gw-sim", "v5"]).await;
    assert_eq!(requested["sent"], false);

    let args = [
        "simulate",
        "--gateway",
        "gw-sim",
        "--gateway-token",
        token,
        "--agents",
        "1",
        "--duration",
        "2s",
    ];
    ok(endpoint, &args).await;
    let command_id = requested["command_id"].as_str().unwrap();
    let history = sync_history(&server, "gw-sim", |h| h.len() >= 2).await;
    assert_eq!(
        history,
        [
            format!("template sync to v5 (command {command_id}) requested"),
            format!("template sync to v5 (command {command_id}) synced"),
        ]
    );
    server.app.shutdown().await;
}
