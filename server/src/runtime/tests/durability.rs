//! Restarts, outages and checkpoints: nothing acknowledged is lost.

use std::time::Duration;

use super::*;
use crate::engine::{Reason, Status};
use crate::store::Store;

const LONG: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn a_restart_mid_cycle_loses_nothing_and_spreads_passed_deadlines() {
    let store = Arc::new(MemoryStore::new());
    let first = start_on(store.clone(), fast_settings()).await;
    let (session, mut commands) = first.connect();
    let mut tokens = Vec::new();
    for n in 0..10 {
        tokens.push(first.provision(&format!("agent-{n}")).await.token.unwrap());
    }
    for _ in 0..10 {
        next_wake(&mut commands, LONG).await.unwrap();
    }
    let online_token = first.provision("online").await.token.unwrap();
    first
        .lifecycle
        .heartbeat(&online_token, None)
        .await
        .unwrap();
    let before = store.load().await.unwrap();
    drop(session);
    first.lifecycle.stop().await;

    // Down for five minutes: every deadline and the lease pass meanwhile.
    tokio::time::sleep(Duration::from_secs(300)).await;
    let restarted_at = first.clock.now();
    let second = start_at(store.clone(), fast_settings(), restarted_at).await;
    let (_session, mut commands) = second.connect();

    let grace = second.lifecycle.policy().restart_grace;
    let mut deadlines = std::collections::BTreeSet::new();
    for n in 0..10 {
        let agent = second.agent(&format!("agent-{n}"));
        assert_eq!(agent.wake_attempts, 1, "attempts survive the restart");
        let deadline = agent.checkin_deadline_at.unwrap();
        assert!(deadline >= restarted_at.plus(grace) && deadline <= restarted_at.plus(grace * 2));
        deadlines.insert(deadline);
    }
    assert!(deadlines.len() >= 5, "spread out: {deadlines:?}");
    let online = second.agent("online");
    assert_eq!(online.status, Status::Online);
    assert!(online.lease_expires_at.unwrap() >= restarted_at.plus(grace));

    let stored = store.load().await.unwrap();
    assert_eq!(stored.agents.len(), before.agents.len());
    assert!(stored.revision > before.revision);
    let history = second
        .lifecycle
        .history(&id("agent-3"), None, 1)
        .await
        .unwrap();
    assert_eq!(history[0].reason, Reason::RestartGrace);

    // No wake at start; the second attempts come within the grace window.
    assert!(
        next_wake(&mut commands, grace - Duration::from_millis(1))
            .await
            .is_none()
    );
    let mut second_attempts = 0;
    while let Some((_, order)) = next_wake(&mut commands, grace + Duration::from_secs(1)).await {
        if order.attempt == 2 {
            second_attempts += 1;
        }
        if second_attempts == 10 {
            break;
        }
    }
    assert_eq!(second_attempts, 10);
    // The agents' tokens still work after the restart.
    let ack = second.lifecycle.heartbeat(&tokens[0], None).await.unwrap();
    assert_eq!(ack.status, Status::Online);
}

#[tokio::test(start_paused = true)]
async fn steady_heartbeats_are_checkpointed_in_batches() {
    let mut settings = Settings {
        checkpoint_interval: Duration::from_secs(5),
        ..fast_settings()
    };
    // Agents asked to beat every 2 s (less jitter) may beat once a second.
    settings.policy.heartbeat_interval = Duration::from_secs(2);
    let f = start(settings).await;
    let mut tokens = Vec::new();
    for n in 0..20 {
        let token = f.provision(&format!("a{n}")).await.token.unwrap();
        f.lifecycle.heartbeat(&token, None).await.unwrap();
        tokens.push(token);
    }
    let (commits_before, checkpoints_before) = f.store.write_counts();

    // 20 agents, one heartbeat a second each, for 60 seconds.
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for token in &tokens {
            f.lifecycle.heartbeat(token, None).await.unwrap();
        }
    }
    let last_heartbeat = f.clock.now();
    let (commits, checkpoints) = f.store.write_counts();
    assert_eq!(commits, commits_before, "steady heartbeats commit nothing");
    let written = checkpoints - checkpoints_before;
    assert!(
        (11..=13).contains(&written),
        "one checkpoint per interval, not per heartbeat: {written}"
    );

    let stored = f.store.load().await.unwrap();
    for agent in &stored.agents {
        let lag = last_heartbeat.since(agent.last_seen_at.unwrap());
        assert!(
            lag <= Duration::from_secs(5),
            "stored last_seen lags by at most the interval: {lag:?}"
        );
    }
    f.lifecycle.stop().await;
    let flushed = f.store.load().await.unwrap();
    assert!(
        flushed
            .agents
            .iter()
            .all(|a| a.last_seen_at == Some(last_heartbeat)),
        "stop flushes"
    );
}

