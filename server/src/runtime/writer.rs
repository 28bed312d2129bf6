//! The leader's writer. Commands are staged in the engine in rounds; each
//! round is cut off and sent to the store as one transaction, and only once
//! the store has committed it is it applied: events announced, callers
//! answered, wakes sent. One writer means one order: revisions follow
//! commits.
//!
//! Rounds overlap: while a round's COMMIT is flushed, the commands that
//! arrive are staged on top of it (the batch keeps the agents staged by
//! rounds not yet applied), and the moment its COMMIT returns they go out
//! as the next round, before the first is applied, answered and logged.
//! Nothing is shown to readers or answered before its own commit; a
//! failure fails every round staged after it, and the engine is then
//! rebuilt from the store. A round that changed more than agents (see
//! `Batch::stages_over`) is applied before anything is staged on it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::LifecycleError;
use super::actor::{Actor, Command, Reply};
use super::gateways::{CloseReason, Delivery, GatewayCommand};
use super::metrics::Metrics;
use super::tokens;
use crate::engine::rollout::Rollout;
use crate::engine::{
    Batch, Committed, Effect, Engine, EngineError, Event, EventKind, GatewayState, Note, NoteKind,
    Reason, Timestamp,
};
use crate::store::StoreError;

/// Rounds sent and not yet answered, at most. Postgres flushes one COMMIT
/// after another on the writer's session, so a second round sent at once
/// would only be a small one queued behind the first; instead what comes
/// meanwhile is staged, and goes out as one round the moment the first is
/// answered. (Sending each round at once, queued behind the one flushing
/// and refused by the store unless that one committed, measured no better
/// here: BENCHMARKS.md, "Durable transitions vs etcd".)
const MAX_IN_FLIGHT: usize = 1;

/// Answers a caller once the batch's fate is known.
pub(super) type PendingReply = Box<dyn FnOnce(Option<&StoreError>) + Send + Sync>;

fn pending<T: Send + Sync + 'static, E: Into<LifecycleError> + Send + Sync + 'static>(
    reply: Reply<T>,
    staged: Result<T, E>,
) -> PendingReply {
    Box::new(move |failure| {
        let result = match (staged, failure) {
            (Err(e), _) => Err(e.into()),
            (Ok(_), Some(e)) => Err(e.clone().into()),
            (Ok(value), None) => Ok(value),
        };
        let _ = reply.send(result);
    })
}

/// Rounds staged and not yet applied.
#[derive(Default)]
pub(super) struct Pipeline {
    /// The batch rounds are staged in while earlier ones are in flight.
    open: Option<Batch>,
    in_flight: VecDeque<InFlight>,
    /// The callers of the commands staged since the last round was cut.
    staged: Vec<PendingReply>,
    staged_commands: usize,
}

/// A round sent to the store (or with nothing to write), with what is done
/// once it is committed.
struct InFlight {
    commit: Commit,
    replies: Vec<PendingReply>,
    fired: Vec<Timestamp>,
    now: Timestamp,
    wrote: bool,
    /// When it was sent to the store.
    sent: Instant,
    /// Whether the next round may be staged before this one is applied.
    stages_over: bool,
}

enum Commit {
    Sent(JoinHandle<(Batch, Result<(), StoreError>)>),
    Unwritten(Option<Box<Batch>>),
}

/// A round's fate: the round (lost only if its task panicked) and the
/// store's answer.
pub(super) type Answer = (Option<Batch>, Result<(), StoreError>);

impl Pipeline {
    /// Whether commands may be staged now: on top of the rounds in flight
    /// if they changed only agents, and up to `max` per round.
    pub fn may_stage(&self, max: usize) -> bool {
        self.staged_commands < max && self.in_flight.back().is_none_or(|f| f.stages_over)
    }

    /// How many more commands the round being staged takes.
    pub fn room(&self, max: usize) -> usize {
        max.saturating_sub(self.staged_commands)
    }

    /// Whether a round may be sent now.
    pub fn may_send(&self) -> bool {
        self.in_flight.len() < MAX_IN_FLIGHT && self.in_flight.back().is_none_or(|f| f.stages_over)
    }

