//! The deadline-ordered timer wheel.
//!
//! Timers are lazy: a check-in or a re-provision does not hunt down the
//! entries it makes obsolete. Each entry names what it was armed for (the
//! agent's generation and attempt), and when it fires the engine compares
//! that with the agent's current state: a stale entry does nothing.
//!
//! Entries live in slots of about a second (2^20 microseconds), each a
//! dense `Vec` of 24-byte entries in the order armed; only the earliest
//! slot is kept sorted, from when it becomes the earliest. A B-tree keyed by
//! deadline filled one by one left its nodes about half full, and every
//! agent holds two timers once it checks in through the API: its lease
//! and its spent check-in deadline, which stays until it would have fired
//! (BENCHMARKS.md, memory per agent).

use std::collections::{BTreeMap, HashSet, VecDeque};

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

/// A slot spans 2^SLOT_BITS microseconds (1.05 s).
const SLOT_BITS: u32 = 20;
const OFFSET_MASK: u32 = (1 << SLOT_BITS) - 1;
/// Marks a lease in [`Entry::offset_and_kind`], above the offset's bits.
const LEASE: u32 = 1 << 31;

/// A timer in its slot: the deadline as microseconds into the slot, the
/// kind in a spare bit beside it.
#[derive(Debug, Clone)]
struct Entry {
    agent_id: AgentId,
    /// A check-in deadline's generation and attempt; zero for a lease.
    generation: u64,
    attempt: u32,
    offset_and_kind: u32,
}

const _: () = assert!(size_of::<Entry>() == 24);

impl Entry {
    fn of(timer: Timer) -> (i64, Entry) {
        let micros = timer.at.as_micros();
        let offset = (micros & i64::from(OFFSET_MASK)) as u32;
        let (generation, attempt, kind) = match timer.kind {
            TimerKind::Checkin {
                generation,
                attempt,
            } => (generation, attempt, 0),
            TimerKind::Lease => (0, 0, LEASE),
        };
        let entry = Entry {
            agent_id: timer.agent_id,
            generation,
            attempt,
            offset_and_kind: offset | kind,
        };
        (micros >> SLOT_BITS, entry)
    }

    fn offset(&self) -> u32 {
        self.offset_and_kind & OFFSET_MASK
    }

    fn is_lease(&self) -> bool {
        self.offset_and_kind & LEASE != 0
    }

    fn at(&self, slot: i64) -> Timestamp {
        Timestamp::from_micros((slot << SLOT_BITS) | i64::from(self.offset()))
    }

    fn timer(&self, slot: i64) -> Timer {
        self.clone().into_timer(slot)
    }

    fn into_timer(self, slot: i64) -> Timer {
        let at = self.at(slot);
        let kind = if self.is_lease() {
            TimerKind::Lease
        } else {
            TimerKind::Checkin {
                generation: self.generation,
                attempt: self.attempt,
            }
        };
        Timer {
            at,
            agent_id: self.agent_id,
            kind,
        }
    }
}

#[derive(Debug, Default)]
pub struct TimerWheel {
    /// The earliest slot and its entries, sorted: equal deadlines in the
    /// order armed. `None` only when the wheel is empty.
    head: Option<(i64, VecDeque<Entry>)>,
    /// The later slots, each in the order armed.
    later: BTreeMap<i64, Vec<Entry>>,
    len: usize,
    /// Agents with a lease entry in the wheel: at most one each.
    leases: HashSet<AgentId>,
}

impl TimerWheel {
    pub fn arm(&mut self, timer: Timer) {
        if !self.admit(&timer) {
            return;
        }
        let (slot, entry) = Entry::of(timer);
        self.len += 1;
        match &mut self.head {
            Some((head, entries)) if slot == *head => {
                // After every entry due no later: equal deadlines (a
                // gateway's held wakes share one) go at the back.
                let at = entry.offset();
                let index = entries.partition_point(|e| e.offset() <= at);
                if entries.len() == entries.capacity() {
                    entries.reserve_exact(growth(entries.len()));
                }
                entries.insert(index, entry);
            }
            Some((head, _)) if slot > *head => push(self.later.entry(slot).or_default(), entry),
            _ => {
                self.demote_head();
                self.head = Some((slot, VecDeque::from([entry])));
            }
        }
    }

