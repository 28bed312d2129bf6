//! Rebuilding the engine from the store at start, with restart grace.

use std::collections::HashMap;
use std::sync::Arc;

use super::LeaseCheckpoint;
use super::batch::Change;
use super::gateway_state::hold_timer;
use super::model::{Agent, AgentId, Gateway, GatewayId, PendingRetire, Reason, Status, Timestamp};
use super::timers::{Timer, TimerKind};
use super::{Batch, Engine, Policy};

/// Everything the store holds that the engine needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredState {
    pub agents: Vec<Agent>,
    pub gateways: Vec<Gateway>,
    pub pending_retires: Vec<PendingRetire>,
    /// Deleted agent ids and the generation each reached.
    pub tombstones: Vec<(AgentId, u64)>,
    /// The last committed revision.
    pub revision: u64,
    /// Every rollout, finished ones included.
    pub rollouts: Vec<super::rollout::Rollout>,
    /// The last lease checkpoint committed (see `Store::changes_since`).
    pub checkpoint: u64,
    /// Template syncs gateways have not acknowledged, by gateway.
    pub pending_syncs: Vec<super::PendingSync>,
}

impl StoredState {
    /// Takes newer leases from memory: renewals the store has not seen yet
    /// (checkpoints lag, or failed during an outage) must not be lost when
    /// the engine is rebuilt from the store.
    pub fn merge_leases(&mut self, leases: &[LeaseCheckpoint]) {
        let fresher: HashMap<&AgentId, &LeaseCheckpoint> = leases
            .iter()
            .map(|lease| (&lease.agent_id, lease))
            .collect();
        for agent in &mut self.agents {
            let Some(lease) = fresher.get(&agent.id) else {
                continue;
            };
            if agent.status == Status::Online && agent.generation == lease.generation {
                agent.last_seen_at = agent.last_seen_at.max(Some(lease.last_seen_at));
                agent.lease_expires_at = agent.lease_expires_at.max(Some(lease.lease_expires_at));
            }
        }
    }
}

/// A stable number in `0.0..1.0` for an agent, to spread its grace period.
///
/// FNV-1a alone is stable across builds and restarts (unlike the std
/// hasher) but barely moves its high bits for ids that differ only in their
/// last characters (`agent-0001`, `agent-0002`): a final avalanche step
/// (SplitMix64's finalizer) lets every input bit reach every output bit.
pub fn spread_unit(id: &AgentId) -> f64 {
    let fnv = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (avalanche(fnv) >> 11) as f64 / (1u64 << 53) as f64
}

