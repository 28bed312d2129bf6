//! The state machine, transition by transition, on explicit timestamps.

use std::time::Duration;

use super::*;

const SEC: i64 = 1_000_000;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_micros(1_700_000_000 * SEC + secs * SEC)
}

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

fn gw() -> GatewayId {
    GatewayId::parse("gw-1").unwrap()
}

fn token(n: u8) -> TokenHash {
    TokenHash([n; 32])
}

/// An engine with one gateway, driven batch by batch like the runtime does.
struct Harness {
    engine: Engine,
    now: Timestamp,
    next_token: u8,
}

/// The seed's policy with the mass-failure brake off: these tests judge
/// agents alone, and their agents never heartbeat while time jumps ahead
/// (the brake's own tests are in `tests/brake.rs`).
fn alone() -> Policy {
    Policy {
        brake_share: 1.0,
        fleet_brake_share: 1.0,
        ..Policy::DEFAULT
    }
}

impl Harness {
    fn new() -> Self {
        Self::with_policy(alone())
    }

    fn with_policy(policy: Policy) -> Self {
        let mut harness = Self {
            engine: Engine::new(policy),
            now: t(0),
            next_token: 10,
        };
        harness.run(|engine, batch| {
            engine.register_gateway(
                batch,
                GatewaySpec {
                    gateway_id: gw(),
                    name: Some("gateway one".into()),
                    rotate_token: false,
                },
                token(1),
            );
            engine.gateway_connected(batch, &gw()).unwrap()
        });
        harness
    }

    /// Runs one batch at the current time and commits it.
    fn run<R>(&mut self, op: impl FnOnce(&mut Engine, &mut Batch) -> R) -> (R, Committed) {
        let mut batch = self.engine.begin(self.now);
        let result = op(&mut self.engine, &mut batch);
        (result, self.engine.commit(batch))
    }

    /// Moves time to `at`, firing whatever is due, like the runtime's loop.
    fn advance_to(&mut self, at: Timestamp) -> Committed {
        self.now = at;
        self.run(|engine, batch| engine.fire_due(batch)).1
    }

    fn spec(&mut self, agent: &str, rotate_token: bool) -> ProvisionSpec {
        ProvisionSpec {
            agent_id: id(agent),
            name: agent.to_owned(),
            gateway_id: gw(),
            board_id: Some(BoardId::parse("board-1").unwrap()),
            role: Role::BoardWorker,
            template_version: "v1".into(),
            rotate_token,
        }
    }

    fn new_token(&mut self) -> TokenHash {
        self.next_token += 1;
        token(self.next_token)
    }

    fn provision(&mut self, agent: &str) -> (Provisioned, Committed) {
        let spec = self.spec(agent, false);
        let minted = self.new_token();
        let (result, committed) =
            self.run(|engine, batch| engine.provision(batch, spec, Some(minted)));
        (result.unwrap(), committed)
    }

    fn check_in(&mut self, agent: &str) -> Committed {
        let hash = self.agent(agent).token_hash;
        let (result, committed) =
            self.run(|engine, batch| engine.check_in(batch, &id(agent), &hash, None));
        result.unwrap();
        committed
    }

    fn agent(&self, agent: &str) -> Agent {
        self.engine.agent(&id(agent)).unwrap().clone()
    }
}

fn wakes(committed: &Committed) -> Vec<(String, u64, u32)> {
    committed
        .effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Wake(w) => Some((w.agent_id.to_string(), w.generation, w.attempt)),
            Effect::Retire(_) | Effect::DisconnectGateway(_) => None,
        })
        .collect()
}

fn notes(committed: &Committed) -> Vec<NoteKind> {
    committed.notes.iter().map(|n| n.kind).collect()
}

fn reasons(committed: &Committed) -> Vec<Reason> {
    committed.events.iter().map(|e| e.reason).collect()
}

#[test]
fn provision_creates_a_provisioning_agent_with_wake_one_and_a_deadline() {
    let mut h = Harness::new();
    let (provisioned, committed) = h.provision("a");
    assert!(provisioned.created && provisioned.token_minted);

    let agent = h.agent("a");
    assert_eq!(agent.status, Status::Provisioning);
    assert_eq!(agent.generation, 1);
    assert_eq!(agent.wake_attempts, 1);
    assert_eq!(agent.last_wake_sent_at, Some(t(0)));
    assert_eq!(agent.checkin_deadline_at, Some(t(30)));
    assert_eq!(wakes(&committed), [("a".into(), 1, 1)]);
    assert_eq!(committed.events[0].kind, EventKind::Added);
    assert_eq!(committed.events[0].reason, Reason::Provisioned);
    assert_eq!(committed.events[0].revision, agent.revision);
    assert_eq!(notes(&committed), [NoteKind::Enqueued]);
}

