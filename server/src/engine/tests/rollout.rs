//! Rollouts in the engine: waves, verdicts, the failure budget, and the
//! errors a bad request gets.

use super::*;
use crate::engine::rollout::{Limit, Progress, RolloutError, RolloutSpec, RolloutState, Selection};

fn rid(s: &str) -> RolloutId {
    RolloutId::parse(s).unwrap()
}

fn spec(in_flight: Limit, budget: Limit) -> RolloutSpec {
    RolloutSpec {
        template_version: "v2".into(),
        selection: Selection::Fleet {
            gateway_id: Some(gw()),
            board_id: None,
        },
        max_in_flight: in_flight,
        failure_budget: budget,
    }
}

impl Harness {
    fn fleet(&mut self, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("a{i:02}")).collect();
        for name in &names {
            self.provision(name);
            self.report(name, "v1");
        }
        names
    }

    /// A heartbeat reporting `version`, then the rollout step, as the
    /// runtime's batch runs it.
    fn report(&mut self, agent: &str, version: &str) -> Committed {
        let hash = self.agent(agent).token_hash;
        let (result, committed) = self.run(|e, b| {
            let result = e.check_in(b, &id(agent), &hash, Some(version.to_owned()));
            e.advance_rollouts(b);
            result
        });
        result.unwrap();
        committed
    }

    fn start(&mut self, spec: RolloutSpec) -> Result<(Rollout, Committed), RolloutError> {
        let (result, committed) = self.run(|e, b| e.start_rollout(b, rid("r1"), spec));
        result.map(|rollout| (rollout, committed))
    }

    fn rollout(&self) -> Rollout {
        self.engine.rollout(&rid("r1")).unwrap().clone()
    }

    fn in_flight(&self) -> Vec<String> {
        self.rollout()
            .agents
            .iter()
            .filter(|a| matches!(a.progress, Progress::InFlight { .. }))
            .map(|a| a.agent_id.to_string())
            .collect()
    }
}

use crate::engine::rollout::Rollout;

#[test]
fn waves_start_when_the_last_one_is_done_and_the_rollout_completes() {
    let mut h = Harness::new();
    h.fleet(5);
    let (rollout, committed) = h.start(spec(Limit::Count(2), Limit::Count(0))).unwrap();
    assert_eq!(rollout.state, RolloutState::Running);
    assert_eq!(rollout.max_in_flight, 2);
    assert_eq!(h.in_flight(), ["a00", "a01"]);
    // Each is re-provisioned: UPDATING, woken, the event names the rollout.
    assert_eq!(wakes(&committed).len(), 2);
    assert!(
        committed
            .events
            .iter()
            .all(|e| e.reason == Reason::RolloutUpdate
                && e.rollout_id == Some(rid("r1"))
                && e.agent.status == Status::Updating
                && e.agent.desired_template_version == "v2")
    );

    // One of the wave done: the next wave waits for the other.
    let committed = h.report("a00", "v2");
    assert!(wakes(&committed).is_empty());
    assert_eq!(h.in_flight(), ["a01"]);
    let committed = h.report("a01", "v2");
    assert_eq!(wakes(&committed).len(), 2);
    assert_eq!(h.in_flight(), ["a02", "a03"]);
    h.report("a02", "v2");
    h.report("a03", "v2");
    h.report("a04", "v2");
    let rollout = h.rollout();
    assert_eq!(rollout.state, RolloutState::Completed);
    assert_eq!(rollout.counts().done, 5);
    assert_eq!(rollout.waves.len(), 3);
    assert!(rollout.waves.iter().all(|w| w.finished_at.is_some()));
    // Finished: its agents are free for another rollout.
    let mut again = spec(Limit::Count(1), Limit::Count(0));
    again.template_version = "v3".into();
    let (result, _) = h.run(|e, b| e.start_rollout(b, rid("r2"), again));
    assert!(result.is_ok());
}

