//! The library's loops against a real server (in-process, in-memory store),
//! reached through a proxy the test can cut, as an outage would.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use mission_control_client::agent::{AgentClient, LoopEvent};
use mission_control_client::gateway::{GatewayClient, GatewayEvent};
use mission_control_client::operator::OperatorClient;
use mission_control_client::{AgentRole, Backoff, Error, ProvisionRequest};
use mission_control_server::app::App;
use mission_control_server::config::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Only a guard against hanging, never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

async fn server() -> (App, OperatorClient) {
    let config = Config::parse_from([
        "mission-control",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--heartbeat-interval",
        "200ms",
        "--lease-ttl",
        "5s",
        "--drain-timeout",
        "1s",
    ]);
    let app = App::start(&config).await.expect("the server starts");
    let operator = OperatorClient::connect(&format!("http://{}", app.addr())).unwrap();
    (app, operator)
}

/// Forwards connections on a fixed port to `target` until cut.
struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut proxy = Self {
            addr,
            target,
            task: None,
        };
        proxy.task = Some(tokio::spawn(forward(listener, target)));
        proxy
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ends every forwarded connection and stops listening: an outage.
    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(tokio::spawn(forward(listener, self.target)));
    }
}

/// Accepts and pipes connections; aborting it drops them all.
async fn forward(listener: TcpListener, target: SocketAddr) {
    let mut pipes = tokio::task::JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        pipes.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn provision(operator: &OperatorClient, gateway: &str, agent: &str) -> (String, String) {
    let gateway_token = operator
        .register_gateway(gateway, "", false)
        .await
        .unwrap()
        .gateway_token;
    let agent_token = operator
        .provision(ProvisionRequest::new(
            agent,
            gateway,
            AgentRole::GatewayMain,
        ))
        .await
        .unwrap()
        .agent_token;
    (gateway_token, agent_token)
}

fn fast_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(200))
}

#[derive(Debug)]
enum Seen {
    Beat,
    Retrying(Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_loop_rides_out_an_outage_and_stops_on_request() {
    let (app, operator) = server().await;
    let (_, token) = provision(&operator, "gw", "a1").await;
    let mut proxy = Proxy::start(app.addr()).await;

    let (seen, mut events) = mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = AgentClient::connect(&proxy.endpoint(), &token)
        .unwrap()
        .with_backoff(fast_backoff());
    let running = tokio::spawn(agent.run_with(
        async {
            stopped.await.ok();
        },
        move |event| {
            let _ = seen.send(match event {
                LoopEvent::Beat(_) => Seen::Beat,
                LoopEvent::Retrying { delay, .. } => Seen::Retrying(delay),
            });
        },
    ));
    let mut next = async || {
        tokio::time::timeout(PATIENCE, events.recv())
            .await
            .expect("the loop keeps going")
            .expect("the loop is running")
    };

    assert!(matches!(next().await, Seen::Beat), "checks in first");
    proxy.cut().await;
    let mut retries = Vec::new();
    while retries.len() < 4 {
        match next().await {
            Seen::Retrying(delay) => retries.push(delay),
            Seen::Beat => {} // one already in flight
        }
    }
    assert!(
        retries.iter().all(|d| *d <= Duration::from_millis(200)),
        "capped: {retries:?}"
    );

    proxy.restore().await;
    loop {
        if let Seen::Beat = next().await {
            break;
        }
    }
    let agent = operator.get("a1").await.unwrap();
    assert_eq!(agent.status(), mission_control_client::AgentStatus::Online);

    stop.send(()).unwrap();
    let ended = tokio::time::timeout(PATIENCE, running).await.unwrap();
    assert!(ended.unwrap().is_ok(), "a requested stop is not an error");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_ends_the_agent_loop_instead_of_retrying() {
    let (app, operator) = server().await;
    let (_, token) = provision(&operator, "gw", "a2").await;
    operator
        .provision(ProvisionRequest::new("a2", "gw", AgentRole::GatewayMain).rotating_token())
        .await
        .unwrap();

    let agent = AgentClient::connect(&format!("http://{}", app.addr()), &token)
        .unwrap()
        .with_backoff(fast_backoff());
    let mut retried = false;
    let ended = tokio::time::timeout(
        PATIENCE,
        agent.run_with(std::future::pending(), |event| {
            retried |= matches!(event, LoopEvent::Retrying { .. });
        }),
    )
    .await
    .expect("the loop ends by itself");
    assert!(
        matches!(ended, Err(Error::TokenRejected(_))),
        "the rotated-away token: {ended:?}"
    );
    assert!(!retried, "no retry can fix a rejected token");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_stream_reconnects_after_an_outage_and_gets_the_next_wake() {
    let (app, operator) = server().await;
    let (gateway_token, _) = provision(&operator, "gw", "a1").await;
    let mut proxy = Proxy::start(app.addr()).await;

    // A spread far below the backoff, so the first retry shows which it used.
    let mut events = GatewayClient::connect(&proxy.endpoint(), &gateway_token)
        .unwrap()
        .with_backoff(Backoff::new(
            Duration::from_millis(300),
            Duration::from_millis(600),
        ))
        .with_reconnect_spread(Duration::from_millis(5))
        .events();
    let mut next = async || {
        tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the stream keeps talking")
            .expect("the stream goes on")
    };

    match next().await {
        GatewayEvent::Connected { gateway_id } => assert_eq!(gateway_id, "gw"),
        other => panic!("expected Connected, got {other:?}"),
    }
    proxy.cut().await;
    match next().await {
        GatewayEvent::Disconnected { retry_in, .. } => {
            assert!(
                retry_in <= Duration::from_millis(5),
                "the first retry after a lost session uses the spread: {retry_in:?}"
            )
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    proxy.restore().await;
    loop {
        match next().await {
            GatewayEvent::Connected { .. } => break,
            GatewayEvent::Disconnected { retry_in, .. } => {
                assert!(
                    retry_in <= Duration::from_millis(600),
                    "capped: {retry_in:?}"
                )
            }
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }

    operator.wake("a1").await.unwrap();
    loop {
        match next().await {
            GatewayEvent::Wake { command, ack } if command.agent_id == "a1" => {
                ack.delivered().await.expect("ack sent");
                break;
            }
            GatewayEvent::Wake { ack, .. } | GatewayEvent::Retire { ack, .. } => {
                ack.delivered().await.expect("ack sent")
            }
            other => panic!("expected the wake, got {other:?}"),
        }
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_bad_token_is_rejected_and_its_stream_ends() {
    let (app, _) = server().await;
    let mut events = GatewayClient::connect(&format!("http://{}", app.addr()), "mcg_nope")
        .unwrap()
        .with_backoff(fast_backoff())
        .events();
    let first = tokio::time::timeout(PATIENCE, events.next()).await.unwrap();
    assert!(
        matches!(first, Some(GatewayEvent::Rejected(Error::TokenRejected(_)))),
        "{first:?}"
    );
    let end = tokio::time::timeout(PATIENCE, events.next()).await.unwrap();
    assert!(end.is_none(), "no reconnect after a rejection");
    app.shutdown().await;
}