#[test]
fn three_missed_deadlines_mean_three_wakes_then_offline_at_the_right_instants() {
    let mut h = Harness::new();
    h.provision("a");

    assert!(
        h.advance_to(t(29)).events.is_empty(),
        "nothing before the deadline"
    );

    let second = h.advance_to(t(30));
    assert_eq!(wakes(&second), [("a".into(), 1, 2)]);
    assert_eq!(reasons(&second), [Reason::DeadlineMissed]);
    assert_eq!(
        notes(&second),
        [
            NoteKind::Retriggered,
            NoteKind::Enqueued,
            NoteKind::WorkerSuccess
        ]
    );
    assert_eq!(h.agent("a").checkin_deadline_at, Some(t(60)));
    assert_eq!(h.agent("a").status, Status::Provisioning);
    // Every note agrees with the transition: attempt 2, its own deadline.
    let fields: Vec<_> = second
        .notes
        .iter()
        .map(|n| (n.kind, n.attempt, n.deadline))
        .collect();
    assert_eq!(
        fields,
        [
            (NoteKind::Retriggered, 2, Some(t(60))),
            (NoteKind::Enqueued, 2, Some(t(60))),
            (NoteKind::WorkerSuccess, 2, Some(t(60))),
        ]
    );
    assert_eq!(second.events[0].attempt, 2);

    let third = h.advance_to(t(60));
    assert_eq!(wakes(&third), [("a".into(), 1, 3)]);

    assert!(h.advance_to(t(89)).events.is_empty());
    let last = h.advance_to(t(90));
    assert!(wakes(&last).is_empty(), "no fourth wake");
    assert_eq!(reasons(&last), [Reason::MaxAttemptsReached]);
    assert_eq!(
        notes(&last),
        [NoteKind::MaxAttemptsReached, NoteKind::WorkerSuccess]
    );

    let agent = h.agent("a");
    assert_eq!(agent.status, Status::Offline);
    assert_eq!(agent.wake_attempts, 3);
    assert_eq!(agent.checkin_deadline_at, None);
    let error = agent.last_provision_error.unwrap();
    assert!(
        error.contains("no check-in after 3 wake attempts"),
        "{error}"
    );
    assert_eq!(agent.offline_reason.as_deref(), Some(error.as_str()));

    assert_eq!(h.engine.timer_count(), 0, "escalation stopped");
    assert!(h.advance_to(t(10_000)).events.is_empty());
}

#[test]
fn a_check_in_at_any_attempt_resets_attempts_and_clears_the_deadline() {
    for attempt in 1..=3u32 {
        let mut h = Harness::new();
        h.provision("a");
        for n in 1..attempt {
            h.advance_to(t(30 * i64::from(n)));
        }
        assert_eq!(h.agent("a").wake_attempts, attempt);

        h.now = t(30 * i64::from(attempt) - 1);
        let checked_in = h.check_in("a");
        assert_eq!(reasons(&checked_in), [Reason::CheckedIn]);
        assert_eq!(checked_in.events[0].attempt, attempt);

        let agent = h.agent("a");
        assert_eq!(agent.status, Status::Online);
        assert_eq!(agent.wake_attempts, 0);
        assert_eq!(agent.checkin_deadline_at, None);
        assert_eq!(agent.last_seen_at, Some(h.now));
        assert_eq!(agent.last_provision_error, None);

        // The timer armed for this attempt finds nothing to do.
        let fired = h.advance_to(t(30 * i64::from(attempt)));
        assert!(wakes(&fired).is_empty(), "attempt {attempt}");
        assert_eq!(
            notes(&fired),
            [NoteKind::SkipNotStuck, NoteKind::WorkerSuccess]
        );
    }
}

#[test]
fn a_heartbeat_makes_any_status_online() {
    let mut h = Harness::new();
    h.provision("provisioning");
    h.provision("updating");
    h.provision("updating");
    h.provision("offline");
    for at in [30, 60, 90] {
        h.now = t(at);
        for agent in ["provisioning", "updating"] {
            h.check_in(agent);
            let spec = h.spec(agent, false);
            let minted = h.new_token();
            h.run(|e, b| e.provision(b, spec, Some(minted))).0.unwrap();
        }
        h.advance_to(t(at));
    }
    assert_eq!(h.agent("offline").status, Status::Offline);
    assert_eq!(h.agent("updating").status, Status::Updating);
    assert_eq!(h.agent("provisioning").status, Status::Updating);

    let mut h2 = Harness::new();
    h2.provision("p");
    assert_eq!(h2.agent("p").status, Status::Provisioning);
    h2.check_in("p");
    assert_eq!(h2.agent("p").status, Status::Online);

    for agent in ["offline", "updating"] {
        let previous = h.agent(agent).status;
        let committed = h.check_in(agent);
        assert_eq!(committed.events[0].previous_status, Some(previous));
        let after = h.agent(agent);
        assert_eq!(after.status, Status::Online, "{agent}");
        assert_eq!(after.offline_reason, None);
        assert_eq!(after.last_provision_error, None);
    }
}

#[test]
fn a_new_token_is_needed_only_by_a_new_agent_or_a_rotation() {
    let mut h = Harness::new();
    let spec = h.spec("a", false);
    let (refused, committed) = h.run(|engine, batch| {
        assert!(engine.provision_needs_token(batch, &spec));
        engine.provision(batch, spec, None)
    });
    assert!(
        matches!(refused, Err(EngineError::FailedPrecondition(_))),
        "{refused:?}"
    );
    assert!(committed.events.is_empty(), "nothing staged");
    assert!(h.engine.agent(&id("a")).is_none());

    h.provision("a");
    let token = h.agent("a").token_hash;
    let spec = h.spec("a", false);
    let (kept, _) = h.run(|engine, batch| {
        assert!(!engine.provision_needs_token(batch, &spec));
        engine.provision(batch, spec, None)
    });
    assert!(!kept.unwrap().token_minted);
    assert_eq!(h.agent("a").token_hash, token, "the agent keeps its token");

    let spec = h.spec("a", true);
    let (refused, committed) = h.run(|engine, batch| {
        assert!(engine.provision_needs_token(batch, &spec));
        engine.provision(batch, spec, None)
    });
    assert!(
        matches!(refused, Err(EngineError::FailedPrecondition(_))),
        "{refused:?}"
    );
    assert!(committed.events.is_empty(), "nothing staged");
    assert_eq!(h.agent("a").token_hash, token);

    // Staged and not yet committed: deleted in the same batch, it needs one.
    let spec = h.spec("a", false);
    h.run(|engine, batch| {
        engine.delete(batch, &id("a")).unwrap();
        assert!(engine.provision_needs_token(batch, &spec));
    });
}

