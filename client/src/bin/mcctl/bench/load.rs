//! The load itself: a fixed set of connections, each carrying a fixed number
//! of calls in flight, every call timed. The health baseline and the
//! heartbeats go through the very same connections, so their ratio says how
//! the server compares with itself, whatever else the machine is doing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::stats::Latencies;

/// What one phase did: calls that succeeded, how long each took, and the
/// failures by code.
#[derive(Debug, Default)]
pub struct Phase {
    pub ok: u64,
    pub elapsed: Duration,
    pub latencies: Latencies,
    pub failures: BTreeMap<String, u64>,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn absorb(&mut self, other: Phase) {
        self.ok += other.ok;
        self.latencies.extend(other.latencies);
        for (code, n) in other.failures {
            *self.failures.entry(code).or_default() += n;
        }
    }
}

/// When a phase ends: after a number of calls (each index given once), or
/// after a time.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    Calls(u64),
    Elapsed(Duration),
}

/// Runs `call(channel, index)` from `in_flight` tasks per connection until
/// `until`. Indexes count up from zero across all tasks, so a call per index
/// spreads the load over as many distinct agents as there are calls.
pub async fn drive<C, F, Fut>(connections: &[C], in_flight: usize, until: Until, call: F) -> Phase
where
    C: Clone + Send + 'static,
    F: Fn(C, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let limit = match until {
        Until::Calls(n) => n,
        Until::Elapsed(_) => u64::MAX,
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for channel in connections {
        for _ in 0..in_flight {
            let (call, next, stop, channel) =
                (call.clone(), next.clone(), stop.clone(), channel.clone());
            tasks.push(tokio::spawn(async move {
                let mut phase = Phase::default();
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= limit {
                        break;
                    }
                    let began = Instant::now();
                    match call(channel.clone(), index).await {
                        Ok(()) => {
                            phase.latencies.record(began.elapsed());
                            phase.ok += 1;
                        }
                        Err(status) => {
                            let code = format!("{:?}", status.code());
                            *phase.failures.entry(code).or_default() += 1;
                        }
                    }
                }
                phase
            }));
        }
    }
    if let Until::Elapsed(length) = until {
        tokio::time::sleep(length).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut total = Phase::default();
    for task in tasks {
        if let Ok(phase) = task.await {
            total.absorb(phase);
        }
    }
    // Calls still in flight when the time ran out finish and are counted:
    // the phase lasted until the last of them.
    total.elapsed = started.elapsed();
    total
}
