//! What `mcctl bench` prints: each phase's throughput and latency, the
//! server's resident memory per agent, and the heartbeat/health verdict.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::BenchArgs;
use super::load::Phase;
use super::stats::{load_average, resident_bytes};
use crate::context::Context;
use crate::context::Output;
use crate::stdout;

/// What a run must show to pass.
pub struct Target {
    pub min_ratio: f64,
    pub min_distinct: u64,
}

pub struct Report {
    header: Value,
    phases: Vec<Value>,
    memory: Vec<Value>,
    baseline_rss: Option<u64>,
    verdict: Option<Value>,
    fanout: Option<Value>,
    /// When phases ran (Unix seconds), for counting on the server's side.
    windows: Vec<Value>,
}

impl Report {
    pub fn new(args: &BenchArgs) -> Self {
        Self {
            header: json!({
                "agents": args.agents,
                "connections": args.connections,
                "streams_per_connection": args.streams,
                "phase_seconds": args.duration.as_secs_f64(),
                "phase_calls": args.calls,
                "rounds": args.rounds,
                "load_average_at_start": load_average(),
            }),
            phases: Vec::new(),
            memory: Vec::new(),
            baseline_rss: None,
            verdict: None,
            fanout: None,
            windows: Vec::new(),
        }
    }

    pub fn phase(&mut self, label: &str, mut phase: Phase) -> f64 {
        let latency = phase.latencies.summary();
        let rate = phase.rate();
        self.phases.push(json!({
            "phase": label,
            "calls": phase.ok,
            "failed": phase.failures,
            "seconds": phase.elapsed.as_secs_f64(),
            "calls_per_second": rate.round(),
            "latency_ms": {
                "p50": latency.p50, "p90": latency.p90, "p99": latency.p99,
                "p99_9": latency.p999, "max": latency.max,
            },
        }));
        rate
    }

    pub fn window(&mut self, label: &str, from: SystemTime, to: SystemTime) {
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        self.windows
            .push(json!({"phase": label, "from": unix(from), "to": unix(to)}));
    }

    /// The server's resident memory now, and per agent above the first
    /// reading (taken before any agent was provisioned).
    pub fn memory(&mut self, label: &str, pid: Option<u32>, agents: u64) {
        let Some(rss) = pid.and_then(resident_bytes) else {
            return;
        };
        let baseline = *self.baseline_rss.get_or_insert(rss);
        let per_agent = (agents > 0).then(|| (rss.saturating_sub(baseline)) / agents);
        self.memory.push(json!({
            "when": label,
            "resident_bytes": rss,
            "bytes_per_agent": per_agent,
        }));
    }

    /// Adds the rounds, and judges: heartbeats at least `min_ratio` times
    /// the health check's rate, none failed.
    pub fn compare(
        &mut self,
        health: Vec<Phase>,
        beats: Vec<Phase>,
        distinct: u64,
        target: Target,
    ) -> Result<(), String> {
        let min_ratio = target.min_ratio;
        let mut rounds = Vec::new();
        let (mut health_rate, mut beat_rate, mut failed) = (0.0, 0.0, 0);
        for (round, (h, b)) in health.into_iter().zip(beats).enumerate() {
            failed += b.failed();
            let h_rate = self.phase(&format!("health Check, round {}", round + 1), h);
            let b_rate = self.phase(&format!("Heartbeat, round {}", round + 1), b);
            rounds.push(b_rate / h_rate.max(1e-9));
            health_rate += h_rate;
            beat_rate += b_rate;
        }
        let ratio = beat_rate / f64::max(health_rate, 1e-9);
        let met = ratio >= min_ratio && failed == 0 && distinct >= target.min_distinct;
        self.verdict = Some(json!({
            "heartbeat_over_health": (ratio * 100.0).round() / 100.0,
            "per_round": rounds.iter().map(|r| (r * 100.0).round() / 100.0).collect::<Vec<_>>(),
            "distinct_agents_beaten": distinct,
            "failed_heartbeats": failed,
            "min_ratio": min_ratio,
            "min_distinct": target.min_distinct,
            "met": met,
            "load_average_at_end": load_average(),
        }));
        // Every target missed is named, not only the first.
        let mut missed = Vec::new();
        if failed > 0 {
            missed.push(format!("{failed} heartbeats failed"));
        }
        if distinct < target.min_distinct {
            missed.push(format!(
                "heartbeats reached {distinct} distinct agents, fewer than {}: \
                 raise --duration or --rounds (or --agents)",
                target.min_distinct
            ));
        }
        if ratio < min_ratio {
            missed.push(format!(
                "heartbeats ran at {ratio:.2}x the health check, below {min_ratio}"
            ));
        }
        debug_assert_eq!(met, missed.is_empty());
        if missed.is_empty() {
            Ok(())
        } else {
            Err(missed.join("; "))
        }
    }

