//! Rollouts through the runtime: starting, pausing, resuming and cancelling
//! go through the writer like every transition; reads come from the engine;
//! progress is a stream of the rollout after every committed change.

use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::broadcast;

use super::actor::Command;
use super::shared::Shared;
use super::watch::WatchSlot;
use super::{Lifecycle, LifecycleError};
use crate::engine::rollout::{Limit, Rollout, RolloutError, RolloutSpec};
use crate::engine::{AgentFilter, DriftReport, RolloutId};

impl From<RolloutError> for LifecycleError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::NotFound(_)
            | RolloutError::UnknownGateway(_)
            | RolloutError::UnknownBoard(_)
            | RolloutError::UnknownAgent(_) => Self::NotFound(e.to_string()),
            RolloutError::EmptySelection => Self::invalid("selection", e.to_string()),
            RolloutError::Overlap { .. } | RolloutError::InvalidState(_) => {
                Self::FailedPrecondition(e.to_string())
            }
        }
    }
}

/// A fresh rollout id: short enough to type, random so that replicas and
/// restarts never reuse one.
fn mint_id() -> RolloutId {
    RolloutId::parse(format!("ro-{:08x}", fastrand::u32(..))).expect("a valid id")
}

impl Lifecycle {
    /// Starts a rollout and its first wave; answers once both are committed.
    pub async fn start_rollout(&self, spec: RolloutSpec) -> Result<Rollout, LifecycleError> {
        let id = mint_id();
        self.call(|reply| Command::StartRollout { id, spec, reply })
            .await
    }

    pub async fn pause_rollout(&self, id: RolloutId) -> Result<Rollout, LifecycleError> {
        self.call(|reply| Command::PauseRollout { id, reply }).await
    }

    pub async fn resume_rollout(
        &self,
        id: RolloutId,
        failure_budget: Option<Limit>,
    ) -> Result<Rollout, LifecycleError> {
        self.call(|reply| Command::ResumeRollout {
            id,
            failure_budget,
            reply,
        })
        .await
    }

    pub async fn cancel_rollout(&self, id: RolloutId) -> Result<Rollout, LifecycleError> {
        self.call(|reply| Command::CancelRollout { id, reply })
            .await
    }

    pub fn get_rollout(&self, id: &RolloutId) -> Result<Rollout, LifecycleError> {
        self.shared
            .engine
            .lock()
            .rollout(id)
            .cloned()
            .ok_or_else(|| RolloutError::NotFound(id.clone()).into())
    }

    /// Every rollout, newest first.
    pub fn list_rollouts(&self) -> Vec<Rollout> {
        self.shared
            .engine
            .lock()
            .rollouts()
            .into_iter()
            .cloned()
            .collect()
    }

    /// Drift per gateway and board, among the agents the filter matches.
    pub fn drift(&self, filter: &AgentFilter) -> DriftReport {
        self.shared.engine.lock().drift_of(filter)
    }

    /// The rollout now, then after every committed change; ends after it
    /// completes or is cancelled, and with UNAVAILABLE when the server
    /// drains. Counted against the watch limit.
    pub fn watch_rollout(
        &self,
        id: &RolloutId,
    ) -> Result<impl Stream<Item = Result<Rollout, LifecycleError>> + Send + 'static, LifecycleError>
    {
        let slot = WatchSlot::take(&self.shared)?;
        // Subscribed under the engine lock, which the writer publishes
        // under: no change falls between the first item and the rest.
        let (first, updates) = {
            let engine = self.shared.engine.lock();
            let first = engine
                .rollout(id)
                .cloned()
                .ok_or_else(|| RolloutError::NotFound(id.clone()))?;
            (first, self.shared.rollouts.subscribe())
        };
        let state = RolloutWatch {
            shared: self.shared.clone(),
            id: id.clone(),
            next: Some(first),
            updates,
            done: false,
            _slot: slot,
        };
        Ok(futures_util::stream::unfold(
            state,
            |mut watch| async move {
                let item = watch.next().await?;
                Some((item, watch))
            },
        ))
    }
}

struct RolloutWatch {
    shared: Arc<Shared>,
    id: RolloutId,
    next: Option<Rollout>,
    updates: broadcast::Receiver<Arc<Rollout>>,
    done: bool,
    _slot: WatchSlot,
}

impl RolloutWatch {
    async fn next(&mut self) -> Option<Result<Rollout, LifecycleError>> {
        if self.done {
            return None;
        }
        let rollout = match self.next.take() {
            Some(rollout) => rollout,
            None => match self.changed().await {
                Ok(rollout) => rollout,
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            },
        };
        self.done = !rollout.state.is_active();
        Some(Ok(rollout))
    }

    async fn changed(&mut self) -> Result<Rollout, LifecycleError> {
        let id = self.id.clone();
        let stop = self.shared.draining.clone();
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return Err(LifecycleError::shutting_down()),
                received = self.updates.recv() => received,
            };
            match received {
                Ok(rollout) if rollout.id == id => return Ok((*rollout).clone()),
                Ok(_) => {}
                // Each item is the whole rollout: one read catches up.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Some(rollout) = self.shared.engine.lock().rollout(&id) {
                        return Ok(rollout.clone());
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(LifecycleError::shutting_down());
                }
            }
        }
    }
}
