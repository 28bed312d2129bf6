//! The lifecycle engine: agents, their state machine, and the timer wheel.
//!
//! Plain Rust: no transport, no SQL, no clock. Every operation takes the
//! current time as an argument. Writes are two-phase: an operation stages a
//! transition in a [`Batch`]; the runtime commits the batch to the store and
//! only then calls [`Engine::commit`], so nothing uncommitted is ever visible.
//! Agents staged in a batch are "in flight" until then, and the heartbeat
//! fast path leaves them alone.

mod batch;
pub mod brake;
mod commands;
mod drift;
mod follow;
pub mod gateway_state;
mod gauges;
mod heartbeat_budget;
pub mod model;
pub mod policy;
mod reconcile;
mod restore;
pub mod rollout;
mod silence;
mod template_sync;
pub mod timers;
mod token_index;
mod wake_queue;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub use batch::{
    Batch, Committed, Effect, GatewayTransition, Note, NoteKind, QueueReport, WakeOrder,
};
pub use brake::{Brake, BrakeState, Census, GatewayState};
pub use commands::{GatewayRegistered, GatewaySpec, ProvisionSpec, Provisioned};
pub use drift::{DriftCount, DriftReport};
pub use follow::{Diverged, StoredLease};
pub use gateway_state::{Link, LinkState};
pub use gauges::AgentGauges;
pub use heartbeat_budget::{HEARTBEAT_BURST, HeartbeatBudget};
pub use model::{
    Agent, AgentId, BoardId, Event, EventKind, Gateway, GatewayId, PendingRetire, Reason, Role,
    RolloutId, SharedStr, Status, Timestamp, TokenHash,
};
pub use policy::Policy;
pub use restore::StoredState;
pub use template_sync::PendingSync;
pub use wake_queue::RELEASE_ROUND;

use timers::{Timer, TimerKind, TimerWheel};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("agent {0} not found")]
    AgentNotFound(AgentId),
    #[error("gateway {0} is not registered")]
    GatewayNotFound(GatewayId),
    /// Deliberately says nothing about whether the agent exists.
    #[error("invalid agent token")]
    Unauthenticated,
    #[error("{0}")]
    FailedPrecondition(String),
}

/// Which agents a list or a watch wants. Empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFilter {
    pub agent_id: Option<AgentId>,
    pub gateway_id: Option<GatewayId>,
    pub board_id: Option<BoardId>,
    pub statuses: Vec<Status>,
    /// Only agents whose reported template version differs from the desired
    /// one, or that never reported one (see [`Agent::drifted`]).
    pub drifted: bool,
}

impl AgentFilter {
    pub fn matches(&self, agent: &Agent) -> bool {
        self.matches_parts(
            &agent.id,
            &agent.gateway_id,
            agent.board_id.as_ref(),
            agent.status,
        ) && (!self.drifted || agent.drifted())
    }

    pub fn matches_parts(
        &self,
        agent_id: &AgentId,
        gateway_id: &GatewayId,
        board_id: Option<&BoardId>,
        status: Status,
    ) -> bool {
        self.agent_id.as_ref().is_none_or(|id| id == agent_id)
            && self.gateway_id.as_ref().is_none_or(|g| g == gateway_id)
            && self.board_id.as_ref().is_none_or(|b| board_id == Some(b))
            && (self.statuses.is_empty() || self.statuses.contains(&status))
    }

    /// An event matches when its agent matches before or after the change,
    /// so a watcher on a status or a board also sees agents leave it. Events
    /// do not record whether the agent drifted before, so a drift filter
    /// also passes every change that can end a drift (a check-in, a reported
    /// version, a new desired version): a watcher sees agents leave it too.
    pub fn matches_event(&self, event: &Event) -> bool {
        let agent = &event.agent;
        self.matches(agent)
            || event.previous_status.is_some_and(|previous| {
                self.matches_parts(
                    &agent.id,
                    &agent.gateway_id,
                    event.previous_board_id.as_ref(),
                    previous,
                ) && (!self.drifted || event.reason.may_change_drift())
            })
    }
}