    /// Whether commands are staged and not yet sent.
    pub fn has_staged(&self) -> bool {
        self.staged_commands > 0
    }

    /// Whether nothing is in flight or staged.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && !self.has_staged()
    }

    /// The store's answer for the oldest round in flight; pending forever
    /// when there is none. Take it to [`Actor::apply_answer`] at once.
    pub async fn answered(&mut self) -> Answer {
        let Some(head) = self.in_flight.front_mut() else {
            return std::future::pending().await;
        };
        match &mut head.commit {
            Commit::Sent(task) => match task.await {
                Ok((cut, result)) => (Some(cut), result),
                Err(error) => (
                    None,
                    Err(StoreError::Other(format!(
                        "the commit task failed: {error}"
                    ))),
                ),
            },
            Commit::Unwritten(cut) => (cut.take().map(|cut| *cut), Ok(())),
        }
    }
}

impl Actor {
    /// Stages `commands` in the round to be sent next, on top of the rounds
    /// in flight.
    pub(super) fn stage_commands(&mut self, commands: Vec<Command>) {
        if commands.is_empty() {
            return;
        }
        let now = self.shared.clock.now();
        let mut engine = self.shared.engine.lock();
        let open = self.pipeline.open.get_or_insert_with(|| engine.begin(now));
        open.advance_to(now);
        self.pipeline.staged_commands += commands.len();
        let staged = &mut self.pipeline.staged;
        staged.extend(
            commands
                .into_iter()
                .filter_map(|command| stage(&mut engine, open, command)),
        );
    }

    /// Cuts what is staged, with the timers due, as a round, and hands it to
    /// a task that commits it.
    pub(super) fn send_round(&mut self) {
        let now = self.shared.clock.now();
        let max_batch = self.shared.settings.max_batch;
        let cut = {
            let mut engine = self.shared.engine.lock();
            let open = self.pipeline.open.get_or_insert_with(|| engine.begin(now));
            open.advance_to(now);
            engine.fire_due_at_most(open, max_batch);
            open.cut()
        };
        let replies = std::mem::take(&mut self.pipeline.staged);
        self.pipeline.staged_commands = 0;
        let fired = cut.fired_deadlines();
        let stages_over = cut.stages_over();
        let wrote = cut.has_writes();
        let commit = if wrote {
            let store = self.shared.store.clone();
            Commit::Sent(tokio::spawn(async move {
                let result = store.commit(&cut).await;
                (cut, result)
            }))
        } else {
            Commit::Unwritten(Some(Box::new(cut)))
        };
        self.pipeline.in_flight.push_back(InFlight {
            commit,
            replies,
            fired,
            now,
            wrote,
            sent: Instant::now(),
            stages_over,
        });
    }

    /// Forgets the commands staged and not sent, answering their callers
    /// with `error` (nothing may be sent: the lease is not proven).
    pub(super) fn refuse_staged(&mut self, error: &StoreError) {
        if self.pipeline.in_flight.is_empty()
            && let Some(open) = self.pipeline.open.take()
        {
            self.shared.engine.lock().abort(open);
        }
        self.pipeline.staged_commands = 0;
        for reply in std::mem::take(&mut self.pipeline.staged) {
            reply(Some(error));
        }
    }

    /// Applies the oldest round in flight, given the store's answer. After
    /// a failure every round after it fails too (each was staged on it),
    /// and the error is returned: the caller rebuilds the engine from the
    /// store, or steps down.
    pub(super) async fn apply_answer(&mut self, answer: Answer) -> Result<(), StoreError> {
        let flight = self
            .pipeline
            .in_flight
            .pop_front()
            .expect("an answer for a round in flight");
        match answer {
            (Some(cut), Ok(())) => {
                if flight.wrote {
                    let took = flight.sent.elapsed();
                    self.shared.metrics.round_committed_after(took);
                }
                // What was staged meanwhile goes out first: the session is
                // busy again while this round is applied.
                if self.pipeline.has_staged()
                    && self.pipeline.may_send()
                    && self.shared.leadership.may_act()
                {
                    self.send_round();
                }
                self.apply(cut, flight);
                if self.pipeline.in_flight.is_empty() && !self.pipeline.has_staged() {
                    // Every round staged is applied: nothing is left in it.
                    self.pipeline.open = None;
                }
                Ok(())
            }
            (cut, result) => {
                let error = result.err().unwrap_or_else(|| {
                    StoreError::Other("a round was lost before it was applied".into())
                });
                self.fail_in_flight(cut, flight, &error).await;
                Err(error)
            }
        }
    }

