//! The real `mission-control` binary against real Postgres: its structured
//! logs, a crash (SIGKILL) mid-cycle that loses nothing acknowledged, and a
//! graceful drain on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mission_control_proto::v1::agent_lifecycle_client::AgentLifecycleClient;
use mission_control_proto::v1::gateways_client::GatewaysClient;
use mission_control_proto::v1::{
    AgentRole, AgentStatus, GetAgentRequest, HeartbeatRequest, ProvisionRequest,
    RegisterGatewayRequest, WakeAgentRequest, WatchAgentRequest,
};
use mission_control_server::testing::TestDatabase;
use tonic::transport::Channel;

/// Only a guard against hanging, never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

struct Server {
    child: Child,
    endpoint: String,
    logs: Arc<Mutex<Vec<String>>>,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Server {
    async fn start(database_url: &str, port: u16) -> Self {
        Self::start_with(database_url, port, &[]).await
    }

    async fn start_with(database_url: &str, port: u16, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mission-control"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url])
            .args(["--checkin-deadline", "400ms", "--restart-grace", "300ms"])
            .args([
                "--heartbeat-interval",
                "1s",
                "--lease-ttl",
                "5s",
                "--checkpoint-interval",
                "100ms",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = logs.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            logs,
        };
        server.wait_for_log("listening").await;
        server
    }

    async fn wait_for_log(&self, message: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|l| l["message"] == message)
            {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {message:?} in the logs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every log line, each of which must be a JSON object.
    fn log_lines(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect()
    }

    fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect_lazy()
    }

    fn lifecycle(&self) -> AgentLifecycleClient<Channel> {
        AgentLifecycleClient::new(self.channel())
    }

    async fn register_gateway(&self, id: &str) {
        GatewaysClient::new(self.channel())
            .register_gateway(RegisterGatewayRequest {
                gateway_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn provision(&self, agent: &str) -> String {
        let request = ProvisionRequest::new(agent, "gw", AgentRole::GatewayMain);
        let reply = self
            .lifecycle()
            .provision(request)
            .await
            .unwrap()
            .into_inner();
        reply.agent_token
    }

    async fn status(&self, agent: &str) -> (i32, u32) {
        let agent = self
            .lifecycle()
            .get_agent(GetAgentRequest {
                agent_id: agent.into(),
            })
            .await
            .unwrap()
            .into_inner();
        (agent.status, agent.wake_attempts)
    }

    async fn wait_for_status(&self, agent: &str, status: AgentStatus) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.status(agent).await.0 != status as i32 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{agent} never became {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn heartbeat(server: &Server, token: &str) -> Result<i32, tonic::Status> {
    let mut request = tonic::Request::new(HeartbeatRequest::default());
    request
        .metadata_mut()
        .insert("x-agent-token", token.parse().unwrap());
    Ok(server
        .lifecycle()
        .heartbeat(request)
        .await?
        .into_inner()
        .status)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn logs_are_json_with_the_reference_event_names_and_never_a_token() {
    let db = TestDatabase::create().await;
    let server = Server::start(db.url(), free_port()).await;
    server.register_gateway("gw").await;
    let silent_token = server.provision("silent").await;
    let eager_token = server.provision("eager").await;
    server.provision("rewoken").await;
    server
        .lifecycle()
        .wake_agent(WakeAgentRequest {
            agent_id: "rewoken".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        heartbeat(&server, &eager_token).await.unwrap(),
        AgentStatus::Online as i32
    );
    server.wait_for_status("silent", AgentStatus::Offline).await;
    server
        .wait_for_log("lifecycle.reconcile.max_attempts_reached")
        .await;

    let lines = server.log_lines();
    let named = |name: &str| {
        lines
            .iter()
            .filter(|l| l["message"] == name)
            .collect::<Vec<_>>()
    };
    for name in [
        "lifecycle.queue.enqueued",
        "queue.worker.success",
        "lifecycle.reconcile.skip_not_stuck",
        "lifecycle.reconcile.retriggered",
        "lifecycle.reconcile.max_attempts_reached",
        "lifecycle.reconcile.skip_stale_generation",
    ] {
        let events = named(name);
        assert!(!events.is_empty(), "no {name} in the logs");
        for event in events {
            assert!(event["agent_id"].is_string(), "{event}");
            assert!(
                event["generation"].is_u64() && event["attempt"].is_u64(),
                "{event}"
            );
        }
    }
    let retriggered = named("lifecycle.reconcile.retriggered");
    assert!(
        retriggered
            .iter()
            .any(|e| e["agent_id"] == "silent" && e["attempt"] == 1)
    );
    let enqueued = named("lifecycle.queue.enqueued");
    assert!(
        enqueued
            .iter()
            .all(|e| e["deadline"].is_string() && e["delay_ms"].is_u64())
    );
    let finished = named("lifecycle.reconcile.max_attempts_reached");
    assert!(
        finished
            .iter()
            .any(|e| e["agent_id"] == "silent" && e["attempt"] == 3)
    );

    let everything = server.logs.lock().unwrap().join("\n");
    for token in [&silent_token, &eager_token] {
        assert!(
            !everything.contains(&token[4..20]),
            "a token leaked into the logs"
        );
    }
}

#[tokio::test]
async fn a_crash_mid_cycle_loses_no_acknowledged_transition() {
    let db = TestDatabase::create().await;
    let port = free_port();
    let mut server = Server::start(db.url(), port).await;
    server.register_gateway("gw").await;
    let mut tokens = Vec::new();
    for n in 0..5 {
        tokens.push(server.provision(&format!("agent-{n}")).await);
    }
    assert_eq!(
        heartbeat(&server, &tokens[0]).await.unwrap(),
        AgentStatus::Online as i32
    );

    server.child.kill().unwrap(); // SIGKILL: no drain, no final checkpoint
    server.child.wait().unwrap();
    let server = Server::start(db.url(), port).await;

    assert_eq!(
        server.status("agent-0").await.0,
        AgentStatus::Online as i32,
        "the check-in survived"
    );
    assert_eq!(
        heartbeat(&server, &tokens[0]).await.unwrap(),
        AgentStatus::Online as i32,
        "the token too"
    );
    for n in 1..5 {
        let (status, attempts) = server.status(&format!("agent-{n}")).await;
        assert!(
            status == AgentStatus::Provisioning as i32 || status == AgentStatus::Offline as i32
        );
        assert!(attempts >= 1);
    }
    // The escalation resumes from the database and runs to its end.
    for n in 1..5 {
        server
            .wait_for_status(&format!("agent-{n}"), AgentStatus::Offline)
            .await;
        assert_eq!(server.status(&format!("agent-{n}")).await.1, 3);
    }
}

#[tokio::test]
async fn sigterm_ends_watches_and_exits_cleanly() {
    let db = TestDatabase::create().await;
    let mut server = Server::start(db.url(), free_port()).await;
    let mut watch = server
        .lifecycle()
        .watch_agent(WatchAgentRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        watch.message().await.unwrap().is_some(),
        "the snapshot marker"
    );

    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let ended = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap();
    assert_eq!(ended.unwrap_err().code(), tonic::Code::Unavailable);

    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    server.wait_for_log("stopped").await;
}

#[tokio::test]
async fn a_database_that_does_not_exist_stops_the_start_at_once_with_the_reason() {
    let db = TestDatabase::create().await;
    let missing = format!("{}_missing", db.url());
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_mission-control"))
        .args(["--listen", "127.0.0.1:0", "--database-url", &missing])
        // A wrong database name is not an outage: no waiting it out.
        .args(["--database-startup-timeout", "10m"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the binary gives up instead of waiting for the database")
        .unwrap();
    assert!(!output.status.success());
    let logs = String::from_utf8_lossy(&output.stdout);
    assert!(logs.contains("does not exist"), "{logs}");
}

async fn exit_status(server: &mut Server) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_exits_within_the_drain_timeout_while_a_commit_is_blocked() {
    let db = TestDatabase::create().await;
    let mut server = Server::start_with(db.url(), free_port(), &["--drain-timeout", "2s"]).await;
    server.register_gateway("gw").await;
    let token = server.provision("beating").await;
    heartbeat(&server, &token).await.unwrap();

    // A table lock that holds every commit (and checkpoint) until the
    // test lets go, which it does only after the server has exited.
    let (locker, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE agents IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let blocked = {
        let client = server.lifecycle();
        tokio::spawn(async move {
            let mut client = client;
            client
                .provision(ProvisionRequest::new(
                    "blocked",
                    "gw",
                    AgentRole::GatewayMain,
                ))
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = locker
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the commit never blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    heartbeat(&server, &token).await.unwrap(); // the lease is dirty: a checkpoint is due

    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = exit_status(&mut server).await;
    // Exited while the commit is still blocked: the drain did not wait for it.
    assert!(
        !locker.is_closed(),
        "the lock was held throughout the drain"
    );
    assert!(status.success(), "{status}");
    let stopped = server.wait_for_log("stopped").await;
    assert!(stopped["took"].is_string(), "{stopped}");
    let refused = blocked.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    locker.batch_execute("ROLLBACK").await.unwrap();
}
