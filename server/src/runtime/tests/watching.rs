//! Watch streams: snapshot, order, filters, resume, slow consumers, bookmarks.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use super::*;
use crate::engine::{AgentFilter, EventKind, Reason, Status};
use crate::store::Store;

type Watch = Pin<Box<dyn Stream<Item = Result<WatchItem, LifecycleError>> + Send>>;

async fn watch(f: &Fixture, request: WatchRequest) -> Watch {
    Box::pin(f.lifecycle.watch(request).await.expect("watch"))
}

async fn next(watch: &mut Watch) -> WatchItem {
    tokio::time::timeout(Duration::from_secs(3600), watch.next())
        .await
        .expect("an item in time")
        .expect("the stream goes on")
        .expect("no error")
}

/// Events until the stream has nothing for `quiet`.
async fn drain_events(watch: &mut Watch, quiet: Duration) -> Vec<std::sync::Arc<Event>> {
    let mut events = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(quiet, watch.next()).await {
        match item.expect("no error") {
            WatchItem::Event(event) => events.push(event),
            WatchItem::Bookmark { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    events
}

fn settings() -> Settings {
    Settings {
        bookmark_interval: Duration::from_secs(3000),
        ..fast_settings()
    }
}

#[tokio::test(start_paused = true)]
async fn a_watch_starts_with_a_snapshot_in_revision_order_then_streams_changes() {
    let f = start(settings()).await;
    let tokens: Vec<String> = {
        let mut tokens = Vec::new();
        for agent in ["c", "a", "b"] {
            tokens.push(f.provision(agent).await.token.unwrap());
        }
        tokens
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    f.lifecycle.heartbeat(&tokens[0], None).await.unwrap();

    let mut w = watch(&f, WatchRequest::default()).await;
    let mut snapshot = Vec::new();
    let complete_at = loop {
        match next(&mut w).await {
            WatchItem::Snapshot(agent) => snapshot.push(agent),
            WatchItem::SnapshotComplete { revision } => break revision,
            other => panic!("unexpected {other:?}"),
        }
    };
    let revisions: Vec<u64> = snapshot.iter().map(|a| a.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    assert_eq!(snapshot.len(), 3);
    assert_eq!(
        snapshot.last().unwrap().id,
        id("c"),
        "c changed last (checked in)"
    );
    assert_eq!(complete_at, *revisions.last().unwrap());

    f.provision("d").await;
    let WatchItem::Event(event) = next(&mut w).await else {
        panic!()
    };
    assert_eq!(event.revision, complete_at + 1);
    assert_eq!(event.kind, EventKind::Added);
    assert_eq!(event.reason, Reason::Provisioned);
}

#[tokio::test(start_paused = true)]
async fn time_passing_is_an_event_too() {
    let f = start(settings()).await;
    let (_session, _commands) = f.connect();
    f.provision("silent").await;
    let mut w = watch(
        &f,
        WatchRequest {
            filter: AgentFilter {
                statuses: vec![Status::Offline],
                ..AgentFilter::default()
            },
            ..WatchRequest::default()
        },
    )
    .await;
    assert!(matches!(
        next(&mut w).await,
        WatchItem::SnapshotComplete { .. }
    ));
    let WatchItem::Event(event) = next(&mut w).await else {
        panic!()
    };
    assert_eq!(event.reason, Reason::MaxAttemptsReached);
    assert_eq!(event.agent.status, Status::Offline);
    assert_eq!(event.previous_status, Some(Status::Provisioning));
    assert_eq!(event.attempt, 3);
}

#[tokio::test(start_paused = true)]
async fn filters_select_by_agent_gateway_board_and_status() {
    let f = start(settings()).await;
    let mut by_agent = watch(
        &f,
        WatchRequest {
            filter: AgentFilter {
                agent_id: Some(id("x")),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let mut by_board = watch(
        &f,
        WatchRequest {
            filter: AgentFilter {
                board_id: Some(BoardId::parse("other").unwrap()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let mut online = watch(
        &f,
        WatchRequest {
            filter: AgentFilter {
                statuses: vec![Status::Online],
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    for w in [&mut by_agent, &mut by_board, &mut online] {
        assert!(matches!(next(w).await, WatchItem::SnapshotComplete { .. }));
    }
    let token = f.provision("x").await.token.unwrap();
    f.provision("y").await;
    f.lifecycle.heartbeat(&token, None).await.unwrap();

    let quiet = Duration::from_secs(10);
    let agent_events: Vec<_> = drain_events(&mut by_agent, quiet)
        .await
        .iter()
        .map(|e| e.reason)
        .collect();
    assert_eq!(
        agent_events,
        [Reason::Provisioned, Reason::WakeFailed, Reason::CheckedIn]
    );
    assert!(drain_events(&mut by_board, quiet).await.is_empty());
    let online_events = drain_events(&mut online, quiet).await;
    assert_eq!(online_events.len(), 1);
    assert_eq!(online_events[0].agent.id, id("x"));
}

#[tokio::test(start_paused = true)]
async fn a_watch_resumes_after_a_revision_without_a_snapshot() {
    let f = start(settings()).await;
    for n in 0..6 {
        f.provision(&format!("a{n}")).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let all = f.store.events_after(0, 100).await.unwrap();
    let middle = all[all.len() / 2].revision;

    let mut resumed = watch(
        &f,
        WatchRequest {
            start_revision: middle,
            ..Default::default()
        },
    )
    .await;
    f.provision("late").await;
    let events = drain_events(&mut resumed, Duration::from_secs(100)).await;
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    let expected: Vec<u64> = (middle + 1..=middle + revisions.len() as u64).collect();
    assert_eq!(
        revisions, expected,
        "every revision after the start, once, in order"
    );
    assert_eq!(events.last().unwrap().agent.id, id("late"));
    assert!(revisions.len() > all.len() / 2);
}

#[tokio::test(start_paused = true)]
async fn resuming_from_compacted_history_says_to_list_again() {
    let f = start(settings()).await;
    for n in 0..4 {
        f.provision(&format!("a{n}")).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    f.provision("recent").await;
    let compacted = f
        .store
        .compact(f.clock.now().minus(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(compacted > 1);

    match f
        .lifecycle
        .watch(WatchRequest {
            start_revision: 1,
            ..Default::default()
        })
        .await
    {
        Err(LifecycleError::OutOfRange {
            oldest_revision, ..
        }) => assert_eq!(oldest_revision, compacted + 1),
        Err(other) => panic!("expected OUT_OF_RANGE, got {other:?}"),
        Ok(_) => panic!("expected OUT_OF_RANGE"),
    }
    assert!(
        f.lifecycle
            .watch(WatchRequest {
                start_revision: compacted,
                ..Default::default()
            })
            .await
            .is_ok()
    );
    let ahead = f
        .lifecycle
        .watch(WatchRequest {
            start_revision: 10_000,
            ..Default::default()
        })
        .await;
    assert!(
        matches!(
            ahead,
            Err(LifecycleError::RevisionAhead { current_revision, .. }) if current_revision < 10_000
        ),
        "from the future: {:?}",
        ahead.err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_watcher_is_ended_with_a_resume_point_and_never_slows_a_fast_one() {
    let f = start(Settings {
        watch_buffer: 16,
        ..settings()
    })
    .await;
    f.provision("first").await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut slow = watch(&f, WatchRequest::default()).await;
    let mut fast = watch(&f, WatchRequest::default()).await;
    for w in [&mut slow, &mut fast] {
        assert!(matches!(next(w).await, WatchItem::Snapshot(_)));
        assert!(matches!(
            next(w).await,
            WatchItem::SnapshotComplete { revision: 2 }
        ));
    }

    let mut fast_revisions = Vec::new();
    for n in 0..50 {
        f.provision(&format!("a{n}")).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        while let Ok(Some(Ok(WatchItem::Event(e)))) =
            tokio::time::timeout(Duration::from_millis(1), fast.next()).await
        {
            fast_revisions.push(e.revision);
        }
    }
    assert_eq!(
        fast_revisions,
        (3..=102).collect::<Vec<_>>(),
        "the fast watcher saw everything"
    );

    let mut slow_revisions = Vec::new();
    let resume_from = loop {
        match slow.next().await.expect("ends with an error, not silently") {
            Ok(WatchItem::Event(e)) => slow_revisions.push(e.revision),
            Err(LifecycleError::ResourceExhausted {
                resume_revision, ..
            }) => break resume_revision,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(slow.next().await.is_none());
    assert_eq!(resume_from, slow_revisions.last().copied().unwrap_or(2));

    let mut resumed = watch(
        &f,
        WatchRequest {
            start_revision: resume_from,
            ..Default::default()
        },
    )
    .await;
    let rest: Vec<u64> = drain_events(&mut resumed, Duration::from_secs(10))
        .await
        .iter()
        .map(|e| e.revision)
        .collect();
    slow_revisions.extend(rest);
    assert_eq!(
        slow_revisions,
        (3..=102).collect::<Vec<_>>(),
        "resuming fills the gap exactly"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_watch_gets_bookmarks_and_a_shutdown_ends_it() {
    let f = start(Settings {
        bookmark_interval: Duration::from_secs(15),
        ..settings()
    })
    .await;
    f.provision("a").await;
    let mut w = watch(
        &f,
        WatchRequest {
            filter: AgentFilter {
                agent_id: Some(id("nobody")),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let WatchItem::SnapshotComplete { revision } = next(&mut w).await else {
        panic!()
    };
    f.provision("b").await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let WatchItem::Bookmark { revision: bookmark } = next(&mut w).await else {
        panic!()
    };
    assert!(
        bookmark > revision,
        "the bookmark moves past events that did not match"
    );
    assert_eq!(bookmark, f.lifecycle.shared.engine.lock().revision());

    f.lifecycle.end_streams();
    assert!(matches!(
        w.next().await,
        Some(Err(LifecycleError::Unavailable(_)))
    ));
    assert!(w.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_watch_may_ask_for_its_own_bookmark_interval_and_gets_one_each_quiet_period() {
    let f = start(Settings {
        bookmark_interval: Duration::from_secs(15),
        ..settings()
    })
    .await;
    let mut w = watch(
        &f,
        WatchRequest {
            bookmark_interval: Some(Duration::from_secs(2)),
            ..Default::default()
        },
    )
    .await;
    let opened = tokio::time::Instant::now();
    assert!(matches!(
        next(&mut w).await,
        WatchItem::SnapshotComplete { .. }
    ));
    for period in 1..=3 {
        assert!(matches!(next(&mut w).await, WatchItem::Bookmark { .. }));
        assert_eq!(opened.elapsed(), Duration::from_secs(2 * period));
    }
    // A change restarts the quiet period: the next bookmark is 2 s after
    // the last change sent (the provision, and whatever its wake brings).
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.provision("a").await;
    let mut changed = None;
    loop {
        match next(&mut w).await {
            WatchItem::Event(_) => changed = Some(tokio::time::Instant::now()),
            WatchItem::Bookmark { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let changed = changed.expect("the provision was sent");
    assert_eq!(changed.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn watches_are_limited_and_a_closed_one_frees_its_place() {
    let f = start(Settings {
        max_watches: 2,
        ..settings()
    })
    .await;
    let first = watch(&f, WatchRequest::default()).await;
    let _second = watch(&f, WatchRequest::default()).await;
    let third = f.lifecycle.watch(WatchRequest::default()).await;
    assert!(matches!(third, Err(LifecycleError::TooManyStreams(_))));
    drop(first);
    assert!(f.lifecycle.watch(WatchRequest::default()).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn heartbeats_can_be_included_at_a_limited_rate() {
    let f = start(Settings {
        heartbeat_event_interval: Duration::from_secs(5),
        ..settings()
    })
    .await;
    let token = f.provision("a").await.token.unwrap();
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    let now = f.lifecycle.shared.engine.lock().revision();
    let mut w = watch(
        &f,
        WatchRequest {
            include_heartbeats: true,
            start_revision: now,
            ..Default::default()
        },
    )
    .await;
    for _ in 0..10 {
        f.lifecycle.heartbeat(&token, None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut heartbeats = 0;
    while let Ok(Some(Ok(item))) = tokio::time::timeout(Duration::from_millis(100), w.next()).await
    {
        match item {
            WatchItem::Heartbeat(seen) => {
                assert_eq!(seen.agent_id, id("a"));
                heartbeats += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        heartbeats, 2,
        "ten heartbeats in ten seconds, one per five seconds shown"
    );
}
