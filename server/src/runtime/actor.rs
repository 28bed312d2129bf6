//! The single writer. While this replica leads, it takes commands and due
//! timers in batches, stages them in the engine, commits each batch to the
//! store in one transaction, and only then applies it, announces its
//! events, answers the callers and sends the wakes. One writer means one
//! order: revisions follow commits.
//!
//! While this replica follows, the same task keeps the engine a warm copy
//! of the leader's: it reads committed events by revision (woken by the
//! store's notifications, and polling besides, so a lost notification
//! delays nothing for long) and announces them to this replica's watchers.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::follow::{CaughtUp, FOLLOW_PAGE, FollowError, Follower, WARM_BACKLOG};
use super::gateways::{CloseReason, Delivery, GatewayCommand};
use super::leader::ReplicaRole;
use super::metrics::Metrics;
use super::{LifecycleError, Shared};
use crate::engine::rollout::{Limit, Rollout, RolloutSpec};
use crate::engine::{
    Agent, AgentId, Batch, Effect, Engine, EngineError, Event, EventKind, GatewayId,
    GatewayRegistered, GatewaySpec, GatewayState, Note, NoteKind, PendingRetire, PendingSync,
    ProvisionSpec, Provisioned, Reason, RolloutId, StoredState, Timestamp, TokenHash,
};
use crate::store::{Directory, StoreError};

type Reply<T> = oneshot::Sender<Result<T, LifecycleError>>;

pub(super) enum Command {
    Provision {
        spec: ProvisionSpec,
        new_token: TokenHash,
        reply: Reply<Provisioned>,
    },
    CheckIn {
        agent_id: AgentId,
        token: TokenHash,
        reported_template: Option<String>,
        received_at: Timestamp,
        reply: Reply<Agent>,
    },
    Wake {
        agent_id: AgentId,
        reply: Reply<Agent>,
    },
    Delete {
        agent_id: AgentId,
        reply: Reply<Agent>,
    },
    RegisterGateway {
        spec: GatewaySpec,
        new_token: TokenHash,
        reply: Reply<GatewayRegistered>,
    },
    WakeFailed {
        agent_id: AgentId,
        generation: u64,
        attempt: u32,
        error: String,
    },
    RetireDelivered(PendingRetire),
    StartRollout {
        id: RolloutId,
        spec: RolloutSpec,
        reply: Reply<Rollout>,
    },
    PauseRollout {
        id: RolloutId,
        reply: Reply<Rollout>,
    },
    ResumeRollout {
        id: RolloutId,
        failure_budget: Option<Limit>,
        reply: Reply<Rollout>,
    },
    CancelRollout {
        id: RolloutId,
        reply: Reply<Rollout>,
    },
    /// The wake found no stream to its gateway: held, or failed.
    WakeUndelivered {
        agent_id: AgentId,
        generation: u64,
        attempt: u32,
        error: String,
    },
    /// A gateway's stream opened: its held wakes go out.
    GatewayConnected(GatewayId),
    /// A gateway's current stream closed.
    GatewayDisconnected(GatewayId),
    /// A template sync asked for under `command_id` (taken from the hub).
    RequestTemplateSync {
        gateway_id: GatewayId,
        command_id: u64,
        template_version: String,
        reply: Reply<PendingSync>,
    },
    /// The gateway answered a template sync.
    TemplateSyncAcknowledged {
        sync: PendingSync,
        outcome: Result<(), String>,
    },
    /// Answered once every earlier batch delivered its effects (a drain
    /// waits for it).
    Barrier {
        reply: Reply<()>,
    },
}

impl Command {
    /// Answers the caller, if there is one, without doing anything.
    fn refuse(self, error: LifecycleError) {
        match self {
            Command::Provision { reply, .. } => drop(reply.send(Err(error))),
            Command::RegisterGateway { reply, .. } => drop(reply.send(Err(error))),
            Command::CheckIn { reply, .. }
            | Command::Wake { reply, .. }
            | Command::Delete { reply, .. } => drop(reply.send(Err(error))),
            Command::Barrier { reply } => drop(reply.send(Err(error))),
            Command::RequestTemplateSync { reply, .. } => drop(reply.send(Err(error))),
            Command::StartRollout { reply, .. }
            | Command::PauseRollout { reply, .. }
            | Command::ResumeRollout { reply, .. }
            | Command::CancelRollout { reply, .. } => drop(reply.send(Err(error))),
            Command::WakeFailed { .. }
            | Command::RetireDelivered(_)
            | Command::WakeUndelivered { .. }
            | Command::GatewayConnected(_)
            | Command::GatewayDisconnected(_)
            | Command::TemplateSyncAcknowledged { .. } => {}
        }
    }
}

