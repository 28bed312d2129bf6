//! The load: agents heartbeating to replicas picked at random, a stream of
//! provisions each followed by a check-in, and a ledger of every
//! acknowledgement, checked against the database at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mission_control_proto::v1::agent_lifecycle_client::AgentLifecycleClient;
use mission_control_proto::v1::gateways_client::GatewaysClient;
use mission_control_proto::v1::{
    AgentRole, AgentStatus, HeartbeatRequest, ProvisionRequest, RegisterGatewayRequest,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::harness::{HEARTBEAT_INTERVAL, PATIENCE};

pub const GATEWAY: &str = "gw-replicas";

/// The replicas clients may pick from, and (for one scenario) the one a
/// few "sticky" agents must use while it answers.
#[derive(Clone, Default)]
pub struct Targets {
    all: Arc<Mutex<Vec<(usize, Channel)>>>,
    sticky: Arc<Mutex<Option<(usize, Channel)>>>,
}

impl Targets {
    pub fn new(channels: Vec<(usize, Channel)>) -> Self {
        Self {
            all: Arc::new(Mutex::new(channels)),
            sticky: Arc::default(),
        }
    }

    pub fn random(&self) -> (usize, Channel) {
        let all = self.all.lock().unwrap();
        all[fastrand::usize(..all.len())].clone()
    }

    /// A random replica other than `not` (when there is another).
    pub fn random_except(&self, not: Option<usize>) -> (usize, Channel) {
        let all = self.all.lock().unwrap();
        let others: Vec<&(usize, Channel)> = all
            .iter()
            .filter(|(index, _)| Some(*index) != not)
            .collect();
        if others.is_empty() {
            return all[fastrand::usize(..all.len())].clone();
        }
        others[fastrand::usize(..others.len())].clone()
    }

    pub fn stick_to(&self, target: Option<(usize, Channel)>) {
        *self.sticky.lock().unwrap() = target;
    }

    fn sticky(&self) -> Option<(usize, Channel)> {
        self.sticky.lock().unwrap().clone()
    }
}

/// Every acknowledgement the clients received.
#[derive(Default)]
pub struct Ledger {
    /// Acknowledged provisions: agent id and the generation it reached.
    pub provisions: Mutex<Vec<(String, u64)>>,
    /// Acknowledged check-ins: agent id and the generation checked in.
    pub check_ins: Mutex<Vec<(String, u64)>>,
    /// Each acknowledged heartbeat, per agent.
    pub acks: Mutex<HashMap<String, Vec<Ack>>>,
    /// Refusals by gRPC code and replica, to explain gaps.
    pub refusals: Mutex<HashMap<(String, usize), u64>>,
    /// Each failed heartbeat, per agent: when it was sent, to which
    /// replica, and the code, to tell an agent whose beats did not get
    /// through from one the service judged wrongly.
    pub failures: Mutex<HashMap<String, Vec<FailedBeat>>>,
    /// Acknowledgements sticky agents got from their sticky replica.
    pub sticky_acks: AtomicU64,
    pub heartbeats_acked: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    pub provisions_failed: AtomicU64,
}

/// A heartbeat that failed: when it was sent, to which replica, the code.
pub type FailedBeat = (SystemTime, usize, tonic::Code);

/// One acknowledged heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// When it was sent (wall clock, as the database's event times).
    pub sent_at: SystemTime,
    pub replica: usize,
    /// The lease the answer promised, by the leader's clock: the agent
    /// must not go OFFLINE for a lapsed lease before this.
    pub lease_until: Option<SystemTime>,
}

pub struct Agent {
    pub id: String,
    pub token: String,
    pub sticky: bool,
}

pub struct Load {
    pub ledger: Arc<Ledger>,
    pub targets: Targets,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    provisioned: Arc<AtomicUsize>,
}

fn lifecycle(channel: Channel) -> AgentLifecycleClient<Channel> {
    AgentLifecycleClient::new(channel)
}

