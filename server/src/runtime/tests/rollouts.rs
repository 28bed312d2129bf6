//! Rollouts on paused time: waves through the real writer and a gateway
//! session whose agents pick up the new template, keep the old one, or
//! crash on it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::engine::rollout::{Limit, Rollout, RolloutSpec, RolloutState, Selection};
use crate::engine::{AgentFilter, Reason};

const QUIET: Duration = Duration::from_secs(600);

/// How a simulated agent takes a wake with a new template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plays {
    /// Checks in 2 s later reporting the woken version.
    PicksUp,
    /// Checks in 2 s later still reporting v1.
    KeepsOld,
    /// Never checks in.
    Crashes,
}

fn settings() -> Settings {
    let mut settings = fast_settings();
    // Long leases: agents that are not woken stay online untouched, so
    // only what the rollout does shows.
    settings.policy.lease_ttl = Duration::from_secs(24 * 3600);
    settings
}

fn name(n: usize) -> String {
    format!("agent-{n:03}")
}

fn on_gateway(in_flight: Limit, budget: Limit) -> RolloutSpec {
    RolloutSpec {
        template_version: "v2".into(),
        selection: Selection::Fleet {
            gateway_id: Some(gateway()),
            board_id: None,
        },
        max_in_flight: in_flight,
        failure_budget: budget,
    }
}

/// A gateway with `n` agents online on v1; their tokens by name.
struct OnlineFleet {
    session: GatewaySession,
    commands: mpsc::Receiver<Outbound>,
    tokens: BTreeMap<String, String>,
}

async fn online_fleet(f: &Fixture, n: usize) -> OnlineFleet {
    let (session, mut commands) = f.connect();
    let mut tokens = BTreeMap::new();
    for i in 0..n {
        let token = f.provision(&name(i)).await.token.unwrap();
        f.lifecycle
            .heartbeat(&token, Some("v1".into()))
            .await
            .unwrap();
        tokens.insert(name(i), token);
    }
    for _ in 0..n {
        let (command_id, _) = next_wake(&mut commands, QUIET).await.unwrap();
        session.acknowledge(command_id, Ok(())).unwrap();
    }
    OnlineFleet {
        session,
        commands,
        tokens,
    }
}

#[derive(Debug, Default)]
struct Observed {
    /// Wakes with the new version, per agent.
    wakes: BTreeMap<String, usize>,
    /// The most agents UPDATING seen when a wake arrived.
    max_updating: usize,
}

fn updating(f: &Fixture) -> usize {
    let filter = AgentFilter {
        statuses: vec![Status::Updating],
        ..AgentFilter::default()
    };
    f.lifecycle.list(&filter, None, 10_000).0.len()
}

impl OnlineFleet {
    /// Plays the gateway: acknowledges every wake and has the agent answer
    /// as `plays` says, until `limit` wakes or 10 quiet minutes.
    async fn play(&mut self, f: &Fixture, limit: usize, plays: impl Fn(&str) -> Plays) -> Observed {
        let mut observed = Observed::default();
        let mut seen = 0;
        while seen < limit {
            let Some((command_id, order)) = next_wake(&mut self.commands, QUIET).await else {
                break;
            };
            seen += 1;
            self.session.acknowledge(command_id, Ok(())).unwrap();
            let agent = order.agent_id.to_string();
            *observed.wakes.entry(agent.clone()).or_default() += 1;
            observed.max_updating = observed.max_updating.max(updating(f));
            let reported = match plays(&agent) {
                Plays::PicksUp => order.template_version.clone(),
                Plays::KeepsOld => "v1".to_owned(),
                Plays::Crashes => continue,
            };
            let token = self.tokens[&agent].clone();
            let lifecycle = f.lifecycle.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                lifecycle.heartbeat(&token, Some(reported)).await.unwrap();
            });
        }
        observed
    }
}

/// Every progress item of a rollout, collected until it ends.
fn progress(f: &Fixture, rollout: &Rollout) -> tokio::task::JoinHandle<Vec<Rollout>> {
    let stream = f.lifecycle.watch_rollout(&rollout.id).unwrap();
    tokio::spawn(async move { stream.map(|item| item.unwrap()).collect().await })
}

