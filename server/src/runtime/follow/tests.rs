//! The warm copy against real Postgres, with the engine driven directly:
//! no tasks and no timers, the test holds the clock. A leader makes a
//! random sequence of changes (provisions, token rotations, deletes, wakes,
//! check-ins, heartbeats and their checkpoints, time passing: re-wakes and
//! OFFLINE marks, retires delivered, gateway tokens rotated, rollouts, template
//! syncs asked and answered). Followers that
//! read after every change, now and then in pages of three events (as if
//! notifications were lost), or that start late, must each hold what a
//! fresh load of the database holds, field for field.

use std::sync::Mutex;
use std::time::Duration;

use super::{FollowError, Follower};
use crate::engine::rollout::{Limit, RolloutSpec, RolloutState, Selection};
use crate::engine::{
    AgentId, Batch, BoardId, Engine, Event, GatewayId, GatewaySpec, PendingRetire, Policy,
    ProvisionSpec, Renewal, Role, RolloutId, Status, StoredState, Timestamp, TokenHash,
};
use crate::runtime::engine_lock::EngineLock;
use crate::store::{Candidate, PostgresStore, Store};
use crate::testing::TestDatabase;

const GATEWAYS: [&str; 2] = ["gw-1", "gw-2"];

async fn connect(db: &TestDatabase) -> PostgresStore {
    PostgresStore::connect(db.url(), &Default::default())
        .await
        .expect("connect to the test database")
}

/// An engine that commits every batch to Postgres, as the leader's writer does.
struct Leader {
    store: PostgresStore,
    engine: Engine,
    now: Timestamp,
    tokens: u64,
    rollouts: u32,
    syncs: u64,
}

impl Leader {
    async fn start(db: &TestDatabase) -> Self {
        let store = connect(db).await;
        let candidate = Candidate {
            holder: "leader".into(),
            address: String::new(),
            ttl: Duration::from_secs(3600),
        };
        store.acquire_leadership(&candidate).await.unwrap().unwrap();
        let mut leader = Self {
            store,
            engine: Engine::new(Policy::default()),
            now: Timestamp::from_micros(1_800_000_000_000_000 + 123_456),
            tokens: 0,
            rollouts: 0,
            syncs: 0,
        };
        for gateway in GATEWAYS {
            leader.register(gateway).await;
        }
        leader
    }

