//! Per-agent budgets of the runtime's own (GCRA, through `governor`):
//! reports of a new template version, each of which commits an event row.
//! The heartbeat budget lives in the engine, beside the agent's token (see
//! `engine::HeartbeatBudget`). One looping agent spends its own budget,
//! never anyone else's.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::Clock;
use crate::engine::{AgentId, Policy};

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
    template_reports: Keyed,
    clock: LimiterClock,
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refused {
    pub what: &'static str,
    pub retry_after: Duration,
}

impl Refused {
    /// The engine's heartbeat budget refused a beat.
    pub fn heartbeats(retry_after: Duration) -> Self {
        Self {
            what: "heartbeats",
            retry_after,
        }
    }
}

impl AgentLimits {
    pub fn new(policy: &Policy, clock: Clock) -> Self {
        let template = quota(policy.heartbeat_interval, TEMPLATE_REPORT_BURST);
        let clock = LimiterClock(clock);
        Self {
            template_reports: RateLimiter::hashmap_with_clock(template, clock.clone()),
            clock,
        }
    }

    /// Spends one report of a new template version.
    pub fn admit_report(&self, agent: &AgentId) -> Result<(), Refused> {
        let now = self.clock.now();
        self.template_reports
            .check_key(agent)
            .map_err(|not_until| Refused {
                what: "template version reports",
                retry_after: not_until.wait_time_from(now),
            })
    }

    /// Forgets agents whose budgets are full again (deleted ones included).
    pub fn forget_idle(&self) {
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
    async fn template_reports_have_their_own_smaller_budget() {
        let limits = limits();
        let a = agent("a");
        for _ in 0..TEMPLATE_REPORT_BURST {
            limits.admit_report(&a).unwrap();
        }
        let refused = limits.admit_report(&a).unwrap_err();
        assert_eq!(refused.what, "template version reports");
        assert!(refused.retry_after > Duration::ZERO);
        // Another agent's reports are its own.
        assert!(limits.admit_report(&agent("b")).is_ok());

        // Default policy: one more report per heartbeat interval (10 s).
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(limits.admit_report(&a).is_ok());
        assert!(limits.admit_report(&a).is_err());
    }
}
