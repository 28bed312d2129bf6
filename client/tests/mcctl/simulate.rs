//! `mcctl simulate`: a whole fleet through the policy, on short deadlines.

use serde_json::Value;

use crate::support::{fails, json, ok, server};

fn outcomes<'a>(report: &'a Value, behaviour: &str) -> Vec<&'a Value> {
    report["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["behaviour"] == behaviour)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_settles_and_the_report_shows_the_policy() {
    // 2 s to check in and a 3 s lease for 200 ms beats: a machine that
    // stalls for a second or two neither misses a check-in nor lets a lease
    // lapse; the run still ends in seconds. The lease lapses 3 s after a
    // flaky agent stops.
    let server = server("2s", "3s", "200ms").await;
    let args = [
        "simulate",
        "--agents",
        "10",
        "--seed",
        "42",
        "--startup-delay",
        "100ms",
    ];
    let report = json(&server.endpoint, &args).await;

    assert_eq!(report["settled"], true, "{report:#}");
    assert_eq!(report["agents"], 10);
    for (behaviour, count) in [
        ("first-wake", 5),
        ("later-wake", 2),
        ("never", 2),
        ("flaky", 1),
    ] {
        assert_eq!(
            report["by_behaviour"][behaviour]["agents"], count,
            "{behaviour}"
        );
    }
    for agent in outcomes(&report, "first-wake") {
        assert_eq!(agent["status"], "online", "{agent}");
        assert!(agent["checkin_latency_ms"].as_u64().is_some(), "{agent}");
    }
    for agent in outcomes(&report, "later-wake") {
        assert_eq!(agent["status"], "online", "{agent}");
        assert!(
            matches!(agent["checkin_attempt"].as_u64(), Some(2 | 3)),
            "{agent}"
        );
    }
    for agent in outcomes(&report, "never") {
        assert_eq!(agent["status"], "offline", "{agent}");
        assert_eq!(agent["wake_attempts"], 3, "{agent}");
        assert_eq!(agent["offline_reason"], "no check-in after 3 wake attempts");
        assert_eq!(agent["checkin_latency_ms"], Value::Null);
    }
    for agent in outcomes(&report, "flaky") {
        assert_eq!(agent["status"], "offline", "{agent}");
        assert_eq!(agent["offline_reason"], "lease expired", "{agent}");
    }
    assert_eq!(report["online"], 7);
    assert_eq!(report["offline"], 3);
    assert_eq!(
        report["offline_reasons"]["no check-in after 3 wake attempts"],
        2
    );
    assert_eq!(report["offline_reasons"]["lease expired"], 1);
    // Every agent is woken once; only those not yet checked in again.
    assert_eq!(report["wakes_by_attempt"]["1"], 10);
    let third = report["wakes_by_attempt"]["3"].as_u64().unwrap_or(0);
    assert!(third >= 2, "the never agents get a third wake: {report:#}");
    assert_eq!(report["checkin_latency_ms"]["count"], 8);
    let latency = |field: &str| {
        report["checkin_latency_ms"][field]
            .as_u64()
            .unwrap_or_else(|| panic!("a latency {field}: {report:#}"))
    };
    assert!(latency("min") <= latency("median"), "{report:#}");
    assert!(latency("median") <= latency("max"), "{report:#}");

    // The service agrees: the never agents' history ends with max attempts.
    let never = outcomes(&report, "never")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let history = json(&server.endpoint, &["history", &never, "--limit", "1"]).await;
    assert_eq!(history[0]["reason"], "max_attempts_reached");

    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_reuses_the_gateway_and_duration_cuts_it_short() {
    // 30 s deadlines: with --duration, nothing settles; the run still ends.
    let server = server("30s", "30s", "10s").await;
    let args = [
        "simulate",
        "--agents",
        "4",
        "--never",
        "1",
        "--first-wake",
        "0",
        "--later-wake",
        "0",
        "--flaky",
        "0",
        "--duration",
        "300ms",
    ];
    for _ in 0..2 {
        let text = ok(&server.endpoint, &args).await;
        assert!(
            text.contains("simulated 4 agents on gateway sim-gw"),
            "{text}"
        );
        assert!(
            text.contains("stopped before every agent settled"),
            "{text}"
        );
        assert!(
            text.contains("never       4       0       0        4"),
            "{text}"
        );
    }
    let agents = json(&server.endpoint, &["list", "--gateway", "sim-gw"]).await;
    assert_eq!(
        agents.as_array().unwrap().len(),
        4,
        "re-provisioned, not duplicated"
    );
    assert_eq!(
        agents[0]["status"], "updating",
        "the second run re-provisioned them"
    );

    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_gateway_is_not_taken_over_unless_asked() {
    use futures_util::StreamExt;
    use mission_control_client::gateway::{GatewayClient, GatewayEvent};

    let server = server("30s", "30s", "10s").await;
    let token = server
        .operator
        .register_gateway("gw-real", "", false)
        .await
        .unwrap()
        .gateway_token;
    let mut real = GatewayClient::connect(&server.endpoint, &token)
        .unwrap()
        .events();
    let first = tokio::time::timeout(crate::support::PATIENCE, real.next()).await;
    assert!(matches!(first, Ok(Some(GatewayEvent::Connected { .. }))));

    let args = ["simulate", "--gateway", "gw-real", "--agents", "1"];
    let (code, stderr) = fails(&server.endpoint, &args).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is connected right now"), "{stderr}");
    let gateways = json(&server.endpoint, &["gateway", "list"]).await;
    assert_eq!(gateways[0]["connected"], true, "the real session goes on");
    assert!(
        server
            .operator
            .list(Default::default())
            .await
            .unwrap()
            .is_empty(),
        "nothing provisioned"
    );

    // A token of another gateway is refused before anything is provisioned.
    let other = server
        .operator
        .register_gateway("gw-other", "", false)
        .await
        .unwrap()
        .gateway_token;
    let args = [
        "simulate",
        "--gateway",
        "gw-real",
        "--gateway-token",
        &other,
        "--agents",
        "1",
    ];
    let (code, stderr) = fails(&server.endpoint, &args).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("belongs to gateway gw-other, not --gateway gw-real"),
        "{stderr}"
    );

    // With the gateway's own token it plays that gateway beside the real one.
    let args = [
        "simulate",
        "--gateway",
        "gw-real",
        "--gateway-token",
        &token,
        "--agents",
        "1",
        "--never",
        "1",
        "--first-wake",
        "0",
        "--later-wake",
        "0",
        "--flaky",
        "0",
        "--duration",
        "300ms",
    ];
    let text = ok(&server.endpoint, &args).await;
    assert!(
        text.contains("simulated 1 agents on gateway gw-real"),
        "{text}"
    );

    // --take-over re-keys it: the real gateway's stream ends, its token refused.
    let args = [
        "simulate",
        "--gateway",
        "gw-real",
        "--take-over",
        "--agents",
        "1",
        "--never",
        "1",
        "--first-wake",
        "0",
        "--later-wake",
        "0",
        "--flaky",
        "0",
        "--duration",
        "300ms",
    ];
    let text = ok(&server.endpoint, &args).await;
    assert!(
        text.contains("simulated 1 agents on gateway gw-real"),
        "{text}"
    );
    loop {
        match tokio::time::timeout(crate::support::PATIENCE, real.next()).await {
            Ok(Some(GatewayEvent::Rejected(mission_control_client::Error::TokenRejected(_)))) => {
                break;
            }
            Ok(Some(GatewayEvent::Disconnected { .. } | GatewayEvent::Connected { .. })) => {}
            Ok(Some(
                GatewayEvent::Wake { ack, .. }
                | GatewayEvent::Retire { ack, .. }
                | GatewayEvent::TemplateSync { ack, .. },
            )) => {
                let _ = ack.delivered().await;
            }
            other => panic!("expected the old token refused, got {other:?}"),
        }
    }
    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_makes_a_rollout_pause_itself() {
    use crate::support::{PATIENCE, Running, mcctl};
    // As above: deadlines and leases a stalled machine does not miss.
    let server = server("2s", "3s", "200ms").await;
    let endpoint = server.endpoint.as_str();
    let simulate = Running::spawn(
        endpoint,
        &[
            "simulate",
            "--agents",
            "10",
            "--first-wake",
            "1",
            "--later-wake",
            "0",
            "--never",
            "0",
            "--flaky",
            "0",
            "--keeps-old-template",
            "0.2",
            "--crashes-on-new-template",
            "0.1",
            "--duration",
            "10m",
            "--seed",
            "7",
            "--startup-delay",
            "100ms",
        ],
    );
    // Every agent online and reporting v1.
    let settled = async {
        loop {
            let listed = json(
                endpoint,
                &["list", "--gateway", "sim-gw", "--status", "online"],
            )
            .await;
            let drift = json(endpoint, &["drift", "--gateway", "sim-gw"]).await;
            if listed.as_array().unwrap().len() == 10 && drift["drifted"] == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(PATIENCE, settled)
        .await
        .expect("the fleet settles on v1");

    // One at a time, no failure tolerated: 3 of the 10 fail on v2, so it
    // pauses at the first of them with agents left untouched.
    let output = mcctl(
        endpoint,
        &[
            "-o",
            "json",
            "rollout",
            "start",
            "v2",
            "--gateway",
            "sim-gw",
            "--max-in-flight",
            "1",
            "--watch",
        ],
    )
    .await;
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stderr.contains("is paused: failure budget spent: 1 of 10"),
        "{stderr}"
    );
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "paused");
    assert!(last["overall"]["pending"].as_u64().unwrap() >= 1, "{last}");
    let failure = &last["failures"][0]["reason"];
    let reason = failure.as_str().unwrap();
    assert!(
        reason.contains("still reporting template version \"v1\"")
            || reason.contains("no check-in after 3 wake attempts"),
        "{reason}"
    );
    drop(simulate);
    server.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_outage_is_braked_and_no_agent_goes_offline() {
    // A 6 s lease for 200 ms beats: the brake's window is 0.3 s, so the
    // gateway is suspected seconds before any lease could lapse, and the
    // 8 s outage outlasts every lease.
    let server = server("2s", "6s", "200ms").await;
    let args = [
        "--output",
        "json",
        "simulate",
        "--agents",
        "10",
        "--seed",
        "7",
        "--first-wake",
        "1",
        "--later-wake",
        "0",
        "--never",
        "0",
        "--flaky",
        "0",
        "--startup-delay",
        "100ms",
        "--gateway-outage",
        "3s+8s",
    ];
    let output = crate::support::mcctl(&server.endpoint, &args).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert!(stderr.contains("gateway host down"), "{stderr}");
    assert!(
        stderr.contains("service says gateway sim-gw is suspected: 10 of 10 agents silent"),
        "{stderr}"
    );
    assert!(
        stderr.contains("agents marked offline during the outage: 0"),
        "{stderr}"
    );
    assert_eq!(report["online"], 10, "{report:#}");
    assert_eq!(report["offline"], 0, "no agent judged alone: {report:#}");
    let history = json(&server.endpoint, &["gateway", "history", "sim-gw"]).await;
    let text = history.to_string();
    assert!(text.contains("suspected"), "{history:#}");
    assert!(text.contains("recovered"), "{history:#}");
}