#[tokio::test(start_paused = true)]
async fn a_rollout_of_100_agents_with_10_in_flight_completes_in_waves() {
    let f = start(settings()).await;
    let mut fleet = online_fleet(&f, 100).await;
    let rollout = f
        .lifecycle
        .start_rollout(on_gateway(Limit::Count(10), Limit::Count(0)))
        .await
        .unwrap();
    let items = progress(&f, &rollout);

    let observed = fleet.play(&f, usize::MAX, |_| Plays::PicksUp).await;

    let rollout = f.lifecycle.get_rollout(&rollout.id).unwrap();
    assert_eq!(rollout.state, RolloutState::Completed);
    assert_eq!(rollout.counts().done, 100);
    assert_eq!(rollout.waves.len(), 10);
    for (wave, counts) in rollout.wave_counts().iter().enumerate() {
        assert_eq!(counts.done, 10, "wave {}", wave + 1);
    }
    // Every agent woken once with v2, never more than 10 awaiting at once.
    assert_eq!(observed.wakes.len(), 100);
    assert!(observed.wakes.values().all(|&n| n == 1));
    assert_eq!(observed.max_updating, 10);
    let items = items.await.unwrap();
    assert!(items.iter().all(|r| r.counts().in_flight <= 10));
    assert_eq!(items.last().unwrap().state, RolloutState::Completed);
    assert!(items.len() > 10, "progress at every wave: {}", items.len());

    let agent = f.agent(&name(57));
    assert_eq!(agent.status, Status::Online);
    assert_eq!(agent.reported_template_version, "v2");
    assert!(!agent.drifted());
    let history = f.lifecycle.history(&id(&name(57)), None, 10).await.unwrap();
    let update = history
        .iter()
        .find(|e| e.reason == Reason::RolloutUpdate)
        .expect("the rollout's update in the history");
    assert_eq!(update.rollout_id.as_ref(), Some(&rollout.id));
}

#[tokio::test(start_paused = true)]
async fn a_version_that_makes_30_percent_fail_pauses_at_its_budget_with_the_rest_untouched() {
    let f = start(settings()).await;
    let mut fleet = online_fleet(&f, 100).await;
    let rollout = f
        .lifecycle
        .start_rollout(on_gateway(Limit::Count(10), Limit::Count(5)))
        .await
        .unwrap();
    // 3 of every 10: one keeps reporting v1, two crash on v2.
    let plays = |agent: &str| match agent.as_bytes()[agent.len() - 1] {
        b'0' => Plays::KeepsOld,
        b'1' | b'2' => Plays::Crashes,
        _ => Plays::PicksUp,
    };
    let observed = fleet.play(&f, usize::MAX, plays).await;

    let rollout = f.lifecycle.get_rollout(&rollout.id).unwrap();
    assert_eq!(rollout.state, RolloutState::Paused);
    let reason = rollout.reason.clone().unwrap();
    assert!(
        reason.contains("failure budget spent: 6 of 100 agents failed (budget 5)"),
        "{reason}"
    );
    let counts = rollout.counts();
    assert_eq!((counts.done, counts.failed, counts.pending), (14, 6, 80));
    let failures: Vec<(String, String)> = rollout
        .failures()
        .map(|(agent, _, why, _)| (agent.to_string(), why.to_owned()))
        .collect();
    assert_eq!(failures[0].0, "agent-000");
    assert!(
        failures[0]
            .1
            .contains("still reporting template version \"v1\"")
    );
    assert_eq!(failures[1].0, "agent-001");
    assert!(failures[1].1.contains("no check-in after 3 wake attempts"));
    // The rest untouched: never woken, still desiring v1, at generation 1.
    for n in 20..100 {
        let agent = f.agent(&name(n));
        assert!(!observed.wakes.contains_key(&name(n)), "{}", name(n));
        assert_eq!(agent.desired_template_version, "v1");
        assert_eq!((agent.generation, agent.status), (1, Status::Online));
    }
    // Crashed agents got the policy's three wakes, the others one.
    assert_eq!(observed.wakes[&name(1)], 3);
    assert_eq!(observed.wakes[&name(3)], 1);

    // Resuming needs a budget the failures fit in.
    let refused = f.lifecycle.resume_rollout(rollout.id.clone(), None).await;
    assert!(matches!(
        refused,
        Err(LifecycleError::FailedPrecondition(_))
    ));
    let resumed = f
        .lifecycle
        .resume_rollout(rollout.id.clone(), Some(Limit::Percent(40)))
        .await
        .unwrap();
    assert_eq!(resumed.state, RolloutState::Running);
    assert_eq!(resumed.failure_budget, 40);
    fleet.play(&f, usize::MAX, plays).await;
    let finished = f.lifecycle.get_rollout(&rollout.id).unwrap();
    assert_eq!(finished.state, RolloutState::Completed);
    assert_eq!(finished.counts().failed, 30);
}