/// The outcome of the heartbeat fast path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// An online agent's lease was renewed in memory; nothing to commit.
    Renewed(LeaseState),
    /// The heartbeat is a transition (a check-in, a new template version, or
    /// the agent is in flight): it must go through a committed batch.
    NeedsCommit(AgentId),
    /// No agent holds this token.
    UnknownToken,
}

/// What a heartbeat asks of the agent's budgets, for the caller to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The heartbeat budget: within it, or refused for this long.
    pub heartbeat: Result<(), Duration>,
    /// The heartbeat reports a template version other than the agent's.
    pub new_template: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub agent_id: AgentId,
    pub status: Status,
    pub generation: u64,
    pub last_seen_at: Timestamp,
    pub lease_expires_at: Option<Timestamp>,
    /// What was left of the previous lease when the heartbeat arrived: how
    /// early agents beat (zero: at or after the expiry).
    pub time_left: Duration,
}

impl LeaseState {
    fn of(agent: &Agent, time_left: Duration) -> Self {
        Self {
            agent_id: agent.id.clone(),
            status: agent.status,
            generation: agent.generation,
            last_seen_at: agent.last_seen_at.unwrap_or(agent.updated_at),
            lease_expires_at: agent.lease_expires_at,
            time_left,
        }
    }
}

/// A heartbeat waiting for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCheckIn {
    pub received_at: Timestamp,
    pub token: TokenHash,
    pub reported_template: Option<String>,
}

/// A lease renewed in memory, to be written to the store in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseCheckpoint {
    pub agent_id: AgentId,
    pub generation: u64,
    pub last_seen_at: Timestamp,
    pub lease_expires_at: Timestamp,
}

/// Leases a takeover extended, written per checkpoint beside the renewed
/// ones (see [`Engine::take_dirty_leases`]).
pub const EXTENDED_LEASES_PER_CHECKPOINT: usize = 5_000;

/// Leases a checkpoint reads per hold of the engine's lock (see
/// [`Engine::push_leases_of`]): at most about 5 ms at 1,000,000 agents.
pub const LEASES_READ_PER_LOCK: usize = 16_384;

#[derive(Debug)]
pub struct Engine {
    policy: Policy,
    /// Shared, so a watch snapshot holds pointers, not copies: a change
    /// copies an agent (`Arc::make_mut`) only while a snapshot still holds it.
    agents: BTreeMap<AgentId, Arc<Agent>>,
    agent_tokens: token_index::TokenIndex,
    gateways: BTreeMap<GatewayId, Gateway>,
    gateway_tokens: HashMap<TokenHash, GatewayId>,
    pending_retires: BTreeSet<PendingRetire>,
    /// Deleted agent ids and the generation each reached.
    tombstones: HashMap<AgentId, u64>,
    timers: TimerWheel,
    /// Agents staged in a batch that is being committed.
    in_flight: HashSet<AgentId>,
    /// Wake budgets per gateway and in total (see `wake_queue`).
    wake_limits: wake_queue::WakeLimits,
    /// Committed agents whose wake waits (held or queued), by gateway.
    wakes_owed: wake_queue::OwedIndex,
    /// When the next round of queued wakes is due.
    next_release: Option<Timestamp>,
    /// Gateways whose wake queue is backing up (reported once each time).
    backed_up: HashSet<GatewayId>,
    /// Braked gateways and when each is next looked at (see `brake`).
    braked: BTreeMap<GatewayId, Timestamp>,
    /// The brake's census kept as agents change (see `silence`).
    silence: silence::SilenceIndex,
    /// Draining gateways' next free verdict slot, and the slots reserved
    /// for agents waiting for one.
    drain_next: HashMap<GatewayId, Timestamp>,
    drain_slots: HashMap<AgentId, Timestamp>,
    /// When this engine started judging (a start or a takeover): nobody is
    /// silent for the time the service could not hear them.
    listening_since: Option<Timestamp>,
    /// Heartbeats that need a commit, by the time they arrived.
    pending_checkins: HashMap<AgentId, PendingCheckIn>,
    /// Online agents whose lease changed since the last checkpoint.
    dirty_leases: HashSet<AgentId>,
    /// Leases a takeover extended, not yet checkpointed: written a slice
    /// per checkpoint (see [`Engine::take_dirty_leases`]).
    extended_leases: Vec<AgentId>,
    /// The last committed revision.
    revision: u64,
    rollouts: BTreeMap<RolloutId, rollout::Rollout>,
    /// The active rollout of each agent in one.
    rollout_index: HashMap<AgentId, RolloutId>,
    /// Each gateway's unacknowledged template sync (see `template_sync`).
    template_syncs: BTreeMap<GatewayId, PendingSync>,
    /// Every board id agents have named: their agents share its allocation.
    boards: HashSet<BoardId>,
    /// Every template version agents have named, shared likewise.
    versions: HashSet<SharedStr>,
    /// The offline reason of every expired lease: one copy.
    lease_expired: SharedStr,
}