    fn mint(&mut self) -> TokenHash {
        self.tokens += 1;
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&self.tokens.to_le_bytes());
        TokenHash(hash)
    }

    async fn run(&mut self, op: impl FnOnce(&mut Engine, &mut Batch)) {
        let mut batch = self.engine.begin(self.now);
        op(&mut self.engine, &mut batch);
        if batch.has_writes() {
            self.store.commit(&batch).await.expect("commit");
        }
        self.engine.commit(batch);
    }

    async fn register(&mut self, gateway: &str) {
        let token = self.mint();
        let spec = GatewaySpec {
            gateway_id: GatewayId::parse(gateway).unwrap(),
            name: Some(gateway.to_owned()),
            rotate_token: true,
        };
        self.run(|engine, batch| drop(engine.register_gateway(batch, spec, token)))
            .await;
    }

    async fn check_in(&mut self, id: AgentId, template: Option<String>) {
        let token = self.engine.agent(&id).unwrap().token_hash;
        self.run(|engine, batch| drop(engine.check_in(batch, &id, &token, template)))
            .await;
    }

    fn pick(&self, rng: &mut fastrand::Rng, status: Option<Status>) -> Option<AgentId> {
        let ids: Vec<AgentId> = self
            .engine
            .agents()
            .filter(|a| status.is_none_or(|s| a.status == s))
            .map(|a| a.id.clone())
            .collect();
        (!ids.is_empty()).then(|| ids[rng.usize(..ids.len())].clone())
    }

    /// A rollout (its row changes without events): one is started, or the
    /// active one paused, resumed or cancelled.
    async fn rollout_step(&mut self, rng: &mut fastrand::Rng) {
        let active = self
            .engine
            .rollouts()
            .into_iter()
            .find(|r| matches!(r.state, RolloutState::Running | RolloutState::Paused))
            .map(|r| r.id.clone());
        if let Some(id) = active {
            let action = rng.u8(0..3);
            self.run(|engine, batch| {
                let _ = match action {
                    0 => engine.pause_rollout(batch, &id),
                    1 => engine.resume_rollout(batch, &id, None),
                    _ => engine.cancel_rollout(batch, &id),
                };
            })
            .await;
            return;
        }
        self.rollouts += 1;
        let id = RolloutId::parse(format!("r-{}", self.rollouts)).unwrap();
        let spec = RolloutSpec {
            template_version: format!("v{}", rng.u8(1..4)),
            selection: Selection::Fleet {
                gateway_id: None,
                board_id: None,
            },
            max_in_flight: Limit::Count(2),
            failure_budget: Limit::Percent(50),
        };
        self.run(|engine, batch| drop(engine.start_rollout(batch, id, spec)))
            .await;
    }

    /// A template sync (its row changes without events): asked of a
    /// gateway, replacing any it owes, or the one it owes acknowledged.
    async fn sync_step(&mut self, rng: &mut fastrand::Rng) {
        let gateway = GatewayId::parse(GATEWAYS[rng.usize(..2)]).unwrap();
        self.syncs += 1;
        let owed = self.engine.pending_sync(&gateway).cloned();
        match owed {
            Some(sync) if rng.bool() => {
                self.run(|engine, batch| {
                    let outcome = Ok(());
                    let (id, version) = (sync.command_id, &sync.template_version);
                    drop(engine.template_sync_acknowledged(batch, &gateway, id, version, &outcome))
                })
                .await
            }
            _ => {
                let (id, version) = (self.syncs, format!("v{}", rng.u8(1..4)));
                self.run(|engine, batch| {
                    drop(engine.request_template_sync(batch, &gateway, id, version))
                })
                .await
            }
        }
    }

    /// One random change, committed.
    async fn step(&mut self, rng: &mut fastrand::Rng) {
        match rng.u32(0..100) {
            0..20 => {
                let token = self.mint();
                let agent = format!("agent-{:02}", rng.u32(0..25));
                let spec = ProvisionSpec {
                    agent_id: AgentId::parse(agent.clone()).unwrap(),
                    name: agent,
                    gateway_id: GatewayId::parse(GATEWAYS[rng.usize(..2)]).unwrap(),
                    board_id: rng
                        .bool()
                        .then(|| BoardId::parse(format!("board-{}", rng.u8(1..3))).unwrap()),
                    role: Role::BoardWorker,
                    template_version: format!("v{}", rng.u8(1..3)),
                    rotate_token: rng.u8(0..4) == 0,
                };
                self.run(|engine, batch| drop(engine.provision(batch, spec, Some(token))))
                    .await;
            }
            20..35 => {
                if let Some(id) = self.pick(rng, None) {
                    let template = rng.bool().then(|| format!("v{}", rng.u8(1..3)));
                    self.check_in(id, template).await;
                }
            }
            35..55 => {
                // A steady heartbeat: renewed in memory only.
                if let Some(id) = self.pick(rng, Some(Status::Online)) {
                    let token = self.engine.agent(&id).unwrap().token_hash;
                    if let Renewal::NeedsCommit(id) =
                        self.engine.renew_lease(&token, None, self.now)
                    {
                        self.check_in(id, None).await;
                    }
                }
            }
            55..63 => {
                let leases = self.engine.take_dirty_leases();
                self.store
                    .checkpoint_leases(&leases)
                    .await
                    .expect("checkpoint");
            }
            63..70 => {
                if let Some(id) = self.pick(rng, None) {
                    self.run(|engine, batch| drop(engine.delete(batch, &id)))
                        .await;
                }
            }
            70..77 => {
                if let Some(id) = self.pick(rng, None) {
                    self.run(|engine, batch| drop(engine.wake(batch, &id)))
                        .await;
                }
            }
            77..90 => {
                // Time passes: deadlines re-wake or mark OFFLINE, leases expire.
                self.now = self.now.plus(Duration::from_secs(rng.u64(1..45)));
                self.run(|engine, batch| engine.fire_due(batch)).await;
            }
            93..95 => self.sync_step(rng).await,
            90..93 => {
                let retires: Vec<PendingRetire> = GATEWAYS
                    .iter()
                    .flat_map(|g| self.engine.pending_retires(&GatewayId::parse(*g).unwrap()))
                    .collect();
                if !retires.is_empty() {
                    let retire = retires[rng.usize(..retires.len())].clone();
                    self.run(|engine, batch| engine.retire_delivered(batch, retire))
                        .await;
                }
            }
            95 => {
                let waiting: Vec<_> = self
                    .engine
                    .agents()
                    .filter(|a| a.awaiting_checkin())
                    .map(|a| (a.id.clone(), a.generation, a.wake_attempts))
                    .collect();
                if !waiting.is_empty() {
                    let (id, generation, attempt) = waiting[rng.usize(..waiting.len())].clone();
                    self.run(|engine, batch| {
                        engine.wake_failed(batch, &id, generation, attempt, "unreachable");
                    })
                    .await;
                }
            }
            96..99 => self.rollout_step(rng).await,
            _ => self.register(GATEWAYS[rng.usize(..2)]).await,
        }
    }
}