#[test]
fn an_agent_that_checks_in_with_the_old_version_or_goes_offline_fails_and_the_budget_pauses_it() {
    let mut h = Harness::new();
    h.fleet(6);
    h.start(spec(Limit::Count(2), Limit::Count(1))).unwrap();
    let committed = h.report("a00", "v1");
    assert!(wakes(&committed).is_empty());
    // a01 never checks in: three wakes, then OFFLINE, a failure.
    h.advance_to(t(30));
    h.advance_to(t(60));
    let committed = h.advance_to(t(90));
    assert_eq!(h.agent("a01").status, Status::Offline);
    // 2 failures > budget 1: paused, no new wave, the rest untouched.
    assert!(wakes(&committed).is_empty());
    let rollout = h.rollout();
    assert_eq!(rollout.state, RolloutState::Paused);
    let reason = rollout.reason.clone().unwrap();
    assert!(reason.contains("failure budget spent: 2 of 6"), "{reason}");
    let failures: Vec<(String, String)> = rollout
        .failures()
        .map(|(a, _, why, _)| (a.to_string(), why.to_owned()))
        .collect();
    assert_eq!(failures[0].0, "a00");
    assert!(
        failures[0]
            .1
            .contains("still reporting template version \"v1\"")
    );
    assert_eq!(failures[1].0, "a01");
    assert!(failures[1].1.contains("no check-in after 3 wake attempts"));
    // (Their leases lapsed meanwhile, unrenewed here: only the rollout's
    // marks are checked.)
    for name in ["a02", "a03", "a04", "a05"] {
        assert_eq!(h.agent(name).desired_template_version, "v1", "{name}");
        assert_eq!(h.agent(name).generation, 1, "{name}: never re-provisioned");
    }

    // Resume is refused while failures exceed the budget; a larger one works.
    let (refused, _) = h.run(|e, b| e.resume_rollout(b, &rid("r1"), None));
    assert!(matches!(refused, Err(RolloutError::InvalidState(_))));
    let (resumed, committed) =
        h.run(|e, b| e.resume_rollout(b, &rid("r1"), Some(Limit::Percent(50))));
    assert_eq!(resumed.unwrap().state, RolloutState::Running);
    assert_eq!(wakes(&committed).len(), 2);
}

#[test]
fn pause_stops_new_waves_and_cancel_ends_the_rollout() {
    let mut h = Harness::new();
    h.fleet(4);
    h.start(spec(Limit::Count(1), Limit::Count(0))).unwrap();
    h.run(|e, b| e.pause_rollout(b, &rid("r1"))).0.unwrap();
    // Still judged while paused, but nothing new starts.
    let committed = h.report("a00", "v2");
    assert!(wakes(&committed).is_empty());
    assert_eq!(h.rollout().counts().done, 1);
    assert_eq!(h.rollout().state, RolloutState::Paused);

    let (_, committed) = h.run(|e, b| e.resume_rollout(b, &rid("r1"), None));
    assert_eq!(wakes(&committed).len(), 1);
    let cancelled = h.run(|e, b| e.cancel_rollout(b, &rid("r1"))).0.unwrap();
    assert_eq!(cancelled.state, RolloutState::Cancelled);
    // No longer judged, and nothing more starts.
    let committed = h.report("a01", "v2");
    assert!(wakes(&committed).is_empty());
    assert_eq!(h.rollout().counts().pending, 2);
    let (again, _) = h.run(|e, b| e.pause_rollout(b, &rid("r1")));
    assert!(matches!(again, Err(RolloutError::InvalidState(_))));
}