pub async fn register_gateway(targets: &Targets) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, channel) = targets.random();
        let request = RegisterGatewayRequest {
            gateway_id: GATEWAY.into(),
            ..Default::default()
        };
        if GatewaysClient::new(channel)
            .register_gateway(request)
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway was never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Provisions once through a random replica; records the acknowledgement.
async fn provision(targets: &Targets, ledger: &Ledger, id: &str) -> Option<String> {
    let (_, channel) = targets.random();
    let request = ProvisionRequest::new(id, GATEWAY, AgentRole::BoardWorker).on_board("b1");
    match lifecycle(channel).provision(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            let generation = reply.agent.map_or(0, |a| a.generation);
            ledger
                .provisions
                .lock()
                .unwrap()
                .push((id.to_owned(), generation));
            Some(reply.agent_token)
        }
        Err(_) => {
            ledger.provisions_failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Provisions `count` agents (retrying until each is acknowledged).
pub async fn provision_fleet(
    targets: &Targets,
    ledger: &Ledger,
    count: usize,
    sticky: usize,
) -> Vec<Agent> {
    use futures_util::StreamExt;
    let deadline = Instant::now() + PATIENCE;
    futures_util::stream::iter(0..count)
        .map(|n| async move {
            let id = format!("agent-{n:05}");
            // A provision whose answer was lost may have committed without a
            // token shown: try again under a new id.
            let mut attempt = 0;
            loop {
                let try_id = if attempt == 0 {
                    id.clone()
                } else {
                    format!("{id}-r{attempt}")
                };
                if let Some(token) = provision(targets, ledger, &try_id).await {
                    return Agent {
                        id: try_id,
                        token,
                        sticky: n < sticky,
                    };
                }
                assert!(Instant::now() < deadline, "provisioning never succeeded");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

impl Load {
    /// Starts heartbeating every agent, and a stream of new provisions.
    pub fn start(targets: Targets, ledger: Arc<Ledger>, agents: Vec<Agent>) -> Self {
        let stop = CancellationToken::new();
        let mut tasks: Vec<JoinHandle<()>> = agents
            .into_iter()
            .map(|agent| {
                tokio::spawn(heartbeat_loop(
                    agent,
                    targets.clone(),
                    ledger.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let provisioned = Arc::new(AtomicUsize::new(0));
        tasks.push(tokio::spawn(provision_stream(
            targets.clone(),
            ledger.clone(),
            stop.clone(),
            provisioned.clone(),
        )));
        Self {
            ledger,
            targets,
            stop,
            tasks,
            provisioned,
        }
    }

    pub fn provisioned(&self) -> usize {
        self.provisioned.load(Ordering::Relaxed)
    }

    pub async fn stop(self) -> Arc<Ledger> {
        self.stop.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(PATIENCE, task).await;
        }
        self.ledger
    }
}

/// One agent: a heartbeat every interval (jittered) to a random replica,
/// or its sticky one while set; on failure another replica soon after.
async fn heartbeat_loop(
    agent: Agent,
    targets: Targets,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let mut checked_in = false;
    // After a refusal the next beat goes to another replica.
    let mut refused_by: Option<usize> = None;
    let mut failures: u32 = 0;
    // Spread the first beats over the interval.
    let mut wait = HEARTBEAT_INTERVAL.mul_f64(fastrand::f64());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let sticky = if agent.sticky && refused_by.is_none() {
            targets.sticky()
        } else {
            None
        };
        let (replica, channel) = sticky
            .clone()
            .unwrap_or_else(|| targets.random_except(refused_by));
        let mut request = tonic::Request::new(HeartbeatRequest::default());
        request
            .metadata_mut()
            .insert("x-agent-token", agent.token.parse().expect("ascii token"));
        // The server judges a heartbeat when it arrives, after this.
        let sent_at = SystemTime::now();
        match lifecycle(channel).heartbeat(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                ledger.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
                if sticky.is_some() {
                    ledger.sticky_acks.fetch_add(1, Ordering::Relaxed);
                }
                ledger
                    .acks
                    .lock()
                    .unwrap()
                    .entry(agent.id.clone())
                    .or_default()
                    .push(Ack {
                        sent_at,
                        replica,
                        lease_until: reply.lease_expires_at.map(|t| {
                            SystemTime::UNIX_EPOCH
                                + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
                        }),
                    });
                if !checked_in && reply.status == AgentStatus::Online as i32 {
                    checked_in = true;
                    ledger
                        .check_ins
                        .lock()
                        .unwrap()
                        .push((agent.id.clone(), reply.generation));
                }
                refused_by = None;
                failures = 0;
                wait = HEARTBEAT_INTERVAL.mul_f64(0.5 + fastrand::f64() * 0.5);
            }
            Err(status) => {
                ledger.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                ledger
                    .failures
                    .lock()
                    .unwrap()
                    .entry(agent.id.clone())
                    .or_default()
                    .push((sent_at, replica, status.code()));
                *ledger
                    .refusals
                    .lock()
                    .unwrap()
                    .entry((
                        format!(
                            "{:?} {}",
                            status.code(),
                            status.message().chars().take(40).collect::<String>()
                        ),
                        replica,
                    ))
                    .or_default() += 1;
                wait = retry_backoff(failures);
                failures = failures.saturating_add(1);
                refused_by = Some(replica);
            }
        }
    }
}

/// How long an agent waits after its `failures`-th failed beat in a row:
/// 50-150 ms at first, doubling up to 0.5-1.5 s, so that a loaded machine
/// is not answered with a storm, while an agent still beats several times
/// within its lease.
fn retry_backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100) * 2u32.pow(failures.min(3));
    base.mul_f64(0.5 + fastrand::f64())
}

/// New agents, one every 100 ms, each heartbeating (checking in) at once.
async fn provision_stream(
    targets: Targets,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
    provisioned: Arc<AtomicUsize>,
) {
    let mut beating = Vec::new();
    let mut n = 0;
    while !stop.is_cancelled() {
        n += 1;
        let id = format!("flow-{n:05}");
        if let Some(token) = provision(&targets, &ledger, &id).await {
            provisioned.fetch_add(1, Ordering::Relaxed);
            let agent = Agent {
                id,
                token,
                sticky: false,
            };
            beating.push(tokio::spawn(heartbeat_loop(
                agent,
                targets.clone(),
                ledger.clone(),
                stop.clone(),
            )));
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    for task in beating {
        let _ = tokio::time::timeout(PATIENCE, task).await;
    }
}
