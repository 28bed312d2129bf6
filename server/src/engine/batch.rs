//! A batch of staged transitions: planned against the engine, committed to
//! the store as one transaction, and only then applied to the engine.

use std::collections::{BTreeMap, HashMap};

use super::brake::{Censuses, GatewayState};
use super::model::{
    Agent, AgentId, BoardId, Event, EventKind, Gateway, GatewayId, PendingRetire, Reason, Role,
    RolloutId, Status, Timestamp,
};
use super::rollout::Rollout;
use super::template_sync::PendingSync;
use super::timers::Timer;

/// Something to do once the batch is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Wake(WakeOrder),
    Retire(PendingRetire),
    /// The gateway's token changed: end the session opened with the old one.
    DisconnectGateway(GatewayId),
}

/// A wake for a gateway to deliver, fenced by generation and attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeOrder {
    pub gateway_id: GatewayId,
    pub agent_id: AgentId,
    pub agent_name: String,
    pub board_id: Option<BoardId>,
    pub role: Role,
    pub generation: u64,
    pub attempt: u32,
    pub template_version: String,
    pub checkin_deadline_at: Timestamp,
}

impl WakeOrder {
    pub(super) fn for_agent(agent: &Agent, deadline: Timestamp) -> Self {
        Self {
            gateway_id: agent.gateway_id.clone(),
            agent_id: agent.id.clone(),
            agent_name: agent.name.to_string(),
            board_id: agent.board_id.clone(),
            role: agent.role,
            generation: agent.generation,
            attempt: agent.wake_attempts,
            template_version: agent.desired_template_version.to_string(),
            checkin_deadline_at: deadline,
        }
    }
}

/// One change of a gateway's state (its link, or the brake): the gateway's
/// own history. Something done with it that leaves the state as it is has
/// the same `from` and `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayTransition {
    pub gateway_id: GatewayId,
    pub at: Timestamp,
    pub from: GatewayState,
    pub to: GatewayState,
    pub reason: String,
    /// Held wakes waiting when it connected (they go out at the policy's
    /// held-wake rate).
    pub wakes_released: u32,
}

/// What a batch does to the schedule of queued-wake rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Release {
    Unchanged,
    /// A round is wanted by then (an earlier one already set stands).
    By(Timestamp),
    /// A round ran: the next one, `None` if nothing is left to send.
    Next(Option<Timestamp>),
}

/// A gateway's wake queue started holding more than a second of its
/// budget (`backing_up`), or is empty again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReport {
    pub gateway_id: GatewayId,
    pub queued: usize,
    pub backing_up: bool,
}

/// What the reconciler decided about one timer, as the log events the seed
/// system writes for it (under the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// A check-in deadline was armed.
    Enqueued,
    /// A deadline timer was processed.
    WorkerSuccess,
    /// The agent checked in before its deadline.
    SkipNotStuck,
    /// The deadline is later than the timer: re-armed.
    Deferred,
    /// No check-in by the deadline: woken again.
    Retriggered,
    /// No check-in after the last attempt: offline, escalation stopped.
    MaxAttemptsReached,
    SkipMissingAgent,
    SkipStaleGeneration,
    SkipMissingGateway,
}