#[test]
fn bad_selections_and_overlaps_are_refused() {
    let mut h = Harness::new();
    h.fleet(3);
    let with = |selection| RolloutSpec {
        selection,
        ..spec(Limit::Count(1), Limit::Count(0))
    };
    let gw2 = GatewayId::parse("gw-2").unwrap();
    let refused = |h: &mut Harness, s: RolloutSpec| h.start(s).unwrap_err();
    assert_eq!(
        refused(
            &mut h,
            with(Selection::Fleet {
                gateway_id: Some(gw2.clone()),
                board_id: None
            })
        ),
        RolloutError::UnknownGateway(gw2)
    );
    let nowhere = BoardId::parse("nowhere").unwrap();
    assert_eq!(
        refused(
            &mut h,
            with(Selection::Fleet {
                gateway_id: None,
                board_id: Some(nowhere.clone())
            })
        ),
        RolloutError::UnknownBoard(nowhere)
    );
    assert_eq!(
        refused(
            &mut h,
            with(Selection::Agents(vec![id("a00"), id("ghost")]))
        ),
        RolloutError::UnknownAgent(id("ghost"))
    );
    assert_eq!(
        refused(&mut h, with(Selection::Agents(vec![]))),
        RolloutError::EmptySelection
    );

    h.start(with(Selection::Agents(vec![id("a01"), id("a02")])))
        .unwrap();
    let (overlap, _) = h.run(|e, b| {
        e.start_rollout(
            b,
            rid("r2"),
            with(Selection::Fleet {
                gateway_id: Some(gw()),
                board_id: None,
            }),
        )
    });
    assert_eq!(
        overlap.unwrap_err(),
        RolloutError::Overlap {
            rollout: rid("r1"),
            example: id("a01"),
            count: 2
        }
    );
    // Agents outside it may roll out meanwhile.
    let (other, _) =
        h.run(|e, b| e.start_rollout(b, rid("r3"), with(Selection::Agents(vec![id("a00")]))));
    assert!(other.is_ok());
}

#[test]
fn shares_resolve_against_the_selection_and_agents_on_the_version_are_skipped() {
    let mut h = Harness::new();
    h.fleet(10);
    // a00 already desires and runs v2.
    let mut on_v2 = h.spec("a00", false);
    on_v2.template_version = "v2".into();
    let minted = h.new_token();
    h.run(|e, b| e.provision(b, on_v2, Some(minted))).0.unwrap();
    h.report("a00", "v2");

    let (rollout, _) = h
        .start(spec(Limit::Percent(25), Limit::Percent(15)))
        .unwrap();
    assert_eq!(rollout.max_in_flight, 3, "25% of 10, rounded up");
    assert_eq!(rollout.failure_budget, 1, "15% of 10, rounded down");
    assert_eq!(rollout.counts().skipped, 1);
    assert_eq!(h.in_flight(), ["a01", "a02", "a03"]);
    assert_eq!(Limit::Percent(1).resolve(10, true), 1);
    assert_eq!(Limit::Percent(5).resolve(10, false), 0);
}

#[test]
fn a_restored_engine_keeps_rollouts_and_resumes_judging() {
    let mut h = Harness::new();
    h.fleet(3);
    h.start(spec(Limit::Count(1), Limit::Count(0))).unwrap();
    h.report("a00", "v2");
    let state = StoredState {
        agents: h.engine.agents().cloned().collect(),
        gateways: h.engine.gateways().cloned().collect(),
        pending_retires: vec![],
        tombstones: vec![],
        revision: h.engine.revision(),
        rollouts: h.engine.rollouts().into_iter().cloned().collect(),
        checkpoint: 0,
        pending_syncs: vec![],
    };
    let (mut engine, grace) = Engine::restore(Policy::default(), state, h.now);
    engine.commit(grace);
    h.engine = engine;
    // The gateway's stream comes back to the restored engine.
    h.run(|engine, batch| engine.gateway_connected(batch, &gw()).unwrap());
    assert_eq!(h.in_flight(), ["a01"]);
    let committed = h.report("a01", "v2");
    // Generation 2: provisioned, then re-provisioned by the rollout once.
    assert_eq!(wakes(&committed), [("a02".into(), 2, 1)]);
}