#[test]
fn re_provisioning_resets_attempts_and_gives_a_full_cycle_of_wakes() {
    let mut h = Harness::new();
    h.provision("a");
    h.advance_to(t(30));
    h.advance_to(t(60));
    assert_eq!(h.agent("a").wake_attempts, 3);

    h.now = t(70);
    let (provisioned, committed) = h.provision("a");
    assert!(!provisioned.created && !provisioned.token_minted);
    assert_eq!(reasons(&committed), [Reason::Updated]);
    let agent = h.agent("a");
    assert_eq!(agent.status, Status::Updating);
    assert_eq!(agent.generation, 2);
    assert_eq!(agent.wake_attempts, 1);
    assert_eq!(agent.checkin_deadline_at, Some(t(100)));

    // The old cycle's deadline at t=90 is stale now.
    assert_eq!(
        notes(&h.advance_to(t(90)))[0],
        NoteKind::SkipStaleGeneration
    );
    let mut all_wakes = wakes(&committed);
    for at in [100, 130, 160] {
        all_wakes.extend(wakes(&h.advance_to(t(at))));
    }
    assert_eq!(
        all_wakes,
        [("a".into(), 2, 1), ("a".into(), 2, 2), ("a".into(), 2, 3)]
    );
    assert_eq!(h.agent("a").status, Status::Offline);
}

#[test]
fn an_operator_wake_starts_a_fresh_cycle_and_revives_an_offline_agent() {
    let mut h = Harness::new();
    h.provision("a");
    for at in [30, 60, 90] {
        h.advance_to(t(at));
    }
    assert_eq!(h.agent("a").status, Status::Offline);

    h.now = t(100);
    let (woken, committed) = h.run(|e, b| e.wake(b, &id("a")));
    let woken = woken.unwrap();
    assert_eq!(woken.status, Status::Updating);
    assert_eq!(woken.wake_attempts, 1);
    assert_eq!(woken.generation, 2);
    assert_eq!(woken.offline_reason, None);
    assert_eq!(woken.last_provision_error, None);
    assert_eq!(wakes(&committed), [("a".into(), 2, 1)]);
    assert_eq!(reasons(&committed), [Reason::Woken]);

    // An online agent stays online while the fresh cycle runs.
    h.check_in("a");
    let (woken, _) = h.run(|e, b| e.wake(b, &id("a")));
    let woken = woken.unwrap();
    assert_eq!(woken.status, Status::Online);
    assert_eq!(woken.wake_attempts, 1);
    assert!(woken.awaiting_checkin());

    let missing = h.run(|e, b| e.wake(b, &id("nobody"))).0;
    assert_eq!(missing, Err(EngineError::AgentNotFound(id("nobody"))));
}

#[test]
fn wakes_never_rotate_the_token_and_only_rotate_token_does() {
    let mut h = Harness::new();
    h.provision("a");
    let original = h.agent("a").token_hash;
    h.advance_to(t(30));
    h.run(|e, b| e.wake(b, &id("a"))).0.unwrap();
    h.provision("a");
    assert_eq!(h.agent("a").token_hash, original);

    let spec = h.spec("a", true);
    let rotated = h.new_token();
    let provisioned = h.run(|e, b| e.provision(b, spec, Some(rotated))).0.unwrap();
    assert!(provisioned.token_minted);
    assert_eq!(h.agent("a").token_hash, rotated);
    assert_eq!(
        h.engine.renew_lease(&original, None, h.now),
        Renewal::UnknownToken
    );
    assert_eq!(
        h.run(|e, b| e.check_in(b, &id("a"), &original, None)).0,
        Err(EngineError::Unauthenticated)
    );
}

#[test]
fn a_timer_armed_for_an_older_generation_does_nothing() {
    let mut h = Harness::new();
    h.provision("a");
    h.now = t(10);
    h.run(|e, b| e.wake(b, &id("a"))).0.unwrap();

    let stale = h.advance_to(t(30));
    assert!(stale.events.is_empty() && wakes(&stale).is_empty());
    assert_eq!(
        notes(&stale),
        [NoteKind::SkipStaleGeneration, NoteKind::WorkerSuccess]
    );
    assert_eq!(h.agent("a").wake_attempts, 1);

    let live = h.advance_to(t(40));
    assert_eq!(wakes(&live), [("a".into(), 2, 2)]);
}

#[test]
fn a_heartbeat_racing_the_deadline_never_causes_a_re_wake() {
    let mut h = Harness::new();
    h.provision("a");
    let token = h.agent("a").token_hash;
    // The runtime handles commands received before the deadline first, then
    // fires timers, in one batch: the check-in wins.
    h.now = t(30);
    let (result, committed) = h.run(|engine, batch| {
        let agent = engine.check_in(batch, &id("a"), &token, None);
        engine.fire_due(batch);
        agent
    });
    assert_eq!(result.unwrap().status, Status::Online);
    assert!(wakes(&committed).is_empty());
    assert_eq!(
        notes(&committed),
        [NoteKind::SkipNotStuck, NoteKind::WorkerSuccess]
    );
    assert_eq!(h.agent("a").wake_attempts, 0);
}

#[test]
fn a_heartbeat_that_arrived_before_the_deadline_wins_even_if_handled_after_it() {
    let mut h = Harness::new();
    h.provision("a");
    let token = h.agent("a").token_hash;
    // It arrives at 29 s; its command is still queued when the timer is due.
    assert_eq!(
        h.engine.renew_lease(&token, None, t(29)),
        Renewal::NeedsCommit(id("a"))
    );
    let fired = h.advance_to(t(31));
    assert!(wakes(&fired).is_empty(), "no re-wake");
    assert_eq!(reasons(&fired), [Reason::CheckedIn]);
    let agent = h.agent("a");
    assert_eq!(agent.status, Status::Online);
    assert_eq!(agent.last_seen_at, Some(t(29)), "judged by arrival");
    assert_eq!(agent.lease_expires_at, Some(t(59)));

    // The queued command, handled later, is a plain renewal.
    h.now = t(32);
    let (again, committed) = h.run(|e, b| e.check_in(b, &id("a"), &token, None));
    assert_eq!(again.unwrap().status, Status::Online);
    assert!(committed.events.is_empty());
}