    /// Fails a round and every round staged after it: the engine forgets
    /// them, and their callers are told `error`. Rounds already sent are
    /// waited for first, so that a rebuild reads the store after them.
    async fn fail_in_flight(&mut self, cut: Option<Batch>, flight: InFlight, error: &StoreError) {
        let staged = std::mem::take(&mut self.pipeline.staged);
        self.pipeline.staged_commands = 0;
        let mut failed = vec![(cut, flight.replies), (None, staged)];
        while !self.pipeline.in_flight.is_empty() {
            let (cut, _) = self.pipeline.answered().await;
            let flight = self.pipeline.in_flight.pop_front().expect("just answered");
            failed.push((cut, flight.replies));
        }
        {
            let mut engine = self.shared.engine.lock();
            for cut in failed.iter_mut().rev().filter_map(|(cut, _)| cut.take()) {
                engine.abort(cut);
            }
            if let Some(open) = self.pipeline.open.take() {
                engine.abort(open);
            }
        }
        Metrics::add(&self.shared.metrics.commit_failures);
        for (_, replies) in failed {
            replies.into_iter().for_each(|reply| reply(Some(error)));
        }
    }

    /// Waits for every round in flight and applies it (sending what is
    /// staged meanwhile only while the lease is proven).
    pub(super) async fn settle(&mut self) -> Result<(), StoreError> {
        while !self.pipeline.in_flight.is_empty() {
            let answer = self.pipeline.answered().await;
            self.apply_answer(answer).await?;
        }
        Ok(())
    }

    /// Sends `commands`, with whatever is staged, as the last round, and
    /// waits for every round to be applied.
    pub(super) async fn run_batch(&mut self, commands: Vec<Command>) -> Result<(), StoreError> {
        self.settle().await?;
        self.stage_commands(commands);
        self.send_round();
        self.settle().await
    }

    /// A committed round: applied to the engine, its events announced, its
    /// callers answered, its effects delivered.
    fn apply(&mut self, cut: Batch, flight: InFlight) {
        let InFlight {
            replies,
            fired,
            now,
            wrote,
            ..
        } = flight;
        let committed = {
            let mut engine = self.shared.engine.lock();
            let committed = match self.pipeline.open.as_mut() {
                Some(open) => engine.commit_cut(cut, open),
                None => engine.commit(cut),
            };
            // Under the engine lock, so a new watcher's snapshot and its
            // subscription see the same point in the sequence.
            for event in &committed.events {
                let _ = self.shared.events.send(Arc::new(event.clone()));
            }
            for rollout in &committed.rollouts {
                let _ = self.shared.rollouts.send(Arc::new(rollout.clone()));
            }
            committed
        };
        self.timers_fired(&fired, now, committed.events.len());
        if wrote {
            // Only a real round trip says so: a batch that wrote nothing
            // (say, heartbeats during an outage) proves nothing.
            self.shared.set_database_reachable(true);
        }
        replies.into_iter().for_each(|reply| reply(None));
        Metrics::add(&self.shared.metrics.batches);
        for event in &committed.events {
            self.shared.metrics.transition(event.reason);
            if let (Reason::CheckedIn, Some(woken), Some(seen)) = (
                event.reason,
                event.agent.last_wake_sent_at,
                event.agent.last_seen_at,
            ) && event.attempt > 0
            {
                self.shared.metrics.checked_in_after(seen.since(woken));
            }
        }
        let rate = self.shared.settings.policy.gateway_wake_rate;
        crate::logging::in_one_write(|| log_committed(&committed, now, rate));
        // Committed while the lease held (the fence saw to it), but the
        // proof may have run out since: then another replica may lead, and
        // no wake may go out from here. The deadlines they armed stand.
        if self.shared.leadership.may_act() {
            self.deliver(committed.effects);
        } else if !committed.effects.is_empty() {
            tracing::warn!(
                effects = committed.effects.len(),
                "committed, but the leader lease is no longer proven: nothing sent"
            );
        }
    }

