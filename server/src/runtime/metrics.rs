//! Counters and a histogram in the Prometheus text format. Counting is an
//! atomic add on the hot paths; gauges are read from the engine at scrape.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::{DriftReport, Reason, Status};

/// Upper bounds (seconds) of the check-in latency buckets.
const LATENCY_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];

/// Upper bounds (seconds) of the timer lag buckets: fine below the 10 ms a
/// timer may be late outside a storm, coarse up to the 10 s a storm may take.
const LAG_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Each observation lands in one bucket (three atomic adds, as it runs on
/// the heartbeat path); Prometheus' cumulative counts are summed at scrape.
struct Histogram<const N: usize = 10> {
    bounds: &'static [f64; N],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram<10> {
    fn default() -> Self {
        Self::with_bounds(&LATENCY_BUCKETS)
    }
}

impl Default for Histogram<14> {
    fn default() -> Self {
        Self::with_bounds(&LAG_BUCKETS)
    }
}

impl<const N: usize> Histogram<N> {
    fn with_bounds(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(bucket) = self.bounds.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bucket, bound) in self.buckets.iter().zip(self.bounds) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[derive(Default)]
pub(super) struct Metrics {
    transitions: [AtomicU64; Reason::ALL.len()],
    pub wakes_sent: AtomicU64,
    pub wakes_failed: AtomicU64,
    pub commands_resent: AtomicU64,
    pub heartbeats_in_memory: AtomicU64,
    pub heartbeats_committed: AtomicU64,
    pub heartbeats_rejected: AtomicU64,
    pub batches: AtomicU64,
    pub commit_failures: AtomicU64,
    /// Takeovers from a follower's warm copy, and from a full load.
    pub takeovers_warm: AtomicU64,
    pub takeovers_full: AtomicU64,
    checkin_latency: Histogram,
    heartbeat_time_left: Histogram,
    timer_lag: Histogram<{ LAG_BUCKETS.len() }>,
    timer_fire_lag: Histogram<{ LAG_BUCKETS.len() }>,
    commit_duration: Histogram<{ LAG_BUCKETS.len() }>,
    /// Batches running behind their timers, logged as they go.
    pub storm: super::timer_lag::StormLog,
}

/// What the engine and hub know at scrape time.
pub(super) struct Gauges {
    pub agents: [(Status, usize); 4],
    pub gateways_connected: usize,
    pub commands_pending: usize,
    /// Registered gateways whose stream is not open (as committed).
    pub gateways_disconnected: usize,
    /// Gateways the mass-failure brake suspects (their agents get no
    /// verdict), and those draining (verdicts at the slow rate).
    pub gateways_suspected: usize,
    pub gateways_draining: usize,
    pub wakes_held: usize,
    /// Wakes held or queued, per gateway.
    pub wakes_queued: Vec<(crate::engine::GatewayId, usize)>,
    pub watches_open: usize,
    pub database_reachable: bool,
    pub timers: usize,
    pub drift: DriftReport,
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let value = value.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: usize) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

impl Metrics {
    pub fn transition(&self, reason: Reason) {
        let index = Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.transitions[index].fetch_add(1, Ordering::Relaxed);
    }

    /// How long after its last wake an agent checked in.
    pub fn checked_in_after(&self, latency: Duration) {
        self.checkin_latency.observe(latency);
    }

    /// What was left of an online agent's lease when it heartbeat.
    pub fn heartbeat_time_left(&self, time_left: Duration) {
        self.heartbeat_time_left.observe(time_left);
    }

    /// How late a timer fired (its batch began) and how late its work was
    /// committed (and its events handed to watchers), against its deadline.
    pub fn timer_fired_late(&self, fired: Duration, committed: Duration) {
        self.timer_fire_lag.observe(fired);
        self.timer_lag.observe(committed);
    }

    /// How long the store took to commit a round, from sending it to its
    /// answer: a durable call waits for the round being committed and then
    /// its own.
    pub fn round_committed_after(&self, took: Duration) {
        self.commit_duration.observe(took);
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let name = "mission_control_agents";
        let _ = writeln!(out, "# HELP {name} Agents by status.\n# TYPE {name} gauge");
        for (status, count) in gauges.agents {
            let _ = writeln!(out, "{name}{{status=\"{}\"}} {count}", status.as_str());
        }
        let name = "mission_control_transitions_total";
        let _ = writeln!(
            out,
            "# HELP {name} Committed transitions by reason.\n# TYPE {name} counter"
        );
        for (reason, count) in Reason::ALL.iter().zip(&self.transitions) {
            let count = count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {count}", reason.as_str());
        }
        counter(
            &mut out,
            "mission_control_wakes_sent_total",
            "Wakes handed to a gateway stream.",
            &self.wakes_sent,
        );
        counter(
            &mut out,
            "mission_control_wakes_failed_total",
            "Wakes not delivered when sent (gateway away: then held or failed; backlogged; or reported failure).",
            &self.wakes_failed,
        );
        counter(
            &mut out,
            "mission_control_gateway_commands_resent_total",
            "Commands sent again with the same id: on a gateway's new stream, or after no acknowledgement in time.",
            &self.commands_resent,
        );
        let name = "mission_control_heartbeats_total";
        let _ = writeln!(
            out,
            "# HELP {name} Heartbeats by how they were handled.\n# TYPE {name} counter"
        );
        for (path, value) in [
            ("memory", &self.heartbeats_in_memory),
            ("committed", &self.heartbeats_committed),
            ("rejected", &self.heartbeats_rejected),
        ] {
            let _ = writeln!(
                out,
                "{name}{{path=\"{path}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "mission_control_commit_batches_total",
            "Batches committed to the store.",
            &self.batches,
        );
        counter(
            &mut out,
            "mission_control_commit_failures_total",
            "Batches the store did not commit.",
            &self.commit_failures,
        );
        let name = "mission_control_takeovers_total";
        let _ = writeln!(
            out,
            "# HELP {name} Leader takeovers by where their state came from.\n# TYPE {name} counter"
        );
        for (from, value) in [
            ("warm_copy", &self.takeovers_warm),
            ("full_load", &self.takeovers_full),
        ] {
            let _ = writeln!(
                out,
                "{name}{{from=\"{from}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        self.checkin_latency.render(
            &mut out,
            "mission_control_checkin_latency_seconds",
            "Time from an agent's last wake to its check-in.",
        );
        self.heartbeat_time_left.render(
            &mut out,
            "mission_control_heartbeat_lease_left_seconds",
            "Time left on an online agent's lease when its heartbeat arrived.",
        );
        self.timer_lag.render(
            &mut out,
            "mission_control_timer_lag_seconds",
            "Time from a timer's deadline to its batch committed and its events published (lease expiries, check-in deadlines, stale entries re-armed).",
        );
        self.timer_fire_lag.render(
            &mut out,
            "mission_control_timer_fire_lag_seconds",
            "Time from a timer's deadline to the batch that fired it (before its commit).",
        );
        self.commit_duration.render(
            &mut out,
            "mission_control_commit_duration_seconds",
            "Time from a batch sent to the store to its commit answered (one transaction each).",
        );
        gauge(
            &mut out,
            "mission_control_gateways_connected",
            "Gateways with an open stream.",
            gauges.gateways_connected,
        );
        gauge(
            &mut out,
            "mission_control_gateways_disconnected",
            "Registered gateways in the disconnected state (their agents' wakes are held).",
            gauges.gateways_disconnected,
        );
        gauge(
            &mut out,
            "mission_control_gateways_suspected",
            "Gateways suspected by the mass-failure brake: most of their agents fell silent together; none is marked OFFLINE.",
            gauges.gateways_suspected,
        );
        gauge(
            &mut out,
            "mission_control_gateways_draining",
            "Gateways suspected past --brake-suspect-for: their silent agents are judged at --brake-drain-rate.",
            gauges.gateways_draining,
        );
        gauge(
            &mut out,
            "mission_control_wakes_held",
            "Agents whose wake waits to go out: held for a gateway away, or queued behind a wake rate limit.",
            gauges.wakes_held,
        );
        let name = "mission_control_wakes_queued";
        let _ = writeln!(
            out,
            "# HELP {name} Wakes waiting to go out (held or queued), per gateway.\n# TYPE {name} gauge"
        );
        for (gateway, queued) in &gauges.wakes_queued {
            let _ = writeln!(out, "{name}{{gateway=\"{gateway}\"}} {queued}");
        }
        gauge(
            &mut out,
            "mission_control_gateway_commands_pending",
            "Commands given to gateways and not acknowledged yet.",
            gauges.commands_pending,
        );
        gauge(
            &mut out,
            "mission_control_watch_streams",
            "Open watch streams.",
            gauges.watches_open,
        );
        gauge(
            &mut out,
            "mission_control_timers",
            "Entries in the timer wheel.",
            gauges.timers,
        );
        gauge(
            &mut out,
            "mission_control_database_reachable",
            "1 while the database answers.",
            usize::from(gauges.database_reachable),
        );
        render_drift(&mut out, &gauges.drift);
        out
    }
}

/// Drifted agents per gateway and per board (ids are `[A-Za-z0-9._-]`, so
/// they need no escaping as label values).
fn render_drift(out: &mut String, drift: &DriftReport) {
    let name = "mission_control_agents_drifted";
    let _ = writeln!(
        out,
        "# HELP {name} Agents whose reported template version differs from the desired one, or never reported, per gateway.\n# TYPE {name} gauge"
    );
    for (gateway, count) in &drift.gateways {
        let _ = writeln!(out, "{name}{{gateway=\"{gateway}\"}} {}", count.drifted);
    }
    let name = "mission_control_board_agents_drifted";
    let _ = writeln!(
        out,
        "# HELP {name} Drifted agents per board.\n# TYPE {name} gauge"
    );
    for (board, count) in &drift.boards {
        let _ = writeln!(out, "{name}{{board=\"{board}\"}} {}", count.drifted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{BoardId, DriftCount, GatewayId};

    #[test]
    fn renders_counters_gauges_and_a_cumulative_histogram() {
        let metrics = Metrics::default();
        metrics.transition(Reason::CheckedIn);
        metrics.transition(Reason::CheckedIn);
        Metrics::add(&metrics.heartbeats_in_memory);
        metrics.checked_in_after(Duration::from_millis(700));
        metrics.checked_in_after(Duration::from_secs(45));
        metrics.heartbeat_time_left(Duration::from_secs(3));
        metrics.timer_fired_late(Duration::from_millis(3), Duration::from_millis(3));
        let text = metrics.render(&Gauges {
            agents: [
                (Status::Provisioning, 1),
                (Status::Updating, 0),
                (Status::Online, 2),
                (Status::Offline, 0),
            ],
            gateways_connected: 1,
            commands_pending: 4,
            gateways_disconnected: 2,
            gateways_suspected: 1,
            gateways_draining: 0,
            wakes_held: 7,
            wakes_queued: vec![(crate::engine::GatewayId::parse("gw-1").unwrap(), 7)],
            watches_open: 0,
            database_reachable: true,
            timers: 3,
            drift: DriftReport {
                gateways: [(
                    GatewayId::parse("gw-1").unwrap(),
                    DriftCount {
                        agents: 3,
                        drifted: 2,
                    },
                )]
                .into(),
                boards: [(
                    BoardId::parse("b-1").unwrap(),
                    DriftCount {
                        agents: 1,
                        drifted: 1,
                    },
                )]
                .into(),
            },
        });
        assert!(text.contains("mission_control_agents_drifted{gateway=\"gw-1\"} 2"));
        assert!(text.contains("mission_control_board_agents_drifted{board=\"b-1\"} 1"));
        assert!(text.contains("mission_control_transitions_total{reason=\"checked_in\"} 2"));
        assert!(text.contains("mission_control_agents{status=\"online\"} 2"));
        assert!(text.contains("mission_control_gateway_commands_pending 4"));
        assert!(text.contains("mission_control_gateways_disconnected 2"));
        assert!(text.contains("mission_control_wakes_held 7"));
        assert!(text.contains("mission_control_wakes_queued{gateway=\"gw-1\"} 7"));
        assert!(text.contains("mission_control_gateways_suspected 1"));
        assert!(text.contains("mission_control_gateways_draining 0"));
        assert!(text.contains("mission_control_heartbeats_total{path=\"memory\"} 1"));
        assert!(text.contains("mission_control_checkin_latency_seconds_bucket{le=\"0.5\"} 0"));
        assert!(text.contains("mission_control_checkin_latency_seconds_bucket{le=\"1\"} 1"));
        assert!(text.contains("mission_control_checkin_latency_seconds_bucket{le=\"60\"} 2"));
        assert!(text.contains("mission_control_checkin_latency_seconds_count 2"));
        assert!(text.contains("mission_control_heartbeat_lease_left_seconds_bucket{le=\"2\"} 0"));
        assert!(text.contains("mission_control_heartbeat_lease_left_seconds_bucket{le=\"5\"} 1"));
        assert!(text.contains("mission_control_database_reachable 1"));
        assert!(text.contains("mission_control_timer_lag_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("mission_control_timer_lag_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("mission_control_timer_lag_seconds_count 1"));
    }
}
