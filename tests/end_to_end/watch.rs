//! WatchAgent against real Postgres: many watchers with different filters
//! through a burst, resume from the middle and from compacted history, and a
//! slow watcher beside a fast one. The truth they are held to is the
//! `agent_events` table itself.

use std::time::Duration;

use futures_util::future::join_all;
use mission_control_client::agent::AgentClient;
use mission_control_client::operator::OperatorClient;
use mission_control_client::{
    AgentEvent, AgentRole, AgentStatus, ListAgentsRequest, ProvisionRequest, WatchAgentRequest,
    WatchAgentResponse, watch_agent_response::Kind,
};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

use crate::support::*;

/// A committed event as the database holds it.
#[derive(Debug, Clone)]
struct Committed {
    revision: u64,
    agent_id: String,
    gateway_id: String,
    board_id: String,
    status: String,
    previous_status: Option<String>,
}

async fn committed_events(database_url: &str, up_to: u64) -> Vec<Committed> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT revision, agent_id, agent->>'gateway_id', COALESCE(agent->>'board_id', ''),
                    agent->>'status', previous_status
             FROM agent_events WHERE revision <= $1 ORDER BY revision",
            &[&(up_to.min(i64::MAX as u64) as i64)],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| Committed {
            revision: row.get::<_, i64>(0) as u64,
            agent_id: row.get(1),
            gateway_id: row.get(2),
            board_id: row.get(3),
            status: row.get(4),
            previous_status: row.get(5),
        })
        .collect()
}

fn status_name(status: i32) -> &'static str {
    match AgentStatus::try_from(status).unwrap() {
        AgentStatus::Provisioning => "provisioning",
        AgentStatus::Updating => "updating",
        AgentStatus::Online => "online",
        AgentStatus::Offline => "offline",
        AgentStatus::Unspecified => "unspecified",
    }
}

/// The documented rule: an event matches if its agent matches the filter
/// after the change, or matched it (by status) before.
fn matches(filter: &WatchAgentRequest, event: &Committed) -> bool {
    let fixed = (filter.agent_id.is_empty() || filter.agent_id == event.agent_id)
        && (filter.gateway_id.is_empty() || filter.gateway_id == event.gateway_id)
        && (filter.board_id.is_empty() || filter.board_id == event.board_id);
    let statuses: Vec<&str> = filter.statuses.iter().map(|s| status_name(*s)).collect();
    let status_ok = statuses.is_empty()
        || statuses.contains(&event.status.as_str())
        || event
            .previous_status
            .as_deref()
            .is_some_and(|p| statuses.contains(&p));
    fixed && status_ok
}

/// Revisions of events received until a bookmark at or past `until`.
async fn revisions_until(watch: &mut Streaming<WatchAgentResponse>, until: u64) -> Vec<u64> {
    let mut revisions = Vec::new();
    loop {
        let item = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("the watch keeps talking")
            .expect("the watch goes on")
            .expect("no error");
        match item.kind.unwrap() {
            Kind::Event(event) if event.revision <= until => revisions.push(event.revision),
            Kind::Event(_) => return revisions,
            Kind::Bookmark(bookmark) if bookmark.revision >= until => return revisions,
            _ => {}
        }
    }
}

fn watch_flags(database_url: &str) -> Vec<String> {
    let mut flags = fast_flags(database_url);
    flags.extend(["--watch-bookmark-interval", "200ms"].map(String::from));
    // An agent that checked in stays online: only the silent go offline.
    set_flag(&mut flags, "--lease-ttl", "5m");
    // Half of a burst never checks in, on purpose: judged one by one here,
    // not held by the mass-failure brake (its own tests show it).
    flags.extend(["--brake-share", "1", "--fleet-brake-share", "1"].map(String::from));
    flags
}

