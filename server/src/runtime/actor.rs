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

use super::LifecycleError;
use super::follow::{CaughtUp, FOLLOW_PAGE, FollowError, Follower, WARM_BACKLOG};
use super::gateways::CloseReason;
use super::leader::ReplicaRole;
use super::metrics::Metrics;
use super::shared::Shared;
use super::writer::{Answer, Pipeline};
use crate::engine::rollout::{Limit, Rollout, RolloutSpec};
use crate::engine::{
    Agent, AgentId, Engine, Event, GatewayId, GatewayRegistered, GatewaySpec, PendingRetire,
    PendingSync, ProvisionSpec, Provisioned, RolloutId, StoredState, Timestamp, TokenHash,
};
use crate::store::{Directory, StoreError};

pub(super) type Reply<T> = oneshot::Sender<Result<T, LifecycleError>>;

pub(super) enum Command {
    Provision {
        spec: ProvisionSpec,
        /// A token and its hash, unless the caller saw the agent keep its
        /// own.
        minted: Option<(String, TokenHash)>,
        /// The agent, and its new token if it got one.
        reply: Reply<(Provisioned, Option<String>)>,
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
    /// The leader's rounds staged and not yet applied.
    pub pipeline: Pipeline,
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
            if !self.shared.leadership.may_act() && !self.pipeline.is_idle() {
                // Rounds in flight end first (the store fenced them if
                // another replica leads): none is left behind a step down.
                // Nothing staged is sent.
                if let Err(error) = self.settle().await
                    && self.after_failure(error).await.is_break()
                {
                    return ControlFlow::Continue(());
                }
                self.refuse_staged(&StoreError::NotLeader(
                    "this replica is not the leader".into(),
                ));
                continue;
            }
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
            let max_batch = self.shared.settings.max_batch;
            if !self.pipeline.may_send() {
                // A round is in flight: what comes meanwhile is staged on
                // top of it, and goes out when it is answered.
                let stage = self.pipeline.may_stage(max_batch);
                let room = self.pipeline.room(max_batch);
                let carried = if stage {
                    self.followups.len().min(room)
                } else {
                    0
                };
                let mut commands: Vec<Command> = self.followups.drain(..carried).collect();
                if commands.is_empty() {
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => return ControlFlow::Break(()),
                        answer = self.pipeline.answered() => {
                            if self.take_answer(answer).await.is_break() {
                                return ControlFlow::Continue(());
                            }
                            continue;
                        }
                        command = self.commands.recv(), if stage => match command {
                            Some(command) => commands.push(command),
                            None => return ControlFlow::Break(()),
                        },
                    }
                }
                while commands.len() < room {
                    match self.commands.try_recv() {
                        Ok(command) => commands.push(command),
                        Err(_) => break,
                    }
                }
                self.stage_commands(commands);
                continue;
            }
            if self.pipeline.has_staged() {
                self.send_round();
                continue;
            }
            // Follow-ups count toward the batch's command budget too.
            let carried = self.followups.len().min(max_batch);
            let mut commands: Vec<Command> = self.followups.drain(..carried).collect();
            if commands.is_empty() {
                let next_timer = self.shared.engine.lock().next_timer_at();
                let wake_at = next_timer.map(|at| self.shared.clock.instant_at(at));
                let proof_ends = self.shared.leadership.valid_until();
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => return ControlFlow::Break(()),
                    answer = self.pipeline.answered() => {
                        if self.take_answer(answer).await.is_break() {
                            return ControlFlow::Continue(());
                        }
                        continue;
                    }
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
            while commands.len() < max_batch {
                match self.commands.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            if !self.shared.leadership.may_act() {
                refuse_all(commands);
                continue;
            }
            self.stage_commands(commands);
            self.send_round();
        }
    }

    /// Applies the store's answer for the oldest round in flight; `Break`
    /// when a failed commit showed another replica leads (stop leading).
    async fn take_answer(&mut self, answer: Answer) -> ControlFlow<()> {
        match self.apply_answer(answer).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => self.after_failure(error).await,
        }
    }

    /// After a failed commit (every round in flight failed with it): steps
    /// down if another replica leads (`Break`: stop leading), otherwise
    /// rebuilds the engine from the store.
    async fn after_failure(&mut self, error: StoreError) -> ControlFlow<()> {
        if let StoreError::NotLeader(_) = error {
            self.step_down("a commit was fenced out: another replica leads");
            return ControlFlow::Break(());
        }
        self.recover(error).await;
        ControlFlow::Continue(())
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
        let engine = self.shared.engine.lock();
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
            let mut engine = self.shared.engine.lock();
            engine.replace_directory(
                directory.gateways,
                directory.pending_retires,
                directory.rollouts,
                directory.pending_syncs,
            );
            engine.lead_from(now)
        };
        if let Err(error) = self.shared.store.commit(&grace).await {
            self.shared.engine.lock().abort(grace);
            self.follower = Follower::distrusted("a takeover from it failed half-way");
            return Err(error);
        }
        self.followups.clear();
        let mut engine = self.shared.engine.lock();
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
            let mut guard = self.shared.engine.lock();
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
        let mut after = self.shared.engine.lock().revision();
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
        // Rounds in flight end first; a failure has answered their callers.
        let _ = self.settle().await;
        if self.pipeline.has_staged() {
            if self.shared.leadership.may_act() {
                self.send_round();
                let _ = self.settle().await;
            } else {
                self.refuse_staged(&StoreError::NotLeader(
                    "this replica is not the leader".into(),
                ));
            }
        }
        if !self.shared.leadership.may_act() {
            refuse_all(rest);
        } else if !rest.is_empty() {
            let _ = self.run_batch(rest).await;
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
        state.merge_leases(&self.shared.engine.lock().online_leases());
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
        let mut guard = self.shared.engine.lock();
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