impl Engine {
    pub fn new(policy: Policy) -> Self {
        Self {
            wake_limits: wake_queue::WakeLimits::new(&policy),
            policy,
            agents: BTreeMap::new(),
            agent_tokens: token_index::TokenIndex::default(),
            gateways: BTreeMap::new(),
            gateway_tokens: HashMap::new(),
            pending_retires: BTreeSet::new(),
            tombstones: HashMap::new(),
            timers: TimerWheel::default(),
            in_flight: HashSet::new(),
            wakes_owed: HashMap::new(),
            next_release: None,
            backed_up: HashSet::new(),
            braked: BTreeMap::new(),
            silence: silence::SilenceIndex::default(),
            drain_next: HashMap::new(),
            drain_slots: HashMap::new(),
            listening_since: None,
            pending_checkins: HashMap::new(),
            dirty_leases: HashSet::new(),
            extended_leases: Vec::new(),
            revision: 0,
            rollouts: BTreeMap::new(),
            rollout_index: HashMap::new(),
            template_syncs: BTreeMap::new(),
            boards: HashSet::new(),
            versions: HashSet::new(),
            lease_expired: SharedStr::from("lease expired"),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn agent(&self, id: &AgentId) -> Option<&Agent> {
        self.agents.get(id).map(Arc::as_ref)
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values().map(Arc::as_ref)
    }

    pub fn shared_agent(&self, id: &AgentId) -> Option<&Arc<Agent>> {
        self.agents.get(id)
    }

    /// The agents as shared pointers: a snapshot that copies no agent.
    pub fn shared_agents(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.agents.values()
    }

    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Up to `limit` matching agents with ids after `after`, in id order, and
    /// the id to continue from if there may be more.
    pub fn list(
        &self,
        filter: &AgentFilter,
        after: Option<&AgentId>,
        limit: usize,
    ) -> (Vec<Agent>, Option<AgentId>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = after.map_or(Unbounded, Excluded);
        let mut page: Vec<Agent> = self
            .agents
            .range((start, Unbounded))
            .map(|(_, agent)| agent.as_ref())
            .filter(|agent| filter.matches(agent))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page[limit - 1].id.clone()
        });
        (page, next)
    }

    pub fn gateway(&self, id: &GatewayId) -> Option<&Gateway> {
        self.gateways.get(id)
    }

    pub fn gateways(&self) -> impl Iterator<Item = &Gateway> {
        self.gateways.values()
    }

    pub fn authenticate_gateway(&self, token: &TokenHash) -> Option<&GatewayId> {
        self.gateway_tokens.get(token)
    }

    pub fn pending_retires(&self, gateway: &GatewayId) -> Vec<PendingRetire> {
        self.pending_retires
            .iter()
            .filter(|r| r.gateway_id == *gateway)
            .cloned()
            .collect()
    }