    /// The lag of every timer the batch fired at `now`, from its deadline
    /// to the batch's start and to its commit and publication.
    fn timers_fired(&self, fired: &[Timestamp], now: Timestamp, transitions: usize) {
        if fired.is_empty() {
            return;
        }
        let published = self.shared.clock.now();
        let metrics = &self.shared.metrics;
        for deadline in fired {
            metrics.timer_fired_late(now.since(*deadline), published.since(*deadline));
        }
        metrics.storm.batch(fired, transitions, published);
    }

    fn deliver(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Wake(order) => {
                    let gateway = order.gateway_id.clone();
                    let (agent_id, generation, attempt) =
                        (order.agent_id.clone(), order.generation, order.attempt);
                    let now = Instant::now();
                    let delivery = self
                        .shared
                        .hub
                        .send(&gateway, GatewayCommand::Wake(order), now);
                    let error = match delivery {
                        Ok(Delivery::Sent(command_id)) => {
                            Metrics::add(&self.shared.metrics.wakes_sent);
                            tracing::debug!(%agent_id, generation, attempt, command_id, "lifecycle.wake.sent");
                            continue;
                        }
                        Ok(Delivery::Held(command_id)) => {
                            // The engine holds it (or counts it failed):
                            // a held wake is sent anew, with its own
                            // deadline, when the gateway connects.
                            self.shared.hub.forget(&gateway, command_id);
                            Metrics::add(&self.shared.metrics.wakes_failed);
                            tracing::info!(%agent_id, generation, attempt, gateway_id = %gateway, "wake found no stream to its gateway");
                            self.followups.push(Command::WakeUndelivered {
                                agent_id,
                                generation,
                                attempt,
                                error: format!("gateway {gateway} is not connected"),
                            });
                            continue;
                        }
                        Err(error) => error.to_string(),
                    };
                    Metrics::add(&self.shared.metrics.wakes_failed);
                    tracing::warn!(%agent_id, generation, attempt, %error, "lifecycle.wake.failed");
                    self.followups.push(Command::WakeFailed {
                        agent_id,
                        generation,
                        attempt,
                        error,
                    });
                }
                Effect::DisconnectGateway(gateway) => {
                    self.shared.hub.evict(&gateway, CloseReason::TokenRotated);
                    tracing::info!(gateway_id = %gateway, "gateway token rotated; its session was ended");
                    self.followups.push(Command::GatewayDisconnected(gateway));
                }
                Effect::Retire(retire) => {
                    let gateway = retire.gateway_id.clone();
                    let retire = GatewayCommand::Retire(retire);
                    match self.shared.hub.send(&gateway, retire, Instant::now()) {
                        Ok(Delivery::Sent(_)) => {}
                        Ok(Delivery::Held(_)) => {
                            tracing::info!(gateway_id = %gateway, "retire command kept until the gateway connects")
                        }
                        Err(error) => {
                            tracing::info!(%error, "retire command kept until the gateway connects again")
                        }
                    }
                }
            }
        }
    }
}