/// A follower's copy, reading with some probability after each change.
struct Copy {
    name: &'static str,
    follower: Follower,
    engine: EngineLock,
    /// Percent of changes after which it reads.
    reads: u32,
    /// Every revision announced to its watchers, in order.
    announced: Mutex<Vec<u64>>,
}

impl Copy {
    async fn start(name: &'static str, store: &PostgresStore, reads: u32, page: usize) -> Self {
        let state = store.load().await.unwrap();
        let mut follower = Follower::loaded(state.checkpoint);
        follower.page = page;
        Self {
            name,
            follower,
            announced: Mutex::new(vec![state.revision]),
            engine: EngineLock::new(Engine::from_stored(Policy::default(), state)),
            reads,
        }
    }

    async fn try_catch_up(
        &mut self,
        store: &PostgresStore,
        directory: bool,
        max_events: usize,
    ) -> Result<super::CaughtUp, FollowError> {
        let announced = &self.announced;
        let announce = |event: Event| announced.lock().unwrap().push(event.revision);
        self.follower
            .catch_up(store, &self.engine, &announce, directory, max_events)
            .await
    }

    async fn catch_up(&mut self, store: &PostgresStore, directory: bool) -> super::CaughtUp {
        let name = self.name;
        self.try_catch_up(store, directory, usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Reads to the end, and checks the takeover state against a load.
    async fn check(&mut self, store: &PostgresStore, seed: u64, step: usize) {
        let mut read = self.catch_up(store, true).await;
        let directory = read.directory.take().expect("asked for the directory");
        let warm = self.follower.warm_state(&self.engine.lock(), directory);
        let loaded = store.load().await.unwrap();
        let context = format!("{} (seed {seed}, step {step})", self.name);
        assert_same(normalized(warm), normalized(loaded), &context);
        let announced = self.announced.lock().unwrap();
        assert!(
            announced.windows(2).all(|w| w[1] == w[0] + 1),
            "{context}: watchers were told every revision once, in order"
        );
    }
}

/// Postgres orders text by collation; the copy by bytes.
fn normalized(mut state: StoredState) -> StoredState {
    state.agents.sort_by(|a, b| a.id.cmp(&b.id));
    state.gateways.sort_by(|a, b| a.id.cmp(&b.id));
    state.pending_retires.sort();
    state.tombstones.sort();
    state.rollouts.sort_by(|a, b| a.id.cmp(&b.id));
    state.pending_syncs.sort();
    state
}

/// Field by field, so that a failure names the agent that differs.
fn assert_same(warm: StoredState, loaded: StoredState, context: &str) {
    let ids = |s: &StoredState| s.agents.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&warm), ids(&loaded), "{context}: the same agents");
    for (ours, stored) in warm.agents.iter().zip(&loaded.agents) {
        assert_eq!(ours, stored, "{context}: agent {}", stored.id);
    }
    assert_eq!(warm.gateways, loaded.gateways, "{context}: gateways");
    assert_eq!(warm.pending_retires, loaded.pending_retires, "{context}");
    assert_eq!(warm.tombstones, loaded.tombstones, "{context}: tombstones");
    assert_eq!(warm.revision, loaded.revision, "{context}: revision");
    assert_eq!(warm.rollouts, loaded.rollouts, "{context}: rollouts");
    assert_eq!(warm.checkpoint, loaded.checkpoint, "{context}: checkpoint");
    assert_eq!(warm.pending_syncs, loaded.pending_syncs, "{context}: syncs");
}

