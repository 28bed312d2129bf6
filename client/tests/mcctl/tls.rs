//! `mcctl` over mutual TLS (`--cacert`, `--cert`, `--key`), and with
//! several endpoints of which the first is down.

use mission_control_server::testing::certs::TestPki;

use crate::support::*;

#[tokio::test]
async fn mcctl_speaks_mutual_tls_and_moves_past_an_endpoint_that_is_down() {
    let pki = TestPki::new("mcctl test ca");
    let ca = pki.write_ca();
    let (cert, key) = pki.write_pair("server", &pki.server("server", &["localhost"]));
    let (client_cert, client_key) = pki.write_pair("client", &pki.client("ops"));
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let server = server_with(
        "30s",
        "60s",
        "10s",
        &[
            "--tls-cert",
            &path(&cert),
            "--tls-key",
            &path(&key),
            "--tls-client-ca",
            &path(&ca),
        ],
    )
    .await;
    let https = format!("https://localhost:{}", server.app.addr().port());
    let (ca, client_cert, client_key) = (path(&ca), path(&client_cert), path(&client_key));
    let tls = [
        "--cacert",
        ca.as_str(),
        "--cert",
        client_cert.as_str(),
        "--key",
        client_key.as_str(),
    ];

    let mut args = tls.to_vec();
    args.extend(["gateway", "register", "gw-tls"]);
    ok(&https, &args).await;
    let mut args = tls.to_vec();
    args.extend(["gateway", "list"]);
    assert!(ok(&https, &args).await.contains("gw-tls"));

    // Without a client certificate: refused.
    let (_, stderr) = fails(&https, &["--cacert", &ca, "gateway", "list"]).await;
    assert!(stderr.starts_with("error: "), "{stderr}");

    // Several endpoints, one of them down: the command is served.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_endpoint = format!("https://localhost:{}", dead.local_addr().unwrap().port());
    drop(dead);
    let endpoints = format!("{dead_endpoint},{https}");
    for _ in 0..4 {
        let mut args = tls.to_vec();
        args.extend(["--endpoints", endpoints.as_str(), "gateway", "list"]);
        assert!(ok(&https, &args).await.contains("gw-tls"));
    }
    server.app.shutdown().await;
}
