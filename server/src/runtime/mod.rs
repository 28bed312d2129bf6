//! The runtime: the engine behind a lock, one writer task that commits its
//! batches, the gateway hub, watch streams and background tasks.
//!
//! Reads (get, list, the heartbeat fast path) take the engine lock briefly
//! and never wait for the database. Every transition goes through the
//! writer (the `actor` module), which commits it before anyone can see it.

mod actor;
mod clock;
mod delivery;
mod engine_lock;
mod error;
mod follow;
mod gateways;
mod leader;
mod limits;
mod metrics;
mod outbox;
mod rollouts;
mod shared;
mod tasks;
mod template_sync;
mod timer_lag;
pub mod tokens;
mod watch;
mod writer;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{broadcast, mpsc, oneshot, watch as tokio_watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::{
    Agent, AgentFilter, AgentGauges, AgentId, Engine, Event, Gateway, GatewayId, GatewaySpec,
    GatewayState, GatewayTransition, Policy, ProvisionSpec, Renewal, Status, Timestamp,
};
use crate::store::{Candidate, LeaderInfo, Store, StoreError};
use actor::{Actor, Command};
use leader::Leadership;
use shared::Shared;
use writer::Pipeline;

pub use shared::{MAX_BATCH, Settings};

pub use clock::Clock;
pub use delivery::GatewaySession;
pub use error::LifecycleError;
pub use gateways::{CloseReason, GatewayCommand, Outbound};
pub use leader::{LeaseTiming, ReplicaRole};
pub use template_sync::SyncRequested;
pub use watch::{HeartbeatSeen, PagedWatch, SnapshotPage, WatchChunk, WatchItem, WatchRequest};

/// What a provision produced.
#[derive(Debug, Clone)]
pub struct ProvisionOutcome {
    pub agent: Agent,
    pub created: bool,
    /// Set only when a token was minted; never shown again.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GatewayOutcome {
    pub gateway: GatewayView,
    pub created: bool,
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GatewayView {
    pub gateway: Gateway,
    pub connected_since: Option<Timestamp>,
    /// Commands sent and not yet acknowledged.
    pub commands_pending: usize,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone)]
pub struct HeartbeatAck {
    pub agent_id: AgentId,
    pub status: Status,
    pub generation: u64,
    pub lease_expires_at: Option<Timestamp>,
    pub next_heartbeat_at: Timestamp,
    pub next_heartbeat_in: Duration,
}

/// The handle the transport layer uses. Cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    tasks_stop: CancellationToken,
}

/// Commands waiting for the writer beyond this make callers wait.
const COMMAND_QUEUE: usize = 8192;
/// Rollout changes a progress stream may fall behind; each is the whole
/// rollout, so one that falls further behind just reads it again.
const ROLLOUT_BUFFER: usize = 256;
/// Agents counted per hold of the engine lock for `/metrics` (about a
/// millisecond's walk).
const METRICS_SLICE: usize = 8192;

