use std::time::Duration;

/// Capped exponential backoff with full jitter: the n-th wait is uniform in
/// `0..min(max, initial * 2^n)`, so a fleet that failed together does not
/// retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first window: the first wait is at most this.
    pub initial: Duration,
    /// The widest window: no wait is longer than this.
    pub max: Duration,
    attempt: u32,
}

/// 500 ms first window, 30 s cap.
impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Windows that start at `initial` and double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next wait; each call widens the window until `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    /// After a success: start from the smallest window again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widest wait seen at each attempt, over many fresh backoffs.
    fn widest_waits(backoff: &Backoff, attempts: usize, runs: usize) -> Vec<Duration> {
        let mut widest = vec![Duration::ZERO; attempts];
        for _ in 0..runs {
            let mut backoff = backoff.clone();
            for slot in widest.iter_mut() {
                *slot = (*slot).max(backoff.next_delay());
            }
        }
        widest
    }

    #[test]
    fn windows_double_from_the_first_up_to_the_cap() {
        let ms = Duration::from_millis;
        let backoff = Backoff::new(ms(100), ms(1000));
        // Windows: 100, 200, 400, 800, then 1000 ms. With 500 runs, a window
        // whose upper half is never hit has odds of 2^-500.
        let windows = [100, 200, 400, 800, 1000, 1000, 1000];
        let widest = widest_waits(&backoff, windows.len(), 500);
        for (attempt, (seen, window)) in widest.iter().zip(windows).enumerate() {
            assert!(
                *seen <= ms(window),
                "attempt {attempt}: {seen:?} > {window} ms"
            );
            assert!(
                *seen > ms(window / 2),
                "attempt {attempt}: widest {seen:?} never reached the upper half of {window} ms"
            );
        }
    }

    #[test]
    fn waits_are_jittered_and_reset_starts_over() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "jittered: {delays:?}");
        // Without the reset, the 6th wait is within 100 ms one time in ten.
        for _ in 0..50 {
            for _ in 0..5 {
                backoff.next_delay();
            }
            backoff.reset();
            assert!(backoff.next_delay() <= Duration::from_millis(100));
        }
    }
}