    /// Whether the gateway still has to retire this agent.
    pub fn retire_pending(&self, retire: &PendingRetire) -> bool {
        self.pending_retires.contains(retire)
    }

    /// Deleted agent ids and the generation each reached, in id order.
    pub fn tombstones(&self) -> Vec<(AgentId, u64)> {
        let mut tombstones: Vec<_> = self
            .tombstones
            .iter()
            .map(|(id, g)| (id.clone(), *g))
            .collect();
        tombstones.sort();
        tombstones
    }

    /// When there is next something to do as time passes: a timer, a
    /// round of queued wakes to send, or a braked gateway to look at.
    pub fn next_timer_at(&self) -> Option<Timestamp> {
        [
            self.timers.next_at(),
            self.next_release,
            self.next_review_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    pub fn timers(&self) -> impl Iterator<Item = Timer> + '_ {
        self.timers.iter()
    }

    pub fn begin(&self, now: Timestamp) -> Batch {
        Batch::new(now, self.revision)
    }

    /// The heartbeat fast path: a steady-state heartbeat of an online agent
    /// renews its lease in memory. Anything else needs a committed batch.
    /// The agent's heartbeat budget is not enforced here (see
    /// [`Engine::renew_lease_admitted`]).
    pub fn renew_lease(
        &mut self,
        token: &TokenHash,
        reported_template: Option<&str>,
        now: Timestamp,
    ) -> Renewal {
        let admit_all = |_: &AgentId, _: Admission| Ok::<(), std::convert::Infallible>(());
        match self.renew_lease_admitted(token, reported_template, now, admit_all) {
            Ok(renewal) => renewal,
        }
    }

    /// `renew_lease`, once `admit` accepts the agent, told what its
    /// heartbeat budget says and whether it reports a new template version
    /// (which has a budget of the caller's). The token is looked up once,
    /// and a refused heartbeat changes nothing. An admitted heartbeat
    /// spends from the budget only if the budget allowed it.
    pub fn renew_lease_admitted<E>(
        &mut self,
        token: &TokenHash,
        reported_template: Option<&str>,
        now: Timestamp,
        admit: impl FnOnce(&AgentId, Admission) -> Result<(), E>,
    ) -> Result<Renewal, E> {
        let agents = &mut self.agents;
        let holder = |id: &AgentId| {
            // Moved in: asked once, the agent's borrow outlives the closure.
            let agents = agents;
            agents.get_mut(id).filter(|a| a.token_hash == *token)
        };
        let Some((slot, shared)) = self.agent_tokens.holder_mut(token, holder) else {
            return Ok(Renewal::UnknownToken);
        };
        let spent = HeartbeatBudget::of(&self.policy).spend(slot.budget_tat, now);
        let new_template = reported_template.is_some_and(|v| v != shared.reported_template_version);
        admit(
            &shared.id,
            Admission {
                heartbeat: spent.map(|_| ()),
                new_template,
            },
        )?;
        if let Ok(tat) = spent {
            slot.budget_tat = Some(tat);
        }
        let steady = shared.status == Status::Online
            && !shared.awaiting_checkin()
            && !self.in_flight.contains(&shared.id)
            && !new_template;
        if !steady {
            let id = shared.id.clone();
            // Recorded now, under the lock the writer fires timers under: the
            // heartbeat is judged by when it arrived, not when it is dequeued.
            self.pending_checkins
                .entry(id.clone())
                .or_insert_with(|| PendingCheckIn {
                    received_at: now,
                    token: *token,
                    reported_template: reported_template.map(str::to_owned),
                });
            return Ok(Renewal::NeedsCommit(id));
        }
        // Only a renewal changes the agent: a refused or committing heartbeat
        // must not copy one that a watch snapshot still holds.
        let agent = Arc::make_mut(shared);
        let time_left = agent
            .lease_expires_at
            .map_or(Duration::ZERO, |expiry| expiry.since(now));
        let heard = agent.last_seen_at.unwrap_or(agent.updated_at);
        agent.last_seen_at = Some(now);
        agent.lease_expires_at = Some(now.plus(self.policy.lease_ttl));
        self.silence.heard(agent, heard);
        let renewed = LeaseState::of(agent, time_left);
        self.dirty_leases.insert(renewed.agent_id.clone());
        Ok(Renewal::Renewed(renewed))
    }

    /// Leases renewed (or extended) in memory and not yet checkpointed.
    pub fn dirty_lease_count(&self) -> usize {
        self.dirty_leases.len() + self.extended_leases.len()
    }

    /// Leases renewed since the last call, for a batched store checkpoint,
    /// and a slice of those a takeover extended: [`Engine::take_dirty_lease_ids`]
    /// and [`Engine::push_leases_of`] at once, under one lock.
    pub fn take_dirty_leases(&mut self) -> Vec<LeaseCheckpoint> {
        let mut ids = self.take_dirty_lease_ids();
        ids.sort_unstable();
        let mut leases = Vec::with_capacity(ids.len());
        self.push_leases_of(&ids, &mut leases);
        leases
    }

    /// The agents whose leases were renewed since the last call, and a
    /// slice of those a takeover extended. A takeover extends nearly every
    /// lease: written at once, 100,000 rows would weigh on the new leader's
    /// first seconds, and on every follower's next read. Agents that
    /// heartbeat meanwhile are written as renewed; the rest follow, a slice
    /// at a time. Only the ids: their leases are read with
    /// [`Engine::push_leases_of`], [`LEASES_READ_PER_LOCK`] at a time,
    /// because looking up a million agents under one lock took 2.7 s
    /// (BENCHMARKS.md, Heartbeats).
    pub fn take_dirty_lease_ids(&mut self) -> Vec<AgentId> {
        let slice = self
            .extended_leases
            .len()
            .min(EXTENDED_LEASES_PER_CHECKPOINT);
        let start = self.extended_leases.len() - slice;
        self.dirty_leases
            .extend(self.extended_leases.drain(start..));
        // Drained, not replaced: the set keeps its capacity, so the next
        // interval's heartbeats do not grow it again under the engine lock.
        self.dirty_leases.drain().collect()
    }

    /// Appends the leases of `ids` as memory knows them, for the online
    /// agents among them. In id order, the lookups walk the agent map in
    /// order and stay in the cache.
    pub fn push_leases_of(&self, ids: &[AgentId], leases: &mut Vec<LeaseCheckpoint>) {
        let agents = &self.agents;
        let found = ids
            .iter()
            .filter_map(|id| agents.get(id).map(Arc::as_ref))
            .filter(|agent| agent.status == Status::Online)
            .filter_map(|agent| {
                Some(LeaseCheckpoint {
                    agent_id: agent.id.clone(),
                    generation: agent.generation,
                    last_seen_at: agent.last_seen_at?,
                    lease_expires_at: agent.lease_expires_at?,
                })
            });
        leases.extend(found);
    }

    /// Every online agent's lease as memory knows it.
    pub fn online_leases(&self) -> Vec<LeaseCheckpoint> {
        self.agents
            .values()
            .filter(|agent| agent.status == Status::Online)
            .filter_map(|agent| {
                Some(LeaseCheckpoint {
                    agent_id: agent.id.clone(),
                    generation: agent.generation,
                    last_seen_at: agent.last_seen_at?,
                    lease_expires_at: agent.lease_expires_at?,
                })
            })
            .collect()
    }

    /// Takes newer leases from another engine's memory (see
    /// [`StoredState::merge_leases`]); they are written at the next checkpoint.
    pub fn adopt_leases(&mut self, leases: Vec<LeaseCheckpoint>) {
        for lease in leases {
            let Some(shared) = self.agents.get_mut(&lease.agent_id) else {
                continue;
            };
            if shared.status != Status::Online || shared.generation != lease.generation {
                continue;
            }
            let newer = shared.last_seen_at < Some(lease.last_seen_at)
                || shared.lease_expires_at < Some(lease.lease_expires_at);
            if !newer {
                // The same lease: nothing to write again.
                continue;
            }
            let agent = Arc::make_mut(shared);
            let heard = agent.last_seen_at.unwrap_or(agent.updated_at);
            agent.last_seen_at = agent.last_seen_at.max(Some(lease.last_seen_at));
            agent.lease_expires_at = agent.lease_expires_at.max(Some(lease.lease_expires_at));
            self.silence.heard(agent, heard);
            self.dirty_leases.insert(lease.agent_id);
        }
    }

    /// Puts back checkpoints that could not be written.
    pub fn return_dirty_leases(&mut self, leases: Vec<LeaseCheckpoint>) {
        self.dirty_leases
            .extend(leases.into_iter().map(|lease| lease.agent_id));
    }

    /// Applies a batch the store has committed.
    pub fn commit(&mut self, batch: Batch) -> Committed {
        for (id, staged) in batch.agents {
            self.in_flight.remove(&id);
            let old = self.agents.remove(&id);
            // The heartbeat budget is the agent's: a check-in or a new
            // token does not fill it again.
            let budget_tat = old
                .as_ref()
                .and_then(|old| self.agent_tokens.remove(&old.token_hash, &old.id));
            self.index_owed(old.as_deref(), staged.as_ref());
            self.silence.replace(old.as_deref(), staged.as_ref());
            match staged {
                Some(mut agent) => {
                    self.intern(&mut agent);
                    self.agent_tokens.insert_with_budget(
                        agent.token_hash,
                        agent.id.clone(),
                        budget_tat,
                    );
                    self.agents.insert(agent.id.clone(), Arc::new(agent));
                }
                None => {
                    self.dirty_leases.remove(&id);
                }
            }
        }
        for (id, gateway) in batch.gateways {
            if let Some(old) = self.gateways.get(&id) {
                self.gateway_tokens.remove(&old.token_hash);
            }
            self.gateway_tokens.insert(gateway.token_hash, id.clone());
            self.gateways.insert(id, gateway);
        }
        for retire in batch.retires_done {
            self.pending_retires.remove(&retire);
        }
        self.pending_retires.extend(batch.retires_added);
        for (gateway, sync) in batch.template_syncs {
            match sync {
                Some(sync) => self.template_syncs.insert(gateway, sync),
                None => self.template_syncs.remove(&gateway),
            };
        }
        for (id, generation) in batch.tombstones {
            let reached = self.tombstones.entry(id).or_default();
            *reached = (*reached).max(generation);
        }
        for timer in batch.timers_to_arm {
            self.timers.arm(timer);
        }
        self.commit_release(batch.release, &batch.queue_reports);
        for (gateway, next) in batch.brake_reviews {
            match next {
                Some(at) => self.braked.insert(gateway, at),
                None => self.braked.remove(&gateway),
            };
        }
        let rollouts: Vec<rollout::Rollout> = batch.rollouts.into_values().collect();
        for rollout in &rollouts {
            self.commit_rollout(rollout.clone());
        }
        self.revision = batch.next_revision - 1;
        Committed {
            events: batch.events,
            effects: batch.effects,
            notes: batch.notes,
            rollouts,
            gateway_events: batch.gateway_events,
            queue_reports: batch.queue_reports,
        }
    }

    /// Applies a cut of `open` (see [`Batch::cut`]) the store has committed.
    /// Its agents leave `open` unless a later round staged them again: those
    /// stay in flight, and the next rounds keep staging on top of them.
    pub fn commit_cut(&mut self, cut: Batch, open: &mut Batch) -> Committed {
        let round = cut.round;
        let ids: Vec<AgentId> = cut.agents.keys().cloned().collect();
        let committed = self.commit(cut);
        for id in ids {
            if open.staged_in.get(&id) == Some(&round) {
                open.staged_in.remove(&id);
                open.agents.remove(&id);
            } else {
                self.in_flight.insert(id);
            }
        }
        committed
    }

    /// Points the agent at the one shared copy of its gateway's and board's
    /// ids (a million agents on a hundred boards: a hundred allocations).
    fn intern(&mut self, agent: &mut Agent) {
        if let Some((gateway, _)) = self.gateways.get_key_value(&agent.gateway_id) {
            agent.gateway_id = gateway.clone();
        }
        if let Some(board) = &agent.board_id {
            match self.boards.get(board) {
                Some(shared) => agent.board_id = Some(shared.clone()),
                None => {
                    self.boards.insert(board.clone());
                }
            }
        }
        // Most agents are named as their id.
        if agent.name.as_str() == agent.id.as_str() {
            agent.name = agent.id.to_shared();
        }
        for version in [
            &mut agent.desired_template_version,
            &mut agent.reported_template_version,
        ] {
            match self.versions.get(version.as_str()) {
                Some(shared) => *version = shared.clone(),
                None => {
                    self.versions.insert(version.clone());
                }
            }
        }
    }

    /// Forgets a batch the store did not commit. Timers it consumed are put
    /// back, so their work is retried.
    pub fn abort(&mut self, batch: Batch) {
        for id in batch.agents.keys() {
            self.in_flight.remove(id);
        }
        for (id, pending) in batch.applied_checkins {
            self.pending_checkins.entry(id).or_insert(pending);
        }
        for timer in batch.fired {
            self.timers.arm(timer);
        }
    }

    /// The agent as the batch sees it: staged, or committed.
    fn current(&self, batch: &Batch, id: &AgentId) -> Option<Agent> {
        match batch.agents.get(id) {
            Some(staged) => staged.clone(),
            None => self.agents.get(id).map(|agent| Agent::clone(agent)),
        }
    }

    fn stage(&mut self, batch: &mut Batch, change: batch::Change, after: Agent) -> Agent {
        self.in_flight.insert(after.id.clone());
        batch.record(change, after)
    }

    /// Starts a fresh wake cycle: a new generation, attempt 1, a deadline.
    fn start_wake_cycle(&self, batch: &mut Batch, agent: &mut Agent) {
        agent.generation += 1;
        agent.wake_attempts = 0;
        self.send_wake(batch, agent);
    }

    /// The next wake of the current cycle: sent, with its deadline armed,
    /// held while the agent's gateway is away (see `gateway_state`), or
    /// queued behind the wake budgets (see `wake_queue`).
    fn send_wake(&self, batch: &mut Batch, agent: &mut Agent) {
        agent.wake_attempts += 1;
        match self.hold_until(batch, &agent.gateway_id) {
            Some(until) => {
                self.hold_wake(batch, agent, batch.now, until);
                batch.note(NoteKind::Enqueued, agent, Some(until));
            }
            None => self.deliver_or_queue(batch, agent),
        }
    }

    /// Sends the current attempt's wake now and arms its deadline.
    fn deliver_wake(&self, batch: &mut Batch, agent: &mut Agent) {
        let now = batch.now;
        let deadline = now.plus(self.policy.checkin_deadline);
        agent.wake_held = false;
        agent.last_wake_sent_at = Some(now);
        agent.checkin_deadline_at = Some(deadline);
        batch.timers_to_arm.push(Timer {
            at: deadline,
            agent_id: agent.id.clone(),
            kind: TimerKind::Checkin {
                generation: agent.generation,
                attempt: agent.wake_attempts,
            },
        });
        batch
            .effects
            .push(Effect::Wake(WakeOrder::for_agent(agent, deadline)));
        batch.note(NoteKind::Enqueued, agent, Some(deadline));
    }

    fn arm_lease(&self, batch: &mut Batch, agent: &Agent) {
        if let Some(at) = agent.lease_expires_at {
            batch.timers_to_arm.push(Timer {
                at,
                agent_id: agent.id.clone(),
                kind: TimerKind::Lease,
            });
        }
    }
}

#[cfg(test)]
mod tests;