impl Lifecycle {
    /// Loads the fleet from the store and starts the writer and background
    /// tasks. If the leader lease is free, this replica leads at once: it
    /// extends deadlines that passed while no leader served. Otherwise it
    /// starts as a follower, and takes over whenever the lease is free.
    pub async fn start(
        store: Arc<dyn Store>,
        settings: Settings,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let timing = LeaseTiming::new(settings.leader_lease);
        let candidate = Candidate {
            holder: format!("{}#{:08x}", settings.advertise_address, fastrand::u32(..)),
            address: settings.advertise_address.clone(),
            ttl: timing.expiry(),
        };
        let leadership = Leadership::new(candidate, timing);
        let read = std::time::Instant::now();
        let state = store.load().await?;
        let read_ms = read.elapsed().as_millis() as u64;
        let now = clock.now();
        // The proof counts from the request, not from the load before it: a
        // load longer than half the lease must not shut the start out.
        let started = tokio::time::Instant::now();
        let (engine, follower) = match store.acquire_leadership(leadership.candidate()).await? {
            Some(epoch) => {
                leadership.granted(epoch, leadership.proven_until(started));
                // Engine::restore in two steps, each timed: the maps, then
                // the timers and the restart grace.
                let restoring = std::time::Instant::now();
                let mut engine = Engine::from_stored(settings.policy.clone(), state);
                let restore_ms = restoring.elapsed().as_millis() as u64;
                let arming = std::time::Instant::now();
                let grace = engine.lead_from(now);
                let arm_ms = arming.elapsed().as_millis() as u64;
                // Rebuilding a large fleet takes a while: prove the lease
                // again before committing the grace it computed.
                let renewing = tokio::time::Instant::now();
                if store.renew_leadership(leadership.candidate()).await? {
                    leadership.renewed(leadership.proven_until(renewing));
                }
                store.commit(&grace).await?;
                let commit_ms = renewing.elapsed().as_millis() as u64;
                // Deadlines are extended with an event each; leases in memory only.
                let deadlines_extended = grace.events().len();
                let leases_extended = engine.dirty_lease_count();
                engine.commit(grace);
                leadership.serving();
                tracing::info!(
                    agents = engine.agent_count(),
                    timers = engine.timer_count(),
                    extended = deadlines_extended + leases_extended,
                    deadlines_extended,
                    leases_extended,
                    revision = engine.revision(),
                    read_ms,
                    restore_ms,
                    arm_ms,
                    commit_ms,
                    "lifecycle.restored"
                );
                let follower = follow::Follower::distrusted("this replica led since it started");
                (engine, follower)
            }
            None => {
                // A follower's copy, as stored: timers and grace come when
                // it takes over.
                let follower = follow::Follower::loaded(state.checkpoint);
                let engine = Engine::from_stored(settings.policy.clone(), state);
                tracing::info!(
                    agents = engine.agent_count(),
                    revision = engine.revision(),
                    "another replica leads; following"
                );
                (engine, follower)
            }
        };

        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let streams_stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            engine: engine_lock::EngineLock::new(engine),
            store,
            clock,
            hub: gateways::GatewayHub::default(),
            events: broadcast::channel(settings.watch_buffer.max(1)).0,
            heartbeats: broadcast::channel(settings.watch_buffer.max(1)).0,
            rollouts: broadcast::channel(ROLLOUT_BUFFER).0,
            database_reachable: tokio_watch::channel(true).0,
            recovering: Default::default(),
            commands: commands_tx,
            draining: streams_stop.child_token(),
            streams_stop,
            in_flight: InFlight::default(),
            open_watches: Default::default(),
            trim_scheduled: Default::default(),
            snapshots: Default::default(),
            metrics: Default::default(),
            limits: limits::AgentLimits::new(&settings.policy, clock),
            settings,
            leadership,
        });
        let tasks_stop = CancellationToken::new();
        let actor = Actor {
            shared: shared.clone(),
            commands: commands_rx,
            stop: tasks_stop.clone(),
            followups: Vec::new(),
            roles: shared.leadership.subscribe(),
            follower,
            pipeline: Pipeline::default(),
        };
        let tasks = vec![
            tokio::spawn(actor.run()),
            tokio::spawn(leader::keep_lease(shared.clone(), tasks_stop.clone())),
            tokio::spawn(tasks::checkpoint_leases(shared.clone(), tasks_stop.clone())),
            tokio::spawn(tasks::compact_history(shared.clone(), tasks_stop.clone())),
            tokio::spawn(tasks::probe_database(shared.clone(), tasks_stop.clone())),
            tokio::spawn(delivery::resend_unacknowledged(
                shared.clone(),
                tasks_stop.clone(),
            )),
        ];
        Ok(Self {
            shared,
            tasks: Arc::new(Mutex::new(tasks)),
            tasks_stop,
        })
    }

    /// The first step of a drain: health turns NOT_SERVING and watch
    /// streams end. Gateway streams stay open for the wakes still to come.
    pub fn begin_drain(&self) {
        self.shared.draining.cancel();
    }

    /// Waits until no call waits for the writer and the writer has sent the
    /// wakes of every batch it committed. Bound it with a timeout.
    pub async fn settle(&self) {
        loop {
            self.shared.in_flight.idle().await;
            // A no-op through the writer: answered (whatever the answer)
            // only after every earlier batch delivered its wakes to the
            // gateway streams.
            let (reply, answer) = oneshot::channel();
            let barrier = Command::Barrier { reply };
            if self.shared.commands.send(barrier).await.is_err() || answer.await.is_err() {
                return;
            }
            if self.shared.in_flight.count() == 0 {
                return;
            }
        }
    }

    /// Ends every watch and gateway stream.
    pub fn end_streams(&self) {
        self.shared.streams_stop.cancel();
    }

    /// Commits what was accepted, checkpoints leases, stops every task.
    pub async fn stop(&self) {
        self.stop_within(None).await;
    }

    /// Like [`Lifecycle::stop`], but gives up at `deadline` whatever the
    /// database does: tasks still running are aborted and the store closed
    /// within `close_budget` past it.
    pub async fn stop_by(&self, deadline: tokio::time::Instant, close_budget: Duration) {
        self.stop_within(Some((deadline, close_budget))).await;
    }

    async fn stop_within(&self, bound: Option<(tokio::time::Instant, Duration)>) {
        self.end_streams();
        self.tasks_stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for mut task in tasks {
            let Some((deadline, _)) = bound else {
                let _ = task.await;
                continue;
            };
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("a task was still busy at the drain deadline; aborted");
                task.abort();
            }
        }
        match bound {
            None => self.shared.store.close().await,
            Some((deadline, budget)) => {
                let until = deadline.max(tokio::time::Instant::now()) + budget;
                if tokio::time::timeout_at(until, self.shared.store.close())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "closing the store took too long; its connections go with the process"
                    );
                }
            }
        }
    }

    /// Whether the database answered lately; watch it for health reports.
    pub fn database_reachable(&self) -> tokio_watch::Receiver<bool> {
        self.shared.database_reachable.subscribe()
    }

    /// What this replica is doing: leading, taking over, or following.
    pub fn role(&self) -> ReplicaRole {
        let leadership = &self.shared.leadership;
        match leadership.role() {
            // Its proof ran out, though the writer may not have noticed yet.
            _ if !leadership.holds_lease() => ReplicaRole::Follower,
            role => role,
        }
    }

    /// Watch it for leadership changes.
    pub fn roles(&self) -> tokio_watch::Receiver<ReplicaRole> {
        self.shared.leadership.subscribe()
    }

    /// The leader lease's TTL.
    pub fn leader_lease(&self) -> Duration {
        self.shared.settings.leader_lease
    }

    /// Whether this replica may act as leader at this instant.
    pub fn is_leader(&self) -> bool {
        self.shared.leadership.may_act()
    }

    /// The replica holding the lease, as the store says now.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, LifecycleError> {
        Ok(self.shared.store.leader().await?)
    }

    /// Hands leadership over at once (the drain): leases renewed in memory
    /// are checkpointed, the lease is released so that a follower takes
    /// over at its next try instead of waiting for it to expire, and this
    /// replica acts as leader no more, nor takes the lease again. Called by
    /// a drain after [`Lifecycle::settle`], before gateway streams end; the
    /// caller bounds it with a timeout. Commits fail after this.
    pub async fn step_down(&self) {
        let leadership = &self.shared.leadership;
        leadership.retire();
        if leadership.may_act() {
            tasks::checkpoint_once(&self.shared).await;
        }
        leadership.lost("handing leadership over");
        self.shared.store.release_leadership().await;
    }

    /// Refuses, unless this replica may act as leader.
    fn ensure_leader(&self) -> Result<(), LifecycleError> {
        if self.shared.leadership.may_act() {
            Ok(())
        } else {
            Err(not_leader())
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.shared.settings.policy
    }

    pub fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, LifecycleError>>) -> Command,
    ) -> Result<T, LifecycleError> {
        self.ensure_leader()?;
        let _in_flight = self.shared.in_flight.enter();
        let (reply, answer) = oneshot::channel();
        // Shed load rather than queue without bound: a full queue is
        // UNAVAILABLE with a RetryInfo, at once.
        self.shared
            .commands
            .try_send(command(reply))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => LifecycleError::overloaded(),
                mpsc::error::TrySendError::Closed(_) => LifecycleError::shutting_down(),
            })?;
        answer.await.map_err(|_| LifecycleError::shutting_down())?
    }

    pub async fn provision(&self, spec: ProvisionSpec) -> Result<ProvisionOutcome, LifecycleError> {
        // A known agent keeps its token unless asked to rotate it: a token
        // minted and hashed for it would be thrown away (about 8,000 of a
        // re-provision's 109,000 server instructions). Minted here, off the
        // writer's path, for every other call.
        let keeps_token =
            !spec.rotate_token && self.shared.engine.lock().agent(&spec.agent_id).is_some();
        let minted = (!keeps_token).then(|| tokens::mint(tokens::AGENT_TOKEN_PREFIX));
        let (provisioned, token) = self
            .call(|reply| Command::Provision {
                spec,
                minted,
                reply,
            })
            .await?;
        Ok(ProvisionOutcome {
            agent: provisioned.agent,
            created: provisioned.created,
            token,
        })
    }

    /// An agent's check-in. A steady-state heartbeat renews the lease in
    /// memory; anything else is a transition, committed first.
    pub async fn heartbeat(
        &self,
        token: &str,
        reported_template: Option<String>,
    ) -> Result<HeartbeatAck, LifecycleError> {
        self.ensure_leader()?;
        let hash = tokens::hash(token);
        let now = self.shared.clock.now();
        let limits = &self.shared.limits;
        let renewal = self.shared.engine.lock().renew_lease_admitted(
            &hash,
            reported_template.as_deref(),
            now,
            |agent_id, admission| {
                admission
                    .heartbeat
                    .map_err(limits::Refused::heartbeats)
                    .and_then(|()| match admission.new_template {
                        true => limits.admit_report(agent_id),
                        false => Ok(()),
                    })
                    .map_err(|refused| throttled(agent_id, refused))
            },
        )?;
        let metrics = &self.shared.metrics;
        let (agent_id, status, generation, lease_expires_at) = match renewal {
            Renewal::Renewed(lease) => {
                metrics::Metrics::add(&metrics.heartbeats_in_memory);
                metrics.heartbeat_time_left(lease.time_left);
                self.announce_heartbeat(&lease.agent_id);
                (
                    lease.agent_id,
                    lease.status,
                    lease.generation,
                    lease.lease_expires_at,
                )
            }
            Renewal::UnknownToken => {
                metrics::Metrics::add(&metrics.heartbeats_rejected);
                return Err(invalid_agent_token());
            }
            Renewal::NeedsCommit(agent_id) => {
                let agent = self
                    .call(|reply| Command::CheckIn {
                        agent_id,
                        token: hash,
                        reported_template,
                        received_at: now,
                        reply,
                    })
                    .await
                    .inspect_err(|error| {
                        if matches!(error, LifecycleError::Unauthenticated(_)) {
                            metrics::Metrics::add(&metrics.heartbeats_rejected);
                        }
                    })?;
                metrics::Metrics::add(&metrics.heartbeats_committed);
                (
                    agent.id,
                    agent.status,
                    agent.generation,
                    agent.lease_expires_at,
                )
            }
        };
        // The lease may have run out while this heartbeat was judged: only
        // a leader that still proves its lease acknowledges anything.
        self.ensure_leader()?;
        let next_heartbeat_in = self
            .shared
            .settings
            .policy
            .next_heartbeat_in(fastrand::f64());
        let now = self.shared.clock.now();
        Ok(HeartbeatAck {
            agent_id,
            status,
            generation,
            lease_expires_at,
            next_heartbeat_at: now.plus(next_heartbeat_in),
            next_heartbeat_in,
        })
    }

    fn announce_heartbeat(&self, agent_id: &AgentId) {
        if self.shared.heartbeats.receiver_count() == 0 {
            return;
        }
        let seen = {
            let engine = self.shared.engine.lock();
            let Some(agent) = engine.agent(agent_id) else {
                return;
            };
            HeartbeatSeen {
                agent_id: agent.id.clone(),
                gateway_id: agent.gateway_id.clone(),
                board_id: agent.board_id.clone(),
                status: agent.status,
                last_seen_at: agent.last_seen_at.unwrap_or(agent.updated_at),
                lease_expires_at: agent.lease_expires_at,
                drifted: agent.drifted(),
            }
        };
        let _ = self.shared.heartbeats.send(seen);
    }

    pub async fn wake(&self, agent_id: AgentId) -> Result<Agent, LifecycleError> {
        self.call(|reply| Command::Wake { agent_id, reply }).await
    }

    pub async fn delete(&self, agent_id: AgentId) -> Result<Agent, LifecycleError> {
        self.call(|reply| Command::Delete { agent_id, reply }).await
    }

    pub fn get(&self, agent_id: &AgentId) -> Result<Agent, LifecycleError> {
        self.shared
            .engine
            .lock()
            .agent(agent_id)
            .cloned()
            .ok_or_else(|| LifecycleError::NotFound(format!("agent {agent_id} not found")))
    }

    /// A page of agents in id order, and the id to continue after.
    pub fn list(
        &self,
        filter: &AgentFilter,
        after: Option<&AgentId>,
        limit: usize,
    ) -> (Vec<Agent>, Option<AgentId>) {
        self.shared.engine.lock().list(filter, after, limit)
    }

    /// An agent's events, newest first, before revision `before`.
    pub async fn history(
        &self,
        agent_id: &AgentId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, LifecycleError> {
        let events = self
            .shared
            .store
            .agent_history(agent_id, before, limit)
            .await?;
        if events.is_empty()
            && before.is_none()
            && self.shared.engine.lock().agent(agent_id).is_none()
        {
            return Err(LifecycleError::NotFound(format!(
                "agent {agent_id} not found"
            )));
        }
        Ok(events)
    }

    pub async fn register_gateway(
        &self,
        spec: GatewaySpec,
    ) -> Result<GatewayOutcome, LifecycleError> {
        let (token, new_token) = tokens::mint(tokens::GATEWAY_TOKEN_PREFIX);
        let registered = self
            .call(|reply| Command::RegisterGateway {
                spec,
                new_token,
                reply,
            })
            .await?;
        Ok(GatewayOutcome {
            gateway: self.gateway_view(registered.gateway),
            created: registered.created,
            token: registered.token_minted.then_some(token),
        })
    }

    pub fn list_gateways(&self) -> Vec<GatewayView> {
        let gateways: Vec<Gateway> = self.shared.engine.lock().gateways().cloned().collect();
        gateways.into_iter().map(|g| self.gateway_view(g)).collect()
    }

    fn gateway_view(&self, gateway: Gateway) -> GatewayView {
        let connected_since = self.shared.hub.connected_since(&gateway.id);
        let commands_pending = self.shared.hub.pending_count(&gateway.id);
        GatewayView {
            gateway,
            connected_since,
            commands_pending,
        }
    }

    /// A gateway's link transitions, newest first.
    pub async fn gateway_history(
        &self,
        gateway: &GatewayId,
        limit: usize,
    ) -> Result<Vec<GatewayTransition>, LifecycleError> {
        if self.shared.engine.lock().gateway(gateway).is_none() {
            return Err(LifecycleError::NotFound(format!(
                "gateway {gateway} is not registered"
            )));
        }
        Ok(self.shared.store.gateway_history(gateway, limit).await?)
    }

    /// A stream of the matching agents' snapshot and changes.
    pub async fn watch(
        &self,
        request: WatchRequest,
    ) -> Result<
        impl Stream<Item = Result<WatchItem, LifecycleError>> + Send + 'static,
        LifecycleError,
    > {
        // Boxed: the stream moves its state in and out for every item.
        let watcher = Box::new(watch::Watcher::open(self.shared.clone(), request).await?);
        Ok(futures_util::stream::unfold(
            watcher,
            |mut watcher| async move {
                let item = watcher.next().await?;
                Some((item, watcher))
            },
        ))
    }

    /// The same stream as [`Self::watch`], but a watch of the whole fleet
    /// gets its snapshot by shared pages, and what is ready is taken
    /// without waiting.
    pub async fn watch_by_pages(
        &self,
        request: WatchRequest,
    ) -> Result<PagedWatch, LifecycleError> {
        let watcher = Box::new(watch::Watcher::open(self.shared.clone(), request).await?);
        Ok(PagedWatch::new(watcher))
    }

    /// A signal that fires when gateway streams should end.
    pub fn streams_stopped(&self) -> CancellationToken {
        self.shared.streams_stop.clone()
    }

    /// A signal that fires when a drain begins (or streams end).
    pub fn draining(&self) -> CancellationToken {
        self.shared.draining.clone()
    }

    /// The service's metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        // Agents are counted a slice at a time, the lock let go between
        // slices, so a scrape of a large fleet never stalls heartbeats.
        let mut gauges = AgentGauges::default();
        let mut after = None;
        loop {
            let next =
                self.shared
                    .engine
                    .lock()
                    .count_agents(&mut gauges, after.as_ref(), METRICS_SLICE);
            match next {
                Some(id) => after = Some(id),
                None => break,
            }
        }
        let (timers, wakes_queued, (gateways_away, suspected, draining)) = {
            let engine = self.shared.engine.lock();
            let away = engine.gateways().filter(|g| !g.link.is_connected()).count();
            let braked = |state| engine.gateways().filter(|g| g.state() == state).count();
            (
                engine.timer_count(),
                engine.wakes_owed(),
                (
                    away,
                    braked(GatewayState::Suspected),
                    braked(GatewayState::Draining),
                ),
            )
        };
        let AgentGauges {
            by_status: agents,
            wakes_held,
            drift,
        } = gauges;
        self.shared.metrics.render(&metrics::Gauges {
            agents,
            gateways_connected: self.shared.hub.connected_count(),
            commands_pending: self.shared.hub.pending_total(),
            gateways_disconnected: gateways_away,
            gateways_suspected: suspected,
            gateways_draining: draining,
            wakes_held,
            wakes_queued,
            watches_open: self
                .shared
                .open_watches
                .load(std::sync::atomic::Ordering::Relaxed),
            database_reachable: *self.shared.database_reachable.borrow(),
            timers,
            drift,
        })
    }

    /// Writes leases renewed in memory now, instead of at the next interval.
    pub async fn checkpoint_now(&self) {
        tasks::checkpoint_once(&self.shared).await;
    }
}

/// Counts calls in flight; a drain waits for the count to reach zero.
#[derive(Default)]
struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

struct InFlightGuard<'a>(&'a InFlight);

impl InFlight {
    fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlightGuard(self)
    }

    fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

fn not_leader() -> LifecycleError {
    LifecycleError::Unavailable("this replica is not the leader; retry on another replica".into())
}

fn invalid_agent_token() -> LifecycleError {
    LifecycleError::Unauthenticated("invalid agent token".into())
}

#[cfg(test)]
mod tests;

/// A heartbeat refused by the agent's budget (logged at debug: a looping
/// agent would otherwise flood the logs).
fn throttled(agent_id: &AgentId, refused: limits::Refused) -> LifecycleError {
    tracing::debug!(%agent_id, what = refused.what, retry_after = ?refused.retry_after, "agent throttled");
    LifecycleError::Throttled {
        message: format!(
            "too many {} from agent {agent_id}; retry after {} ms",
            refused.what,
            refused.retry_after.as_millis()
        ),
        retry_after: refused.retry_after,
    }
}
