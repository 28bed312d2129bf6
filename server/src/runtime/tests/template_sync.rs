//! Template sync: asked for by an operator, noted in the gateway's history,
//! delivered like any gateway command (kept while the gateway is away, sent
//! again with the same id until acknowledged), its outcome noted too.

use super::*;
use crate::runtime::gateways::TemplateSync;

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

fn sync(version: &str) -> GatewayCommand {
    GatewayCommand::TemplateSync(TemplateSync {
        template_version: version.into(),
    })
}

/// The gateway's history reasons, oldest first, without its link changes.
async fn sync_history(f: &Fixture) -> Vec<String> {
    let mut history = f.lifecycle.gateway_history(&gateway(), 100).await.unwrap();
    history.reverse();
    history
        .into_iter()
        .filter(|t| t.reason.starts_with("template sync"))
        .map(|t| t.reason)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_sync_sent_then_the_stream_replaced_goes_out_again_same_id_and_is_acknowledged_once() {
    let f = start(settings()).await;
    let (old, mut old_commands) = f.connect();
    let requested = f
        .lifecycle
        .sync_gateway_templates(&gateway(), "v2".into())
        .await
        .unwrap();
    assert!(requested.sent);
    let (command_id, command) = next_command(&mut old_commands, LONG).await.unwrap();
    assert_eq!((command_id, &command), (requested.command_id, &sync("v2")));

    // Replaced before it acknowledged: the new stream opens with it.
    let (new, mut new_commands) = f.connect();
    assert!(matches!(
        old_commands.recv().await,
        Some(Outbound::Closed(CloseReason::Superseded))
    ));
    let again = next_command(&mut new_commands, Duration::from_millis(1)).await;
    assert_eq!(
        again,
        Some((command_id, sync("v2"))),
        "same command, same id"
    );

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
        sync_history(&f).await,
        [
            "template sync to v2 requested".to_owned(),
            format!("template sync to v2 (command {command_id}) synced"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_sync_for_an_absent_gateway_is_kept_until_it_connects_and_resent_until_acknowledged() {
    let f = start(settings()).await;
    let requested = f
        .lifecycle
        .sync_gateway_templates(&gateway(), "v2".into())
        .await
        .unwrap();
    assert!(!requested.sent, "no stream: kept");

    let (session, mut commands) = f.connect();
    let first = next_command(&mut commands, Duration::from_millis(1)).await;
    assert_eq!(first, Some((requested.command_id, sync("v2"))));
    let again = next_command(&mut commands, WITHIN_TIMEOUT).await;
    assert_eq!(
        again,
        Some((requested.command_id, sync("v2"))),
        "resent on the open stream after the ack timeout"
    );
    session
        .acknowledge(requested.command_id, Err("registry unreachable".into()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        sync_history(&f).await,
        [
            "template sync to v2 requested".to_owned(),
            format!(
                "template sync to v2 (command {}) failed: registry unreachable",
                requested.command_id
            ),
        ]
    );
    assert!(next_command(&mut commands, WITHIN_TIMEOUT).await.is_none());
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

    let (session, mut commands) = f.connect();
    let first = next_command(&mut commands, Duration::from_millis(1)).await;
    assert_eq!(
        first,
        Some((newer.command_id, sync("v3"))),
        "only the newer"
    );
    assert!(
        session.acknowledge(older.command_id, Ok(())).is_err(),
        "the older one is gone"
    );
    session.acknowledge(newer.command_id, Ok(())).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        sync_history(&f).await,
        [
            "template sync to v2 requested".to_owned(),
            "template sync to v3 requested".to_owned(),
            format!("template sync to v3 (command {}) synced", newer.command_id),
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
    assert!(sync_history(&f).await.is_empty());
}
