//! A follower's copy of the leader's state, kept warm so that a takeover
//! reads only what changed since the follower's last position.
//!
//! Events move the copy forward and feed this replica's watchers, but they do
//! not carry everything a takeover needs: token hashes, leases checkpointed
//! without an event, and the small tables (gateways, pending retires,
//! rollouts, template syncs). The store reads those
//! (see `Store::changes_since`), and [`Engine::apply_rows`] lays them over the
//! copy, so that after each complete read the copy's agents equal the
//! store's.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::model::{Agent, AgentId, Event, EventKind, Gateway, PendingRetire, Timestamp};
use super::rollout::Rollout;
use super::template_sync::PendingSync;
use super::{Engine, Policy, StoredState};

/// An agent's lease fields as a lease checkpoint left them in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    pub agent_id: AgentId,
    pub generation: u64,
    pub last_seen_at: Option<Timestamp>,
    pub lease_expires_at: Option<Timestamp>,
}

/// The copy disagrees with the store: it cannot be trusted for a takeover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the follower's copy disagrees with the store: {0}")]
pub struct Diverged(pub String);

impl Engine {
    /// A copy of stored state as it is: no timers, no grace. A follower's
    /// starting point; [`Engine::restore`] makes it a leader's.
    pub fn from_stored(policy: Policy, state: StoredState) -> Engine {
        let mut engine = Engine::new(policy);
        engine.revision = state.revision;
        engine.replace_directory(
            state.gateways,
            state.pending_retires,
            state.rollouts,
            state.pending_syncs,
        );
        engine.tombstones.extend(state.tombstones);
        engine.agent_tokens.reserve(state.agents.len());
        let mut agents = state.agents;
        for agent in &mut agents {
            engine.intern(agent);
            engine
                .agent_tokens
                .insert(agent.token_hash, agent.id.clone());
            engine.index_owed(None, Some(agent));
        }
        // Built whole from sorted input, the map's nodes are full; inserted
        // one by one, they split and stay about half full (BENCHMARKS.md,
        // memory per agent). A later duplicate wins, as with inserts.
        engine.agents = agents
            .into_iter()
            .map(|agent| (agent.id.clone(), Arc::new(agent)))
            .collect();
        crate::heap::release_freed_memory();
        engine
    }

    /// Applies an event another replica committed, to keep a follower's
    /// copy current. Events do not carry token hashes: the copy keeps the
    /// one it knows until [`Engine::apply_rows`] brings the stored one.
    pub fn apply_event(&mut self, event: &Event) {
        self.silence.invalidate();
        let id = &event.agent.id;
        match event.kind {
            EventKind::Deleted => {
                if let Some(old) = self.agents.remove(id) {
                    self.forget_token(&old);
                    self.index_owed(Some(old.as_ref()), None);
                }
                // As the leader's delete writes it: the generation reached.
                let reached = self.tombstones.entry(id.clone()).or_default();
                *reached = (*reached).max(event.agent.generation);
            }
            EventKind::Added | EventKind::Changed => {
                let mut agent = event.agent.clone();
                let old = self.agents.remove(id);
                if let Some(old) = &old {
                    agent.token_hash = old.token_hash;
                }
                // Kept in step, so that a takeover in place finds it right.
                self.index_owed(old.as_deref(), Some(&agent));
                self.agents.insert(id.clone(), Arc::new(agent));
            }
        }
        self.revision = self.revision.max(event.revision);
    }

    /// Lays the store's rows over the copy, once its events are applied up
    /// to the same snapshot: `rows` are the stored agents among `named`
    /// (the ids events named since the last such call; one with no row was
    /// deleted), `leases` the lease fields of agents checkpointed since.
    pub fn apply_rows(
        &mut self,
        named: &BTreeSet<AgentId>,
        rows: Vec<Agent>,
        leases: Vec<StoredLease>,
    ) -> Result<(), Diverged> {
        self.silence.invalidate();
        for lease in leases {
            let Some(agent) = self.agents.get_mut(&lease.agent_id).map(Arc::make_mut) else {
                return Err(Diverged(format!(
                    "agent {} has a checkpointed lease but no copy",
                    lease.agent_id
                )));
            };
            if agent.generation != lease.generation {
                return Err(Diverged(format!(
                    "agent {} is at generation {} in the store, {} in the copy",
                    lease.agent_id, lease.generation, agent.generation
                )));
            }
            agent.last_seen_at = lease.last_seen_at;
            agent.lease_expires_at = lease.lease_expires_at;
        }
        let mut stored = BTreeSet::new();
        for row in rows {
            if !named.contains(&row.id) {
                return Err(Diverged(format!("agent {} was not asked for", row.id)));
            }
            stored.insert(row.id.clone());
            let old = self.agents.remove(&row.id);
            if let Some(old) = &old {
                self.forget_token(old);
            }
            self.index_owed(old.as_deref(), Some(&row));
            self.agent_tokens.insert(row.token_hash, row.id.clone());
            self.agents.insert(row.id.clone(), Arc::new(row));
        }
        if let Some(gone) = named
            .iter()
            .find(|id| !stored.contains(*id) && self.agents.contains_key(*id))
        {
            return Err(Diverged(format!(
                "agent {gone} is deleted in the store but not in the copy"
            )));
        }
        Ok(())
    }

    /// Replaces the small tables (gateways, pending retires, rollouts,
    /// template syncs) with the store's: events do not carry them, so a
    /// takeover from a warm copy reads them whole and lays them here before
    /// [`Engine::lead_from`].
    pub fn replace_directory(
        &mut self,
        gateways: Vec<Gateway>,
        pending_retires: Vec<PendingRetire>,
        rollouts: Vec<Rollout>,
        pending_syncs: Vec<PendingSync>,
    ) {
        self.gateways.clear();
        self.gateway_tokens.clear();
        for gateway in gateways {
            self.gateway_tokens
                .insert(gateway.token_hash, gateway.id.clone());
            self.gateways.insert(gateway.id.clone(), gateway);
        }
        self.pending_retires = pending_retires.into_iter().collect();
        self.template_syncs = pending_syncs
            .into_iter()
            .map(|sync| (sync.gateway_id.clone(), sync))
            .collect();
        self.rollouts.clear();
        self.rollout_index.clear();
        for rollout in rollouts {
            self.commit_rollout(rollout);
        }
    }

    /// What a load of the store would return, from this copy and the small
    /// tables read beside it: the randomized follower test compares it
    /// with a load.
    #[cfg(test)]
    pub fn warm_state(
        &self,
        gateways: Vec<Gateway>,
        pending_retires: Vec<PendingRetire>,
        rollouts: Vec<Rollout>,
        pending_syncs: Vec<PendingSync>,
        checkpoint: u64,
    ) -> StoredState {
        StoredState {
            agents: self.agents.values().map(|a| Agent::clone(a)).collect(),
            gateways,
            pending_retires,
            tombstones: self.tombstones(),
            revision: self.revision,
            rollouts,
            checkpoint,
            pending_syncs,
        }
    }

    fn forget_token(&mut self, agent: &Agent) {
        self.agent_tokens.remove(&agent.token_hash, &agent.id);
    }
}
