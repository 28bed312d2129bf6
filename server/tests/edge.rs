//! The real binary at its edge: closed by default beyond loopback, the
//! `hash-token` helper, no token material in its logs even at
//! `RUST_LOG=trace`, and the roles file reloaded on SIGHUP.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use mission_control_proto::v1::agent_lifecycle_client::AgentLifecycleClient;
use mission_control_proto::v1::gateways_client::GatewaysClient;
use mission_control_proto::v1::{
    AgentRole, GatewayMessage, HeartbeatRequest, ListAgentsRequest, ProvisionRequest,
    RegisterGatewayRequest,
};
use mission_control_server::edge::hash_line;
use mission_control_server::testing::TestDatabase;
use tonic::transport::Channel;

use support::*;

#[tokio::test]
async fn beyond_loopback_it_refuses_to_start_unless_something_authenticates() {
    let refused = |args: &[&str]| {
        let mut command = Command::new(BINARY);
        command.arg("--dev").args(args);
        Running::spawn(&mut command)
    };
    let mut open = refused(&["--listen", "0.0.0.0:0"]);
    assert!(!open.exit().await.success());
    let said = open.text();
    for advice in [
        "--roles-file",
        "--tls-client-ca",
        "--insecure-allow-unauthenticated",
    ] {
        assert!(said.contains(advice), "no {advice} in: {said}");
    }

    let mut metrics = refused(&["--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0"]);
    assert!(!metrics.exit().await.success());
    assert!(metrics.text().contains("metrics"), "{}", metrics.text());

    // The explicit override starts, and says what it means.
    let mut overridden = refused(&["--listen", "0.0.0.0:0", "--insecure-allow-unauthenticated"]);
    assert!(
        overridden.wait_for("\"listening\"").await,
        "{}",
        overridden.text()
    );
    assert!(
        overridden.text().contains("open to anyone"),
        "{}",
        overridden.text()
    );

    // So do operator credentials.
    let token = TempFile::new("s3cret-admin\n");
    let mut credentialed = refused(&[
        "--listen",
        "0.0.0.0:0",
        "--metrics-listen",
        "0.0.0.0:0",
        "--operator-token-file",
        token.path(),
    ]);
    assert!(
        credentialed.wait_for("\"listening\"").await,
        "{}",
        credentialed.text()
    );
}

#[tokio::test]
async fn an_operator_token_on_the_command_line_is_warned_about_without_printing_it() {
    let token = "cmdline-tok-4d1e";
    let mut on_command_line = Running::spawn(Command::new(BINARY).args([
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--operator-token",
        token,
    ]));
    assert!(
        on_command_line.wait_for("\"listening\"").await,
        "{}",
        on_command_line.text()
    );
    let said = on_command_line.text();
    assert!(said.contains("--operator-token-file"), "{said}");
    assert!(!said.contains(token), "{said}");

    // From the environment: nothing to warn about.
    let mut from_env = Running::spawn(
        Command::new(BINARY)
            .args(["--dev", "--listen", "127.0.0.1:0"])
            .env("MC_OPERATOR_TOKEN", token),
    );
    assert!(
        from_env.wait_for("\"listening\"").await,
        "{}",
        from_env.text()
    );
    assert!(!from_env.text().contains("`ps`"), "{}", from_env.text());
}