#[tokio::test(start_paused = true)]
async fn a_database_outage_refuses_transitions_then_recovers_without_loss() {
    let f = start(fast_settings()).await;
    let token = f.provision("steady").await.token.unwrap();
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    let mut reachable = f.lifecycle.database_reachable();
    assert!(*reachable.borrow_and_update());

    f.store.set_unavailable(true);
    let refused = f.lifecycle.provision(spec("during")).await;
    assert!(
        matches!(refused, Err(LifecycleError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(
        !*reachable.borrow_and_update(),
        "health follows the database"
    );
    // An online agent's heartbeats need no database.
    assert_eq!(
        f.lifecycle.heartbeat(&token, None).await.unwrap().status,
        Status::Online
    );
    assert!(
        matches!(
            f.lifecycle.get(&id("during")),
            Err(LifecycleError::NotFound(_))
        ),
        "nothing uncommitted is visible"
    );

    f.store.set_unavailable(false);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(*reachable.borrow_and_update());
    f.provision("after").await;
    assert_eq!(f.agent("steady").status, Status::Online);
    assert_eq!(f.agent("after").status, Status::Provisioning);
}

#[tokio::test(start_paused = true)]
async fn one_late_ping_leaves_health_alone_and_two_in_a_row_turn_it() {
    let mut settings = fast_settings();
    settings.health_check_interval = Duration::from_secs(1);
    let f = start(settings).await;
    let mut reachable = f.lifecycle.database_reachable();
    assert!(*reachable.borrow_and_update());

    // Each ping answers after 1.5 s, past its 1 s timeout. The probe ticks
    // at 1 s, 2 s (late by 2 s), 3 s (late by 3 s)...
    f.store.set_ping_delay(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        *reachable.borrow_and_update(),
        "one late ping is not an outage"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !*reachable.borrow_and_update(),
        "two late pings in a row are"
    );

    f.store.set_ping_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        *reachable.borrow_and_update(),
        "a prompt answer brings it back"
    );

    // A refused ping is the database down, at once.
    f.store.set_unavailable(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        !*reachable.borrow_and_update(),
        "a refused ping is an outage"
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeats_answered_during_an_outage_survive_the_rebuild_after_it() {
    let mut settings = fast_settings();
    settings.policy.lease_ttl = Duration::from_secs(120);
    settings.policy.restart_grace = Duration::from_secs(5);
    // The outage stays within the leader lease: past it, a leader answers
    // nothing (see `leadership.rs`).
    settings.leader_lease = Duration::from_secs(600);
    let f = start(settings).await;
    let token = f.provision("live").await.token.unwrap();
    f.lifecycle.heartbeat(&token, None).await.unwrap(); // lease to 120 s, committed

    tokio::time::sleep(Duration::from_secs(21)).await;
    f.store.set_unavailable(true);
    assert!(
        matches!(
            f.lifecycle.provision(spec("refused")).await,
            Err(LifecycleError::Unavailable(_))
        ),
        "the writer notices"
    );
    tokio::time::sleep(Duration::from_secs(80)).await;
    for _ in 0..2 {
        f.lifecycle.heartbeat(&token, None).await.unwrap(); // answered from memory
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let renewed = f.agent("live").lease_expires_at.unwrap();
    f.store.set_unavailable(false);

    // Past the lease the store knew of (120 s), within the renewed one.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let agent = f.agent("live");
    assert_eq!(agent.status, Status::Online, "not expired by the rebuild");
    assert!(agent.lease_expires_at.unwrap() >= renewed);
    let history = f.lifecycle.history(&id("live"), None, 10).await.unwrap();
    assert!(history.iter().all(|e| e.reason != Reason::LeaseExpired));
}

#[tokio::test(start_paused = true)]
async fn a_commit_whose_answer_was_lost_is_recovered_and_announced_once() {
    let f = start(fast_settings()).await;
    let mut watch = Box::pin(f.lifecycle.watch(WatchRequest::default()).await.unwrap());
    use futures_util::StreamExt;
    assert!(matches!(
        watch.next().await,
        Some(Ok(WatchItem::SnapshotComplete { .. }))
    ));

    f.store.set_lose_commit_answers(true);
    let lost = f.lifecycle.provision(spec("maybe")).await;
    assert!(matches!(lost, Err(LifecycleError::Unavailable(_))));
    f.store.set_lose_commit_answers(false);
    tokio::time::sleep(Duration::from_secs(10)).await;

    // The store kept it, so the service shows it and watchers hear of it.
    assert_eq!(f.agent("maybe").status, Status::Provisioning);
    let Some(Ok(WatchItem::Event(event))) = watch.next().await else {
        panic!("expected the recovered event");
    };
    assert_eq!(event.agent.id, id("maybe"));
    assert_eq!(event.revision, 1);
    f.provision("next").await;
    let Some(Ok(WatchItem::Event(event))) = watch.next().await else {
        panic!("expected the next event");
    };
    assert_eq!(event.revision, 2, "no duplicate, no gap");
}
