//! Leadership: which replica acts, and for how long it may.
//!
//! The lease lives in the store, with its expiry set by the store's clock.
//! This replica trusts it only as far as it can prove it on its own
//! monotonic clock: from the START of the last successful renewal (the
//! store computed the expiry after that instant), for less than the expiry.
//! Past that instant it stops acting at once, whether or not it could reach
//! the store: no commit, no heartbeat acknowledged, no wake. A stalled
//! process (SIGSTOP) finds on waking that its proof ran out. The figures
//! are fractions of `--leader-lease`: see [`LeaseTiming`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::shared::Shared;
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

/// Every figure of the lease, as a fraction of `--leader-lease` (L): the
/// bound within which a dead or stalled leader is replaced.
///
/// - The lease row expires 0.6 L after each renewal, by the store's clock
///   ([`LeaseTiming::expiry`]); the leader renews every 0.1 L.
/// - The leader acts only until 0.5 L after the START of its last
///   successful renewal, S, on its own monotonic clock
///   ([`LeaseTiming::proof`]).
///
/// Safe: the store set the expiry at some instant t >= S, to t + 0.6 L, and
/// no replica takes the row before it passes, so between the leader's last
/// act (before S + 0.5 L) and the earliest takeover (after S + 0.6 L) lie
/// at least 0.1 L. That margin covers clocks running at rates up to 20 %
/// apart (0.5 L x 1.2 = 0.6 L) and the instants between the check and the
/// answer leaving the process (not a process stopped in between).
///
/// Within L: a leader that stops renewing (killed, or stalled with its
/// sessions alive) leaves a row that expires at most 0.6 L after its last
/// renewal; followers try right at that instant (a refused try reports
/// what is left), which leaves 0.4 L for the takeover itself. A renewal may
/// take up to 0.4 L (0.5 L - 0.1 L) before the leader stops acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    lease: Duration,
}

impl LeaseTiming {
    pub fn new(lease: Duration) -> Self {
        Self { lease }
    }

    /// How long the row lasts after each renewal, by the store's clock.
    pub fn expiry(self) -> Duration {
        self.lease * 3 / 5
    }

    /// How long after the start of a successful renewal the leader acts.
    pub fn proof(self) -> Duration {
        self.lease / 2
    }

    /// How often the leader renews (a failed renewal is retried after
    /// half of this).
    pub fn renew_every(self) -> Duration {
        self.lease / 10
    }

    /// How long past the end of its proof the leader waits for a renewal
    /// still in flight (or retries a failed one) before it gives the lease
    /// up: a renewal answered late proves the lease from its own start, so
    /// a slow database costs a pause, not a failover. By then (0.7 L after
    /// the last good renewal started) the row has expired, as far as this
    /// replica can tell.
    pub fn renewal_patience(self) -> Duration {
        self.lease / 5
    }

    /// How often a follower tries when it knows no expiry to wait for.
    pub fn follower_poll(self) -> Duration {
        (self.lease / 10).clamp(Duration::from_millis(20), Duration::from_millis(500))
    }
}

pub(super) struct Leadership {
    candidate: Candidate,
    timing: LeaseTiming,
    /// Until when the lease is proven, on this process's monotonic clock.
    valid_until: Mutex<Option<Instant>>,
    role: watch::Sender<ReplicaRole>,
    /// Told of every successful renewal: a leader whose proof ran out acts
    /// again once a late renewal proves the lease anew.
    renewals: Notify,
    /// Set when this replica hands leadership over (a drain): it never
    /// takes the lease again.
    retired: AtomicBool,
}

impl Leadership {
    pub fn new(candidate: Candidate, timing: LeaseTiming) -> Self {
        Self {
            candidate,
            timing,
            valid_until: Mutex::new(None),
            role: watch::channel(ReplicaRole::Follower).0,
            renewals: Notify::new(),
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

    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// The last instant a lease renewed (or taken) by a call that started
    /// at `started` is trusted; see [`LeaseTiming`].
    pub fn proven_until(&self, started: Instant) -> Instant {
        started + self.timing.proof()
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
        self.renewals.notify_waiters();
    }

    /// Resolves at the next successful renewal.
    pub async fn next_renewal(&self) {
        self.renewals.notified().await;
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
        if was == ReplicaRole::Follower {
            return;
        }
        // A drain hands leadership over on purpose: not a warning.
        if self.retired.load(Ordering::SeqCst) {
            tracing::info!(why, "leadership handed over");
        } else {
            tracing::warn!(why, "no longer the leader; following");
        }
    }
}

/// Acquires the lease when it is free and renews it while held, every
/// tenth of `--leader-lease`. A follower tries every `follower_poll`, and
/// also right at the expiry the store last reported, so a lease that is not
/// renewed is taken over as soon as the store's clock lets it. Runs until
/// `stop`; the lease is released by the store's close.
pub(super) async fn keep_lease(shared: Arc<Shared>, stop: CancellationToken) {
    let leadership = &shared.leadership;
    let candidate = leadership.candidate().clone();
    let timing = leadership.timing();
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
            let poll = started + timing.follower_poll();
            let acquired =
                tokio::time::timeout(timing.expiry(), shared.store.acquire_leadership(&candidate));
            next = match acquired.await {
                Ok(Ok(Some(epoch))) => {
                    leadership.granted(epoch, leadership.proven_until(started));
                    started + timing.renew_every()
                }
                // Held: try again right when it expires, if that is sooner.
                Ok(Ok(None)) => match shared.store.leadership_free_in() {
                    Some(left) => (Instant::now() + left.max(Duration::from_millis(1))).min(poll),
                    None => poll,
                },
                Ok(Err(error)) => {
                    tracing::debug!(%error, "leader lease not acquired");
                    poll
                }
                Err(_) => poll,
            };
            continue;
        }
        // Past its proof the leader acts on nothing, but keeps the lease
        // while a renewal may still prove it (`renewal_patience`).
        let deadline = leadership
            .valid_until()
            .map_or(started, |until| until + timing.renewal_patience());
        let renewed = tokio::time::timeout_at(deadline, shared.store.renew_leadership(&candidate));
        next = started + timing.renew_every();
        match renewed.await {
            Ok(Ok(true)) => leadership.renewed(leadership.proven_until(started)),
            Ok(Ok(false)) => leadership.lost("the lease expired or another replica took it"),
            Ok(Err(error)) if Instant::now() < deadline => {
                tracing::warn!(%error, "leader lease renewal failed; retrying");
                next = started + timing.renew_every() / 2;
            }
            Ok(Err(_)) | Err(_) => leadership.lost("the lease could not be renewed in time"),
        }
    }
}
