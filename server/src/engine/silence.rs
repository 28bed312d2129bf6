//! The brake's census kept as it changes, instead of a pass over every agent
//! per batch: at a million agents a pass is a full scan under the engine
//! lock, once per batch that judges a failing agent and once a second per
//! braked gateway, while heartbeats wait.
//!
//! Whether an agent is silent depends on the time as well as on the agent
//! (see [`Engine::silent`]), so the index keeps, per gateway, the instants at
//! which each counted agent's silence turns, in ordered multisets with a
//! cached rank: a census at a later instant moves each rank over the
//! instants passed since the last one (O(changes), not O(agents)).
//!
//! - an online agent (no deadline, no held wake) is silent once
//!   `heard + window < now`: ranked by `heard`, against `now - window`
//!   (and never while `listening_since` is within the window);
//! - an agent awaiting a check-in (not held) is *not* silent on
//!   `[from, deadline)`, `from` being when its retrigger's window ends
//!   (`sent + window` after a second attempt) or the beginning of time: the
//!   number not silent is `#(from <= now) - #(deadline <= now)`, as
//!   `deadline <= now` implies `from <= now`; one with `from >= deadline`
//!   is always silent;
//! - an offline agent whose verdict a braked gateway let go counts as silent
//!   while `updated_at >= since` of the brake: ranked by `updated_at`.
//!
//! Agents awaiting a check-in on a gateway that is away are left out, as
//! before: their part is kept apart and skipped for such gateways. Agents
//! staged in the batch are laid over the index one by one.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::brake::{Census, Censuses};
use super::model::{Agent, GatewayId, Status, Timestamp};

/// A multiset of instants with a cached count of those before a threshold.
#[derive(Debug, Default, Clone)]
struct Ranked {
    counts: BTreeMap<Timestamp, u32>,
    total: usize,
    /// The last threshold asked for, and how many instants are before it.
    cursor: Option<(Timestamp, usize)>,
}

impl Ranked {
    fn add(&mut self, at: Timestamp) {
        *self.counts.entry(at).or_default() += 1;
        self.total += 1;
        if let Some((threshold, before)) = &mut self.cursor
            && at < *threshold
        {
            *before += 1;
        }
    }

    fn remove(&mut self, at: Timestamp) {
        let std::collections::btree_map::Entry::Occupied(mut entry) = self.counts.entry(at) else {
            debug_assert!(false, "removing an instant never added");
            return;
        };
        *entry.get_mut() -= 1;
        if *entry.get() == 0 {
            entry.remove();
        }
        self.total -= 1;
        if let Some((threshold, before)) = &mut self.cursor
            && at < *threshold
        {
            *before -= 1;
        }
    }

    /// How many instants are before `threshold`: the cached count moved
    /// over the instants between the last threshold and this one.
    fn before(&mut self, threshold: Timestamp) -> usize {
        let sum = |range: std::collections::btree_map::Range<'_, Timestamp, u32>| {
            range.map(|(_, n)| *n as usize).sum::<usize>()
        };
        let before = match self.cursor {
            None => sum(self.counts.range(..threshold)),
            Some((last, before)) if threshold >= last => {
                before + sum(self.counts.range(last..threshold))
            }
            Some((last, before)) => before - sum(self.counts.range(threshold..last)),
        };
        self.cursor = Some((threshold, before));
        before
    }

    fn at_or_before(&mut self, at: Timestamp) -> usize {
        self.before(at.plus(Duration::from_micros(1)))
    }
}

/// What one agent adds to its gateway's census, as time goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Online {
        heard: Timestamp,
    },
    Checkin {
        from: Timestamp,
        deadline: Timestamp,
    },
    CheckinAlways,
    /// Offline: silent while its gateway's brake is older than this.
    LetGo {
        updated_at: Timestamp,
        awaiting: bool,
    },
}

impl Part {
    fn of(agent: &Agent, window: Duration) -> Option<Part> {
        let offline = agent.status == Status::Offline;
        let let_go = || {
            offline.then_some(Part::LetGo {
                updated_at: agent.updated_at,
                awaiting: agent.awaiting_checkin(),
            })
        };
        if agent.wake_held {
            return let_go();
        }
        if let Some(deadline) = agent.checkin_deadline_at {
            let from = (agent.wake_attempts > 1)
                .then_some(agent.last_wake_sent_at)
                .flatten()
                .map_or(Timestamp::from_micros(i64::MIN), |sent| sent.plus(window));
            return Some(if from < deadline {
                Part::Checkin { from, deadline }
            } else {
                Part::CheckinAlways
            });
        }
        if agent.status == Status::Online {
            let heard = agent.last_seen_at.unwrap_or(agent.updated_at);
            return Some(Part::Online { heard });
        }
        let_go()
    }
}

#[derive(Debug, Default, Clone)]
struct GatewaySilence {
    online: Ranked,
    checkin_from: Ranked,
    checkin_until: Ranked,
    checkin_always: usize,
    let_go: Ranked,
    let_go_awaiting: Ranked,
}

