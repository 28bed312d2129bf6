//! Template rollouts: a template version re-provisioned over a selection of
//! agents, wave by wave, stopping by itself when too many of them fail.
//!
//! A rollout is state like an agent's: staged in a batch, committed with
//! it, and only then visible. The engine drives it from the transitions of
//! the agents in flight (see `drive.rs`), so it needs no timers of its own:
//! the check-in policy already decides when an agent is done or offline.

mod drive;

use serde::{Deserialize, Serialize};

use super::model::{AgentId, BoardId, GatewayId, RolloutId, Timestamp};

/// Which agents a rollout covers. A gateway and a board combine (the
/// board's agents on that gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    Fleet {
        gateway_id: Option<GatewayId>,
        board_id: Option<BoardId>,
    },
    Agents(Vec<AgentId>),
}

/// A number of agents, or a share (in percent) of the selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Count(u32),
    Percent(u32),
}

impl Limit {
    /// The count for a selection of `total` agents; a share rounds up when
    /// `round_up` (in flight: at least one agent moves), down otherwise (a
    /// failure budget never grows by rounding).
    pub fn resolve(self, total: usize, round_up: bool) -> u32 {
        match self {
            Limit::Count(n) => n,
            Limit::Percent(p) => {
                let scaled = total as u64 * u64::from(p.min(100));
                let n = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A validated request to start a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    pub template_version: String,
    pub selection: Selection,
    /// Agents awaiting their check-in at once, at most (one wave).
    pub max_in_flight: Limit,
    /// Failed agents tolerated; one more pauses the rollout.
    pub failure_budget: Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// By an operator, or by itself when its failure budget was spent:
    /// agents in flight are still judged, no new wave starts.
    Paused,
    /// Every agent done, failed or skipped.
    Completed,
    /// By an operator: no new wave starts, agents in flight keep their wake
    /// cycle but are no longer judged.
    Cancelled,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::Cancelled => "cancelled",
        }
    }

    /// Running or paused: its agents may not join another rollout.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

/// Where one agent is in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// Not touched yet.
    Pending,
    /// Re-provisioned in `wave` (1-based) at `generation`; its check-in is
    /// awaited.
    InFlight { wave: u32, generation: u64 },
    /// Checked in reporting the rollout's version.
    Done { wave: u32, at: Timestamp },
    /// Went offline, or checked in reporting another version.
    Failed {
        wave: u32,
        reason: String,
        at: Timestamp,
    },
    /// Not re-provisioned: already on the version, or deleted before its
    /// wave. Not a failure.
    Skipped { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutAgent {
    pub agent_id: AgentId,
    pub progress: Progress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub started_at: Timestamp,
    /// When its last agent was judged.
    pub finished_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: RolloutId,
    pub template_version: String,
    pub selection: Selection,
    /// As asked, and as resolved against the selection's size at start.
    pub max_in_flight_asked: Limit,
    pub max_in_flight: u32,
    pub failure_budget_asked: Limit,
    pub failure_budget: u32,
    pub state: RolloutState,
    /// Why it is paused or cancelled.
    pub reason: Option<String>,
    /// In agent id order.
    pub agents: Vec<RolloutAgent>,
    pub waves: Vec<Wave>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

/// How many agents are where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub agents: usize,
    pub pending: usize,
    pub in_flight: usize,
    pub done: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Counts {
    fn add(&mut self, progress: &Progress) {
        self.agents += 1;
        match progress {
            Progress::Pending => self.pending += 1,
            Progress::InFlight { .. } => self.in_flight += 1,
            Progress::Done { .. } => self.done += 1,
            Progress::Failed { .. } => self.failed += 1,
            Progress::Skipped { .. } => self.skipped += 1,
        }
    }
}

impl Progress {
    pub fn wave(&self) -> Option<u32> {
        match self {
            Progress::InFlight { wave, .. }
            | Progress::Done { wave, .. }
            | Progress::Failed { wave, .. } => Some(*wave),
            Progress::Pending | Progress::Skipped { .. } => None,
        }
    }
}

impl Rollout {
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        self.agents.iter().for_each(|a| counts.add(&a.progress));
        counts
    }

    /// Counts per wave, wave 1 first.
    pub fn wave_counts(&self) -> Vec<Counts> {
        let mut waves = vec![Counts::default(); self.waves.len()];
        for agent in &self.agents {
            if let Some(wave) = agent.progress.wave()
                && let Some(counts) = waves.get_mut(wave as usize - 1)
            {
                counts.add(&agent.progress);
            }
        }
        waves
    }

    /// The agents that failed, with why, in id order.
    pub fn failures(&self) -> impl Iterator<Item = (&AgentId, u32, &str, Timestamp)> {
        self.agents.iter().filter_map(|a| match &a.progress {
            Progress::Failed { wave, reason, at } => {
                Some((&a.agent_id, *wave, reason.as_str(), *at))
            }
            _ => None,
        })
    }

    pub fn contains(&self, agent: &AgentId) -> bool {
        self.agents.iter().any(|a| a.agent_id == *agent)
    }
}

/// Why a rollout cannot start or change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("rollout {0} not found")]
    NotFound(RolloutId),
    #[error("gateway {0} is not registered")]
    UnknownGateway(GatewayId),
    #[error("board {0} has no agents")]
    UnknownBoard(BoardId),
    #[error("agent {0} not found")]
    UnknownAgent(AgentId),
    #[error("the selection holds no agents")]
    EmptySelection,
    #[error(
        "{count} of the selected agents are already in active rollout {rollout} (e.g. {example})"
    )]
    Overlap {
        rollout: RolloutId,
        example: AgentId,
        count: usize,
    },
    #[error("{0}")]
    InvalidState(String),
}
