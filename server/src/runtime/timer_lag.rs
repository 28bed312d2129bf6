//! How late timers fire: every fired timer's lag lands in the
//! `mission_control_timer_lag_seconds` histogram, and a run of batches that
//! fall behind (a lease-expiry storm) is logged as it goes, once a second,
//! and when it has caught up.

use std::sync::Mutex;
use std::time::Duration;

use crate::engine::Timestamp;

/// A batch whose earliest timer is later than this is behind.
const BEHIND: Duration = Duration::from_secs(1);
/// While behind, progress is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Storm {
    started: Option<Timestamp>,
    /// The earliest deadline fired while behind.
    first_deadline: Option<Timestamp>,
    fired: usize,
    transitions: usize,
    batches: usize,
    worst: Duration,
    logged: Option<Timestamp>,
}

/// The progress of a run of late batches.
#[derive(Debug, Default)]
pub(super) struct StormLog {
    storm: Mutex<Storm>,
}

impl StormLog {
    /// One committed batch: the deadlines it fired, the transitions it
    /// committed, and when its events were published.
    pub fn batch(&self, fired: &[Timestamp], transitions: usize, published: Timestamp) {
        let Some(earliest) = fired.iter().min() else {
            return;
        };
        let lag = published.since(*earliest);
        let mut storm = self.storm.lock().expect("not poisoned");
        if lag <= BEHIND {
            if let Some(started) = storm.started {
                tracing::info!(
                    fired = storm.fired + fired.len(),
                    transitions = storm.transitions + transitions,
                    batches = storm.batches + 1,
                    worst_lag_ms = storm.worst.as_millis() as u64,
                    behind_for_ms = published.since(started).as_millis() as u64,
                    since_first_deadline_ms = storm
                        .first_deadline
                        .map_or(0, |d| published.since(d).as_millis() as u64),
                    "timers.caught_up"
                );
                *storm = Storm::default();
            }
            return;
        }
        storm.started.get_or_insert(published);
        let first = storm.first_deadline.map_or(*earliest, |d| d.min(*earliest));
        storm.first_deadline = Some(first);
        storm.fired += fired.len();
        storm.transitions += transitions;
        storm.batches += 1;
        storm.worst = storm.worst.max(lag);
        if storm
            .logged
            .is_none_or(|at| published.since(at) >= LOG_EVERY)
        {
            storm.logged = Some(published);
            tracing::warn!(
                fired = storm.fired,
                transitions = storm.transitions,
                batches = storm.batches,
                lag_ms = lag.as_millis() as u64,
                "timers.behind"
            );
        }
    }
}
