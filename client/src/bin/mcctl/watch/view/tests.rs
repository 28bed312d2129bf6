use std::time::{Duration, SystemTime};

use mission_control_client::{Bookmark, HeartbeatSeen, SnapshotComplete};
use prost_types::Timestamp;

use super::*;

fn message(kind: Kind) -> WatchAgentResponse {
    WatchAgentResponse { kind: Some(kind) }
}

fn event(
    revision: u64,
    kind: EventType,
    reason: TransitionReason,
    agent: Agent,
) -> WatchAgentResponse {
    message(Kind::Event(AgentEvent {
        revision,
        r#type: kind as i32,
        reason: reason as i32,
        agent: Some(agent),
        ..AgentEvent::default()
    }))
}

fn agent(id: &str, status: AgentStatus) -> Agent {
    Agent {
        id: id.into(),
        gateway_id: "gw".into(),
        status: status as i32,
        ..Agent::default()
    }
}

fn ids(fleet: &Fleet) -> Vec<&str> {
    fleet.agents.keys().map(String::as_str).collect()
}

#[test]
fn the_table_waits_for_the_snapshot_then_follows_changes() {
    let mut fleet = Fleet::new(Filter::default(), 0);
    let snapshot = event(
        3,
        EventType::Added,
        TransitionReason::Snapshot,
        agent("a", AgentStatus::Online),
    );
    assert!(!fleet.apply(&snapshot), "no redraw mid-snapshot");
    assert!(!fleet.snapshot_complete());
    assert!(
        fleet.apply(&message(Kind::SnapshotComplete(SnapshotComplete {
            revision: 5
        })))
    );
    assert_eq!(fleet.resume_revision(), 5);

    let added = event(
        6,
        EventType::Added,
        TransitionReason::Provisioned,
        agent("b", AgentStatus::Provisioning),
    );
    assert!(fleet.apply(&added));
    assert_eq!(ids(&fleet), ["a", "b"]);
    let deleted = event(
        7,
        EventType::Deleted,
        TransitionReason::Deleted,
        agent("a", AgentStatus::Online),
    );
    assert!(fleet.apply(&deleted));
    assert_eq!(ids(&fleet), ["b"], "deleted agents disappear");
    assert_eq!(fleet.resume_revision(), 7);

    assert!(!fleet.apply(&message(Kind::Bookmark(Bookmark { revision: 9 }))));
    assert_eq!(fleet.resume_revision(), 9);
}

#[test]
fn agents_leaving_the_status_filter_leave_the_table() {
    let filter = Filter::of(&WatchAgentRequest {
        statuses: vec![AgentStatus::Offline as i32],
        ..Default::default()
    });
    let mut fleet = Fleet::new(filter, 4);
    assert!(fleet.snapshot_complete(), "a resumed watch has no snapshot");
    fleet.apply(&event(
        5,
        EventType::Changed,
        TransitionReason::MaxAttemptsReached,
        agent("a", AgentStatus::Offline),
    ));
    assert_eq!(ids(&fleet), ["a"]);
    fleet.apply(&event(
        6,
        EventType::Changed,
        TransitionReason::Woken,
        agent("a", AgentStatus::Updating),
    ));
    assert!(ids(&fleet).is_empty());
}

#[test]
fn agents_that_catch_up_leave_a_drift_table() {
    let filter = Filter::of(&WatchAgentRequest {
        drifted: true,
        ..Default::default()
    });
    let mut fleet = Fleet::new(filter, 4);
    let mut stale = agent("a", AgentStatus::Online);
    stale.desired_template_version = "v2".into();
    stale.reported_template_version = "v1".into();
    fleet.apply(&event(
        5,
        EventType::Changed,
        TransitionReason::Updated,
        stale.clone(),
    ));
    assert_eq!(ids(&fleet), ["a"]);
    stale.reported_template_version = "v2".into();
    fleet.apply(&event(
        6,
        EventType::Changed,
        TransitionReason::CheckedIn,
        stale,
    ));
    assert!(ids(&fleet).is_empty());
}

