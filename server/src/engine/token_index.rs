//! Which agent holds a token: the heartbeat's first lookup, and beside it
//! the agent's heartbeat budget (see `heartbeat_budget`), so a heartbeat
//! finds both with one lookup.
//!
//! Keyed by the first 8 bytes of the token's SHA-256, not all 32: a slot
//! of 24 bytes instead of 48 (BENCHMARKS.md, memory per agent). Two tokens
//! can share a prefix, so a hit is checked against the agent's own hash,
//! and a token whose prefix another agent already holds is kept whole in a
//! second map, which stays empty but for such (astronomically rare) pairs.

use std::collections::HashMap;

use super::model::{AgentId, Timestamp, TokenHash};

#[derive(Debug, Default)]
pub struct TokenIndex {
    by_prefix: HashMap<u64, Slot>,
    collided: HashMap<TokenHash, Slot>,
}

/// The agent a token names, and its heartbeat budget's arrival time (none
/// while the budget is full, as for an agent never heard from).
#[derive(Debug, Clone)]
pub struct Slot {
    pub agent_id: AgentId,
    pub budget_tat: Option<Timestamp>,
}

impl Slot {
    fn new(agent_id: AgentId, budget_tat: Option<Timestamp>) -> Self {
        Self {
            agent_id,
            budget_tat,
        }
    }
}

fn prefix(token: &TokenHash) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&token.0[..8]);
    u64::from_le_bytes(first)
}

impl TokenIndex {
    /// The slot of the agent holding `token`, and what `holder` makes of
    /// that agent. Only one agent can hold it: the one a token kept whole
    /// names, or else its prefix's holder, who may hold another token with
    /// the same prefix; so `holder` is asked once, and answers None unless
    /// that agent's current token is `token`. One lookup here and one of
    /// the agent, where a lookup to check the holder and another to reach
    /// its slot made two of each.
    pub fn holder_mut<A>(
        &mut self,
        token: &TokenHash,
        holder: impl FnOnce(&AgentId) -> Option<A>,
    ) -> Option<(&mut Slot, A)> {
        let slot = match self.collided.get_mut(token) {
            Some(slot) => slot,
            None => self.by_prefix.get_mut(&prefix(token))?,
        };
        let found = holder(&slot.agent_id)?;
        Some((slot, found))
    }

    /// Indexes `token` for `id`, with a full heartbeat budget.
    pub fn insert(&mut self, token: TokenHash, id: AgentId) {
        self.insert_with_budget(token, id, None);
    }

    /// Indexes `token` for `id`, keeping a budget the agent already spent
    /// (under a token it held before).
    pub fn insert_with_budget(
        &mut self,
        token: TokenHash,
        id: AgentId,
        budget_tat: Option<Timestamp>,
    ) {
        match self.by_prefix.get_mut(&prefix(&token)) {
            None => {
                self.by_prefix
                    .insert(prefix(&token), Slot::new(id, budget_tat));
            }
            Some(held) if held.agent_id == id => *held = Slot::new(id, budget_tat),
            Some(_) => {
                self.collided.insert(token, Slot::new(id, budget_tat));
            }
        }
    }

    /// Forgets `token`, the one `id` was indexed with, if `id` holds it;
    /// returns its heartbeat budget.
    pub fn remove(&mut self, token: &TokenHash, id: &AgentId) -> Option<Timestamp> {
        let key = prefix(token);
        if self
            .by_prefix
            .get(&key)
            .is_some_and(|slot| slot.agent_id == *id)
        {
            self.by_prefix.remove(&key)?.budget_tat
        } else if self
            .collided
            .get(token)
            .is_some_and(|slot| slot.agent_id == *id)
        {
            self.collided.remove(token)?.budget_tat
        } else {
            None
        }
    }

