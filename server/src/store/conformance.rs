//! One conformance suite for every store. Each case builds its batches with
//! the real engine, so the store is tested on the writes it will really get.
//! `store_conformance_tests!(make)` expands to one test per case, where
//! `make` is an async expression giving a fresh `(store, guard)`.

use super::{Candidate, ChangesRequest, Store, StoreError};
use crate::engine::{
    AgentId, Batch, BoardId, Engine, EventKind, GatewayId, GatewaySpec, LinkState, Policy,
    ProvisionSpec, Reason, Renewal, Role, Status, StoredLease, StoredState, Timestamp, TokenHash,
};

#[macro_export]
#[doc(hidden)]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!($make;
            commit_and_load_round_trip,
            timestamps_round_trip_exactly,
            a_failed_commit_writes_nothing,
            deletes_and_retires_round_trip,
            events_after_is_ordered_and_limited,
            history_is_newest_first_and_paged,
            checkpoints_only_move_online_leases_forward,
            a_checkpoint_of_many_leases_writes_every_one,
            compaction_drops_old_events_and_keeps_the_revision,
            changes_since_reads_what_events_do_not_carry,
            ping_answers,
            rollouts_round_trip_with_their_events,
            gateway_state_and_held_wakes_round_trip,
            template_syncs_survive_a_restart_until_acknowledged,
            the_brake_on_a_gateway_round_trips,
            rounds_staged_on_top_of_each_other_commit_in_order,
        );
    };
    ($make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let (store, _guard) = $make.await;
                $crate::store::conformance::$case(&store).await;
            }
        )+
    };
}

const SEC: i64 = 1_000_000;

fn at(secs: i64) -> Timestamp {
    // A microsecond part, to catch any loss of precision.
    Timestamp::from_micros(1_750_000_000 * SEC + secs * SEC + 123_456)
}

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

fn gateway() -> GatewayId {
    GatewayId::parse("gw-1").unwrap()
}

/// An engine that commits every batch to the store under test.
struct Fixture<'a> {
    store: &'a dyn Store,
    engine: Engine,
    tokens: u8,
}

impl<'a> Fixture<'a> {
    async fn new(store: &'a dyn Store) -> Self {
        let mut fixture = Self {
            store,
            engine: Engine::new(Policy::default()),
            tokens: 1,
        };
        fixture
            .run(at(0), |engine, batch| {
                engine.register_gateway(
                    batch,
                    GatewaySpec {
                        gateway_id: gateway(),
                        name: Some("gateway one".into()),
                        rotate_token: false,
                    },
                    TokenHash([1; 32]),
                );
                engine.gateway_connected(batch, &gateway()).unwrap();
            })
            .await
            .unwrap();
        fixture
    }

    async fn run(
        &mut self,
        now: Timestamp,
        op: impl FnOnce(&mut Engine, &mut Batch),
    ) -> Result<(), StoreError> {
        let mut batch = self.engine.begin(now);
        op(&mut self.engine, &mut batch);
        match self.store.commit(&batch).await {
            Ok(()) => {
                self.engine.commit(batch);
                Ok(())
            }
            Err(e) => {
                self.engine.abort(batch);
                Err(e)
            }
        }
    }

    async fn provision(&mut self, now: Timestamp, agent: &str) {
        self.tokens += 1;
        let spec = ProvisionSpec {
            agent_id: id(agent),
            name: format!("Agent {agent}"),
            gateway_id: gateway(),
            board_id: Some(BoardId::parse("board-7").unwrap()),
            role: Role::BoardLead,
            template_version: "2026.11".into(),
            rotate_token: false,
        };
        let minted = TokenHash([self.tokens; 32]);
        self.run(now, |engine, batch| {
            engine.provision(batch, spec, Some(minted)).unwrap();
        })
        .await
        .unwrap();
    }

    async fn check_in(&mut self, now: Timestamp, agent: &str) {
        let token = self.engine.agent(&id(agent)).unwrap().token_hash;
        self.run(now, |engine, batch| {
            engine
                .check_in(batch, &id(agent), &token, Some("2026.11".into()))
                .unwrap();
        })
        .await
        .unwrap();
    }

