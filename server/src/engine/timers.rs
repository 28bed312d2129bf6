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

/// An entry's timer but its deadline, which its key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Armed {
    agent_id: AgentId,
    kind: TimerKind,
}

#[derive(Debug, Default)]
pub struct TimerWheel {
    /// Ordered by deadline; the sequence number keeps equal deadlines apart.
    entries: BTreeMap<(Timestamp, u64), Armed>,
    next_seq: u64,
    /// Agents with a lease entry in the wheel: at most one each.
    leases: HashSet<AgentId>,
}

impl TimerWheel {
    pub fn arm(&mut self, timer: Timer) {
        if let Some((key, armed)) = self.entry(timer) {
            self.entries.insert(key, armed);
        }
    }

    /// Arms each in turn, as [`TimerWheel::arm`] would. Into an empty
    /// wheel (a start) the entries are built in bulk: nodes full, not half
    /// full as one-by-one inserts leave them (BENCHMARKS.md, memory per
    /// agent).
    pub fn arm_all(&mut self, timers: Vec<Timer>) {
        let bulk = self.entries.is_empty();
        let entries: Vec<_> = timers
            .into_iter()
            .filter_map(|timer| self.entry(timer))
            .collect();
        if bulk {
            self.entries = entries.into_iter().collect();
        } else {
            self.entries.extend(entries);
        }
    }

    /// The entry for `timer`, unless it is a lease the agent already has.
    fn entry(&mut self, timer: Timer) -> Option<((Timestamp, u64), Armed)> {
        if timer.kind == TimerKind::Lease && !self.leases.insert(timer.agent_id.clone()) {
            return None;
        }
        self.next_seq += 1;
        let armed = Armed {
            agent_id: timer.agent_id,
            kind: timer.kind,
        };
        Some(((timer.at, self.next_seq), armed))
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
            let at = entry.key().0;
            if at > now {
                break;
            }
            let Armed { agent_id, kind } = entry.remove();
            if kind == TimerKind::Lease {
                self.leases.remove(&agent_id);
            }
            due.push(Timer { at, agent_id, kind });
        }
        due
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Timer> + '_ {
        self.entries.iter().map(|((at, _), armed)| Timer {
            at: *at,
            agent_id: armed.agent_id.clone(),
            kind: armed.kind,
        })
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

    #[test]
    fn arming_in_bulk_is_arming_one_by_one() {
        let lease = |at, agent: &str| Timer {
            at: Timestamp::from_micros(at),
            agent_id: id(agent),
            kind: TimerKind::Lease,
        };
        let timers = vec![
            checkin(30, "c"),
            lease(10, "a"),
            lease(20, "a"),
            checkin(10, "b"),
            lease(10, "d"),
        ];
        for before in [vec![], vec![checkin(15, "e"), lease(5, "d")]] {
            let (mut bulk, mut single) = (TimerWheel::default(), TimerWheel::default());
            for timer in &before {
                bulk.arm(timer.clone());
                single.arm(timer.clone());
            }
            bulk.arm_all(timers.clone());
            timers.iter().for_each(|t| single.arm(t.clone()));
            assert_eq!(bulk.len(), single.len());
            assert!(bulk.iter().eq(single.iter()));
            assert_eq!(
                bulk.pop_due(Timestamp::from_micros(100), usize::MAX),
                single.pop_due(Timestamp::from_micros(100), usize::MAX)
            );
        }
    }
}