/// Answers a caller once the batch's fate is known.
type PendingReply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn pending<T: Send + 'static, E: Into<LifecycleError> + Send + 'static>(
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

pub(super) struct Actor {
    pub shared: Arc<Shared>,
    pub commands: mpsc::Receiver<Command>,
    pub stop: CancellationToken,
    /// Commands the actor gives itself (failed deliveries), run first.
    pub followups: Vec<Command>,
    pub roles: watch::Receiver<ReplicaRole>,
    /// The engine as a follower's copy: where it stands, and whether a
    /// takeover may start from it.
    pub follower: Follower,
}

/// A follower reads the event log at least this often.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

impl Actor {
    pub async fn run(mut self) {
        loop {
            let role = *self.roles.borrow_and_update();
            let next = match role {
                ReplicaRole::Leader => self.lead().await,
                ReplicaRole::TakingOver => self.take_over().await,
                ReplicaRole::Follower => self.follow().await,
            };
            if next.is_break() {
                break;
            }
        }
        self.drain().await;
    }

    /// Serves as leader until this replica stops leading (or stops).
    async fn lead(&mut self) -> ControlFlow<()> {
        let mut paused = false;
        loop {
            let leadership = &self.shared.leadership;
            if !leadership.may_act() {
                match leadership.role() {
                    // Lost and taken again while this task was busy: it
                    // takes over anew (the run loop dispatches it).
                    ReplicaRole::TakingOver if leadership.holds_lease() => {}
                    // The proof ran out, but a renewal in flight may still
                    // prove the lease: nothing is done until it does, or
                    // the lease keeper gives the lease up.
                    ReplicaRole::Leader => {
                        if !paused {
                            tracing::warn!(
                                "the leader lease is not proven; acting on nothing until a renewal proves it"
                            );
                            paused = true;
                        }
                        let shared = self.shared.clone();
                        tokio::select! {
                            biased;
                            _ = self.stop.cancelled() => return ControlFlow::Break(()),
                            _ = self.roles.changed() => {
                                self.roles.borrow_and_update();
                            }
                            _ = shared.leadership.next_renewal() => {}
                        }
                        continue;
                    }
                    _ => self.step_down("the leader lease can no longer be proven"),
                }
                return ControlFlow::Continue(());
            }
            if paused {
                tracing::info!("the leader lease is proven again; acting");
                paused = false;
            }
            // Follow-ups count toward the batch's command budget too.
            let carried = self.followups.len().min(self.shared.settings.max_batch);
            let mut commands: Vec<Command> = self.followups.drain(..carried).collect();
            if commands.is_empty() {
                let next_timer = self.shared.engine().next_timer_at();
                let wake_at = next_timer.map(|at| self.shared.clock.instant_at(at));
                let proof_ends = self.shared.leadership.valid_until();
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => return ControlFlow::Break(()),
                    _ = self.roles.changed() => {
                        self.roles.borrow_and_update();
                        continue;
                    }
                    _ = sleep_until(proof_ends) => continue,
                    command = self.commands.recv() => match command {
                        Some(command) => commands.push(command),
                        None => return ControlFlow::Break(()),
                    },
                    _ = sleep_until(wake_at) => {}
                }
            }
            // Everything already received is judged before any timer fires.
            while commands.len() < self.shared.settings.max_batch {
                match self.commands.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            if !self.shared.leadership.may_act() {
                refuse_all(commands);
                continue;
            }
            match self.run_batch(commands).await {
                Err(StoreError::NotLeader(_)) => {
                    self.step_down("a commit was fenced out: another replica leads");
                    return ControlFlow::Continue(());
                }
                Err(error) => self.recover(error).await,
                Ok(()) => {}
            }
        }
    }

    /// Stops acting as leader: what was staged is not committed, callers
    /// waiting are refused, gateways reconnect (to the leader).
    fn step_down(&mut self, why: &str) {
        self.shared.leadership.lost(why);
        self.followups.clear();
        while let Ok(command) = self.commands.try_recv() {
            command.refuse(super::not_leader());
        }
        self.shared.hub.evict_all(CloseReason::NotLeader);
    }

    /// Holds the lease: catches up with the store, extends deadlines and
    /// leases over the gap (as at a restart), then serves. A follower's warm
    /// copy needs only what changed since its last read; anything else
    /// loads the whole state.
    async fn take_over(&mut self) -> ControlFlow<()> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        let how = loop {
            if !self.shared.leadership.holds_lease() {
                self.shared
                    .leadership
                    .lost("the lease ran out while taking over");
                return ControlFlow::Continue(());
            }
            match self.take_over_state().await {
                Ok(how) => break how,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "taking over failed; retrying");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return ControlFlow::Break(()),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(1));
        };
        // From now on the engine is a leader's: its leases run ahead of
        // the store's checkpoints.
        self.follower = Follower::distrusted("this replica led since its copy was loaded");
        self.shared.leadership.serving();
        let metrics = &self.shared.metrics;
        Metrics::add(match how {
            Takeover::Warm(_) => &metrics.takeovers_warm,
            Takeover::Full => &metrics.takeovers_full,
        });
        let read = match &how {
            Takeover::Warm(read) => read,
            Takeover::Full => &CaughtUp::default(),
        };
        let engine = self.shared.engine();
        tracing::info!(
            agents = engine.agent_count(),
            timers = engine.timer_count(),
            revision = engine.revision(),
            took_ms = started.elapsed().as_millis() as u64,
            warm = matches!(how, Takeover::Warm(_)),
            events_read = read.events,
            agents_read = read.agents,
            leases_read = read.leases,
            "lifecycle.took_over"
        );
        ControlFlow::Continue(())
    }

    /// The takeover's state: from the warm copy if it can be trusted,
    /// otherwise (saying why) from a full load.
    async fn take_over_state(&mut self) -> Result<Takeover, StoreError> {
        let why = match self.follower.distrust() {
            Some(why) => why.to_owned(),
            None => match self.warm_resync().await {
                Ok(read) => return Ok(Takeover::Warm(read)),
                Err(FollowError::Store(error)) => return Err(error),
                Err(other) => {
                    self.follower = Follower::distrusted(other.to_string());
                    other.to_string()
                }
            },
        };
        tracing::info!(
            why,
            "no warm copy to take over from; loading the whole state"
        );
        self.resync().await?;
        Ok(Takeover::Full)
    }

    /// Brings the warm copy up to the store and takes over from it.
    async fn warm_resync(&mut self) -> Result<CaughtUp, FollowError> {
        let mut read = self.catch_up(true, WARM_BACKLOG).await?;
        let directory = read.directory.take().unwrap_or_default();
        self.lead_copy(directory).await?;
        Ok(read)
    }

    /// Makes the warm copy the leader's engine where it stands: no agent
    /// is copied (at 100,000 agents, copying them out and back was most of
    /// a takeover). If the grace commit fails, the copy, half a leader's
    /// now, is not trusted again: the retry loads the whole state.
    async fn lead_copy(&mut self, directory: Directory) -> Result<(), StoreError> {
        let now = self.shared.clock.now();
        let grace = {
            let mut engine = self.shared.engine();
            engine.replace_directory(
                directory.gateways,
                directory.pending_retires,
                directory.rollouts,
                directory.pending_syncs,
            );
            engine.lead_from(now)
        };
        if let Err(error) = self.shared.store.commit(&grace).await {
            self.shared.engine().abort(grace);
            self.follower = Follower::distrusted("a takeover from it failed half-way");
            return Err(error);
        }
        self.followups.clear();
        let mut engine = self.shared.engine();
        let committed = engine.commit(grace);
        for event in committed.events {
            let _ = self.shared.events.send(Arc::new(event));
        }
        Ok(())
    }

    /// Keeps the engine a copy of the leader's until this replica holds the
    /// lease. Commands that reach a follower are refused.
    async fn follow(&mut self) -> ControlFlow<()> {
        let notifications = self.shared.store.event_notifications();
        loop {
            self.follow_once().await;
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return ControlFlow::Break(()),
                _ = self.roles.changed() => {
                    if *self.roles.borrow_and_update() != ReplicaRole::Follower {
                        return ControlFlow::Continue(());
                    }
                }
                command = self.commands.recv() => match command {
                    Some(command) => command.refuse(super::not_leader()),
                    None => return ControlFlow::Break(()),
                },
                _ = notifications.notified() => {}
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
    }

    /// One round of following: a copy that cannot be trusted is loaded
    /// anew, otherwise it reads what changed.
    async fn follow_once(&mut self) {
        // A replica that handed its leadership over is draining to exit: a
        // fresh copy of the fleet (seconds at a million agents) would only
        // hold the exit up.
        if self.shared.leadership.retired() {
            return;
        }
        let result = match self.follower.distrust() {
            Some(why) => {
                let why = why.to_owned();
                self.reload_copy(&why).await
            }
            None => match self.catch_up(false, usize::MAX).await {
                Ok(_) => Ok(()),
                Err(FollowError::Store(error)) => Err(error),
                Err(other) => self.reload_copy(&other.to_string()).await,
            },
        };
        if let Err(error) = result {
            tracing::debug!(%error, "reading the event log failed; retrying");
        }
    }

    /// Applies what was committed after the copy's position, announcing
    /// each event to this replica's watchers.
    async fn catch_up(
        &mut self,
        directory: bool,
        max_events: usize,
    ) -> Result<CaughtUp, FollowError> {
        let shared = &self.shared;
        let announce = |event: Event| {
            let _ = shared.events.send(Arc::new(event));
        };
        self.follower
            .catch_up(
                shared.store.as_ref(),
                &shared.engine,
                &announce,
                directory,
                max_events,
            )
            .await
    }

    /// Loads the copy anew, announcing the events since the old one.
    async fn reload_copy(&mut self, why: &str) -> Result<(), StoreError> {
        let store = &self.shared.store;
        let state = store.load().await?;
        let missed = self.missed_events(state.revision).await?;
        let checkpoint = state.checkpoint;
        let engine = Engine::from_stored(self.shared.settings.policy.clone(), state);
        {
            let mut guard = self.shared.engine();
            *guard = engine;
            for event in missed {
                let _ = self.shared.events.send(Arc::new(event));
            }
        }
        self.follower = Follower::loaded(checkpoint);
        tracing::info!(why, "the follower's copy was loaded anew");
        Ok(())
    }

    /// Events after the engine's revision, up to `until`, that this
    /// replica's watchers were not told of.
    async fn missed_events(&self, until: u64) -> Result<Vec<Event>, StoreError> {
        let mut after = self.shared.engine().revision();
        let mut missed = Vec::new();
        while after < until {
            let page = self.shared.store.events_after(after, FOLLOW_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.revision;
            missed.extend(page.into_iter().filter(|e| e.revision <= until));
        }
        Ok(missed)
    }

    /// At shutdown: one last batch for whatever was already accepted.
    async fn drain(&mut self) {
        self.commands.close();
        let mut rest = std::mem::take(&mut self.followups);
        while let Ok(command) = self.commands.try_recv() {
            rest.push(command);
        }
        if !self.shared.leadership.may_act() {
            refuse_all(rest);
        } else if !rest.is_empty() {
            let _ = self.run_batch(rest).await;
        }
    }

    async fn run_batch(&mut self, commands: Vec<Command>) -> Result<(), StoreError> {
        let now = self.shared.clock.now();
        let (batch, replies) = {
            let mut engine = self.shared.engine();
            let mut batch = engine.begin(now);
            let replies: Vec<PendingReply> = commands
                .into_iter()
                .filter_map(|command| stage(&mut engine, &mut batch, command))
                .collect();
            engine.fire_due_at_most(&mut batch, self.shared.settings.max_batch);
            (batch, replies)
        };
        let fired = batch.fired_deadlines();

        let wrote = batch.has_writes();
        if wrote && let Err(error) = self.shared.store.commit(&batch).await {
            self.shared.engine().abort(batch);
            Metrics::add(&self.shared.metrics.commit_failures);
            replies.into_iter().for_each(|reply| reply(Some(&error)));
            return Err(error);
        }

        let committed = {
            let mut engine = self.shared.engine();
            let committed = engine.commit(batch);
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
            tracing::info!(
                agent_id = %event.agent.id,
                generation = event.agent.generation,
                attempt = event.attempt,
                revision = event.revision,
                from = event.previous_status.map(|s| s.as_str()),
                to = match event.kind {
                    EventKind::Deleted => "deleted",
                    _ => event.agent.status.as_str(),
                },
                reason = event.reason.as_str(),
                error = event.error.as_deref(),
                "lifecycle.transition"
            );
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
        let rate = self.shared.settings.policy.gateway_wake_rate;
        for report in &committed.queue_reports {
            let (gateway_id, queued) = (&report.gateway_id, report.queued);
            if report.backing_up {
                tracing::warn!(%gateway_id, queued, rate, "gateway.wakes.backing_up");
            } else {
                tracing::info!(%gateway_id, "gateway.wakes.caught_up");
            }
        }
        committed.notes.iter().for_each(|note| log_note(note, now));
        committed.rollouts.iter().for_each(log_rollout);
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
        Ok(())
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

    /// After a failed commit the store may or may not hold the batch, so
    /// the engine is rebuilt from the store before anything else is done.
    async fn recover(&mut self, error: StoreError) {
        let shared = self.shared.clone();
        let _recovering = shared.writer_recovering();
        self.shared.set_database_reachable(false);
        tracing::error!(%error, "commit failed; rebuilding state from the store");
        let mut delay = Duration::from_millis(100);
        loop {
            let retry_at = Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(retry_at) => break,
                    // Leadership changed: the run loop takes it from here.
                    _ = self.roles.changed() => return,
                    Some(command) = self.commands.recv() => {
                        command.refuse(LifecycleError::Unavailable(
                            "the database is unavailable; retry shortly".into(),
                        ));
                    }
                }
            }
            if self.shared.leadership.role() != ReplicaRole::Leader
                || !self.shared.leadership.holds_lease()
            {
                // Lost (and maybe taken again): the run loop takes it from here.
                return;
            }
            match self.resync().await {
                Ok(()) => {
                    self.shared.set_database_reachable(true);
                    tracing::info!("state rebuilt from the store");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "rebuilding state failed");
                    // Writes come back within about a lease of the
                    // database, not after a backoff grown through a long
                    // outage (at 5 s, tries fell due 6.3, 11.3, 16.3 and
                    // 21.3 s after it began).
                    let most = (self.shared.settings.leader_lease / 4)
                        .clamp(Duration::from_millis(100), Duration::from_secs(1));
                    delay = (delay * 2).min(most);
                }
            }
        }
    }

    /// Rebuilds the engine from a full load of the store.
    async fn resync(&mut self) -> Result<(), StoreError> {
        let mut state = self.shared.store.load().await?;
        // Heartbeats answered from memory meanwhile are not in the store.
        state.merge_leases(&self.shared.engine().online_leases());
        // Events the store has that no watcher was told of: a commit whose
        // answer was lost may still have succeeded.
        let missed = self.missed_events(state.revision).await?;
        self.install(state, missed).await
    }

    /// Restores the engine from `state` (extending deadlines and leases
    /// over the gap), commits the extensions, and announces `missed` and
    /// them.
    async fn install(&mut self, state: StoredState, missed: Vec<Event>) -> Result<(), StoreError> {
        let now = self.shared.clock.now();
        let (engine, grace) = Engine::restore(self.shared.settings.policy.clone(), state, now);
        self.shared.store.commit(&grace).await?;
        self.followups.clear();
        let mut guard = self.shared.engine();
        let renewed_meanwhile = guard.online_leases();
        let old = std::mem::replace(&mut *guard, engine);
        let committed = guard.commit(grace);
        guard.adopt_leases(renewed_meanwhile);
        for event in missed.into_iter().chain(committed.events) {
            let _ = self.shared.events.send(Arc::new(event));
        }
        drop(guard);
        // Freed without the lock: readers need not wait for it.
        drop(old);
        Ok(())
    }
}

/// Where a takeover's state came from.
enum Takeover {
    Warm(CaughtUp),
    Full,
}

fn refuse_all(commands: Vec<Command>) {
    for command in commands {
        command.refuse(super::not_leader());
    }
}

fn stage(engine: &mut Engine, batch: &mut Batch, command: Command) -> Option<PendingReply> {
    Some(match command {
        Command::Provision {
            spec,
            new_token,
            reply,
        } => pending(reply, engine.provision(batch, spec, new_token)),
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