    fn state(&self) -> StoredState {
        StoredState {
            agents: self.engine.agents().cloned().collect(),
            gateways: self.engine.gateways().cloned().collect(),
            pending_retires: self.engine.pending_retires(&gateway()),
            tombstones: self.engine.tombstones(),
            revision: self.engine.revision(),
            rollouts: self.engine.rollouts().into_iter().cloned().collect(),
            checkpoint: 0,
            pending_syncs: self.engine.pending_syncs().cloned().collect(),
        }
    }
}

pub async fn commit_and_load_round_trip(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    f.provision(at(1), "a").await;
    f.provision(at(2), "b").await;
    f.check_in(at(3), "b").await;
    f.run(at(32), |engine, batch| engine.fire_due(batch))
        .await
        .unwrap();

    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, f.state());
    assert_eq!(loaded.revision, 4, "three transitions and one re-wake");
    let a = loaded.agents.iter().find(|a| a.id == id("a")).unwrap();
    assert_eq!(a.wake_attempts, 2);
    let b = loaded.agents.iter().find(|a| a.id == id("b")).unwrap();
    assert_eq!(b.status, Status::Online);
    assert_eq!(b.reported_template_version, "2026.11");
}

pub async fn gateway_state_and_held_wakes_round_trip(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    f.run(at(1), |engine, batch| {
        engine
            .gateway_disconnected(batch, &gateway(), "stream closed")
            .unwrap();
    })
    .await
    .unwrap();
    f.provision(at(2), "a").await;

    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, f.state());
    let held = &loaded.agents[0];
    assert!(held.wake_held);
    assert_eq!(held.checkin_deadline_at, Some(at(2)), "when it fell due");
    let link = &loaded.gateways[0].link;
    assert_eq!((link.state, link.since), (LinkState::Disconnected, at(1)));
    assert_eq!(link.reason, "stream closed");

    f.run(at(5), |engine, batch| {
        assert_eq!(engine.gateway_connected(batch, &gateway()), Ok(1));
    })
    .await
    .unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, f.state());
    assert!(!loaded.agents[0].wake_held);
    assert_eq!(loaded.agents[0].checkin_deadline_at, Some(at(35)));
    let history = store.gateway_history(&gateway(), 10).await.unwrap();
    let seen: Vec<_> = history
        .iter()
        .map(|t| (t.at, t.from, t.to, t.wakes_released))
        .collect();
    use crate::engine::GatewayState::{Connected, Disconnected};
    assert_eq!(
        seen,
        [
            (at(5), Disconnected, Connected, 1),
            (at(1), Connected, Disconnected, 0),
            (at(0), Disconnected, Connected, 0),
        ],
        "newest first"
    );
    assert_eq!(store.gateway_history(&gateway(), 1).await.unwrap().len(), 1);
}

/// A suspected gateway keeps its suspicion (state, first time, reason)
/// through a load, and a recovery clears it.
pub async fn the_brake_on_a_gateway_round_trips(store: &dyn Store) {
    use crate::engine::{BrakeState, GatewayState};
    let mut f = Fixture::new(store).await;
    for agent in ["a", "b", "c"] {
        f.provision(at(1), agent).await;
        f.check_in(at(2), agent).await;
    }
    // All three leases run out at 32 s: 3 of 3 silent.
    f.run(at(33), |engine, batch| engine.fire_due(batch))
        .await
        .unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, f.state());
    let brake = loaded.gateways[0].brake.clone().expect("suspected");
    assert_eq!((brake.state, brake.since), (BrakeState::Suspected, at(33)));
    assert!(
        brake.reason.starts_with("3 of 3 agents silent"),
        "{}",
        brake.reason
    );
    assert!(loaded.agents.iter().all(|a| a.status == Status::Online));
    let history = store.gateway_history(&gateway(), 1).await.unwrap();
    assert_eq!(
        (history[0].from, history[0].to),
        (GatewayState::Connected, GatewayState::Suspected)
    );

    for agent in ["a", "b", "c"] {
        f.check_in(at(34), agent).await;
    }
    f.run(at(35), |engine, batch| engine.fire_due(batch))
        .await
        .unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.gateways, f.state().gateways);
    assert_eq!(loaded.gateways[0].brake, None, "recovered");
    let history = store.gateway_history(&gateway(), 1).await.unwrap();
    assert_eq!(history[0].to, GatewayState::Connected);
}