#[test]
fn a_recorded_heartbeat_survives_an_aborted_batch() {
    let mut h = Harness::new();
    h.provision("a");
    let token = h.agent("a").token_hash;
    h.engine.renew_lease(&token, None, t(29));
    let mut batch = h.engine.begin(t(31));
    h.engine.fire_due(&mut batch);
    h.engine.abort(batch);
    let fired = h.advance_to(t(31));
    assert!(wakes(&fired).is_empty());
    assert_eq!(h.agent("a").last_seen_at, Some(t(29)));
}

#[test]
fn the_fast_path_renews_only_steady_online_agents() {
    let mut h = Harness::new();
    h.provision("a");
    let token = h.agent("a").token_hash;
    assert_eq!(
        h.engine.renew_lease(&token, None, h.now),
        Renewal::NeedsCommit(id("a")),
        "a provisioning agent's heartbeat is a check-in"
    );
    h.check_in("a");

    h.now = t(5);
    match h.engine.renew_lease(&token, None, h.now) {
        Renewal::Renewed(lease) => {
            assert_eq!(lease.status, Status::Online);
            assert_eq!(lease.lease_expires_at, Some(t(35)));
            assert_eq!(
                lease.time_left,
                Duration::from_secs(25),
                "30 s lease from t0"
            );
        }
        other => panic!("expected a renewal, got {other:?}"),
    }
    assert_eq!(h.agent("a").last_seen_at, Some(t(5)));
    assert_eq!(
        h.engine.renew_lease(&token, Some("v2"), h.now),
        Renewal::NeedsCommit(id("a")),
        "a new template version is committed"
    );
    assert_eq!(
        h.engine.renew_lease(&TokenHash([99; 32]), None, h.now),
        Renewal::UnknownToken
    );

    // While a batch touching the agent is being committed, heartbeats queue.
    let mut batch = h.engine.begin(h.now);
    h.engine.wake(&mut batch, &id("a")).unwrap();
    assert_eq!(
        h.engine.renew_lease(&token, None, h.now),
        Renewal::NeedsCommit(id("a"))
    );
    h.engine.abort(batch);
    assert!(matches!(
        h.engine.renew_lease(&token, None, h.now),
        Renewal::Renewed(_)
    ));
}

#[test]
fn an_online_agent_whose_lease_expires_goes_offline() {
    let mut h = Harness::new();
    h.provision("a");
    h.now = t(1);
    h.check_in("a");
    let token = h.agent("a").token_hash;
    assert_eq!(h.agent("a").lease_expires_at, Some(t(31)));

    // Heartbeats keep the lease alive; the entry re-arms itself.
    for at in [10, 20, 30] {
        h.now = t(at);
        assert!(matches!(
            h.engine.renew_lease(&token, None, h.now),
            Renewal::Renewed(_)
        ));
    }
    assert!(h.advance_to(t(31)).events.is_empty());
    assert_eq!(h.engine.next_timer_at(), Some(t(60)));

    let expired = h.advance_to(t(60));
    assert_eq!(reasons(&expired), [Reason::LeaseExpired]);
    assert!(wakes(&expired).is_empty(), "no wake cycle by default");
    let agent = h.agent("a");
    assert_eq!(agent.status, Status::Offline);
    assert_eq!(agent.offline_reason.as_deref(), Some("lease expired"));

    h.now = t(61);
    assert_eq!(reasons(&h.check_in("a")), [Reason::CheckedIn]);
    assert_eq!(h.agent("a").status, Status::Online);
}

#[test]
fn with_wake_on_lease_expiry_an_expired_agent_is_woken_while_offline() {
    let mut h = Harness::with_policy(Policy {
        wake_on_lease_expiry: true,
        ..Policy::default()
    });
    h.provision("a");
    h.check_in("a");
    let expired = h.advance_to(t(30));
    assert_eq!(wakes(&expired), [("a".into(), 2, 1)]);
    assert_eq!(h.agent("a").status, Status::Offline);

    let retried = h.advance_to(t(60));
    assert_eq!(wakes(&retried), [("a".into(), 2, 2)]);
    assert_eq!(h.agent("a").status, Status::Offline, "offline, recovering");
    h.advance_to(t(90));
    let last = h.advance_to(t(120));
    assert_eq!(reasons(&last), [Reason::MaxAttemptsReached]);
    assert!(!h.agent("a").awaiting_checkin());
}

#[test]
fn a_failed_wake_is_recorded_and_a_stale_report_is_ignored() {
    let mut h = Harness::new();
    h.provision("a");
    let (recorded, committed) =
        h.run(|e, b| e.wake_failed(b, &id("a"), 1, 1, "gateway gw-1 is not connected"));
    assert!(recorded);
    assert_eq!(reasons(&committed), [Reason::WakeFailed]);
    let agent = h.agent("a");
    assert_eq!(
        agent.last_provision_error.as_deref(),
        Some("wake attempt 1 failed: gateway gw-1 is not connected")
    );
    assert_eq!(agent.wake_attempts, 1, "a failed wake still counts");
    assert_eq!(
        agent.checkin_deadline_at,
        Some(t(30)),
        "and escalation goes on"
    );

    for (generation, attempt) in [(0, 1), (1, 2), (2, 1)] {
        let (recorded, committed) =
            h.run(|e, b| e.wake_failed(b, &id("a"), generation, attempt, "late"));
        assert!(!recorded && committed.events.is_empty());
    }
    assert_eq!(wakes(&h.advance_to(t(30))), [("a".into(), 1, 2)]);
    h.advance_to(t(60));
    h.advance_to(t(90));
    let error = h.agent("a").last_provision_error.unwrap();
    assert!(
        error.starts_with("no check-in after 3 wake attempts"),
        "{error}"
    );
}

