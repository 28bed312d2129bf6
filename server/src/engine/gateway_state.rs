//! A gateway's link (is its command stream open, since when, why) and what
//! it means for its agents: the gateway is judged before its agents.
//!
//! A wake for an agent whose gateway is away is held, not counted: the
//! agent's check-in deadline becomes the end of the gateway's grace (the
//! policy's `gateway_grace` from when it went away). When the gateway comes
//! back, held wakes go out in deadline order and each deadline starts then.
//! When the grace runs out first, the held wake counts as a failed attempt
//! naming the gateway, and the policy goes on as for any failed wake.

use std::time::Duration;

use super::batch::{Change, GatewayTransition};
use super::model::{Agent, AgentId, Gateway, GatewayId, Reason, Timestamp};
use super::timers::{Timer, TimerKind};
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
    /// The gateway's stream opened. Its held wakes go out, earliest deadline
    /// first, at most `held_wake_rate` a second, each with a deadline from
    /// when it is sent. Returns how many went out at once.
    pub fn gateway_connected(
        &mut self,
        batch: &mut Batch,
        gateway_id: &GatewayId,
    ) -> Result<usize, EngineError> {
        let gateway = self.gateway_or_err(batch, gateway_id)?;
        if gateway.link.is_connected() {
            return Ok(0);
        }
        let held = self.held_on(batch, gateway_id).len();
        self.set_link(batch, gateway, LinkState::Connected, "stream opened", held);
        Ok(self.release_round(batch, gateway_id))
    }

    /// Rounds of held-wake releases that are due.
    pub(super) fn release_due(&mut self, batch: &mut Batch) {
        let due: Vec<GatewayId> = self
            .releasing
            .iter()
            .filter(|(_, at)| **at <= batch.now)
            .map(|(id, _)| id.clone())
            .collect();
        for gateway_id in due {
            self.release_round(batch, &gateway_id);
        }
    }

    /// Sends up to a second's worth of the gateway's held wakes (the
    /// policy's `held_wake_rate`), the earliest deadline first (then the
    /// longest waiting), and schedules the next round a second later if
    /// any are left. Returns how many were sent.
    fn release_round(&mut self, batch: &mut Batch, gateway_id: &GatewayId) -> usize {
        let connected = self
            .gateway_in(batch, gateway_id)
            .is_some_and(|g| g.link.is_connected());
        let mut held = if connected {
            self.held_on(batch, gateway_id)
        } else {
            Vec::new()
        };
        held.sort_by_key(|a| (a.checkin_deadline_at, a.last_wake_sent_at, a.id.clone()));
        let rate = self.policy.held_wake_rate.max(1) as usize;
        let released = held.len().min(rate);
        let next = (held.len() > rate).then(|| batch.now.plus(Duration::from_secs(1)));
        batch.release_rounds.push((gateway_id.clone(), next));
        for agent in held.into_iter().take(rate) {
            let mut sent = agent.clone();
            self.deliver_wake(batch, &mut sent);
            let change = Change::changed(&agent, Reason::WakeReleased, sent.wake_attempts);
            self.stage(batch, change, sent);
        }
        released
    }

    /// The gateway's agents whose wake is held, as the batch sees them.
    fn held_on(&self, batch: &Batch, gateway_id: &GatewayId) -> Vec<Agent> {
        self.agent_ids_on(batch, gateway_id)
            .into_iter()
            .filter_map(|id| self.current(batch, &id))
            .filter(|agent| agent.wake_held)
            .collect()
    }

    /// The gateway's stream closed (or this leader never had one).
    pub fn gateway_disconnected(
        &mut self,
        batch: &mut Batch,
        gateway_id: &GatewayId,
        reason: &str,
    ) -> Result<(), EngineError> {
        let gateway = self.gateway_or_err(batch, gateway_id)?;
        if gateway.link.is_connected() {
            self.set_link(batch, gateway, LinkState::Disconnected, reason, 0);
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
            // Gone before the engine heard of it: the grace starts now.
            Some(gateway) if gateway.link.is_connected() && !grace.is_zero() => {
                Some(batch.now.plus(grace))
            }
            _ => self.hold_until(batch, &previous.gateway_id),
        };
        let Some(until) = until else {
            return self.wake_failed(batch, agent_id, generation, attempt, error);
        };
        let mut held = previous.clone();
        self.hold_wake(batch, &mut held, until);
        let change = Change::changed(&previous, Reason::WakeHeld, attempt);
        self.stage(batch, change, held);
        true
    }

    /// Until when a wake to this gateway is held now; `None`: send it (the
    /// gateway is connected, its grace is over, or holding is off).
    pub(super) fn hold_until(&self, batch: &Batch, gateway_id: &GatewayId) -> Option<Timestamp> {
        let grace = self.policy.gateway_grace;
        let gateway = self.gateway_in(batch, gateway_id)?;
        if gateway.link.is_connected() || grace.is_zero() {
            return None;
        }
        let until = gateway.link.since.plus(grace);
        (until > batch.now).then_some(until)
    }

    /// Holds the current attempt's wake until `until`.
    pub(super) fn hold_wake(&self, batch: &mut Batch, agent: &mut Agent, until: Timestamp) {
        agent.wake_held = true;
        agent.checkin_deadline_at = Some(until);
        batch.timers_to_arm.push(Timer {
            at: until,
            agent_id: agent.id.clone(),
            kind: TimerKind::Checkin {
                generation: agent.generation,
                attempt: agent.wake_attempts,
            },
        });
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
        next.last_provision_error = Some(message.clone());
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

    /// Records something done with the gateway that leaves its link as it
    /// is (a template sync asked for, or acknowledged) in its history.
    pub fn note_gateway(
        &mut self,
        batch: &mut Batch,
        gateway_id: &GatewayId,
        reason: String,
    ) -> Result<(), EngineError> {
        let gateway = self.gateway_or_err(batch, gateway_id)?;
        batch.gateway_events.push(GatewayTransition {
            gateway_id: gateway.id,
            at: batch.now,
            from: gateway.link.state,
            to: gateway.link.state,
            reason,
            wakes_released: 0,
        });
        Ok(())
    }

    fn set_link(
        &mut self,
        batch: &mut Batch,
        mut gateway: Gateway,
        to: LinkState,
        reason: &str,
        wakes_released: usize,
    ) {
        batch.gateway_events.push(GatewayTransition {
            gateway_id: gateway.id.clone(),
            at: batch.now,
            from: gateway.link.state,
            to,
            reason: reason.to_owned(),
            wakes_released: wakes_released as u32,
        });
        gateway.link = Link {
            state: to,
            since: batch.now,
            reason: reason.to_owned(),
        };
        batch.gateways.insert(gateway.id.clone(), gateway);
    }

    /// Every agent on the gateway, committed or staged.
    fn agent_ids_on(&self, batch: &Batch, gateway_id: &GatewayId) -> Vec<AgentId> {
        let mut ids: Vec<AgentId> = self
            .agents
            .values()
            .filter(|a| a.gateway_id == *gateway_id)
            .map(|a| a.id.clone())
            .collect();
        for (id, staged) in &batch.agents {
            if staged.as_ref().is_some_and(|a| a.gateway_id == *gateway_id)
                && !self.agents.contains_key(id)
            {
                ids.push(id.clone());
            }
        }
        ids
    }

    fn gateway_or_err(&self, batch: &Batch, id: &GatewayId) -> Result<Gateway, EngineError> {
        self.gateway_in(batch, id)
            .ok_or_else(|| EngineError::GatewayNotFound(id.clone()))
    }
}