fn avalanche(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Engine {
    /// Rebuilds the engine and its timers from stored state: a copy of it
    /// ([`Engine::from_stored`]) made a leader's ([`Engine::lead_from`]).
    pub fn restore(policy: Policy, state: StoredState, now: Timestamp) -> (Engine, Batch) {
        let mut engine = Engine::from_stored(policy, state);
        let batch = engine.lead_from(now);
        (engine, batch)
    }

    /// Makes this copy of stored state (no timers, no grace: a follower's)
    /// the leader's at `now`, in place, so a takeover copies no agent.
    ///
    /// Deadlines and leases that passed while no leader served, or fall
    /// due within the grace period, are extended once, to
    /// `now + grace + spread`, instead of all firing at once. A lease also
    /// runs at least `lease_ttl` (plus the spread) past `now`: a heartbeat the
    /// previous leader acknowledged but never checkpointed promised that much.
    /// Deadlines get an event each; leases, soft state, are extended in
    /// memory and written a slice per checkpoint (see
    /// [`Engine::take_dirty_leases`]): the promise holds without them, as
    /// the next leader extends again from its own start. The returned batch
    /// holds the deadline extensions and must be committed like any other.
    pub fn lead_from(&mut self, now: Timestamp) -> Batch {
        self.listening_since = Some(now);
        // Built again from the agents as they are now, at the first census.
        self.silence.invalidate();
        self.restore_brakes(now);
        let mut batch = self.begin(now);
        // No gateway has a stream to this leader yet: one that was connected
        // is away from now, and its grace starts now. Held wakes stay held
        // (they are stored) and go out when it connects.
        let connected: Vec<GatewayId> = self
            .gateways
            .values()
            .filter(|g| g.link.is_connected())
            .map(|g| g.id.clone())
            .collect();
        for id in &connected {
            self.gateway_disconnected(&mut batch, id, "no stream to this leader yet")
                .expect("listed above");
        }
        let policy = &self.policy;
        // Due within the grace period: agents could not check in or
        // heartbeat while the service was down, and may still be backing
        // off from that.
        let due_soon = now.plus(policy.restart_grace);
        // The previous leader may have acknowledged heartbeats it never
        // checkpointed; each promised at most `lease_ttl` from before `now`.
        // No lease restored here ends before that promise could.
        let promised_until = now.plus(policy.lease_ttl);
        let mut timers = Vec::with_capacity(self.agents.len());
        // The few agents with a held wake or a deadline to extend: below.
        let mut special = Vec::new();
        for (id, agent) in &mut self.agents {
            let unit = spread_unit(id);
            // A lease is soft state (renewals are not events): extended in
            // place, written by later checkpoints.
            if agent.status == Status::Online
                && agent
                    .lease_expires_at
                    .is_none_or(|l| l <= due_soon || l < promised_until)
            {
                let agent = Arc::make_mut(agent);
                let grace_until = now.plus(policy.grace_offset(unit));
                let floor = promised_until.plus(policy.restart_grace.mul_f64(unit));
                agent.lease_expires_at = Some(grace_until.max(floor));
                self.extended_leases.push(id.clone());
            }
            if agent.wake_held || agent.checkin_deadline_at.is_some_and(|d| d <= due_soon) {
                special.push((id.clone(), unit));
            } else {
                timers.extend(restored_timers(agent));
            }
        }
        for (id, unit) in special {
            let agent = Agent::clone(&self.agents[&id]);
            if agent.wake_held {
                // Held or queued: never judged, it was not sent. Its gateway
                // has no stream to this leader yet, so it is held for the
                // gateway's grace (from now, for one that was connected)
                // and goes out, in deadline order, when the gateway is back.
                match self.hold_until(&batch, &agent.gateway_id) {
                    // One that was connected had its hold armed above.
                    Some(_) if connected.contains(&agent.gateway_id) => {}
                    Some(until) => timers.push(hold_timer(&agent, until)),
                    // Nothing to wait for: it goes out (and fails if the
                    // gateway is still away, as any wake does then).
                    None => batch.release_by(now),
                }
                timers.extend(
                    restored_timers(&agent)
                        .into_iter()
                        .filter(|t| t.kind == TimerKind::Lease),
                );
            } else {
                // A deadline is committed state: extended with an event.
                let grace_until = now.plus(self.policy.grace_offset(unit));
                let mut extended = agent.clone();
                extended.checkin_deadline_at = Some(grace_until);
                batch.timers_to_arm.extend(restored_timers(&extended));
                let change = Change::changed(&agent, Reason::RestartGrace, agent.wake_attempts);
                self.stage(&mut batch, change, extended);
            }
        }
        self.timers.arm_all(timers);
        crate::heap::release_freed_memory();
        batch
    }
}

fn restored_timers(agent: &Agent) -> Vec<Timer> {
    let mut timers = Vec::new();
    if let Some(at) = agent.checkin_deadline_at {
        timers.push(Timer {
            at,
            agent_id: agent.id.clone(),
            kind: TimerKind::Checkin {
                generation: agent.generation,
                attempt: agent.wake_attempts,
            },
        });
    }
    if let (Status::Online, Some(at)) = (agent.status, agent.lease_expires_at) {
        timers.push(Timer {
            at,
            agent_id: agent.id.clone(),
            kind: TimerKind::Lease,
        });
    }
    timers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(ids: impl Iterator<Item = String>) -> Vec<f64> {
        ids.map(|id| spread_unit(&AgentId::parse(id).unwrap()))
            .collect()
    }

    #[test]
    fn the_spread_is_uniform_for_ids_that_differ_only_at_the_end() {
        let units = units((1..=1000).map(|n| format!("agent-{n:04}")));
        let mut buckets = [0usize; 20];
        for unit in &units {
            assert!((0.0..1.0).contains(unit));
            buckets[(unit * 20.0) as usize] += 1;
        }
        // 50 expected per bucket; FNV-1a alone left 12 of the 20 empty and put
        // up to 200 in one.
        for (bucket, count) in buckets.iter().enumerate() {
            assert!(
                (25..=75).contains(count),
                "bucket {bucket} holds {count} of 1000: {buckets:?}"
            );
        }
    }

    #[test]
    fn a_handful_of_sequential_ids_fall_in_different_slots() {
        // sim-0001..sim-0020 over 300 slots (100 ms of a 30 s spread).
        let units = units((1..=20).map(|n| format!("sim-{n:04}")));
        let mut slots: Vec<u64> = units.iter().map(|u| (u * 300.0) as u64).collect();
        slots.sort_unstable();
        slots.dedup();
        assert!(slots.len() >= 15, "only {} distinct slots", slots.len());
    }
}