#[test]
fn delete_revokes_the_token_retires_the_agent_and_leaves_timers_stale() {
    let mut h = Harness::new();
    h.provision("a");
    let token = h.agent("a").token_hash;
    let (deleted, committed) = h.run(|e, b| e.delete(b, &id("a")));
    assert_eq!(deleted.unwrap().id, id("a"));
    assert_eq!(committed.events[0].kind, EventKind::Deleted);
    let retire = PendingRetire {
        gateway_id: gw(),
        agent_id: id("a"),
        generation: 1,
    };
    assert_eq!(committed.effects, [Effect::Retire(retire.clone())]);
    assert_eq!(
        h.engine.pending_retires(&gw()),
        std::slice::from_ref(&retire)
    );
    assert!(h.engine.agent(&id("a")).is_none());
    assert_eq!(
        h.engine.renew_lease(&token, None, h.now),
        Renewal::UnknownToken
    );

    let fired = h.advance_to(t(30));
    assert_eq!(notes(&fired), [NoteKind::SkipMissingAgent]);
    assert!(fired.effects.is_empty());

    h.run(|e, b| e.retire_delivered(b, retire));
    assert!(h.engine.pending_retires(&gw()).is_empty());
}

#[test]
fn a_re_created_agent_starts_above_the_generation_its_earlier_self_reached() {
    let mut h = Harness::new();
    h.provision("a");
    h.provision("a");
    h.run(|e, b| e.delete(b, &id("a"))).0.unwrap();
    let (again, committed) = h.provision("a");
    assert!(again.created);
    assert_eq!(again.agent.generation, 3, "above the retired generation 2");
    assert_eq!(wakes(&committed), [("a".into(), 3, 1)]);

    // Even once the retire is acknowledged, and across a restart.
    let retire = h.engine.pending_retires(&gw()).remove(0);
    h.run(|e, b| e.retire_delivered(b, retire));
    h.run(|e, b| e.delete(b, &id("a"))).0.unwrap();
    let state = StoredState {
        agents: vec![],
        gateways: h.engine.gateways().cloned().collect(),
        pending_retires: vec![],
        tombstones: h.engine.tombstones(),
        revision: h.engine.revision(),
        rollouts: vec![],
        checkpoint: 0,
        pending_syncs: vec![],
    };
    let (mut engine, batch) = Engine::restore(Policy::default(), state, t(5));
    engine.commit(batch);
    h.engine = engine;
    let (third, _) = h.provision("a");
    assert_eq!(third.agent.generation, 4);
    // A late failure report for the first incarnation's wake changes nothing.
    let (recorded, _) = h.run(|e, b| e.wake_failed(b, &id("a"), 1, 1, "late"));
    assert!(!recorded);
}

#[test]
fn provision_checks_the_gateway() {
    let mut h = Harness::new();
    let mut spec = h.spec("a", false);
    spec.gateway_id = GatewayId::parse("elsewhere").unwrap();
    let result = h
        .run(|e, b| e.provision(b, spec.clone(), Some(token(50))))
        .0;
    assert!(matches!(result, Err(EngineError::GatewayNotFound(_))));

    h.provision("a");
    h.run(|e, b| {
        e.register_gateway(
            b,
            GatewaySpec {
                gateway_id: spec.gateway_id.clone(),
                name: None,
                rotate_token: false,
            },
            token(2),
        )
    });
    let moved = h.run(|e, b| e.provision(b, spec, Some(token(51)))).0;
    assert!(matches!(moved, Err(EngineError::FailedPrecondition(_))));
}

#[test]
fn an_aborted_batch_changes_nothing_and_its_timers_fire_again() {
    let mut h = Harness::new();
    h.provision("a");
    h.now = t(30);
    let mut batch = h.engine.begin(h.now);
    h.engine.fire_due(&mut batch);
    assert_eq!(batch.events().len(), 1);
    h.engine.abort(batch);
    assert_eq!(h.agent("a").wake_attempts, 1);

    let retried = h.advance_to(t(30));
    assert_eq!(wakes(&retried), [("a".into(), 1, 2)]);
}

#[test]
fn a_new_template_version_from_an_online_agent_is_an_event() {
    let mut h = Harness::new();
    h.provision("a");
    h.check_in("a");
    let token = h.agent("a").token_hash;
    let (agent, committed) = h.run(|e, b| e.check_in(b, &id("a"), &token, Some("v2".into())));
    assert_eq!(agent.unwrap().reported_template_version, "v2");
    assert_eq!(reasons(&committed), [Reason::TemplateReported]);
}

