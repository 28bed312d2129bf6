//! Operations from callers: provision, check-in, operator wake, delete,
//! gateway registration and wake acknowledgements.

use super::batch::{Change, Effect};
use super::gateway_state::Link;
use super::model::{
    Agent, AgentId, BoardId, EventKind, Gateway, GatewayId, PendingRetire, Reason, Role, SharedStr,
    Status, Timestamp, TokenHash,
};
use super::{Batch, Engine, EngineError, PendingCheckIn};

/// A validated provision request.
#[derive(Debug, Clone)]
pub struct ProvisionSpec {
    pub agent_id: AgentId,
    pub name: String,
    pub gateway_id: GatewayId,
    pub board_id: Option<BoardId>,
    pub role: Role,
    pub template_version: String,
    pub rotate_token: bool,
}

#[derive(Debug, Clone)]
pub struct Provisioned {
    pub agent: Agent,
    pub created: bool,
    /// Whether `new_token` became the agent's token.
    pub token_minted: bool,
}

#[derive(Debug, Clone)]
pub struct GatewaySpec {
    pub gateway_id: GatewayId,
    /// `None`: the id for a new gateway; an existing one keeps its name.
    pub name: Option<String>,
    pub rotate_token: bool,
}

#[derive(Debug, Clone)]
pub struct GatewayRegistered {
    pub gateway: Gateway,
    pub created: bool,
    pub token_minted: bool,
}

impl Engine {
    /// Creates the agent, or updates it; either way a fresh wake cycle.
    /// `new_token` (a freshly minted token's hash) becomes the agent's token
    /// if the agent is new or asks to rotate it; it is needed only then
    /// (see [`Engine::provision_needs_token`]).
    pub fn provision(
        &mut self,
        batch: &mut Batch,
        spec: ProvisionSpec,
        new_token: Option<TokenHash>,
    ) -> Result<Provisioned, EngineError> {
        if !self.has_gateway(batch, &spec.gateway_id) {
            return Err(EngineError::GatewayNotFound(spec.gateway_id));
        }
        let now = batch.now;
        let minted = |id: &AgentId| {
            new_token.ok_or_else(|| {
                EngineError::FailedPrecondition(format!(
                    "agent {id} needs a new token and none was minted"
                ))
            })
        };
        let existing = self.current(batch, &spec.agent_id);
        let (mut agent, change, token_minted) = match existing {
            None => {
                // A re-created agent starts above the generation its earlier
                // self reached: no retire, wake or acknowledgement of that
                // one can be mistaken for its own.
                let retired = self.retired_generation(batch, &spec.agent_id);
                let token_hash = minted(&spec.agent_id)?;
                let agent = Agent {
                    id: spec.agent_id,
                    name: spec.name.into(),
                    gateway_id: spec.gateway_id,
                    board_id: spec.board_id,
                    role: spec.role,
                    status: Status::Provisioning,
                    generation: retired,
                    wake_attempts: 0,
                    last_wake_sent_at: None,
                    checkin_deadline_at: None,
                    last_seen_at: None,
                    lease_expires_at: None,
                    last_provision_error: None,
                    offline_reason: None,
                    desired_template_version: spec.template_version.into(),
                    reported_template_version: SharedStr::default(),
                    created_at: now,
                    updated_at: now,
                    revision: 0,
                    wake_held: false,
                    token_hash,
                };
                let change = Change {
                    kind: EventKind::Added,
                    previous_status: None,
                    previous_board_id: None,
                    reason: Reason::Provisioned,
                    attempt: 1,
                    error: None,
                    rollout_id: None,
                };
                (agent, change, true)
            }
            Some(previous) => {
                if previous.gateway_id != spec.gateway_id {
                    return Err(EngineError::FailedPrecondition(format!(
                        "agent {} is on gateway {}; delete it before provisioning it on {}",
                        previous.id, previous.gateway_id, spec.gateway_id
                    )));
                }
                let change = Change::changed(&previous, Reason::Updated, 1);
                let mut agent = previous;
                agent.name = spec.name.into();
                agent.board_id = spec.board_id;
                agent.role = spec.role;
                agent.desired_template_version = spec.template_version.into();
                agent.status = Status::Updating;
                agent.lease_expires_at = None;
                if spec.rotate_token {
                    agent.token_hash = minted(&agent.id)?;
                }
                (agent, change, spec.rotate_token)
            }
        };
        agent.last_provision_error = None;
        agent.offline_reason = None;
        self.start_wake_cycle(batch, &mut agent);
        let created = change.kind == EventKind::Added;
        let agent = self.stage(batch, change, agent);
        Ok(Provisioned {
            agent,
            created,
            token_minted,
        })
    }