    /// The watch fan-out's section (`mcctl bench --watchers`).
    pub fn fanout(&mut self, section: Value) {
        self.fanout = Some(section);
    }

    pub fn print(&self, ctx: &Context) {
        let _ = match ctx.output {
            Output::Json => stdout::emit_line(
                &json!({
                    "run": self.header,
                    "phases": self.phases,
                    "memory": self.memory,
                    "verdict": self.verdict,
                    "fanout": self.fanout,
                    "windows": self.windows,
                })
                .to_string(),
            ),
            Output::Table => stdout::emit(&self.text()),
        };
    }

    fn text(&self) -> String {
        let h = &self.header;
        let phases = match h["phase_calls"].as_u64() {
            Some(calls) => format!("{calls}-call"),
            None => format!("{} s", h["phase_seconds"]),
        };
        let mut out = format!(
            "{} agents, {} connections x {} streams, {phases} phases x {} rounds, load average {}\n\n",
            h["agents"],
            h["connections"],
            h["streams_per_connection"],
            h["rounds"],
            h["load_average_at_start"].as_str().unwrap_or("?"),
        );
        out.push_str(&format!(
            "{:<30} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "phase", "calls/s", "calls", "p50 ms", "p90 ms", "p99 ms", "p99.9", "failed"
        ));
        for p in &self.phases {
            let l = &p["latency_ms"];
            let failed: u64 = p["failed"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            out.push_str(&format!(
                "{:<30} {:>10.0} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8}\n",
                p["phase"].as_str().unwrap_or(""),
                p["calls_per_second"].as_f64().unwrap_or(0.0),
                p["calls"],
                l["p50"].as_f64().unwrap_or(0.0),
                l["p90"].as_f64().unwrap_or(0.0),
                l["p99"].as_f64().unwrap_or(0.0),
                l["p99_9"].as_f64().unwrap_or(0.0),
                failed,
            ));
            if failed > 0 {
                out.push_str(&format!("  failures by code: {}\n", p["failed"]));
            }
        }
        if !self.memory.is_empty() {
            out.push_str("\nserver resident memory\n");
            for m in &self.memory {
                out.push_str(&format!(
                    "  {:<32} {:>8.1} MB  {}\n",
                    m["when"].as_str().unwrap_or(""),
                    m["resident_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                    m["bytes_per_agent"]
                        .as_u64()
                        .map_or(String::new(), |b| format!("{b} bytes per agent")),
                ));
            }
        }
        if let Some(section) = &self.fanout {
            out.push_str(&super::fanout::text(section));
        }
        if let Some(v) = &self.verdict {
            out.push_str(&format!(
                "\nHeartbeat / health Check: {} (rounds {}), {} distinct agents, {} failed; \
                 target {}x over {} distinct agents -> {}; load average {}\n",
                v["heartbeat_over_health"],
                v["per_round"],
                v["distinct_agents_beaten"],
                v["failed_heartbeats"],
                v["min_ratio"],
                v["min_distinct"],
                if v["met"] == true { "met" } else { "MISSED" },
                v["load_average_at_end"].as_str().unwrap_or("?"),
            ));
        }
        out
    }
}
