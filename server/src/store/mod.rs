//! Where the truth lives. The engine's in-memory state is a cache of this.
//!
//! [`PostgresStore`] is the durable store; [`MemoryStore`] backs `--dev` and
//! tests. Both pass the same conformance suite (`conformance.rs`, run by the tests).

#[cfg(test)]
pub mod conformance;
mod memory;
mod migrations;
mod postgres;
mod writer_lock;

use async_trait::async_trait;

use crate::engine::{AgentId, Batch, Event, LeaseCheckpoint, StoredState, Timestamp};

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
    /// Another server is the writer for this database.
    #[error("{0}")]
    WriterLocked(String),
    /// Stored data this build cannot read.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Other(String),
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

    /// Up to `limit` of one agent's events before revision `before` (or the
    /// newest, if `None`), newest first.
    async fn agent_history(
        &self,
        agent: &AgentId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// Deletes events recorded before `cutoff`; returns the compacted
    /// revision: events at or below it are gone.
    async fn compact(&self, cutoff: Timestamp) -> Result<u64, StoreError>;

    async fn compacted_revision(&self) -> Result<u64, StoreError>;

    /// A cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stops writing: after this, commits fail. Called once at shutdown, so
    /// the next server need not wait for this one's connections to go.
    async fn close(&self) {}
}