fn stage(engine: &mut Engine, batch: &mut Batch, command: Command) -> Option<PendingReply> {
    Some(match command {
        Command::Provision {
            spec,
            minted,
            reply,
        } => {
            // The caller mints no token for an agent it saw keep its own;
            // if the agent went meanwhile, it gets one here.
            let minted = minted.or_else(|| {
                engine
                    .provision_needs_token(batch, &spec)
                    .then(|| tokens::mint(tokens::AGENT_TOKEN_PREFIX))
            });
            let (token, hash) = minted.unzip();
            let provisioned = engine.provision(batch, spec, hash);
            pending(
                reply,
                provisioned.map(|p| {
                    let token = token.filter(|_| p.token_minted);
                    (p, token)
                }),
            )
        }
        Command::CheckIn {
            agent_id,
            token,
            reported_template,
            received_at,
            reply,
        } => pending(
            reply,
            engine.check_in_received(batch, &agent_id, &token, reported_template, received_at),
        ),
        Command::Wake { agent_id, reply } => pending(reply, engine.wake(batch, &agent_id)),
        Command::Delete { agent_id, reply } => pending(reply, engine.delete(batch, &agent_id)),
        Command::RegisterGateway {
            spec,
            new_token,
            reply,
        } => pending(
            reply,
            Ok::<_, EngineError>(engine.register_gateway(batch, spec, new_token)),
        ),
        Command::WakeFailed {
            agent_id,
            generation,
            attempt,
            error,
        } => {
            engine.wake_failed(batch, &agent_id, generation, attempt, &error);
            return None;
        }
        Command::RetireDelivered(retire) => {
            engine.retire_delivered(batch, retire);
            return None;
        }
        Command::WakeUndelivered {
            agent_id,
            generation,
            attempt,
            error,
        } => {
            engine.wake_undelivered(batch, &agent_id, generation, attempt, &error);
            return None;
        }
        Command::GatewayConnected(gateway) => {
            // Unknown only if it was never registered: nothing to do.
            let _ = engine.gateway_connected(batch, &gateway);
            return None;
        }
        Command::GatewayDisconnected(gateway) => {
            let _ = engine.gateway_disconnected(batch, &gateway, "stream closed");
            return None;
        }
        Command::Barrier { reply } => pending(reply, Ok::<_, EngineError>(())),
        Command::RequestTemplateSync {
            gateway_id,
            command_id,
            template_version,
            reply,
        } => pending(
            reply,
            engine.request_template_sync(batch, &gateway_id, command_id, template_version),
        ),
        Command::TemplateSyncAcknowledged { sync, outcome } => {
            // Unknown only if it was never registered: nothing to do.
            let _ = engine.template_sync_acknowledged(
                batch,
                &sync.gateway_id,
                sync.command_id,
                &sync.template_version,
                &outcome,
            );
            return None;
        }
        Command::StartRollout { id, spec, reply } => {
            pending(reply, engine.start_rollout(batch, id, spec))
        }
        Command::PauseRollout { id, reply } => pending(reply, engine.pause_rollout(batch, &id)),
        Command::ResumeRollout {
            id,
            failure_budget,
            reply,
        } => pending(reply, engine.resume_rollout(batch, &id, failure_budget)),
        Command::CancelRollout { id, reply } => pending(reply, engine.cancel_rollout(batch, &id)),
    })
}

/// A committed round's lines: its transitions, gateway changes, wake queue
/// reports, notes and rollouts.
fn log_committed(committed: &Committed, now: Timestamp, rate: u32) {
    // One line per transition: a wake it enqueued is said on the same
    // line (two lines per provision were a tenth of the server's CPU).
    let mut enqueued = enqueued_by(&committed.notes);
    let mut folded = vec![false; committed.notes.len()];
    for event in &committed.events {
        let key = (
            event.agent.id.as_str(),
            event.agent.generation,
            event.attempt,
        );
        let note = enqueued.remove(&key);
        if let Some(i) = note {
            folded[i] = true;
        }
        log_transition(event, note.map(|i| &committed.notes[i]), now);
    }
    for transition in &committed.gateway_events {
        if transition.from == transition.to {
            // A history entry that left the link as it was (a sync).
            tracing::info!(gateway_id = %transition.gateway_id, reason = %transition.reason, "gateway.history");
            continue;
        }
        let braked = matches!(
            transition.to,
            GatewayState::Suspected | GatewayState::Draining
        );
        if braked {
            // The one line that says why a gateway's agents get no
            // verdict (or a slow one).
            tracing::warn!(
                gateway_id = %transition.gateway_id,
                from = transition.from.as_str(),
                to = transition.to.as_str(),
                reason = %transition.reason,
                "gateway.state"
            );
            continue;
        }
        tracing::info!(
            gateway_id = %transition.gateway_id,
            from = transition.from.as_str(),
            to = transition.to.as_str(),
            reason = %transition.reason,
            wakes_released = transition.wakes_released,
            "gateway.state"
        );
    }
    for report in &committed.queue_reports {
        let (gateway_id, queued) = (&report.gateway_id, report.queued);
        if report.backing_up {
            tracing::warn!(%gateway_id, queued, rate, "gateway.wakes.backing_up");
        } else {
            tracing::info!(%gateway_id, "gateway.wakes.caught_up");
        }
    }
    for (note, folded) in committed.notes.iter().zip(folded) {
        if !folded {
            log_note(note, now);
        }
    }
    committed.rollouts.iter().for_each(log_rollout);
}

