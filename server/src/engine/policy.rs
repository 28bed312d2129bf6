//! The convergence policy: how long an agent has to check in, how often it is
//! woken, how long its lease lasts. [`Policy::DEFAULT`] is the one place its
//! defaults live (the seed system's numbers): the binary's flags take their
//! defaults from it and only override them.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// After each wake, the agent must check in within this.
    pub checkin_deadline: Duration,
    /// Wakes without a check-in before the agent is marked offline.
    pub max_wake_attempts: u32,
    /// How often an online agent is asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// An online agent that has not heartbeaten for this long goes offline.
    pub lease_ttl: Duration,
    /// Deadlines that passed while the service was down are moved this far
    /// (plus a spread of up to the same again) past the start.
    pub restart_grace: Duration,
    /// Whether an expired lease starts a wake cycle (the agent stays offline
    /// until it checks in).
    pub wake_on_lease_expiry: bool,
    /// The share of the heartbeat interval taken off at random, so a fleet
    /// woken together does not heartbeat together.
    pub heartbeat_jitter: f64,
    /// How long wakes for a disconnected gateway's agents are held (not
    /// counted) before they count as failed attempts. Zero: never held.
    pub gateway_grace: Duration,
    /// Wakes sent to one gateway per second, at most (in bursts of at most
    /// as many): every wake, first or retry, operator's, rollout's or held.
    /// Beyond it wakes queue in deadline order; each deadline starts when
    /// its wake is sent.
    pub gateway_wake_rate: u32,
    /// Wakes sent to all gateways together per second, at most (in bursts
    /// of at most as many), queued likewise.
    pub total_wake_rate: u32,
    /// Held wakes sent per second to a gateway that reconnects, at most,
    /// in deadline order; each one's deadline starts when it is sent.
    /// More than this share of a gateway's agents silent together makes it
    /// suspected (see `brake`); 1.0 never does.
    pub brake_share: f64,
    /// The fewest silent agents that can make a gateway (or the fleet)
    /// suspected.
    pub brake_min_agents: u32,
    /// An online agent unheard for longer than this, or a check-in deadline
    /// missed within it, counts as silent.
    pub brake_window: Duration,
    /// More than this share of all agents silent together makes every
    /// gateway suspected; 1.0 never does.
    pub fleet_brake_share: f64,
    /// A gateway suspected this long without recovering starts draining.
    pub brake_suspect_for: Duration,
    /// Verdicts per second on a draining gateway's silent agents.
    pub brake_drain_rate: f64,
}

impl Policy {
    /// The defaults: 30 s to check in after each wake, 3 wakes, as the seed
    /// system does; a 10 s heartbeat with up to 20% jitter and a 30 s lease
    /// (three missed beats), a 30 s restart grace. A gateway away for up to
    /// 3 minutes (a process restart, a host reboot, a rolling upgrade) costs
    /// its agents no attempt: longer than the seed's whole escalation (90 s),
    /// so a short outage never makes a fleet OFFLINE, and short enough that a
    /// dead gateway's agents are reported within 3 minutes plus the policy.
    /// At most 100 wakes a second to one gateway: a host starts its agents
    /// at a pace it can take (1,000 in 10 s, a third of one check-in
    /// deadline, which starts only when each wake is sent anyway); 1,000 a
    /// second in all: 100,000 agents woken after a restart in under two
    /// minutes, while wakes stay a small share of what the writer commits.
    /// The brake: more than 55% of a gateway's agents silent (Kubernetes'
    /// unhealthy-zone threshold), at least 3 (Kubernetes' zone needs more
    /// than two not-ready nodes), or 40% of the fleet; silent means unheard
    /// for 1.5 heartbeat intervals; suspected for 5 minutes (Kubernetes' pod
    /// eviction timeout) before draining at one verdict a second.
    pub const DEFAULT: Policy = Policy {
        checkin_deadline: Duration::from_secs(30),
        max_wake_attempts: 3,
        heartbeat_interval: Duration::from_secs(10),
        lease_ttl: Duration::from_secs(30),
        restart_grace: Duration::from_secs(30),
        wake_on_lease_expiry: false,
        heartbeat_jitter: 0.2,
        gateway_grace: Duration::from_secs(180),
        gateway_wake_rate: 100,
        total_wake_rate: 1000,
        brake_share: 0.55,
        brake_min_agents: 3,
        brake_window: Duration::from_secs(15),
        fleet_brake_share: 0.4,
        brake_suspect_for: Duration::from_secs(300),
        brake_drain_rate: 1.0,
    };
}

