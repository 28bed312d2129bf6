//! The mass-failure brake: a gateway is judged before its agents.
//!
//! When more than the policy's `brake_share` of a gateway's agents fall
//! silent together (and at least `brake_min_agents` of them), the cause is
//! far likelier the gateway (its host, its network) than each agent, as
//! Kubernetes' node lifecycle controller reasons about a zone. The gateway
//! becomes *suspected* with the reason, once, and while it is its agents get
//! no verdict: an expired lease leaves the agent online (it is looked at
//! again a window later) and a missed check-in deadline is held, not counted,
//! so no agent goes OFFLINE and no wake cycle starts. When enough of them are
//! heard from again the gateway recovers, and the ones still silent get the
//! verdict the policy gives them then. A gateway still suspected after
//! `brake_suspect_for` is *draining*: its silent agents are judged at
//! `brake_drain_rate` a second, so a gateway that never comes back is
//! reported in full, slowly. `fleet_brake_share` does the same for every
//! gateway at once when the whole fleet falls silent together (then the
//! network or this service is the likelier cause).
//!
//! Silent: an online agent not heard from for longer than `brake_window`,
//! or an agent whose check-in deadline passed within the window (now, or at
//! a retrigger). Agents whose wake is held are not counted either way.

use std::collections::BTreeMap;
use std::time::Duration;

use super::batch::GatewayTransition;
use super::model::{Agent, AgentId, Gateway, GatewayId, Status, Timestamp};
use super::timers::Timer;
use super::{Batch, Engine};

/// Where the brake stands on one gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrakeState {
    /// Its agents get no verdict until it recovers.
    Suspected,
    /// Suspected for longer than the bound: silent agents are judged slowly.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brake {
    pub state: BrakeState,
    /// When the gateway was first suspected (draining keeps it).
    pub since: Timestamp,
    pub reason: String,
}

/// What a gateway shows: the brake, when engaged, over its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GatewayState {
    Connected,
    Disconnected,
    Suspected,
    Draining,
}

impl GatewayState {
    pub const ALL: [GatewayState; 4] = [
        GatewayState::Connected,
        GatewayState::Disconnected,
        GatewayState::Suspected,
        GatewayState::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GatewayState::Connected => "connected",
            GatewayState::Disconnected => "disconnected",
            GatewayState::Suspected => "suspected",
            GatewayState::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

impl BrakeState {
    pub fn as_str(self) -> &'static str {
        self.shown().as_str()
    }

    pub fn parse(s: &str) -> Option<Self> {
        match GatewayState::parse(s)? {
            GatewayState::Suspected => Some(BrakeState::Suspected),
            GatewayState::Draining => Some(BrakeState::Draining),
            _ => None,
        }
    }

    fn shown(self) -> GatewayState {
        match self {
            BrakeState::Suspected => GatewayState::Suspected,
            BrakeState::Draining => GatewayState::Draining,
        }
    }
}

impl Gateway {
    /// The state shown for the gateway: the brake's, else its link's.
    pub fn state(&self) -> GatewayState {
        match &self.brake {
            Some(brake) => brake.state.shown(),
            None if self.link.is_connected() => GatewayState::Connected,
            None => GatewayState::Disconnected,
        }
    }

    /// Since when, and why, it is in [`Gateway::state`].
    pub fn state_since(&self) -> (Timestamp, &str) {
        match &self.brake {
            Some(brake) => (brake.since, &brake.reason),
            None => (self.link.since, &self.link.reason),
        }
    }
}

/// How many agents were expected to speak, and how many are silent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub expected: usize,
    pub silent: usize,
}

impl Census {
    /// Whether this many silent agents trip a brake at `share`.
    pub fn trips(&self, share: f64, min_agents: u32) -> bool {
        self.silent >= min_agents.max(1) as usize
            && self.silent as f64 > share * self.expected as f64
    }

    fn describe(&self, window: Duration) -> String {
        format!(
            "{} of {} agents silent for over {}s",
            self.silent,
            self.expected,
            window.as_secs()
        )
    }
}

/// Every gateway's census and the fleet's, taken at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Censuses {
    pub by_gateway: BTreeMap<GatewayId, Census>,
    pub fleet: Census,
    /// Whether silent agents are on more than one gateway (set by
    /// [`Censuses::settle`], once, not per gateway judged).
    pub spread: bool,
}

impl Censuses {
    /// Drops gateways nobody counts in and notes whether the silence spans
    /// gateways.
    pub fn settle(&mut self) {
        self.by_gateway.retain(|_, c| c.expected > 0);
        self.spread = self.by_gateway.values().filter(|c| c.silent > 0).count() > 1;
    }
}

