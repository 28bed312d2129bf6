//! A gateway's link (is its command stream open, since when, why) and what
//! it means for its agents: the gateway is judged before its agents.
//!
//! A wake for an agent whose gateway is away is held, not counted: like a
//! wake queued behind the wake budgets (see `wake_queue`) the agent shows
//! `wake_held`, and its `checkin_deadline_at` is when the wake fell due.
//! When the gateway comes back, held wakes join the queue and go out in
//! deadline order; each deadline starts then. When the gateway's grace runs
//! out first, the held wake counts as a failed attempt naming the gateway,
//! and the policy goes on as for any failed wake.

use super::batch::{Change, GatewayTransition};
use super::model::{Agent, AgentId, Gateway, GatewayId, Reason, Timestamp};
use super::timers::{Timer, TimerKind};
use super::wake_queue::RELEASE_ROUND;
use super::{Batch, Engine, EngineError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkState {
    Connected,
    Disconnected,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [LinkState::Connected, LinkState::Disconnected]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub state: LinkState,
    pub since: Timestamp,
    pub reason: String,
}

impl Link {
    /// A gateway just registered.
    pub fn never_connected(at: Timestamp) -> Self {
        Self {
            state: LinkState::Disconnected,
            since: at,
            reason: "never connected".into(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.state == LinkState::Connected
    }
}

impl Engine {
    /// The gateway's stream opened. Its held wakes join the queue of wakes
    /// (see `wake_queue`): they go out, earliest due first, within the wake
    /// budgets, each with a deadline from when it is sent. Returns how many
    /// queued wakes (of any gateway) went out at once.
    pub fn gateway_connected(
        &mut self,
        batch: &mut Batch,
        gateway_id: &GatewayId,
    ) -> Result<usize, EngineError> {
        let gateway = self.gateway_or_err(batch, gateway_id)?;
        if gateway.link.is_connected() {
            // A replacing stream: a wake that found none between the two
            // (held while the engine saw no change) goes out now.
            return Ok(self.release_queued(batch));
        }
        let held = self.owed_on(batch, gateway_id).len();
        self.set_link(batch, gateway, LinkState::Connected, "stream opened", held);
        Ok(self.release_queued(batch))
    }

    /// The gateway's stream closed (or this leader never had one).
    pub fn gateway_disconnected(
        &mut self,
        batch: &mut Batch,
        gateway_id: &GatewayId,
        reason: &str,
    ) -> Result<(), EngineError> {
        let gateway = self.gateway_or_err(batch, gateway_id)?;
        if !gateway.link.is_connected() {
            return Ok(());
        }
        self.set_link(batch, gateway, LinkState::Disconnected, reason, 0);
        // Wakes queued for it are held from now: each gives up when the
        // grace runs out, unless the gateway is back by then.
        if let Some(until) = self.hold_until(batch, gateway_id) {
            for agent in self.owed_on(batch, gateway_id) {
                batch.timers_to_arm.push(hold_timer(&agent, until));
            }
        }
        Ok(())
    }

    /// A wake the runtime found no stream for. Held if the gateway is
    /// within its grace (or the engine has not yet seen it go), else a
    /// failed attempt as [`Engine::wake_failed`] records it. A stale report
    /// changes nothing.
    pub fn wake_undelivered(
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
            || previous.wake_held
        {
            return false;
        }
        let grace = self.policy.gateway_grace;
        let until = match self.gateway_in(batch, &previous.gateway_id) {
            // Gone before the engine heard of it: the grace starts now, and
            // the wake is tried again in the next round unless the news of
            // the disconnection (already on its way) holds it first.
            Some(gateway) if gateway.link.is_connected() && !grace.is_zero() => {
                batch.release_by(batch.now.plus(RELEASE_ROUND));
                Some(batch.now.plus(grace))
            }
            _ => self.hold_until(batch, &previous.gateway_id),
        };
        let Some(until) = until else {
            return self.wake_failed(batch, agent_id, generation, attempt, error);
        };
        let mut held = previous.clone();
        // Its place in the queue: when it found no stream.
        self.hold_wake(batch, &mut held, batch.now, until);
        let change = Change::changed(&previous, Reason::WakeHeld, attempt);
        self.stage(batch, change, held);
        true
    }

    /// Until when a wake to this gateway is held now; `None`: send it (the
    /// gateway is connected, its grace is over, or holding is off).
    /// A suspected gateway's wakes are held too, until it recovers or its
    /// suspicion's bound (see `brake`).
    pub(super) fn hold_until(&self, batch: &Batch, gateway_id: &GatewayId) -> Option<Timestamp> {
        let grace = self.policy.gateway_grace;
        let gateway = self.gateway_in(batch, gateway_id)?;
        let away = (!gateway.link.is_connected() && !grace.is_zero())
            .then(|| gateway.link.since.plus(grace));
        let until = away.max(self.suspected_until(&gateway))?;
        (until > batch.now).then_some(until)
    }

    /// Holds the current attempt's wake, which fell due at `due` (its place
    /// in the queue), until the gateway's grace ends at `until`.
    pub(super) fn hold_wake(
        &self,
        batch: &mut Batch,
        agent: &mut Agent,
        due: Timestamp,
        until: Timestamp,
    ) {
        agent.wake_held = true;
        agent.checkin_deadline_at = Some(due);
        batch.timers_to_arm.push(hold_timer(agent, until));
    }

    /// Whether a held wake's grace is over: its gateway is still away and
    /// has been for the whole grace. `None`: the gateway is connected (the
    /// wake waits in the queue for its budget, not for the gateway).
    pub(super) fn hold_over(&self, batch: &Batch, agent: &Agent) -> Option<bool> {
        match self.gateway_in(batch, &agent.gateway_id) {
            Some(gateway) if gateway.link.is_connected() => None,
            Some(_) => Some(self.hold_until(batch, &agent.gateway_id).is_none()),
            None => Some(true),
        }
    }

    /// The grace ran out with the gateway still away: the held wake counts
    /// as a failed attempt, and its deadline runs from now as a failed
    /// wake's does.
    pub(super) fn expire_hold(&mut self, batch: &mut Batch, agent: Agent) -> Agent {
        let attempt = agent.wake_attempts;
        let since = self
            .gateway_in(batch, &agent.gateway_id)
            .map(|g| g.link.since);
        let away = since.map_or_else(String::new, |since| format!(" since {since}"));
        let message = format!(
            "wake attempt {attempt} failed: gateway {} not connected{away}, held for the {}s grace",
            agent.gateway_id,
            self.policy.gateway_grace.as_secs()
        );
        let mut next = agent.clone();
        next.wake_held = false;
        next.last_wake_sent_at = Some(batch.now);
        let deadline = batch.now.plus(self.policy.checkin_deadline);
        next.checkin_deadline_at = Some(deadline);
        next.last_provision_error = Some(message.as_str().into());
        batch.timers_to_arm.push(Timer {
            at: deadline,
            agent_id: agent.id.clone(),
            kind: TimerKind::Checkin {
                generation: agent.generation,
                attempt,
            },
        });
        let change = Change::changed(&agent, Reason::WakeFailed, attempt).with_error(Some(message));
        self.stage(batch, change, next)
    }

    fn set_link(
        &mut self,
        batch: &mut Batch,
        mut gateway: Gateway,
        to: LinkState,
        reason: &str,
        wakes_released: usize,
    ) {
        let from = gateway.state();
        gateway.link = Link {
            state: to,
            since: batch.now,
            reason: reason.to_owned(),
        };
        batch.gateway_events.push(GatewayTransition {
            gateway_id: gateway.id.clone(),
            at: batch.now,
            from,
            to: gateway.state(),
            reason: reason.to_owned(),
            wakes_released: wakes_released as u32,
        });
        batch.gateways.insert(gateway.id.clone(), gateway);
    }

    fn gateway_or_err(&self, batch: &Batch, id: &GatewayId) -> Result<Gateway, EngineError> {
        self.gateway_in(batch, id)
            .ok_or_else(|| EngineError::GatewayNotFound(id.clone()))
    }
}

/// The check a held wake gets when its gateway's grace ends.
pub(super) fn hold_timer(agent: &Agent, until: Timestamp) -> Timer {
    Timer {
        at: until,
        agent_id: agent.id.clone(),
        kind: TimerKind::Checkin {
            generation: agent.generation,
            attempt: agent.wake_attempts,
        },
    }
}
