//! Template rollouts end to end: the real server, a gateway played with the
//! client library's gateway helper (its agents check in with the library's
//! agent client), and `mcctl drift` / `mcctl rollout` as an operator runs
//! them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use mission_control_client::agent::AgentClient;
use mission_control_client::gateway::{GatewayClient, GatewayEvent};
use mission_control_client::{AgentRole, ProvisionRequest};
use serde_json::Value;

use crate::support::{PATIENCE, Server, fails, json, mcctl, ok, server, server_on_postgres};

/// Agents that keep reporting their old template for this version.
type Stubborn = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// Plays gateway `gw1`: acknowledges every wake and has the agent check
/// in, reporting the woken version, or its previous one if it is stubborn
/// about this version; an agent woken with `v9` never checks in.
/// Resolves once the gateway is connected.
fn play_gateway(
    endpoint: &str,
    token: &str,
    tokens: HashMap<String, String>,
    stubborn: Stubborn,
) -> tokio::sync::oneshot::Receiver<()> {
    let endpoint = endpoint.to_owned();
    let mut events = GatewayClient::connect(&endpoint, token).unwrap().events();
    let (connected, is_connected) = tokio::sync::oneshot::channel();
    let mut connected = Some(connected);
    tokio::spawn(async move {
        let mut running: HashMap<String, String> = HashMap::new();
        while let Some(event) = events.next().await {
            let (command, ack) = match event {
                GatewayEvent::Wake { command, ack } => (command, ack),
                GatewayEvent::Connected { .. } => {
                    connected.take().map(|c| c.send(()));
                    continue;
                }
                _ => continue,
            };
            ack.delivered().await.unwrap();
            let version = command.template_version.clone();
            if version == "v9" {
                continue;
            }
            let keeps_old = stubborn
                .lock()
                .unwrap()
                .get(&version)
                .is_some_and(|agents| agents.contains(&command.agent_id));
            let reported = if keeps_old {
                running.get(&command.agent_id).cloned().unwrap_or_default()
            } else {
                version
            };
            running.insert(command.agent_id.clone(), reported.clone());
            let mut agent = AgentClient::connect(&endpoint, &tokens[&command.agent_id])
                .unwrap()
                .with_template_version(reported);
            agent.heartbeat().await.unwrap();
        }
    });
    is_connected
}

