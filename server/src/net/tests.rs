//! The listener with a real tonic server and real TLS: what a handler or a
//! tower layer sees of the peer, and that a client without a certificate
//! is refused under mutual TLS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mission_control_proto::tls::{ClientTls, endpoint};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use crate::testing::certs::TestPki;

fn settings() -> ConnectionSettings {
    ConnectionSettings {
        max_connections: 64,
        handshake_timeout: Duration::from_secs(30),
        idle_timeout: None,
        max_connection_age: None,
        max_connection_age_grace: Duration::from_secs(1),
        keepalive_interval: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(10),
        max_concurrent_streams: 16,
    }
}

/// What a tower layer in front of the services saw, per call: the DER of
/// the peer's leaf certificate.
type Seen = Arc<Mutex<Vec<Option<Vec<u8>>>>>;

async fn serve_health(tls: Arc<ReloadingTls>, seen: Seen) -> (String, CancellationToken) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = listener.local_addr().port();
    let stop = CancellationToken::new();
    let listener = Listener::start(listener, Some(tls), &settings(), stop.clone());
    let (_reporter, health) = tonic_health::server::health_reporter();
    let record = tower::layer::layer_fn(move |inner| RecordPeer {
        inner,
        seen: seen.clone(),
    });
    let router = settings()
        .server_builder()
        .layer(listener.track_calls)
        .layer(record)
        .add_service(health);
    let Incoming::Tls(incoming) = listener.incoming else {
        panic!("a TLS listener");
    };
    let shutdown = stop.clone();
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
    });
    (format!("https://localhost:{port}"), stop)
}

#[derive(Clone)]
struct RecordPeer<S> {
    inner: S,
    seen: Seen,
}

impl<S, B> tower::Service<http::Request<B>> for RecordPeer<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> S::Future {
        let leaf = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().map(|c| c.to_vec()));
        self.seen.lock().unwrap().push(leaf);
        self.inner.call(request)
    }
}

async fn check(uri: &str, tls: &ClientTls) -> Result<(), tonic::Status> {
    let channel = endpoint(uri, Some(tls)).unwrap().connect_lazy();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn under_mutual_tls_layers_see_the_client_certificate_and_clients_without_one_are_refused() {
    let pki = TestPki::new("test ca");
    let (cert, key) = pki.write_pair("server", &pki.server("server", &["localhost"]));
    let files = TlsFiles {
        cert,
        key,
        client_ca: Some(pki.write_ca()),
    };
    let tls = ReloadingTls::load(files).unwrap();
    assert!(tls.requires_client_certificates());
    let seen = Seen::default();
    let (uri, stop) = serve_health(tls, seen.clone()).await;

    let client = pki.client("dashboard-1");
    let with_cert = ClientTls {
        ca_pem: Some(pki.ca_pem().into_bytes()),
        identity: Some((
            client.cert_pem.clone().into_bytes(),
            client.key_pem.into_bytes(),
        )),
        domain: None,
    };
    check(&uri, &with_cert)
        .await
        .expect("a client certificate is accepted");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [Some(pem_to_der(&client.cert_pem))],
        "the layer sees the client's leaf certificate"
    );

    let without_cert = ClientTls {
        identity: None,
        ..with_cert.clone()
    };
    // TLS 1.3: the client learns of the refusal on its first read, from
    // the server's alert.
    let refused = check(&uri, &without_cert).await.unwrap_err();
    assert!(
        format!("{refused:?}").contains("CertificateRequired"),
        "{refused:?}"
    );

    // A certificate from another CA is refused as well.
    let other = TestPki::new("other ca").client("intruder");
    let foreign = ClientTls {
        identity: Some((other.cert_pem.into_bytes(), other.key_pem.into_bytes())),
        ..with_cert
    };
    let refused = check(&uri, &foreign).await.unwrap_err();
    assert!(format!("{refused:?}").contains("UnknownCA"), "{refused:?}");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "refused clients reach no layer"
    );
    stop.cancel();
}

#[tokio::test]
async fn new_files_replace_the_certificate_and_bad_ones_keep_the_old() {
    let first_ca = TestPki::new("first ca");
    let second_ca = TestPki::new("second ca");
    let (cert, key) = first_ca.write_pair("server", &first_ca.server("s", &["localhost"]));
    let tls = ReloadingTls::load(TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
    })
    .unwrap();
    let (uri, stop) = serve_health(Arc::clone(&tls), Seen::default()).await;
    let trusts = |pki: &TestPki| ClientTls {
        ca_pem: Some(pki.ca_pem().into_bytes()),
        ..ClientTls::default()
    };
    check(&uri, &trusts(&first_ca)).await.unwrap();
    assert!(check(&uri, &trusts(&second_ca)).await.is_err());
    assert!(!tls.reload(), "unchanged files change nothing");

    // A key that does not load: the old certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    assert!(!tls.reload());
    check(&uri, &trusts(&first_ca)).await.unwrap();

    // The rotation: new connections get the new certificate.
    let renewed = second_ca.server("s", &["localhost"]);
    std::fs::write(&cert, &renewed.cert_pem).unwrap();
    std::fs::write(&key, &renewed.key_pem).unwrap();
    assert!(tls.reload());
    check(&uri, &trusts(&second_ca)).await.unwrap();
    let old = check(&uri, &trusts(&first_ca)).await.unwrap_err();
    assert_eq!(old.code(), tonic::Code::Unavailable);
    stop.cancel();
}

#[tokio::test]
async fn a_connection_is_served_whichever_of_the_ports_sockets_the_kernel_gives_it_to() {
    use tokio::io::AsyncWriteExt;
    use tokio_stream::StreamExt;

    // The kernel picks a socket by the connection's addresses; 200
    // connections reach each of 8 sockets but with odds of 1 in 10^10.
    const CLIENTS: usize = 200;
    let bound = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = bound.local_addr();
    let stop = CancellationToken::new();
    let settings = ConnectionSettings {
        max_connections: 1000,
        ..settings()
    };
    let Incoming::Plain(mut incoming) =
        Listener::start(bound, None, &settings, stop.clone()).incoming
    else {
        panic!("a plaintext listener");
    };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"P").await.unwrap();
        clients.push(client);
    }
    for served in 0..CLIENTS {
        let conn = tokio::time::timeout(Duration::from_secs(30), incoming.next())
            .await
            .unwrap_or_else(|_| panic!("only {served} of {CLIENTS} connections reached tonic"));
        conn.expect("the listener is open").expect("a connection");
    }
    stop.cancel();
}
