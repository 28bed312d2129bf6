//! Rollouts and drift counts to their protocol messages.

use mission_control_proto::v1 as pb;

use super::super::convert::{opt_timestamp, timestamp};
use crate::engine::DriftReport;
use crate::engine::rollout::{Counts, Rollout, RolloutState, Selection};

fn state(s: RolloutState) -> pb::RolloutState {
    match s {
        RolloutState::Running => pb::RolloutState::Running,
        RolloutState::Paused => pb::RolloutState::Paused,
        RolloutState::Completed => pb::RolloutState::Completed,
        RolloutState::Cancelled => pb::RolloutState::Cancelled,
    }
}

fn counts(c: Counts) -> pb::RolloutCounts {
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    pb::RolloutCounts {
        agents: n(c.agents),
        pending: n(c.pending),
        in_flight: n(c.in_flight),
        done: n(c.done),
        failed: n(c.failed),
        skipped: n(c.skipped),
    }
}

pub fn rollout(r: &Rollout) -> pb::Rollout {
    let (gateway_id, board_id, agent_ids) = match &r.selection {
        Selection::Fleet {
            gateway_id,
            board_id,
        } => (
            gateway_id.as_ref().map(ToString::to_string),
            board_id.as_ref().map(ToString::to_string),
            Vec::new(),
        ),
        Selection::Agents(ids) => (None, None, ids.iter().map(ToString::to_string).collect()),
    };
    pb::Rollout {
        id: r.id.to_string(),
        template_version: r.template_version.clone(),
        gateway_id: gateway_id.unwrap_or_default(),
        board_id: board_id.unwrap_or_default(),
        agent_ids,
        state: state(r.state).into(),
        reason: r.reason.clone().unwrap_or_default(),
        max_in_flight: r.max_in_flight_asked.to_string(),
        max_in_flight_agents: r.max_in_flight,
        failure_budget: r.failure_budget_asked.to_string(),
        failure_budget_agents: r.failure_budget,
        overall: Some(counts(r.counts())),
        waves: r
            .waves
            .iter()
            .zip(r.wave_counts())
            .enumerate()
            .map(|(i, (wave, c))| pb::RolloutWave {
                number: i as u32 + 1,
                counts: Some(counts(c)),
                started_at: Some(timestamp(wave.started_at)),
                finished_at: opt_timestamp(wave.finished_at),
            })
            .collect(),
        failures: r
            .failures()
            .map(|(agent, wave, reason, at)| pb::RolloutFailure {
                agent_id: agent.to_string(),
                wave,
                reason: reason.to_owned(),
                at: Some(timestamp(at)),
            })
            .collect(),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        finished_at: opt_timestamp(r.finished_at),
    }
}

pub fn drift(report: &DriftReport) -> pb::GetDriftResponse {
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let count = |id: String, c: &crate::engine::DriftCount| pb::DriftCount {
        id,
        agents: n(c.agents),
        drifted: n(c.drifted),
    };
    pb::GetDriftResponse {
        gateways: report
            .gateways
            .iter()
            .map(|(id, c)| count(id.to_string(), c))
            .collect(),
        boards: report
            .boards
            .iter()
            .map(|(id, c)| count(id.to_string(), c))
            .collect(),
        drifted: n(report.drifted()),
    }
}
