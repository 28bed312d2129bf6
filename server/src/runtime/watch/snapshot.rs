//! The fleet snapshot a watch starts from: pointers to the engine's agents,
//! never copies, taken at one revision and ordered by revision. Watchers
//! that open close together share one; each streams it with its own cursor.
//!
//! The engine's agents are `Arc`s that a change replaces (or copies, while
//! a snapshot holds them), so what a snapshot points at never changes.
//! Watchers of the whole fleet stream it by pages, and each page keeps the
//! encoding the first of them made, so 1,000 watchers send the same bytes
//! instead of encoding (and buffering) 1,000 copies.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::engine::{Agent, AgentId, Engine};
use crate::runtime::engine_lock::EngineLock;

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
    /// Each page's encoding, made by the first watcher that sends it.
    encoded_pages: Box<[OnceLock<Bytes>]>,
    /// The snapshot taken before this one: a page whose agents are the
    /// same (the same pointers: unchanged) reuses its encoding.
    previous: Weak<FleetSnapshot>,
}

/// Agents in a page of a snapshot streamed whole.
pub(super) const PAGE: usize = 256;

fn page_slots(agents: usize) -> Box<[OnceLock<Bytes>]> {
    (0..agents.div_ceil(PAGE))
        .map(|_| OnceLock::new())
        .collect()
}

impl FleetSnapshot {
    fn sorted(revision: u64, mut agents: Vec<Arc<Agent>>) -> Self {
        // Revisions increase along the whole stream, snapshot included; the
        // stable sort keeps ties in id order.
        agents.sort_by_key(|agent| agent.revision);
        Self {
            revision,
            taken_at: Instant::now(),
            encoded_pages: page_slots(agents.len()),
            agents: agents.into_boxed_slice(),
            previous: Weak::new(),
        }
    }

    /// One agent (or none): a watch of one agent id needs no fleet.
    pub(super) fn of_one(engine: &Engine, id: &AgentId) -> Self {
        let agents: Box<[Arc<Agent>]> = engine.shared_agent(id).cloned().into_iter().collect();
        Self {
            revision: engine.revision(),
            taken_at: Instant::now(),
            encoded_pages: page_slots(agents.len()),
            agents,
            previous: Weak::new(),
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
    pub(super) async fn get(&self, engine: &EngineLock, retention: Duration) -> Arc<FleetSnapshot> {
        let max_age = MAX_AGE.min(retention / 2);
        // One build at a time: watchers opening together wait for it and
        // share it, instead of each copying the fleet's pointers.
        let mut latest = self.latest.lock().await;
        let (revision, agents) = {
            let engine = engine.lock();
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
        let snapshot = Arc::new(FleetSnapshot {
            previous: latest.clone(),
            ..FleetSnapshot::sorted(revision, agents)
        });
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

    /// The next page of agents, or `None` at the end. A cursor streams its
    /// snapshot by pages or by agents, not both.
    pub(super) fn next_page(&mut self) -> Option<SnapshotPage> {
        if self.next >= self.snapshot.agents.len() {
            return None;
        }
        let index = self.next / PAGE;
        self.next = ((index + 1) * PAGE).min(self.snapshot.agents.len());
        Some(SnapshotPage {
            snapshot: self.snapshot.clone(),
            index,
        })
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

/// Up to `PAGE` consecutive agents of a snapshot, in revision order, for a
/// watcher of the whole fleet.
#[derive(Debug, Clone)]
pub struct SnapshotPage {
    snapshot: Arc<FleetSnapshot>,
    index: usize,
}

impl SnapshotPage {
    pub fn agents(&self) -> &[Arc<Agent>] {
        let start = self.index * PAGE;
        let end = (start + PAGE).min(self.snapshot.agents.len());
        &self.snapshot.agents[start..end]
    }

    /// The page's encoding: `encode`'s, made once for every watcher that
    /// streams this snapshot, and kept as long as the snapshot is.
    pub fn encoded(&self, encode: impl FnOnce(&[Arc<Agent>]) -> Bytes) -> Bytes {
        let slot = &self.snapshot.encoded_pages[self.index];
        if let Some(bytes) = slot.get() {
            return bytes.clone();
        }
        if let Some(bytes) = self.unchanged_in_previous() {
            return slot.get_or_init(|| bytes).clone();
        }
        // Encoded outside the slot: watchers racing for a page both encode
        // it (alike) rather than block a worker thread on the other.
        let bytes = encode(self.agents());
        slot.get_or_init(|| bytes).clone()
    }

    /// The encoding of the same page of the snapshot taken before, if that
    /// page holds the same agents: watchers of an unchanged fleet that open
    /// more than a snapshot's age apart share one encoding of it.
    fn unchanged_in_previous(&self) -> Option<Bytes> {
        let previous = SnapshotPage {
            snapshot: self.snapshot.previous.upgrade()?,
            index: self.index,
        };
        let bytes = previous
            .snapshot
            .encoded_pages
            .get(self.index)?
            .get()?
            .clone();
        let (agents, before) = (self.agents(), previous.agents());
        let unchanged = agents.len() == before.len()
            && agents.iter().zip(before).all(|(a, b)| Arc::ptr_eq(a, b));
        unchanged.then_some(bytes)
    }
}
