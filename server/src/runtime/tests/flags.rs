//! Policy flags, parsed as the binary parses them, through the runtime on
//! paused time: the numbers on the command line are the numbers it keeps.

use std::time::Duration;

use clap::Parser;

use super::*;
use crate::config::Config;
use crate::engine::Reason;

const LONG: Duration = Duration::from_secs(3600);

/// The settings `mission-control --dev FLAGS...` runs with, with the
/// background chores moved out of the way as in `fast_settings`.
fn settings_from(flags: &[&str]) -> Settings {
    let config = Config::parse_from(["mission-control", "--dev"].iter().chain(flags));
    Settings {
        checkpoint_interval: LONG,
        compaction_interval: LONG,
        health_check_interval: LONG,
        gateway_ack_timeout: LONG,
        ..config.settings().expect("valid flags")
    }
}

#[tokio::test(start_paused = true)]
async fn max_wake_attempts_five_wakes_five_times_before_offline() {
    let flags = ["--max-wake-attempts", "5", "--checkin-deadline", "10s"];
    let f = start(settings_from(&flags)).await;
    let (_session, mut commands) = f.connect();
    f.provision("silent").await;

    let mut woken_at = Vec::new();
    while let Some((_, order)) = next_wake(&mut commands, Duration::from_secs(100)).await {
        woken_at.push((order.attempt, f.elapsed()));
    }
    assert_eq!(
        woken_at,
        [(1, 0.0), (2, 10.0), (3, 20.0), (4, 30.0), (5, 40.0)]
    );
    let agent = f.agent("silent");
    assert_eq!(agent.status, Status::Offline);
    assert_eq!(agent.wake_attempts, 5);
    let error = agent.last_provision_error.unwrap();
    assert!(error.contains("5 wake attempts"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn wake_on_lease_expiry_starts_a_wake_cycle_when_a_lease_runs_out() {
    let flags = [
        "--wake-on-lease-expiry",
        "--lease-ttl",
        "20s",
        "--heartbeat-interval",
        "5s",
    ];
    let f = start(settings_from(&flags)).await;
    let (session, mut commands) = f.connect();
    let token = f.provision("a").await.token.unwrap();
    let (command_id, first) = next_wake(&mut commands, LONG).await.unwrap();
    assert_eq!(first.attempt, 1);
    session.acknowledge(command_id, Ok(())).unwrap();
    f.lifecycle.heartbeat(&token, None).await.unwrap();
    assert_eq!(f.agent("a").status, Status::Online);

    // Silent from now on: the lease runs out at 20 s and a new cycle begins.
    let (_, rewake) = next_wake(&mut commands, Duration::from_secs(60))
        .await
        .expect("a wake after the lease expired");
    assert_eq!(rewake.attempt, 1);
    assert_eq!(f.elapsed(), 20.0);
    let agent = f.agent("a");
    assert_eq!(agent.status, Status::Offline);
    assert!(agent.checkin_deadline_at.is_some(), "{agent:?}");
    let history = f.lifecycle.history(&id("a"), None, 1).await.unwrap();
    assert_eq!(history[0].reason, Reason::LeaseExpired);
}

#[tokio::test(start_paused = true)]
async fn without_wake_on_lease_expiry_an_expired_lease_only_goes_offline() {
    let flags = ["--lease-ttl", "20s", "--heartbeat-interval", "5s"];
    let f = start(settings_from(&flags)).await;
    let (session, mut commands) = f.connect();
    let token = f.provision("a").await.token.unwrap();
    let (command_id, _) = next_wake(&mut commands, LONG).await.unwrap();
    session.acknowledge(command_id, Ok(())).unwrap();
    f.lifecycle.heartbeat(&token, None).await.unwrap();

    assert!(
        next_wake(&mut commands, Duration::from_secs(600))
            .await
            .is_none(),
        "no wake"
    );
    let agent = f.agent("a");
    assert_eq!(agent.status, Status::Offline);
    assert_eq!(agent.checkin_deadline_at, None);
}
