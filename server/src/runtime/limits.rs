//! Per-agent budgets (GCRA, through `governor`): heartbeats beyond the pace
//! the service asked for, and reports of a new template version (each one
//! commits an event row). One looping agent spends its own budget, never
//! anyone else's.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::Clock;
use crate::engine::{AgentId, Policy};

/// Heartbeats an agent may send at once before the pace applies: a
/// check-in, a retry or two after an outage, a restart.
pub const HEARTBEAT_BURST: u32 = 10;
/// New template versions an agent may report at once, then one per
/// heartbeat interval.
pub const TEMPLATE_REPORT_BURST: u32 = 3;

type Keyed =
    RateLimiter<AgentId, DefaultKeyedStateStore<AgentId>, LimiterClock, NoOpMiddleware<Duration>>;

/// The service's clock as `governor` sees it: tokio's monotonic time, so
/// paused-time tests move the budgets too.
#[derive(Clone)]
struct LimiterClock(Clock);

impl GovernorClock for LimiterClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

pub(super) struct AgentLimits {
    heartbeats: Keyed,
    template_reports: Keyed,
    clock: LimiterClock,
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refused {
    pub what: &'static str,
    pub retry_after: Duration,
}

impl AgentLimits {
    /// Sustained, an agent may beat twice as often as the shortest pause
    /// the service ever asks for (the interval less its jitter).
    pub fn new(policy: &Policy, clock: Clock) -> Self {
        let shortest_pause = policy
            .heartbeat_interval
            .mul_f64(1.0 - policy.heartbeat_jitter);
        let heartbeat = quota(shortest_pause / 2, HEARTBEAT_BURST);
        let template = quota(policy.heartbeat_interval, TEMPLATE_REPORT_BURST);
        let clock = LimiterClock(clock);
        Self {
            heartbeats: RateLimiter::hashmap_with_clock(heartbeat, clock.clone()),
            template_reports: RateLimiter::hashmap_with_clock(template, clock.clone()),
            clock,
        }
    }

    /// Spends one heartbeat, and one template report if it carries a new
    /// version; nothing is spent when either is refused.
    pub fn admit(&self, agent: &AgentId, new_template: bool) -> Result<(), Refused> {
        let now = self.clock.now();
        if new_template {
            self.template_reports
                .check_key(agent)
                .map_err(|not_until| Refused {
                    what: "template version reports",
                    retry_after: not_until.wait_time_from(now),
                })?;
        }
        self.heartbeats
            .check_key(agent)
            .map_err(|not_until| Refused {
                what: "heartbeats",
                retry_after: not_until.wait_time_from(now),
            })
    }

    /// Forgets agents whose budgets are full again (deleted ones included).
    pub fn forget_idle(&self) {
        self.heartbeats.retain_recent();
        self.template_reports.retain_recent();
    }
}

fn quota(period: Duration, burst: u32) -> Quota {
    Quota::with_period(period.max(Duration::from_millis(1)))
        .expect("a period of at least a millisecond")
        .allow_burst(NonZeroU32::new(burst).expect("a burst of at least one"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Timestamp;

    fn limits() -> AgentLimits {
        AgentLimits::new(
            &Policy::default(),
            Clock::starting_at(Timestamp::from_micros(0)),
        )
    }

    fn agent(id: &str) -> AgentId {
        AgentId::parse(id).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_looping_agent_is_refused_and_others_are_not() {
        let limits = limits();
        let looping = agent("looping");
        let refusals = (0..100)
            .filter(|_| limits.admit(&looping, false).is_err())
            .count();
        assert_eq!(refusals, 100 - HEARTBEAT_BURST as usize);
        let refused = limits.admit(&looping, false).unwrap_err();
        assert_eq!(refused.what, "heartbeats");
        assert!(refused.retry_after > Duration::ZERO);
        assert!(limits.admit(&agent("calm"), false).is_ok());

        // Default policy: 10 s less 20% jitter, halved: one beat per 4 s.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(limits.admit(&looping, false).is_ok());
        assert!(limits.admit(&looping, false).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn template_reports_have_their_own_smaller_budget() {
        let limits = limits();
        let a = agent("a");
        for _ in 0..TEMPLATE_REPORT_BURST {
            limits.admit(&a, true).unwrap();
        }
        let refused = limits.admit(&a, true).unwrap_err();
        assert_eq!(refused.what, "template version reports");
        // A refused report spent no heartbeat: plain beats still pass.
        assert!(limits.admit(&a, false).is_ok());
    }
}
