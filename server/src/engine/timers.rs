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

/// Where a timer is in the wheel: its deadline, and the order it was
/// armed in among equal deadlines (across both maps).
type Key = (Timestamp, u64);

/// A check-in deadline's entry: its timer but the deadline, which the key
/// holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Armed {
    agent_id: AgentId,
    kind: TimerKind,
}

#[derive(Debug, Default)]
pub struct TimerWheel {
    /// Check-in deadlines (and anything but leases), by deadline.
    entries: BTreeMap<Key, Armed>,
    /// Leases, one per online agent, by deadline: the agent alone, 16 bytes
    /// a value instead of 32 (BENCHMARKS.md, memory per agent).
    lease_entries: BTreeMap<Key, AgentId>,
    next_seq: u64,
    /// Agents with a lease entry in the wheel: at most one each.
    leases: HashSet<AgentId>,
}

/// An entry to add, to one map or the other.
enum Entry {
    Lease(Key, AgentId),
    Other(Key, Armed),
}

impl TimerWheel {
    pub fn arm(&mut self, timer: Timer) {
        match self.entry(timer) {
            Some(Entry::Lease(key, id)) => {
                self.lease_entries.insert(key, id);
            }
            Some(Entry::Other(key, armed)) => {
                self.entries.insert(key, armed);
            }
            None => {}
        }
    }

    /// Arms each in turn, as [`TimerWheel::arm`] would. Into an empty
    /// wheel (a start) the entries are built in bulk: nodes full, not half
    /// full as one-by-one inserts leave them (BENCHMARKS.md, memory per
    /// agent).
    pub fn arm_all(&mut self, timers: Vec<Timer>) {
        let (mut leases, mut others) = (Vec::new(), Vec::new());
        for timer in timers {
            match self.entry(timer) {
                Some(Entry::Lease(key, id)) => leases.push((key, id)),
                Some(Entry::Other(key, armed)) => others.push((key, armed)),
                None => {}
            }
        }
        if self.lease_entries.is_empty() {
            self.lease_entries = leases.into_iter().collect();
        } else {
            self.lease_entries.extend(leases);
        }
        if self.entries.is_empty() {
            self.entries = others.into_iter().collect();
        } else {
            self.entries.extend(others);
        }
    }

    /// The entry for `timer`, unless it is a lease the agent already has.
    fn entry(&mut self, timer: Timer) -> Option<Entry> {
        if timer.kind == TimerKind::Lease && !self.leases.insert(timer.agent_id.clone()) {
            return None;
        }
        self.next_seq += 1;
        let key = (timer.at, self.next_seq);
        Some(match timer.kind {
            TimerKind::Lease => Entry::Lease(key, timer.agent_id),
            kind => Entry::Other(
                key,
                Armed {
                    agent_id: timer.agent_id,
                    kind,
                },
            ),
        })
    }

    /// The earliest entry's key, and whether it is a lease.
    fn first(&self) -> Option<(Key, bool)> {
        let other = self.entries.keys().next().map(|key| (*key, false));
        let lease = self.lease_entries.keys().next().map(|key| (*key, true));
        match (other, lease) {
            (Some(other), Some(lease)) => Some(other.min(lease)),
            (other, lease) => other.or(lease),
        }
    }

    pub fn next_at(&self) -> Option<Timestamp> {
        self.first().map(|((at, _), _)| at)
    }

    /// Removes and returns up to `limit` timers due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Timestamp, limit: usize) -> Vec<Timer> {
        let mut due = Vec::new();
        while due.len() < limit
            && let Some(((at, seq), lease)) = self.first()
        {
            if at > now {
                break;
            }
            if lease {
                let agent_id = self
                    .lease_entries
                    .remove(&(at, seq))
                    .expect("the first entry");
                self.leases.remove(&agent_id);
                due.push(Timer {
                    at,
                    agent_id,
                    kind: TimerKind::Lease,
                });
            } else {
                let Armed { agent_id, kind } =
                    self.entries.remove(&(at, seq)).expect("the first entry");
                due.push(Timer { at, agent_id, kind });
            }
        }
        due
    }

    pub fn len(&self) -> usize {
        self.entries.len() + self.lease_entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.lease_entries.is_empty()
    }

    /// Every timer, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = Timer> + '_ {
        let others = self.entries.iter().map(|((at, seq), armed)| {
            let timer = Timer {
                at: *at,
                agent_id: armed.agent_id.clone(),
                kind: armed.kind,
            };
            ((*at, *seq), timer)
        });
        let leases = self.lease_entries.iter().map(|((at, seq), id)| {
            let timer = Timer {
                at: *at,
                agent_id: id.clone(),
                kind: TimerKind::Lease,
            };
            ((*at, *seq), timer)
        });
        let mut all: Vec<_> = others.chain(leases).collect();
        all.sort_by_key(|(key, _)| *key);
        all.into_iter().map(|(_, timer)| timer)
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

    #[test]
    fn leases_and_deadlines_due_together_pop_in_the_order_armed() {
        let lease = |at, agent: &str| Timer {
            at: Timestamp::from_micros(at),
            agent_id: id(agent),
            kind: TimerKind::Lease,
        };
        let mut wheel = TimerWheel::default();
        wheel.arm(lease(10, "a"));
        wheel.arm(checkin(10, "b"));
        wheel.arm(lease(10, "c"));
        wheel.arm(checkin(5, "d"));
        wheel.arm(lease(20, "e"));
        assert_eq!(wheel.len(), 5);
        assert_eq!(wheel.next_at(), Some(Timestamp::from_micros(5)));
        let order = |timers: Vec<Timer>| -> Vec<String> {
            timers.into_iter().map(|t| t.agent_id.to_string()).collect()
        };
        assert_eq!(order(wheel.iter().collect()), ["d", "a", "b", "c", "e"]);
        let due = wheel.pop_due(Timestamp::from_micros(10), 3);
        assert_eq!(order(due), ["d", "a", "b"]);
        assert_eq!(order(wheel.pop_due(Timestamp::from_micros(10), 9)), ["c"]);
        assert_eq!(wheel.next_at(), Some(Timestamp::from_micros(20)));
        // A lease that fired can be armed again; one still armed cannot.
        wheel.arm(lease(30, "a"));
        wheel.arm(lease(40, "e"));
        assert_eq!(order(wheel.iter().collect()), ["e", "a"]);
    }
}
