//! An in-memory store: no setup, nothing survives the process. For `--dev`
//! and for tests, which can also make it fail on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Candidate, Changes, ChangesRequest, Directory, LeaderInfo, RowChanges, Store, StoreError,
};
use crate::engine::rollout::Rollout;
use crate::engine::{
    Agent, AgentId, Batch, Event, Gateway, GatewayId, GatewayTransition, LeaseCheckpoint,
    PendingRetire, PendingSync, RolloutId, Status, StoredLease, StoredState, Timestamp,
};

/// One replica's handle on the in-memory data; [`MemoryStore::replica`]
/// gives another replica a handle on the same data, with its own lease.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    /// The epoch this handle leads with; 0 while it does not lead.
    epoch: AtomicU64,
    /// While set, this handle's lease calls fail, as for a replica cut off
    /// from the database (or stalled).
    lease_cut_off: AtomicBool,
    /// What the last refused acquisition saw left of the lease.
    free_in: Mutex<Option<std::time::Duration>>,
    notify: Arc<Notify>,
    /// While set, this handle's notifications are lost.
    muted: Arc<AtomicBool>,
}

/// The lease, on tokio's clock: the "database clock" of this store.
#[derive(Debug, Default)]
struct Lease {
    epoch: u64,
    holder: String,
    address: String,
    expires_at: Option<Instant>,
}

impl Lease {
    fn held(&self) -> bool {
        self.expires_at.is_some_and(|at| Instant::now() < at)
    }
}

#[derive(Debug, Default)]
struct State {
    agents: BTreeMap<AgentId, Agent>,
    gateways: BTreeMap<GatewayId, Gateway>,
    retires: BTreeSet<PendingRetire>,
    tombstones: BTreeMap<AgentId, u64>,
    rollouts: BTreeMap<RolloutId, Rollout>,
    syncs: BTreeMap<GatewayId, PendingSync>,
    events: BTreeMap<u64, Event>,
    gateway_events: Vec<GatewayTransition>,
    last_revision: u64,
    /// The last lease checkpoint, and the one that last wrote each agent's
    /// lease (as `lease_clock` and `agents.lease_checkpoint` in Postgres).
    lease_clock: u64,
    lease_stamps: BTreeMap<AgentId, u64>,
    compacted_revision: u64,
    /// While set, every call fails as if the database were down.
    unavailable: bool,
    /// While set, commits are written but reported as failed, like a
    /// connection lost before the answer to COMMIT arrived.
    lose_commit_answers: bool,
    /// This many next commits fail without writing anything, like a
    /// statement Postgres refused.
    failing_commits: u32,
    /// How long each commit takes, like a loaded database.
    commit_delay: std::time::Duration,
    /// How long each load takes, like a large fleet read at start.
    load_delay: std::time::Duration,
    /// How long each ping takes, like a database on a starved machine.
    ping_delay: std::time::Duration,
    commits: u64,
    checkpoints: u64,
    lease: Lease,
    /// Every handle's notifier, told of each commit unless it is muted.
    listeners: Vec<(Arc<Notify>, Arc<AtomicBool>)>,
}

impl MemoryStore {
    pub fn new() -> Self {
        let store = Self::default();
        store.listen();
        store
    }

    /// Another replica's handle on the same data.
    pub fn replica(&self) -> Self {
        let store = Self {
            state: self.state.clone(),
            ..Self::default()
        };
        store.listen();
        store
    }

    fn listen(&self) {
        let listener = (self.notify.clone(), self.muted.clone());
        self.lock().listeners.push(listener);
    }

    /// Makes this handle's commit notifications get lost (or not).
    pub fn set_notifications_lost(&self, lost: bool) {
        self.muted.store(lost, Ordering::SeqCst);
    }

    /// Makes this handle's lease calls fail (or succeed again).
    pub fn set_lease_cut_off(&self, cut_off: bool) {
        self.lease_cut_off.store(cut_off, Ordering::SeqCst);
    }

    /// The epoch of the current lease, held or not.
    pub fn lease_epoch(&self) -> u64 {
        self.lock().lease.epoch
    }

    fn fenced<'a>(
        &self,
        state: std::sync::MutexGuard<'a, State>,
    ) -> Result<std::sync::MutexGuard<'a, State>, StoreError> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if epoch == 0 || state.lease.epoch != epoch || !state.lease.held() {
            return Err(super::lease::not_leader());
        }
        Ok(state)
    }

    fn lease_reachable(&self) -> Result<(), StoreError> {
        if self.lease_cut_off.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("cut off from the store".into()));
        }
        Ok(())
    }

    /// Makes every call fail (or succeed again), like a database outage.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// Makes every commit take this long (in tokio time).
    pub fn set_commit_delay(&self, delay: std::time::Duration) {
        self.lock().commit_delay = delay;
    }

    /// Makes every load take this long (in tokio time).
    pub fn set_load_delay(&self, delay: std::time::Duration) {
        self.lock().load_delay = delay;
    }

    /// Makes every ping take this long (in tokio time).
    pub fn set_ping_delay(&self, delay: std::time::Duration) {
        self.lock().ping_delay = delay;
    }

    /// Makes the next `count` commits fail without writing anything.
    pub fn fail_next_commits(&self, count: u32) {
        self.lock().failing_commits = count;
    }

    /// Makes commits succeed but report failure (or stop doing so).
    pub fn set_lose_commit_answers(&self, lose: bool) {
        self.lock().lose_commit_answers = lose;
    }

    /// How many commits and checkpoints have been written.
    pub fn write_counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.commits, state.checkpoints)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory store lock poisoned")
    }

    fn available(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        let state = self.lock();
        if state.unavailable {
            return Err(StoreError::Unavailable("memory store switched off".into()));
        }
        Ok(state)
    }
}

