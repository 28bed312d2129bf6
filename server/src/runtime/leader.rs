//! Leadership: which replica acts, and for how long it may.
//!
//! The lease lives in the store, with its expiry set by the store's clock.
//! This replica trusts it only as far as it can prove it on its own
//! monotonic clock: from the START of the last successful renewal (the
//! store computed the expiry after that instant), plus the TTL, minus a
//! safety margin. Past that instant it stops acting at once, whether or not
//! it could reach the store: no commit, no heartbeat acknowledged, no wake.
//! A stalled process (SIGSTOP) finds on waking that its proof ran out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::store::Candidate;

/// What this replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaRole {
    /// Follows the event log; serves nothing as leader.
    Follower,
    /// Holds the lease and is catching up; not serving yet.
    TakingOver,
    /// Holds the lease and serves.
    Leader,
}

impl ReplicaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaRole::Follower => "follower",
            ReplicaRole::TakingOver => "taking_over",
            ReplicaRole::Leader => "leader",
        }
    }
}

pub(super) struct Leadership {
    candidate: Candidate,
    /// Until when the lease is proven, on this process's monotonic clock.
    valid_until: Mutex<Option<Instant>>,
    role: watch::Sender<ReplicaRole>,
    /// Set when this replica hands leadership over (a drain): it never
    /// takes the lease again.
    retired: AtomicBool,
}

impl Leadership {
    pub fn new(candidate: Candidate) -> Self {
        Self {
            candidate,
            valid_until: Mutex::new(None),
            role: watch::channel(ReplicaRole::Follower).0,
            retired: AtomicBool::new(false),
        }
    }

    /// From now on this replica never takes the lease.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    pub fn candidate(&self) -> &Candidate {
        &self.candidate
    }

    /// The last instant a lease renewed at `started` is trusted. The margin
    /// covers clock rate differences and the time a check takes to act.
    pub fn proven_until(&self, started: Instant) -> Instant {
        let ttl = self.candidate.ttl;
        started + ttl - ttl / 5
    }

    /// Whether this replica may act as leader right now.
    pub fn may_act(&self) -> bool {
        *self.role.borrow() == ReplicaRole::Leader && self.holds_lease()
    }

    pub fn holds_lease(&self) -> bool {
        self.valid_until()
            .is_some_and(|until| Instant::now() < until)
    }

    pub fn valid_until(&self) -> Option<Instant> {
        *self.valid_until.lock().expect("leadership lock")
    }

    pub fn role(&self) -> ReplicaRole {
        *self.role.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<ReplicaRole> {
        self.role.subscribe()
    }

    pub fn granted(&self, epoch: u64, until: Instant) {
        *self.valid_until.lock().expect("leadership lock") = Some(until);
        tracing::info!(epoch, holder = %self.candidate.holder, "leader lease acquired; taking over");
        self.role.send_replace(ReplicaRole::TakingOver);
    }

    pub fn renewed(&self, until: Instant) {
        *self.valid_until.lock().expect("leadership lock") = Some(until);
    }

    /// Caught up: from now on this replica serves as leader.
    pub fn serving(&self) {
        self.role.send_if_modified(|role| {
            let changed = *role == ReplicaRole::TakingOver;
            if changed {
                *role = ReplicaRole::Leader;
            }
            changed
        });
    }

    /// The lease is lost, or can no longer be proven.
    pub fn lost(&self, why: &str) {
        *self.valid_until.lock().expect("leadership lock") = None;
        let was = self.role.send_replace(ReplicaRole::Follower);
        if was != ReplicaRole::Follower {
            tracing::warn!(why, "no longer the leader; following");
        }
    }
}

/// Acquires the lease when it is free and renews it while held, every third
/// of its TTL. A follower tries every `retry`, and also right at the expiry
/// the store last reported, so a lease that is not renewed is taken over as
/// soon as the store's clock lets it. Runs until `stop`; the lease is released by the store's close.
pub(super) async fn keep_lease(shared: Arc<Shared>, stop: CancellationToken) {
    let leadership = &shared.leadership;
    let candidate = leadership.candidate().clone();
    let ttl = candidate.ttl;
    // How often a follower tries, and a failed renewal is retried.
    let retry = (ttl / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = Instant::now();
        if leadership.retired() {
            return;
        }
        if leadership.role() == ReplicaRole::Follower {
            let acquired = tokio::time::timeout(ttl, shared.store.acquire_leadership(&candidate));
            next = match acquired.await {
                Ok(Ok(Some(epoch))) => {
                    leadership.granted(epoch, leadership.proven_until(started));
                    started + ttl / 3
                }
                // Held: try again right when it expires, if that is sooner.
                Ok(Ok(None)) => match shared.store.leadership_free_in() {
                    Some(left) => {
                        (Instant::now() + left.max(Duration::from_millis(1))).min(started + retry)
                    }
                    None => started + retry,
                },
                Ok(Err(error)) => {
                    tracing::debug!(%error, "leader lease not acquired");
                    started + retry
                }
                Err(_) => started + retry,
            };
            continue;
        }
        // The renewal may not outlive the proof it would extend.
        let deadline = leadership.valid_until().unwrap_or(started);
        let renewed = tokio::time::timeout_at(deadline, shared.store.renew_leadership(&candidate));
        next = match renewed.await {
            Ok(Ok(true)) => {
                leadership.renewed(leadership.proven_until(started));
                started + ttl / 3
            }
            Ok(Ok(false)) => {
                leadership.lost("the lease expired or another replica took it");
                started + retry
            }
            Ok(Err(error)) if leadership.holds_lease() => {
                tracing::warn!(%error, "leader lease renewal failed; retrying");
                started + retry
            }
            Ok(Err(_)) | Err(_) => {
                leadership.lost("the lease could not be renewed in time");
                started + retry
            }
        };
    }
}