/// Provisions `count` agents across two gateways and boards, concurrently;
/// returns the tokens.
async fn burst(app: &TestApp, prefix: &str, count: usize) -> Vec<(String, String)> {
    let requests = (0..count).map(|n| {
        let (gateway, board) = [("gw-a", "b1"), ("gw-a", "b2"), ("gw-b", "b1")][n % 3];
        let id = format!("{prefix}-{n:03}");
        let request = ProvisionRequest::new(&id, gateway, AgentRole::BoardWorker).on_board(board);
        async move {
            let reply = app.operator.provision(request).await.unwrap();
            (id, reply.agent_token)
        }
    });
    join_all(requests).await
}

#[tokio::test]
async fn concurrent_watchers_each_get_exactly_their_committed_events_in_order() {
    let db = database().await;
    let app = spawn_app(watch_flags(db.url())).await;
    app.gateway("gw-a").await;
    app.gateway("gw-b").await;

    let filters = [
        WatchAgentRequest::default(),
        WatchAgentRequest {
            gateway_id: "gw-a".into(),
            ..Default::default()
        },
        WatchAgentRequest {
            board_id: "b1".into(),
            ..Default::default()
        },
        WatchAgentRequest {
            statuses: vec![AgentStatus::Online as i32],
            ..Default::default()
        },
        WatchAgentRequest {
            statuses: vec![AgentStatus::Offline as i32],
            gateway_id: "gw-b".into(),
            ..Default::default()
        },
        WatchAgentRequest {
            agent_id: "burst-007".into(),
            ..Default::default()
        },
    ];
    let mut watchers = Vec::new();
    for filter in &filters {
        watchers.push(app.watch(filter.clone()).await);
    }

    // Provisions, then check-ins for every other agent while the rest escalate.
    let agents = burst(&app, "burst", 45).await;
    let check_ins = agents.iter().step_by(2).map(|(_, token)| {
        let endpoint = app.endpoint.clone();
        let token = token.clone();
        async move {
            AgentClient::connect(&endpoint, &token)
                .unwrap()
                .heartbeat()
                .await
                .unwrap()
        }
    });
    join_all(check_ins).await;

    // Settled when every agent that never checked in is offline. Some may
    // be offline before this watch opens: they come in its snapshot.
    let silent: std::collections::BTreeSet<String> = agents
        .iter()
        .skip(1)
        .step_by(2)
        .map(|(id, _)| id.clone())
        .collect();
    let mut all = app
        .watch(WatchAgentRequest {
            statuses: vec![AgentStatus::Offline as i32],
            ..Default::default()
        })
        .await;
    let mut offline = std::collections::BTreeSet::new();
    while offline != silent {
        let item = tokio::time::timeout(PATIENCE, all.next())
            .await
            .unwrap_or_else(|_| panic!("offline in time: {offline:?}"))
            .expect("the watch goes on")
            .expect("no error");
        let Some(Kind::Event(event)) = item.kind else {
            continue;
        };
        // A change out of the filter comes too, with the state it left for.
        let agent = event.agent.clone().unwrap();
        let still_offline = agent.status == AgentStatus::Offline as i32
            && event.r#type != mission_control_client::EventType::Deleted as i32;
        if still_offline {
            offline.insert(agent.id);
        } else {
            assert_eq!(
                event.previous_status,
                AgentStatus::Offline as i32,
                "only a change out of OFFLINE may leave this filter: {event:?}"
            );
            offline.remove(&agent.id);
        }
    }
    let last = committed_events(db.url(), u64::MAX)
        .await
        .last()
        .unwrap()
        .revision;
    let truth = committed_events(db.url(), last).await;

    for (filter, watcher) in filters.iter().zip(watchers.iter_mut()) {
        let received = revisions_until(watcher, last).await;
        let expected: Vec<u64> = truth
            .iter()
            .filter(|e| matches(filter, e))
            .map(|e| e.revision)
            .collect();
        assert!(
            !expected.is_empty(),
            "the filter {filter:?} matches something"
        );
        assert_eq!(
            received, expected,
            "filter {filter:?}: exactly the committed matches, in order"
        );
    }
    app.app.shutdown().await;
}