    /// Arms each in turn, as [`TimerWheel::arm`] would, each slot grown
    /// once to the size it needs (a start arms a million).
    pub fn arm_all(&mut self, timers: Vec<Timer>) {
        let timers: Vec<Timer> = timers.into_iter().filter(|t| self.admit(t)).collect();
        self.demote_head();
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for timer in &timers {
            *counts.entry(timer.at.as_micros() >> SLOT_BITS).or_default() += 1;
        }
        for (slot, count) in counts {
            self.later.entry(slot).or_default().reserve_exact(count);
        }
        self.len += timers.len();
        for timer in timers {
            let (slot, entry) = Entry::of(timer);
            self.later.entry(slot).or_default().push(entry);
        }
        self.promote();
    }

    /// Whether `timer` goes in: not a lease the agent already has.
    fn admit(&mut self, timer: &Timer) -> bool {
        timer.kind != TimerKind::Lease || self.leases.insert(timer.agent_id.clone())
    }

    /// Puts the head back among the later slots (an earlier one is armed).
    fn demote_head(&mut self) {
        if let Some((slot, entries)) = self.head.take() {
            // Sorted is one order armed that sorts the same.
            self.later.insert(slot, entries.into());
        }
    }

    /// Makes the earliest later slot the head, sorted.
    fn promote(&mut self) {
        debug_assert!(self.head.is_none());
        if let Some((slot, mut entries)) = self.later.pop_first() {
            // Stable: equal deadlines stay in the order armed.
            entries.sort_by_key(Entry::offset);
            self.head = Some((slot, entries.into()));
        }
    }

    pub fn next_at(&self) -> Option<Timestamp> {
        let (slot, entries) = self.head.as_ref()?;
        entries.front().map(|entry| entry.at(*slot))
    }

    /// Removes and returns up to `limit` timers due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Timestamp, limit: usize) -> Vec<Timer> {
        let mut due = Vec::new();
        while due.len() < limit
            && let Some((slot, entries)) = &mut self.head
        {
            let slot = *slot;
            if entries.front().is_none_or(|entry| entry.at(slot) > now) {
                break;
            }
            let entry = entries.pop_front().expect("not empty");
            if entries.is_empty() {
                self.head = None;
                self.promote();
            }
            self.len -= 1;
            let timer = entry.into_timer(slot);
            if timer.kind == TimerKind::Lease {
                self.leases.remove(&timer.agent_id);
            }
            due.push(timer);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every timer, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = Timer> + '_ {
        let head = self
            .head
            .iter()
            .flat_map(|(slot, entries)| entries.iter().map(|entry| entry.timer(*slot)));
        let later = self.later.iter().flat_map(|(slot, entries)| {
            let mut sorted: Vec<&Entry> = entries.iter().collect();
            sorted.sort_by_key(|entry| entry.offset());
            sorted.into_iter().map(|entry| entry.timer(*slot))
        });
        head.chain(later)
    }
}

fn push(entries: &mut Vec<Entry>, entry: Entry) {
    if entries.len() == entries.capacity() {
        entries.reserve_exact(growth(entries.len()));
    }
    entries.push(entry);
}

