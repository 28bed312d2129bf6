//! Template rollouts and template syncs on a real server and Postgres: a
//! gateway played with the client library's gateway helper (its agents
//! check in with the library's agent client), the progress stream followed
//! as an operator would, and restarts in the middle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use mission_control_client::agent::AgentClient;
use mission_control_client::gateway::GatewayEvent;
use mission_control_client::{
    AgentRole, Error, ListAgentsRequest, ProvisionRequest, Rollout, RolloutState,
    StartRolloutRequest, TransitionReason, WatchAgentRequest,
};

use crate::support::*;

/// What the played gateway saw.
#[derive(Default)]
struct Seen {
    /// Per agent, the template version of each wake.
    wakes: HashMap<String, Vec<String>>,
    /// Each template sync: its command id and version.
    syncs: Vec<(String, String)>,
    /// Woken, and not checked in (see [`Player::check_ins_left`]).
    held: Vec<String>,
}

/// Plays a gateway: acknowledges every command; a woken agent checks in
/// reporting the woken version, or its previous one if it is stubborn about
/// that version; an agent woken with `v9` never checks in.
struct Player {
    seen: Arc<Mutex<Seen>>,
    stubborn: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// Check-ins still allowed for `v2` wakes; past them, agents are held.
    check_ins_left: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    tokens: HashMap<String, String>,
}

