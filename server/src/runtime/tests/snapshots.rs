//! Shared watch snapshots: watchers that open close together share one
//! snapshot of pointers, stream it, and catch up from stored history, with
//! every change exactly once whatever commits while they open.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use super::*;
use crate::engine::{AgentFilter, EventKind, Status};

type Watch = Pin<Box<dyn Stream<Item = Result<WatchItem, LifecycleError>> + Send>>;

fn settings() -> Settings {
    Settings {
        bookmark_interval: Duration::from_secs(3000),
        ..fast_settings()
    }
}

async fn watch(f: &Fixture, filter: AgentFilter) -> Watch {
    let request = WatchRequest {
        filter,
        // A filtered watcher learns it has seen everything up to a revision.
        bookmark_interval: Some(Duration::from_secs(1)),
        ..WatchRequest::default()
    };
    Box::pin(f.lifecycle.watch(request).await.expect("watch"))
}

async fn next(watch: &mut Watch) -> WatchItem {
    tokio::time::timeout(Duration::from_secs(3600), watch.next())
        .await
        .expect("an item in time")
        .expect("the stream goes on")
        .expect("no error")
}

/// What a watcher saw: its snapshot, the snapshot's revision, the events.
struct Seen {
    snapshot: Vec<Arc<Agent>>,
    revision: u64,
    events: Vec<Arc<Event>>,
}

