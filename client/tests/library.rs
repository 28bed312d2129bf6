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
    server_with_lease("5s").await
}

/// Wakes to a gateway that is not connected fail at once, as the per-agent
/// policy alone says; the held-wake test uses the default grace.
async fn server_with_lease(lease_ttl: &str) -> (App, OperatorClient) {
    server_with(lease_ttl, &["--gateway-grace", "0s"]).await
}

async fn server_with(lease_ttl: &str, flags: &[&str]) -> (App, OperatorClient) {
    let defaults = [
        "mission-control",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--heartbeat-interval",
        "200ms",
        "--lease-ttl",
        lease_ttl,
        "--drain-timeout",
        "1s",
    ];
    let config = Config::parse_from(defaults.iter().chain(flags));
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

/// `provision` on a server without a gateway grace, returning once the
/// agent's first wake, which found no stream, has stopped being held. Until
/// then a gateway that connects is handed that wake, and the tests that use
/// this expect only the wakes they ask for.
async fn provision_unheld(
    operator: &OperatorClient,
    gateway: &str,
    agent: &str,
) -> (String, String) {
    let tokens = provision(operator, gateway, agent).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let state = operator.get(agent).await.unwrap();
        if !state.wake_held {
            return tokens;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first wake of {agent} is still held: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    // A short lease, so the outage takes the agent offline and only a
    // check-in after it can bring it back.
    let (app, operator) = server_with_lease("300ms").await;
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
    while retries.len() < 12 {
        match next().await {
            Seen::Retrying(delay) => retries.push(delay),
            Seen::Beat => retries.clear(), // one already in flight resets it
        }
    }
    // Windows of 20, 40, 80, 160, then 200 ms: the first retry is within the
    // first; the later ones reach beyond it (all eight within 20 ms: odds
    // under 1e-7), and none beyond the cap.
    let ms = Duration::from_millis;
    assert!(retries[0] <= ms(20), "starts small: {retries:?}");
    assert!(
        retries[4..].iter().any(|d| *d > ms(20)),
        "grows: {retries:?}"
    );
    assert!(retries.iter().all(|d| *d <= ms(200)), "capped: {retries:?}");

    // The outage outlasts the lease: the agent goes offline.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let offline_at = loop {
        let agent = operator.get("a1").await.unwrap();
        if agent.status() == mission_control_client::AgentStatus::Offline {
            break agent.revision;
        }
        assert!(tokio::time::Instant::now() < deadline, "never offline");
        tokio::time::sleep(ms(20)).await;
    };

    proxy.restore().await;
    loop {
        if let Seen::Beat = next().await {
            break;
        }
    }
    // Back online by a check-in that came after the outage.
    let agent = operator.get("a1").await.unwrap();
    assert_eq!(agent.status(), mission_control_client::AgentStatus::Online);
    let latest = &operator.history("a1", 1).await.unwrap()[0];
    assert_eq!(
        latest.reason,
        mission_control_client::TransitionReason::CheckedIn as i32
    );
    assert!(
        latest.revision > offline_at,
        "{latest:?} after {offline_at}"
    );

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
    let (gateway_token, _) = provision_unheld(&operator, "gw", "a1").await;
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
            GatewayEvent::Wake { ack, .. }
            | GatewayEvent::Retire { ack, .. }
            | GatewayEvent::TemplateSync { ack, .. } => ack.delivered().await.expect("ack sent"),
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

/// The next event of a gateway stream, bounded.
async fn next_event(
    events: &mut (impl futures_util::Stream<Item = GatewayEvent> + Unpin),
) -> GatewayEvent {
    tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("the stream keeps talking")
        .expect("the stream goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_ack_is_recorded_and_an_ack_on_a_lost_stream_says_so() {
    let (app, operator) = server().await;
    let (gateway_token, _) = provision_unheld(&operator, "gw", "a1").await;
    let mut proxy = Proxy::start(app.addr()).await;
    let mut events = GatewayClient::connect(&proxy.endpoint(), &gateway_token)
        .unwrap()
        .with_backoff(fast_backoff())
        .with_reconnect_spread(Duration::from_millis(5))
        .events();
    match next_event(&mut events).await {
        GatewayEvent::Connected { gateway_id } => assert_eq!(gateway_id, "gw"),
        other => panic!("expected Connected, got {other:?}"),
    }
    let mut wake = async || {
        operator.wake("a1").await.unwrap();
        match next_event(&mut events).await {
            GatewayEvent::Wake { command, ack } if command.agent_id == "a1" => ack,
            other => panic!("expected the wake, got {other:?}"),
        }
    };

    wake()
        .await
        .failed("no room on this host")
        .await
        .expect("ack sent");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !operator
        .get("a1")
        .await
        .unwrap()
        .last_provision_error
        .contains("no room on this host")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failure recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let ack = wake().await;
    proxy.cut().await;
    // The session is gone once the stream reports it.
    loop {
        if let GatewayEvent::Disconnected { .. } = next_event(&mut events).await {
            break;
        }
    }
    let sent = ack.delivered().await;
    assert!(matches!(sent, Err(Error::AckNotSent)), "{sent:?}");
    app.shutdown().await;
}

/// Polls a server metric until `holds` accepts its value, bounded.
async fn metric_reaches(app: &App, name: &str, holds: impl Fn(u64) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = app.lifecycle().render_metrics();
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok());
        if value.is_some_and(&holds) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stuck at {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_command_are_shown_once_and_answered_with_the_outcome_given() {
    let (app, operator) = server_with(
        "5s",
        &["--gateway-ack-timeout", "200ms", "--gateway-grace", "0s"],
    )
    .await;
    let (gateway_token, _) = provision_unheld(&operator, "gw", "a1").await;
    let mut proxy = Proxy::start(app.addr()).await;
    let mut events = GatewayClient::connect(&proxy.endpoint(), &gateway_token)
        .unwrap()
        .with_backoff(fast_backoff())
        .with_reconnect_spread(Duration::from_millis(5))
        .events();
    assert!(matches!(
        next_event(&mut events).await,
        GatewayEvent::Connected { .. }
    ));

    // Unanswered past the ack timeout: the service sends copies on the open
    // stream; the application sees the command once.
    operator.wake("a1").await.unwrap();
    let GatewayEvent::Wake { command, ack } = next_event(&mut events).await else {
        panic!("expected the wake");
    };
    metric_reaches(&app, "mission_control_gateway_commands_resent_total", |n| {
        n >= 2
    })
    .await;
    ack.delivered().await.expect("ack sent");
    metric_reaches(&app, "mission_control_gateway_commands_pending", |n| n == 0).await;

    // Answered on a stream that is gone: the copy on the next stream is
    // answered by the library with the same outcome, not shown.
    operator.wake("a1").await.unwrap();
    let GatewayEvent::Wake {
        command: second,
        ack,
    } = next_event(&mut events).await
    else {
        panic!("expected the second wake");
    };
    assert_eq!(second.generation, command.generation + 1);
    proxy.cut().await;
    loop {
        if let GatewayEvent::Disconnected { .. } = next_event(&mut events).await {
            break;
        }
    }
    assert!(matches!(ack.delivered().await, Err(Error::AckNotSent)));
    proxy.restore().await;
    loop {
        match next_event(&mut events).await {
            GatewayEvent::Connected { .. } => break,
            GatewayEvent::Disconnected { .. } => {}
            other => panic!("no command is shown twice: {other:?}"),
        }
    }
    metric_reaches(&app, "mission_control_gateway_commands_pending", |n| n == 0).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err(),
        "the copy was answered, not shown"
    );
    let agent = operator.get("a1").await.unwrap();
    assert_eq!(agent.wake_attempts, 1, "delivered, not failed: {agent:?}");
    assert_eq!(agent.last_provision_error, "");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_for_a_disconnected_gateway_are_held_and_reach_it_when_it_connects() {
    let (app, operator) = server_with("5s", &[]).await;
    // The gateway has never connected: the provision's wake is held.
    let (gateway_token, _) = provision(&operator, "gw", "a1").await;
    let held = operator.get("a1").await.unwrap();
    assert!(held.wake_held, "{held:?}");
    assert_eq!(held.wake_attempts, 1);
    let gateways = operator.list_gateways().await.unwrap();
    assert_eq!(
        gateways[0].state(),
        mission_control_client::GatewayState::Disconnected
    );

    let mut proxy = Proxy::start(app.addr()).await;
    let mut events = GatewayClient::connect(&proxy.endpoint(), &gateway_token)
        .unwrap()
        .with_backoff(fast_backoff())
        .with_reconnect_spread(Duration::from_millis(5))
        .events();
    assert!(matches!(
        next_event(&mut events).await,
        GatewayEvent::Connected { .. }
    ));
    let GatewayEvent::Wake { command, ack } = next_event(&mut events).await else {
        panic!("expected the held wake");
    };
    assert_eq!(
        (
            command.agent_id.as_str(),
            command.generation,
            command.attempt
        ),
        ("a1", 1, 1)
    );
    ack.delivered().await.expect("ack sent");
    let sent = operator.get("a1").await.unwrap();
    assert!(!sent.wake_held);
    assert_eq!(sent.wake_attempts, 1, "held, not counted");
    assert_eq!(command.checkin_deadline_at, sent.checkin_deadline_at);
    assert_eq!(sent.last_provision_error, "");

    // Away again: an operator wake is held until the stream is back.
    proxy.cut().await;
    loop {
        if let GatewayEvent::Disconnected { .. } = next_event(&mut events).await {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while operator.list_gateways().await.unwrap()[0].state()
        != mission_control_client::GatewayState::Disconnected
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service saw it go"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let woken = operator.wake("a1").await.unwrap();
    assert!(woken.wake_held, "{woken:?}");
    proxy.restore().await;
    loop {
        match next_event(&mut events).await {
            GatewayEvent::Wake { command, ack } => {
                assert_eq!((command.generation, command.attempt), (2, 1));
                ack.delivered().await.expect("ack sent");
                break;
            }
            GatewayEvent::Connected { .. } | GatewayEvent::Disconnected { .. } => {}
            other => panic!("expected the held wake, got {other:?}"),
        }
    }
    let history = operator_history(&operator, "gw").await;
    assert!(history.len() >= 3, "{history:?}");
    app.shutdown().await;
}

/// The gateway's transitions through the raw client, newest first.
async fn operator_history(
    operator: &OperatorClient,
    gateway: &str,
) -> Vec<mission_control_client::GatewayTransition> {
    operator.gateway_history(gateway).await.unwrap()
}
