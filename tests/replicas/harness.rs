//! Replica processes (the built binary) on one database, found by the
//! address each logs, and the database they share, queried directly.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

/// Only a guard against hanging, never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The leader lease: the default. A shorter one (2 s) made leadership
/// change hands over and over on a machine loaded by other builds (a debug
/// replica given a few percent of a core renews late, and takes seconds to
/// take over), which is not what these scenarios are about.
pub const LEADER_LEASE: Duration = Duration::from_secs(5);
/// An agent's lease: long enough to ride out a failover, and a few failed
/// calls on a loaded machine besides.
pub const AGENT_LEASE: Duration = Duration::from_secs(20);
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// A client gives up on one call after this (and tries another replica).
/// Generous, so that a loaded machine's slow answers are not turned into a
/// storm of retries; short enough that an agent whose call hangs on a
/// stopped replica still beats again well within its lease.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// One replica: the `mission-control` binary, stopped (SIGCONT, SIGKILL)
/// when dropped, so a failed assertion leaves no process behind.
pub struct Replica {
    pub index: usize,
    pub addr: SocketAddr,
    pub channel: Channel,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    exited: Option<ExitStatus>,
}

pub fn application_name(index: usize) -> String {
    format!("mc-replica-{index}")
}

fn with_application_name(url: &str, index: usize) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{separator}application_name={}",
        application_name(index)
    )
}

impl Replica {
    pub async fn start(index: usize, database_url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mission-control"))
            .args(["--listen", "127.0.0.1:0"])
            .args([
                "--database-url",
                &with_application_name(database_url, index),
            ])
            .args(["--leader-lease", &humantime(LEADER_LEASE)])
            .args(["--lease-ttl", &humantime(AGENT_LEASE)])
            .args(["--heartbeat-interval", &humantime(HEARTBEAT_INTERVAL)])
            .args(["--restart-grace", "10s", "--checkin-deadline", "30s"])
            .args(["--checkpoint-interval", "500ms", "--drain-timeout", "5s"])
            .args(["--database-connections", "8"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary runs");
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = logs.clone();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut replica = Self {
            index,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            channel: Channel::from_static("http://127.0.0.1:1").connect_lazy(),
            child,
            logs,
            exited: None,
        };
        let listening = replica.wait_for_log("listening").await;
        let addr = listening["addr"]
            .as_str()
            .or_else(|| listening["fields"]["addr"].as_str())
            .unwrap_or_else(|| panic!("no address in {listening}"));
        replica.addr = addr.parse().expect("a socket address");
        replica.channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        replica
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{name} {}", self.pid());
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    pub fn running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited.is_none()
    }

    /// Waits (bounded) for the process to exit.
    pub async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "replica {} still running",
                self.index
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.exited.expect("exited")
    }

    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    pub async fn wait_for_log(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|l| l["message"] == message)
            {
                return line;
            }
            assert!(self.running(), "replica {} exited", self.index);
            assert!(
                Instant::now() < deadline,
                "replica {} never logged {message:?}",
                self.index
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // Every line, kept for a look at a failure after the run.
        if let Some(dir) = std::env::var_os("MC_HARNESS_LOG_DIR") {
            let path = std::path::Path::new(&dir).join(format!(
                "replica-{}-pid-{}.log",
                self.index,
                self.pid()
            ));
            let _ = std::fs::write(path, self.logs.lock().unwrap().join("\n"));
        }
        if self.running() {
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid().to_string()])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn humantime(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// Three replicas on one database.
pub struct Fleet {
    pub replicas: Vec<Replica>,
    pub database_url: String,
}

impl Fleet {
    pub async fn start(database_url: &str, size: usize) -> Self {
        let mut replicas = Vec::new();
        for index in 0..size {
            replicas.push(Replica::start(index, database_url).await);
        }
        Self {
            replicas,
            database_url: database_url.to_owned(),
        }
    }

    pub fn channels(&self) -> Vec<(usize, Channel)> {
        self.replicas
            .iter()
            .map(|r| (r.index, r.channel.clone()))
            .collect()
    }

    /// The replica holding an unexpired leader lease, by the database.
    pub async fn leader(&self) -> Option<usize> {
        let address = query_leader_address(&self.database_url).await?;
        self.replicas
            .iter()
            .find(|r| r.addr.to_string() == address)
            .map(|r| r.index)
    }

    /// Waits (bounded) for a leader other than `not`.
    pub async fn wait_for_leader(&self, not: Option<usize>) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(leader) = self.leader().await
                && Some(leader) != not
            {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader (other than {not:?})");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Each replica's leadership log lines, to explain a failure.
    pub fn print_leadership(&self) {
        for replica in &self.replicas {
            for mut line in replica.log_lines() {
                let message = line["message"].as_str().unwrap_or_default().to_owned();
                let level = line["level"].as_str().unwrap_or_default();
                let leadership = [
                    "leader",
                    "took_over",
                    "following",
                    "draining",
                    "stopped",
                    "database",
                ]
                .iter()
                .any(|word| message.contains(word));
                // Warnings too, but not the per-agent ones (failed wakes).
                let per_agent = message.starts_with("lifecycle.");
                if leadership || (!per_agent && (level == "WARN" || level == "ERROR")) {
                    let timestamp = line["timestamp"].as_str().unwrap_or_default().to_owned();
                    if let Some(fields) = line.as_object_mut() {
                        for key in ["timestamp", "message", "level", "target"] {
                            fields.remove(key);
                        }
                    }
                    eprintln!("  replica {} {timestamp} {message} {line}", replica.index);
                }
            }
        }
    }

    pub fn replica(&mut self, index: usize) -> &mut Replica {
        &mut self.replicas[index]
    }
}

pub async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .ok()?
    .ok()?;
    tokio::spawn(connection);
    Some(client)
}

async fn query_leader_address(url: &str) -> Option<String> {
    let client = connect(url).await?;
    let row = client
        .query_opt(
            "SELECT address FROM leader_lease WHERE expires_at > now() LIMIT 1",
            &[],
        )
        .await
        .ok()??;
    row.try_get::<_, String>(0).ok()
}

/// Ends every database session of one replica.
pub async fn terminate_sessions(url: &str, index: usize) -> u64 {
    let client = connect(url).await.expect("the database answers");
    client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = $1",
            &[&application_name(index)],
        )
        .await
        .expect("terminating sessions")
        .get::<_, i64>(0) as u64
}
