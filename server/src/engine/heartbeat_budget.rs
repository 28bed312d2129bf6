//! Each agent's heartbeat budget: GCRA (the generic cell rate algorithm),
//! kept as one instant per agent, its "theoretical arrival time", in the
//! token index slot the heartbeat looks up anyway. A keyed map behind a
//! mutex cost a second hash and lookup per heartbeat, and grew (and
//! rehashed) as a fleet first beat (BENCHMARKS.md, heartbeats).
//!
//! The arithmetic is `governor`'s, which kept these budgets before (a test
//! compares the two): a burst of `burst` beats, then one per `period`.

use std::time::Duration;

use super::model::Timestamp;
use super::policy::Policy;

/// Heartbeats an agent may send at once before the pace applies: a
/// check-in, a retry or two after an outage, a restart.
pub const HEARTBEAT_BURST: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatBudget {
    /// One beat's worth of time.
    period: Duration,
    /// How far ahead of now the arrival time may run: `burst - 1` periods.
    tolerance: Duration,
}

impl HeartbeatBudget {
    pub fn new(period: Duration, burst: u32) -> Self {
        let period = period.max(Duration::from_millis(1));
        Self {
            period,
            tolerance: period * burst.max(1).saturating_sub(1),
        }
    }

    /// Sustained, an agent may beat twice as often as the shortest pause
    /// the service ever asks for (the interval less its jitter).
    pub fn of(policy: &Policy) -> Self {
        let shortest_pause = policy
            .heartbeat_interval
            .mul_f64(1.0 - policy.heartbeat_jitter);
        Self::new(shortest_pause / 2, HEARTBEAT_BURST)
    }

    /// A beat at `now` against the arrival time `tat` (none: a full
    /// budget): the new arrival time to keep if it is admitted, or how long
    /// to wait before one would be. Nothing changes until the caller keeps
    /// the new time.
    pub fn spend(&self, tat: Option<Timestamp>, now: Timestamp) -> Result<Timestamp, Duration> {
        let tat = tat.unwrap_or(now);
        let earliest = tat.minus(self.tolerance);
        if now < earliest {
            return Err(earliest.since(now));
        }
        Ok(tat.max(now).plus(self.period))
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;
    use governor::{Quota, RateLimiter};

    use super::*;

    fn at(millis: i64) -> Timestamp {
        Timestamp::from_micros(1_700_000_000_000_000 + millis * 1000)
    }

    /// Beats at each instant in turn; the arrival time kept as the engine
    /// keeps it. Ok for admitted, the wait for refused.
    fn run(budget: &HeartbeatBudget, beats: &[i64]) -> Vec<Result<(), Duration>> {
        let mut tat = None;
        beats
            .iter()
            .map(|&ms| {
                let next = budget.spend(tat, at(ms))?;
                tat = Some(next);
                Ok(())
            })
            .collect()
    }

    #[test]
    fn a_burst_passes_then_the_pace_applies() {
        let budget = HeartbeatBudget::new(Duration::from_secs(4), HEARTBEAT_BURST);
        let outcomes = run(&budget, &[0; 12]);
        let admitted = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(admitted, HEARTBEAT_BURST as usize);
        assert_eq!(outcomes[10], Err(Duration::from_secs(4)));

        // One period later, one more beat, and only one.
        let mut beats = vec![0; HEARTBEAT_BURST as usize];
        beats.extend([4_000, 4_000, 5_000, 8_000]);
        let outcomes = run(&budget, &beats);
        assert!(outcomes[..11].iter().all(Result::is_ok));
        assert_eq!(outcomes[11], Err(Duration::from_secs(4)));
        assert_eq!(outcomes[12], Err(Duration::from_secs(3)));
        assert_eq!(outcomes[13], Ok(()));
    }

    #[test]
    fn beats_at_the_pace_are_never_refused() {
        let budget = HeartbeatBudget::new(Duration::from_millis(400), HEARTBEAT_BURST);
        let beats: Vec<i64> = (0..1_000).map(|n| n * 400).collect();
        assert!(run(&budget, &beats).iter().all(Result::is_ok));
        // Faster than the pace, the burst runs out and then one in two passes.
        let beats: Vec<i64> = (0..100).map(|n| n * 200).collect();
        let admitted = run(&budget, &beats).iter().filter(|o| o.is_ok()).count();
        assert_eq!(admitted, 9 + 100 / 2);
    }

    #[test]
    fn the_default_policy_allows_one_beat_in_four_seconds() {
        let budget = HeartbeatBudget::of(&Policy::default());
        assert_eq!(budget, HeartbeatBudget::new(Duration::from_secs(4), 10));
    }

    /// The same beats, judged by `governor` and by this budget.
    #[test]
    fn admits_and_refuses_as_governor_did() {
        let period = Duration::from_millis(400);
        let budget = HeartbeatBudget::new(period, HEARTBEAT_BURST);
        let quota = Quota::with_period(period)
            .unwrap()
            .allow_burst(NonZeroU32::new(HEARTBEAT_BURST).unwrap());
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(quota, clock.clone());
        let mut rng = fastrand::Rng::with_seed(9);
        let (mut now, mut tat) = (0, None);
        for _ in 0..5_000 {
            let step = rng.u64(0..300);
            now += step as i64;
            clock.advance(Duration::from_millis(step));
            let ours = budget.spend(tat, at(now));
            if let Ok(next) = ours {
                tat = Some(next);
            }
            let theirs = limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(governor::clock::Clock::now(&clock)));
            assert_eq!(ours.map(|_| ()), theirs, "at {now} ms");
        }
    }
}