impl Player {
    fn start(app: &TestApp, gateway_token: &str, tokens: HashMap<String, String>) -> Self {
        let player = Player {
            seen: Arc::default(),
            stubborn: Arc::default(),
            check_ins_left: Arc::new(AtomicUsize::new(usize::MAX)),
            connections: Arc::default(),
            tokens: tokens.clone(),
        };
        let mut events = app.connect_gateway(gateway_token);
        let (seen, stubborn) = (player.seen.clone(), player.stubborn.clone());
        let (left, connections) = (player.check_ins_left.clone(), player.connections.clone());
        let endpoint = app.endpoint.clone();
        tokio::spawn(async move {
            let mut running: HashMap<String, String> = HashMap::new();
            while let Some(event) = events.recv().await {
                let (command, ack) = match event {
                    GatewayEvent::Wake { command, ack } => (command, ack),
                    GatewayEvent::TemplateSync { command, ack } => {
                        let id = ack.command_id().to_owned();
                        seen.lock()
                            .unwrap()
                            .syncs
                            .push((id, command.template_version));
                        let _ = ack.delivered().await;
                        continue;
                    }
                    GatewayEvent::Connected { .. } => {
                        connections.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    _ => continue,
                };
                let (agent, version) = (command.agent_id.clone(), command.template_version);
                let _ = ack.delivered().await;
                let held = version == "v2"
                    && left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_err();
                {
                    let mut record = seen.lock().unwrap();
                    let wakes = record.wakes.entry(agent.clone()).or_default();
                    wakes.push(version.clone());
                    if held {
                        record.held.push(agent.clone());
                    }
                }
                if held || version == "v9" {
                    continue;
                }
                let keeps_old = stubborn
                    .lock()
                    .unwrap()
                    .get(&version)
                    .is_some_and(|agents| agents.contains(&agent));
                let reported = match keeps_old {
                    true => running.get(&agent).cloned().unwrap_or_default(),
                    false => version,
                };
                running.insert(agent.clone(), reported.clone());
                let mut client = AgentClient::connect(&endpoint, &tokens[&agent])
                    .unwrap()
                    .with_template_version(reported);
                let _ = client.heartbeat().await;
            }
        });
        player
    }

    /// Has `agent` check in now, reporting `version`.
    async fn check_in(&self, endpoint: &str, agent: &str, version: &str) {
        let mut client = AgentClient::connect(endpoint, &self.tokens[agent])
            .unwrap()
            .with_template_version(version);
        within("a check-in", client.heartbeat()).await.unwrap();
    }

    fn wakes_with(&self, version: &str) -> HashMap<String, usize> {
        let seen = self.seen.lock().unwrap();
        seen.wakes
            .iter()
            .map(|(agent, versions)| {
                (
                    agent.clone(),
                    versions.iter().filter(|v| *v == version).count(),
                )
            })
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

/// Registers `gw`, connects the played gateway, provisions `a1..=aN` on
/// board `b1` at `v1` and waits until every one of them reports it.
async fn fleet(app: &TestApp, agents: usize) -> Player {
    let gateway_token = within("registering", app.gateway("gw")).await;
    let mut tokens = HashMap::new();
    for n in 1..=agents {
        let id = format!("a{n}");
        let request = ProvisionRequest::new(&id, "gw", AgentRole::BoardWorker)
            .on_board("b1")
            .with_template_version("v1");
        let reply = within("provisioning", app.operator.provision(request))
            .await
            .unwrap();
        tokens.insert(id, reply.agent_token);
    }
    let player = Player::start(app, &gateway_token, tokens);
    // Provisioned before the gateway connected: woken again now.
    for n in 1..=agents {
        within("a wake", app.operator.wake(&format!("a{n}")))
            .await
            .unwrap();
    }
    let settled = async {
        while app.operator.drift("", "").await.unwrap().drifted > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    within("every agent reports v1", settled).await;
    player
}

/// Long check-in deadlines: agents are judged by what they report, never
/// by time running out on a loaded machine.
fn flags(database_url: &str) -> Vec<String> {
    let mut flags = fast_flags(database_url);
    set_flag(&mut flags, "--checkin-deadline", "5m");
    set_flag(&mut flags, "--lease-ttl", "10m");
    flags
}

fn start(version: &str, max_in_flight: &str, failure_budget: &str) -> StartRolloutRequest {
    StartRolloutRequest {
        template_version: version.into(),
        gateway_id: "gw".into(),
        max_in_flight: max_in_flight.into(),
        failure_budget: failure_budget.into(),
        ..Default::default()
    }
}

/// The rollout's progress stream, read until `done` holds: every item.
async fn follow(app: &TestApp, id: &str, done: impl Fn(&Rollout) -> bool) -> Vec<Rollout> {
    let mut stream = within("watching", app.operator.watch_rollout(id))
        .await
        .unwrap();
    let mut items = Vec::new();
    loop {
        let item = within("a progress item", stream.next())
            .await
            .expect("the stream goes on")
            .expect("no error");
        let finished = done(&item);
        items.push(item);
        if finished {
            return items;
        }
    }
}

fn state(rollout: &Rollout) -> RolloutState {
    RolloutState::try_from(rollout.state).unwrap()
}

fn counts(rollout: &Rollout) -> (u32, u32, u32, u32) {
    let c = rollout.overall.unwrap_or_default();
    (c.done, c.in_flight, c.failed, c.pending)
}

fn is_refused(result: Result<Rollout, Error>, code: tonic::Code) -> String {
    match result {
        Err(Error::Status(status)) if status.code() == code => status.message().to_owned(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rollout_streams_its_waves_pauses_on_its_budget_resumes_and_is_cancelled() {
    let db = database().await;
    let app = within("the start", spawn_app(flags(db.url()))).await;
    let player = fleet(&app, 6).await;
    let operator = &app.operator;

    // v2 everywhere, two at a time, followed on the progress stream.
    let started = within("start", operator.start_rollout(start("v2", "2", "")))
        .await
        .unwrap();
    let progress = follow(&app, &started.id, |r| state(r) == RolloutState::Completed).await;
    assert!(
        progress.iter().all(|r| counts(r).1 <= 2),
        "never more than 2 in flight"
    );
    let last = progress.last().unwrap();
    assert_eq!(counts(last), (6, 0, 0, 0));
    assert_eq!(last.waves.len(), 3);
    assert!(last.waves.iter().all(|w| w.counts.unwrap().done == 2));
    for n in 1..=6 {
        let history = within("history", operator.history(&format!("a{n}"), 20))
            .await
            .unwrap();
        let update = history
            .iter()
            .find(|e| e.reason == TransitionReason::RolloutUpdate as i32)
            .expect("the rollout in the agent's history");
        assert_eq!(update.rollout_id, started.id);
    }

    // v3: a1 and a2 keep reporting v2; a budget of 1 is spent in wave 1.
    player
        .stubborn
        .lock()
        .unwrap()
        .insert("v3".into(), vec!["a1".into(), "a2".into()]);
    let request = StartRolloutRequest {
        gateway_id: String::new(),
        board_id: "b1".into(),
        ..start("v3", "2", "1")
    };
    // A watch on drifted agents: none yet.
    let drift_watch = WatchAgentRequest {
        drifted: true,
        ..Default::default()
    };
    let mut drift_watch = within("a drift watch", app.watch(drift_watch)).await;
    next_marker(&mut drift_watch).await;
    let v3 = within("start", operator.start_rollout(request))
        .await
        .unwrap();
    let progress = follow(&app, &v3.id, |r| state(r) == RolloutState::Paused).await;
    let paused = progress.last().unwrap();
    assert!(
        paused.reason.contains("failure budget spent: 2 of 6"),
        "{}",
        paused.reason
    );
    assert_eq!(counts(paused), (0, 0, 2, 4), "the rest untouched");
    let mut failed: Vec<&str> = paused
        .failures
        .iter()
        .map(|f| f.agent_id.as_str())
        .collect();
    failed.sort_unstable();
    assert_eq!(failed, ["a1", "a2"]);
    assert!(
        paused.failures[0]
            .reason
            .contains("checked in still reporting template version \"v2\""),
        "{}",
        paused.failures[0].reason
    );
    let untouched = within("get", operator.get("a6")).await.unwrap();
    assert_eq!(untouched.desired_template_version, "v2");
    let drift = operator.drift("gw", "").await.unwrap();
    assert_eq!(drift.drifted, 2);
    assert_eq!(
        (drift.boards[0].id.as_str(), drift.boards[0].drifted),
        ("b1", 2)
    );
    let listed = operator
        .list(ListAgentsRequest {
            drifted: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let listed: Vec<&str> = listed.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(listed, ["a1", "a2"]);
    // The watch saw the two drift (desired v3, then reporting v2), and only them.
    for _ in 0..4 {
        let agent = next_event(&mut drift_watch).await.agent.unwrap();
        assert!(["a1", "a2"].contains(&agent.id.as_str()), "{agent:?}");
    }

    // Resuming needs a budget the failures fit in; then it completes.
    let refused = operator.resume_rollout(&v3.id, "").await;
    is_refused(refused, tonic::Code::FailedPrecondition);
    within("resume", operator.resume_rollout(&v3.id, "50%"))
        .await
        .unwrap();
    let progress = follow(&app, &v3.id, |r| state(r) == RolloutState::Completed).await;
    assert_eq!(counts(progress.last().unwrap()), (4, 0, 2, 0));

    // An agent that never checks in on v9 holds its rollout open; nobody
    // else may roll it meanwhile; pause, then cancel.
    let request = StartRolloutRequest {
        gateway_id: String::new(),
        agent_ids: vec!["a6".into()],
        ..start("v9", "1", "")
    };
    let v9 = within("start", operator.start_rollout(request))
        .await
        .unwrap();
    assert_eq!(state(&v9), RolloutState::Running);
    let overlap = operator.start_rollout(start("v9", "1", "")).await;
    let message = is_refused(overlap, tonic::Code::FailedPrecondition);
    assert!(
        message.contains(&format!("already in active rollout {}", v9.id)),
        "{message}"
    );
    let paused = within("pause", operator.pause_rollout(&v9.id))
        .await
        .unwrap();
    assert_eq!(state(&paused), RolloutState::Paused);
    let cancelled = within("cancel", operator.cancel_rollout(&v9.id))
        .await
        .unwrap();
    assert_eq!(state(&cancelled), RolloutState::Cancelled);
    let again = within(
        "a later rollout",
        operator.start_rollout(start("v9", "1", "")),
    )
    .await
    .unwrap();
    within("cancel", operator.cancel_rollout(&again.id))
        .await
        .unwrap();
    within("the shutdown", app.app.shutdown()).await;
}

/// A port free now, so both servers can use the same address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_restart_mid_rollout_resumes_it_without_waking_done_agents_again() {
    let db = database().await;
    let port = free_port();
    let flags = || {
        let mut flags = flags(db.url());
        set_flag(&mut flags, "--listen", &format!("127.0.0.1:{port}"));
        flags
    };
    let first = within("the first start", spawn_app(flags())).await;
    let player = fleet(&first, 6).await;
    // Wave 1 checks in; wave 2 is woken and held when the service stops.
    player.check_ins_left.store(2, Ordering::SeqCst);
    let started = within("start", first.operator.start_rollout(start("v2", "2", "")))
        .await
        .unwrap();
    follow(&first, &started.id, |r| r.waves.len() == 2).await;
    let held = async {
        while player.seen.lock().unwrap().held.len() < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    within("wave 2 woken", held).await;
    within("the first shutdown", first.app.shutdown()).await;

    let second = within("the second start", spawn_app(flags())).await;
    let restored = within("get", second.operator.rollout(&started.id))
        .await
        .unwrap();
    assert_eq!(state(&restored), RolloutState::Running);
    assert_eq!(counts(&restored), (2, 2, 0, 2));
    let reconnected = async {
        while player.connections.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    within("the gateway reconnects", reconnected).await;

    // Wave 2's agents got their wake before the restart: they check in now,
    // and wave 3 follows.
    player.check_ins_left.store(usize::MAX, Ordering::SeqCst);
    let held = std::mem::take(&mut player.seen.lock().unwrap().held);
    assert_eq!(held.len(), 2);
    for agent in &held {
        player.check_in(&second.endpoint, agent, "v2").await;
    }
    let progress = follow(&second, &started.id, |r| {
        state(r) == RolloutState::Completed
    })
    .await;
    let last = progress.last().unwrap();
    assert_eq!(counts(last).0, 6);
    assert_eq!(last.waves.len(), 3, "resumed where it was");

    let v2_wakes = player.wakes_with("v2");
    assert_eq!(v2_wakes.len(), 6, "{v2_wakes:?}");
    assert!(
        v2_wakes.values().all(|n| *n == 1),
        "nobody woken twice: {v2_wakes:?}"
    );
    within("the second shutdown", second.app.shutdown()).await;
}

#[tokio::test]
async fn a_template_sync_outlives_a_restart_and_the_gateway_helper_acknowledges_it() {
    let db = database().await;
    let port = free_port();
    let flags = || {
        let mut flags = fast_flags(db.url());
        set_flag(&mut flags, "--listen", &format!("127.0.0.1:{port}"));
        flags
    };
    let first = within("the first start", spawn_app(flags())).await;
    let gateway_token = within("registering", first.gateway("gw")).await;
    // Asked for while the gateway is away: committed, not sent.
    let requested = within("sync", first.operator.sync_gateway_templates("gw", "v2"))
        .await
        .unwrap();
    assert!(!requested.sent);
    within("the first shutdown", first.app.shutdown()).await;

    let second = within("the second start", spawn_app(flags())).await;
    let player = Player::start(&second, &gateway_token, HashMap::new());
    let synced = async {
        while player.seen.lock().unwrap().syncs.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    within("the sync reaches the gateway", synced).await;
    assert_eq!(
        player.seen.lock().unwrap().syncs,
        [(requested.command_id.clone(), "v2".to_owned())],
        "the command the first server committed, same id"
    );
    let expected = [
        format!(
            "template sync to v2 (command {}) requested",
            requested.command_id
        ),
        format!(
            "template sync to v2 (command {}) synced",
            requested.command_id
        ),
    ];
    let history = async {
        loop {
            let mut history = second.operator.gateway_history("gw").await.unwrap();
            history.reverse();
            let syncs: Vec<String> = history
                .into_iter()
                .map(|t| t.reason)
                .filter(|r| r.starts_with("template sync"))
                .collect();
            if syncs.len() >= 2 {
                return syncs;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    assert_eq!(within("the outcome recorded", history).await, expected);
    within("the second shutdown", second.app.shutdown()).await;
}