async fn read_snapshot(w: &mut Watch) -> (Vec<Arc<Agent>>, u64) {
    let mut snapshot = Vec::new();
    loop {
        match next(w).await {
            WatchItem::Snapshot(agent) => snapshot.push(agent),
            WatchItem::SnapshotComplete { revision } => return (snapshot, revision),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The snapshot, then events up to revision `until` (timers go on
/// committing changes after it).
async fn read_until(mut w: Watch, until: u64) -> Seen {
    let (snapshot, revision) = read_snapshot(&mut w).await;
    let mut events = Vec::new();
    let mut position = revision;
    while position < until {
        match next(&mut w).await {
            WatchItem::Event(event) => {
                position = event.revision;
                if position <= until {
                    events.push(event);
                }
            }
            WatchItem::Bookmark { revision } => position = revision,
            other => panic!("unexpected {other:?}"),
        }
    }
    Seen {
        snapshot,
        revision,
        events,
    }
}

/// The parts of an agent that only a committed change moves (leases are
/// renewed in memory, without an event).
fn committed(agent: &Agent) -> (u64, Status, u64) {
    (agent.revision, agent.status, agent.generation)
}

type State = BTreeMap<AgentId, (u64, Status, u64)>;

/// The engine's revision and its agents then.
fn engine_state(f: &Fixture) -> (u64, State) {
    let engine = f.lifecycle.shared.engine.lock();
    let state = engine
        .agents()
        .map(|agent| (agent.id.clone(), committed(agent)))
        .collect();
    (engine.revision(), state)
}

/// Checks what a watcher saw against the engine's final state, and that
/// revisions only increase along it.
fn check(seen: &Seen, filter: &AgentFilter, final_state: &State) {
    let snapshot: Vec<u64> = seen.snapshot.iter().map(|a| a.revision).collect();
    let events: Vec<u64> = seen.events.iter().map(|e| e.revision).collect();
    for revisions in [&snapshot, &events] {
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "revisions increase: {revisions:?}"
        );
    }
    assert!(snapshot.last().is_none_or(|&last| last <= seen.revision));
    assert!(events.first().is_none_or(|&first| first > seen.revision));
    let mut state: State = seen
        .snapshot
        .iter()
        .map(|a| (a.id.clone(), committed(a)))
        .collect();
    for event in &seen.events {
        match event.kind {
            EventKind::Deleted => {
                state.remove(&event.agent.id);
            }
            EventKind::Added | EventKind::Changed => {
                state.insert(event.agent.id.clone(), committed(&event.agent));
            }
        }
    }
    // An agent that left a filtered watcher's selection did so with an
    // event that shows it outside.
    state.retain(|_, (_, status, _)| selected(filter, *status));
    assert_eq!(
        &state, final_state,
        "the snapshot and the changes make the final state"
    );
}

/// Whether a status filter selects the status (the only filter used here).
fn selected(filter: &AgentFilter, status: Status) -> bool {
    filter.statuses.is_empty() || filter.statuses.contains(&status)
}

#[tokio::test(start_paused = true)]
async fn watchers_opening_while_changes_commit_see_every_change_once() {
    let f = start(settings()).await;
    let mut tokens = Vec::new();
    for n in 0..20 {
        tokens.push(f.provision(&format!("a{n:02}")).await.token.unwrap());
    }
    let online = AgentFilter {
        statuses: vec![Status::Online],
        ..AgentFilter::default()
    };

    // Changes every 10 ms for 3 s: provisions, check-ins (to ONLINE),
    // deletes; a watcher opens every 70 ms meanwhile, so some share a
    // snapshot taken some changes earlier and some take a fresh one.
    let changes = async {
        for n in 0..300usize {
            match n % 3 {
                0 => {
                    f.provision(&format!("b{n:03}")).await;
                }
                1 => {
                    let token = &tokens[n / 3 % tokens.len()];
                    let _ = f.lifecycle.heartbeat(token, None).await;
                }
                _ if n % 9 == 2 => {
                    let _ = f.lifecycle.delete(id(&format!("b{:03}", n - 2))).await;
                }
                _ => {
                    let _ = f.lifecycle.wake(id(&format!("a{:02}", n % 20))).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let opens = async {
        let mut opened = Vec::new();
        for n in 0..40 {
            let filter = if n % 4 == 3 {
                online.clone()
            } else {
                AgentFilter::default()
            };
            let at = f.lifecycle.shared.engine.lock().revision();
            opened.push((at, filter.clone(), watch(&f, filter).await));
            tokio::time::sleep(Duration::from_millis(70)).await;
        }
        opened
    };
    let ((), opened) = tokio::join!(changes, opens);

    let (until, state) = engine_state(&f);
    let mut shared = 0;
    for (opened_at, filter, w) in opened {
        let seen = read_until(w, until).await;
        assert!(seen.revision <= opened_at);
        shared += usize::from(seen.revision < opened_at);
        if filter == AgentFilter::default() {
            let revisions: Vec<u64> = seen.events.iter().map(|e| e.revision).collect();
            assert_eq!(
                revisions,
                (seen.revision + 1..=until).collect::<Vec<_>>(),
                "every change after the snapshot, once, in order"
            );
        }
        let matching: State = state
            .iter()
            .filter(|(_, (_, status, _))| selected(&filter, *status))
            .map(|(id, committed)| (id.clone(), *committed))
            .collect();
        check(&seen, &filter, &matching);
    }
    assert!(shared > 0, "some watchers shared an earlier snapshot");
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_is_shared_then_let_go() {
    let f = start(settings()).await;
    let mut tokens = Vec::new();
    for name in ["a", "b", "c"] {
        tokens.push(f.provision(name).await.token.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let taken_at = f.lifecycle.shared.engine.lock().revision();
    let mut first = watch(&f, AgentFilter::default()).await;
    // Held by the snapshot: the engine's agent is not copied until changed.
    let held = f
        .lifecycle
        .shared
        .engine
        .lock()
        .shared_agent(&id("a"))
        .cloned()
        .unwrap();
    assert!(Arc::strong_count(&held) > 2);
    drop(held);

    // A's check-in commits while the snapshot holds A: A is copied, and
    // the snapshot keeps A as of its revision.
    f.lifecycle.heartbeat(&tokens[0], None).await.unwrap();
    let mut second = watch(&f, AgentFilter::default()).await;

    let (one, one_at) = read_snapshot(&mut first).await;
    let (two, two_at) = read_snapshot(&mut second).await;
    assert_eq!(
        (one_at, two_at),
        (taken_at, taken_at),
        "one snapshot, shared"
    );
    assert_eq!(one.len(), 3);
    assert!(one.iter().zip(&two).all(|(x, y)| Arc::ptr_eq(x, y)));
    let a = one.iter().find(|agent| agent.id == id("a")).unwrap();
    assert_eq!(
        a.status,
        Status::Provisioning,
        "as of the snapshot's revision"
    );
    assert_eq!(f.agent("a").status, Status::Online);
    for w in [&mut first, &mut second] {
        let WatchItem::Event(event) = next(w).await else {
            panic!("the check-in, replayed")
        };
        assert_eq!(event.revision, taken_at + 1);
        assert_eq!(event.agent.status, Status::Online);
    }
    drop((one, two));

    // Streamed and past its age: nothing holds the engine's agents now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let current = {
        let engine = f.lifecycle.shared.engine.lock();
        for agent in engine.shared_agents() {
            assert_eq!(Arc::strong_count(agent), 1, "{} is held", agent.id);
        }
        engine.revision()
    };
    let mut third = watch(&f, AgentFilter::default()).await;
    let (_, third_at) = read_snapshot(&mut third).await;
    assert_eq!(third_at, current, "an old snapshot is not reused");
}
