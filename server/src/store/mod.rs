//! Where the truth lives. The engine's in-memory state is a cache of this.
//!
//! [`PostgresStore`] is the durable store; [`MemoryStore`] backs `--dev` and
//! tests. Both pass the same conformance suite (`conformance.rs`, run by the tests).

#[cfg(test)]
pub mod conformance;
mod lease;
mod listen;
mod memory;
mod migrations;
mod postgres;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::engine::rollout::Rollout;
use crate::engine::{
    Agent, AgentId, Batch, Event, Gateway, GatewayId, GatewayTransition, LeaseCheckpoint,
    PendingRetire, PendingSync, StoredLease, StoredState, Timestamp,
};

pub use memory::MemoryStore;
pub use postgres::{PoolSettings, PostgresStore};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer; worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A write conflicted with data already stored (another writer?).
    #[error("conflicting write: {0}")]
    Conflict(String),
    /// The database refused this server's settings (no such database, bad
    /// credentials): only someone fixing them helps, so a starting server
    /// gives up at once, and a running one reports itself unavailable.
    #[error("database refused the connection: {0}")]
    Refused(String),
    /// This replica does not hold the leader lease (any more): it must not
    /// write.
    #[error("{0}")]
    NotLeader(String),
    /// Stored data this build cannot read.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Other(String),
}

/// A replica asking to lead: who it is, where followers reach it, and how
/// long its lease lasts from each renewal (by the store's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Unique per process start.
    pub holder: String,
    /// The gRPC address followers forward calls to.
    pub address: String,
    pub ttl: Duration,
}

/// The replica holding an unexpired lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub holder: String,
    pub address: String,
    pub epoch: u64,
}

/// What a follower asks [`Store::changes_since`] for.
#[derive(Debug, Clone, Copy)]
pub struct ChangesRequest<'a> {
    /// Events after this revision: the last one the copy applied.
    pub revision: u64,
    /// Leases checkpointed after this generation: the last one it read.
    pub checkpoint: u64,
    /// Agents whose rows to read besides those the events name: the ones
    /// named by events read in earlier, incomplete pages.
    pub named: &'a [AgentId],
    /// Events per answer, at most.
    pub limit: usize,
    /// Also read the small tables (for a takeover).
    pub directory: bool,
}

/// What changed after a follower's position, read in one snapshot.
#[derive(Debug, Default)]
pub struct Changes {
    /// Events after the requested revision, oldest first, at most `limit`.
    pub events: Vec<Event>,
    /// Events at or below this revision are compacted away.
    pub compacted_revision: u64,
    /// Read only when `events` reached the end of the log in this snapshot.
    pub rows: Option<RowChanges>,
}

/// The rows a follower's copy needs beside the events, from the same snapshot.
#[derive(Debug, Default)]
pub struct RowChanges {
    /// The stored rows (token hashes included) of the agents named by the
    /// request or the events; an absent one was deleted.
    pub agents: Vec<Agent>,
    /// Lease fields of the agents checkpointed after the requested generation.
    pub leases: Vec<StoredLease>,
    /// The last lease checkpoint committed.
    pub checkpoint: u64,
    /// The small tables, if asked for.
    pub directory: Option<Directory>,
}

/// The small tables a load reads whole, beside the agents: changed without
/// events, so a takeover from a warm copy reads them again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directory {
    pub gateways: Vec<Gateway>,
    pub pending_retires: Vec<PendingRetire>,
    pub rollouts: Vec<Rollout>,
    /// Template syncs not yet acknowledged, by gateway.
    pub pending_syncs: Vec<PendingSync>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Everything the engine needs to rebuild itself.
    async fn load(&self) -> Result<StoredState, StoreError>;

    /// Writes a batch's agents, gateways, events and retires in one
    /// transaction: all of it or nothing.
    async fn commit(&self, batch: &Batch) -> Result<(), StoreError>;

    /// Writes leases renewed in memory, in one statement. A checkpoint never
    /// moves `last_seen_at` backwards and never touches an agent that has
    /// since changed generation or left the online status.
    async fn checkpoint_leases(&self, leases: &[LeaseCheckpoint]) -> Result<(), StoreError>;

    /// Up to `limit` events after revision `after`, oldest first.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// What changed after a follower's position, read in one snapshot:
    /// events, and once they reach the end of the log, the rows they do not
    /// carry. A takeover reads this instead of a full [`Store::load`].
    async fn changes_since(&self, request: ChangesRequest<'_>) -> Result<Changes, StoreError>;

    /// Up to `limit` of one agent's events before revision `before` (or the
    /// newest, if `None`), newest first.
    async fn agent_history(
        &self,
        agent: &AgentId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// Up to `limit` of one gateway's link transitions, newest first.
    async fn gateway_history(
        &self,
        gateway: &GatewayId,
        limit: usize,
    ) -> Result<Vec<GatewayTransition>, StoreError>;

    /// Deletes the events recorded before `cutoff` up to the first one
    /// recorded at or after it, in revision order (an event stamped earlier
    /// than one before it, after a clock step back, is kept with it);
    /// returns the compacted revision: events at or below it are gone.
    async fn compact(&self, cutoff: Timestamp) -> Result<u64, StoreError>;

    async fn compacted_revision(&self) -> Result<u64, StoreError>;

    /// A cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Takes the leader lease if nobody holds an unexpired one; returns the
    /// new epoch. From then on every commit and checkpoint is fenced with
    /// it: it succeeds only while this epoch's lease is unexpired by the
    /// store's clock.
    async fn acquire_leadership(&self, candidate: &Candidate) -> Result<Option<u64>, StoreError>;

    /// How long the lease another replica holds had left, by the store's
    /// clock, when `acquire_leadership` last found it held: a follower
    /// tries again at that instant instead of polling for the expiry.
    /// `None` when unknown (never asked, acquired, or the row was locked).
    fn leadership_free_in(&self) -> Option<Duration> {
        None
    }

    /// Extends this replica's lease by its TTL from the store's now.
    /// `Ok(false)`: the lease is lost (expired, or another replica took it);
    /// this replica is a follower from then on.
    async fn renew_leadership(&self, candidate: &Candidate) -> Result<bool, StoreError>;

    /// Gives the lease up at once, so that a follower takes over without
    /// waiting for it to expire. Commits fail afterwards.
    async fn release_leadership(&self);

    /// The replica holding an unexpired lease, if any.
    async fn leader(&self) -> Result<Option<LeaderInfo>, StoreError>;

    /// Notified when another replica may have committed events, so a
    /// follower reads them without waiting for its next poll.
    fn event_notifications(&self) -> Arc<Notify>;

    /// Stops writing: after this, commits fail. Called once at shutdown; it
    /// releases the lease, so a follower takes over at once.
    async fn close(&self) {
        self.release_leadership().await;
    }
}