impl MemoryStore {
    async fn commit_batch(&self, batch: &Batch) -> Result<(), StoreError> {
        let delay = self.lock().commit_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.fenced(self.available()?)?;
        if state.failing_commits > 0 {
            state.failing_commits -= 1;
            return Err(StoreError::Unavailable("a commit failed on purpose".into()));
        }
        // Check before writing anything: all or nothing.
        if let Some(event) = batch
            .events()
            .iter()
            .find(|e| e.revision <= state.last_revision)
        {
            return Err(StoreError::Conflict(format!(
                "revision {} is already taken",
                event.revision
            )));
        }
        for (id, agent) in batch.agent_writes() {
            match agent {
                Some(agent) => {
                    // As in Postgres: last_seen_at never moves backwards.
                    let mut agent = agent.clone();
                    let stored = state.agents.get(id).and_then(|a| a.last_seen_at);
                    agent.last_seen_at = agent.last_seen_at.max(stored);
                    state.agents.insert(id.clone(), agent)
                }
                None => {
                    state.lease_stamps.remove(id);
                    state.agents.remove(id)
                }
            };
        }
        let lease_only = batch.lease_only_writes();
        if !lease_only.is_empty() {
            state.lease_clock += 1;
            for id in lease_only {
                let clock = state.lease_clock;
                state.lease_stamps.insert(id.clone(), clock);
            }
        }
        for gateway in batch.gateway_writes() {
            state.gateways.insert(gateway.id.clone(), gateway.clone());
        }
        state
            .gateway_events
            .extend(batch.gateway_events().iter().cloned());
        for retire in batch.retires_done() {
            state.retires.remove(retire);
        }
        state.retires.extend(batch.retires_added().iter().cloned());
        for (id, generation) in batch.tombstones() {
            let reached = state.tombstones.entry(id.clone()).or_default();
            *reached = (*reached).max(*generation);
        }
        for rollout in batch.rollout_writes() {
            state.rollouts.insert(rollout.id.clone(), rollout.clone());
        }
        for (gateway, sync) in batch.template_sync_writes() {
            match sync {
                Some(sync) => state.syncs.insert(gateway.clone(), sync.clone()),
                None => state.syncs.remove(gateway),
            };
        }
        for event in batch.events() {
            state.last_revision = event.revision;
            state.events.insert(event.revision, event.clone());
        }
        state.commits += 1;
        if !batch.events().is_empty() {
            for (notify, muted) in &state.listeners {
                if !muted.load(Ordering::SeqCst) {
                    notify.notify_one();
                }
            }
        }
        if state.lose_commit_answers {
            return Err(StoreError::Unavailable(
                "connection lost before COMMIT was answered".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self) -> Result<StoredState, StoreError> {
        let delay = self.lock().load_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let state = self.available()?;
        Ok(StoredState {
            agents: state.agents.values().cloned().collect(),
            gateways: state.gateways.values().cloned().collect(),
            pending_retires: state.retires.iter().cloned().collect(),
            tombstones: state
                .tombstones
                .iter()
                .map(|(id, g)| (id.clone(), *g))
                .collect(),
            revision: state.last_revision,
            rollouts: state.rollouts.values().cloned().collect(),
            checkpoint: state.lease_clock,
            pending_syncs: state.syncs.values().cloned().collect(),
        })
    }

    async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.commit_batch(batch).await
    }

    async fn checkpoint_leases(&self, leases: &[LeaseCheckpoint]) -> Result<(), StoreError> {
        let mut state = self.fenced(self.available()?)?;
        let state = &mut *state;
        if !leases.is_empty() {
            state.lease_clock += 1;
        }
        for lease in leases {
            let Some(agent) = state.agents.get_mut(&lease.agent_id) else {
                continue;
            };
            if agent.generation != lease.generation || agent.status != Status::Online {
                continue;
            }
            agent.last_seen_at = agent.last_seen_at.max(Some(lease.last_seen_at));
            agent.lease_expires_at = agent.lease_expires_at.max(Some(lease.lease_expires_at));
            state
                .lease_stamps
                .insert(lease.agent_id.clone(), state.lease_clock);
        }
        state.checkpoints += 1;
        Ok(())
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let state = self.available()?;
        Ok(state
            .events
            .range(after + 1..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn changes_since(&self, request: ChangesRequest<'_>) -> Result<Changes, StoreError> {
        let state = self.available()?;
        let events: Vec<Event> = state
            .events
            .range(request.revision + 1..)
            .take(request.limit)
            .map(|(_, e)| e.clone())
            .collect();
        let complete = events.len() < request.limit;
        let rows = complete.then(|| {
            let named: BTreeSet<&AgentId> = request
                .named
                .iter()
                .chain(events.iter().map(|e| &e.agent.id))
                .collect();
            RowChanges {
                agents: named
                    .into_iter()
                    .filter_map(|id| state.agents.get(id).cloned())
                    .collect(),
                leases: state
                    .lease_stamps
                    .iter()
                    .filter(|(_, stamp)| **stamp > request.checkpoint)
                    .filter_map(|(id, _)| state.agents.get(id))
                    .map(|agent| StoredLease {
                        agent_id: agent.id.clone(),
                        generation: agent.generation,
                        last_seen_at: agent.last_seen_at,
                        lease_expires_at: agent.lease_expires_at,
                    })
                    .collect(),
                checkpoint: state.lease_clock,
                directory: request.directory.then(|| Directory {
                    gateways: state.gateways.values().cloned().collect(),
                    pending_retires: state.retires.iter().cloned().collect(),
                    rollouts: state.rollouts.values().cloned().collect(),
                    pending_syncs: state.syncs.values().cloned().collect(),
                }),
            }
        });
        Ok(Changes {
            events,
            compacted_revision: state.compacted_revision,
            rows,
        })
    }

    async fn agent_history(
        &self,
        agent: &AgentId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let state = self.available()?;
        Ok(state
            .events
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .filter(|(_, e)| e.agent.id == *agent)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn gateway_history(
        &self,
        gateway: &GatewayId,
        limit: usize,
    ) -> Result<Vec<GatewayTransition>, StoreError> {
        let state = self.available()?;
        Ok(state
            .gateway_events
            .iter()
            .rev()
            .filter(|t| t.gateway_id == *gateway)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn compact(&self, cutoff: Timestamp) -> Result<u64, StoreError> {
        let mut state = self.available()?;
        // The events before the first one at or after the cutoff, as the
        // Postgres store cuts (in revision order, no index on time).
        let up_to = match state.events.values().find(|e| e.at >= cutoff) {
            Some(kept) => kept.revision.checked_sub(1),
            None => state.events.keys().next_back().copied(),
        };
        if let Some(up_to) = up_to.filter(|&r| r > 0) {
            state.events = state.events.split_off(&(up_to + 1));
            state.compacted_revision = state.compacted_revision.max(up_to);
        }
        Ok(state.compacted_revision)
    }

    async fn compacted_revision(&self) -> Result<u64, StoreError> {
        Ok(self.available()?.compacted_revision)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let delay = self.lock().ping_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.available().map(drop)
    }

    async fn acquire_leadership(&self, candidate: &Candidate) -> Result<Option<u64>, StoreError> {
        self.lease_reachable()?;
        let mut state = self.available()?;
        if state.lease.held() {
            let expires_at = state.lease.expires_at.expect("held");
            *self.free_in.lock().expect("free_in lock") =
                Some(expires_at.saturating_duration_since(Instant::now()));
            return Ok(None);
        }
        *self.free_in.lock().expect("free_in lock") = None;
        let epoch = state.lease.epoch + 1;
        state.lease = Lease {
            epoch,
            holder: candidate.holder.clone(),
            address: candidate.address.clone(),
            expires_at: Some(Instant::now() + candidate.ttl),
        };
        self.epoch.store(epoch, Ordering::SeqCst);
        Ok(Some(epoch))
    }

    fn leadership_free_in(&self) -> Option<std::time::Duration> {
        *self.free_in.lock().expect("free_in lock")
    }

    async fn renew_leadership(&self, candidate: &Candidate) -> Result<bool, StoreError> {
        self.lease_reachable()?;
        let mut state = self.available()?;
        let epoch = self.epoch.load(Ordering::SeqCst);
        if epoch == 0 || state.lease.epoch != epoch || !state.lease.held() {
            self.epoch.store(0, Ordering::SeqCst);
            return Ok(false);
        }
        state.lease.expires_at = Some(Instant::now() + candidate.ttl);
        Ok(true)
    }

    async fn release_leadership(&self) {
        let epoch = self.epoch.swap(0, Ordering::SeqCst);
        let mut state = self.lock();
        if epoch != 0 && state.lease.epoch == epoch {
            state.lease.expires_at = None;
        }
    }

    async fn leader(&self) -> Result<Option<LeaderInfo>, StoreError> {
        let state = self.available()?;
        Ok(state.lease.held().then(|| LeaderInfo {
            holder: state.lease.holder.clone(),
            address: state.lease.address.clone(),
            epoch: state.lease.epoch,
        }))
    }

    fn event_notifications(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;

    crate::store_conformance_tests!(async {
        let store = MemoryStore::new();
        crate::store::conformance::lead(&store).await;
        (store, ())
    });

    #[tokio::test(start_paused = true)]
    async fn leadership_is_exclusive_expires_and_fences() {
        let first = MemoryStore::new();
        let second = first.replica();
        crate::store::conformance::leadership_is_exclusive_expires_and_fences(&first, &second)
            .await;
    }
}
