//! The service's clock: wall time derived from tokio's monotonic clock, so
//! tests that pause and advance tokio time move the engine's time too.

use std::time::SystemTime;

use tokio::time::Instant;

use crate::engine::Timestamp;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Timestamp,
    origin_instant: Instant,
}

impl Clock {
    /// Anchored to the system's wall clock now.
    pub fn system() -> Self {
        Self::starting_at(Timestamp::from_system_time(SystemTime::now()))
    }

    /// Anchored to a chosen wall time, for tests.
    pub fn starting_at(origin: Timestamp) -> Self {
        Self {
            origin,
            origin_instant: Instant::now(),
        }
    }

    /// Monotonic time since the clock was made.
    pub fn elapsed(&self) -> std::time::Duration {
        self.origin_instant.elapsed()
    }

    pub fn now(&self) -> Timestamp {
        self.origin.plus(self.origin_instant.elapsed())
    }

    /// The tokio instant at which the clock reads `at` (now, if it has).
    pub fn instant_at(&self, at: Timestamp) -> Instant {
        self.origin_instant + at.since(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let clock = Clock::starting_at(Timestamp::from_micros(1_000_000));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.now(), Timestamp::from_micros(31_000_000));
        let later = Timestamp::from_micros(61_000_000);
        assert_eq!(
            clock.instant_at(later) - Instant::now(),
            Duration::from_secs(30)
        );
    }
}
