//! One simulated agent process: start up, check in, heartbeat with the
//! library's loop until the run ends (or, if flaky, until it goes silent).

use std::time::{Duration, SystemTime};

use mission_control_client::agent::{AgentClient, LoopEvent};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What an agent task tells the simulator.
#[derive(Debug)]
pub enum AgentReport {
    /// The first heartbeat was accepted, this long after the wake arrived.
    CheckedIn { id: String, latency: Duration },
    /// The heartbeat loop ended with an error it cannot retry past.
    Failed { id: String, error: String },
}

pub struct Launch {
    pub id: String,
    pub client: AgentClient,
    /// When the gateway received the wake this agent answers.
    pub woken_at: Instant,
    /// How long the "process" takes to start before its first heartbeat.
    pub startup: Duration,
    /// Stop heartbeating after this many beats (flaky agents).
    pub beats: Option<u32>,
    /// Set when the gateway stops this process (a new template arrived).
    pub retired: watch::Receiver<bool>,
    /// Set while the simulated gateway host is down (`--gateway-outage`):
    /// the process is frozen with it, and heartbeats again once it is back.
    pub host_down: watch::Receiver<bool>,
}

pub fn spawn(
    tasks: &mut JoinSet<()>,
    launch: Launch,
    stop: watch::Receiver<bool>,
    reports: mpsc::UnboundedSender<AgentReport>,
) {
    tasks.spawn(run(launch, stop, reports));
}

async fn run(
    launch: Launch,
    mut stop: watch::Receiver<bool>,
    reports: mpsc::UnboundedSender<AgentReport>,
) {
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => return,
        _ = tokio::time::sleep(launch.startup) => {}
    }
    let gone_silent = Notify::new();
    let mut beats = 0u32;
    let id = launch.id.clone();
    let mut observe = |event: LoopEvent<'_>| {
        if let LoopEvent::Beat(_) = event {
            beats += 1;
            if beats == 1 {
                let latency = launch.woken_at.elapsed();
                let _ = reports.send(AgentReport::CheckedIn {
                    id: id.clone(),
                    latency,
                });
            }
            if launch.beats.is_some_and(|limit| beats >= limit) {
                // Stored as a permit: the loop sees it at its next wait.
                gone_silent.notify_one();
            }
        }
    };
    let mut retired = launch.retired.clone();
    let mut host_down = launch.host_down.clone();
    loop {
        let until = async {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => {}
                _ = gone_silent.notified() => {}
                _ = retired.wait_for(|retired| *retired) => {}
                _ = host_down.wait_for(|down| *down) => {}
            }
        };
        if let Err(error) = launch.client.clone().run_with(until, &mut observe).await {
            let _ = reports.send(AgentReport::Failed {
                id: launch.id,
                error: error.to_string(),
            });
            return;
        }
        // Only an outage ends one run and starts another, after it.
        if !*host_down.borrow() || *stop.borrow() || *retired.borrow() {
            return;
        }
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = host_down.wait_for(|down| !*down) => {}
        }
    }
}

/// A random start-up time, capped at half the time left to the deadline so
/// an agent meant to check in does not miss it because of the simulation.
pub fn startup_delay(
    max: Duration,
    deadline: Option<SystemTime>,
    now: SystemTime,
    unit: f64,
) -> Duration {
    let left = deadline.map_or(max, |d| d.duration_since(now).unwrap_or_default() / 2);
    max.min(left).mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_never_eats_more_than_half_the_deadline() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let max = Duration::from_millis(500);
        let soon = Some(now + Duration::from_millis(300));
        assert_eq!(
            startup_delay(max, soon, now, 1.0),
            Duration::from_millis(150)
        );
        let later = Some(now + Duration::from_secs(5));
        assert_eq!(
            startup_delay(max, later, now, 0.5),
            Duration::from_millis(250)
        );
        let passed = Some(now - Duration::from_secs(1));
        assert_eq!(startup_delay(max, passed, now, 1.0), Duration::ZERO);
        assert_eq!(startup_delay(max, None, now, 0.0), Duration::ZERO);
    }
}