fn lines_json(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

async fn drifted(endpoint: &str) -> u64 {
    json(endpoint, &["drift"]).await["drifted"]
        .as_u64()
        .unwrap()
}

// Long deadlines: agents are judged by what they report, not by time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_completes_pauses_itself_resumes_and_refuses_bad_input() {
    rollout_scenario(server("60s", "300s", "100s").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_on_postgres_completes_pauses_itself_resumes_and_refuses_bad_input() {
    rollout_scenario(server_on_postgres("60s", "300s", "100s").await).await;
}

/// `mcctl rollout` and `mcctl drift` over six agents: a rollout to the end,
/// one that pauses itself, resume, cancel, and bad input.
async fn rollout_scenario(server: Server) {
    let endpoint = server.endpoint.as_str();
    let operator = &server.operator;
    let gateway = operator.register_gateway("gw1", "", false).await.unwrap();
    let mut tokens = HashMap::new();
    for n in 1..=6 {
        let id = format!("a{n}");
        let reply = operator
            .provision(
                ProvisionRequest::new(&id, "gw1", AgentRole::BoardWorker)
                    .on_board("b1")
                    .with_template_version("v1"),
            )
            .await
            .unwrap();
        tokens.insert(id, reply.agent_token);
    }
    let stubborn: Stubborn = Default::default();
    stubborn
        .lock()
        .unwrap()
        .insert("v3".into(), vec!["a1".into(), "a2".into()]);
    let connected = play_gateway(endpoint, &gateway.gateway_token, tokens, stubborn);
    tokio::time::timeout(PATIENCE, connected)
        .await
        .expect("the gateway connects")
        .unwrap();
    // Provisioned before the gateway connected: woken again now, every
    // agent reports v1.
    for n in 1..=6 {
        operator.wake(&format!("a{n}")).await.unwrap();
    }
    let settled = async {
        while drifted(endpoint).await > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, settled)
        .await
        .expect("all agents report v1");

    // v2 everywhere, two at a time, followed to the end.
    let out = ok(
        endpoint,
        &[
            "-o",
            "json",
            "rollout",
            "start",
            "v2",
            "--gateway",
            "gw1",
            "--max-in-flight",
            "2",
            "--watch",
        ],
    )
    .await;
    let progress = lines_json(&out);
    let last = progress.last().unwrap();
    assert_eq!(last["state"], "completed", "{out}");
    assert_eq!(last["overall"]["done"], 6);
    assert_eq!(last["waves"].as_array().unwrap().len(), 3);
    assert!(
        progress
            .iter()
            .all(|r| r["overall"]["in_flight"].as_u64().unwrap() <= 2)
    );
    let first_id = last["id"].as_str().unwrap().to_owned();
    assert_eq!(
        json(endpoint, &["list", "--drifted"]).await,
        serde_json::json!([])
    );
    let history = json(endpoint, &["history", "a4"]).await;
    let update = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "rollout_update")
        .expect("the rollout in a4's history");
    assert_eq!(update["rollout_id"], first_id.as_str());

    // v3: a1 and a2 keep reporting v2. A budget of 1 is spent in wave 1.
    let output = mcctl(
        endpoint,
        &[
            "rollout",
            "start",
            "v3",
            "--board",
            "b1",
            "--max-in-flight",
            "2",
            "--failure-budget",
            "1",
            "--watch",
        ],
    )
    .await;
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stderr.contains("is paused: failure budget spent: 2 of 6"),
        "{stderr}"
    );
    assert!(
        stdout.contains("a1  (wave 1)  checked in still reporting template version \"v2\""),
        "{stdout}"
    );
    let rollouts = json(endpoint, &["rollout", "status"]).await;
    let paused_id = rollouts[0]["id"].as_str().unwrap().to_owned();
    let paused = json(endpoint, &["rollout", "status", &paused_id]).await;
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["overall"]["pending"], 4, "the rest untouched");
    assert_eq!(
        json(endpoint, &["get", "a6"]).await["desired_template_version"],
        "v2"
    );
    let drift = json(endpoint, &["drift", "--gateway", "gw1"]).await;
    assert_eq!(drift["drifted"], 2);
    assert_eq!(drift["boards"][0]["id"], "b1");
    let drift_table = ok(endpoint, &["drift"]).await;
    assert!(drift_table.contains("2 drifted in all"), "{drift_table}");

    // Resume needs a budget the failures fit in; then it completes.
    let (code, stderr) = fails(endpoint, &["rollout", "resume", &paused_id]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: FAILED_PRECONDITION: "),
        "{stderr}"
    );
    let table = ok(
        endpoint,
        &[
            "rollout",
            "resume",
            &paused_id,
            "--failure-budget",
            "50%",
            "--watch",
        ],
    )
    .await;
    assert!(table.contains("completed"), "{table}");
    assert!(
        table.lines().any(|l| l.contains("[") && l.contains("done")),
        "{table}"
    );
    let done = json(endpoint, &["rollout", "status", &paused_id]).await;
    assert_eq!(
        (
            done["overall"]["done"].as_u64(),
            done["overall"]["failed"].as_u64()
        ),
        (Some(4), Some(2))
    );

    // An agent that never checks in on v9 holds its rollout open.
    let held = json(endpoint, &["rollout", "start", "v9", "--agents", "a6"]).await;
    assert_eq!(held["state"], "running");
    let held_id = held["id"].as_str().unwrap();
    let (_, stderr) = fails(endpoint, &["rollout", "start", "v9", "--gateway", "gw1"]).await;
    assert!(
        stderr.starts_with("error: FAILED_PRECONDITION: ")
            && stderr.contains(&format!("already in active rollout {held_id}")),
        "{stderr}"
    );
    let paused = json(endpoint, &["rollout", "pause", held_id]).await;
    assert_eq!(paused["state"], "paused");
    let cancelled = json(endpoint, &["rollout", "cancel", held_id]).await;
    assert_eq!(cancelled["state"], "cancelled");

    // Bad input, each with its code.
    for (args, expected) in [
        (
            vec!["rollout", "start", "v4", "--gateway", "nope"],
            "error: NOT_FOUND: gateway nope",
        ),
        (
            vec!["rollout", "start", "v4", "--board", "nope"],
            "error: NOT_FOUND: board nope",
        ),
        (
            vec!["rollout", "start", "v4", "--agents", "a1,ghost"],
            "error: NOT_FOUND: agent ghost",
        ),
        (
            vec!["rollout", "start", "v4"],
            "error: INVALID_ARGUMENT: selection: ",
        ),
        (
            vec!["rollout", "start", "v\u{202e}4", "--gateway", "gw1"],
            "error: INVALID_ARGUMENT: template_version: ",
        ),
        (
            vec![
                "rollout",
                "start",
                "v4",
                "--gateway",
                "gw1",
                "--max-in-flight",
                "0",
            ],
            "error: INVALID_ARGUMENT: max_in_flight: ",
        ),
        (
            vec!["rollout", "status", "ro-missing"],
            "error: NOT_FOUND: rollout ro-missing",
        ),
    ] {
        let (code, stderr) = fails(endpoint, &args).await;
        assert_eq!(code, 1, "{args:?}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
    }
    server.app.shutdown().await;
}