impl Engine {
    /// Whether the agent is expected to speak, and if so whether it is
    /// silent (see the module's comment). `None`: not expected to speak.
    pub fn silent(&self, agent: &Agent, now: Timestamp) -> Option<bool> {
        let window = self.policy.brake_window;
        if agent.wake_held {
            return None;
        }
        if let Some(deadline) = agent.checkin_deadline_at {
            let retriggered = agent.wake_attempts > 1
                && agent
                    .last_wake_sent_at
                    .is_some_and(|sent| sent.plus(window) > now);
            return Some(deadline <= now || retriggered);
        }
        if agent.status != Status::Online {
            return None;
        }
        let heard = agent.last_seen_at.unwrap_or(agent.updated_at);
        let heard = heard.max(self.listening_since.unwrap_or(heard));
        Some(heard.plus(window) < now)
    }

    /// The census as the batch sees it: the committed agents' from the
    /// silence index (see `silence`), with the agents the batch staged laid
    /// over it. Agents waiting for a check-in on a disconnected gateway are
    /// left out: the gateway's grace already holds their wakes (see
    /// `gateway_state`).
    pub(super) fn take_census(&mut self, batch: &Batch) -> Censuses {
        if !self.silence.is_built() {
            self.silence
                .build(self.policy.brake_window, self.agents.values().map(|a| &**a));
        }
        let (gateways, braked) = (&self.gateways, &self.braked);
        let gateway_in = |id: &GatewayId| batch.gateways.get(id).or_else(|| gateways.get(id));
        let away = |id: &GatewayId| gateway_in(id).is_some_and(|g| !g.link.is_connected());
        let braked_since = |id: &GatewayId| {
            braked
                .contains_key(id)
                .then(|| gateway_in(id)?.brake.as_ref().map(|b| b.since))
                .flatten()
        };
        let mut censuses = self.silence.census(&super::silence::Instant {
            now: batch.now,
            window: self.policy.brake_window,
            listening_since: self.listening_since,
            away: &away,
            braked_since: &braked_since,
        });
        for (id, staged) in &batch.agents {
            let committed = self.agents.get(id).map(|a| &**a);
            for (agent, sign) in [(committed, false), (staged.as_ref(), true)] {
                let Some(agent) = agent else { continue };
                let Some(silent) = self.counted(agent, batch.now, &away, &braked_since) else {
                    continue;
                };
                let census = censuses
                    .by_gateway
                    .entry(agent.gateway_id.clone())
                    .or_default();
                for c in [census, &mut censuses.fleet] {
                    if sign {
                        c.expected += 1;
                        c.silent += usize::from(silent);
                    } else {
                        c.expected -= 1;
                        c.silent -= usize::from(silent);
                    }
                }
            }
        }
        censuses.settle();
        #[cfg(test)]
        assert_eq!(
            censuses,
            self.full_census(batch),
            "the silence index disagrees with a full count"
        );
        censuses
    }

    /// Whether the agent counts in its gateway's census, and if so whether
    /// it is silent.
    fn counted(
        &self,
        agent: &Agent,
        now: Timestamp,
        away: &dyn Fn(&GatewayId) -> bool,
        braked_since: &dyn Fn(&GatewayId) -> Option<Timestamp>,
    ) -> Option<bool> {
        if agent.awaiting_checkin() && away(&agent.gateway_id) {
            return None;
        }
        // Agents a draining gateway's brake let go still count as
        // silent: its share falls only as agents are heard from again.
        let let_go = agent.status == Status::Offline
            && braked_since(&agent.gateway_id).is_some_and(|since| agent.updated_at >= since);
        self.silent(agent, now).or(let_go.then_some(true))
    }

    /// One pass over every agent as the batch sees it: what the silence
    /// index must agree with.
    #[cfg(test)]
    pub(super) fn full_census(&self, batch: &Batch) -> Censuses {
        let mut censuses = Censuses::default();
        let away = |id: &GatewayId| {
            self.gateway_in(batch, id)
                .is_some_and(|g| !g.link.is_connected())
        };
        let braked_since = |id: &GatewayId| {
            self.braked
                .contains_key(id)
                .then(|| self.gateway_in(batch, id)?.brake.map(|b| b.since))
                .flatten()
        };
        let mut count = |agent: &Agent| {
            let Some(silent) = self.counted(agent, batch.now, &away, &braked_since) else {
                return;
            };
            let census = censuses
                .by_gateway
                .entry(agent.gateway_id.clone())
                .or_default();
            for c in [census, &mut censuses.fleet] {
                c.expected += 1;
                c.silent += usize::from(silent);
            }
        };
        for (id, agent) in &self.agents {
            match batch.agents.get(id) {
                Some(staged) => staged.iter().for_each(&mut count),
                None => count(agent),
            }
        }
        for (id, staged) in &batch.agents {
            if !self.agents.contains_key(id) {
                staged.iter().for_each(&mut count);
            }
        }
        censuses.settle();
        censuses
    }