    /// Whether provisioning `spec` now would give the agent a new token: it
    /// is new (or deleted), or asks to rotate its token.
    pub fn provision_needs_token(&self, batch: &Batch, spec: &ProvisionSpec) -> bool {
        let id = &spec.agent_id;
        let exists = match batch.agents.get(id) {
            Some(staged) => staged.is_some(),
            None => self.agents.contains_key(id),
        };
        spec.rotate_token || !exists
    }

    /// A heartbeat that is a transition: from any status to online, or a new
    /// reported template version, received at the batch's time.
    pub fn check_in(
        &mut self,
        batch: &mut Batch,
        agent_id: &AgentId,
        token: &TokenHash,
        reported_template: Option<String>,
    ) -> Result<Agent, EngineError> {
        let now = batch.now;
        self.check_in_received(batch, agent_id, token, reported_template, now)
    }

    /// The same, judged by when the heartbeat arrived: `received_at`, or
    /// the earlier time [`Engine::renew_lease`] recorded for it.
    pub fn check_in_received(
        &mut self,
        batch: &mut Batch,
        agent_id: &AgentId,
        token: &TokenHash,
        reported_template: Option<String>,
        received_at: Timestamp,
    ) -> Result<Agent, EngineError> {
        let arrived = match self.pending_checkins.remove(agent_id) {
            Some(pending) => {
                let at = pending.received_at.min(received_at);
                batch.applied_checkins.push((agent_id.clone(), pending));
                at
            }
            None => received_at,
        };
        self.check_in_at(batch, agent_id, token, reported_template, arrived)
    }

    /// Applies up to `limit` heartbeats recorded but not yet handled, the
    /// earliest first; returns how many. Run before any timer fires, so a
    /// heartbeat that arrived before a deadline wins it even while its
    /// command still waits in the writer's queue.
    pub(super) fn apply_pending_checkins(&mut self, batch: &mut Batch, limit: usize) -> usize {
        let mut pending: Vec<(AgentId, PendingCheckIn)> = self.pending_checkins.drain().collect();
        if pending.len() > limit {
            pending.select_nth_unstable_by_key(limit, |(_, p)| p.received_at);
            self.pending_checkins.extend(pending.split_off(limit));
        }
        let applied = pending.len();
        for (agent_id, pending) in pending {
            let reported = pending.reported_template.clone();
            // A token rotated or an agent deleted since: nothing to apply.
            let _ = self.check_in_at(
                batch,
                &agent_id,
                &pending.token,
                reported,
                pending.received_at,
            );
            batch.applied_checkins.push((agent_id, pending));
        }
        applied
    }

    fn check_in_at(
        &mut self,
        batch: &mut Batch,
        agent_id: &AgentId,
        token: &TokenHash,
        reported_template: Option<String>,
        now: Timestamp,
    ) -> Result<Agent, EngineError> {
        let previous = self
            .current(batch, agent_id)
            .filter(|agent| agent.token_hash == *token)
            .ok_or(EngineError::Unauthenticated)?;
        let mut agent = previous.clone();
        // Never backwards: a later heartbeat may already have been counted.
        let seen = previous.last_seen_at.map_or(now, |last| last.max(now));
        agent.last_seen_at = Some(seen);
        let lease = seen.plus(self.policy.lease_ttl);
        agent.lease_expires_at = Some(previous.lease_expires_at.map_or(lease, |l| l.max(lease)));
        let new_template = reported_template.filter(|v| *v != agent.reported_template_version);
        let steady = previous.status == Status::Online && !previous.awaiting_checkin();
        if steady && new_template.is_none() {
            // A renewal that only missed the fast path (the agent was in
            // flight): written with the batch, not an event. Followers read
            // only the lease fields of such a write (`Batch::lease_only_writes`).
            batch.put_agent(agent.id.clone(), Some(agent.clone()));
            self.in_flight.insert(agent.id.clone());
            return Ok(agent);
        }
        if let Some(version) = new_template {
            agent.reported_template_version = version.into();
        }
        let reason = if steady {
            Reason::TemplateReported
        } else {
            agent.status = Status::Online;
            agent.wake_attempts = 0;
            agent.wake_held = false;
            agent.checkin_deadline_at = None;
            agent.last_provision_error = None;
            agent.offline_reason = None;
            Reason::CheckedIn
        };
        self.arm_lease(batch, &agent);
        let change = Change::changed(&previous, reason, previous.wake_attempts);
        Ok(self.stage(batch, change, agent))
    }

    /// Operator recovery: a fresh cycle of wakes; an offline agent becomes
    /// updating, any other keeps its status.
    pub fn wake(&mut self, batch: &mut Batch, agent_id: &AgentId) -> Result<Agent, EngineError> {
        let previous = self
            .current(batch, agent_id)
            .ok_or_else(|| EngineError::AgentNotFound(agent_id.clone()))?;
        let mut agent = previous.clone();
        if agent.status == Status::Offline {
            agent.status = Status::Updating;
            agent.lease_expires_at = None;
        }
        agent.last_provision_error = None;
        agent.offline_reason = None;
        self.start_wake_cycle(batch, &mut agent);
        let change = Change::changed(&previous, Reason::Woken, 1);
        Ok(self.stage(batch, change, agent))
    }

