//! A follower's warm copy: the engine follows the leader's event log, and
//! the rows events do not carry (token hashes, lease checkpoints) are read
//! beside them, in the same snapshot, so that the copy's agents equal the
//! store's after every complete read. A takeover then reads only what
//! changed since (plus the small tables: gateways, pending retires,
//! rollouts) instead of loading everything.

use std::collections::BTreeSet;

use super::engine_lock::EngineLock;
use crate::engine::{AgentId, Diverged, Event};
use crate::store::{ChangesRequest, Directory, Store, StoreError};

/// Events read per page while following.
pub(super) const FOLLOW_PAGE: usize = 1000;

/// A takeover further behind than this loads everything instead: reading
/// and applying that many events costs about what a full load does.
pub(super) const WARM_BACKLOG: usize = 50_000;

/// Where the copy stands, beyond the engine's revision.
#[derive(Debug)]
pub(super) struct Follower {
    /// Why the copy cannot be used for a takeover; `None` while it can.
    distrust: Option<String>,
    /// The last lease checkpoint whose rows the copy holds.
    checkpoint: u64,
    /// Agents named by events applied since the last complete read: their
    /// rows are read with the next one.
    named: BTreeSet<AgentId>,
    /// Events per read.
    page: usize,
}

/// Why a catch-up could not bring the copy up to the store.
#[derive(Debug, thiserror::Error)]
pub(super) enum FollowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the event log was compacted past the copy (revision {copy}, compacted to {compacted})"
    )]
    Compacted { copy: u64, compacted: u64 },
    #[error(transparent)]
    Diverged(#[from] Diverged),
    #[error("the copy is more than {0} events behind")]
    TooFarBehind(usize),
}

/// What a complete catch-up read.
#[derive(Debug, Default)]
pub(super) struct CaughtUp {
    pub events: usize,
    pub agents: usize,
    pub leases: usize,
    /// The small tables, when asked for.
    pub directory: Option<Directory>,
}

impl Follower {
    /// A copy built from a load whose lease clock read `checkpoint`.
    pub fn loaded(checkpoint: u64) -> Self {
        Self {
            distrust: None,
            checkpoint,
            named: BTreeSet::new(),
            page: FOLLOW_PAGE,
        }
    }

    /// A copy that a takeover must not use (say, a leader's own state,
    /// whose leases are ahead of the store's).
    pub fn distrusted(why: impl Into<String>) -> Self {
        Self {
            distrust: Some(why.into()),
            checkpoint: 0,
            named: BTreeSet::new(),
            page: FOLLOW_PAGE,
        }
    }

    /// Why the copy cannot be used for a takeover, if it cannot.
    pub fn distrust(&self) -> Option<&str> {
        self.distrust.as_deref()
    }

    /// Applies everything committed after the copy's position: events page
    /// by page (each announced), then the rows they do not carry. With
    /// `directory`, also returns gateways and pending retires read in the
    /// same snapshot as the last page. Reading more than `max_events`
    /// events fails with [`FollowError::TooFarBehind`].
    pub async fn catch_up(
        &mut self,
        store: &dyn Store,
        engine: &EngineLock,
        announce: &(dyn Fn(Event) + Sync),
        directory: bool,
        max_events: usize,
    ) -> Result<CaughtUp, FollowError> {
        let mut read = CaughtUp::default();
        loop {
            let revision = engine.lock().revision();
            let named: Vec<AgentId> = self.named.iter().cloned().collect();
            let changes = store
                .changes_since(ChangesRequest {
                    revision,
                    checkpoint: self.checkpoint,
                    named: &named,
                    limit: self.page,
                    directory,
                })
                .await?;
            let gap = changes
                .events
                .first()
                .is_some_and(|e| e.revision != revision + 1);
            if changes.compacted_revision > revision || gap {
                return Err(FollowError::Compacted {
                    copy: revision,
                    compacted: changes.compacted_revision,
                });
            }
            read.events += changes.events.len();
            if read.events > max_events {
                return Err(FollowError::TooFarBehind(max_events));
            }
            let mut engine = engine.lock();
            for event in changes.events {
                engine.apply_event(&event);
                self.named.insert(event.agent.id.clone());
                announce(event);
            }
            let Some(rows) = changes.rows else {
                continue;
            };
            read.agents += rows.agents.len();
            read.leases += rows.leases.len();
            let named = std::mem::take(&mut self.named);
            engine.apply_rows(&named, rows.agents, rows.leases)?;
            self.checkpoint = rows.checkpoint;
            read.directory = rows.directory;
            return Ok(read);
        }
    }

    /// The state a full load would give, from the copy after a complete
    /// catch-up with `directory`.
    #[cfg(test)]
    pub fn warm_state(&self, engine: &Engine, directory: Directory) -> StoredState {
        engine.warm_state(
            directory.gateways,
            directory.pending_retires,
            directory.rollouts,
            directory.pending_syncs,
            self.checkpoint,
        )
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
use crate::engine::{Engine, StoredState};
