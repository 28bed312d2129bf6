//! The fleet snapshot a watch starts from: pointers to the engine's agents,
//! never copies, taken at one revision and ordered by revision. Watchers
//! that open close together share one; each streams it with its own cursor.
//!
//! The engine's agents are `Arc`s that a change replaces (or copies, while
//! a snapshot holds them), so what a snapshot points at never changes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::{Agent, AgentId, Engine};

/// A snapshot is shared while at most this old...
const MAX_AGE: Duration = Duration::from_secs(1);
/// ...and at most this many revisions behind: a watcher replays the
/// changes since from stored history, a page or two.
const MAX_GAP: u64 = 1_000;

#[derive(Debug)]
pub(super) struct FleetSnapshot {
    /// The agents are as of this revision.
    pub(super) revision: u64,
    taken_at: Instant,
    pub(super) agents: Box<[Arc<Agent>]>,
}

impl FleetSnapshot {
    fn sorted(revision: u64, mut agents: Vec<Arc<Agent>>) -> Self {
        // Revisions increase along the whole stream, snapshot included; the
        // stable sort keeps ties in id order.
        agents.sort_by_key(|agent| agent.revision);
        Self {
            revision,
            taken_at: Instant::now(),
            agents: agents.into_boxed_slice(),
        }
    }

    /// One agent (or none): a watch of one agent id needs no fleet.
    pub(super) fn of_one(engine: &Engine, id: &AgentId) -> Self {
        let agents = engine.shared_agent(id).cloned().into_iter().collect();
        Self {
            revision: engine.revision(),
            taken_at: Instant::now(),
            agents,
        }
    }

    fn reusable(&self, current: u64, max_age: Duration) -> bool {
        self.revision <= current
            && current - self.revision <= MAX_GAP
            && self.taken_at.elapsed() <= max_age
    }
}

/// The latest fleet snapshot, held weakly: it lives while a watcher still
/// streams it (and [`MAX_AGE`] after it was taken, for the next watchers),
/// so the memory it pins is returned once the watchers are done with it.
#[derive(Debug, Default)]
pub(in crate::runtime) struct SnapshotCache {
    latest: tokio::sync::Mutex<Weak<FleetSnapshot>>,
}

impl SnapshotCache {
    /// A recent fleet snapshot, or a new one. Changes after its revision
    /// must still be in stored history: it is reused for at most half the
    /// retention (and [`MAX_AGE`]), so compaction cannot have reached them.
    pub(super) async fn get(
        &self,
        engine: &std::sync::Mutex<Engine>,
        retention: Duration,
    ) -> Arc<FleetSnapshot> {
        let max_age = MAX_AGE.min(retention / 2);
        // One build at a time: watchers opening together wait for it and
        // share it, instead of each copying the fleet's pointers.
        let mut latest = self.latest.lock().await;
        let (revision, agents) = {
            let engine = engine.lock().expect("engine lock poisoned");
            let current = engine.revision();
            if let Some(snapshot) = latest.upgrade()
                && snapshot.reusable(current, max_age)
            {
                return snapshot;
            }
            // Only the pointers are copied under the engine lock; the sort
            // runs after it is released.
            let agents: Vec<Arc<Agent>> = engine.shared_agents().cloned().collect();
            (current, agents)
        };
        let snapshot = Arc::new(FleetSnapshot::sorted(revision, agents));
        *latest = Arc::downgrade(&snapshot);
        // Kept for the watchers that open next, then let go.
        let keep = snapshot.clone();
        tokio::spawn(async move {
            tokio::time::sleep(max_age).await;
            drop(keep);
        });
        snapshot
    }
}

/// A watcher's place in a snapshot.
#[derive(Debug)]
pub(super) struct Cursor {
    snapshot: Arc<FleetSnapshot>,
    next: usize,
}

/// Agents passed over between yields, so a narrow filter scanning a large
/// fleet does not hold a worker thread.
const SCAN_BEFORE_YIELD: usize = 4_096;

impl Cursor {
    pub(super) fn new(snapshot: Arc<FleetSnapshot>) -> Self {
        Self { snapshot, next: 0 }
    }

    pub(super) fn revision(&self) -> u64 {
        self.snapshot.revision
    }

    /// The next agent that `wanted` accepts, or `None` at the end.
    pub(super) async fn next(&mut self, wanted: impl Fn(&Agent) -> bool) -> Option<Arc<Agent>> {
        let mut scanned = 0;
        while let Some(agent) = self.snapshot.agents.get(self.next) {
            self.next += 1;
            if wanted(agent) {
                return Some(agent.clone());
            }
            scanned += 1;
            if scanned % SCAN_BEFORE_YIELD == 0 {
                tokio::task::yield_now().await;
            }
        }
        None
    }
}