    pub fn reserve(&mut self, additional: usize) {
        self.by_prefix.reserve(additional);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn token(prefix: u8, rest: u8) -> TokenHash {
        let mut token = [rest; 32];
        token[..8].copy_from_slice(&[prefix; 8]);
        TokenHash(token)
    }

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[test]
    fn tokens_that_share_a_prefix_find_their_own_agents() {
        let mut tokens = BTreeMap::new();
        let mut index = TokenIndex::default();
        for (name, token) in [("a", token(1, 1)), ("b", token(1, 2)), ("c", token(2, 3))] {
            tokens.insert(id(name), token);
            index.insert(token, id(name));
        }
        let lookup = |index: &mut TokenIndex, tokens: &BTreeMap<AgentId, TokenHash>, t| {
            index
                .holder_mut(&t, |id| {
                    (tokens.get(id) == Some(&t)).then(|| id.to_string())
                })
                .map(|(_, id)| id)
        };
        assert_eq!(
            lookup(&mut index, &tokens, token(1, 1)).as_deref(),
            Some("a")
        );
        assert_eq!(
            lookup(&mut index, &tokens, token(1, 2)).as_deref(),
            Some("b")
        );
        assert_eq!(
            lookup(&mut index, &tokens, token(2, 3)).as_deref(),
            Some("c")
        );
        assert_eq!(lookup(&mut index, &tokens, token(1, 9)), None);
        assert_eq!(lookup(&mut index, &tokens, token(3, 3)), None);

        // The prefix's first holder goes: the second is still found, and a
        // third with the same prefix takes the free slot.
        index.remove(&token(1, 1), &id("a"));
        tokens.remove(&id("a"));
        assert_eq!(lookup(&mut index, &tokens, token(1, 1)), None);
        assert_eq!(
            lookup(&mut index, &tokens, token(1, 2)).as_deref(),
            Some("b")
        );
        tokens.insert(id("d"), token(1, 4));
        index.insert(token(1, 4), id("d"));
        assert_eq!(
            lookup(&mut index, &tokens, token(1, 4)).as_deref(),
            Some("d")
        );
        assert_eq!(
            lookup(&mut index, &tokens, token(1, 2)).as_deref(),
            Some("b")
        );

        // Removing names the holder: another agent's token is left alone.
        index.remove(&token(1, 2), &id("c"));
        assert_eq!(
            lookup(&mut index, &tokens, token(1, 2)).as_deref(),
            Some("b")
        );
        index.remove(&token(1, 2), &id("b"));
        tokens.remove(&id("b"));
        assert_eq!(lookup(&mut index, &tokens, token(1, 2)), None);
        assert_eq!(
            lookup(&mut index, &tokens, token(1, 4)).as_deref(),
            Some("d")
        );
    }

    #[test]
    fn a_rotated_token_no_longer_finds_its_agent() {
        let mut tokens = BTreeMap::from([(id("a"), token(1, 1))]);
        let mut index = TokenIndex::default();
        index.insert(token(1, 1), id("a"));
        index.remove(&token(1, 1), &id("a"));
        tokens.insert(id("a"), token(5, 5));
        index.insert(token(5, 5), id("a"));
        let mut find = |t| {
            index
                .holder_mut(&t, |id| (tokens.get(id) == Some(&t)).then(|| id.clone()))
                .map(|(_, id)| id)
        };
        assert_eq!(find(token(1, 1)), None);
        assert_eq!(find(token(5, 5)), Some(id("a")));
    }

    /// The slot `token` names if `id` holds it.
    fn slot_of<'a>(
        index: &'a mut TokenIndex,
        token: &TokenHash,
        id: &AgentId,
    ) -> Option<&'a mut Slot> {
        index
            .holder_mut(token, |holder| (holder == id).then_some(()))
            .map(|(slot, ())| slot)
    }

    #[test]
    fn each_holder_keeps_its_own_budget_and_gives_it_back_when_removed() {
        let mut index = TokenIndex::default();
        let at = Timestamp::from_micros;
        index.insert(token(1, 1), id("a"));
        index.insert_with_budget(token(1, 2), id("b"), Some(at(7)));
        // The prefix is a's: b is kept whole, and each slot is found by its
        // holder only.
        slot_of(&mut index, &token(1, 1), &id("a"))
            .unwrap()
            .budget_tat = Some(at(5));
        assert!(slot_of(&mut index, &token(1, 1), &id("b")).is_none());
        assert_eq!(
            slot_of(&mut index, &token(1, 2), &id("b"))
                .unwrap()
                .budget_tat,
            Some(at(7))
        );
        assert_eq!(index.remove(&token(1, 2), &id("c")), None);
        assert_eq!(index.remove(&token(1, 2), &id("b")), Some(at(7)));
        assert_eq!(index.remove(&token(1, 1), &id("a")), Some(at(5)));
        assert!(slot_of(&mut index, &token(1, 1), &id("a")).is_none());
    }
}
