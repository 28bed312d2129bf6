//! Takeovers from a follower's warm copy, on paused time over one in-memory
//! store: the copy holds what the events do not carry (token hashes, leases
//! checkpointed without an event), a takeover extends leases and deadlines
//! over the gap as a restart does, and a copy that cannot be trusted is
//! loaded in full instead.

use std::time::Duration;

use super::*;
use crate::engine::Reason;

async fn follower(leader: &Fixture, settings: Settings) -> (Lifecycle, Arc<MemoryStore>) {
    let store = Arc::new(leader.store.replica());
    let lifecycle = Lifecycle::start(store.clone(), settings, leader.clock)
        .await
        .expect("start a follower");
    (lifecycle, store)
}

/// Waits (paused time, polling) until `replica` leads.
async fn until_leader(replica: &Lifecycle) {
    let mut waited = 0;
    while replica.role() != ReplicaRole::Leader && waited < 200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(replica.role(), ReplicaRole::Leader);
}

/// How many takeovers `replica` made from its warm copy, and from a full load.
fn takeovers(replica: &Lifecycle) -> (u64, u64) {
    let metrics = replica.render_metrics();
    let count = |from: &str| {
        let line = format!("mission_control_takeovers_total{{from=\"{from}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .expect("the takeover counter")
            .parse()
            .unwrap()
    };
    (count("warm_copy"), count("full_load"))
}

/// Leases longer than the restart grace, so the stored lease is past the
/// grace window: the follower must know the checkpointed one.
fn long_leases() -> Settings {
    Settings {
        policy: Policy {
            lease_ttl: Duration::from_secs(120),
            restart_grace: Duration::from_secs(10),
            ..Policy::default()
        },
        ..fast_settings()
    }
}

#[tokio::test(start_paused = true)]
async fn a_warm_takeover_knows_checkpointed_leases_and_rotated_tokens() {
    let a = start(long_leases()).await;
    let (_session, _gateway) = a.connect();
    let (b, _) = follower(&a, long_leases()).await;
    let steady = a.provision("steady").await.token.unwrap();
    a.lifecycle.heartbeat(&steady, None).await.unwrap();
    let first = a.provision("rotated").await.token.unwrap();
    let rotated = a
        .lifecycle
        .provision(ProvisionSpec {
            rotate_token: true,
            ..spec("rotated")
        })
        .await
        .unwrap()
        .token
        .unwrap();
    a.lifecycle.heartbeat(&rotated, None).await.unwrap();

    // A heartbeat renews the lease in memory; the checkpoint writes it
    // without an event.
    tokio::time::sleep(Duration::from_secs(30)).await;
    a.lifecycle.heartbeat(&steady, None).await.unwrap();
    a.lifecycle.checkpoint_now().await;
    let checkpointed = a.agent("steady");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        b.get(&id("steady")).unwrap().lease_expires_at,
        checkpointed.lease_expires_at,
        "the follower read the checkpoint"
    );

    a.store.set_lease_cut_off(true);
    until_leader(&b).await;
    assert_eq!(takeovers(&b), (1, 0), "taken over from the warm copy");
    // Its lease (to 150 s) ends after the grace period, but the old leader
    // may have answered a heartbeat it never checkpointed: the lease runs at
    // least one lease TTL from the takeover, never less than stored.
    let agent = b.get(&id("steady")).unwrap();
    assert_eq!(agent.status, Status::Online);
    assert_eq!(agent.last_seen_at, checkpointed.last_seen_at);
    let lease = agent.lease_expires_at.unwrap();
    assert!(lease > checkpointed.lease_expires_at.unwrap());
    assert!(
        lease
            >= a.clock
                .now()
                .plus(b.policy().lease_ttl)
                .minus(Duration::from_secs(1))
    );
    // Tokens came with the stored rows: the rotated one works, the old
    // one of the re-provisioned agent does not.
    for token in [&steady, &rotated] {
        let ack = b.heartbeat(token, None).await.unwrap();
        assert_eq!(ack.status, Status::Online);
    }
    assert!(matches!(
        b.heartbeat(&first, None).await,
        Err(LifecycleError::Unauthenticated(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_warm_takeover_extends_leases_and_deadlines_over_the_gap() {
    let a = start(settings_default()).await;
    let (_session, mut gateway) = a.connect();
    let (b, _) = follower(&a, settings_default()).await;
    let token = a.provision("quiet").await.token.unwrap();
    a.lifecycle.heartbeat(&token, None).await.unwrap();
    a.provision("waiting").await;
    for _ in 0..2 {
        next_wake(&mut gateway, Duration::from_secs(1))
            .await
            .unwrap();
    }
    // The quiet agent's lease (to 30 s) and the waiting one's deadline (to
    // 30 s) both pass while nobody leads.
    tokio::time::sleep(Duration::from_secs(28)).await;
    a.store.set_lease_cut_off(true);
    until_leader(&b).await;
    assert!(
        a.elapsed() > 30.0,
        "the lease and the deadline passed in the gap"
    );
    assert_eq!(takeovers(&b), (1, 0));

    let now = a.clock.now();
    let grace = b.policy().restart_grace;
    let quiet = b.get(&id("quiet")).unwrap();
    assert_eq!(quiet.status, Status::Online);
    assert!(quiet.lease_expires_at.unwrap() >= now.plus(grace).minus(Duration::from_secs(1)));
    let waiting = b.get(&id("waiting")).unwrap();
    assert_eq!(waiting.wake_attempts, 1, "not woken again at once");
    assert!(waiting.checkin_deadline_at.unwrap() >= now.plus(grace).minus(Duration::from_secs(1)));
    let history = b.history(&id("waiting"), None, 20).await.unwrap();
    assert_eq!(history[0].reason, Reason::RestartGrace);

    // Within the grace, the quiet agent heartbeats to the new leader: no
    // false OFFLINE, then or later.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        b.heartbeat(&token, None).await.unwrap().status,
        Status::Online
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(b.get(&id("quiet")).unwrap().status, Status::Online);
    let history = b.history(&id("quiet"), None, 20).await.unwrap();
    assert!(history.iter().all(|e| e.reason != Reason::LeaseExpired));
}

#[tokio::test(start_paused = true)]
async fn a_follower_that_missed_every_notification_takes_over_warm() {
    let a = start(settings_default()).await;
    let (_session, _gateway) = a.connect();
    let (b, b_store) = follower(&a, settings_default()).await;
    b_store.set_notifications_lost(true);
    // The follower makes its first read now, before anything is committed,
    // however the scheduler orders the tasks started with each replica.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut tokens = Vec::new();
    for n in 0..5 {
        let agent = format!("agent-{n}");
        let token = a.provision(&agent).await.token.unwrap();
        a.lifecycle.heartbeat(&token, None).await.unwrap();
        tokens.push(token);
    }
    a.lifecycle.delete(id("agent-4")).await.unwrap();
    // Not told (its polls read it instead).
    assert!(b.get(&id("agent-0")).is_err());
    a.store.set_lease_cut_off(true);
    until_leader(&b).await;
    assert_eq!(takeovers(&b), (1, 0));
    for (n, token) in tokens.iter().enumerate().take(4) {
        let ack = b.heartbeat(token, None).await.unwrap();
        assert_eq!(ack.agent_id, id(&format!("agent-{n}")));
        assert_eq!(ack.status, Status::Online);
    }
    assert!(b.get(&id("agent-4")).is_err(), "deleted");
    assert!(matches!(
        b.heartbeat(&tokens[4], None).await,
        Err(LifecycleError::Unauthenticated(_))
    ));
    // The deleted id's generation is remembered: a new agent of that id
    // starts above it.
    let again = b.provision(spec("agent-4")).await.unwrap();
    assert_eq!(again.agent.generation, 2);
}

/// A replica that led holds leases ahead of the store: once it follows, it
/// loads its copy anew, so that its next takeover is warm again.
#[tokio::test(start_paused = true)]
async fn a_replica_that_led_follows_from_a_fresh_copy() {
    let a = start(settings_default()).await;
    let (b, b_store) = follower(&a, settings_default()).await;
    let token = a.provision("steady").await.token.unwrap();
    a.lifecycle.heartbeat(&token, None).await.unwrap();

    a.store.set_lease_cut_off(true);
    until_leader(&b).await;
    a.store.set_lease_cut_off(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.lifecycle.role(), ReplicaRole::Follower);
    b.heartbeat(&token, None).await.unwrap();
    b.provision(spec("later")).await.unwrap();

    b_store.set_lease_cut_off(true);
    until_leader(&a.lifecycle).await;
    assert_eq!(takeovers(&a.lifecycle), (1, 0), "warm from the fresh copy");
    assert_eq!(
        a.lifecycle.heartbeat(&token, None).await.unwrap().status,
        Status::Online
    );
    assert_eq!(a.agent("later").generation, 1);
}

fn settings_default() -> Settings {
    fast_settings()
}
