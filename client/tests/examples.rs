//! The three examples, built as a user builds them and run against a real
//! server (in-process, in-memory store), in the order the README gives.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use mission_control_client::operator::OperatorClient;
use mission_control_server::app::App;
use mission_control_server::config::Config;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Only a guard against hanging, never a timing assertion. Generous: the
/// first run may build the examples.
const PATIENCE: Duration = Duration::from_secs(300);

/// Builds the examples (a no-op when `cargo test` already has) and returns
/// the directory they are in.
async fn built_examples() -> PathBuf {
    // This test runs from target/<profile>/deps; examples live beside it,
    // built with the same profile.
    let deps = std::env::current_exe().unwrap();
    let profile_dir = deps.parent().unwrap().parent().unwrap().to_owned();
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--locked", "--examples", "--package"])
        .arg(env!("CARGO_PKG_NAME"))
        .kill_on_drop(true);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let build = build.status();
    let status = tokio::time::timeout(PATIENCE, build)
        .await
        .expect("the examples build in time")
        .expect("cargo runs");
    assert!(status.success(), "the examples build");
    profile_dir.join("examples")
}

struct Example {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Example {
    fn spawn(dir: &std::path::Path, name: &str, endpoint: &str, args: &[&str]) -> Self {
        let mut child = Command::new(dir.join(name))
            .args(args)
            .env("MC_ENDPOINT", endpoint)
            .env_remove("MC_AGENT_TOKEN")
            .env_remove("MC_GATEWAY_TOKEN")
            .env_remove("MC_OPERATOR_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("example {name} runs: {e}"));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// Reads lines until one contains `wanted`; that line.
    async fn line_with(&mut self, wanted: &str) -> String {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no line with {wanted:?} in time"))
                .unwrap()
                .unwrap_or_else(|| panic!("ended before a line with {wanted:?}"));
            if line.contains(wanted) {
                return line;
            }
        }
    }

    /// Ctrl-C, as the examples say to stop them; the exit status.
    async fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let kill = Command::new("kill").args(["-INT", &pid]).status().await;
        assert!(kill.unwrap().success());
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("stops on Ctrl-C")
            .unwrap()
    }
}

/// The token after "token: " in a line the operator example printed.
fn token_in(line: &str) -> String {
    line.rsplit("token: ").next().unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_against_a_server() {
    let dir = built_examples().await;
    // A long deadline: only the wakes the test causes reach the gateway.
    let config = Config::parse_from([
        "mission-control",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--checkin-deadline",
        "5m",
        "--drain-timeout",
        "1s",
    ]);
    let app = App::start(&config).await.expect("the server starts");
    let endpoint = format!("http://{}", app.addr());
    let operator = OperatorClient::connect(&endpoint).unwrap();

    let mut registering = Example::spawn(&dir, "operator", &endpoint, &[]);
    let gateway_line = registering.line_with("gateway example-gw registered").await;
    let agent_line = registering
        .line_with("agent example-agent provisioned and woken")
        .await;
    registering.line_with("example-agent").await; // the listing
    let status = tokio::time::timeout(PATIENCE, registering.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let (gateway_token, agent_token) = (token_in(&gateway_line), token_in(&agent_line));
    assert!(gateway_token.starts_with("mcg_"), "{gateway_line}");
    assert!(agent_token.starts_with("mca_"), "{agent_line}");

    let mut gateway = Example::spawn(&dir, "gateway", &endpoint, &[&gateway_token]);
    gateway.line_with("connected as gateway example-gw").await;
    operator.wake("example-agent").await.unwrap();
    let wake = gateway.line_with("wake example-agent").await;
    assert!(wake.contains("attempt 1"), "{wake}");

    let mut agent = Example::spawn(&dir, "agent", &endpoint, &[&agent_token]);
    let beat = agent.line_with("beat: example-agent").await;
    assert!(beat.contains("Online"), "{beat}");
    assert_eq!(
        operator.get("example-agent").await.unwrap().status(),
        mission_control_client::AgentStatus::Online
    );

    // Stopped before the delete: a deleted agent's next beat is refused.
    assert!(agent.interrupt().await.success());
    operator.delete("example-agent").await.unwrap();
    gateway.line_with("retire example-agent").await;
    assert!(gateway.interrupt().await.success());
    app.shutdown().await;
}