#[test]
fn heartbeats_refresh_last_seen() {
    let mut fleet = Fleet::new(Filter::default(), 1);
    fleet.apply(&event(
        2,
        EventType::Changed,
        TransitionReason::CheckedIn,
        agent("a", AgentStatus::Online),
    ));
    let seen = Timestamp {
        seconds: 1000,
        nanos: 0,
    };
    fleet.apply(&message(Kind::Heartbeat(HeartbeatSeen {
        agent_id: "a".into(),
        last_seen_at: Some(seen),
        lease_expires_at: None,
    })));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1004);
    let screen = fleet.render(now, None);
    assert!(
        screen.starts_with("1 agents: 1 online, 0 offline, 0 awaiting check-in"),
        "{screen}"
    );
    assert!(screen.contains("last: rev 2 a: checked_in"), "{screen}");
    assert!(
        screen.lines().last().unwrap().contains("4s ago"),
        "{screen}"
    );
}

#[test]
fn lines_show_transitions_attempts_and_errors() {
    let mut missed = AgentEvent {
        revision: 12,
        r#type: EventType::Changed as i32,
        reason: TransitionReason::MaxAttemptsReached as i32,
        previous_status: AgentStatus::Provisioning as i32,
        description: "offline: max wake attempts reached".into(),
        attempt: 3,
        error: "no check-in after 3 wake attempts".into(),
        at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        agent: Some(agent("sim-0001", AgentStatus::Offline)),
        rollout_id: String::new(),
    };
    assert_eq!(
        line(&message(Kind::Event(missed.clone()))).unwrap(),
        "2023-11-14T22:13:20.000Z  rev 12  changed  sim-0001  PROVISIONING->OFFLINE  \
         offline: max wake attempts reached (attempt 3): no check-in after 3 wake attempts"
    );
    let mut failed = missed.clone();
    failed.reason = TransitionReason::WakeFailed as i32;
    failed.description = "wake attempt 3 failed".into();
    failed.error = "wake attempt 3 failed: gateway g7 is not connected".into();
    let failed = line(&message(Kind::Event(failed))).unwrap();
    assert!(
        failed.ends_with("OFFLINE  wake attempt 3 failed: gateway g7 is not connected"),
        "said once: {failed}"
    );
    missed.reason = TransitionReason::Snapshot as i32;
    assert_eq!(
        line(&message(Kind::Event(missed))).unwrap(),
        "snapshot  sim-0001  OFFLINE  attempts 0  (rev 12)"
    );
    assert!(line(&message(Kind::Bookmark(Bookmark { revision: 1 }))).is_none());
}

#[test]
fn agents_moving_off_the_watched_board_leave_the_table() {
    let filter = Filter::of(&WatchAgentRequest {
        board_id: "b1".into(),
        ..Default::default()
    });
    let mut fleet = Fleet::new(filter, 1);
    let mut on_board = agent("a", AgentStatus::Online);
    on_board.board_id = "b1".into();
    fleet.apply(&event(
        2,
        EventType::Changed,
        TransitionReason::CheckedIn,
        on_board.clone(),
    ));
    assert_eq!(ids(&fleet), ["a"]);
    let mut moved = on_board;
    moved.board_id = "b2".into();
    fleet.apply(&event(
        3,
        EventType::Changed,
        TransitionReason::Updated,
        moved,
    ));
    assert!(ids(&fleet).is_empty());
}

#[test]
fn a_small_window_shows_what_fits_and_counts_the_rest() {
    let mut fleet = Fleet::new(Filter::default(), 1);
    for (revision, id) in (2..).zip(["a", "b", "c", "d", "e", "f"]) {
        fleet.apply(&event(
            revision,
            EventType::Added,
            TransitionReason::Provisioned,
            agent(id, AgentStatus::Provisioning),
        ));
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let screen = fleet.render(now, Some(8));
    assert_eq!(screen.lines().count(), 8, "{screen}");
    assert!(
        screen.ends_with("... and 3 more (widen the window or filter)"),
        "{screen}"
    );
    assert_eq!(fleet.render(now, None).lines().count(), 10, "all of it");
}
