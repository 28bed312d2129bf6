//! The deadline-ordered timer wheel.
//!
//! Timers are lazy: a check-in or a re-provision does not hunt down the
//! entries it makes obsolete. Each entry names what it was armed for (the
//! agent's generation and attempt), and when it fires the engine compares
//! that with the agent's current state: a stale entry does nothing.

use std::collections::{BTreeMap, HashSet};

use super::model::{AgentId, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// The check-in deadline of one wake.
    Checkin { generation: u64, attempt: u32 },
    /// The lease of an online agent. Heartbeats extend the lease without
    /// touching the wheel; the entry re-arms itself when it fires early.
    Lease,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub at: Timestamp,
    pub agent_id: AgentId,
    pub kind: TimerKind,
}

#[derive(Debug, Default)]
pub struct TimerWheel {
    /// Ordered by deadline; the sequence number keeps equal deadlines apart.
    entries: BTreeMap<(Timestamp, u64), Timer>,
    next_seq: u64,
    /// Agents with a lease entry in the wheel: at most one each.
    leases: HashSet<AgentId>,
}

impl TimerWheel {
    pub fn arm(&mut self, timer: Timer) {
        if timer.kind == TimerKind::Lease && !self.leases.insert(timer.agent_id.clone()) {
            return;
        }
        self.next_seq += 1;
        self.entries.insert((timer.at, self.next_seq), timer);
    }

    pub fn next_at(&self) -> Option<Timestamp> {
        self.entries.keys().next().map(|(at, _)| *at)
    }

    /// Removes and returns up to `limit` timers due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Timestamp, limit: usize) -> Vec<Timer> {
        let mut due = Vec::new();
        while due.len() < limit
            && let Some(entry) = self.entries.first_entry()
        {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if timer.kind == TimerKind::Lease {
                self.leases.remove(&timer.agent_id);
            }
            due.push(timer);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Timer> {
        self.entries.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    fn checkin(at: i64, agent: &str) -> Timer {
        Timer {
            at: Timestamp::from_micros(at),
            agent_id: id(agent),
            kind: TimerKind::Checkin {
                generation: 1,
                attempt: 1,
            },
        }
    }

    #[test]
    fn pops_due_timers_in_deadline_order() {
        let mut wheel = TimerWheel::default();
        wheel.arm(checkin(30, "c"));
        wheel.arm(checkin(10, "a"));
        wheel.arm(checkin(20, "b"));
        wheel.arm(checkin(10, "a2"));
        assert_eq!(wheel.next_at(), Some(Timestamp::from_micros(10)));

        let due: Vec<_> = wheel
            .pop_due(Timestamp::from_micros(20), usize::MAX)
            .into_iter()
            .map(|t| t.agent_id.to_string())
            .collect();
        assert_eq!(due, ["a", "a2", "b"]);
        assert_eq!(wheel.next_at(), Some(Timestamp::from_micros(30)));
        assert!(
            wheel
                .pop_due(Timestamp::from_micros(29), usize::MAX)
                .is_empty()
        );
    }

    #[test]
    fn holds_at_most_one_lease_entry_per_agent() {
        let mut wheel = TimerWheel::default();
        let lease = |at| Timer {
            at: Timestamp::from_micros(at),
            agent_id: id("a"),
            kind: TimerKind::Lease,
        };
        wheel.arm(lease(10));
        wheel.arm(lease(20));
        assert_eq!(wheel.len(), 1);

        assert_eq!(wheel.pop_due(Timestamp::from_micros(10), 1).len(), 1);
        wheel.arm(lease(40));
        assert_eq!(wheel.next_at(), Some(Timestamp::from_micros(40)));
    }
}
