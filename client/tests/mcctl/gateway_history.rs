//! `mcctl gateway history` against a real server: a gateway's connections
//! and outages, newest first, as a table and as JSON.

use futures_util::StreamExt;
use mission_control_client::gateway::{GatewayClient, GatewayEvent};

use crate::support::{PATIENCE, fails, json, ok, server_with};

/// Polls (with a bound) until the gateway's history has `n` entries.
async fn history_of(server: &crate::support::Server, gateway: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server
        .operator
        .gateway_history(gateway)
        .await
        .unwrap()
        .len()
        < n
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "history stayed short"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_history_shows_its_outage_and_return() {
    // Wakes are held while the gateway is away, as in production.
    let server = server_with("30s", "30s", "10s", &["--gateway-grace", "3m"]).await;
    let endpoint = server.endpoint.as_str();
    let registered = json(endpoint, &["gateway", "register", "gw1"]).await;
    let token = registered["token"].as_str().unwrap().to_owned();
    // Held while it has never connected: one wake waits for it.
    ok(
        endpoint,
        &[
            "provision",
            "a1",
            "--gateway",
            "gw1",
            "--role",
            "gateway-main",
        ],
    )
    .await;

    for round in 1..=2 {
        let mut events = GatewayClient::connect(endpoint, &token).unwrap().events();
        loop {
            match tokio::time::timeout(PATIENCE, events.next()).await {
                Ok(Some(GatewayEvent::Connected { .. })) => break,
                Ok(Some(_)) => {}
                other => panic!("expected the stream to open, got {other:?}"),
            }
        }
        history_of(&server, "gw1", 2 * round - 1).await;
        drop(events);
        history_of(&server, "gw1", 2 * round).await;
    }

    let text = ok(endpoint, &["gateway", "history", "gw1"]).await;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("AT"), "{text}");
    assert!(
        lines[0].contains("STATE") && lines[0].contains("HELD WAKES"),
        "{text}"
    );
    assert_eq!(lines.len(), 5, "a header and four transitions: {text}");
    assert!(
        lines[1].contains("connected -> disconnected"),
        "newest first: {text}"
    );
    assert!(lines[1].contains("stream closed"), "{text}");
    assert!(lines[4].contains("disconnected -> connected"), "{text}");
    assert!(lines[4].contains("stream opened"), "{text}");
    assert!(lines[4].trim_end().ends_with(" 1"), "the held wake: {text}");

    let listed = json(endpoint, &["gateway", "history", "gw1"]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 4);
    let oldest = &listed[3];
    assert_eq!(oldest["gateway_id"], "gw1");
    assert_eq!(oldest["from"], "disconnected");
    assert_eq!(oldest["to"], "connected");
    assert_eq!(oldest["reason"], "stream opened");
    assert_eq!(oldest["wakes_released"], 1);
    assert!(oldest["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(listed[0]["to"], "disconnected");
    assert_eq!(
        listed[1]["wakes_released"], 0,
        "nothing held the second time"
    );

    let (code, stderr) = fails(endpoint, &["gateway", "history", "nope"]).await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");

    server.app.shutdown().await;
}
