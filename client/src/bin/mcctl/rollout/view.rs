//! How a rollout looks: JSON for scripts, a summary for people, and the
//! one-line progress bar redrawn on a terminal.

use mission_control_client::{GetDriftResponse, Rollout, RolloutCounts, RolloutState};
use serde_json::{Value, json};

use crate::time::rfc3339_or_null;

pub fn state(value: i32) -> &'static str {
    match RolloutState::try_from(value) {
        Ok(RolloutState::Running) => "running",
        Ok(RolloutState::Paused) => "paused",
        Ok(RolloutState::Completed) => "completed",
        Ok(RolloutState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

fn counts_json(counts: &RolloutCounts) -> Value {
    json!({
        "agents": counts.agents,
        "pending": counts.pending,
        "in_flight": counts.in_flight,
        "done": counts.done,
        "failed": counts.failed,
        "skipped": counts.skipped,
    })
}

pub fn json(rollout: &Rollout) -> Value {
    let overall = rollout.overall.unwrap_or_default();
    json!({
        "id": rollout.id,
        "template_version": rollout.template_version,
        "gateway_id": rollout.gateway_id,
        "board_id": rollout.board_id,
        "agent_ids": rollout.agent_ids,
        "state": state(rollout.state),
        "reason": rollout.reason,
        "max_in_flight": rollout.max_in_flight,
        "max_in_flight_agents": rollout.max_in_flight_agents,
        "failure_budget": rollout.failure_budget,
        "failure_budget_agents": rollout.failure_budget_agents,
        "overall": counts_json(&overall),
        "waves": rollout.waves.iter().map(|wave| json!({
            "number": wave.number,
            "counts": counts_json(&wave.counts.unwrap_or_default()),
            "started_at": rfc3339_or_null(&wave.started_at),
            "finished_at": rfc3339_or_null(&wave.finished_at),
        })).collect::<Vec<_>>(),
        "failures": rollout.failures.iter().map(|f| json!({
            "agent_id": f.agent_id,
            "wave": f.wave,
            "reason": f.reason,
            "at": rfc3339_or_null(&f.at),
        })).collect::<Vec<_>>(),
        "created_at": rfc3339_or_null(&rollout.created_at),
        "updated_at": rfc3339_or_null(&rollout.updated_at),
        "finished_at": rfc3339_or_null(&rollout.finished_at),
    })
}

fn selection(rollout: &Rollout) -> String {
    match (
        rollout.gateway_id.as_str(),
        rollout.board_id.as_str(),
        rollout.agent_ids.len(),
    ) {
        (_, _, n) if n > 0 => format!("{n} named agents"),
        (gateway, "", _) => format!("gateway {gateway}"),
        ("", board, _) => format!("board {board}"),
        (gateway, board, _) => format!("board {board} on gateway {gateway}"),
    }
}

/// The whole rollout for people: a header, one line per wave, the failures.
pub fn summary(rollout: &Rollout) -> String {
    let overall = rollout.overall.unwrap_or_default();
    let mut text = format!(
        "rollout {}  {}  template {} over {}\n",
        rollout.id,
        state(rollout.state),
        rollout.template_version,
        selection(rollout)
    );
    if !rollout.reason.is_empty() {
        text.push_str(&format!("  why: {}\n", rollout.reason));
    }
    text.push_str(&format!(
        "  max in flight {} ({} agents), failure budget {} ({} agents)\n",
        rollout.max_in_flight,
        rollout.max_in_flight_agents,
        rollout.failure_budget,
        rollout.failure_budget_agents
    ));
    text.push_str(&format!("  {}\n", bar(&overall, 30)));
    text.push_str("  WAVE  AGENTS  DONE  FAILED  IN FLIGHT\n");
    for wave in &rollout.waves {
        let c = wave.counts.unwrap_or_default();
        text.push_str(&format!(
            "  {:<4}  {:<6}  {:<4}  {:<6}  {}\n",
            wave.number, c.agents, c.done, c.failed, c.in_flight
        ));
    }
    if !rollout.failures.is_empty() {
        text.push_str("  failed agents:\n");
        for failure in &rollout.failures {
            text.push_str(&format!(
                "    {}  (wave {})  {}\n",
                failure.agent_id, failure.wave, failure.reason
            ));
        }
    }
    text
}

/// `[#######.............] 35/100 done, 2 failed, 10 in flight, 53 pending`
pub fn bar(counts: &RolloutCounts, width: usize) -> String {
    let total = counts.agents.max(1) as usize;
    let finished = (counts.done + counts.failed + counts.skipped) as usize;
    let filled = (finished * width / total).min(width);
    format!(
        "[{}{}] {}/{} done, {} failed, {} in flight, {} pending{}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        counts.done,
        counts.agents,
        counts.failed,
        counts.in_flight,
        counts.pending,
        match counts.skipped {
            0 => String::new(),
            n => format!(", {n} skipped"),
        }
    )
}

/// The line a live view redraws in place.
pub fn progress_line(rollout: &Rollout) -> String {
    let overall = rollout.overall.unwrap_or_default();
    format!(
        "{} {:<9} wave {:<3} {}",
        rollout.id,
        state(rollout.state),
        rollout.waves.len(),
        bar(&overall, 30)
    )
}

pub fn list(rollouts: &[Rollout]) -> String {
    let mut text =
        String::from("ID           STATE      VERSION       DONE  FAILED  AGENTS  SELECTION\n");
    for r in rollouts {
        let c = r.overall.unwrap_or_default();
        text.push_str(&format!(
            "{:<12} {:<10} {:<13} {:<5} {:<7} {:<7} {}\n",
            r.id,
            state(r.state),
            r.template_version,
            c.done,
            c.failed,
            c.agents,
            selection(r)
        ));
    }
    text
}

pub fn drift_json(drift: &GetDriftResponse) -> Value {
    let rows = |counts: &[mission_control_client::DriftCount]| {
        counts
            .iter()
            .map(|c| json!({"id": c.id, "agents": c.agents, "drifted": c.drifted}))
            .collect::<Vec<_>>()
    };
    json!({
        "drifted": drift.drifted,
        "gateways": rows(&drift.gateways),
        "boards": rows(&drift.boards),
    })
}

pub fn drift_table(drift: &GetDriftResponse) -> String {
    let mut text = String::from("SCOPE    ID                    AGENTS  DRIFTED\n");
    for (scope, counts) in [("gateway", &drift.gateways), ("board", &drift.boards)] {
        for c in counts {
            text.push_str(&format!(
                "{scope:<8} {:<21} {:<7} {}\n",
                c.id, c.agents, c.drifted
            ));
        }
    }
    text.push_str(&format!("{} drifted in all\n", drift.drifted));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_finished_agents() {
        let counts = RolloutCounts {
            agents: 100,
            pending: 53,
            in_flight: 10,
            done: 35,
            failed: 2,
            skipped: 0,
        };
        assert_eq!(
            bar(&counts, 10),
            "[###.......] 35/100 done, 2 failed, 10 in flight, 53 pending"
        );
        let all = RolloutCounts {
            agents: 3,
            done: 2,
            skipped: 1,
            ..Default::default()
        };
        assert!(bar(&all, 4).starts_with("[####]"));
    }

    #[test]
    fn json_names_the_state_and_every_failure() {
        let rollout = Rollout {
            id: "ro-1".into(),
            state: RolloutState::Paused as i32,
            reason: "failure budget spent".into(),
            failures: vec![mission_control_client::RolloutFailure {
                agent_id: "a1".into(),
                wave: 2,
                reason: "lease expired".into(),
                at: None,
            }],
            ..Default::default()
        };
        let value = json(&rollout);
        assert_eq!(value["state"], "paused");
        assert_eq!(value["failures"][0]["agent_id"], "a1");
        assert_eq!(value["failures"][0]["wave"], 2);
        assert!(summary(&rollout).contains("a1  (wave 2)  lease expired"));
    }
}
