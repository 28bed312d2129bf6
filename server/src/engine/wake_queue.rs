//! Wake rate limits, per gateway and in total, for every wake: first wakes,
//! retries, operators', rollouts', restarts', and wakes held for a gateway
//! that reconnects. A wake over either budget is queued, not sent: the agent
//! shows `wake_held`, and its `checkin_deadline_at` is when the wake fell
//! due (its place in the queue). Queued wakes go out in rounds, earliest
//! due first across all gateways, and each one's check-in deadline starts
//! when it is sent, so no agent is judged before its wake went out.
//!
//! The budgets are GCRA (`governor`) on the batch's clock, so paused-time
//! tests and the engine's plain-time tests see the same pacing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::batch::{Change, QueueReport, Release};
use super::model::{Agent, AgentId, GatewayId, Reason, Timestamp};
use super::{Batch, Engine, Policy};

/// Queued wakes go out at most this often: a round is one batch, so wakes
/// over a budget cost ten commits a second, not one commit per wake.
pub const RELEASE_ROUND: Duration = Duration::from_millis(100);

/// The batch's time as `governor` sees it.
#[derive(Debug, Clone, Default)]
struct BatchClock(Arc<AtomicI64>);

impl GovernorClock for BatchClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed).max(0) as u64)
    }
}

type Keyed =
    RateLimiter<GatewayId, HashMapStateStore<GatewayId>, BatchClock, NoOpMiddleware<Duration>>;
type Direct = RateLimiter<NotKeyed, InMemoryState, BatchClock, NoOpMiddleware<Duration>>;

#[derive(Debug)]
pub(super) struct WakeLimits {
    clock: BatchClock,
    per_gateway: Keyed,
    total: Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Send,
    GatewayFull,
    TotalFull,
}

impl WakeLimits {
    pub fn new(policy: &Policy) -> Self {
        let clock = BatchClock::default();
        Self {
            per_gateway: RateLimiter::hashmap_with_clock(
                per_second(policy.gateway_wake_rate),
                clock.clone(),
            ),
            total: RateLimiter::direct_with_clock(
                per_second(policy.total_wake_rate),
                clock.clone(),
            ),
            clock,
        }
    }

    /// Spends one wake of the gateway's budget, then one of the total.
    /// `governor` cannot look without spending, so a gateway whose wake the
    /// total refuses loses that one: the round then stops, so at most one
    /// per gateway per round.
    fn admit(&self, gateway: &GatewayId, now: Timestamp) -> Admit {
        let micros = now.as_micros();
        // Never backwards: a limiter's state is ahead of an older reading.
        self.clock.0.fetch_max(micros, Ordering::Relaxed);
        if self.per_gateway.check_key(gateway).is_err() {
            return Admit::GatewayFull;
        }
        if self.total.check().is_err() {
            return Admit::TotalFull;
        }
        Admit::Send
    }
}

fn per_second(rate: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(rate.max(1)).expect("at least one"))
}

impl Engine {
    /// Sends the current attempt's wake now if both budgets allow it and no
    /// wake that fell due earlier still waits to go out; queues it otherwise.
    pub(super) fn deliver_or_queue(&self, batch: &mut Batch, agent: &mut Agent) {
        if !self.any_queued(batch)
            && self.wake_limits.admit(&agent.gateway_id, batch.now) == Admit::Send
        {
            self.deliver_wake(batch, agent);
        } else {
            agent.wake_held = true;
            agent.checkin_deadline_at = Some(batch.now);
            batch.release_by(batch.now.plus(RELEASE_ROUND));
        }
    }

    /// Whether a queued wake waits for a gateway it may go to now.
    fn any_queued(&self, batch: &Batch) -> bool {
        let staged = batch
            .agents
            .values()
            .flatten()
            .any(|a| a.wake_held && self.hold_until(batch, &a.gateway_id).is_none());
        staged
            || self.wakes_owed.iter().any(|(gateway, owed)| {
                self.hold_until(batch, gateway).is_none()
                    && owed
                        .iter()
                        .any(|(_, _, id)| self.current(batch, id).is_some_and(|a| a.wake_held))
            })
    }

    /// A round of queued wakes, if one is due.
    pub(super) fn release_due(&mut self, batch: &mut Batch) {
        if self.next_release.is_some_and(|at| at <= batch.now) {
            self.release_queued(batch);
        }
    }

    /// Sends queued wakes earliest due first (then the longest waiting),
    /// across every gateway they may go to now, while both budgets allow;
    /// schedules the next round if any are left. Returns how many went out.
    pub(super) fn release_queued(&mut self, batch: &mut Batch) -> usize {
        let (mut queued, mut left) = self.releasable(batch);
        queued.sort_by_cached_key(queue_key);
        let mut full: HashSet<GatewayId> = HashSet::new();
        let mut total_full = false;
        let mut sent = 0;
        for agent in queued {
            if total_full || full.contains(&agent.gateway_id) {
                continue;
            }
            match self.wake_limits.admit(&agent.gateway_id, batch.now) {
                Admit::Send => {
                    let mut out = agent.clone();
                    self.deliver_wake(batch, &mut out);
                    let change = Change::changed(&agent, Reason::WakeReleased, out.wake_attempts);
                    self.stage(batch, change, out);
                    if let Some(n) = left.get_mut(&agent.gateway_id) {
                        *n = n.saturating_sub(1);
                    }
                    sent += 1;
                }
                verdict => {
                    total_full |= verdict == Admit::TotalFull;
                    full.insert(agent.gateway_id.clone());
                }
            }
        }
        left.retain(|_, n| *n > 0);
        let next = (!left.is_empty()).then(|| batch.now.plus(RELEASE_ROUND));
        batch.release = Release::Next(next);
        self.report_backlogs(batch, &left);
        sent
    }

