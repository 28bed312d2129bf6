//! The one-shot commands: gateways, provision, get, list, heartbeat,
//! history, wake, delete, and how failures are reported.

use crate::support::{PATIENCE, command, fails, json, ok, server, server_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_goes_from_provisioned_to_deleted_through_the_cli() {
    // Long deadlines: nothing changes behind the test's back.
    let server = server("30s", "30s", "10s").await;
    let endpoint = server.endpoint.as_str();

    let registered = json(
        endpoint,
        &["gateway", "register", "gw1", "--name", "Rack 1"],
    )
    .await;
    assert_eq!(registered["created"], true);
    assert_eq!(registered["gateway"]["name"], "Rack 1");
    assert!(registered["token"].as_str().is_some_and(|t| !t.is_empty()));
    let again = ok(
        endpoint,
        &["gateway", "register", "gw1", "--name", "Rack 1"],
    )
    .await;
    assert!(again.contains("token: unchanged"), "{again}");
    let gateways = json(endpoint, &["gateway", "list"]).await;
    assert_eq!(gateways[0]["id"], "gw1");
    assert_eq!(gateways[0]["connected"], false);

    let provision = [
        "provision",
        "a1",
        "--gateway",
        "gw1",
        "--role",
        "board-worker",
        "--board",
        "b1",
    ];
    let created = json(endpoint, &provision).await;
    assert_eq!(created["created"], true);
    assert_eq!(created["agent"]["status"], "provisioning");
    assert_eq!(created["agent"]["role"], "board-worker");
    assert_eq!(created["agent"]["wake_attempts"], 1);
    let token = created["token"].as_str().unwrap().to_owned();
    let updated = json(endpoint, &provision).await;
    assert_eq!(updated["created"], false);
    assert_eq!(updated["agent"]["status"], "updating");
    assert_eq!(updated["token"], serde_json::Value::Null, "no new token");
    let shown = ok(
        endpoint,
        &[
            "provision",
            "a2",
            "--gateway",
            "gw1",
            "--role",
            "gateway-main",
        ],
    )
    .await;
    assert!(
        shown.contains("token: mca_"),
        "a new agent's token: {shown}"
    );
    assert!(shown.contains("shown only once"), "{shown}");

    let beat = json(endpoint, &["heartbeat", "--token", &token]).await;
    assert_eq!(beat["agent_id"], "a1");
    assert_eq!(beat["status"], "online");
    let agent = json(endpoint, &["get", "a1"]).await;
    assert_eq!(agent["status"], "online");
    assert_eq!(agent["gateway_id"], "gw1");
    assert_eq!(agent["board_id"], "b1");
    assert!(agent["last_seen_at"].as_str().unwrap().ends_with('Z'));
    let detail = ok(endpoint, &["get", "a1"]).await;
    assert!(detail.contains("status:               ONLINE"), "{detail}");

    let online = json(endpoint, &["list", "--status", "online"]).await;
    let ids: Vec<&str> = online
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1"]);
    let all = json(endpoint, &["list", "--gateway", "gw1"]).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(
        json(endpoint, &["list", "--gateway", "elsewhere"]).await,
        serde_json::json!([])
    );
    let table = ok(endpoint, &["list"]).await;
    assert!(table.starts_with("ID  "), "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("a1  "), "{table}");

    // The gateway is not connected, so the wake failed before the check-in.
    let history = json(endpoint, &["history", "a1"]).await;
    let reasons: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons.first(),
        Some(&"checked_in"),
        "newest first: {reasons:?}"
    );
    assert_eq!(reasons.last(), Some(&"provisioned"), "{reasons:?}");
    assert!(reasons.contains(&"wake_failed"), "{reasons:?}");
    let limited = json(endpoint, &["history", "a1", "--limit", "1"]).await;
    assert_eq!(limited.as_array().unwrap().len(), 1);

    let woken = json(endpoint, &["wake", "a1"]).await;
    assert_eq!(woken["wake_attempts"], 1);
    assert!(woken["generation"].as_u64().unwrap() > agent["generation"].as_u64().unwrap());
    let deleted = ok(endpoint, &["delete", "a1"]).await;
    assert!(deleted.starts_with("deleted a1"), "{deleted}");
    let (code, stderr) = fails(endpoint, &["get", "a1"]).await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");
    let (_, stderr) = fails(endpoint, &["heartbeat", "--token", &token]).await;
    assert!(stderr.starts_with("error: UNAUTHENTICATED: "), "{stderr}");

    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_line_with_a_grpc_code() {
    let server = server("30s", "30s", "10s").await;
    let endpoint = server.endpoint.as_str();

    let (code, stderr) = fails(
        endpoint,
        &[
            "provision",
            "a1",
            "--gateway",
            "nope",
            "--role",
            "gateway-main",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (code, stderr) = fails(
        endpoint,
        &[
            "provision",
            "bad id!",
            "--gateway",
            "g",
            "--role",
            "board-lead",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: INVALID_ARGUMENT: "), "{stderr}");

    let (code, stderr) = fails(endpoint, &["simulate", "--never", "0.9"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("must sum to at most 1"), "{stderr}");
    let (code, _) = fails(
        endpoint,
        &["provision", "a1", "--gateway", "g", "--role", "chief"],
    )
    .await;
    assert_eq!(code, 2, "clap's usage errors");

    // Nothing listens on a port that was just released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nowhere = format!("http://{closed}");
    let (code, stderr) = fails(&nowhere, &["list"]).await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: UNAVAILABLE: "), "{stderr}");

    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_operator_token_the_cli_needs_it_and_says_when_it_is_wrong() {
    let server = server_with("30s", "30s", "10s", &["--operator-token", "op-s3cret"]).await;
    let endpoint = server.endpoint.as_str();

    let unauthenticated = "error: UNAUTHENTICATED: ";
    let (code, stderr) = fails(endpoint, &["gateway", "list"]).await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with(unauthenticated), "{stderr}");
    let (code, stderr) = fails(endpoint, &["--operator-token", "nope", "gateway", "list"]).await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with(unauthenticated), "{stderr}");

    let register = [
        "--operator-token",
        "op-s3cret",
        "gateway",
        "register",
        "gw1",
    ];
    let registered = json(endpoint, &register).await;
    assert_eq!(registered["gateway"]["id"], "gw1");
    let gateways = json(
        endpoint,
        &["--operator-token", "op-s3cret", "gateway", "list"],
    )
    .await;
    assert_eq!(gateways[0]["id"], "gw1");
    let (code, stderr) = fails(endpoint, &["--operator-token", "wrong-s3cret", "get", "a"]).await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with(unauthenticated), "{stderr}");
    assert!(!stderr.contains("wrong-s3cret"), "never echoed: {stderr}");
    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tokens_replace_the_old_and_the_agent_token_can_come_from_the_environment() {
    let server = server("30s", "30s", "10s").await;
    let endpoint = server.endpoint.as_str();
    let first = json(endpoint, &["gateway", "register", "gw1"]).await;
    let rotated = json(endpoint, &["gateway", "register", "gw1", "--rotate-token"]).await;
    assert_eq!(rotated["created"], false);
    let (old_gateway, new_gateway) = (
        first["token"].as_str().unwrap(),
        rotated["token"].as_str().unwrap(),
    );
    assert!(new_gateway.starts_with("mcg_") && new_gateway != old_gateway);

    let provision = [
        "provision",
        "a1",
        "--gateway",
        "gw1",
        "--role",
        "gateway-main",
    ];
    let created = json(endpoint, &provision).await;
    let mut again = provision.to_vec();
    again.push("--rotate-token");
    let rerolled = json(endpoint, &again).await;
    let (old, new) = (
        created["token"].as_str().unwrap(),
        rerolled["token"].as_str().unwrap(),
    );
    assert!(new.starts_with("mca_") && new != old);

    let (code, stderr) = fails(endpoint, &["heartbeat", "--token", old]).await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: UNAUTHENTICATED: "), "{stderr}");
    // MC_AGENT_TOKEN stands in for --token.
    let run = command(endpoint, &["--output", "json", "heartbeat"])
        .env("MC_AGENT_TOKEN", new)
        .output();
    let output = tokio::time::timeout(PATIENCE, run).await.unwrap().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let beat: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(beat["agent_id"], "a1");
    assert_eq!(beat["status"], "online");

    // The old gateway token no longer opens a stream; the new one does.
    use futures_util::StreamExt;
    use mission_control_client::gateway::{GatewayClient, GatewayEvent};
    let first_event = |token: &str| {
        let mut events = GatewayClient::connect(endpoint, token).unwrap().events();
        async move { tokio::time::timeout(PATIENCE, events.next()).await.unwrap() }
    };
    let refused = first_event(old_gateway).await;
    assert!(
        matches!(
            refused,
            Some(GatewayEvent::Rejected(
                mission_control_client::Error::TokenRejected(_)
            ))
        ),
        "{refused:?}"
    );
    let accepted = first_event(new_gateway).await;
    assert!(
        matches!(accepted, Some(GatewayEvent::Connected { .. })),
        "{accepted:?}"
    );
    server.app.shutdown().await;
}