pub async fn timestamps_round_trip_exactly(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    f.provision(at(1), "a").await;
    let stored = store.load().await.unwrap();
    let agent = &stored.agents[0];
    assert_eq!(agent.created_at, at(1));
    assert_eq!(agent.checkin_deadline_at, Some(at(31)));
    assert_eq!(stored.gateways[0].created_at, at(0));
    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(events[0].at, at(1));
    let mut expected = f.engine.agent(&id("a")).unwrap().clone();
    expected.token_hash = TokenHash::default();
    assert_eq!(
        events[0].agent, expected,
        "history never holds the token hash"
    );
}

pub async fn a_failed_commit_writes_nothing(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    f.provision(at(1), "a").await;
    let before = store.load().await.unwrap();

    // A second engine that does not know revision 1 is taken.
    let mut stale = Engine::new(Policy::default());
    let mut batch = stale.begin(at(2));
    stale.register_gateway(
        &mut batch,
        GatewaySpec {
            gateway_id: GatewayId::parse("gw-2").unwrap(),
            name: Some("second".into()),
            rotate_token: false,
        },
        TokenHash([200; 32]),
    );
    stale
        .provision(
            &mut batch,
            ProvisionSpec {
                agent_id: id("z"),
                name: "z".into(),
                gateway_id: GatewayId::parse("gw-2").unwrap(),
                board_id: None,
                role: Role::GatewayMain,
                template_version: String::new(),
                rotate_token: false,
            },
            Some(TokenHash([201; 32])),
        )
        .unwrap();
    let result = store.commit(&batch).await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(store.load().await.unwrap(), before, "all or nothing");
}

/// The writer's rounds: cuts of one open batch, the second staged on top of
/// the first before it was committed, commit in order to the state the
/// engine holds once both are applied.
pub async fn rounds_staged_on_top_of_each_other_commit_in_order(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    f.provision(at(1), "a").await;
    let spec = |agent: &str| ProvisionSpec {
        agent_id: id(agent),
        name: agent.into(),
        gateway_id: gateway(),
        board_id: None,
        role: Role::BoardWorker,
        template_version: "v1".into(),
        rotate_token: false,
    };
    let mut open = f.engine.begin(at(2));
    f.engine
        .provision(&mut open, spec("b"), Some(TokenHash([50; 32])))
        .unwrap();
    let first = open.cut();
    open.advance_to(at(3));
    // Staged on top of the first round: "b" exists, so this updates it.
    let updated = f
        .engine
        .provision(&mut open, spec("b"), Some(TokenHash([51; 32])))
        .unwrap();
    assert!(!updated.created);
    let second = open.cut();
    assert!(first.stages_over());
    let below = first.last_revision();
    assert_eq!(second.events()[0].revision, below.unwrap() + 1);

    store.commit(&first).await.unwrap();
    store.commit(&second).await.unwrap();
    f.engine.commit_cut(first, &mut open);
    f.engine.commit_cut(second, &mut open);
    let stored = store.load().await.unwrap();
    assert_eq!(stored, f.state());
    let b = stored.agents.iter().find(|a| a.id == id("b")).unwrap();
    assert_eq!((b.generation, b.revision), (2, below.unwrap() + 1));
}

pub async fn deletes_and_retires_round_trip(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    f.provision(at(1), "a").await;
    f.provision(at(1), "b").await;
    f.run(at(2), |engine, batch| {
        engine.delete(batch, &id("a")).unwrap();
    })
    .await
    .unwrap();
    let stored = store.load().await.unwrap();
    assert_eq!(stored.agents.len(), 1);
    assert_eq!(stored.tombstones, [(id("a"), 1)]);
    assert_eq!(stored.pending_retires.len(), 1);
    assert_eq!(stored.pending_retires[0].agent_id, id("a"));

    let retire = stored.pending_retires[0].clone();
    f.run(at(3), |engine, batch| {
        engine.retire_delivered(batch, retire)
    })
    .await
    .unwrap();
    assert!(store.load().await.unwrap().pending_retires.is_empty());

    let history = store.agent_history(&id("a"), None, 10).await.unwrap();
    assert_eq!(history[0].kind, EventKind::Deleted);
    assert_eq!(history[0].reason, Reason::Deleted);
}