    /// Deletes the agent: its token stops working, its timers become stale,
    /// and its gateway is told to retire it.
    pub fn delete(&mut self, batch: &mut Batch, agent_id: &AgentId) -> Result<Agent, EngineError> {
        let agent = self
            .current(batch, agent_id)
            .ok_or_else(|| EngineError::AgentNotFound(agent_id.clone()))?;
        let retire = PendingRetire {
            gateway_id: agent.gateway_id.clone(),
            agent_id: agent.id.clone(),
            generation: agent.generation,
        };
        batch.retires_added.push(retire.clone());
        batch.tombstones.push((agent.id.clone(), agent.generation));
        batch.effects.push(Effect::Retire(retire));
        let change = Change {
            kind: EventKind::Deleted,
            previous_status: Some(agent.status),
            previous_board_id: agent.board_id.clone(),
            reason: Reason::Deleted,
            attempt: 0,
            error: None,
            rollout_id: None,
        };
        Ok(self.stage(batch, change, agent))
    }

    /// The gateway could not deliver a wake. A stale report (another
    /// generation or attempt, or no check-in awaited) changes nothing.
    pub fn wake_failed(
        &mut self,
        batch: &mut Batch,
        agent_id: &AgentId,
        generation: u64,
        attempt: u32,
        error: &str,
    ) -> bool {
        let Some(previous) = self.current(batch, agent_id) else {
            return false;
        };
        if previous.generation != generation
            || previous.wake_attempts != attempt
            || !previous.awaiting_checkin()
        {
            return false;
        }
        let message = format!("wake attempt {attempt} failed: {error}");
        let mut agent = previous.clone();
        agent.last_provision_error = Some(message.as_str().into());
        let change =
            Change::changed(&previous, Reason::WakeFailed, attempt).with_error(Some(message));
        self.stage(batch, change, agent);
        true
    }

    /// The gateway retired a deleted agent: stop resending the command.
    pub fn retire_delivered(&mut self, batch: &mut Batch, retire: PendingRetire) {
        if self.pending_retires.contains(&retire) {
            batch.retires_done.push(retire);
        }
    }

    /// Registers or renames a gateway; `new_token` is used as for agents.
    pub fn register_gateway(
        &mut self,
        batch: &mut Batch,
        spec: GatewaySpec,
        new_token: TokenHash,
    ) -> GatewayRegistered {
        let (gateway, created, token_minted) = match self.gateway_in(batch, &spec.gateway_id) {
            Some(existing) => {
                let mut gateway = existing;
                if let Some(name) = spec.name {
                    gateway.name = name;
                }
                if spec.rotate_token {
                    gateway.token_hash = new_token;
                    batch
                        .effects
                        .push(Effect::DisconnectGateway(gateway.id.clone()));
                }
                (gateway, false, spec.rotate_token)
            }
            None => {
                let gateway = Gateway {
                    name: spec.name.unwrap_or_else(|| spec.gateway_id.to_string()),
                    id: spec.gateway_id,
                    token_hash: new_token,
                    created_at: batch.now,
                    link: Link::never_connected(batch.now),
                    brake: None,
                };
                (gateway, true, true)
            }
        };
        batch.gateways.insert(gateway.id.clone(), gateway.clone());
        GatewayRegistered {
            gateway,
            created,
            token_minted,
        }
    }

    /// The highest generation a deleted agent with this id reached.
    fn retired_generation(&self, batch: &Batch, agent: &AgentId) -> u64 {
        let staged = batch
            .tombstones
            .iter()
            .filter(|(id, _)| id == agent)
            .map(|(_, generation)| *generation);
        staged
            .chain(self.tombstones.get(agent).copied())
            .max()
            .unwrap_or(0)
    }

    /// Whether the gateway exists as staged in `batch`, without a copy of
    /// it (a clone of the gateway per Provision was about 1,100
    /// instructions of 112,000).
    pub(super) fn has_gateway(&self, batch: &Batch, id: &GatewayId) -> bool {
        self.staged_gateway(batch, id).is_some()
    }

    pub(super) fn gateway_in(&self, batch: &Batch, id: &GatewayId) -> Option<Gateway> {
        self.staged_gateway(batch, id).cloned()
    }

    /// The gateway as staged in `batch`, else as committed.
    fn staged_gateway<'a>(&'a self, batch: &'a Batch, id: &GatewayId) -> Option<&'a Gateway> {
        batch.gateways.get(id).or_else(|| self.gateways.get(id))
    }
}
