//! A real server in-process on port 0 (in-memory store, or Postgres where
//! a test says so), and the built `mcctl` binary run against it as a user
//! would.

use std::process::{Output, Stdio};
use std::time::Duration;

use clap::Parser;
use mission_control_client::operator::OperatorClient;
use mission_control_server::app::App;
use mission_control_server::config::Config;
use mission_control_server::testing::TestDatabase;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Generous: only a guard against hanging, never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Server {
    pub app: App,
    pub endpoint: String,
    pub operator: OperatorClient,
    /// The server's own Postgres database, dropped with it; `None`: in memory.
    _database: Option<TestDatabase>,
}

/// A server with this check-in deadline, lease and heartbeat interval.
pub async fn server(checkin_deadline: &str, lease_ttl: &str, heartbeat_interval: &str) -> Server {
    server_with(checkin_deadline, lease_ttl, heartbeat_interval, &[]).await
}

/// As [`server`], with more server flags.
pub async fn server_with(
    checkin_deadline: &str,
    lease_ttl: &str,
    heartbeat_interval: &str,
    extra: &[&str],
) -> Server {
    start(checkin_deadline, lease_ttl, heartbeat_interval, extra, None).await
}

/// As [`server`], on a fresh Postgres database of its own.
pub async fn server_on_postgres(
    checkin_deadline: &str,
    lease_ttl: &str,
    heartbeat_interval: &str,
) -> Server {
    let database = TestDatabase::create().await;
    let url = database.url().to_owned();
    let extra = ["--database-url", url.as_str()];
    let store = Some(database);
    start(
        checkin_deadline,
        lease_ttl,
        heartbeat_interval,
        &extra,
        store,
    )
    .await
}

async fn start(
    checkin_deadline: &str,
    lease_ttl: &str,
    heartbeat_interval: &str,
    extra: &[&str],
    database: Option<TestDatabase>,
) -> Server {
    let store: &[&str] = match database {
        Some(_) => &[],
        None => &["--dev"],
    };
    let flags = [
        "mission-control",
        "--listen",
        "127.0.0.1:0",
        "--checkin-deadline",
        checkin_deadline,
        "--heartbeat-interval",
        heartbeat_interval,
        "--lease-ttl",
        lease_ttl,
        "--drain-timeout",
        "1s",
    ];
    // Wakes to a gateway that is not connected fail at once, as the
    // per-agent policy alone says, unless `extra` says otherwise.
    let grace: &[&str] = if extra.contains(&"--gateway-grace") {
        &[]
    } else {
        &["--gateway-grace", "0s"]
    };
    let config = Config::parse_from(flags.iter().chain(store).chain(grace).chain(extra));
    let app = App::start(&config).await.expect("the server starts");
    let endpoint = format!("http://{}", app.addr());
    let operator = OperatorClient::connect(&endpoint).unwrap();
    Server {
        app,
        endpoint,
        operator,
        _database: database,
    }
}

/// The built binary, pointed at `endpoint`, with nothing inherited that
/// could change its behaviour.
pub fn command(endpoint: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcctl"));
    command
        .args(args)
        .env("MC_ENDPOINT", endpoint)
        .env_remove("MC_AGENT_TOKEN")
        .env_remove("MC_GATEWAY_TOKEN")
        .env_remove("MC_OPERATOR_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `mcctl` to completion.
pub async fn mcctl(endpoint: &str, args: &[&str]) -> Output {
    let run = command(endpoint, args).output();
    tokio::time::timeout(PATIENCE, run)
        .await
        .unwrap_or_else(|_| panic!("mcctl {args:?} finished in time"))
        .expect("mcctl runs")
}

/// Runs `mcctl`, expects success, and returns its stdout.
pub async fn ok(endpoint: &str, args: &[&str]) -> String {
    let output = mcctl(endpoint, args).await;
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "mcctl {args:?} failed: {stderr}\n{stdout}"
    );
    stdout
}

/// Runs `mcctl --output json ...` and parses what it printed.
pub async fn json(endpoint: &str, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let stdout = ok(endpoint, &all).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: not JSON: {stdout}"))
}

/// Runs `mcctl`, expects failure, and returns its exit code and stderr.
pub async fn fails(endpoint: &str, args: &[&str]) -> (i32, String) {
    let output = mcctl(endpoint, args).await;
    assert!(!output.status.success(), "mcctl {args:?} should fail");
    let stderr = String::from_utf8(output.stderr).unwrap();
    (output.status.code().unwrap_or(-1), stderr)
}

/// A long-running `mcctl` whose stdout is read line by line.
pub struct Running {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    pub fn spawn(endpoint: &str, args: &[&str]) -> Self {
        let mut child = command(endpoint, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mcctl starts");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    pub async fn next_line(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("a line in time")
            .expect("stdout readable")
            .expect("mcctl still running")
    }

    /// Waits for the process to exit; its exit code and stderr.
    pub async fn exit(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("mcctl exits in time")
            .unwrap();
        let mut stderr = String::new();
        let mut pipe = self.child.stderr.take().unwrap();
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr)
            .await
            .unwrap();
        (status.code(), stderr)
    }

    /// Reads lines until one satisfies `wanted`, returning all read.
    pub async fn lines_until(&mut self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self.next_line().await;
            let done = wanted(&line);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}