#[tokio::test]
async fn a_watch_resumes_mid_burst_and_a_compacted_revision_says_list_again() {
    let db = database().await;
    let mut flags = watch_flags(db.url());
    flags.extend(["--event-retention", "2s", "--compaction-interval", "100ms"].map(String::from));
    let app = spawn_app(flags).await;
    app.gateway("gw-a").await;
    app.gateway("gw-b").await;

    let mut watch = app.watch(WatchAgentRequest::default()).await;
    burst(&app, "first", 30).await;
    let mut seen = Vec::new();
    while seen.len() < 30 {
        seen.push(next_event(&mut watch).await.revision);
    }
    let middle = seen[seen.len() / 2];
    burst(&app, "second", 30).await;
    let last = committed_events(db.url(), u64::MAX)
        .await
        .last()
        .unwrap()
        .revision;

    let mut resumed = app
        .watch(WatchAgentRequest {
            start_revision: middle,
            ..Default::default()
        })
        .await;
    let first = tokio::time::timeout(PATIENCE, resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(first.kind, Some(Kind::Event(ref e)) if e.revision == middle + 1),
        "no snapshot: {first:?}"
    );
    let mut revisions = vec![middle + 1];
    revisions.extend(revisions_until(&mut resumed, last).await);
    let expected: Vec<u64> = committed_events(db.url(), last)
        .await
        .iter()
        .map(|e| e.revision)
        .filter(|r| *r > middle)
        .collect();
    assert_eq!(
        revisions, expected,
        "every change after the revision, once, in order"
    );

    // Wait for the history to age out, then ask for it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let status = loop {
        let mut lifecycle = app.operator.lifecycle();
        let request = WatchAgentRequest {
            start_revision: 1,
            ..Default::default()
        };
        match lifecycle.watch_agent(request).await {
            Err(status) => break status,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "history never compacted"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let info = status
        .get_details_error_info()
        .expect("ErrorInfo with the oldest revision");
    let oldest: u64 = info.metadata["oldest_revision"].parse().unwrap();
    assert!(oldest > 1);
    assert!(
        status.message().contains("list the agents again"),
        "{}",
        status.message()
    );
    assert_eq!(info.reason, "REVISION_COMPACTED");

    // A revision from another history (ahead of this one) says so too.
    let ahead = app
        .operator
        .lifecycle()
        .watch_agent(WatchAgentRequest {
            start_revision: u64::MAX,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(ahead.code(), Code::OutOfRange, "{ahead:?}");
    let info = ahead.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "REVISION_AHEAD");
    let current: u64 = info.metadata["current_revision"].parse().unwrap();
    assert!(current >= oldest);
    app.app.shutdown().await;
}

#[tokio::test]
async fn a_slow_watcher_is_ended_with_a_resume_point_while_a_fast_one_gets_everything() {
    let db = database().await;
    let mut flags = watch_flags(db.url());
    flags.extend(["--watch-buffer", "1024"].map(String::from));
    let app = spawn_app(flags).await;
    app.gateway("gw-a").await;
    app.gateway("gw-b").await;

    // The slow watcher has its own connection with small HTTP/2 windows, so
    // the transport cannot absorb the whole backlog on its behalf.
    let slow_channel = tonic::transport::Endpoint::from_shared(app.endpoint.clone())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut slow = OperatorClient::new(slow_channel)
        .watch(WatchAgentRequest::default())
        .await
        .unwrap();
    let mut fast = app.watch(WatchAgentRequest::default()).await;
    let (settle, settled_at) = tokio::sync::watch::channel(u64::MAX);
    let reader = tokio::spawn(async move {
        let mut revisions = Vec::new();
        loop {
            let item = tokio::time::timeout(PATIENCE, fast.next())
                .await
                .expect("the fast watch keeps talking")
                .expect("the fast watch goes on")
                .expect("the fast watcher is never ended");
            match item.kind {
                Some(Kind::Event(AgentEvent { revision, .. })) => revisions.push(revision),
                Some(Kind::Bookmark(b)) if b.revision >= *settled_at.borrow() => return revisions,
                _ => {}
            }
        }
    });

    // The slow watcher reads nothing while 2000 agents are provisioned and,
    // their gateways being away, escalate to OFFLINE.
    for round in 0..40 {
        burst(&app, &format!("r{round:02}"), 50).await;
    }
    let now = settle_offline(&app, db.url(), 2000).await;
    assert!(
        now > 8000,
        "enough events ({now}) to overflow every buffer on the slow watcher's path"
    );
    settle.send(now).unwrap();
    let fast_revisions = reader.await.unwrap();
    assert_eq!(
        fast_revisions,
        (1..=now).collect::<Vec<_>>(),
        "the fast watcher: no gap, no duplicate"
    );

    let mut slow_revisions = Vec::new();
    let status = loop {
        match tokio::time::timeout(PATIENCE, slow.next()).await.unwrap() {
            Some(Ok(WatchAgentResponse {
                kind: Some(Kind::Event(e)),
            })) => {
                assert!(e.revision < now, "the slow watcher was never ended");
                slow_revisions.push(e.revision);
            }
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("the slow watch ended without saying why"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let resume: u64 = status.get_details_error_info().unwrap().metadata["resume_revision"]
        .parse()
        .unwrap();
    assert_eq!(resume, slow_revisions.last().copied().unwrap_or(0));

    let mut resumed = app
        .watch(WatchAgentRequest {
            start_revision: resume,
            ..Default::default()
        })
        .await;
    slow_revisions.extend(revisions_until(&mut resumed, now).await);
    assert_eq!(
        slow_revisions,
        (1..=now).collect::<Vec<_>>(),
        "resuming fills the gap exactly"
    );
    app.app.shutdown().await;
}

/// Waits until `count` agents are OFFLINE; the last committed revision then.
async fn settle_offline(app: &TestApp, database_url: &str, count: usize) -> u64 {
    let offline = ListAgentsRequest {
        statuses: vec![AgentStatus::Offline.into()],
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.operator.list(offline.clone()).await.unwrap().len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} agents offline in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    committed_events(database_url, u64::MAX)
        .await
        .last()
        .map_or(0, |event| event.revision)
}

#[tokio::test]
async fn a_full_fleet_snapshot_of_many_pages_arrives_whole_then_every_change() {
    let db = database().await;
    let app = spawn_app(watch_flags(db.url())).await;
    app.gateway("gw-a").await;
    app.gateway("gw-b").await;
    // More agents than a few of the server's snapshot pages (256 agents).
    let fleet = 700;
    for round in 0..fleet / 50 {
        burst(&app, &format!("p{round:02}"), 50).await;
    }

    let mut watch = app.watch(WatchAgentRequest::default()).await;
    let mut snapshot = Vec::new();
    let snapshot_at = loop {
        let item = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("the snapshot keeps coming")
            .expect("the watch goes on")
            .expect("no error");
        match item.kind.unwrap() {
            Kind::Event(event) => {
                assert_eq!(
                    event.reason,
                    mission_control_client::TransitionReason::Snapshot as i32
                );
                snapshot.push(event);
            }
            Kind::SnapshotComplete(complete) => break complete.revision,
            other => panic!("unexpected {other:?}"),
        }
    };
    let revisions: Vec<u64> = snapshot.iter().map(|e| e.revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "in revision order"
    );
    // Each agent once, as the database had it at the snapshot's revision.
    let mut latest = std::collections::BTreeMap::new();
    for event in committed_events(db.url(), snapshot_at).await {
        latest.insert(event.agent_id, event.revision);
    }
    let seen: std::collections::BTreeMap<String, u64> = snapshot
        .iter()
        .map(|e| (e.agent.clone().unwrap().id, e.revision))
        .collect();
    assert_eq!(seen.len(), fleet, "every agent once");
    assert_eq!(seen, latest, "each agent as of the snapshot's revision");

    // Then every change after it, once, in order (the silent agents
    // escalate to OFFLINE meanwhile).
    let now = settle_offline(&app, db.url(), fleet).await;
    assert!(now > snapshot_at, "changes came after the snapshot");
    assert_eq!(
        revisions_until(&mut watch, now).await,
        (snapshot_at + 1..=now).collect::<Vec<_>>(),
        "no gap and no duplicate at the seam"
    );
    app.app.shutdown().await;
}