#[test]
fn restart_extends_deadlines_due_within_the_grace_once_with_a_spread() {
    let mut h = Harness::new();
    for n in 0..20 {
        h.provision(&format!("agent-{n}"));
    }
    h.provision("online");
    h.check_in("online");
    h.now = t(100);
    h.provision("soon"); // deadline 130: due within the grace window
    h.now = t(119);
    h.provision("later"); // deadline 149: after it

    let state = StoredState {
        agents: h.engine.agents().cloned().collect(),
        gateways: h.engine.gateways().cloned().collect(),
        pending_retires: vec![],
        tombstones: vec![],
        revision: h.engine.revision(),
        rollouts: vec![],
        checkpoint: 0,
        pending_syncs: vec![],
    };
    let grace = Duration::from_secs(10);
    let policy = Policy {
        restart_grace: grace,
        ..alone()
    };
    let restart = t(120);
    let (mut engine, batch) = Engine::restore(policy, state, restart);
    let committed = engine.commit(batch);

    assert_eq!(
        committed.events.len(),
        21,
        "20 passed deadlines and one due soon"
    );
    assert!(
        committed
            .events
            .iter()
            .all(|e| e.reason == Reason::RestartGrace)
    );
    assert!(committed.effects.is_empty(), "no wake at start");
    let mut deadlines = std::collections::BTreeSet::new();
    for n in 0..20 {
        let agent = engine.agent(&id(&format!("agent-{n}"))).unwrap();
        let deadline = agent.checkin_deadline_at.unwrap();
        assert!(deadline >= restart.plus(grace) && deadline <= restart.plus(grace * 2));
        assert_eq!(agent.wake_attempts, 1, "attempts survive the restart");
        deadlines.insert(deadline);
    }
    assert!(deadlines.len() > 10, "spread out, not all at once");
    let soon = engine
        .agent(&id("soon"))
        .unwrap()
        .checkin_deadline_at
        .unwrap();
    assert!(
        soon >= restart.plus(grace),
        "never shortened, never due at once"
    );
    let online = engine.agent(&id("online")).unwrap();
    assert!(
        online.lease_expires_at.unwrap() >= restart.plus(grace),
        "the lease too"
    );
    assert_eq!(engine.dirty_lease_count(), 1, "counted as extended");
    assert_eq!(
        engine.take_dirty_leases().len(),
        1,
        "and it is checkpointed"
    );
    assert_eq!(
        engine.agent(&id("later")).unwrap().checkin_deadline_at,
        Some(t(149)),
        "a deadline beyond the grace window is kept"
    );
    assert_eq!(engine.timer_count(), 23);

    // The gateway's stream comes back to the new process; each extended
    // deadline then runs the normal policy.
    let mut batch = engine.begin(restart);
    assert_eq!(engine.gateway_connected(&mut batch, &gw()), Ok(0));
    engine.commit(batch);
    let mut batch = engine.begin(restart.plus(grace * 2));
    engine.fire_due(&mut batch);
    let fired = engine.commit(batch);
    assert_eq!(wakes(&fired).len(), 21, "the twenty and the soon one");
    assert!(wakes(&fired).iter().all(|(_, _, attempt)| *attempt == 2));
}

#[test]
fn restored_leases_keep_any_promise_a_heartbeat_not_checkpointed_could_have_made() {
    let mut h = Harness::new();
    for name in ["beyond-the-grace", "far-ahead"] {
        h.provision(name);
        h.check_in(name);
    }
    let restart = t(1000);
    let policy = Policy {
        restart_grace: Duration::from_secs(10),
        lease_ttl: Duration::from_secs(30),
        ..Policy::default()
    };
    let mut state = StoredState {
        agents: h.engine.agents().cloned().collect(),
        gateways: h.engine.gateways().cloned().collect(),
        revision: h.engine.revision(),
        ..StoredState::default()
    };
    for agent in &mut state.agents {
        // Checkpointed 15 s ahead: past the grace window, but a heartbeat the
        // previous leader answered just before `restart` promised 30 s.
        agent.lease_expires_at = Some(match agent.id.as_str() {
            "beyond-the-grace" => restart.plus(Duration::from_secs(15)),
            _ => restart.plus(Duration::from_secs(300)),
        });
    }
    let (engine, _) = Engine::restore(policy.clone(), state, restart);

    let lease = |name: &str| engine.agent(&id(name)).unwrap().lease_expires_at.unwrap();
    assert!(lease("beyond-the-grace") >= restart.plus(policy.lease_ttl));
    assert!(lease("beyond-the-grace") <= restart.plus(policy.lease_ttl + policy.restart_grace));
    assert_eq!(
        lease("far-ahead"),
        restart.plus(Duration::from_secs(300)),
        "kept"
    );
    assert_eq!(engine.dirty_lease_count(), 1, "only the extended one");
}

#[test]
fn a_deadline_for_an_agent_whose_gateway_is_gone_ends_escalation() {
    let mut h = Harness::new();
    h.provision("a");
    let state = StoredState {
        agents: h.engine.agents().cloned().collect(),
        gateways: vec![],
        pending_retires: vec![],
        tombstones: vec![],
        revision: h.engine.revision(),
        rollouts: vec![],
        checkpoint: 0,
        pending_syncs: vec![],
    };
    let (mut engine, batch) = Engine::restore(Policy::default(), state, t(1));
    engine.commit(batch);
    let mut batch = engine.begin(t(100));
    engine.fire_due(&mut batch);
    let fired = engine.commit(batch);
    assert_eq!(notes(&fired)[0], NoteKind::SkipMissingGateway);
    let agent = engine.agent(&id("a")).unwrap();
    assert_eq!(agent.status, Status::Offline);
    assert_eq!(
        agent.last_provision_error.as_deref(),
        Some("gateway gw-1 is not registered")
    );
}

#[test]
fn list_filters_and_pages_in_id_order() {
    let mut h = Harness::new();
    for n in 0..7 {
        h.provision(&format!("a{n}"));
    }
    h.check_in("a3");
    let all = AgentFilter::default();
    let (page, next) = h.engine.list(&all, None, 3);
    assert_eq!(
        page.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["a0", "a1", "a2"]
    );
    let (page, next) = h.engine.list(&all, next.as_ref(), 3);
    assert_eq!(page.len(), 3);
    let (page, next) = h.engine.list(&all, next.as_ref(), 3);
    assert_eq!(page.len(), 1);
    assert_eq!(next, None);

    let online = AgentFilter {
        statuses: vec![Status::Online],
        ..AgentFilter::default()
    };
    let (page, _) = h.engine.list(&online, None, 100);
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, id("a3"));
}

