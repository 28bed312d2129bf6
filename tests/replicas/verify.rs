//! The ledger against the database: no acknowledged transition lost, no
//! agent that kept heartbeating ever OFFLINE.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::harness::{AGENT_LEASE, PATIENCE, connect};
use crate::load::Ledger;

#[derive(Debug, Default)]
pub struct Findings {
    pub provisions_acked: usize,
    pub check_ins_acked: usize,
    pub heartbeats_acked: u64,
    pub heartbeats_failed: u64,
    pub lost_provisions: Vec<(String, u64)>,
    pub lost_check_ins: Vec<(String, u64)>,
    /// Agents that went OFFLINE while their heartbeats were acknowledged.
    pub false_offline: Vec<String>,
    /// Agents that went OFFLINE before the fault, none of whose heartbeats
    /// had been acknowledged for a lease: the load did not get through.
    pub offline_before_the_fault: Vec<String>,
    /// Of those, OFFLINE before the lease an acknowledgement promised (its
    /// `lease_expires_at`, judged before the OFFLINE) ran out: an
    /// acknowledgement the leader never honoured.
    pub acked_by_non_leader: Vec<String>,
}

impl Findings {
    pub fn is_clean(&self) -> bool {
        self.lost_provisions.is_empty()
            && self.lost_check_ins.is_empty()
            && self.false_offline.is_empty()
            && self.acked_by_non_leader.is_empty()
    }

    pub fn assert_clean(&self, scenario: &str) {
        eprintln!(
            "[{scenario}] provisions acked {}, check-ins acked {}, heartbeats acked {} (failed {}); \
             lost provisions {}, lost check-ins {}, false OFFLINE {}, acked by a non-leader {} \
             (OFFLINE before the fault with no heartbeat through for a lease: {})",
            self.provisions_acked,
            self.check_ins_acked,
            self.heartbeats_acked,
            self.heartbeats_failed,
            self.lost_provisions.len(),
            self.lost_check_ins.len(),
            self.false_offline.len(),
            self.acked_by_non_leader.len(),
            self.offline_before_the_fault.len(),
        );
        assert!(self.provisions_acked > 0 && self.check_ins_acked > 0);
        assert!(
            self.lost_provisions.is_empty(),
            "[{scenario}] acknowledged provisions lost: {:?}",
            self.lost_provisions
        );
        assert!(
            self.lost_check_ins.is_empty(),
            "[{scenario}] acknowledged check-ins lost: {:?}",
            self.lost_check_ins
        );
        assert!(
            self.acked_by_non_leader.is_empty(),
            "[{scenario}] heartbeats acknowledged that the leader never saw: {:?}",
            self.acked_by_non_leader
        );
        assert!(
            self.false_offline.is_empty(),
            "[{scenario}] agents OFFLINE while heartbeating: {:?}",
            self.false_offline
        );
    }
}

/// Checks the ledger; `stopped_at` is when the load stopped (events after
/// it are leases running out because the test stopped beating).
pub async fn verify(
    url: &str,
    ledger: &Ledger,
    fault_at: Option<SystemTime>,
    stopped_at: SystemTime,
) -> Findings {
    let deadline = Instant::now() + PATIENCE;
    let client = loop {
        if let Some(client) = connect(url).await {
            break client;
        }
        assert!(Instant::now() < deadline, "the database never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored: HashMap<String, u64> = client
        .query("SELECT id, generation FROM agents", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get::<_, i64>(1) as u64))
        .collect();
    let checked_in: HashSet<(String, u64)> = client
        .query(
            "SELECT agent_id, (agent->>'generation')::bigint FROM agent_events
             WHERE reason = 'checked_in'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get::<_, i64>(1) as u64))
        .collect();
    let offline: Vec<(String, SystemTime)> = client
        .query(
            "SELECT agent_id, at FROM agent_events
             WHERE reason IN ('lease_expired', 'max_attempts_reached') AND at <= $1",
            &[&stopped_at],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();

    let provisions = ledger.provisions.lock().unwrap().clone();
    let check_ins = ledger.check_ins.lock().unwrap().clone();
    let acks = ledger.acks.lock().unwrap();
    let beating: HashSet<&String> = acks.keys().collect();
    let mut findings = Findings {
        provisions_acked: provisions.len(),
        check_ins_acked: check_ins.len(),
        heartbeats_acked: ledger
            .heartbeats_acked
            .load(std::sync::atomic::Ordering::Relaxed),
        heartbeats_failed: ledger
            .heartbeats_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        ..Default::default()
    };
    findings.lost_provisions = provisions
        .into_iter()
        .filter(|(id, generation)| stored.get(id).is_none_or(|g| g < generation))
        .collect();
    findings.lost_check_ins = check_ins
        .into_iter()
        .filter(|entry| !checked_in.contains(entry))
        .collect();
    for (agent, at) in offline {
        if !beating.contains(&agent) {
            continue;
        }
        // A promise broken: an answer judged before the OFFLINE (its lease
        // began a lease TTL before it ends, by the leader's clock) whose
        // lease had not run out. A heartbeat sent just before the OFFLINE
        // but judged after it (bringing the agent back) is no such answer.
        let recent_ack = acks[&agent].iter().any(|ack| {
            ack.sent_at <= at
                && ack.lease_until.is_some_and(|until| {
                    let judged = until - AGENT_LEASE;
                    judged < at && at + Duration::from_millis(1) < until
                })
        });
        if recent_ack {
            findings.acked_by_non_leader.push(agent.clone());
        }
        let before_stop = |t: SystemTime| {
            stopped_at
                .duration_since(t)
                .map_or_else(|e| -(e.duration().as_secs_f64()), |d| d.as_secs_f64())
        };
        let acked: Vec<String> = acks[&agent]
            .iter()
            .map(|ack| format!("{:.2}@{}", before_stop(ack.sent_at), ack.replica))
            .collect();
        let failed: Vec<String> = ledger
            .failures
            .lock()
            .unwrap()
            .get(&agent)
            .into_iter()
            .flatten()
            .map(|(sent, replica, code)| format!("{:.2}@{replica}:{code:?}", before_stop(*sent)))
            .collect();
        eprintln!(
            "OFFLINE {agent} at -{:.2}s (before the load stopped); acks at -s: {}; failed beats at -s: {}",
            before_stop(at),
            acked.join(" "),
            failed.join(" ")
        );
        // Before the fault, with no heartbeat acknowledged for a whole
        // lease before it: the load did not get through (a machine too busy
        // to carry it), the service judged right, and no failover was
        // involved. Told, not counted.
        if !recent_ack && fault_at.is_some_and(|fault| at < fault) {
            eprintln!("  (before the fault, and no acknowledgement within a lease: not counted)");
            findings.offline_before_the_fault.push(agent);
            continue;
        }
        findings.false_offline.push(agent);
    }
    eprintln!(
        "refusals (code, replica): {:?}",
        ledger.refusals.lock().unwrap()
    );
    findings
}