#[tokio::test(start_paused = true)]
async fn pause_resume_and_cancel() {
    let f = start(settings()).await;
    let mut fleet = online_fleet(&f, 30).await;
    let rollout = f
        .lifecycle
        .start_rollout(on_gateway(Limit::Percent(34), Limit::Count(0)))
        .await
        .unwrap();
    assert_eq!(rollout.max_in_flight, 11, "34% of 30, rounded up");
    let paused = f.lifecycle.pause_rollout(rollout.id.clone()).await.unwrap();
    assert_eq!(paused.state, RolloutState::Paused);
    // The wave in flight finishes; no new one starts while paused.
    let observed = fleet.play(&f, usize::MAX, |_| Plays::PicksUp).await;
    assert_eq!(observed.wakes.len(), 11);
    let now = f.lifecycle.get_rollout(&rollout.id).unwrap();
    assert_eq!((now.counts().done, now.counts().pending), (11, 19));

    f.lifecycle
        .resume_rollout(rollout.id.clone(), None)
        .await
        .unwrap();
    let observed = fleet.play(&f, 11, |_| Plays::PicksUp).await;
    assert_eq!(observed.wakes.len(), 11, "the second wave");
    let cancelled = f
        .lifecycle
        .cancel_rollout(rollout.id.clone())
        .await
        .unwrap();
    assert_eq!(cancelled.state, RolloutState::Cancelled);
    // Nothing after the cancel: no third wave, the rest untouched.
    let observed = fleet.play(&f, usize::MAX, |_| Plays::PicksUp).await;
    assert!(observed.wakes.is_empty(), "{observed:?}");
    let after = f.lifecycle.get_rollout(&rollout.id).unwrap();
    assert_eq!(after.counts().pending, 8);
    assert_eq!(f.agent(&name(29)).desired_template_version, "v1");
    // A cancelled rollout is over: no resume, and its agents are free.
    let again = f.lifecycle.resume_rollout(rollout.id.clone(), None).await;
    assert!(matches!(again, Err(LifecycleError::FailedPrecondition(_))));
    let next = f
        .lifecycle
        .start_rollout(on_gateway(Limit::Count(5), Limit::Count(0)))
        .await
        .unwrap();
    assert_eq!(next.state, RolloutState::Running);
    // ...but not to a second rollout at once.
    let overlap = f
        .lifecycle
        .start_rollout(on_gateway(Limit::Count(5), Limit::Count(0)))
        .await;
    match overlap {
        Err(LifecycleError::FailedPrecondition(message)) => {
            assert!(
                message.contains(&format!("already in active rollout {}", next.id)),
                "{message}"
            )
        }
        other => panic!("expected an overlap, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_restart_mid_rollout_resumes_it_without_waking_done_agents_again() {
    let store = Arc::new(MemoryStore::new());
    let first = start_on(store.clone(), settings()).await;
    let mut fleet = online_fleet(&first, 30).await;
    let rollout = first
        .lifecycle
        .start_rollout(on_gateway(Limit::Count(10), Limit::Count(0)))
        .await
        .unwrap();
    // Wave 1 checks in; wave 2 is woken and the service stops before any
    // of it checks in.
    let wave_one = fleet.play(&first, 10, |_| Plays::PicksUp).await;
    let wave_two = fleet.play(&first, 10, |_| Plays::Crashes).await;
    assert!(
        wave_one
            .wakes
            .keys()
            .all(|a| !wave_two.wakes.contains_key(a))
    );
    drop(fleet.session);
    first.lifecycle.stop().await;

    let second = start_at(store.clone(), settings(), first.clock.now()).await;
    let restored = second.lifecycle.get_rollout(&rollout.id).unwrap();
    assert_eq!(restored.state, RolloutState::Running);
    let counts = restored.counts();
    assert_eq!(
        (counts.done, counts.in_flight, counts.pending),
        (10, 10, 10)
    );
    let (session, commands) = second.connect();
    let mut fleet = OnlineFleet {
        session,
        commands,
        tokens: fleet.tokens,
    };
    // Wave 2's agents got their wake before the restart: they check in now.
    for agent in wave_two.wakes.keys() {
        second
            .lifecycle
            .heartbeat(&fleet.tokens[agent], Some("v2".into()))
            .await
            .unwrap();
    }
    let after = fleet.play(&second, usize::MAX, |_| Plays::PicksUp).await;

    let finished = second.lifecycle.get_rollout(&rollout.id).unwrap();
    assert_eq!(finished.state, RolloutState::Completed);
    assert_eq!(finished.counts().done, 30);
    assert_eq!(finished.waves.len(), 3);
    // After the restart only wave 3 was woken: nobody done was woken again.
    assert_eq!(after.wakes.len(), 10);
    for agent in after.wakes.keys() {
        assert!(!wave_one.wakes.contains_key(agent) && !wave_two.wakes.contains_key(agent));
    }
}

#[tokio::test(start_paused = true)]
async fn a_failover_mid_rollout_resumes_it_on_the_new_leader_without_waking_done_agents_again() {
    let first = start(settings()).await;
    let b_store = Arc::new(first.store.replica());
    let b = Lifecycle::start(b_store.clone(), settings(), first.clock)
        .await
        .expect("start a follower");
    let mut fleet = online_fleet(&first, 30).await;
    let rollout = first
        .lifecycle
        .start_rollout(on_gateway(Limit::Count(10), Limit::Count(0)))
        .await
        .unwrap();
    // Wave 1 checks in; wave 2 is woken, then the leader is cut off from
    // the database before any of it checks in.
    let wave_one = fleet.play(&first, 10, |_| Plays::PicksUp).await;
    let wave_two = fleet.play(&first, 10, |_| Plays::Crashes).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.store.set_lease_cut_off(true);
    let mut waited = 0;
    while b.role() != ReplicaRole::Leader && waited < 200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(b.role(), ReplicaRole::Leader);
    assert!(
        b.render_metrics()
            .contains("mission_control_takeovers_total{from=\"warm_copy\"} 1"),
        "taken over from the warm copy"
    );
    drop(fleet.session);

    let second = Fixture {
        lifecycle: b,
        store: b_store,
        clock: first.clock,
        gateway_token: first.gateway_token.clone(),
    };
    let taken_over = second.lifecycle.get_rollout(&rollout.id).unwrap();
    assert_eq!(taken_over.state, RolloutState::Running);
    let counts = taken_over.counts();
    assert_eq!(
        (counts.done, counts.in_flight, counts.pending),
        (10, 10, 10)
    );
    let (session, commands) = second.connect();
    let mut fleet = OnlineFleet {
        session,
        commands,
        tokens: fleet.tokens,
    };
    // Wave 2's agents got their wake from the old leader: they check in
    // with the new one.
    for agent in wave_two.wakes.keys() {
        second
            .lifecycle
            .heartbeat(&fleet.tokens[agent], Some("v2".into()))
            .await
            .unwrap();
    }
    let after = fleet.play(&second, usize::MAX, |_| Plays::PicksUp).await;

    let finished = second.lifecycle.get_rollout(&rollout.id).unwrap();
    assert_eq!(finished.state, RolloutState::Completed);
    assert_eq!(finished.counts().done, 30);
    assert_eq!(finished.waves.len(), 3);
    // The new leader woke only wave 3: nobody done was woken again.
    assert_eq!(after.wakes.len(), 10);
    for agent in after.wakes.keys() {
        assert!(!wave_one.wakes.contains_key(agent) && !wave_two.wakes.contains_key(agent));
    }
}
