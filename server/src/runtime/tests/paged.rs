//! Watches streamed by pages (`watch_by_pages`): a whole-fleet snapshot in
//! shared pages, encoded once for every watcher; filtered snapshots agent
//! by agent; live events taken as they are ready, with the same order,
//! seam and resume point as `watch`.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};

use super::*;
use crate::engine::{AgentFilter, Status};

type Watch = Pin<Box<dyn Stream<Item = Result<WatchItem, LifecycleError>> + Send>>;

fn settings() -> Settings {
    Settings {
        bookmark_interval: Duration::from_secs(3000),
        ..fast_settings()
    }
}

async fn paged(f: &Fixture, request: WatchRequest) -> PagedWatch {
    f.lifecycle.watch_by_pages(request).await.expect("watch")
}

async fn next_chunk(w: &mut PagedWatch) -> WatchChunk {
    tokio::time::timeout(Duration::from_secs(3600), w.next())
        .await
        .expect("a chunk in time")
        .expect("the stream goes on")
        .expect("no error")
}

/// The pages up to the snapshot's end, and its revision.
async fn read_pages(w: &mut PagedWatch) -> (Vec<SnapshotPage>, u64) {
    let mut pages = Vec::new();
    loop {
        match next_chunk(w).await {
            WatchChunk::Page(page) => pages.push(page),
            WatchChunk::Item(WatchItem::SnapshotComplete { revision }) => {
                return (pages, revision);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_fleet_watch_by_pages_sends_every_agent_once_in_pages_encoded_once() {
    let f = start(settings()).await;
    let fleet = 600;
    for n in 0..fleet {
        f.provision(&format!("a{n:03}")).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut by_agent: Watch = Box::pin(
        f.lifecycle
            .watch(WatchRequest::default())
            .await
            .expect("watch"),
    );
    let mut expected = Vec::new();
    let snapshot_at = loop {
        match by_agent.next().await.unwrap().unwrap() {
            WatchItem::Snapshot(agent) => expected.push(agent),
            WatchItem::SnapshotComplete { revision } => break revision,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(expected.len(), fleet);

    let mut first = paged(&f, WatchRequest::default()).await;
    let mut second = paged(&f, WatchRequest::default()).await;
    let encodings = AtomicUsize::new(0);
    let encode = |agents: &[Arc<Agent>]| {
        encodings.fetch_add(1, Ordering::SeqCst);
        Bytes::from(agents.iter().map(|a| a.id.to_string()).collect::<String>())
    };
    let mut sent: Vec<Vec<Bytes>> = Vec::new();
    for w in [&mut first, &mut second] {
        let (pages, revision) = read_pages(w).await;
        assert_eq!(revision, snapshot_at, "the same snapshot");
        assert!(pages.len() > 1, "a fleet of {fleet} takes several pages");
        assert!(pages.iter().all(|p| !p.agents().is_empty()));
        let agents: Vec<&Arc<Agent>> = pages.iter().flat_map(|p| p.agents()).collect();
        assert_eq!(agents.len(), expected.len(), "every agent once");
        assert!(
            agents.iter().zip(&expected).all(|(a, b)| Arc::ptr_eq(a, b)),
            "in the snapshot's order, pointing at the same agents"
        );
        sent.push(pages.iter().map(|p| p.encoded(encode)).collect());
    }
    assert_eq!(
        encodings.load(Ordering::SeqCst),
        sent[0].len(),
        "each page encoded once for both watchers"
    );
    assert!(
        sent[0]
            .iter()
            .zip(&sent[1])
            .all(|(a, b)| a.as_ptr() == b.as_ptr()),
        "the watchers send the same bytes"
    );

    // Then the changes, after the snapshot's revision, for both.
    f.provision("late").await;
    for w in [&mut first, &mut second] {
        let WatchChunk::Item(WatchItem::Event(event)) = next_chunk(w).await else {
            panic!("the provision")
        };
        assert_eq!(event.revision, snapshot_at + 1);
        assert_eq!(event.agent.id, id("late"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_filtered_watch_by_pages_gets_its_snapshot_agent_by_agent() {
    let f = start(settings()).await;
    for name in ["a", "b", "c"] {
        f.provision(name).await;
    }
    let mut w = paged(
        &f,
        WatchRequest {
            filter: AgentFilter {
                statuses: vec![Status::Provisioning],
                ..AgentFilter::default()
            },
            ..WatchRequest::default()
        },
    )
    .await;
    let mut names = Vec::new();
    loop {
        match next_chunk(&mut w).await {
            WatchChunk::Item(WatchItem::Snapshot(agent)) => names.push(agent.id.to_string()),
            WatchChunk::Item(WatchItem::SnapshotComplete { .. }) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names, ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn events_already_received_are_taken_without_waiting_in_order() {
    let f = start(settings()).await;
    f.provision("first").await;
    let from = f.lifecycle.shared.engine.lock().revision();
    let mut w = paged(
        &f,
        WatchRequest {
            start_revision: from,
            ..WatchRequest::default()
        },
    )
    .await;
    // Waiting once registers the watcher with the live channel's wake-up.
    assert!(w.next().now_or_never().is_none(), "nothing yet");
    for n in 0..10 {
        f.provision(&format!("a{n}")).await;
    }
    let until = f.lifecycle.shared.engine.lock().revision();
    let mut revisions = Vec::new();
    // Each one ready at once: no waiting (and no time passing) between them.
    while let Some(next) = w.next().now_or_never() {
        match next {
            Some(Ok(WatchChunk::Item(WatchItem::Event(event)))) => revisions.push(event.revision),
            other => panic!("an event, got {other:?}"),
        }
    }
    assert_eq!(revisions, (from + 1..=until).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_paged_watcher_that_falls_behind_is_ended_with_its_resume_point() {
    let f = start(Settings {
        watch_buffer: 16,
        ..settings()
    })
    .await;
    f.provision("first").await;
    let from = f.lifecycle.shared.engine.lock().revision();
    let mut w = paged(
        &f,
        WatchRequest {
            start_revision: from,
            ..WatchRequest::default()
        },
    )
    .await;
    f.provision("a").await;
    let WatchChunk::Item(WatchItem::Event(event)) = next_chunk(&mut w).await else {
        panic!("the first change")
    };
    assert_eq!(event.revision, from + 1);
    // Not read while more than the channel holds commit.
    for n in 0..40 {
        f.provision(&format!("b{n}")).await;
    }
    match w.next().await {
        Some(Err(LifecycleError::ResourceExhausted {
            resume_revision, ..
        })) => assert_eq!(resume_revision, from + 1, "from the last one sent"),
        other => panic!("ended with a resume point, got {other:?}"),
    }
    assert!(w.next().await.is_none(), "then ended");
}

#[tokio::test(start_paused = true)]
async fn a_later_snapshot_reuses_the_encoding_of_each_page_that_did_not_change() {
    let f = start(settings()).await;
    let mut tokens = Vec::new();
    for n in 0..600 {
        tokens.push(f.provision(&format!("a{n:03}")).await.token.unwrap());
    }
    // Checked in: nothing moves them while the test runs.
    for token in &tokens {
        f.lifecycle.heartbeat(token, None).await.unwrap();
    }
    let encodings = AtomicUsize::new(0);
    let encode = |agents: &[Arc<Agent>]| {
        encodings.fetch_add(1, Ordering::SeqCst);
        Bytes::from(agents.iter().map(|a| a.id.to_string()).collect::<String>())
    };
    let mut first = paged(&f, WatchRequest::default()).await;
    let (before, _) = read_pages(&mut first).await;
    let sent: Vec<Bytes> = before.iter().map(|p| p.encoded(encode)).collect();
    assert_eq!(encodings.load(Ordering::SeqCst), before.len());

    // Past the age a snapshot is shared for, one agent more: a new
    // snapshot, whose last page differs and whose others do not.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.provision("late").await;
    let mut second = paged(&f, WatchRequest::default()).await;
    let (after, _) = read_pages(&mut second).await;
    assert_eq!(
        after.len(),
        before.len(),
        "the new agent fits the last page"
    );
    let resent: Vec<Bytes> = after.iter().map(|p| p.encoded(encode)).collect();
    assert_eq!(
        encodings.load(Ordering::SeqCst),
        before.len() + 1,
        "only the changed page encoded again"
    );
    let last = before.len() - 1;
    for (page, (a, b)) in sent.iter().zip(&resent).enumerate() {
        assert_eq!(a.as_ptr() == b.as_ptr(), page != last, "page {page}");
    }
}