pub async fn events_after_is_ordered_and_limited(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    for n in 0..5 {
        f.provision(at(n), &format!("a{n}")).await;
    }
    let all = store.events_after(0, 100).await.unwrap();
    let revisions: Vec<u64> = all.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, [1, 2, 3, 4, 5]);
    let page = store.events_after(2, 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.revision).collect::<Vec<_>>(), [3, 4]);
    assert!(store.events_after(5, 10).await.unwrap().is_empty());
    assert_eq!(all[0].kind, EventKind::Added);
    assert_eq!(all[0].previous_status, None);
}

pub async fn history_is_newest_first_and_paged(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    f.provision(at(0), "a").await;
    f.provision(at(0), "other").await;
    f.run(at(30), |engine, batch| engine.fire_due(batch))
        .await
        .unwrap();
    f.check_in(at(35), "a").await;

    let history = store.agent_history(&id("a"), None, 10).await.unwrap();
    let reasons: Vec<Reason> = history.iter().map(|e| e.reason).collect();
    assert_eq!(
        reasons,
        [
            Reason::CheckedIn,
            Reason::DeadlineMissed,
            Reason::Provisioned
        ]
    );
    assert_eq!(history[0].attempt, 2);
    assert_eq!(history[0].previous_status, Some(Status::Provisioning));

    let first = store.agent_history(&id("a"), None, 2).await.unwrap();
    let rest = store
        .agent_history(&id("a"), Some(first[1].revision), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].reason, Reason::Provisioned);
}

pub async fn checkpoints_only_move_online_leases_forward(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    f.provision(at(0), "online").await;
    f.provision(at(0), "waiting").await;
    f.check_in(at(1), "online").await;
    let token = f.engine.agent(&id("online")).unwrap().token_hash;
    assert!(matches!(
        f.engine.renew_lease(&token, None, at(9)),
        Renewal::Renewed(_)
    ));
    let leases = f.engine.take_dirty_leases();
    store.checkpoint_leases(&leases).await.unwrap();

    let stored = store.load().await.unwrap();
    let online = stored.agents.iter().find(|a| a.id == id("online")).unwrap();
    assert_eq!(online.last_seen_at, Some(at(9)));
    assert_eq!(online.lease_expires_at, Some(at(39)));

    // An older checkpoint never moves it back.
    let mut older = leases.clone();
    older[0].last_seen_at = at(5);
    older[0].lease_expires_at = at(35);
    store.checkpoint_leases(&older).await.unwrap();
    let online = store
        .load()
        .await
        .unwrap()
        .agents
        .into_iter()
        .find(|a| a.id == id("online"))
        .unwrap();
    assert_eq!(online.last_seen_at, Some(at(9)));

    // A checkpoint from before a re-provision changes nothing.
    f.provision(at(10), "online").await;
    let mut late = leases;
    late[0].last_seen_at = at(11);
    late[0].lease_expires_at = at(41);
    store.checkpoint_leases(&late).await.unwrap();
    let updating = store
        .load()
        .await
        .unwrap()
        .agents
        .into_iter()
        .find(|a| a.id == id("online"))
        .unwrap();
    assert_eq!(updating.status, Status::Updating);
    assert_eq!(updating.last_seen_at, Some(at(9)));
    assert_eq!(updating.lease_expires_at, None);
}

pub async fn compaction_drops_old_events_and_keeps_the_revision(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    for n in 0..4 {
        f.provision(at(n * 10), &format!("a{n}")).await;
    }
    assert_eq!(store.compacted_revision().await.unwrap(), 0);
    let compacted = store.compact(at(15)).await.unwrap();
    assert_eq!(compacted, 2);
    assert_eq!(store.compacted_revision().await.unwrap(), 2);
    let left: Vec<u64> = store
        .events_after(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.revision)
        .collect();
    assert_eq!(left, [3, 4]);
    // Compacting with an older cutoff never goes back.
    assert_eq!(store.compact(at(0)).await.unwrap(), 2);
    // Compacting everything keeps the last revision known.
    assert_eq!(store.compact(at(10_000)).await.unwrap(), 4);
    assert_eq!(store.load().await.unwrap().revision, 4);
    // The cut is a prefix in revision order: an event stamped before the
    // cutoff but after one that is not (the clock stepped back) is kept.
    f.provision(at(20_000), "a4").await;
    f.provision(at(15_000), "a5").await;
    assert_eq!(store.compact(at(18_000)).await.unwrap(), 4);
    let left: Vec<u64> = store
        .events_after(4, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.revision)
        .collect();
    assert_eq!(left, [5, 6]);
    assert_eq!(store.compact(at(30_000)).await.unwrap(), 6);
}

