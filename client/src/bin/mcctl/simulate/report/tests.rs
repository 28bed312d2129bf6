use super::*;

fn outcome(id: &str, behaviour: Behaviour, status: &str, attempts: u32, reason: &str) -> Outcome {
    Outcome {
        id: id.into(),
        behaviour,
        status: status.into(),
        wake_attempts: attempts,
        offline_reason: reason.into(),
        last_provision_error: reason.into(),
        checkin_latency: None,
    }
}

fn report() -> Report {
    let never = "no check-in after 3 wake attempts";
    Report {
        gateway_id: "sim-gw".into(),
        seed: 1,
        elapsed: Duration::from_secs(17),
        settled: true,
        tally: Tally {
            wakes_by_attempt: BTreeMap::from([(1, 4), (2, 2), (3, 2)]),
            checkin_latencies: [30, 10, 20, 40].map(Duration::from_millis).to_vec(),
            template_plays: BTreeMap::new(),
        },
        outcomes: vec![
            outcome("sim-0001", Behaviour::FirstWake, "online", 0, ""),
            outcome("sim-0002", Behaviour::Never, "offline", 3, never),
            outcome("sim-0003", Behaviour::Never, "offline", 3, never),
            outcome("sim-0004", Behaviour::Flaky, "offline", 0, "lease expired"),
        ],
    }
}

#[test]
fn latency_summary_takes_the_middle_of_the_sorted_values() {
    let ms = |v: &[u64]| {
        v.iter()
            .copied()
            .map(Duration::from_millis)
            .collect::<Vec<_>>()
    };
    assert_eq!(latency_summary(&[]), None);
    assert_eq!(
        latency_summary(&ms(&[5])),
        Some(ms(&[5, 5, 5]).try_into().unwrap())
    );
    assert_eq!(
        latency_summary(&ms(&[40, 10, 30, 20])),
        Some(ms(&[10, 25, 40]).try_into().unwrap())
    );
}

#[test]
fn the_json_report_counts_outcomes_by_status_reason_and_behaviour() {
    let value = report().to_json();
    assert_eq!(value["agents"], 4);
    assert_eq!(value["online"], 1);
    assert_eq!(value["offline"], 3);
    assert_eq!(value["wakes_total"], 8);
    assert_eq!(value["wakes_by_attempt"]["3"], 2);
    assert_eq!(value["checkin_latency_ms"]["median"], 25);
    assert_eq!(value["offline_reasons"]["lease expired"], 1);
    assert_eq!(
        value["offline_reasons"]["no check-in after 3 wake attempts"],
        2
    );
    assert_eq!(value["by_behaviour"]["never"]["offline"], 2);
    assert_eq!(value["by_behaviour"]["later-wake"]["agents"], 0);
    assert_eq!(value["outcomes"][1]["wake_attempts"], 3);
    assert_eq!(value["outcomes"][0]["checkin_attempt"], 1);
    assert_eq!(value["outcomes"][1]["checkin_attempt"], Value::Null);
}

#[test]
fn the_text_report_reads_top_down() {
    let text = report().to_text();
    assert!(text.starts_with("simulated 4 agents on gateway sim-gw for 17s (every agent settled"));
    assert!(text.contains("wakes received:   8 (attempt 1: 4, attempt 2: 2, attempt 3: 2)"));
    assert!(text.contains("min 10ms, median 25ms, max 40ms over 4 check-ins"));
    assert!(text.contains("     2 offline because: no check-in after 3 wake attempts"));
    assert!(
        text.contains("never       2       0       2        0"),
        "{text}"
    );
}
