//! Template drift: agents that run another template than they should.

use std::collections::BTreeMap;

use super::model::{Agent, BoardId, GatewayId};
use super::{AgentFilter, Engine};

/// How many agents a gateway or board holds, and how many of them drifted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriftCount {
    pub agents: usize,
    pub drifted: usize,
}

/// Drift counts per gateway and per board (agents without a board count
/// for their gateway only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftReport {
    pub gateways: BTreeMap<GatewayId, DriftCount>,
    pub boards: BTreeMap<BoardId, DriftCount>,
}

impl DriftReport {
    pub fn drifted(&self) -> usize {
        self.gateways.values().map(|count| count.drifted).sum()
    }
}

impl Engine {
    /// Counts drifted agents per gateway and board. Registered gateways
    /// without agents are listed with zero counts.
    pub fn drift(&self) -> DriftReport {
        self.drift_of(&AgentFilter::default())
    }

    /// The same, among the agents `filter` matches (its drift flag aside).
    pub fn drift_of(&self, filter: &AgentFilter) -> DriftReport {
        let filter = AgentFilter {
            drifted: false,
            ..filter.clone()
        };
        let empty_gateways_count = filter.board_id.is_none() && filter.statuses.is_empty();
        let mut report = DriftReport {
            gateways: self
                .gateways
                .keys()
                .filter(|id| {
                    empty_gateways_count && filter.gateway_id.as_ref().is_none_or(|g| g == *id)
                })
                .map(|id| (id.clone(), DriftCount::default()))
                .collect(),
            boards: BTreeMap::new(),
        };
        for agent in self.agents.values().filter(|a| filter.matches(a)) {
            report.count(agent);
        }
        report
    }
}

impl DriftReport {
    /// Counts one agent for its gateway and its board.
    pub(super) fn count(&mut self, agent: &Agent) {
        let drifted = usize::from(agent.drifted());
        let count = |slot: &mut DriftCount| {
            slot.agents += 1;
            slot.drifted += drifted;
        };
        count(self.gateways.entry(agent.gateway_id.clone()).or_default());
        if let Some(board) = &agent.board_id {
            count(self.boards.entry(board.clone()).or_default());
        }
    }
}