pub async fn rollouts_round_trip_with_their_events(store: &dyn Store) {
    use crate::engine::RolloutId;
    use crate::engine::rollout::{Limit, RolloutSpec, RolloutState, Selection};
    let mut f = Fixture::new(store).await;
    for agent in ["a", "b", "c"] {
        f.provision(at(1), agent).await;
        f.check_in(at(2), agent).await;
    }
    let rollout = RolloutId::parse("r-1").unwrap();
    let spec = RolloutSpec {
        template_version: "2026.12".into(),
        selection: Selection::Fleet {
            gateway_id: Some(gateway()),
            board_id: None,
        },
        max_in_flight: Limit::Count(2),
        failure_budget: Limit::Percent(10),
    };
    f.run(at(3), |engine, batch| {
        engine.start_rollout(batch, rollout.clone(), spec).unwrap();
    })
    .await
    .unwrap();
    let started = f.engine.rollout(&rollout).unwrap().clone();
    assert_eq!(started.state, RolloutState::Running);
    assert_eq!(f.store.load().await.unwrap(), f.state());

    // A change rewrites it: the store holds the latest state only.
    f.run(at(4), |engine, batch| {
        engine.pause_rollout(batch, &rollout).unwrap();
    })
    .await
    .unwrap();
    let loaded = f.store.load().await.unwrap();
    assert_eq!(loaded.rollouts.len(), 1);
    assert_eq!(loaded.rollouts[0].state, RolloutState::Paused);
    assert_eq!(loaded, f.state());

    // The agent's history names the rollout that re-provisioned it.
    let history = f.store.agent_history(&id("a"), None, 1).await.unwrap();
    assert_eq!(history[0].reason, Reason::RolloutUpdate);
    assert_eq!(history[0].rollout_id, Some(rollout));
    let untouched = f.store.agent_history(&id("c"), None, 1).await.unwrap();
    assert_eq!(untouched[0].rollout_id, None);
}

/// Postgres writes a large checkpoint in several statements (two leases
/// each under test): every lease lands, and a follower reads them all.
pub async fn a_checkpoint_of_many_leases_writes_every_one(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    let names = ["a", "b", "c", "d", "e"];
    for name in names {
        f.provision(at(1), name).await;
        f.check_in(at(2), name).await;
    }
    let start = store.load().await.unwrap();
    for name in names {
        let token = f.engine.agent(&id(name)).unwrap().token_hash;
        assert!(matches!(
            f.engine.renew_lease(&token, None, at(9)),
            Renewal::Renewed(_)
        ));
    }
    let leases = f.engine.take_dirty_leases();
    assert_eq!(leases.len(), names.len());
    store.checkpoint_leases(&leases).await.unwrap();

    let loaded = store.load().await.unwrap();
    for agent in &loaded.agents {
        assert_eq!(agent.last_seen_at, Some(at(9)), "{}", agent.id);
        assert_eq!(agent.lease_expires_at, Some(at(39)), "{}", agent.id);
    }
    let changes = store
        .changes_since(ChangesRequest {
            revision: start.revision,
            checkpoint: start.checkpoint,
            named: &[],
            limit: 10,
            directory: false,
        })
        .await
        .unwrap();
    let rows = changes.rows.expect("nothing committed since");
    let mut read: Vec<String> = rows.leases.iter().map(|l| l.agent_id.to_string()).collect();
    read.sort();
    assert_eq!(read, names);
    assert_eq!(rows.checkpoint, loaded.checkpoint);
}

