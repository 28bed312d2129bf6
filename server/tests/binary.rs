//! The real `mission-control` binary against real Postgres: its structured
//! logs, a crash (SIGKILL) mid-cycle that loses nothing acknowledged, a
//! graceful drain on SIGTERM with its last checkpoint, and how it starts
//! when Postgres is late or refuses it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mission_control_proto::v1::agent_lifecycle_client::AgentLifecycleClient;
use mission_control_proto::v1::gateways_client::GatewaysClient;
use mission_control_proto::v1::{
    AgentEvent, AgentRole, AgentStatus, DeleteAgentRequest, GetAgentHistoryRequest,
    GetAgentRequest, HeartbeatRequest, ProvisionRequest, RegisterGatewayRequest, TransitionReason,
    WakeAgentRequest, WatchAgentRequest, watch_agent_response,
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

    /// With `overrides`, pairs of flag and value that replace a default.
    async fn start_with(database_url: &str, port: u16, overrides: &[(&str, &str)]) -> Self {
        let listen = format!("127.0.0.1:{port}");
        let mut flags = vec![
            ("--listen", listen.as_str()),
            ("--database-url", database_url),
            ("--checkin-deadline", "400ms"),
            ("--restart-grace", "300ms"),
            ("--heartbeat-interval", "1s"),
            ("--lease-ttl", "5s"),
            ("--checkpoint-interval", "100ms"),
            // No gateway connects in these tests: wakes fail at once, as
            // the per-agent policy alone says, instead of being held.
            ("--gateway-grace", "0s"),
        ];
        for (flag, value) in overrides {
            match flags.iter_mut().find(|(f, _)| f == flag) {
                Some(default) => default.1 = value,
                None => flags.push((flag, value)),
            }
        }
        let child = Command::new(env!("CARGO_BIN_EXE_mission-control"))
            .args(flags.iter().flat_map(|(flag, value)| [flag, value]))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let server = Self::capture(child, format!("http://127.0.0.1:{port}"));
        server.wait_for_log("listening").await;
        server
    }

    /// Collects the child's stdout, one log line each, from now on.
    fn capture(mut child: Child, endpoint: String) -> Self {
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = logs.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            endpoint,
            logs,
        }
    }

    async fn wait_for_log(&self, message: &str) -> serde_json::Value {
        self.wait_for_any_log(&[message]).await
    }

    async fn wait_for_any_log(&self, messages: &[&str]) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|l| messages.iter().any(|m| l["message"] == *m))
            {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "none of {messages:?} in the logs"
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

    /// Registers (or with `rotate_token`, re-keys) a gateway; its new token.
    async fn register_gateway_token(&self, id: &str, rotate_token: bool) -> String {
        GatewaysClient::new(self.channel())
            .register_gateway(RegisterGatewayRequest {
                gateway_id: id.into(),
                rotate_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .gateway_token
    }

    async fn register_gateway(&self, id: &str) {
        self.register_gateway_token(id, false).await;
    }

    async fn provision(&self, agent: &str) -> String {
        self.provision_reply(agent, false).await.agent_token
    }

    async fn provision_reply(
        &self,
        agent: &str,
        rotate_token: bool,
    ) -> mission_control_proto::v1::ProvisionResponse {
        let mut request = ProvisionRequest::new(agent, "gw", AgentRole::GatewayMain);
        request.rotate_token = rotate_token;
        self.lifecycle()
            .provision(request)
            .await
            .unwrap()
            .into_inner()
    }

    async fn agent(&self, agent: &str) -> mission_control_proto::v1::Agent {
        self.lifecycle()
            .get_agent(GetAgentRequest {
                agent_id: agent.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// The agent's whole history, newest first.
    async fn history(&self, agent: &str) -> Vec<AgentEvent> {
        self.lifecycle()
            .get_agent_history(GetAgentHistoryRequest {
                agent_id: agent.into(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .events
    }

    /// Records every change the watch delivers: each is committed, so each
    /// is an acknowledged transition.
    async fn record_changes(&self) -> Arc<Mutex<Vec<AgentEvent>>> {
        let mut watch = self
            .lifecycle()
            .watch_agent(WatchAgentRequest::default())
            .await
            .unwrap()
            .into_inner();
        let changes: Arc<Mutex<Vec<AgentEvent>>> = Arc::default();
        let sink = changes.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = watch.message().await {
                if let Some(watch_agent_response::Kind::Event(event)) = message.kind
                    && event.reason != TransitionReason::Snapshot as i32
                {
                    sink.lock().unwrap().push(event);
                }
            }
        });
        changes
    }

    /// Waits (bounded) until `done` holds for what `changes` recorded.
    async fn wait_for_changes(
        changes: &Mutex<Vec<AgentEvent>>,
        what: &str,
        done: impl Fn(&[AgentEvent]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(&changes.lock().unwrap()) {
            assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn terminate(&self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
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
    // Deadlines long enough that a stalled machine still gets each call in
    // before the timer it races (2 s each; 6 s for the whole escalation).
    let server = Server::start_with(db.url(), free_port(), &[("--checkin-deadline", "2s")]).await;
    let mut tokens = vec![server.register_gateway_token("gw", false).await];
    tokens.push(server.register_gateway_token("gw", true).await);
    tokens.push(server.provision("silent").await);
    tokens.push(server.provision("eager").await);
    tokens.push(server.provision("rewoken").await);
    tokens.push(server.provision("doomed").await);
    let rotated = server.provision_reply("eager", true).await.agent_token;
    tokens.push(rotated.clone());
    server
        .lifecycle()
        .wake_agent(WakeAgentRequest {
            agent_id: "rewoken".into(),
        })
        .await
        .unwrap();
    server
        .lifecycle()
        .delete_agent(DeleteAgentRequest {
            agent_id: "doomed".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        heartbeat(&server, &rotated).await.unwrap(),
        AgentStatus::Online as i32
    );
    server.wait_for_status("silent", AgentStatus::Offline).await;
    server
        .wait_for_log("lifecycle.reconcile.max_attempts_reached")
        .await;
    server
        .wait_for_log("lifecycle.reconcile.skip_missing_agent")
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
        "lifecycle.reconcile.skip_missing_agent",
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
    // `retriggered` names the attempt it starts, as the transition beside it does.
    let retriggered: Vec<_> = named("lifecycle.reconcile.retriggered")
        .into_iter()
        .filter(|e| e["agent_id"] == "silent")
        .map(|e| e["attempt"].as_u64())
        .collect();
    assert_eq!(retriggered, [Some(2), Some(3)]);
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
    let not_stuck = named("lifecycle.reconcile.skip_not_stuck");
    assert!(not_stuck.iter().any(|e| e["agent_id"] == "eager"));
    let stale = named("lifecycle.reconcile.skip_stale_generation");
    assert!(stale.iter().any(|e| e["agent_id"] == "rewoken"));
    let missing = named("lifecycle.reconcile.skip_missing_agent");
    assert!(missing.iter().all(|e| e["agent_id"] == "doomed"));

    // Every committed transition is logged, with where it came from and went.
    let transitions = named("lifecycle.transition");
    let eager_online = transitions
        .iter()
        .find(|e| e["agent_id"] == "eager" && e["to"] == "online" && e["reason"] == "checked_in");
    let eager_online = eager_online.expect("the check-in is logged as a transition");
    assert!(eager_online["revision"].is_u64(), "{eager_online}");
    assert!(eager_online["generation"].is_u64(), "{eager_online}");
    assert!(eager_online["from"].is_string(), "{eager_online}");
    // A transition that enqueued a wake is one line: the seed's event, with
    // the transition's fields beside the wake's.
    let provisioned: Vec<_> = enqueued
        .iter()
        .filter(|e| e["agent_id"] == "silent" && e["reason"] == "provisioned")
        .collect();
    assert_eq!(provisioned.len(), 1, "{provisioned:?}");
    assert!(provisioned[0]["revision"].is_u64(), "{}", provisioned[0]);
    assert_eq!(provisioned[0]["to"], "provisioning", "{}", provisioned[0]);
    assert!(
        !transitions
            .iter()
            .any(|e| e["agent_id"] == "silent" && e["reason"] == "provisioned"),
        "logged once"
    );
    assert!(transitions.iter().any(|e| e["agent_id"] == "silent"
        && e["to"] == "offline"
        && e["reason"] == "max_attempts_reached"));
    // A deletion reads as one, not as `from=online to=online`.
    let deleted: Vec<_> = transitions
        .iter()
        .filter(|e| e["agent_id"] == "doomed" && e["reason"] == "deleted")
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["to"], "deleted", "{}", deleted[0]);
    assert_eq!(deleted[0]["from"], "provisioning", "{}", deleted[0]);

    // Every token minted here: two for the gateway (one rotated), four for
    // agents, one rotated. None may appear, not even its secret part alone.
    assert_eq!(tokens.len(), 7);
    let everything = server.logs.lock().unwrap().join("\n");
    for token in &tokens {
        assert_eq!(token.len(), 68, "{}", &token[..4]);
        let secret = &token[4..];
        assert!(
            !everything.contains(secret),
            "a {} token leaked into the logs",
            &token[..4]
        );
    }
}

#[tokio::test]
async fn a_crash_mid_cycle_loses_no_acknowledged_transition() {
    let db = TestDatabase::create().await;
    let port = free_port();
    // The agent that checked in keeps its lease while the next server waits
    // out the dead one's leader lease, however slow the machine.
    let flags = [("--lease-ttl", "5m"), ("--leader-lease", "2s")];
    let mut server = Server::start_with(db.url(), port, &flags).await;
    let changes = server.record_changes().await;
    server.register_gateway("gw").await;
    let mut tokens = Vec::new();
    for n in 0..5 {
        tokens.push(server.provision(&format!("agent-{n}")).await);
    }
    assert_eq!(
        heartbeat(&server, &tokens[0]).await.unwrap(),
        AgentStatus::Online as i32
    );
    // Mid-cycle: the check-in is out and an escalation has begun.
    Server::wait_for_changes(&changes, "a check-in and a missed deadline", |seen| {
        seen.iter()
            .any(|e| e.reason == TransitionReason::CheckedIn as i32)
            && seen
                .iter()
                .any(|e| e.reason == TransitionReason::DeadlineMissed as i32)
    })
    .await;

    server.child.kill().unwrap(); // SIGKILL: no drain, no final checkpoint
    server.child.wait().unwrap();
    let acknowledged = changes.lock().unwrap().clone();
    let server = Server::start_with(db.url(), port, &flags).await;
    // The dead leader's lease expires first (unless it already has).
    server
        .wait_for_any_log(&["lifecycle.restored", "lifecycle.took_over"])
        .await;

    // Every transition a watcher was told of before the crash is in the
    // history after it, exactly as told.
    let summary = |e: &AgentEvent| {
        let agent = e.agent.as_ref().unwrap();
        (
            e.revision,
            e.reason,
            e.attempt,
            agent.status,
            agent.wake_attempts,
        )
    };
    for n in 0..5 {
        let id = format!("agent-{n}");
        let history: Vec<_> = server.history(&id).await.iter().map(summary).collect();
        let told: Vec<_> = acknowledged
            .iter()
            .filter(|e| e.agent.as_ref().unwrap().id == id)
            .map(summary)
            .collect();
        assert!(
            told.iter()
                .any(|(_, reason, ..)| *reason == TransitionReason::Provisioned as i32),
            "{id}: the watch saw it provisioned"
        );
        for transition in &told {
            assert!(
                history.contains(transition),
                "{id}: acknowledged {transition:?} is missing after the restart: {history:?}"
            );
        }
        let last_told = told.iter().map(|t| t.0).max().unwrap();
        assert!(
            server.agent(&id).await.revision >= last_told,
            "{id}: the state went back in time"
        );
    }
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
    // The escalation resumes from the database and runs to its end.
    for n in 1..5 {
        server
            .wait_for_status(&format!("agent-{n}"), AgentStatus::Offline)
            .await;
        assert_eq!(server.status(&format!("agent-{n}")).await.1, 3);
    }
}

#[tokio::test]
async fn sigterm_writes_a_last_checkpoint_of_the_leases() {
    let db = TestDatabase::create().await;
    let port = free_port();
    // No periodic checkpoint within the test: only the one at SIGTERM.
    let slow = [("--checkpoint-interval", "1h")];
    let mut server = Server::start_with(db.url(), port, &slow).await;
    server.register_gateway("gw").await;
    let token = server.provision("a").await;
    heartbeat(&server, &token).await.unwrap(); // the check-in, committed
    let checked_in = server.agent("a").await.last_seen_at.unwrap();
    let renewed = loop {
        // A renewal, kept in memory; the clock may need a tick to move on.
        heartbeat(&server, &token).await.unwrap();
        let seen = server.agent("a").await.last_seen_at.unwrap();
        if seen != checked_in {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    server.terminate();
    assert!(server.wait_for_exit().await.success());
    drop(server);
    let server = Server::start_with(db.url(), port, &slow).await;
    assert_eq!(
        server.agent("a").await.last_seen_at.unwrap(),
        renewed,
        "the renewal in memory was checkpointed at SIGTERM"
    );
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
    let first = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a first message");
    assert!(
        matches!(
            first.kind,
            Some(watch_agent_response::Kind::SnapshotComplete(_))
        ),
        "an empty snapshot, then its marker: {first:?}"
    );

    server.terminate();
    let ended = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap();
    assert_eq!(ended.unwrap_err().code(), tonic::Code::Unavailable);

    let status = server.wait_for_exit().await;
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

#[tokio::test]
async fn sigterm_exits_within_the_drain_timeout_while_a_commit_is_blocked() {
    let db = TestDatabase::create().await;
    let mut server = Server::start_with(db.url(), free_port(), &[("--drain-timeout", "2s")]).await;
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

    server.terminate();
    let status = server.wait_for_exit().await;
    // Exited while the commit is still blocked: the drain did not wait for it.
    assert!(
        !locker.is_closed(),
        "the lock was held throughout the drain"
    );
    assert!(status.success(), "{status}");
    let stopped = server.wait_for_log("stopped").await;
    assert!(stopped["took"].is_string(), "{stopped}");
    // Never acknowledged: refused, or cut off with the connection when the
    // drain abandoned it.
    let refused = blocked.await.unwrap().unwrap_err();
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown
        ),
        "{refused:?}"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn refused_credentials_stop_the_start_at_once_with_the_reason() {
    let db = TestDatabase::create().await;
    // The same server and database, as a role Postgres does not know.
    let url = db.url().replacen("://postgres@", "://no_such_role@", 1);
    assert_ne!(url, db.url(), "the test database URL names its user");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_mission-control"))
        .args(["--listen", "127.0.0.1:0", "--database-url", &url])
        .args(["--database-startup-timeout", "10m"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("refused credentials are not waited out")
        .unwrap();
    assert!(!output.status.success());
    let logs = String::from_utf8_lossy(&output.stdout);
    assert!(logs.contains("no_such_role"), "{logs}");
    assert!(!logs.contains("waiting for the database"), "{logs}");
}

#[tokio::test]
async fn at_start_it_waits_for_postgres_to_come_up() {
    let db = TestDatabase::create().await;
    // Postgres "comes up" when this test starts forwarding a free port to it.
    let port = free_port();
    let shared = db.url().to_owned();
    let authority = shared.split('@').nth(1).unwrap().split('/').next().unwrap();
    let late_url = shared.replacen(authority, &format!("127.0.0.1:{port}"), 1);
    let child = Command::new(env!("CARGO_BIN_EXE_mission-control"))
        .args(["--listen", "127.0.0.1:0", "--database-url", &late_url])
        .args(["--database-startup-timeout", "10m"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let server = Server::capture(child, String::new());
    let waiting = server.wait_for_log("waiting for the database").await;
    assert!(waiting["retry_in"].is_string(), "{waiting}");
    assert!(
        server
            .log_lines()
            .iter()
            .all(|l| l["message"] != "listening"),
        "not listening before the database is there"
    );

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let target = authority.to_owned();
    let proxy = tokio::spawn(async move {
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    server.wait_for_log("listening").await;
    proxy.abort();
}

#[tokio::test]
async fn a_deadline_for_an_agent_whose_gateway_is_gone_is_logged_and_ends_its_escalation() {
    let db = TestDatabase::create().await;
    let port = free_port();
    // Long enough that the deadline is still ahead at the restart.
    let flags = [("--checkin-deadline", "5m")];
    let mut server = Server::start_with(db.url(), port, &flags).await;
    server.register_gateway("gw").await;
    server.provision("orphan").await;
    server.terminate();
    assert!(server.wait_for_exit().await.success());
    drop(server);

    // A gateway can only vanish behind the service's back: from the table,
    // with the deadline moved due.
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let gone = client
        .execute("DELETE FROM gateways WHERE id = 'gw'", &[])
        .await
        .unwrap();
    assert_eq!(gone, 1);
    let due = "UPDATE agents SET checkin_deadline_at = now() WHERE id = 'orphan'";
    assert_eq!(client.execute(due, &[]).await.unwrap(), 1);

    let server = Server::start(db.url(), port).await;
    let skipped = server
        .wait_for_log("lifecycle.reconcile.skip_missing_gateway")
        .await;
    assert_eq!(skipped["agent_id"], "orphan", "{skipped}");
    assert_eq!(skipped["level"], "WARN", "{skipped}");
    server.wait_for_status("orphan", AgentStatus::Offline).await;
    let agent = server.agent("orphan").await;
    assert!(
        agent
            .last_provision_error
            .contains("gateway gw is not registered"),
        "{}",
        agent.last_provision_error
    );
}