impl NoteKind {
    /// The seed system's exact event name for it.
    pub fn event_name(self) -> &'static str {
        match self {
            NoteKind::Enqueued => "lifecycle.queue.enqueued",
            NoteKind::WorkerSuccess => "queue.worker.success",
            NoteKind::SkipNotStuck => "lifecycle.reconcile.skip_not_stuck",
            NoteKind::Deferred => "lifecycle.reconcile.deferred",
            NoteKind::Retriggered => "lifecycle.reconcile.retriggered",
            NoteKind::MaxAttemptsReached => "lifecycle.reconcile.max_attempts_reached",
            NoteKind::SkipMissingAgent => "lifecycle.reconcile.skip_missing_agent",
            NoteKind::SkipStaleGeneration => "lifecycle.reconcile.skip_stale_generation",
            NoteKind::SkipMissingGateway => "lifecycle.reconcile.skip_missing_gateway",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub kind: NoteKind,
    pub agent_id: AgentId,
    pub generation: u64,
    pub attempt: u32,
    pub deadline: Option<Timestamp>,
}

/// Staged changes. Nothing here is visible to readers until committed.
#[derive(Debug)]
pub struct Batch {
    pub(super) now: Timestamp,
    pub(super) next_revision: u64,
    /// The final state of each touched agent; `None` once deleted.
    pub(super) agents: BTreeMap<AgentId, Option<Agent>>,
    pub(super) gateways: BTreeMap<GatewayId, Gateway>,
    pub(super) gateway_events: Vec<GatewayTransition>,
    /// When the next round of queued wakes is due.
    pub(super) release: Release,
    /// Gateways whose wake queue started backing up, or emptied.
    pub(super) queue_reports: Vec<QueueReport>,
    /// Braked gateways' next review; `None` when no longer braked.
    pub(super) brake_reviews: Vec<(GatewayId, Option<Timestamp>)>,
    /// The brake's census of this batch's instant, taken at most once.
    pub(super) censuses: Option<Censuses>,
    pub(super) events: Vec<Event>,
    pub(super) effects: Vec<Effect>,
    pub(super) notes: Vec<Note>,
    pub(super) timers_to_arm: Vec<Timer>,
    /// Timers popped from the wheel, put back if the batch is aborted.
    pub(super) fired: Vec<Timer>,
    pub(super) retires_added: Vec<PendingRetire>,
    pub(super) retires_done: Vec<PendingRetire>,
    /// Deleted agents and the generation they reached.
    pub(super) tombstones: Vec<(AgentId, u64)>,
    /// Recorded heartbeats this batch handled, put back if it is aborted.
    pub(super) applied_checkins: Vec<(AgentId, super::PendingCheckIn)>,
    /// The final state of each rollout this batch changed.
    pub(super) rollouts: BTreeMap<RolloutId, Rollout>,
    /// Each touched gateway's template sync as the batch leaves it; `None`:
    /// none pending any more.
    pub(super) template_syncs: BTreeMap<GatewayId, Option<PendingSync>>,
    /// The round this batch stages now: a batch that goes on staging while
    /// its earlier rounds are committed is cut once per round (see
    /// [`Batch::cut`]).
    pub(super) round: u64,
    /// The round that last staged each agent in `agents`.
    pub(super) staged_in: HashMap<AgentId, u64>,
}

impl Batch {
    pub(super) fn new(now: Timestamp, last_revision: u64) -> Self {
        Self {
            now,
            next_revision: last_revision + 1,
            agents: BTreeMap::new(),
            gateways: BTreeMap::new(),
            gateway_events: Vec::new(),
            release: Release::Unchanged,
            queue_reports: Vec::new(),
            brake_reviews: Vec::new(),
            censuses: None,
            events: Vec::new(),
            effects: Vec::new(),
            notes: Vec::new(),
            timers_to_arm: Vec::new(),
            fired: Vec::new(),
            retires_added: Vec::new(),
            retires_done: Vec::new(),
            tombstones: Vec::new(),
            applied_checkins: Vec::new(),
            rollouts: BTreeMap::new(),
            template_syncs: BTreeMap::new(),
            round: 0,
            staged_in: HashMap::new(),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Stages from `now` on (never earlier than before), on top of what
    /// was staged so far.
    pub fn advance_to(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        // A census counts one instant.
        self.censuses = None;
    }

    /// Takes what this round staged, to be committed on its own, while the
    /// batch keeps every staged agent, so that the next round stages on
    /// top of them. The agents leave the batch when their last round is
    /// applied ([`super::Engine::commit_cut`]). Everything else moves to
    /// the cut: a cut that changed more than agents (see
    /// [`Batch::stages_over`]) must be applied before the next round.
    pub fn cut(&mut self) -> Batch {
        let round = self.round;
        self.round += 1;
        let agents = self
            .staged_in
            .iter()
            .filter(|(_, staged)| **staged == round)
            .map(|(id, _)| (id.clone(), self.agents[id].clone()))
            .collect();
        Batch {
            now: self.now,
            next_revision: self.next_revision,
            agents,
            gateways: std::mem::take(&mut self.gateways),
            gateway_events: std::mem::take(&mut self.gateway_events),
            release: std::mem::replace(&mut self.release, Release::Unchanged),
            queue_reports: std::mem::take(&mut self.queue_reports),
            brake_reviews: std::mem::take(&mut self.brake_reviews),
            censuses: self.censuses.take(),
            events: std::mem::take(&mut self.events),
            effects: std::mem::take(&mut self.effects),
            notes: std::mem::take(&mut self.notes),
            timers_to_arm: std::mem::take(&mut self.timers_to_arm),
            fired: std::mem::take(&mut self.fired),
            retires_added: std::mem::take(&mut self.retires_added),
            retires_done: std::mem::take(&mut self.retires_done),
            tombstones: std::mem::take(&mut self.tombstones),
            applied_checkins: std::mem::take(&mut self.applied_checkins),
            rollouts: std::mem::take(&mut self.rollouts),
            template_syncs: std::mem::take(&mut self.template_syncs),
            round,
            staged_in: HashMap::new(),
        }
    }

    /// Whether the next round may be staged before this cut is applied:
    /// it changed agents only (their staged state stays in the batch the
    /// next round stages in), and it has an event (a round of lease
    /// extensions alone is applied first, as every round was before rounds
    /// overlapped). Gateways, the
    /// wake queue's schedule, brakes, retires, tombstones, rollouts and
    /// template syncs are read from the engine by the next round, so a cut
    /// that changed any of them is applied first.
    pub fn stages_over(&self) -> bool {
        !self.events.is_empty()
            && self.gateways.is_empty()
            && self.gateway_events.is_empty()
            && self.release == Release::Unchanged
            && self.queue_reports.is_empty()
            && self.brake_reviews.is_empty()
            && self.retires_added.is_empty()
            && self.retires_done.is_empty()
            && self.tombstones.is_empty()
            && self.rollouts.is_empty()
            && self.template_syncs.is_empty()
    }

    /// The revision of this batch's last event, if it has one.
    pub fn last_revision(&self) -> Option<u64> {
        self.events.last().map(|event| event.revision)
    }

    pub(super) fn put_agent(&mut self, id: AgentId, agent: Option<Agent>) {
        self.staged_in.insert(id.clone(), self.round);
        self.agents.insert(id, agent);
    }

    /// The deadlines of the timers this batch fired, earliest first.
    pub fn fired_deadlines(&self) -> Vec<Timestamp> {
        self.fired.iter().map(|timer| timer.at).collect()
    }

    /// Whether the store has anything to write.
    pub fn has_writes(&self) -> bool {
        !(self.agents.is_empty()
            && self.gateways.is_empty()
            && self.gateway_events.is_empty()
            && self.events.is_empty()
            && self.retires_added.is_empty()
            && self.retires_done.is_empty()
            && self.tombstones.is_empty()
            && self.rollouts.is_empty()
            && self.template_syncs.is_empty())
    }

    /// Template syncs to store (`Some`) or to remove (`None`), by gateway.
    pub fn template_sync_writes(&self) -> impl Iterator<Item = (&GatewayId, Option<&PendingSync>)> {
        self.template_syncs
            .iter()
            .map(|(id, sync)| (id, sync.as_ref()))
    }

    pub fn rollout_writes(&self) -> impl Iterator<Item = &Rollout> {
        self.rollouts.values()
    }

    pub fn agent_writes(&self) -> impl Iterator<Item = (&AgentId, Option<&Agent>)> {
        self.agents.iter().map(|(id, agent)| (id, agent.as_ref()))
    }

    /// Agents written without an event naming them (a renewal that missed
    /// the fast path): only their lease fields changed. A store stamps them
    /// as a lease checkpoint does, so that followers read them.
    pub fn lease_only_writes(&self) -> Vec<&AgentId> {
        let named: std::collections::BTreeSet<&AgentId> =
            self.events.iter().map(|e| &e.agent.id).collect();
        self.agents
            .iter()
            .filter(|(id, agent)| agent.is_some() && !named.contains(id))
            .map(|(id, _)| id)
            .collect()
    }

    pub fn gateway_writes(&self) -> impl Iterator<Item = &Gateway> {
        self.gateways.values()
    }

    pub fn gateway_events(&self) -> &[GatewayTransition] {
        &self.gateway_events
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn retires_added(&self) -> &[PendingRetire] {
        &self.retires_added
    }

    pub fn retires_done(&self) -> &[PendingRetire] {
        &self.retires_done
    }

    pub fn tombstones(&self) -> &[(AgentId, u64)] {
        &self.tombstones
    }

    /// Asks for a round of queued wakes by `at` at the latest.
    pub(super) fn release_by(&mut self, at: Timestamp) {
        self.release = match self.release {
            Release::Unchanged => Release::By(at),
            Release::By(earlier) => Release::By(earlier.min(at)),
            Release::Next(next) => Release::Next(Some(next.map_or(at, |n| n.min(at)))),
        };
    }

    pub(super) fn note(&mut self, kind: NoteKind, agent: &Agent, deadline: Option<Timestamp>) {
        self.notes.push(Note {
            kind,
            agent_id: agent.id.clone(),
            generation: agent.generation,
            attempt: agent.wake_attempts,
            deadline,
        });
    }

    /// Stages `after` with an event describing how it got there.
    pub(super) fn record(&mut self, change: Change, mut after: Agent) -> Agent {
        let revision = self.next_revision;
        self.next_revision += 1;
        if change.kind != EventKind::Deleted {
            after.revision = revision;
            after.updated_at = self.now;
        }
        // History never holds the token hash.
        let agent = Agent {
            token_hash: Default::default(),
            ..after.clone()
        };
        self.events.push(Event {
            revision,
            kind: change.kind,
            agent,
            previous_status: change.previous_status,
            previous_board_id: change.previous_board_id,
            reason: change.reason,
            attempt: change.attempt,
            error: change.error,
            at: self.now,
            rollout_id: change.rollout_id,
        });
        let staged = (change.kind != EventKind::Deleted).then(|| after.clone());
        self.put_agent(after.id.clone(), staged);
        after
    }
}

/// How an event describes its transition.
#[derive(Debug, Clone)]
pub(super) struct Change {
    pub kind: EventKind,
    pub previous_status: Option<Status>,
    pub previous_board_id: Option<BoardId>,
    pub reason: Reason,
    pub attempt: u32,
    pub error: Option<String>,
    pub rollout_id: Option<RolloutId>,
}

impl Change {
    pub fn changed(previous: &Agent, reason: Reason, attempt: u32) -> Self {
        Self {
            kind: EventKind::Changed,
            previous_status: Some(previous.status),
            previous_board_id: previous.board_id.clone(),
            reason,
            attempt,
            error: None,
            rollout_id: None,
        }
    }

    pub fn with_error(mut self, error: Option<String>) -> Self {
        self.error = error;
        self
    }
}

/// What a committed batch leaves for the runtime to do.
#[derive(Debug, Default)]
pub struct Committed {
    pub events: Vec<Event>,
    pub effects: Vec<Effect>,
    pub notes: Vec<Note>,
    /// Rollouts as this batch left them.
    pub rollouts: Vec<Rollout>,
    pub gateway_events: Vec<GatewayTransition>,
    pub queue_reports: Vec<QueueReport>,
}
