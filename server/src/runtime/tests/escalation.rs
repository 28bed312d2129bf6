//! The policy through the runtime: wakes reach the gateway at the right
//! instants, check-ins stop escalation, failures are recorded.

use std::time::Duration;

use super::*;

const LONG: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn an_agent_that_never_checks_in_gets_three_wakes_thirty_seconds_apart_then_goes_offline() {
    let f = start(fast_settings()).await;
    let (_session, mut commands) = f.connect();
    f.provision("silent").await;

    let mut woken_at = Vec::new();
    while let Some((_, order)) = next_wake(&mut commands, Duration::from_secs(100)).await {
        woken_at.push((order.attempt, f.elapsed()));
    }
    assert_eq!(woken_at, [(1, 0.0), (2, 30.0), (3, 60.0)]);

    let agent = f.agent("silent");
    assert_eq!(agent.status, Status::Offline);
    assert_eq!(agent.wake_attempts, 3);
    assert_eq!(agent.checkin_deadline_at, None);
    assert!(
        agent
            .last_provision_error
            .unwrap()
            .contains("3 wake attempts")
    );
    let history = f.lifecycle.history(&id("silent"), None, 10).await.unwrap();
    let offline_at = history[0].at.since(Timestamp::from_micros(EPOCH));
    assert_eq!(offline_at, Duration::from_secs(90));
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_checks_in_on_its_second_wake_goes_online_and_is_not_woken_again() {
    let f = start(fast_settings()).await;
    let (_session, mut commands) = f.connect();
    let provisioned = f.provision("late").await;
    let token = provisioned.token.unwrap();

    assert_eq!(next_wake(&mut commands, LONG).await.unwrap().1.attempt, 1);
    assert_eq!(next_wake(&mut commands, LONG).await.unwrap().1.attempt, 2);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ack = f.lifecycle.heartbeat(&token, None).await.unwrap();
    assert_eq!(ack.status, Status::Online);
    assert!(ack.next_heartbeat_in <= f.lifecycle.policy().heartbeat_interval);
    assert!(ack.next_heartbeat_in >= f.lifecycle.policy().heartbeat_interval.mul_f64(0.8));

    let agent = f.agent("late");
    assert_eq!(agent.status, Status::Online);
    assert_eq!(agent.wake_attempts, 0);
    assert_eq!(agent.checkin_deadline_at, None);

    // Keep heartbeating through what would have been the later deadlines.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(9)).await;
        f.lifecycle.heartbeat(&token, None).await.unwrap();
    }
    assert!(
        next_wake(&mut commands, Duration::from_secs(1))
            .await
            .is_none()
    );
    assert_eq!(f.agent("late").status, Status::Online);
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_just_before_the_deadline_wins_the_race() {
    let f = start(fast_settings()).await;
    let (_session, mut commands) = f.connect();
    let token = f.provision("racer").await.token.unwrap();
    next_wake(&mut commands, LONG).await.unwrap();

    tokio::time::sleep(Duration::from_millis(29_999)).await;
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        next_wake(&mut commands, Duration::from_secs(60))
            .await
            .is_none()
    );
    assert_eq!(f.agent("racer").wake_attempts, 0);
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_queued_behind_slow_commits_still_beats_its_deadline() {
    let f = start(Settings {
        max_batch: 4,
        ..fast_settings()
    })
    .await;
    let (_session, mut commands) = f.connect();
    let token = f.provision("late").await.token.unwrap();
    next_wake(&mut commands, LONG).await.unwrap();

    // From 28 s the database is slow and a backlog builds up.
    tokio::time::sleep(Duration::from_secs(28)).await;
    f.store.set_commit_delay(Duration::from_secs(2));
    let backlog: Vec<_> = (0..10)
        .map(|n| {
            let lifecycle = f.lifecycle.clone();
            tokio::spawn(async move { lifecycle.provision(spec(&format!("other-{n}"))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let heartbeat = {
        let lifecycle = f.lifecycle.clone();
        tokio::spawn(async move { lifecycle.heartbeat(&token, None).await })
    };
    assert_eq!(heartbeat.await.unwrap().unwrap().status, Status::Online);
    for provision in backlog {
        provision.await.unwrap().unwrap();
    }

    let history = f.lifecycle.history(&id("late"), None, 10).await.unwrap();
    let reasons: Vec<_> = history.iter().map(|e| e.reason).collect();
    assert_eq!(
        reasons,
        [
            crate::engine::Reason::CheckedIn,
            crate::engine::Reason::Provisioned
        ]
    );
    let last_seen = f.agent("late").last_seen_at.unwrap();
    assert_eq!(
        last_seen.since(Timestamp::from_micros(EPOCH)),
        Duration::from_millis(29_600)
    );
    while let Some((_, order)) = next_wake(&mut commands, Duration::from_millis(1)).await {
        assert_ne!(order.agent_id, id("late"), "no re-wake: {order:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_wake_to_a_disconnected_gateway_counts_and_says_why() {
    let f = start(fast_settings()).await;
    f.provision("orphan").await;
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(10)).await;

    let agent = f.agent("orphan");
    assert_eq!(agent.wake_attempts, 1);
    assert_eq!(
        agent.last_provision_error.as_deref(),
        Some("wake attempt 1 failed: gateway gw-1 is not connected")
    );
    tokio::time::sleep(Duration::from_secs(95)).await;
    let agent = f.agent("orphan");
    assert_eq!(
        agent.status,
        Status::Offline,
        "escalation went on and ended"
    );
    assert!(
        agent
            .last_provision_error
            .unwrap()
            .contains("not connected")
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_acknowledgement_is_recorded_and_a_stale_one_is_ignored() {
    let f = start(fast_settings()).await;
    let (session, mut commands) = f.connect();
    f.provision("a").await;
    let (first, _) = next_wake(&mut commands, LONG).await.unwrap();
    let (second, order) = next_wake(&mut commands, LONG).await.unwrap();
    assert_eq!(order.attempt, 2);

    // The first wake's failure arrives late: attempt 1 is over, and its
    // command was superseded by attempt 2's.
    assert!(
        session
            .acknowledge(first, Err("agent image missing".into()))
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(f.agent("a").last_provision_error, None);

    session
        .acknowledge(second, Err("agent image missing".into()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        f.agent("a").last_provision_error.as_deref(),
        Some("wake attempt 2 failed: gateway gw-1 reported: agent image missing")
    );
    assert!(
        matches!(
            session.acknowledge(second, Ok(())),
            Err(LifecycleError::InvalidArgument {
                field: "command_id",
                ..
            })
        ),
        "acknowledged once only"
    );
}

#[tokio::test(start_paused = true)]
async fn re_provision_and_operator_wake_restart_the_cycle_with_the_same_token() {
    let f = start(fast_settings()).await;
    let (_session, mut commands) = f.connect();
    let token = f.provision("a").await.token.unwrap();
    next_wake(&mut commands, LONG).await.unwrap();
    next_wake(&mut commands, LONG).await.unwrap();

    let again = f.provision("a").await;
    assert!(again.token.is_none(), "no new token unless asked");
    assert_eq!(again.agent.status, Status::Updating);
    assert_eq!(again.agent.wake_attempts, 1);
    let (_, order) = next_wake(&mut commands, LONG).await.unwrap();
    assert_eq!((order.generation, order.attempt), (2, 1));

    let woken = f.lifecycle.wake(id("a")).await.unwrap();
    assert_eq!((woken.generation, woken.wake_attempts), (3, 1));
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    assert_eq!(f.agent("a").status, Status::Online);
}

#[tokio::test(start_paused = true)]
async fn an_agent_gone_before_its_re_provision_was_staged_gets_a_token_from_the_writer() {
    let f = start(fast_settings()).await;
    // A re-provision that saw the agent (so minted nothing), staged once
    // the agent was deleted: the agent is new again and needs a token.
    let (provisioned, token) = f
        .lifecycle
        .call(|reply| Command::Provision {
            spec: spec("a"),
            minted: None,
            reply,
        })
        .await
        .unwrap();
    assert!(provisioned.created && provisioned.token_minted);
    let token = token.expect("the new agent's token");
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    assert_eq!(f.agent("a").status, Status::Online);
}

#[tokio::test(start_paused = true)]
async fn an_online_agent_that_stops_heartbeating_loses_its_lease() {
    let f = start(fast_settings()).await;
    let token = f.provision("a").await.token.unwrap();
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(f.agent("a").status, Status::Online);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent = f.agent("a");
    assert_eq!(agent.status, Status::Offline);
    assert_eq!(agent.offline_reason.as_deref(), Some("lease expired"));
}

#[tokio::test(start_paused = true)]
async fn bad_tokens_and_unknown_agents_are_refused() {
    let f = start(fast_settings()).await;
    let token = f.provision("a").await.token.unwrap();
    for bad in ["", "mca_nope", &token[..token.len() - 1]] {
        let error = f.lifecycle.heartbeat(bad, None).await.unwrap_err();
        assert_eq!(
            error,
            LifecycleError::Unauthenticated("invalid agent token".into())
        );
    }
    f.lifecycle.delete(id("a")).await.unwrap();
    let error = f.lifecycle.heartbeat(&token, None).await.unwrap_err();
    assert_eq!(
        error,
        LifecycleError::Unauthenticated("invalid agent token".into()),
        "same answer once deleted"
    );
    assert!(matches!(
        f.lifecycle.wake(id("a")).await,
        Err(LifecycleError::NotFound(_))
    ));
    assert!(matches!(
        f.lifecycle.get(&id("a")),
        Err(LifecycleError::NotFound(_))
    ));
    assert!(matches!(
        f.lifecycle.connect_gateway("mcg_wrong"),
        Err(LifecycleError::Unauthenticated(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_deleted_agent_is_retired_on_its_gateway_even_if_it_connects_later() {
    let f = start(fast_settings()).await;
    f.provision("a").await;
    f.lifecycle.delete(id("a")).await.unwrap();

    let (session, mut commands) = f.connect();
    let (command_id, command) = next_command(&mut commands, LONG).await.unwrap();
    let GatewayCommand::Retire(retire) = command else {
        panic!("expected a retire, got {command:?}");
    };
    assert_eq!(retire.agent_id, id("a"));
    session.acknowledge(command_id, Ok(())).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(session);

    let (_session, mut commands) = f.connect();
    assert!(
        next_command(&mut commands, Duration::from_secs(5))
            .await
            .is_none(),
        "not resent once delivered"
    );
}

#[tokio::test(start_paused = true)]
async fn rotating_a_gateway_token_ends_the_session_opened_with_the_old_one() {
    let f = start(fast_settings()).await;
    let (old_session, mut old_commands) = f.connect();
    f.provision("a").await;
    let (command_id, _) = next_wake(&mut old_commands, LONG).await.unwrap();

    let rotated = f
        .lifecycle
        .register_gateway(GatewaySpec {
            gateway_id: gateway(),
            name: Some("Gateway one".into()),
            rotate_token: true,
        })
        .await
        .unwrap();
    assert!(matches!(
        old_commands.recv().await,
        Some(Outbound::Closed(CloseReason::TokenRotated))
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let listed = f.lifecycle.list_gateways();
    assert_eq!(
        listed[0].gateway.link.state,
        crate::engine::LinkState::Disconnected,
        "ended by the rotation: disconnected, though its session object lives on"
    );
    assert!(
        matches!(
            old_session.acknowledge(command_id, Err("forged".into())),
            Err(LifecycleError::InvalidArgument {
                field: "command_id",
                ..
            })
        ),
        "its acks count no more"
    );
    assert!(
        matches!(
            f.lifecycle.connect_gateway(&f.gateway_token),
            Err(LifecycleError::Unauthenticated(_))
        ),
        "the old token is refused"
    );
    let new_token = rotated.token.unwrap();
    let (_session, mut commands) = f.lifecycle.connect_gateway(&new_token).unwrap();
    f.lifecycle.wake(id("a")).await.unwrap();
    assert!(next_wake(&mut commands, LONG).await.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_newer_gateway_connection_supersedes_the_older() {
    let f = start(fast_settings()).await;
    let (_old, mut old_commands) = f.connect();
    let (_new, mut new_commands) = f.connect();
    assert!(matches!(
        old_commands.recv().await,
        Some(Outbound::Closed(CloseReason::Superseded))
    ));
    f.provision("a").await;
    assert!(next_wake(&mut new_commands, LONG).await.is_some());
}
