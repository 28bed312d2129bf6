//! `mcctl bench`: a small fleet provisioned, checked in and heartbeaten,
//! and the exit code a missed target gives. No figure is asserted.

use crate::support::{fails, json, mcctl, server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_leaves_its_fleet_online_and_fails_when_the_ratio_is_missed() {
    // A 1 s heartbeat interval: a budget of 2.5 beats a second per agent,
    // beyond what 100 agents get in these short phases.
    let server = server("30s", "1h", "1s").await;
    let args = [
        "bench",
        "--agents",
        "100",
        "--boards",
        "7",
        "--connections",
        "2",
        "--streams",
        "2",
        "--duration",
        "100ms",
        "--rounds",
        "1",
        "--min-distinct",
        "0",
        "--min-ratio",
        "0",
    ];
    let report = json(&server.endpoint, &args).await;

    let phases = report["phases"].as_array().unwrap();
    let named = |name: &str| {
        phases
            .iter()
            .find(|p| p["phase"].as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} phase: {report:#}"))
    };
    for phase in ["Provision", "check-in"] {
        assert_eq!(named(phase)["calls"], 100, "{report:#}");
        assert_eq!(named(phase)["failed"], serde_json::json!({}), "{report:#}");
    }
    assert!(named("health Check")["calls"].as_u64().unwrap() > 0);
    assert!(named("Heartbeat")["calls"].as_u64().unwrap() > 0);
    let verdict = &report["verdict"];
    assert_eq!(verdict["met"], true, "{report:#}");
    assert_eq!(verdict["failed_heartbeats"], 0);

    let agents = json(&server.endpoint, &["list", "--gateway", "bench-gw"]).await;
    let agents = agents.as_array().unwrap();
    assert_eq!(agents.len(), 100);
    assert!(agents.iter().all(|a| a["status"] == "online"), "{agents:?}");
    assert!(agents.iter().any(|a| a["board_id"] == "board-6"));

    // Again on the same fleet (new tokens), with a target no server meets.
    let mut missed = args.to_vec();
    *missed.last_mut().unwrap() = "1000";
    let (code, stderr) = fails(&server.endpoint, &missed).await;
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.starts_with("target missed: "), "{stderr}");
    server.app.shutdown().await;
}

/// `--calls`: phases of exactly that many calls; `--pause`: each measured
/// phase announced on stderr before it starts, and the end after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_call_phases_run_exactly_their_calls_after_announced_pauses() {
    let server = server("30s", "1h", "1s").await;
    let args = [
        "--output",
        "json",
        "bench",
        "--agents",
        "30",
        "--connections",
        "2",
        "--streams",
        "2",
        "--calls",
        "45",
        "--pause",
        "10ms",
        "--rounds",
        "2",
        "--min-distinct",
        "0",
        "--min-ratio",
        "0",
    ];
    let output = mcctl(&server.endpoint, &args).await;
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let measured: Vec<_> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["phase"].as_str().unwrap().contains("round"))
        .map(|p| (p["phase"].as_str().unwrap(), p["calls"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        measured,
        [
            ("health Check, round 1", 45),
            ("Heartbeat, round 1", 45),
            ("health Check, round 2", 45),
            ("Heartbeat, round 2", 45),
        ],
        "{report:#}"
    );
    assert_eq!(report["run"]["phase_calls"], 45);
    let pauses: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("mcctl bench: pause before "))
        .collect();
    assert_eq!(
        pauses,
        [
            "health Check, round 1",
            "Heartbeat, round 1",
            "health Check, round 2",
            "Heartbeat, round 2",
            "the end",
        ],
        "{stderr}"
    );
    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_of_no_agents_is_a_usage_error() {
    let server = server("30s", "1h", "1s").await;
    let (code, stderr) = fails(&server.endpoint, &["bench", "--agents", "0"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("at least 1"), "{stderr}");
    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_that_reaches_too_few_agents_fails() {
    let server = server("30s", "1h", "1s").await;
    let args = [
        "bench",
        "--agents",
        "20",
        "--duration",
        "50ms",
        "--rounds",
        "1",
        "--min-ratio",
        "0",
    ];
    let (code, stderr) = fails(&server.endpoint, &args).await;
    assert_eq!(code, 4);
    assert!(stderr.contains("fewer than 100000"), "{stderr}");
    server.app.shutdown().await;
}
