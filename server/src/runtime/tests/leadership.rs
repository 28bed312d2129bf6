//! Leadership on paused time: two replicas over one in-memory store. A
//! leader that cannot prove its lease stops acting at once; a stalled
//! leader is replaced within one lease TTL and, on waking, acts no more;
//! a follower's copy follows the event log by revision; a takeover extends
//! leases over the gap.

use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::engine::Reason;

/// Default settings: a 5 s leader lease: the row expires 3 s after a
/// renewal, renewed every 0.5 s, proven for 2.5 s after a renewal starts.
fn settings() -> Settings {
    fast_settings()
}

/// A second replica on the same data, with the leader's clock.
async fn follower(leader: &Fixture) -> (Lifecycle, Arc<MemoryStore>) {
    let store = Arc::new(leader.store.replica());
    let lifecycle = Lifecycle::start(store.clone(), settings(), leader.clock)
        .await
        .expect("start a follower");
    (lifecycle, store)
}

fn is_not_leader<T: std::fmt::Debug>(result: Result<T, LifecycleError>) -> bool {
    matches!(result, Err(LifecycleError::Unavailable(ref m)) if m.contains("not the leader"))
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_prove_its_lease_stops_acting_at_once() {
    let f = start(settings()).await;
    let (_session, mut gateway) = f.connect();
    let token = f.provision("steady").await.token.unwrap();
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    f.provision("silent").await;
    for agent in ["steady", "silent"] {
        let (_, wake) = next_wake(&mut gateway, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(wake.agent_id, id(agent));
    }
    // Its last renewal started at 0 s: proven until 2.5 s. From now on no
    // renewal reaches the store.
    f.store.set_lease_cut_off(true);

    tokio::time::sleep(Duration::from_millis(2499)).await;
    assert_eq!(
        f.lifecycle.heartbeat(&token, None).await.unwrap().status,
        Status::Online
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(f.elapsed(), 2.5);
    assert!(is_not_leader(f.lifecycle.heartbeat(&token, None).await));
    assert!(is_not_leader(f.lifecycle.provision(spec("late")).await));
    assert!(is_not_leader(
        f.lifecycle.connect_gateway(&f.gateway_token).map(drop)
    ));
    assert_eq!(f.lifecycle.role(), ReplicaRole::Follower);
    // Its gateway is told to reconnect (to the leader), and no wake follows:
    // the silent agent's deadline (30 s) passes with nothing committed.
    let commits = f.store.write_counts().0;
    assert!(matches!(
        gateway.recv().await,
        Some(Outbound::Closed(CloseReason::NotLeader))
    ));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(f.store.write_counts().0, commits, "nothing committed");
    assert!(gateway.recv().await.is_none(), "no wake sent");
}

#[tokio::test(start_paused = true)]
async fn a_start_whose_load_outlasts_the_lease_proof_still_leads() {
    let store = Arc::new(MemoryStore::new());
    // Four times the 2.5 s proof: a large fleet read on a loaded machine.
    store.set_load_delay(Duration::from_secs(10));
    let f = start_on(store, settings()).await;
    assert_eq!(f.lifecycle.role(), ReplicaRole::Leader);
    let token = f.provision("after-a-slow-start").await.token.unwrap();
    assert_eq!(
        f.lifecycle.heartbeat(&token, None).await.unwrap().status,
        Status::Online
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_leader_is_replaced_within_one_lease_and_acts_no_more() {
    let a = start(settings()).await;
    let (b, _) = follower(&a).await;
    assert_eq!(b.role(), ReplicaRole::Follower);
    let epoch = a.store.lease_epoch();
    let token = a.provision("steady").await.token.unwrap();
    a.lifecycle.heartbeat(&token, None).await.unwrap();
    assert!(
        is_not_leader(b.heartbeat(&token, None).await),
        "a follower acknowledges nothing"
    );

    // The leader stalls after its renewal at 0 s: the lease expires at 3 s,
    // and the follower has taken over well within the 5 s lease.
    a.store.set_lease_cut_off(true);
    let mut waited = 0;
    while b.role() != ReplicaRole::Leader && waited < 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(b.role(), ReplicaRole::Leader);
    assert!(a.elapsed() <= 3.5, "took over at {} s", a.elapsed());
    assert_eq!(a.store.lease_epoch(), epoch + 1);

    assert!(is_not_leader(a.lifecycle.heartbeat(&token, None).await));
    assert_eq!(
        b.heartbeat(&token, None).await.unwrap().status,
        Status::Online
    );
    // The old leader wakes: it learns it lost, and still acts as nothing.
    a.store.set_lease_cut_off(false);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(a.lifecycle.role(), ReplicaRole::Follower);
    assert!(is_not_leader(a.lifecycle.heartbeat(&token, None).await));
    assert!(is_not_leader(a.lifecycle.provision(spec("late")).await));
    b.provision(spec("next")).await.unwrap();
}

/// A renewal that comes late (a slow database) costs a pause, not the
/// lease: past its proof the leader acts on nothing, and once a renewal
/// proves the lease again it acts with the same epoch; the follower, which
/// tries at the expiry it read, finds the lease renewed.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_come_late_pauses_and_keeps_its_lease() {
    let a = start(settings()).await;
    let (b, _) = follower(&a).await;
    let token = a.provision("steady").await.token.unwrap();
    a.lifecycle.heartbeat(&token, None).await.unwrap();
    let epoch = a.store.lease_epoch();
    // The renewal at 0.5 s succeeds (proven until 3 s, the row until
    // 3.5 s); the next ones fail, retried every 0.25 s.
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.store.set_lease_cut_off(true);
    tokio::time::sleep(Duration::from_millis(2450)).await;
    assert_eq!(a.elapsed(), 3.05);
    assert!(is_not_leader(a.lifecycle.heartbeat(&token, None).await));
    assert!(is_not_leader(a.lifecycle.provision(spec("paused")).await));
    assert_eq!(a.lifecycle.role(), ReplicaRole::Follower, "not leading now");
    // The database answers again: the retry at 3.25 s renews the lease.
    a.store.set_lease_cut_off(false);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        a.lifecycle.heartbeat(&token, None).await.unwrap().status,
        Status::Online
    );
    a.provision("resumed").await;
    assert_eq!(a.lifecycle.role(), ReplicaRole::Leader);
    // Past the old expiry (3.5 s) and well beyond: the same lease.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(a.store.lease_epoch(), epoch);
    assert_eq!(b.role(), ReplicaRole::Follower);
    assert_eq!(a.lifecycle.role(), ReplicaRole::Leader);
}

/// The follower's polls (every 500 ms from its start at 0.25 s) straddle
/// the expiry at 3 s: it tries at the expiry the store reported instead.
#[tokio::test(start_paused = true)]
async fn a_follower_tries_right_when_the_lease_it_read_expires() {
    let a = start(settings()).await;
    a.store.set_lease_cut_off(true);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (b, _) = follower(&a).await;
    let mut roles = b.roles();
    let mut waited = 0;
    while *roles.borrow_and_update() == ReplicaRole::Follower && waited < 100 {
        tokio::time::timeout(Duration::from_millis(100), roles.changed())
            .await
            .ok();
        waited += 1;
    }
    assert_ne!(b.role(), ReplicaRole::Follower);
    // The old lease was renewed at start (0 s): free at 3 s, not at 3.25 s.
    assert!(
        (2.99..3.01).contains(&a.elapsed()),
        "took over at {} s",
        a.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_takeover_extends_leases_over_the_gap() {
    let a = start(settings()).await;
    let (b, _) = follower(&a).await;
    let token = a.provision("quiet").await.token.unwrap();
    // Online, its lease to 30 s; it then heartbeats to nobody during the
    // failover, and its lease passes within the gap (from 28 s to about 31 s).
    a.lifecycle.heartbeat(&token, None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(28)).await;
    a.store.set_lease_cut_off(true);
    let mut waited = 0;
    while b.role() != ReplicaRole::Leader && waited < 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(b.role(), ReplicaRole::Leader);
    assert!(a.elapsed() > 30.0, "the old lease passed in the gap");

    let agent = b.get(&id("quiet")).unwrap();
    assert_eq!(agent.status, Status::Online);
    let grace_floor = a.clock.now().plus(b.policy().restart_grace);
    assert!(agent.lease_expires_at.unwrap() >= grace_floor.minus(Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(b.get(&id("quiet")).unwrap().status, Status::Online);
    assert_eq!(
        b.heartbeat(&token, None).await.unwrap().status,
        Status::Online
    );
    let history = b.history(&id("quiet"), None, 20).await.unwrap();
    assert!(history.iter().all(|e| e.reason != Reason::LeaseExpired));
}

#[tokio::test(start_paused = true)]
async fn a_follower_catches_up_by_revision_when_a_notification_is_lost() {
    let a = start(settings()).await;
    // Connected, so each provision is one event (no failed wake after it).
    let (_session, _gateway) = a.connect();
    let (b, b_store) = follower(&a).await;
    let mut watch = Box::pin(b.watch(WatchRequest::default()).await.unwrap());
    let Some(Ok(WatchItem::SnapshotComplete { revision: start })) = watch.next().await else {
        panic!("an empty snapshot first");
    };

    b_store.set_notifications_lost(true);
    a.provision("one").await;
    a.provision("two").await;
    tokio::task::yield_now().await;
    assert!(b.get(&id("two")).is_err(), "not told yet");
    // The follower's poll reads what the lost notification did not announce.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for agent in ["one", "two"] {
        let (ours, theirs) = (b.get(&id(agent)).unwrap(), a.agent(agent));
        assert_eq!(ours.revision, theirs.revision);
        assert_eq!(ours.status, theirs.status);
        let Some(Ok(WatchItem::Event(event))) = watch.next().await else {
            panic!("the event of {agent}");
        };
        assert_eq!(event.agent.id, id(agent));
        assert_eq!(event.revision, theirs.revision, "the leader's revisions");
        assert!(event.revision > start);
    }

    // Told at once while notifications arrive.
    b_store.set_notifications_lost(false);
    a.provision("three").await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        b.get(&id("three")).unwrap().revision,
        a.agent("three").revision
    );
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_steps_down_hands_over_without_waiting_for_the_lease() {
    let a = start(settings()).await;
    let (b, _) = follower(&a).await;
    let token = a.provision("steady").await.token.unwrap();
    a.lifecycle.heartbeat(&token, None).await.unwrap();

    a.lifecycle.step_down().await;
    assert!(is_not_leader(a.lifecycle.heartbeat(&token, None).await));
    let mut waited = 0;
    while b.role() != ReplicaRole::Leader && waited < 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(b.role(), ReplicaRole::Leader);
    assert!(
        a.elapsed() <= 1.0,
        "took over at {} s, not after the lease",
        a.elapsed()
    );
    assert_eq!(
        b.heartbeat(&token, None).await.unwrap().status,
        Status::Online
    );
    // The one that handed over never takes the lease back.
    b.step_down().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(a.lifecycle.role(), ReplicaRole::Follower);
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_loses_its_lease_in_an_outage_and_wins_it_back_takes_over_again() {
    let f = start(settings()).await;
    let token = f.provision("steady").await.token.unwrap();
    f.lifecycle.heartbeat(&token, None).await.unwrap();

    // An outage past the proof (2.5 s) and the lease row (3 s), with a commit
    // failing in it: the writer is still waiting to rebuild (its next try at
    // 6.3 s) when leadership is lost and then won back.
    f.store.set_unavailable(true);
    assert!(f.lifecycle.provision(spec("refused")).await.is_err());
    tokio::time::sleep(Duration::from_millis(5200)).await;
    assert_eq!(f.lifecycle.role(), ReplicaRole::Follower);
    assert!(is_not_leader(f.lifecycle.heartbeat(&token, None).await));
    f.store.set_unavailable(false);

    // It takes the lease again at once, and the writer takes over again
    // instead of dropping the lease it just won.
    let mut waited = 0;
    while f.lifecycle.role() != ReplicaRole::Leader && waited < 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(f.lifecycle.role(), ReplicaRole::Leader);
    assert!(f.elapsed() <= 6.0, "leads again at {} s", f.elapsed());
    assert_eq!(
        f.lifecycle.heartbeat(&token, None).await.unwrap().status,
        Status::Online
    );
    f.provision("after").await;
}