    /// Why the gateway should be suspected now, if it should: the fleet's
    /// silence first (it names the likelier cause), then its own.
    fn suspicion(&self, censuses: &Censuses, gateway_id: &GatewayId) -> Option<String> {
        let policy = &self.policy;
        let own = censuses
            .by_gateway
            .get(gateway_id)
            .copied()
            .unwrap_or_default();
        // Fleet-wide only when the silence spans gateways: one gateway's
        // agents silent is that gateway's trouble, whatever the fleet's size.
        if censuses.spread
            && censuses
                .fleet
                .trips(policy.fleet_brake_share, policy.brake_min_agents)
            && own.expected > 0
        {
            return Some(format!(
                "fleet-wide: {} (over {:.0}%): the network or this service is the likelier cause",
                censuses.fleet.describe(policy.brake_window),
                policy.fleet_brake_share * 100.0
            ));
        }
        own.trips(policy.brake_share, policy.brake_min_agents)
            .then(|| {
                format!(
                    "{} (over {:.0}%): the gateway is the likelier cause",
                    own.describe(policy.brake_window),
                    policy.brake_share * 100.0
                )
            })
    }

    fn censuses<'b>(&mut self, batch: &'b mut Batch) -> &'b Censuses {
        if batch.censuses.is_none() {
            batch.censuses = Some(self.take_census(batch));
        }
        batch.censuses.as_ref().expect("just taken")
    }

    /// The brake on the agent's gateway as a failing agent meets it: an
    /// engaged brake, or one this failure engages (the census is taken at
    /// most once a batch). `None`: judge the agent as the policy says.
    pub(super) fn brake_on(&mut self, batch: &mut Batch, gateway_id: &GatewayId) -> Option<Brake> {
        // Looked at, not copied: once per failing agent.
        let gateway = batch
            .gateways
            .get(gateway_id)
            .or_else(|| self.gateways.get(gateway_id))?;
        if gateway.brake.is_some() {
            return gateway.brake.clone();
        }
        if batch.censuses.is_some() {
            // Taken and acted on earlier in this batch.
            return None;
        }
        let censuses = self.censuses(batch).clone();
        self.engage(batch, &censuses);
        self.gateway_in(batch, gateway_id)?.brake
    }

    /// Suspects every gateway the census says should be.
    fn engage(&mut self, batch: &mut Batch, censuses: &Censuses) {
        for id in censuses.by_gateway.keys() {
            // The census first: most gateways are not suspected, and are
            // then not copied.
            let Some(reason) = self.suspicion(censuses, id) else {
                continue;
            };
            let Some(gateway) = self.gateway_in(batch, id) else {
                continue;
            };
            if gateway.brake.is_some() {
                continue;
            }
            let brake = Brake {
                state: BrakeState::Suspected,
                since: batch.now,
                reason: reason.clone(),
            };
            self.set_brake(batch, gateway, Some(brake), reason);
            batch
                .brake_reviews
                .push((id.clone(), Some(batch.now.plus(REVIEW_EVERY))));
        }
    }

    /// Looks again at braked gateways that are due: recovered, draining,
    /// or still suspected (looked at again a second later).
    pub(super) fn review_brakes(&mut self, batch: &mut Batch) {
        let due: Vec<GatewayId> = self
            .braked
            .iter()
            .filter(|(_, at)| **at <= batch.now)
            .map(|(id, _)| id.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let censuses = self.censuses(batch).clone();
        for id in due {
            self.review(batch, &censuses, &id);
        }
        self.engage(batch, &censuses);
    }

    fn review(&mut self, batch: &mut Batch, censuses: &Censuses, id: &GatewayId) {
        let next = batch.now.plus(REVIEW_EVERY);
        batch.brake_reviews.push((id.clone(), None));
        let Some(gateway) = self.gateway_in(batch, id) else {
            return;
        };
        let Some(brake) = gateway.brake.clone() else {
            return;
        };
        let own = censuses.by_gateway.get(id).copied().unwrap_or_default();
        let Some(reason) = self.suspicion(censuses, id) else {
            let why = format!(
                "recovered: {} of {} agents silent now",
                own.silent, own.expected
            );
            self.set_brake(batch, gateway, None, why);
            self.recover_agents(batch, id);
            return;
        };
        batch.brake_reviews.push((id.clone(), Some(next)));
        let bound = brake.since.plus(self.policy.brake_suspect_for);
        if brake.state == BrakeState::Suspected && bound <= batch.now {
            let why = format!(
                "suspected for {}s without recovery ({reason}): judging its silent agents at {}/s",
                self.policy.brake_suspect_for.as_secs(),
                self.policy.brake_drain_rate
            );
            let draining = Brake {
                state: BrakeState::Draining,
                since: brake.since,
                reason: why.clone(),
            };
            self.set_brake(batch, gateway, Some(draining), why);
        }
    }

    /// The gateway recovered: its agents still silent get the policy's
    /// verdict now, and the wakes it held join the queue of wakes.
    fn recover_agents(&mut self, batch: &mut Batch, gateway_id: &GatewayId) {
        let agents: Vec<Agent> = self
            .agent_ids_on(batch, gateway_id)
            .into_iter()
            .filter_map(|id| self.current(batch, &id))
            .collect();
        for agent in agents {
            let lease_over = agent.status == Status::Online
                && !agent.awaiting_checkin()
                && agent.lease_expires_at.is_some_and(|at| at <= batch.now);
            if lease_over {
                self.expire_lease(batch, agent);
            }
        }
        self.release_queued(batch);
    }

    /// Until when the brake holds wakes to this gateway: while suspected,
    /// up to the bound (draining, they go out again).
    pub(super) fn suspected_until(&self, gateway: &Gateway) -> Option<Timestamp> {
        let brake = gateway.brake.as_ref()?;
        (brake.state == BrakeState::Suspected)
            .then(|| brake.since.plus(self.policy.brake_suspect_for))
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

    /// Whether a failing agent's verdict may go ahead now. Suspected: no,
    /// and its timer is armed again a window later. Draining: yes when a
    /// slot at the drain rate is free; otherwise its timer is armed again at
    /// the slot reserved for it.
    pub(super) fn verdict_allowed(
        &mut self,
        batch: &mut Batch,
        brake: &Brake,
        timer: &Timer,
    ) -> bool {
        match brake.state {
            BrakeState::Suspected => {
                batch.timers_to_arm.push(Timer {
                    at: batch.now.plus(self.policy.brake_window),
                    ..timer.clone()
                });
                false
            }
            BrakeState::Draining => {
                let slot = self.drain_slot(batch, timer);
                if slot <= batch.now {
                    return true;
                }
                batch.timers_to_arm.push(Timer {
                    at: slot,
                    ..timer.clone()
                });
                false
            }
        }
    }

    /// The agent's slot among its draining gateway's verdicts.
    fn drain_slot(&mut self, batch: &Batch, timer: &Timer) -> Timestamp {
        if let Some(slot) = self.drain_slots.get(&timer.agent_id).copied() {
            if slot <= batch.now {
                self.drain_slots.remove(&timer.agent_id);
            }
            return slot;
        }
        let gateway = self
            .current(batch, &timer.agent_id)
            .map(|a| a.gateway_id)
            .expect("a failing agent exists");
        let every = Duration::from_secs_f64(1.0 / self.policy.brake_drain_rate);
        let next = self.drain_next.entry(gateway).or_insert(batch.now);
        let slot = (*next).max(batch.now);
        *next = slot.plus(every);
        if slot > batch.now {
            self.drain_slots.insert(timer.agent_id.clone(), slot);
        }
        slot
    }

    fn set_brake(
        &mut self,
        batch: &mut Batch,
        mut gateway: Gateway,
        brake: Option<Brake>,
        reason: String,
    ) {
        let from = gateway.state();
        gateway.brake = brake;
        if gateway.brake.is_none() {
            self.drain_next.remove(&gateway.id);
        }
        batch.gateway_events.push(GatewayTransition {
            gateway_id: gateway.id.clone(),
            at: batch.now,
            from,
            to: gateway.state(),
            reason,
            wakes_released: 0,
        });
        batch.gateways.insert(gateway.id.clone(), gateway);
    }

    /// Gateways restored braked stay so, with their first suspicion's time
    /// (so the bound to draining holds across a restart), and are looked at
    /// again a window after the start: by then their healthy agents have
    /// been heard from and their silent ones are silent again.
    pub(super) fn restore_brakes(&mut self, now: Timestamp) {
        let at = now.plus(self.policy.brake_window).plus(REVIEW_EVERY);
        for gateway in self.gateways.values() {
            if gateway.brake.is_some() {
                self.braked.insert(gateway.id.clone(), at);
            }
        }
    }

    pub(super) fn next_review_at(&self) -> Option<Timestamp> {
        self.braked.values().min().copied()
    }

    /// Agents waiting for a drain slot (memory only: a restart reserves
    /// them again as their timers fire).
    pub fn drain_reserved(&self) -> usize {
        self.drain_slots.len()
    }
}

/// How often a braked gateway is looked at again.
pub const REVIEW_EVERY: Duration = Duration::from_secs(1);