/// The room a full slot grows by: an eighth, not double as a `Vec` does,
/// or a slot filled one by one holds up to twice the room it needs.
fn growth(len: usize) -> usize {
    len / 8 + 4
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

    /// The wheel as it was before slots: every timer in one ordered map
    /// keyed by deadline and the order armed.
    #[derive(Default)]
    struct Reference {
        timers: BTreeMap<(Timestamp, u64), Timer>,
        seq: u64,
    }

    impl Reference {
        fn arm(&mut self, timer: Timer) {
            let leased = |t: &Timer| t.kind == TimerKind::Lease && t.agent_id == timer.agent_id;
            if timer.kind == TimerKind::Lease && self.timers.values().any(leased) {
                return;
            }
            self.seq += 1;
            self.timers.insert((timer.at, self.seq), timer);
        }

        fn pop_due(&mut self, now: Timestamp, limit: usize) -> Vec<Timer> {
            let mut due = Vec::new();
            while due.len() < limit
                && let Some(entry) = self.timers.first_entry()
                && entry.key().0 <= now
            {
                due.push(entry.remove());
            }
            due
        }
    }

    /// A small deterministic generator (SplitMix64).
    struct Numbers(u64);

    impl Numbers {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = self.0;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (x ^ (x >> 31)) % n
        }

        /// A timer due around `now`: many deadlines equal, some on a
        /// slot's first or last microsecond, some in slots further on.
        fn timer(&mut self, now: i64) -> Timer {
            const SLOT: i64 = 1 << SLOT_BITS;
            let at = match self.below(4) {
                0 => now + self.below(8) as i64,
                1 => now + (self.below(4) as i64) * SLOT - self.below(2) as i64,
                _ => now - SLOT + self.below(6 * SLOT as u64) as i64,
            };
            let agent = format!("a{}", self.below(40));
            let kind = if self.below(2) == 0 {
                TimerKind::Lease
            } else {
                TimerKind::Checkin {
                    generation: self.below(3),
                    attempt: self.below(3) as u32 + 1,
                }
            };
            Timer {
                at: Timestamp::from_micros(at),
                agent_id: id(&agent),
                kind,
            }
        }
    }

    #[test]
    fn slots_pop_as_one_ordered_map_would() {
        const SLOT: i64 = 1 << SLOT_BITS;
        let mut numbers = Numbers(7);
        let (mut wheel, mut reference) = (TimerWheel::default(), Reference::default());
        // From before the epoch (negative slots) to a hundred slots on.
        let mut now = -2 * SLOT;
        for round in 0..400 {
            if round % 50 == 0 {
                let timers: Vec<Timer> = (0..30).map(|_| numbers.timer(now)).collect();
                timers.iter().for_each(|t| reference.arm(t.clone()));
                wheel.arm_all(timers);
            } else {
                for _ in 0..numbers.below(4) {
                    let t = numbers.timer(now);
                    reference.arm(t.clone());
                    wheel.arm(t);
                }
            }
            assert_eq!(wheel.len(), reference.timers.len());
            assert!(wheel.iter().eq(reference.timers.values().cloned()));
            assert_eq!(
                wheel.next_at(),
                reference.timers.keys().next().map(|(at, _)| *at)
            );
            now += numbers.below(SLOT as u64 / 2) as i64;
            let limit = numbers.below(6) as usize;
            let at = Timestamp::from_micros(now);
            assert_eq!(wheel.pop_due(at, limit), reference.pop_due(at, limit));
        }
        let end = Timestamp::from_micros(i64::MAX);
        assert_eq!(
            wheel.pop_due(end, usize::MAX),
            reference.pop_due(end, usize::MAX)
        );
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_at(), None);
    }

    #[test]
    fn equal_deadlines_armed_into_the_earliest_slot_pop_after_those_before() {
        let mut wheel = TimerWheel::default();
        wheel.arm(checkin(10, "a"));
        wheel.arm(checkin(12, "b"));
        // The earliest slot is sorted now; these go in among its entries.
        wheel.arm(checkin(10, "c"));
        wheel.arm(checkin(11, "d"));
        wheel.arm(checkin(9, "e"));
        let order = |timers: Vec<Timer>| -> Vec<String> {
            timers.into_iter().map(|t| t.agent_id.to_string()).collect()
        };
        assert_eq!(
            order(wheel.pop_due(Timestamp::from_micros(10), 2)),
            ["e", "a"]
        );
        wheel.arm(checkin(10, "f"));
        assert_eq!(
            order(wheel.pop_due(Timestamp::from_micros(20), usize::MAX)),
            ["c", "f", "d", "b"]
        );
    }

    #[test]
    fn a_gateways_held_wakes_sharing_one_deadline_pop_in_the_order_armed() {
        let mut wheel = TimerWheel::default();
        let names: Vec<String> = (0..5000).map(|n| format!("held-{n}")).collect();
        wheel.arm(checkin(7, "first"));
        for name in &names {
            wheel.arm(checkin(1000, name));
        }
        assert_eq!(wheel.pop_due(Timestamp::from_micros(7), 5).len(), 1);
        let due = wheel.pop_due(Timestamp::from_micros(1000), usize::MAX);
        assert!(due.iter().map(|t| t.agent_id.to_string()).eq(names));
        assert!(wheel.is_empty());
    }

    #[test]
    fn a_deadline_before_the_earliest_slot_comes_first() {
        let second = 1 << SLOT_BITS;
        let mut wheel = TimerWheel::default();
        wheel.arm(checkin(3 * second, "later"));
        wheel.arm(checkin(3 * second, "later2"));
        wheel.arm(checkin(second + 5, "sooner"));
        wheel.arm(checkin(3 * second, "later3"));
        assert_eq!(wheel.next_at(), Some(Timestamp::from_micros(second + 5)));
        let due: Vec<_> = wheel
            .pop_due(Timestamp::from_micros(3 * second), usize::MAX)
            .into_iter()
            .map(|t| t.agent_id.to_string())
            .collect();
        assert_eq!(due, ["sooner", "later", "later2", "later3"]);
    }
}
