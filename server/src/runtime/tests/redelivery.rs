//! Delivery that survives reconnects: unacknowledged commands go out again,
//! with the same id, on the gateway's next stream and, on an open stream,
//! after the acknowledgement timeout; each is acknowledged once.

use super::*;

const LONG: Duration = Duration::from_secs(3600);
/// Less than the check-in deadline (30 s), more than the ack timeout (10 s)
/// plus the resend task's period: a resend happens within it, the next
/// attempt's wake does not.
const WITHIN_TIMEOUT: Duration = Duration::from_secs(13);

/// The production acknowledgement timeout (10 s).
fn settings() -> Settings {
    Settings {
        gateway_ack_timeout: Settings::default().gateway_ack_timeout,
        ..fast_settings()
    }
}

#[tokio::test(start_paused = true)]
async fn a_replaced_stream_with_an_unacknowledged_wake_gets_it_again_same_id_acknowledged_once() {
    let f = start(settings()).await;
    let (old, mut old_commands) = f.connect();
    f.provision("a").await;
    let (command_id, wake) = next_wake(&mut old_commands, LONG).await.unwrap();
    assert_eq!((wake.generation, wake.attempt), (1, 1));

    // The gateway reconnects before it acknowledged: the new stream opens
    // with the same command, same id.
    let (new, mut new_commands) = f.connect();
    assert!(matches!(
        old_commands.recv().await,
        Some(Outbound::Closed(CloseReason::Superseded))
    ));
    let (again_id, again) = next_wake(&mut new_commands, Duration::from_millis(1))
        .await
        .expect("sent again at once on the new stream");
    assert_eq!(again_id, command_id);
    assert_eq!(again, wake);

    // The replaced stream's late acknowledgement counts for nothing.
    assert!(old.acknowledge(command_id, Ok(())).is_err());
    new.acknowledge(command_id, Ok(())).unwrap();
    assert!(
        new.acknowledge(command_id, Ok(())).is_err(),
        "acknowledged once"
    );
    assert!(
        next_command(&mut new_commands, WITHIN_TIMEOUT)
            .await
            .is_none(),
        "not sent again once acknowledged"
    );
    assert_eq!(f.agent("a").wake_attempts, 1);
    assert_eq!(f.agent("a").last_provision_error, None);
}

#[tokio::test(start_paused = true)]
async fn an_open_stream_gets_an_unacknowledged_wake_again_after_the_ack_timeout() {
    let f = start(settings()).await;
    let (session, mut commands) = f.connect();
    f.provision("a").await;
    let started = tokio::time::Instant::now();
    let (command_id, wake) = next_wake(&mut commands, LONG).await.unwrap();

    let (again_id, again) = next_wake(&mut commands, WITHIN_TIMEOUT).await.unwrap();
    let waited = started.elapsed();
    assert_eq!((again_id, &again), (command_id, &wake));
    let timeout = settings().gateway_ack_timeout;
    assert!(
        waited >= timeout && waited <= timeout + timeout / 4,
        "resent after the timeout, within a check period: {waited:?}"
    );
    session.acknowledge(command_id, Ok(())).unwrap();
    assert!(next_command(&mut commands, WITHIN_TIMEOUT).await.is_none());
    let metrics = f.lifecycle.render_metrics();
    assert!(metrics.contains("mission_control_gateway_commands_resent_total 1"));
    assert!(metrics.contains("mission_control_gateway_commands_pending 0"));
}

#[tokio::test(start_paused = true)]
async fn an_unacknowledged_retire_is_resent_on_the_open_stream() {
    let f = start(settings()).await;
    let (session, mut commands) = f.connect();
    f.provision("a").await;
    let (wake_id, _) = next_wake(&mut commands, LONG).await.unwrap();
    session.acknowledge(wake_id, Ok(())).unwrap();
    f.lifecycle.delete(id("a")).await.unwrap();

    let (retire_id, retire) = next_command(&mut commands, LONG).await.unwrap();
    assert!(matches!(retire, GatewayCommand::Retire(_)));
    let (again_id, again) = next_command(&mut commands, WITHIN_TIMEOUT)
        .await
        .expect("resent after the ack timeout, not at the next reconnect");
    assert_eq!((again_id, again), (retire_id, retire));
    session.acknowledge(retire_id, Ok(())).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;

    drop(session);
    let (_session, mut commands) = f.connect();
    assert!(
        next_command(&mut commands, WITHIN_TIMEOUT).await.is_none(),
        "done: neither resent nor re-derived"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wake_no_longer_wanted_is_not_resent() {
    let f = start(settings()).await;
    let (_session, mut commands) = f.connect();
    let token = f.provision("a").await.token.unwrap();
    next_wake(&mut commands, LONG).await.unwrap();
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    assert_eq!(f.agent("a").status, Status::Online);
    assert!(
        next_command(&mut commands, WITHIN_TIMEOUT).await.is_none(),
        "the agent checked in: the wake is dropped unanswered"
    );
    assert!(
        f.lifecycle
            .render_metrics()
            .contains("mission_control_gateway_commands_pending 0")
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_acknowledgement_of_an_older_generation_changes_nothing() {
    let f = start(settings()).await;
    let (session, mut commands) = f.connect();
    f.provision("a").await;
    let (old_id, old) = next_wake(&mut commands, LONG).await.unwrap();
    f.lifecycle.wake(id("a")).await.unwrap();
    let (new_id, new) = next_wake(&mut commands, LONG).await.unwrap();
    assert_eq!((old.generation, new.generation), (1, 2));
    assert_ne!(old_id, new_id);

    // The older wake was superseded: its failure is refused, not counted.
    assert!(session.acknowledge(old_id, Err("crashed".into())).is_err());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let agent = f.agent("a");
    assert_eq!((agent.generation, agent.wake_attempts), (2, 1));
    assert_eq!(agent.last_provision_error, None);
    session.acknowledge(new_id, Ok(())).unwrap();
}