/// A rollout after a committed change: where it is, and why if it stopped.
fn log_rollout(rollout: &Rollout) {
    let counts = rollout.counts();
    tracing::info!(
        rollout_id = %rollout.id,
        template_version = rollout.template_version,
        state = rollout.state.as_str(),
        wave = rollout.waves.len(),
        agents = counts.agents,
        in_flight = counts.in_flight,
        done = counts.done,
        failed = counts.failed,
        pending = counts.pending,
        reason = rollout.reason.as_deref(),
        "rollout.progress"
    );
}

/// The first wake enqueued for each agent, generation and attempt.
fn enqueued_by(notes: &[Note]) -> HashMap<(&str, u64, u32), usize> {
    // Sized once: grown one insert at a time it rehashed several times a round.
    let mut first = HashMap::with_capacity(notes.len());
    for (i, note) in notes.iter().enumerate() {
        if note.kind == NoteKind::Enqueued {
            let key = (note.agent_id.as_str(), note.generation, note.attempt);
            first.entry(key).or_insert(i);
        }
    }
    first
}

/// A committed transition. One that enqueued a wake is logged as the
/// seed's `lifecycle.queue.enqueued`, with the transition's fields beside
/// the wake's deadline; any other as `lifecycle.transition`.
fn log_transition(event: &Event, enqueued: Option<&Note>, now: Timestamp) {
    let to = match event.kind {
        EventKind::Deleted => "deleted",
        _ => event.agent.status.as_str(),
    };
    let from = event.previous_status.map(|s| s.as_str());
    let (agent_id, generation, attempt) = (
        event.agent.id.as_str(),
        event.agent.generation,
        event.attempt,
    );
    let (revision, reason, error) = (
        event.revision,
        event.reason.as_str(),
        event.error.as_deref(),
    );
    let Some(note) = enqueued else {
        tracing::info!(
            agent_id,
            generation,
            attempt,
            revision,
            from,
            to,
            reason,
            error,
            "lifecycle.transition"
        );
        return;
    };
    let deadline = note.deadline.map(|d| d.to_string());
    let delay_ms = note.deadline.map(|d| d.since(now).as_millis() as u64);
    tracing::info!(
        agent_id,
        generation,
        attempt,
        deadline = deadline.as_deref(),
        delay_ms,
        revision,
        from,
        to,
        reason,
        error,
        "lifecycle.queue.enqueued"
    );
}

/// The reference's log events, with the same names and fields.
fn log_note(note: &Note, now: Timestamp) {
    let deadline = note.deadline.map(|d| d.to_string());
    let delay_ms = note.deadline.map(|d| d.since(now).as_millis() as u64);
    let agent_id = note.agent_id.as_str();
    let (generation, attempt) = (note.generation, note.attempt);
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(
                agent_id,
                generation,
                attempt,
                deadline = deadline.as_deref(),
                delay_ms,
                "{}",
                note.kind.event_name()
            )
        };
    }
    match note.kind {
        NoteKind::MaxAttemptsReached | NoteKind::SkipMissingGateway => log!(warn),
        _ => log!(info),
    }
}
