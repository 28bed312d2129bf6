//! Test support: `spawn_app` starts a real server on port 0 against a
//! fresh Postgres database, with deadlines short enough to watch.

use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use mission_control_client::gateway::{GatewayClient, GatewayEvent};
use mission_control_client::operator::OperatorClient;
use mission_control_client::{
    Backoff, WatchAgentRequest, WatchAgentResponse, watch_agent_response,
};
use mission_control_server::app::App;
use mission_control_server::config::Config;
use mission_control_server::testing::TestDatabase;
use tokio::sync::mpsc;

/// Generous: only a guard against hanging, never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct TestApp {
    pub app: App,
    pub endpoint: String,
    pub operator: OperatorClient,
}

/// Flags for a fast policy: 400 ms to check in, 3 wakes. Wakes to a gateway
/// that is not connected fail at once (no gateway grace), as the per-agent
/// policy alone says; held wakes are tested in the runtime and the client
/// library's tests.
pub fn fast_flags(database_url: &str) -> Vec<String> {
    [
        "mission-control",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--checkin-deadline",
        "400ms",
        "--heartbeat-interval",
        "200ms",
        "--lease-ttl",
        "2s",
        "--restart-grace",
        "300ms",
        "--checkpoint-interval",
        "100ms",
        "--drain-timeout",
        "2s",
        "--gateway-grace",
        "0s",
    ]
    .map(String::from)
    .to_vec()
}

/// Sets `flag` to `value` in `flags`, replacing the value it had.
pub fn set_flag(flags: &mut Vec<String>, flag: &str, value: &str) {
    match flags.iter().position(|f| f == flag) {
        Some(at) => flags[at + 1] = value.to_owned(),
        None => flags.extend([flag.to_owned(), value.to_owned()]),
    }
}

pub async fn spawn_app(flags: Vec<String>) -> TestApp {
    let config = Config::parse_from(flags);
    let app = App::start(&config).await.expect("the server starts");
    let endpoint = format!("http://{}", app.addr());
    let operator = OperatorClient::connect(&endpoint).unwrap();
    TestApp {
        app,
        endpoint,
        operator,
    }
}

pub async fn database() -> TestDatabase {
    TestDatabase::create().await
}

impl TestApp {
    /// Registers a gateway and returns its token.
    pub async fn gateway(&self, id: &str) -> String {
        let registered = self.operator.register_gateway(id, "", false).await.unwrap();
        registered.gateway_token
    }

    /// A gateway on the real stream, forwarding what it receives.
    pub fn connect_gateway(&self, token: &str) -> mpsc::UnboundedReceiver<GatewayEvent> {
        let client = GatewayClient::connect(&self.endpoint, token)
            .unwrap()
            .with_backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(200),
            ))
            .with_reconnect_spread(Duration::from_millis(100));
        let mut events = client.events();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        rx
    }

    pub async fn watch(&self, request: WatchAgentRequest) -> tonic::Streaming<WatchAgentResponse> {
        self.operator.watch(request).await.unwrap()
    }
}

/// Awaits `future`, failing with `what` instead of hanging.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {PATIENCE:?}"))
}

/// Waits for the gateway's `Connected`.
pub async fn connected(events: &mut mpsc::UnboundedReceiver<GatewayEvent>) {
    loop {
        match tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("connected in time")
        {
            Some(GatewayEvent::Connected { .. }) => return,
            Some(GatewayEvent::Rejected(e)) => panic!("gateway rejected: {e}"),
            Some(_) => continue,
            None => panic!("gateway stream ended"),
        }
    }
}

/// Reads up to the snapshot-complete marker.
pub async fn next_marker(watch: &mut tonic::Streaming<WatchAgentResponse>) {
    loop {
        let item = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("the marker in time")
            .expect("the watch goes on")
            .expect("no error");
        if let Some(watch_agent_response::Kind::SnapshotComplete(_)) = item.kind {
            return;
        }
    }
}

/// The next watch event's agent, skipping snapshots, markers and bookmarks.
pub async fn next_event(
    watch: &mut tonic::Streaming<WatchAgentResponse>,
) -> mission_control_client::AgentEvent {
    loop {
        let item = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("an event in time")
            .expect("the watch goes on")
            .expect("no error");
        if let Some(watch_agent_response::Kind::Event(event)) = item.kind
            && event.reason != mission_control_client::TransitionReason::Snapshot as i32
        {
            return event;
        }
    }
}