#[tokio::test]
async fn hash_token_prints_the_roles_file_credential() {
    let mut child = Command::new(BINARY)
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

fn bearer<T>(message: T, header: &'static str, value: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(header, value.parse().unwrap());
    request
}

/// Every form a token or its hash could take in a log line.
fn forms(token: &str) -> Vec<String> {
    let hex = hash_line(token).trim_start_matches("sha256:").to_owned();
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    vec![token.to_owned(), hex, format!("{bytes:?}")]
}

#[tokio::test]
async fn no_token_or_token_hash_is_logged_even_at_trace() {
    let db = TestDatabase::create().await;
    let admin = "admin-tok-7f3a9c";
    let viewer = "viewer-tok-51be02";
    let admin_file = TempFile::new(&format!("{admin}\n"));
    let roles = TempFile::new(&format!("dash viewer {}\n", hash_line(viewer)));
    let port = free_port();
    let mut server = Running::spawn(
        Command::new(BINARY)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", db.url()])
            .args(["--operator-token-file", admin_file.path()])
            .args(["--roles-file", roles.path()])
            .env("RUST_LOG", "trace"),
    );
    assert!(server.wait_for("\"listening\"").await, "{}", server.text());
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let mut lifecycle = AgentLifecycleClient::new(channel.clone());
    let mut gateways = GatewaysClient::new(channel);
    let admin_bearer = format!("Bearer {admin}");

    let gateway_token = gateways
        .register_gateway(bearer(
            RegisterGatewayRequest {
                gateway_id: "gw".into(),
                ..Default::default()
            },
            "authorization",
            &admin_bearer,
        ))
        .await
        .unwrap()
        .into_inner()
        .gateway_token;
    let agent_token = lifecycle
        .provision(bearer(
            ProvisionRequest::new("a", "gw", AgentRole::GatewayMain),
            "authorization",
            &admin_bearer,
        ))
        .await
        .unwrap()
        .into_inner()
        .agent_token;
    for version in ["", "v2"] {
        lifecycle
            .heartbeat(bearer(
                HeartbeatRequest {
                    template_version: version.into(),
                },
                "x-agent-token",
                &agent_token,
            ))
            .await
            .unwrap();
    }
    let wrong = lifecycle
        .heartbeat(bearer(
            HeartbeatRequest::default(),
            "x-agent-token",
            "mca_wrong-token-91c2",
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    lifecycle
        .list_agents(bearer(
            ListAgentsRequest::default(),
            "authorization",
            &format!("Bearer {viewer}"),
        ))
        .await
        .unwrap();
    // A viewer trying an admin call: refused, and logged at debug.
    let denied = gateways
        .register_gateway(bearer(
            RegisterGatewayRequest {
                gateway_id: "gw2".into(),
                ..Default::default()
            },
            "authorization",
            &format!("Bearer {viewer}"),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let mut commands = gateways
        .connect_gateway(bearer(
            futures_util::stream::pending::<GatewayMessage>(),
            "x-gateway-token",
            &gateway_token,
        ))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(PATIENCE, commands.message())
        .await
        .unwrap()
        .unwrap()
        .expect("Connected");
    drop(commands);
    // Let the last lines (the checkpoint of the renewed lease) be written.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logs = server.text();
    if std::env::var("EDGE_DUMP").is_ok() {
        eprintln!("{logs}");
    }
    assert!(logs.contains("\"level\":\"DEBUG\""), "debug logging was on");
    for token in [
        admin,
        viewer,
        &agent_token,
        &gateway_token,
        "mca_wrong-token-91c2",
    ] {
        for form in forms(token) {
            assert!(!logs.contains(&form), "{form} is in the logs");
        }
    }
}

/// ListAgents with `token` as an operator's bearer token: its status code.
async fn list_with(lifecycle: &mut AgentLifecycleClient<Channel>, token: &str) -> tonic::Code {
    let request = bearer(
        ListAgentsRequest::default(),
        "authorization",
        &format!("Bearer {token}"),
    );
    match lifecycle.list_agents(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn sighup_reloads_the_roles_file_at_once() {
    let db = TestDatabase::create().await;
    let (old, new) = ("old-viewer-tok-2b71", "new-viewer-tok-c94e");
    let roles = TempFile::new(&format!("dash viewer {}\n", hash_line(old)));
    let port = free_port();
    // The file is polled only once an hour: only the signal can reload it.
    let mut server = Running::spawn(
        Command::new(BINARY)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", db.url()])
            .args(["--roles-file", roles.path()])
            .args(["--roles-reload-interval", "1h"]),
    );
    assert!(server.wait_for("\"listening\"").await, "{}", server.text());
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let mut lifecycle = AgentLifecycleClient::new(channel);
    assert_eq!(list_with(&mut lifecycle, old).await, tonic::Code::Ok);
    assert_eq!(
        list_with(&mut lifecycle, new).await,
        tonic::Code::Unauthenticated
    );

    // Rotate: the new token replaces the old one. Without the signal nothing
    // changes (the next poll is an hour away).
    std::fs::write(&roles.0, format!("dash viewer {}\n", hash_line(new))).unwrap();
    assert_eq!(
        list_with(&mut lifecycle, new).await,
        tonic::Code::Unauthenticated
    );
    let sent = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(
        server
            .wait_for("SIGHUP: reloading operator credentials")
            .await,
        "{}",
        server.text()
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while list_with(&mut lifecycle, new).await != tonic::Code::Ok {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new token never worked: {}",
            server.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        list_with(&mut lifecycle, old).await,
        tonic::Code::Unauthenticated
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop the server"
    );

    // A file that does not parse, then SIGHUP: the credentials in force stay.
    std::fs::write(&roles.0, "dash emperor sha256:00\n").unwrap();
    let sent = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(server.wait_for("NOT reloaded").await, "{}", server.text());
    assert_eq!(list_with(&mut lifecycle, new).await, tonic::Code::Ok);
}
