//! What `mcctl bench --watchers` counts: delivery latencies in a
//! histogram (a million a second do not fit in a list), the revisions any
//! watcher received, and the CPU time processes used.

use std::sync::atomic::{AtomicU64, Ordering};

/// Latencies in microseconds, log-linear: exact below 64 µs, then 32
/// buckets per power of two (within 3 %); a percentile reads as its
/// bucket's upper bound.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    pub max: u64,
}

const SUB: u32 = 32;

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; 64 + 58 * SUB as usize],
            total: 0,
            max: 0,
        }
    }

    fn bucket(micros: u64) -> usize {
        if micros < 64 {
            return micros as usize;
        }
        let exp = 63 - micros.leading_zeros(); // >= 6
        let sub = (micros >> (exp - 5)) & u64::from(SUB - 1);
        64 + (exp as usize - 6) * SUB as usize + sub as usize
    }

    fn upper(bucket: usize) -> u64 {
        if bucket < 64 {
            return bucket as u64;
        }
        let exp = (bucket - 64) / SUB as usize + 6;
        let sub = ((bucket - 64) % SUB as usize) as u64;
        ((u64::from(SUB) + sub + 1) << (exp - 5)) - 1
    }

    pub fn record(&mut self, micros: u64) {
        self.counts[Self::bucket(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The `q` quantile in milliseconds.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((self.total as f64 * q).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::upper(bucket).min(self.max) as f64 / 1000.0;
            }
        }
        self.max as f64 / 1000.0
    }
}

/// The revisions any watcher received, one bit each from the first one
/// the watches start after.
pub struct Seen {
    base: u64,
    bits: Vec<AtomicU64>,
}

impl Seen {
    pub fn new(base: u64, capacity: u64) -> Self {
        Self {
            base,
            bits: (0..capacity.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn mark(&self, revision: u64) {
        let Some(i) = revision.checked_sub(self.base + 1) else {
            return;
        };
        if let Some(word) = self.bits.get((i / 64) as usize) {
            word.fetch_or(1 << (i % 64), Ordering::Relaxed);
        }
    }

    /// How many revisions in `(after, until]` some watcher received.
    pub fn count(&self, after: u64, until: u64) -> u64 {
        // Bit indexes [from, to) of the range.
        let from = after.saturating_sub(self.base);
        let to = until
            .saturating_sub(self.base)
            .min(self.bits.len() as u64 * 64);
        let mut count = 0;
        let mut i = from;
        while i < to {
            let (word, bit) = ((i / 64) as usize, i % 64);
            let take = (64 - bit).min(to - i);
            let mask = if take == 64 {
                u64::MAX
            } else {
                ((1u64 << take) - 1) << bit
            };
            count += u64::from((self.bits[word].load(Ordering::Relaxed) & mask).count_ones());
            i += take;
        }
        count
    }
}

/// The CPU time of process `pid`, if one is given.
pub fn cpu_seconds_of(pid: Option<u32>) -> Option<f64> {
    pid.and_then(|pid| cpu_seconds(Some(pid)))
}

/// A process's CPU time (user and system) in seconds, from /proc.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the line, in clock ticks of 1/100 s.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_bound_their_values_within_three_percent() {
        for v in [0, 1, 63, 64, 65, 100, 1_000, 99_999, 1_000_000, 123_456_789] {
            let bucket = Histogram::bucket(v);
            let upper = Histogram::upper(bucket);
            assert!(upper >= v, "{v} -> {upper}");
            assert!(upper as f64 <= v as f64 * 1.035 + 1.0, "{v} -> {upper}");
            if bucket > 0 {
                assert!(Histogram::upper(bucket - 1) < v, "{v}");
            }
        }
    }

    #[test]
    fn histogram_quantiles_pick_the_nearest_rank() {
        let mut h = Histogram::new();
        for ms in 1..=100 {
            h.record(ms * 1000);
        }
        let p99 = h.quantile(0.99);
        assert!((99.0..=99.0 * 1.035).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 100.0);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        assert!(cpu_seconds(None).is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn seen_counts_the_revisions_any_watcher_received() {
        let seen = Seen::new(10, 1000);
        for r in [11, 12, 14, 200] {
            seen.mark(r);
        }
        seen.mark(5); // before the start: ignored
        assert_eq!(seen.count(10, 14), 3);
        assert_eq!(seen.count(11, 300), 3);
        assert_eq!(seen.count(0, 11), 1);
    }
}