/// A follower's read: events, and once they reach the end of the log, the
/// rows they do not carry (token hashes, checkpointed leases), from one
/// snapshot.
pub async fn changes_since_reads_what_events_do_not_carry(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    let start = store.load().await.unwrap();
    f.provision(at(1), "a").await;
    f.provision(at(1), "b").await;
    f.check_in(at(2), "a").await;
    let token = f.engine.agent(&id("a")).unwrap().token_hash;
    assert!(matches!(
        f.engine.renew_lease(&token, None, at(9)),
        Renewal::Renewed(_)
    ));
    store
        .checkpoint_leases(&f.engine.take_dirty_leases())
        .await
        .unwrap();
    let request = |revision, checkpoint, named, limit, directory| ChangesRequest {
        revision,
        checkpoint,
        named,
        limit,
        directory,
    };

    // A page that does not reach the end of the log reads no rows.
    let page = store
        .changes_since(request(start.revision, start.checkpoint, &[], 2, false))
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2);
    assert!(page.rows.is_none());

    let named = [id("b"), id("a")];
    let rest = store
        .changes_since(request(
            page.events[1].revision,
            start.checkpoint,
            &named,
            10,
            true,
        ))
        .await
        .unwrap();
    assert_eq!(rest.events.len(), 1, "the check-in");
    let rows = rest.rows.expect("the end of the log was reached");
    let loaded = store.load().await.unwrap();
    let mut agents = rows.agents.clone();
    agents.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(agents, loaded.agents, "stored rows, token hashes included");
    assert_eq!(
        rows.leases,
        vec![StoredLease {
            agent_id: id("a"),
            generation: 1,
            last_seen_at: Some(at(9)),
            lease_expires_at: Some(at(39)),
        }]
    );
    assert!(rows.checkpoint > start.checkpoint);
    assert_eq!(rows.checkpoint, loaded.checkpoint);
    let directory = rows.directory.expect("asked for");
    assert_eq!(directory.gateways, loaded.gateways);
    assert_eq!(directory.pending_retires, loaded.pending_retires);
    assert_eq!(directory.rollouts, loaded.rollouts);

    // Deleted since: its event names it, and it has no row.
    f.run(at(3), |engine, batch| {
        engine.delete(batch, &id("b")).unwrap();
    })
    .await
    .unwrap();
    let deleted = store
        .changes_since(request(
            rest.events[0].revision,
            rows.checkpoint,
            &[],
            10,
            false,
        ))
        .await
        .unwrap();
    assert_eq!(deleted.events.len(), 1);
    assert_eq!(deleted.events[0].kind, EventKind::Deleted);
    let rows = deleted.rows.unwrap();
    assert!(rows.agents.is_empty());
    assert!(rows.leases.is_empty(), "no checkpoint since");
    assert!(rows.directory.is_none());
}

/// A template sync committed and not acknowledged is there after a restart
/// (a load, or a follower's read), under the same command id, until its
/// acknowledgement is committed; a newer one replaces it.
pub async fn template_syncs_survive_a_restart_until_acknowledged(store: &dyn Store) {
    let mut f = Fixture::new(store).await;
    let start = store.load().await.unwrap();
    assert!(start.pending_syncs.is_empty());
    for (command_id, version) in [(1_750_000_000_000_017, "v2"), (1_750_000_000_000_018, "v3")] {
        f.run(at(1), |engine, batch| {
            engine
                .request_template_sync(batch, &gateway(), command_id, version.into())
                .unwrap();
        })
        .await
        .unwrap();
    }
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, f.state());
    let pending = &loaded.pending_syncs;
    assert_eq!(
        pending.len(),
        1,
        "the newer replaced the older: {pending:?}"
    );
    assert_eq!(
        (pending[0].command_id, pending[0].template_version.as_str()),
        (1_750_000_000_000_018, "v3")
    );
    assert_eq!(pending[0].requested_at, at(1));
    let read = store
        .changes_since(ChangesRequest {
            revision: start.revision,
            checkpoint: start.checkpoint,
            named: &[],
            limit: 10,
            directory: true,
        })
        .await
        .unwrap();
    let directory = read.rows.and_then(|rows| rows.directory).unwrap();
    assert_eq!(&directory.pending_syncs, pending, "a follower reads it too");

    // A restart rebuilds from the load, and knows the sync still owed.
    let (mut restarted, grace) = Engine::restore(Policy::default(), loaded.clone(), at(2));
    assert_eq!(restarted.pending_sync(&gateway()), Some(&pending[0]));
    store.commit(&grace).await.unwrap();
    restarted.commit(grace);
    f.engine = restarted;

    // A late answer to the replaced one changes nothing; the answer to the
    // pending one is committed, and it is gone for good.
    f.run(at(3), |engine, batch| {
        engine
            .template_sync_acknowledged(batch, &gateway(), 1_750_000_000_000_017, "v2", &Ok(()))
            .unwrap();
    })
    .await
    .unwrap();
    assert_eq!(store.load().await.unwrap().pending_syncs.len(), 1);
    f.run(at(4), |engine, batch| {
        engine
            .template_sync_acknowledged(batch, &gateway(), 1_750_000_000_000_018, "v3", &Ok(()))
            .unwrap();
    })
    .await
    .unwrap();
    let after = store.load().await.unwrap();
    assert!(after.pending_syncs.is_empty());
    assert_eq!(after, f.state());
    let history: Vec<String> = store
        .gateway_history(&gateway(), 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.reason.starts_with("template sync"))
        .map(|t| t.reason)
        .collect();
    assert_eq!(
        history,
        [
            "template sync to v3 (command 1750000000000018) synced",
            "template sync to v2 (command 1750000000000017) synced",
            "template sync to v3 (command 1750000000000018) requested",
            "template sync to v2 (command 1750000000000017) requested",
        ]
    );
}

