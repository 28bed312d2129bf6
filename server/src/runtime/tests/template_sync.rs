//! Template sync: asked for by an operator, committed and noted in the
//! gateway's history, delivered like any gateway command (kept while the
//! gateway is away, sent again with the same id until acknowledged, across
//! restarts and takeovers too), its outcome noted too.

use super::*;
use crate::engine::PendingSync;

const LONG: Duration = Duration::from_secs(3600);
/// More than the ack timeout (10 s) plus the resend task's period.
const WITHIN_TIMEOUT: Duration = Duration::from_secs(13);

/// The production acknowledgement timeout (10 s).
fn settings() -> Settings {
    Settings {
        gateway_ack_timeout: Settings::default().gateway_ack_timeout,
        ..fast_settings()
    }
}

/// The next command, if it is a template sync: its id and version.
async fn next_sync(rx: &mut mpsc::Receiver<Outbound>, within: Duration) -> Option<(u64, String)> {
    match next_command(rx, within).await? {
        (id, GatewayCommand::TemplateSync(sync)) => {
            assert_eq!(sync.command_id, id, "sent under the id it was stored with");
            Some((id, sync.template_version))
        }
        (id, other) => panic!("command {id} is not a sync: {other:?}"),
    }
}

fn requested(version: &str, command_id: u64) -> String {
    format!("template sync to {version} (command {command_id}) requested")
}

fn synced(version: &str, command_id: u64) -> String {
    format!("template sync to {version} (command {command_id}) synced")
}

/// The gateway's history reasons, oldest first, without its link changes.
async fn sync_history(lifecycle: &Lifecycle) -> Vec<String> {
    let mut history = lifecycle.gateway_history(&gateway(), 2000).await.unwrap();
    history.reverse();
    history
        .into_iter()
        .filter(|t| t.reason.starts_with("template sync"))
        .map(|t| t.reason)
        .collect()
}