    /// Says when a gateway's queue starts holding more than a second of its
    /// budget, and when it is empty again.
    fn report_backlogs(&self, batch: &mut Batch, left: &BTreeMap<GatewayId, usize>) {
        let rate = self.policy.gateway_wake_rate as usize;
        for (gateway, queued) in left {
            if *queued > rate && !self.backed_up.contains(gateway) {
                batch.queue_reports.push(QueueReport {
                    gateway_id: gateway.clone(),
                    queued: *queued,
                    backing_up: true,
                });
            }
        }
        for gateway in &self.backed_up {
            if !left.contains_key(gateway) {
                batch.queue_reports.push(QueueReport {
                    gateway_id: gateway.clone(),
                    queued: 0,
                    backing_up: false,
                });
            }
        }
    }

    /// The queued wakes a round may send, as the batch sees them, for
    /// gateways they may go to now (connected, or past their grace: such a
    /// wake then fails as any wake to an absent gateway does): of each
    /// gateway's queue only the head, as many as its budget could ever
    /// allow at once, so a round costs the same however long the queues.
    /// Also how many wait per gateway (counted high, never low: a round too
    /// many is harmless, one too few would strand a wake).
    fn releasable(&self, batch: &Batch) -> (Vec<Agent>, BTreeMap<GatewayId, usize>) {
        let head = self.policy.gateway_wake_rate.max(1) as usize;
        let mut left: BTreeMap<GatewayId, usize> = BTreeMap::new();
        let mut candidates: Vec<Agent> = batch
            .agents
            .values()
            .flatten()
            .filter(|a| a.wake_held && self.hold_until(batch, &a.gateway_id).is_none())
            .cloned()
            .collect();
        for agent in &candidates {
            *left.entry(agent.gateway_id.clone()).or_default() += 1;
        }
        for (gateway, owed) in &self.wakes_owed {
            if self.hold_until(batch, gateway).is_some() {
                continue;
            }
            *left.entry(gateway.clone()).or_default() += owed.len();
            candidates.extend(
                owed.iter()
                    .map(|(_, _, id)| id)
                    .filter(|id| !batch.agents.contains_key(*id))
                    .take(head)
                    .filter_map(|id| self.agents.get(id).map(|a| Agent::clone(a))),
            );
        }
        (candidates, left)
    }

    /// The gateway's agents whose wake waits (held or queued), as the batch
    /// sees them.
    pub(super) fn owed_on(&self, batch: &Batch, gateway_id: &GatewayId) -> Vec<Agent> {
        let committed = self
            .wakes_owed
            .get(gateway_id)
            .into_iter()
            .flatten()
            .map(|(_, _, id)| id);
        let staged = batch
            .agents
            .iter()
            .filter(|(_, a)| a.as_ref().is_some_and(|a| a.gateway_id == *gateway_id))
            .map(|(id, _)| id);
        let ids: BTreeSet<&AgentId> = committed.chain(staged).collect();
        ids.into_iter()
            .filter_map(|id| self.current(batch, id))
            .filter(|a| a.wake_held)
            .collect()
    }

    /// Queued or held wakes of every registered gateway (zero included, so
    /// a gauge falls to zero instead of vanishing), as committed.
    pub fn wakes_owed(&self) -> Vec<(GatewayId, usize)> {
        self.gateways
            .keys()
            .map(|id| (id.clone(), self.wakes_owed.get(id).map_or(0, BTreeSet::len)))
            .collect()
    }

    /// Keeps the index of owed wakes in step with a committed agent.
    pub(super) fn index_owed(&mut self, old: Option<&Agent>, new: Option<&Agent>) {
        if let Some(old) = old.filter(|a| a.wake_held)
            && let Some(owed) = self.wakes_owed.get_mut(&old.gateway_id)
        {
            owed.remove(&queue_key(old));
            if owed.is_empty() {
                self.wakes_owed.remove(&old.gateway_id);
            }
        }
        if let Some(new) = new.filter(|a| a.wake_held) {
            self.wakes_owed
                .entry(new.gateway_id.clone())
                .or_default()
                .insert(queue_key(new));
        }
    }

    /// Applies a batch's release schedule and backlog reports.
    pub(super) fn commit_release(&mut self, release: Release, reports: &[QueueReport]) {
        match release {
            Release::Unchanged => {}
            Release::By(at) => {
                self.next_release = Some(self.next_release.map_or(at, |next| next.min(at)));
            }
            Release::Next(next) => self.next_release = next,
        }
        for report in reports {
            if report.backing_up {
                self.backed_up.insert(report.gateway_id.clone());
            } else {
                self.backed_up.remove(&report.gateway_id);
            }
        }
    }
}

/// A waiting wake's place: when it fell due, then the longest waiting
/// (the earliest previous send), then the id.
type QueueKey = (Timestamp, Option<Timestamp>, AgentId);

fn queue_key(agent: &Agent) -> QueueKey {
    (
        agent
            .checkin_deadline_at
            .unwrap_or(Timestamp::from_micros(i64::MIN)),
        agent.last_wake_sent_at,
        agent.id.clone(),
    )
}

/// Owed wakes (the agents with `wake_held`) by gateway, in queue order.
pub(super) type OwedIndex = HashMap<GatewayId, BTreeSet<QueueKey>>;