#[test]
fn a_status_filter_sees_agents_leave_the_status() {
    let mut h = Harness::new();
    h.provision("a");
    let committed = h.check_in("a");
    let provisioning = AgentFilter {
        statuses: vec![Status::Provisioning],
        ..AgentFilter::default()
    };
    assert!(provisioning.matches_event(&committed.events[0]));
    let other_gateway = AgentFilter {
        gateway_id: Some(GatewayId::parse("gw-2").unwrap()),
        statuses: vec![Status::Provisioning],
        ..AgentFilter::default()
    };
    assert!(!other_gateway.matches_event(&committed.events[0]));
}

#[test]
fn a_board_filter_sees_agents_moved_off_the_board() {
    let mut h = Harness::new();
    h.provision("a");
    let mut spec = h.spec("a", false);
    spec.board_id = Some(BoardId::parse("board-2").unwrap());
    let minted = h.new_token();
    let (_, committed) = h.run(|e, b| e.provision(b, spec, Some(minted)));
    let old_board = AgentFilter {
        board_id: Some(BoardId::parse("board-1").unwrap()),
        ..AgentFilter::default()
    };
    let event = &committed.events[0];
    assert_eq!(
        event.agent.board_id,
        Some(BoardId::parse("board-2").unwrap())
    );
    assert!(
        old_board.matches_event(event),
        "the watcher of board-1 learns it left"
    );
    let elsewhere = AgentFilter {
        board_id: Some(BoardId::parse("board-3").unwrap()),
        ..AgentFilter::default()
    };
    assert!(!elsewhere.matches_event(event));
}

#[test]
fn checkpoints_carry_only_renewed_online_leases() {
    let mut h = Harness::new();
    h.provision("a");
    h.provision("b");
    h.check_in("a");
    let token = h.agent("a").token_hash;
    h.now = t(5);
    h.engine.renew_lease(&token, None, h.now);
    let leases = h.engine.take_dirty_leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].last_seen_at, t(5));
    assert!(h.engine.take_dirty_leases().is_empty());
    h.engine.return_dirty_leases(leases);
    assert_eq!(h.engine.take_dirty_leases().len(), 1);
}

#[test]
fn a_checkpoint_reads_its_leases_as_they_are_when_it_reads_them() {
    // The checkpoint takes the ids under one lock and reads the leases
    // later, a slice per lock: what changed meanwhile is what it writes.
    let mut h = Harness::new();
    for agent in ["a", "b", "c"] {
        h.provision(agent);
        h.check_in(agent);
    }
    h.now = t(5);
    for agent in ["c", "a", "b"] {
        let token = h.agent(agent).token_hash;
        assert!(matches!(
            h.engine.renew_lease(&token, None, h.now),
            Renewal::Renewed(_)
        ));
    }
    let ids = h.engine.take_dirty_lease_ids();
    assert_eq!(ids.len(), 3);
    assert_eq!(h.engine.dirty_lease_count(), 0, "taken");

    h.now = t(7);
    let token = h.agent("a").token_hash;
    h.engine.renew_lease(&token, None, h.now);
    h.run(|engine, batch| engine.delete(batch, &id("b")).unwrap());

    let mut ids = ids;
    ids.sort_unstable();
    let mut leases = Vec::new();
    h.engine.push_leases_of(&ids[..1], &mut leases);
    h.engine.push_leases_of(&ids[1..], &mut leases);
    let read: Vec<(String, Timestamp)> = leases
        .iter()
        .map(|lease| (lease.agent_id.to_string(), lease.last_seen_at))
        .collect();
    assert_eq!(
        read,
        [("a".to_owned(), t(7)), ("c".to_owned(), t(5))],
        "a as renewed since, b deleted, in id order"
    );
    assert_eq!(h.engine.dirty_lease_count(), 1, "a's renewal is due again");
}

#[test]
fn leases_a_takeover_extended_are_checkpointed_a_slice_at_a_time() {
    let mut h = Harness::new();
    h.provision("template");
    h.check_in("template");
    let template = h.agent("template");
    let count = EXTENDED_LEASES_PER_CHECKPOINT + 10;
    let token_of = |n: usize| {
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&(n as u64).to_le_bytes());
        TokenHash(hash)
    };
    let agents = (0..count)
        .map(|n| Agent {
            id: id(&format!("agent-{n:05}")),
            token_hash: token_of(n),
            ..template.clone()
        })
        .collect();
    let state = StoredState {
        agents,
        gateways: h.engine.gateways().cloned().collect(),
        revision: h.engine.revision(),
        ..StoredState::default()
    };
    // Every lease ran out long ago: the takeover extends them all.
    let takeover = t(1000);
    let (mut engine, grace) = Engine::restore(Policy::default(), state, takeover);
    engine.commit(grace);
    assert_eq!(
        engine.dirty_lease_count(),
        count,
        "all extended, none written"
    );
    let promised = takeover.plus(Policy::default().lease_ttl);
    assert!(
        engine
            .agents()
            .all(|a| a.lease_expires_at >= Some(promised))
    );

    // A heartbeat meanwhile is written with the next checkpoint, whichever
    // slice its agent's extension falls in (ids are taken from the end).
    let renewed = engine.renew_lease(&token_of(0), None, takeover.plus(Duration::from_secs(1)));
    assert!(matches!(renewed, Renewal::Renewed(_)));
    let first = engine.take_dirty_leases();
    assert_eq!(first.len(), EXTENDED_LEASES_PER_CHECKPOINT + 1);
    assert!(first.iter().any(|l| l.agent_id == id("agent-00000")));
    let second = engine.take_dirty_leases();
    assert_eq!(second.len(), 10, "the rest of the extensions");
    assert!(engine.take_dirty_leases().is_empty());
    assert_eq!(engine.dirty_lease_count(), 0);
}