impl Default for Policy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("max wake attempts must be at least 1")]
    NoAttempts,
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("the lease TTL ({ttl:?}) must be longer than the heartbeat interval ({interval:?})")]
    LeaseShorterThanInterval { ttl: Duration, interval: Duration },
    #[error("heartbeat jitter must be within 0.0..1.0")]
    Jitter,
    #[error("{0} must be within 0.0..=1.0 and above zero")]
    Share(&'static str),
    #[error(
        "the brake window ({window:?}) must be longer than the heartbeat interval and shorter than the lease TTL ({ttl:?})"
    )]
    BrakeWindow { window: Duration, ttl: Duration },
}

impl Policy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_wake_attempts == 0 {
            return Err(PolicyError::NoAttempts);
        }
        for (name, value) in [
            ("the check-in deadline", self.checkin_deadline),
            ("the heartbeat interval", self.heartbeat_interval),
        ] {
            if value.is_zero() {
                return Err(PolicyError::Zero(name));
            }
        }
        if self.lease_ttl <= self.heartbeat_interval {
            return Err(PolicyError::LeaseShorterThanInterval {
                ttl: self.lease_ttl,
                interval: self.heartbeat_interval,
            });
        }
        if self.gateway_wake_rate == 0 {
            return Err(PolicyError::Zero("the gateway wake rate"));
        }
        if self.total_wake_rate == 0 {
            return Err(PolicyError::Zero("the total wake rate"));
        }
        if !(0.0..1.0).contains(&self.heartbeat_jitter) {
            return Err(PolicyError::Jitter);
        }
        for (name, share) in [
            ("the brake share", self.brake_share),
            ("the fleet brake share", self.fleet_brake_share),
        ] {
            if !(share > 0.0 && share <= 1.0) {
                return Err(PolicyError::Share(name));
            }
        }
        // Within the window a healthy agent has always been heard from, and
        // a silent one is counted before its lease runs out.
        if self.brake_window <= self.heartbeat_interval || self.brake_window >= self.lease_ttl {
            return Err(PolicyError::BrakeWindow {
                window: self.brake_window,
                ttl: self.lease_ttl,
            });
        }
        if !(self.brake_drain_rate > 0.0 && self.brake_drain_rate.is_finite()) {
            return Err(PolicyError::Zero("the brake drain rate"));
        }
        Ok(())
    }

    /// When an agent should heartbeat next, given a uniform random `unit` in
    /// `0.0..1.0`: somewhere in the last `heartbeat_jitter` of the interval.
    pub fn next_heartbeat_in(&self, unit: f64) -> Duration {
        let cut = self.heartbeat_jitter * unit.clamp(0.0, 1.0);
        self.heartbeat_interval.mul_f64(1.0 - cut)
    }

    /// Where a deadline that passed during downtime moves to: past the grace
    /// period by a spread derived from `unit` in `0.0..1.0`, so a restart
    /// does not fire the whole fleet at once.
    pub fn grace_offset(&self, unit: f64) -> Duration {
        self.restart_grace + self.restart_grace.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed system's policy. Changing a default is a decision: this
    /// test says which numbers operators get unless they set a flag.
    #[test]
    fn the_defaults_are_pinned() {
        let policy = Policy::default();
        assert_eq!(policy, Policy::DEFAULT);
        assert_eq!(policy.checkin_deadline, Duration::from_secs(30));
        assert_eq!(policy.max_wake_attempts, 3);
        assert_eq!(policy.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(policy.lease_ttl, Duration::from_secs(30));
        assert_eq!(policy.restart_grace, Duration::from_secs(30));
        assert!(!policy.wake_on_lease_expiry);
        assert_eq!(policy.heartbeat_jitter, 0.2);
        assert_eq!(policy.gateway_grace, Duration::from_secs(180));
        assert_eq!(policy.gateway_wake_rate, 100);
        assert_eq!(policy.total_wake_rate, 1000);
        assert_eq!(policy.brake_share, 0.55);
        assert_eq!(policy.brake_min_agents, 3);
        assert_eq!(policy.brake_window, Duration::from_secs(15));
        assert_eq!(policy.fleet_brake_share, 0.4);
        assert_eq!(policy.brake_suspect_for, Duration::from_secs(300));
        assert_eq!(policy.brake_drain_rate, 1.0);
        assert_eq!(policy.validate(), Ok(()));
    }
}
