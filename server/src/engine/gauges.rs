//! The fleet's gauges for `/metrics`, counted a slice of agents at a time.
//!
//! A scrape that walked every agent under the engine lock held it for about
//! a quarter of a second at 1,000,000 agents, and every heartbeat waited
//! behind it (`scripts/storm-bench`: heartbeat p99 164 ms in the window
//! with the scrape, 13 ms in the storm itself). Between slices heartbeats
//! and commits go on, so the counts are of no single instant: an agent that
//! changes between two slices may be counted in its old state or its new
//! one, which a gauge can live with.

use std::ops::Bound::{Excluded, Unbounded};

use super::model::{AgentId, Status};
use super::{DriftReport, Engine};

/// Agents per status, wakes held, and drift per gateway and board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentGauges {
    pub by_status: [(Status, usize); 4],
    pub wakes_held: usize,
    pub drift: DriftReport,
}

impl Default for AgentGauges {
    fn default() -> Self {
        AgentGauges {
            by_status: Status::ALL.map(|status| (status, 0)),
            wakes_held: 0,
            drift: DriftReport::default(),
        }
    }
}

impl Engine {
    /// Counts up to `limit` agents with ids after `after` into `gauges`, and
    /// returns the id to go on from, or `None` once every agent is counted
    /// (then registered gateways without agents are listed at zero, as
    /// [`Engine::drift`] lists them).
    pub fn count_agents(
        &self,
        gauges: &mut AgentGauges,
        after: Option<&AgentId>,
        limit: usize,
    ) -> Option<AgentId> {
        let start = after.map_or(Unbounded, Excluded);
        let mut counted = 0;
        let mut last = None;
        for (id, agent) in self.agents.range((start, Unbounded)).take(limit) {
            if let Some(slot) = gauges
                .by_status
                .iter_mut()
                .find(|(s, _)| *s == agent.status)
            {
                slot.1 += 1;
            }
            gauges.wakes_held += usize::from(agent.wake_held);
            gauges.drift.count(agent);
            counted += 1;
            last = Some(id);
        }
        if counted == limit {
            return last.cloned();
        }
        for id in self.gateways.keys() {
            gauges.drift.gateways.entry(id.clone()).or_default();
        }
        None
    }
}