impl GatewaySilence {
    fn apply(&mut self, part: Part, add: bool) {
        let op = |ranked: &mut Ranked, at| {
            if add {
                ranked.add(at)
            } else {
                ranked.remove(at)
            }
        };
        match part {
            Part::Online { heard } => op(&mut self.online, heard),
            Part::Checkin { from, deadline } => {
                op(&mut self.checkin_from, from);
                op(&mut self.checkin_until, deadline);
            }
            Part::CheckinAlways if add => self.checkin_always += 1,
            Part::CheckinAlways => self.checkin_always -= 1,
            Part::LetGo {
                updated_at,
                awaiting: false,
            } => op(&mut self.let_go, updated_at),
            Part::LetGo {
                updated_at,
                awaiting: true,
            } => op(&mut self.let_go_awaiting, updated_at),
        }
    }

    fn is_empty(&self) -> bool {
        self.online.total == 0
            && self.checkin_from.total == 0
            && self.checkin_always == 0
            && self.let_go.total == 0
            && self.let_go_awaiting.total == 0
    }
}

/// What the census needs to know besides the agents, at its instant.
pub(super) struct Instant<'a> {
    pub now: Timestamp,
    pub window: Duration,
    pub listening_since: Option<Timestamp>,
    /// Whether the gateway's link is down (its waiting agents are left out).
    pub away: &'a dyn Fn(&GatewayId) -> bool,
    /// When the gateway's brake was engaged, if it is braked.
    pub braked_since: &'a dyn Fn(&GatewayId) -> Option<Timestamp>,
}

/// Every committed agent's part in the census, by gateway. `None` until
/// first needed (a leader's first census builds it), and again whenever
/// agents change behind its back (a follower applying the leader's events).
#[derive(Debug, Default)]
pub(super) struct SilenceIndex {
    gateways: Option<HashMap<GatewayId, GatewaySilence>>,
    window: Duration,
}

impl SilenceIndex {
    pub fn is_built(&self) -> bool {
        self.gateways.is_some()
    }

    pub fn invalidate(&mut self) {
        self.gateways = None;
    }

    pub fn build<'a>(&mut self, window: Duration, agents: impl Iterator<Item = &'a Agent>) {
        self.window = window;
        self.gateways = Some(HashMap::new());
        for agent in agents {
            self.replace(None, Some(agent));
        }
    }

    /// An agent changed from `old` to `new` (either may be absent).
    pub fn replace(&mut self, old: Option<&Agent>, new: Option<&Agent>) {
        let Some(gateways) = &mut self.gateways else {
            return;
        };
        let window = self.window;
        for (agent, add) in [(old, false), (new, true)] {
            let Some(agent) = agent else { continue };
            let Some(part) = Part::of(agent, window) else {
                continue;
            };
            let gateway = gateways.entry(agent.gateway_id.clone()).or_default();
            gateway.apply(part, add);
            if !add && gateway.is_empty() {
                gateways.remove(&agent.gateway_id);
            }
        }
    }

    /// The agent was heard from, last before at `before`: its lease was
    /// renewed in memory (no other field its part depends on changed).
    pub fn heard(&mut self, agent: &Agent, before: Timestamp) {
        let Some(Part::Online { heard }) = Part::of(agent, self.window) else {
            return;
        };
        if heard == before {
            return;
        }
        let Some(gateway) = self
            .gateways
            .as_mut()
            .and_then(|g| g.get_mut(&agent.gateway_id))
        else {
            return;
        };
        gateway.online.remove(before);
        gateway.online.add(heard);
    }

    /// The census of the committed agents at `at` (the index must be built).
    pub fn census(&mut self, at: &Instant<'_>) -> Censuses {
        let mut censuses = Censuses::default();
        let gateways = self.gateways.as_mut().expect("built before a census");
        let quiet_until = at.now.minus(at.window);
        // Nobody is silent for the time the service could not hear them.
        let listening = at.listening_since.is_none_or(|since| since < quiet_until);
        for (id, gateway) in gateways.iter_mut() {
            let mut census = Census::default();
            census.expected += gateway.online.total;
            if listening {
                census.silent += gateway.online.before(quiet_until);
            }
            let away = (at.away)(id);
            if !away {
                let waiting = gateway.checkin_from.total;
                let answering = gateway.checkin_from.at_or_before(at.now)
                    - gateway.checkin_until.at_or_before(at.now);
                census.expected += waiting + gateway.checkin_always;
                census.silent += waiting - answering + gateway.checkin_always;
            }
            if let Some(since) = (at.braked_since)(id) {
                let mut let_go = gateway.let_go.total - gateway.let_go.before(since);
                if !away {
                    let_go += gateway.let_go_awaiting.total - gateway.let_go_awaiting.before(since);
                }
                census.expected += let_go;
                census.silent += let_go;
            }
            if census.expected > 0 {
                censuses.fleet.expected += census.expected;
                censuses.fleet.silent += census.silent;
                censuses.by_gateway.insert(id.clone(), census);
            }
        }
        censuses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    #[test]
    fn ranks_move_both_ways_and_follow_changes() {
        let mut ranked = Ranked::default();
        for t in [5, 1, 3, 3, 9] {
            ranked.add(at(t));
        }
        assert_eq!(ranked.before(at(4)), 3);
        assert_eq!(ranked.before(at(10)), 5);
        assert_eq!(ranked.before(at(3)), 1);
        ranked.remove(at(1));
        ranked.add(at(2));
        ranked.add(at(7));
        assert_eq!(ranked.before(at(3)), 1);
        assert_eq!(ranked.at_or_before(at(3)), 3);
        assert_eq!(ranked.before(at(8)), 5);
        assert_eq!(ranked.before(at(i64::MIN)), 0);
    }
}
