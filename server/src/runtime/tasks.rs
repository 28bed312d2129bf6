//! Background work beside the writer: lease checkpoints, event history
//! compaction, and the database health probe. Each stops on its token.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::shared::Shared;
use crate::engine::LEASES_READ_PER_LOCK;
use crate::store::StoreError;

pub(super) fn every(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Writes leases renewed in memory to the store, in one statement per
/// interval however many heartbeats arrived. Flushes once more on stop.
pub(super) async fn checkpoint_leases(shared: Arc<Shared>, stop: CancellationToken) {
    let mut interval = every(shared.settings.checkpoint_interval);
    loop {
        let stopping = tokio::select! {
            _ = interval.tick() => false,
            _ = stop.cancelled() => true,
        };
        checkpoint_once(&shared).await;
        if stopping {
            return;
        }
    }
}

pub(super) async fn checkpoint_once(shared: &Shared) {
    if !shared.leadership.may_act() {
        return;
    }
    let mut ids = shared.engine.lock().take_dirty_lease_ids();
    if ids.is_empty() {
        return;
    }
    // Sorted and read a slice per lock: a million lookups under one lock
    // held heartbeats up for seconds; in id order they stay in the cache.
    ids.sort_unstable();
    let mut leases = Vec::with_capacity(ids.len());
    for slice in ids.chunks(LEASES_READ_PER_LOCK) {
        shared.engine.lock().push_leases_of(slice, &mut leases);
        tokio::task::yield_now().await;
    }
    if leases.is_empty() {
        return;
    }
    match shared.store.checkpoint_leases(&leases).await {
        Ok(()) => tracing::debug!(leases = leases.len(), "lifecycle.leases.checkpointed"),
        Err(error) => {
            if matches!(error, StoreError::Unavailable(_)) {
                shared.set_database_reachable(false);
            }
            tracing::warn!(%error, leases = leases.len(), "lease checkpoint failed; will retry");
            shared.engine.lock().return_dirty_leases(leases);
        }
    }
}

/// Deletes event history older than the retention period.
pub(super) async fn compact_history(shared: Arc<Shared>, stop: CancellationToken) {
    let mut interval = every(shared.settings.compaction_interval);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        // Rate-limit state of agents whose budgets refilled (deleted ones too).
        shared.limits.forget_idle();
        if !shared.leadership.may_act() {
            continue;
        }
        let cutoff = shared.clock.now().minus(shared.settings.event_retention);
        match shared.store.compact(cutoff).await {
            Ok(revision) => {
                tracing::debug!(compacted_revision = revision, "lifecycle.history.compacted")
            }
            Err(error) => tracing::warn!(%error, "event history compaction failed"),
        }
    }
}

/// Pings the database, so health reports NOT_SERVING while it is away.
/// Late pings in a row that make health say the database is unreachable.
const LATE_PINGS_BEFORE_UNREACHABLE: u32 = 2;

pub(super) async fn probe_database(shared: Arc<Shared>, stop: CancellationToken) {
    let mut interval = every(shared.settings.health_check_interval);
    let mut slow_pings = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        let timeout = shared
            .settings
            .health_check_interval
            .max(Duration::from_secs(1));
        // A refused or failed ping is the database down. A ping that only
        // runs late may be this machine starved of CPU: health flips on
        // the second late ping in a row, not the first.
        let reachable = match tokio::time::timeout(timeout, shared.store.ping()).await {
            Ok(answer) => {
                slow_pings = 0;
                answer.is_ok()
            }
            Err(_) => {
                slow_pings += 1;
                if slow_pings < LATE_PINGS_BEFORE_UNREACHABLE {
                    continue;
                }
                false
            }
        };
        // The writer says when it is back: until its state is rebuilt, an
        // answering database does not make this replica able to serve.
        if !reachable || !shared.is_recovering() {
            shared.set_database_reachable(reachable);
        }
    }
}