/// What the store holds pending, as (gateway, command id, version).
async fn stored_syncs(store: &MemoryStore) -> Vec<(String, u64, String)> {
    let state = store.load().await.unwrap();
    state
        .pending_syncs
        .into_iter()
        .map(|s: PendingSync| (s.gateway_id.to_string(), s.command_id, s.template_version))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_sync_sent_then_the_stream_replaced_goes_out_again_same_id_and_is_acknowledged_once() {
    let f = start(settings()).await;
    let (old, mut old_commands) = f.connect();
    let requested_sync = f
        .lifecycle
        .sync_gateway_templates(&gateway(), "v2".into())
        .await
        .unwrap();
    assert!(requested_sync.sent);
    let command_id = requested_sync.command_id;
    assert_eq!(
        next_sync(&mut old_commands, LONG).await,
        Some((command_id, "v2".into()))
    );
    assert_eq!(
        stored_syncs(&f.store).await,
        [("gw-1".into(), command_id, "v2".into())],
        "committed before it went out"
    );

    // Replaced before it acknowledged: the new stream opens with it.
    let (new, mut new_commands) = f.connect();
    assert!(matches!(
        old_commands.recv().await,
        Some(Outbound::Closed(CloseReason::Superseded))
    ));
    let again = next_sync(&mut new_commands, Duration::from_millis(1)).await;
    assert_eq!(again, Some((command_id, "v2".into())), "same id");

    assert!(old.acknowledge(command_id, Ok(())).is_err(), "old stream");
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
    assert_eq!(
        sync_history(&f.lifecycle).await,
        [requested("v2", command_id), synced("v2", command_id)]
    );
    assert!(stored_syncs(&f.store).await.is_empty(), "done with");
}

#[tokio::test(start_paused = true)]
async fn a_sync_for_an_absent_gateway_is_kept_until_it_connects_and_resent_until_acknowledged() {
    let f = start(settings()).await;
    let requested_sync = f
        .lifecycle
        .sync_gateway_templates(&gateway(), "v2".into())
        .await
        .unwrap();
    assert!(!requested_sync.sent, "no stream: kept");
    let command_id = requested_sync.command_id;

    let (session, mut commands) = f.connect();
    let first = next_sync(&mut commands, Duration::from_millis(1)).await;
    assert_eq!(first, Some((command_id, "v2".into())));
    let again = next_sync(&mut commands, WITHIN_TIMEOUT).await;
    assert_eq!(
        again,
        Some((command_id, "v2".into())),
        "resent on the open stream after the ack timeout"
    );
    session
        .acknowledge(command_id, Err("registry unreachable".into()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        sync_history(&f.lifecycle).await,
        [
            requested("v2", command_id),
            format!("template sync to v2 (command {command_id}) failed: registry unreachable"),
        ]
    );
    assert!(next_command(&mut commands, WITHIN_TIMEOUT).await.is_none());
    assert!(
        stored_syncs(&f.store).await.is_empty(),
        "answered, if badly"
    );
}

#[tokio::test(start_paused = true)]
async fn a_newer_sync_replaces_an_unacknowledged_older_one() {
    let f = start(settings()).await;
    let older = f
        .lifecycle
        .sync_gateway_templates(&gateway(), "v2".into())
        .await
        .unwrap();
    let newer = f
        .lifecycle
        .sync_gateway_templates(&gateway(), "v3".into())
        .await
        .unwrap();
    assert_ne!(older.command_id, newer.command_id);
    assert_eq!(
        stored_syncs(&f.store).await,
        [("gw-1".into(), newer.command_id, "v3".into())]
    );

    let (session, mut commands) = f.connect();
    let first = next_sync(&mut commands, Duration::from_millis(1)).await;
    assert_eq!(
        first,
        Some((newer.command_id, "v3".into())),
        "only the newer"
    );
    assert!(
        session.acknowledge(older.command_id, Ok(())).is_err(),
        "the older one is gone"
    );
    session.acknowledge(newer.command_id, Ok(())).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        sync_history(&f.lifecycle).await,
        [
            requested("v2", older.command_id),
            requested("v3", newer.command_id),
            synced("v3", newer.command_id),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_sync_for_an_unknown_gateway_is_not_found_and_records_nothing() {
    let f = start(settings()).await;
    let unknown = GatewayId::parse("gw-nope").unwrap();
    let result = f
        .lifecycle
        .sync_gateway_templates(&unknown, "v2".into())
        .await;
    assert!(
        matches!(result, Err(LifecycleError::NotFound(_))),
        "{result:?}"
    );
    assert!(sync_history(&f.lifecycle).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_sync_refused_as_backlogged_is_an_error_and_is_recorded_nowhere() {
    let f = start(settings()).await;
    // Connected, but reading nothing: every sync fills its stream's queue
    // (each replaces the previous one in the outbox, not on the wire).
    let (_session, _commands) = f.connect();
    let mut accepted = Vec::new();
    let refused = loop {
        let version = format!("v{}", accepted.len() + 1);
        match f
            .lifecycle
            .sync_gateway_templates(&gateway(), version.clone())
            .await
        {
            Ok(sync) => {
                assert!(sync.sent);
                accepted.push(requested(&version, sync.command_id));
            }
            Err(error) => break error,
        }
        assert!(accepted.len() <= 2000, "never refused");
    };
    assert_eq!(accepted.len(), 1024, "the stream's queue");
    let LifecycleError::Throttled {
        message,
        retry_after,
    } = refused
    else {
        panic!("{refused:?}");
    };
    assert_eq!(
        message,
        "gateway gw-1 is not keeping up with its commands: template sync to v1025 not \
         requested; ask again once it has caught up"
    );
    assert_eq!(retry_after, settings().gateway_ack_timeout);
    assert_eq!(
        sync_history(&f.lifecycle).await,
        accepted,
        "only what was accepted"
    );
    let stored = stored_syncs(&f.store).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].2, "v1024", "the last accepted one is pending");
}

#[tokio::test(start_paused = true)]
async fn a_restart_sends_an_unacknowledged_sync_again_same_id_until_acknowledged() {
    let store = Arc::new(MemoryStore::new());
    let first = start_on(store.clone(), settings()).await;
    let (session, mut commands) = first.connect();
    let sent = first
        .lifecycle
        .sync_gateway_templates(&gateway(), "v2".into())
        .await
        .unwrap();
    assert_eq!(
        next_sync(&mut commands, LONG).await,
        Some((sent.command_id, "v2".into()))
    );
    // Not acknowledged before the service stops.
    drop(session);
    first.lifecycle.stop().await;

    let second = start_at(store.clone(), settings(), first.clock.now()).await;
    let (session, mut commands) = second.connect();
    let again = next_sync(&mut commands, Duration::from_millis(1)).await;
    assert_eq!(again, Some((sent.command_id, "v2".into())), "same id");
    let resent = next_sync(&mut commands, WITHIN_TIMEOUT).await;
    assert_eq!(
        resent,
        Some((sent.command_id, "v2".into())),
        "and again after the ack timeout"
    );
    session.acknowledge(sent.command_id, Ok(())).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        sync_history(&second.lifecycle).await,
        [
            requested("v2", sent.command_id),
            synced("v2", sent.command_id)
        ]
    );
    assert!(stored_syncs(&store).await.is_empty());
    drop(session);
    second.lifecycle.stop().await;

    // Acknowledged: a third start sends it no more.
    let third = start_at(store.clone(), settings(), second.clock.now()).await;
    let (_session, mut commands) = third.connect();
    assert!(next_command(&mut commands, WITHIN_TIMEOUT).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_takeover_sends_the_old_leaders_unacknowledged_sync_same_id() {
    let a = start(settings()).await;
    let (a_session, mut a_commands) = a.connect();
    let b_store = Arc::new(a.store.replica());
    let b = Lifecycle::start(b_store, settings(), a.clock)
        .await
        .expect("start a follower");
    let sent = a
        .lifecycle
        .sync_gateway_templates(&gateway(), "v2".into())
        .await
        .unwrap();
    assert_eq!(
        next_sync(&mut a_commands, LONG).await,
        Some((sent.command_id, "v2".into()))
    );
    // The follower reads what was committed before the leader is cut off.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.store.set_lease_cut_off(true);
    let mut waited = 0;
    while b.role() != ReplicaRole::Leader && waited < 200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(b.role(), ReplicaRole::Leader);
    assert!(
        b.render_metrics()
            .contains("mission_control_takeovers_total{from=\"warm_copy\"} 1"),
        "taken over from the warm copy"
    );
    drop(a_session);

    let (session, mut commands) = b.connect_gateway(&a.gateway_token).unwrap();
    let again = next_sync(&mut commands, Duration::from_millis(1)).await;
    assert_eq!(again, Some((sent.command_id, "v2".into())), "same id");
    session.acknowledge(sent.command_id, Ok(())).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        sync_history(&b).await,
        [
            requested("v2", sent.command_id),
            synced("v2", sent.command_id)
        ]
    );
    assert!(stored_syncs(&a.store).await.is_empty());
}