pub async fn ping_answers(store: &dyn Store) {
    store.ping().await.unwrap();
}

/// Makes `store` the leader, with a lease longer than any test.
pub async fn lead(store: &dyn Store) {
    let candidate = candidate("test-leader", std::time::Duration::from_secs(3600));
    let epoch = store.acquire_leadership(&candidate).await.unwrap();
    assert!(epoch.is_some(), "nobody else leads a fresh store");
}

pub fn candidate(holder: &str, ttl: std::time::Duration) -> Candidate {
    Candidate {
        holder: holder.into(),
        address: format!("{holder}.example:50051"),
        ttl,
    }
}

/// The lease, seen by two replicas of one store: exclusive while held,
/// renewed, expired by the store's clock, taken over with a higher epoch
/// that fences the old leader out, and released for an immediate handover.
pub async fn leadership_is_exclusive_expires_and_fences(first: &dyn Store, second: &dyn Store) {
    use std::time::Duration;
    let ttl = Duration::from_millis(300);
    let (a, b) = (candidate("a", ttl), candidate("b", ttl));

    assert_eq!(first.leader().await.unwrap(), None);
    let first_epoch = first.acquire_leadership(&a).await.unwrap().expect("free");
    assert_eq!(second.acquire_leadership(&b).await.unwrap(), None, "held");
    let left = second.leadership_free_in().expect("a refusal says when");
    assert!(left > Duration::ZERO && left <= ttl, "{left:?} of {ttl:?}");
    let leader = first.leader().await.unwrap().expect("a leads");
    assert_eq!((leader.holder.as_str(), leader.epoch), ("a", first_epoch));
    assert_eq!(leader.address, "a.example:50051");

    // The leader writes; the other is fenced out even of an empty batch.
    let writes = Fixture::new(first).await;
    let refused = second
        .commit(&Engine::new(Policy::default()).begin(at(0)))
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotLeader(_))),
        "{refused:?}"
    );
    assert!(first.renew_leadership(&a).await.unwrap());

    // No renewal: the lease expires by the store's clock and b takes over.
    let mut second_epoch = None;
    for _ in 0..200 {
        second_epoch = second.acquire_leadership(&b).await.unwrap();
        if second_epoch.is_some() {
            break;
        }
        // Waits for the expiry the refusal reported (bounded by the loop).
        let left = second.leadership_free_in().expect("a refusal says when");
        tokio::time::sleep(left.max(Duration::from_millis(10))).await;
    }
    let second_epoch = second_epoch.expect("the lease expired within the loop's bound");
    assert!(second_epoch > first_epoch);
    assert_eq!(
        second.leadership_free_in(),
        None,
        "acquired: nothing to wait for"
    );
    assert!(!first.renew_leadership(&a).await.unwrap(), "a lost it");
    let deposed = first.commit(&writes.engine.begin(at(1))).await;
    assert!(
        matches!(deposed, Err(StoreError::NotLeader(_))),
        "{deposed:?}"
    );

    // A release hands over at once, without waiting for the TTL.
    second.release_leadership().await;
    assert_eq!(second.leader().await.unwrap(), None);
    let third = first.acquire_leadership(&a).await.unwrap();
    assert!(third.is_some_and(|e| e > second_epoch), "{third:?}");
}