async fn random_history_is_followed(seed: u64) {
    const STEPS: usize = 300;
    let db = TestDatabase::create().await;
    let mut leader = Leader::start(&db).await;
    let store = connect(&db).await;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut copies = vec![
        Copy::start("eager", &store, 100, super::FOLLOW_PAGE).await,
        Copy::start("lazy, in pages of three", &store, 10, 3).await,
    ];
    for step in 0..STEPS {
        leader.step(&mut rng).await;
        if step == STEPS / 2 {
            copies.push(Copy::start("late", &store, 30, 2).await);
        }
        for copy in &mut copies {
            if rng.u32(0..100) < copy.reads {
                copy.catch_up(&store, false).await;
            }
        }
        if step % 50 == 49 {
            for copy in &mut copies {
                copy.check(&store, seed, step).await;
            }
        }
    }
    // The history was varied enough to mean something.
    let loaded = store.load().await.unwrap();
    assert!(loaded.revision > 150, "{} events", loaded.revision);
    assert!(loaded.checkpoint > 5, "{} checkpoints", loaded.checkpoint);
    assert!(!loaded.tombstones.is_empty());
    assert!(!loaded.rollouts.is_empty());
    assert!(leader.syncs > 0, "template syncs asked and answered");
    let events = store.events_after(0, 10_000).await.unwrap();
    assert!(events.iter().any(|e| e.agent.status == Status::Offline));
}

#[tokio::test]
async fn the_warm_copy_equals_a_fresh_load_after_random_histories() {
    for seed in [1, 2, 3] {
        random_history_is_followed(seed).await;
    }
}

#[tokio::test]
async fn a_copy_behind_compacted_history_is_told_so() {
    let db = TestDatabase::create().await;
    let mut leader = Leader::start(&db).await;
    let store = connect(&db).await;
    let mut copy = Copy::start("behind", &store, 0, super::FOLLOW_PAGE).await;
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..40 {
        leader.step(&mut rng).await;
    }
    let far_future = leader.now.plus(Duration::from_secs(3600));
    assert!(leader.store.compact(far_future).await.unwrap() > 0);
    let behind = copy.try_catch_up(&store, true, usize::MAX).await;
    assert!(
        matches!(behind, Err(FollowError::Compacted { .. })),
        "{behind:?}"
    );
}

#[tokio::test]
async fn a_copy_too_far_behind_is_told_so() {
    let db = TestDatabase::create().await;
    let mut leader = Leader::start(&db).await;
    let store = connect(&db).await;
    let mut copy = Copy::start("behind", &store, 0, 4).await;
    let mut rng = fastrand::Rng::with_seed(8);
    for _ in 0..40 {
        leader.step(&mut rng).await;
    }
    let behind = copy.try_catch_up(&store, true, 10).await;
    assert!(
        matches!(behind, Err(FollowError::TooFarBehind(10))),
        "{behind:?}"
    );
    // Still consistent: given the time, it catches up.
    copy.check(&store, 8, 40).await;
}
