//! Overlapping rounds: the writer stages a round on top of the one still
//! committing, and sends it when that one's COMMIT returns. Nothing is answered or shown before its
//! own commit, revisions stay contiguous, and a round that fails takes the
//! rounds staged over it down with it.

use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::engine::{Event, EventKind};
use crate::store::Store;

/// Commits take this long: rounds sent meanwhile queue behind them.
const COMMIT: Duration = Duration::from_millis(10);

fn provision_later(
    f: &Fixture,
    agent: &str,
) -> tokio::task::JoinHandle<Result<ProvisionOutcome, LifecycleError>> {
    let lifecycle = f.lifecycle.clone();
    let spec = spec(agent);
    tokio::spawn(async move { lifecycle.provision(spec).await })
}

async fn stored_events(store: &MemoryStore) -> Vec<Event> {
    store.events_after(0, usize::MAX).await.unwrap()
}

fn assert_contiguous(events: &[Event]) {
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    let expected: Vec<u64> = (1..=revisions.len() as u64).collect();
    assert_eq!(revisions, expected, "revisions without gaps");
}

#[tokio::test(start_paused = true)]
async fn overlapping_rounds_answer_after_their_own_commit_in_revision_order() {
    let f = start(fast_settings()).await;
    let mut watch = Box::pin(f.lifecycle.watch(WatchRequest::default()).await.unwrap());
    f.store.set_commit_delay(COMMIT);
    let mut calls = Vec::new();
    for n in 0..6 {
        let agent = format!("agent-{n}");
        let lifecycle = f.lifecycle.clone();
        let store = f.store.clone();
        calls.push(tokio::spawn(async move {
            let outcome = lifecycle.provision(spec(&agent)).await.unwrap();
            // Answered only once its own round is in the store.
            let stored = store.load().await.unwrap();
            let kept = stored.agents.iter().find(|a| a.id == outcome.agent.id);
            assert_eq!(kept.map(|a| a.revision), Some(outcome.agent.revision));
            outcome.agent.revision
        }));
        // The next call comes while this one's round is committing.
        tokio::time::sleep(COMMIT / 3).await;
    }
    let mut answered = Vec::new();
    for call in calls {
        answered.push(call.await.unwrap());
    }
    let events = stored_events(&f.store).await;
    assert_contiguous(&events);
    let provisioned: Vec<u64> = events
        .iter()
        .filter(|e| e.reason == Reason::Provisioned)
        .map(|e| e.revision)
        .collect();
    assert_eq!(
        answered, provisioned,
        "one round after another, in call order"
    );

    // A watcher sees each event once, in order, after its snapshot.
    let last = events.last().unwrap().revision;
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        match watch.next().await.unwrap().unwrap() {
            WatchItem::Event(event) => seen.push(event.revision),
            WatchItem::Snapshot(_)
            | WatchItem::SnapshotComplete { .. }
            | WatchItem::Bookmark { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let after_snapshot: Vec<u64> = events
        .iter()
        .map(|e| e.revision)
        .filter(|r| *r >= seen[0])
        .collect();
    assert_eq!(seen, after_snapshot);
}

#[tokio::test(start_paused = true)]
async fn a_failed_round_fails_the_round_staged_over_it_and_neither_is_kept() {
    let f = start(fast_settings()).await;
    f.provision("kept").await;
    f.store.set_commit_delay(COMMIT);
    f.store.fail_next_commits(1);
    let first = provision_later(&f, "first");
    tokio::time::sleep(COMMIT / 2).await;
    // Staged over "first" and sent behind it while it commits.
    let second = provision_later(&f, "second");
    let first = first.await.unwrap();
    let second = second.await.unwrap();
    assert!(first.is_err(), "{first:?}");
    assert!(second.is_err(), "{second:?}");

    // The engine is rebuilt from the store: the writer serves again, and
    // neither round left a trace.
    f.store.set_commit_delay(Duration::ZERO);
    let mut again = f.lifecycle.provision(spec("second")).await;
    for _ in 0..50 {
        if again.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        again = f.lifecycle.provision(spec("second")).await;
    }
    let again = again.expect("the writer serves again");
    assert!(again.created, "nothing of the failed round was kept");
    assert_eq!(again.agent.generation, 1);
    assert!(f.lifecycle.get(&id("first")).is_err());
    let events = stored_events(&f.store).await;
    assert_contiguous(&events);
    assert!(events.iter().all(|e| e.agent.id != id("first")));
    let added: Vec<u64> = events
        .iter()
        .filter(|e| e.agent.id == id("second") && e.kind == EventKind::Added)
        .map(|e| e.agent.generation)
        .collect();
    assert_eq!(added, [1], "added once, by the call after the failure");
}

#[tokio::test(start_paused = true)]
async fn two_rounds_in_flight_are_fenced_out_when_another_replica_leads() {
    let a = start(fast_settings()).await;
    let store = Arc::new(a.store.replica());
    let b = Lifecycle::start(store, fast_settings(), a.clock)
        .await
        .expect("start a follower");
    a.provision("kept").await;
    // Each commit outlasts the lease: the follower takes over meanwhile.
    a.store.set_commit_delay(Duration::from_secs(4));
    let first = provision_later(&a, "first");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = provision_later(&a, "second");
    a.store.set_lease_cut_off(true);

    for result in [first.await.unwrap(), second.await.unwrap()] {
        assert!(
            matches!(result, Err(LifecycleError::Unavailable(ref m)) if m.contains("not the leader")),
            "{result:?}"
        );
    }
    let mut waited = 0;
    while b.role() != ReplicaRole::Leader && waited < 200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(b.role(), ReplicaRole::Leader);
    assert_eq!(a.lifecycle.role(), ReplicaRole::Follower);
    b.provision(spec("next")).await.unwrap();
    let events = stored_events(&a.store).await;
    assert_contiguous(&events);
    assert!(
        events
            .iter()
            .all(|e| e.agent.id != id("first") && e.agent.id != id("second")),
        "a fenced round writes nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn each_round_written_is_timed_from_sent_to_committed() {
    const NAME: &str = "mission_control_commit_duration_seconds";
    let f = start(fast_settings()).await;
    let before = metric(&f.lifecycle.render_metrics(), &format!("{NAME}_count"));
    f.store.set_commit_delay(COMMIT);
    f.provision("a").await;
    let metrics = f.lifecycle.render_metrics();
    let count = metric(&metrics, &format!("{NAME}_count"));
    assert_eq!(count, before + 1, "one round: {metrics}");
    // Paused time: the round took the store's 10 ms, no less and no more
    // than the bucket up to 10 ms holds.
    let within = |bound: &str| metric(&metrics, &format!("{NAME}_bucket{{le=\"{bound}\"}}"));
    assert_eq!(within("0.005"), before, "{metrics}");
    assert_eq!(within("0.01"), before + 1, "{metrics}");
}
