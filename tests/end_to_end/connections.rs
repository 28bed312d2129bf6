//! Connection discipline on a real server: connections that never speak are
//! closed, idle ones too (but not one with a call in flight), and the
//! connection cap holds while health keeps answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mission_control_client::{AgentRole, ProvisionRequest, WatchAgentRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::support::*;

/// The HTTP/2 client preface and an empty SETTINGS frame: what a client
/// sends first. Nothing after it.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

async fn spawn_with(db_url: &str, extra: &[&str]) -> TestApp {
    let mut flags = fast_flags(db_url);
    flags.extend(extra.iter().map(|s| s.to_string()));
    spawn_app(flags).await
}

/// Reads (and drops whatever the server sends) until the server closes.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(PATIENCE, closed)
        .await
        .expect("the server closes the connection");
}

/// A new connection and one health check on it.
async fn health_on_new_connection(
    app: &TestApp,
) -> Result<(tonic::transport::Channel, ServingStatus), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(app.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let status = health_on(&channel).await?;
    Ok((channel, status))
}

async fn health_on(channel: &tonic::transport::Channel) -> Result<ServingStatus, tonic::Status> {
    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await?;
    Ok(reply.into_inner().status())
}

#[tokio::test]
async fn a_connection_that_never_sends_the_preface_is_closed() {
    let db = database().await;
    let app = spawn_with(db.url(), &["--handshake-timeout", "300ms"]).await;
    let mut silent = TcpStream::connect(app.app.addr()).await.unwrap();
    closed_by_server(&mut silent).await;
    // The server is fine for everyone else.
    let (_, status) = health_on_new_connection(&app).await.unwrap();
    assert_eq!(status, ServingStatus::Serving);
    app.app.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_one_with_a_watch_open_is_not() {
    let db = database().await;
    let app = spawn_with(
        db.url(),
        &["--handshake-timeout", "60s", "--idle-timeout", "300ms"],
    )
    .await;
    // Past the preface (so the handshake deadline no longer applies), then
    // nothing: the idle timeout closes it.
    let mut idle = TcpStream::connect(app.app.addr()).await.unwrap();
    idle.write_all(PREFACE).await.unwrap();
    closed_by_server(&mut idle).await;

    // A watch stream is a call in flight: its connection stays open well
    // past the idle timeout and still delivers.
    let mut watch = app.watch(WatchAgentRequest::default()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.operator
        .register_gateway("gw-idle", "", false)
        .await
        .unwrap();
    app.operator
        .provision(ProvisionRequest::new(
            "idle-agent",
            "gw-idle",
            AgentRole::GatewayMain,
        ))
        .await
        .unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!(event.agent.unwrap().id, "idle-agent");
    app.app.shutdown().await;
}

#[tokio::test]
async fn the_connection_cap_holds_and_health_keeps_answering() {
    const CAP: usize = 40;
    const SILENT: usize = 200;
    let db = database().await;
    let app = spawn_with(
        db.url(),
        &["--max-connections", "40", "--handshake-timeout", "60s"],
    )
    .await;

    // A flood of connections that never speak: each new one takes the place
    // of the oldest silent one, so a health check still gets in.
    let closed = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..SILENT {
        let mut stream = TcpStream::connect(app.app.addr()).await.unwrap();
        let closed = Arc::clone(&closed);
        readers.push(tokio::spawn(async move {
            closed_by_server(&mut stream).await;
            closed.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let (first, status) = health_on_new_connection(&app).await.unwrap();
    assert_eq!(status, ServingStatus::Serving);
    // At most CAP open, one of them the health check's.
    let must_close = SILENT - (CAP - 1);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while closed.load(Ordering::Relaxed) < must_close {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {SILENT} silent connections closed",
            closed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for reader in readers {
        reader.abort();
    }

    // The cap filled with connections that spoke: new ones are closed at
    // once, while health answers on the open ones.
    let mut established = vec![first];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while established.len() < CAP {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cap never filled"
        );
        // Until the aborted readers' sockets are gone, some may be refused.
        if let Ok((channel, _)) = health_on_new_connection(&app).await {
            established.push(channel);
        }
    }
    let mut refused = TcpStream::connect(app.app.addr()).await.unwrap();
    closed_by_server(&mut refused).await;
    assert!(
        health_on_new_connection(&app).await.is_err(),
        "over the cap"
    );
    for channel in &established {
        assert_eq!(health_on(channel).await.unwrap(), ServingStatus::Serving);
    }

    // One goes: a new connection gets its slot.
    established.pop();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok((_, status)) = health_on_new_connection(&app).await {
            assert_eq!(status, ServingStatus::Serving);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.app.shutdown().await;
}