#[test]
fn a_followers_copy_keeps_its_owed_wakes_in_step_with_the_events() {
    let mut h = Harness::new();
    let state = StoredState {
        gateways: h.engine.gateways().cloned().collect(),
        revision: h.engine.revision(),
        ..StoredState::default()
    };
    let mut copy = Engine::from_stored(Policy::default(), state);
    let follow = |committed: Committed, copy: &mut Engine| {
        committed.events.iter().for_each(|e| copy.apply_event(e));
    };
    // The gateway is away: a provision's wake is held, and owed.
    let (_, away) = h.run(|e, b| e.gateway_disconnected(b, &gw(), "test"));
    follow(away, &mut copy);
    let (_, held) = h.provision("a");
    follow(held, &mut copy);
    assert_eq!(h.engine.wakes_owed(), [(gw(), 1)]);
    assert_eq!(
        copy.wakes_owed(),
        h.engine.wakes_owed(),
        "a takeover in place owes it too"
    );
    let (_, deleted) = h.run(|e, b| e.delete(b, &id("a")));
    follow(deleted, &mut copy);
    assert_eq!(copy.wakes_owed(), [(gw(), 0)]);
}

#[test]
fn adopting_the_leases_an_engine_already_has_writes_nothing_again() {
    let mut h = Harness::new();
    h.provision("a");
    h.check_in("a");
    let token = h.agent("a").token_hash;
    h.engine.renew_lease(&token, None, t(5));
    let same = h.engine.online_leases();
    h.engine.take_dirty_leases();
    h.engine.adopt_leases(same.clone());
    assert_eq!(h.engine.dirty_lease_count(), 0);
    let mut newer = same;
    newer[0].lease_expires_at = newer[0].lease_expires_at.plus(Duration::from_secs(1));
    h.engine.adopt_leases(newer);
    assert_eq!(h.engine.dirty_lease_count(), 1);
}

#[test]
fn re_registering_a_gateway_without_a_name_keeps_its_name() {
    let mut h = Harness::new();
    let register = |name: Option<&str>| GatewaySpec {
        gateway_id: gw(),
        name: name.map(str::to_owned),
        rotate_token: false,
    };
    let (kept, _) = h.run(|e, b| e.register_gateway(b, register(None), token(2)));
    assert!(!kept.created && !kept.token_minted);
    assert_eq!(h.engine.gateway(&gw()).unwrap().name, "gateway one");

    h.run(|e, b| e.register_gateway(b, register(Some("renamed")), token(3)));
    assert_eq!(h.engine.gateway(&gw()).unwrap().name, "renamed");

    let other = GatewayId::parse("gw-2").unwrap();
    let spec = GatewaySpec {
        gateway_id: other.clone(),
        name: None,
        rotate_token: false,
    };
    h.run(|e, b| e.register_gateway(b, spec, token(4)));
    assert_eq!(h.engine.gateway(&other).unwrap().name, "gw-2");
}

#[test]
fn a_check_in_storm_is_spread_over_batches_and_still_wins_every_deadline() {
    let mut h = Harness::new();
    let names: Vec<String> = (0..10).map(|n| format!("a{n}")).collect();
    for name in &names {
        h.provision(name);
    }
    // Every agent's heartbeat arrives just before its deadline; none of
    // their commands has reached the writer yet.
    for name in &names {
        let token = h.agent(name).token_hash;
        let renewal = h.engine.renew_lease(&token, None, t(29));
        assert_eq!(renewal, Renewal::NeedsCommit(id(name)));
    }

    h.now = t(30);
    let mut batches = 0;
    while h.engine.next_timer_at().is_some_and(|at| at <= h.now) {
        let (_, committed) = h.run(|e, b| e.fire_due_at_most(b, 4));
        assert!(
            committed.events.len() <= 4,
            "a batch stays within its limit"
        );
        assert!(wakes(&committed).is_empty(), "no re-wake: {committed:?}");
        batches += 1;
        assert!(batches < 10, "progress every batch");
    }
    for name in &names {
        let agent = h.agent(name);
        assert_eq!(agent.status, Status::Online, "{name}");
        assert_eq!(agent.last_seen_at, Some(t(29)), "{name}: judged by arrival");
    }
}

mod brake;
mod drift;
mod gateway;
mod heartbeat_budget;
mod rollout;
mod rounds;
mod silence;
mod wake_rate;

#[test]
fn only_a_renewal_copies_an_agent_a_snapshot_still_holds() {
    let mut h = Harness::new();
    h.provision("a");
    let token = h.agent("a").token_hash;
    let held = h.engine.shared_agent(&id("a")).unwrap().clone();
    let still_shared = |h: &Harness| Arc::ptr_eq(&held, h.engine.shared_agent(&id("a")).unwrap());

    assert_eq!(
        h.engine.renew_lease(&token, None, h.now),
        Renewal::NeedsCommit(id("a"))
    );
    assert!(
        still_shared(&h),
        "a committing heartbeat changes nothing yet"
    );
    h.check_in("a");

    let held = h.engine.shared_agent(&id("a")).unwrap().clone();
    let refused = h
        .engine
        .renew_lease_admitted(&token, None, h.now, |_, _| Err("throttled"));
    assert_eq!(refused, Err("throttled"));
    assert!(
        Arc::ptr_eq(&held, h.engine.shared_agent(&id("a")).unwrap()),
        "a refused heartbeat changes nothing"
    );

    h.now = t(5);
    assert!(matches!(
        h.engine.renew_lease(&token, None, h.now),
        Renewal::Renewed(_)
    ));
    assert_eq!(
        held.lease_expires_at,
        Some(t(30)),
        "the snapshot keeps its copy"
    );
    assert_eq!(h.agent("a").lease_expires_at, Some(t(35)));
}
