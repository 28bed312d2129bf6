//! The failover scenarios, each under load, each checked for lost
//! acknowledged transitions, false OFFLINE and non-leader acknowledgements.
//! They run one at a time (a 2-core CI machine runs three replicas each).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mission_control_server::testing::{PostgresCluster, TestDatabase};
use tokio::time::Instant;

use crate::harness::{AGENT_LEASE, Fleet, LEADER_LEASE, PATIENCE, terminate_sessions};
use crate::load::{self, Ledger, Load, Targets};
use crate::verify::verify;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Agents heartbeating throughout: `MC_HARNESS_AGENTS`, 1,000 by default.
fn agent_count() -> usize {
    std::env::var("MC_HARNESS_AGENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// Agents that, in the stall scenario, heartbeat to the deposed leader.
const STICKY: usize = 50;

/// Where the run's database lives; dropping it drops the database.
enum Database {
    Shared(#[expect(dead_code, reason = "held to be dropped")] TestDatabase),
    Own(Arc<PostgresCluster>),
}

struct Run {
    /// When the leader was broken (wall clock, as the database's events).
    fault_at: Option<SystemTime>,
    name: &'static str,
    fleet: Fleet,
    load: Load,
    database: Database,
    url: String,
}

impl Run {
    async fn start(name: &'static str, own_cluster: bool) -> Self {
        let (database, url) = if own_cluster {
            let cluster = tokio::task::spawn_blocking(PostgresCluster::start)
                .await
                .unwrap();
            let url = cluster.url("postgres");
            (Database::Own(Arc::new(cluster)), url)
        } else {
            let db = TestDatabase::create().await;
            let url = db.url().to_owned();
            (Database::Shared(db), url)
        };
        let fleet = Fleet::start(&url, 3).await;
        let leader = fleet.wait_for_leader(None).await;
        let targets = Targets::new(fleet.channels());
        load::register_gateway(&targets).await;
        let ledger = Arc::new(Ledger::default());
        let started = Instant::now();
        let agents = load::provision_fleet(&targets, &ledger, agent_count(), STICKY).await;
        eprintln!(
            "[{name}] 3 replicas (leader {leader}), {} agents provisioned in {:?}",
            agents.len(),
            started.elapsed()
        );
        let load = Load::start(targets, ledger, agents);
        // Warm: every agent beat (checked in) at least once.
        let deadline = Instant::now() + PATIENCE;
        let fleet_checked_in = |ledger: &Ledger| {
            let check_ins = ledger.check_ins.lock().unwrap();
            check_ins
                .iter()
                .filter(|(id, _)| id.starts_with("agent-"))
                .count()
        };
        while fleet_checked_in(&load.ledger) < agent_count() {
            if Instant::now() >= deadline {
                let ledger = &load.ledger;
                eprintln!(
                    "[{name}] {} of {} checked in; heartbeats acked {}, failed {}; refusals {:?}",
                    fleet_checked_in(ledger),
                    agent_count(),
                    ledger
                        .heartbeats_acked
                        .load(std::sync::atomic::Ordering::Relaxed),
                    ledger
                        .heartbeats_failed
                        .load(std::sync::atomic::Ordering::Relaxed),
                    ledger.refusals.lock().unwrap()
                );
                fleet.print_leadership();
                panic!("[{name}] agents never checked in");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            fault_at: None,
            name,
            fleet,
            load,
            database,
            url,
        }
    }

    /// Notes the instant the leader is broken, and returns it.
    fn fault(&mut self) -> Instant {
        self.fault_at = Some(SystemTime::now());
        Instant::now()
    }

    async fn leader(&self) -> usize {
        self.fleet.wait_for_leader(None).await
    }

    /// Time from `since` until a write is acknowledged again: provisions
    /// through random replicas, a new one every 50 ms whether or not the
    /// earlier ones were answered, so a call stuck on a stopped replica
    /// (until `CALL_TIMEOUT`) does not hold the measure back.
    async fn writes_back(&self, since: Instant) -> Duration {
        use mission_control_proto::v1::agent_lifecycle_client::AgentLifecycleClient;
        use mission_control_proto::v1::{AgentRole, ProvisionRequest};
        let deadline = Instant::now() + PATIENCE;
        let mut probes = tokio::task::JoinSet::new();
        for n in 1.. {
            let id = format!("probe-{n:05}");
            let (_, channel) = self.load.targets.random_except(None);
            let request =
                ProvisionRequest::new(&id, load::GATEWAY, AgentRole::BoardWorker).on_board("b1");
            probes.spawn(async move {
                let reply = AgentLifecycleClient::new(channel)
                    .provision(request)
                    .await
                    .ok()?;
                Some((id, reply.into_inner().agent.map_or(0, |a| a.generation)))
            });
            let next_probe = tokio::time::sleep(Duration::from_millis(50));
            tokio::pin!(next_probe);
            loop {
                tokio::select! {
                    done = probes.join_next(), if !probes.is_empty() => {
                        let Some(Ok(Some(acknowledged))) = done else { continue };
                        let took = since.elapsed();
                        self.load.ledger.provisions.lock().unwrap().push(acknowledged);
                        if took > LEADER_LEASE * 4
                            || std::env::var_os("MC_HARNESS_VERBOSE").is_some()
                        {
                            eprintln!("[{}] writes were away for long: the replicas' logs", self.name);
                            self.fleet.print_leadership();
                        }
                        return took;
                    }
                    _ = &mut next_probe => break,
                }
            }
            assert!(
                Instant::now() < deadline,
                "[{}] writes never came back",
                self.name
            );
        }
        unreachable!("probes run until one is answered")
    }

    /// Load for longer than an agent's lease (a lost renewal would show as
    /// OFFLINE), then the ledger against the database.
    async fn finish(self) {
        tokio::time::sleep(AGENT_LEASE + Duration::from_secs(2)).await;
        let flow = self.load.provisioned();
        let ledger = self.load.stop().await;
        let stopped_at = SystemTime::now();
        let findings = verify(&self.url, &ledger, self.fault_at, stopped_at).await;
        eprintln!("[{}] {flow} agents provisioned during the run", self.name);
        if !findings.is_clean() {
            self.fleet.print_leadership();
        }
        findings.assert_clean(self.name);
        drop(self.fleet);
        drop(self.database);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_leader() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut run = Run::start("kill -9", false).await;
    let leader = run.leader().await;
    let fault = run.fault();
    run.fleet.replica(leader).kill9();
    let next = run.fleet.wait_for_leader(Some(leader)).await;
    let elected = fault.elapsed();
    let writes = run.writes_back(fault).await;
    eprintln!(
        "[kill -9] FAILOVER: leader {leader} -> {next}: new leader after {elected:?}, writes after {writes:?} (leader lease {LEADER_LEASE:?})"
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_the_leader_beyond_its_lease_then_sigcont() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut run = Run::start("stall", false).await;
    let leader = run.leader().await;
    let fault = run.fault();
    run.fleet.replica(leader).signal("STOP");
    let next = run.fleet.wait_for_leader(Some(leader)).await;
    let elected = fault.elapsed();
    let writes = run.writes_back(fault).await;
    eprintln!(
        "[stall] FAILOVER: leader {leader} stopped -> {next}: new leader after {elected:?}, writes after {writes:?} (leader lease {LEADER_LEASE:?})"
    );
    tokio::time::sleep(LEADER_LEASE).await;
    run.fleet.replica(leader).signal("CONT");
    // Some agents now beat to the deposed leader only (while it answers):
    // whatever it acknowledges must be the new leader's judgement.
    let deposed = &run.fleet.replicas[leader];
    run.load
        .targets
        .stick_to(Some((deposed.index, deposed.channel.clone())));
    let sticky_before = run
        .load
        .ledger
        .sticky_acks
        .load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_ne!(
        run.fleet.leader().await,
        Some(leader),
        "the deposed leader took the lease back"
    );
    eprintln!(
        "[stall] sticky acknowledgements from the deposed leader so far: {}",
        run.load
            .ledger
            .sticky_acks
            .load(std::sync::atomic::Ordering::Relaxed)
            - sticky_before
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_the_leaders_database_sessions() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut run = Run::start("terminate", false).await;
    let leader = run.leader().await;
    let fault = run.fault();
    let ended = terminate_sessions(&run.url, leader).await;
    assert!(ended > 0, "the leader had database sessions");
    let writes = run.writes_back(fault).await;
    let now_leader = run.leader().await;
    eprintln!(
        "[terminate] FAILOVER: {ended} sessions of leader {leader} ended; writes after {writes:?}; leader now {now_leader}"
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_postgres() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut run = Run::start("postgres restart", true).await;
    let Database::Own(cluster) = &run.database else {
        unreachable!("this run has its own cluster")
    };
    let cluster = cluster.clone();
    let leader = run.leader().await;
    let fault = run.fault();
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    // Down for longer than the leader lease.
    tokio::time::sleep(LEADER_LEASE * 2).await;
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start_again())
        .await
        .unwrap();
    let back = fault.elapsed();
    let writes = run.writes_back(fault).await;
    let now_leader = run.leader().await;
    eprintln!(
        "[postgres restart] FAILOVER: down {back:?} in all; writes after {writes:?} from the stop; leader {leader} -> {now_leader}"
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leadership_over() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut run = Run::start("sigterm", false).await;
    let leader = run.leader().await;
    let fault = run.fault();
    run.fleet.replica(leader).signal("TERM");
    let next = run.fleet.wait_for_leader(Some(leader)).await;
    let elected = fault.elapsed();
    let writes = run.writes_back(fault).await;
    let status = run.fleet.replica(leader).exit_status().await;
    assert!(status.success(), "the drained leader exited with {status}");
    eprintln!(
        "[sigterm] HANDOVER: leader {leader} -> {next}: new leader after {elected:?}, writes after {writes:?} (leader lease {LEADER_LEASE:?})"
    );
    run.finish().await;
}
