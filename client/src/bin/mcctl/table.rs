//! Plain-text tables for people: left-aligned columns, two spaces apart.

use std::time::SystemTime;

use mission_control_client::{Agent, AgentEvent, Gateway, GatewayTransition};

use crate::names;
use crate::time::{ago, countdown, instant, rfc3339};

/// Errors longer than this are cut in tables (`get` shows them in full).
const ERROR_WIDTH: usize = 48;

/// Renders rows under headers, each column as wide as its widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub const AGENT_HEADERS: [&str; 7] = [
    "ID",
    "GATEWAY",
    "STATUS",
    "ATTEMPTS",
    "DEADLINE",
    "LAST SEEN",
    "ERROR",
];

/// The agents table of `list` and `watch`, relative to `now`.
pub fn agents(agents: &[&Agent], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|agent| {
            vec![
                agent.id.clone(),
                agent.gateway_id.clone(),
                names::status(agent.status).to_uppercase(),
                agent.wake_attempts.to_string(),
                countdown(instant(&agent.checkin_deadline_at), now),
                ago(instant(&agent.last_seen_at), now),
                truncate(agent_error(agent), ERROR_WIDTH),
            ]
        })
        .collect();
    render(&AGENT_HEADERS, &rows)
}

/// Why the agent is offline, else the last wake error, else "-".
pub fn agent_error(agent: &Agent) -> &str {
    [&agent.offline_reason, &agent.last_provision_error]
        .into_iter()
        .find(|text| !text.is_empty())
        .map_or("-", |text| text.as_str())
}

pub fn gateways(gateways: &[Gateway], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = gateways
        .iter()
        .map(|gateway| {
            vec![
                gateway.id.clone(),
                gateway.name.clone(),
                names::gateway_state(gateway.state),
                ago(instant(&gateway.state_since), now),
                gateway.state_reason.clone(),
                gateway.commands_pending.to_string(),
                instant(&gateway.created_at).map_or("-".into(), rfc3339),
            ]
        })
        .collect();
    render(
        &["ID", "NAME", "STATE", "SINCE", "WHY", "UNACKED", "CREATED"],
        &rows,
    )
}

/// `gateway history`: newest first, as the service returns it. A row that
/// left the state as it was (a template sync) shows one state.
pub fn gateway_history(transitions: &[GatewayTransition]) -> String {
    let rows: Vec<Vec<String>> = transitions
        .iter()
        .map(|t| {
            let (from, to) = (names::gateway_state(t.from), names::gateway_state(t.to));
            vec![
                instant(&t.at).map_or("-".into(), rfc3339),
                if from == to {
                    to
                } else {
                    format!("{from} -> {to}")
                },
                t.reason.clone(),
                if t.wakes_released == 0 {
                    "-".into()
                } else {
                    t.wakes_released.to_string()
                },
            ]
        })
        .collect();
    render(&["AT", "STATE", "WHY", "HELD WAKES"], &rows)
}

/// `history`: newest first, as the service returns it.
pub fn history(events: &[AgentEvent]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|event| {
            vec![
                event.revision.to_string(),
                instant(&event.at).map_or("-".into(), rfc3339),
                if event.description.is_empty() {
                    names::reason(event.reason)
                } else {
                    event.description.clone()
                },
                if event.attempt == 0 {
                    "-".into()
                } else {
                    event.attempt.to_string()
                },
                if event.error.is_empty() {
                    "-".into()
                } else {
                    event.error.clone()
                },
            ]
        })
        .collect();
    render(&["REVISION", "TIME", "REASON", "ATTEMPT", "ERROR"], &rows)
}

/// Cuts `text` to `width` characters, marking the cut with "…".
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mission_control_client::AgentStatus;
    use prost_types::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn an_agent_table_shows_countdowns_and_errors() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let waiting = Agent {
            id: "sim-0001".into(),
            gateway_id: "gw".into(),
            status: AgentStatus::Provisioning as i32,
            wake_attempts: 2,
            checkin_deadline_at: at(1012),
            ..Agent::default()
        };
        let online = Agent {
            id: "sim-0002".into(),
            gateway_id: "gw".into(),
            status: AgentStatus::Online as i32,
            last_seen_at: at(997),
            ..Agent::default()
        };
        let offline = Agent {
            id: "sim-0003".into(),
            gateway_id: "gw".into(),
            status: AgentStatus::Offline as i32,
            wake_attempts: 3,
            offline_reason: "no check-in after 3 wake attempts (last error: x)".repeat(2),
            ..Agent::default()
        };
        let table = agents(&[&waiting, &online, &offline], now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "ID        GATEWAY  STATUS        ATTEMPTS  DEADLINE  LAST SEEN  ERROR"
        );
        assert_eq!(
            lines[1],
            "sim-0001  gw       PROVISIONING  2         in 12s    -          -"
        );
        assert_eq!(
            lines[2],
            "sim-0002  gw       ONLINE        0         -         3s ago     -"
        );
        assert!(lines[3].starts_with(
            "sim-0003  gw       OFFLINE       3         -         -          no check-in"
        ));
        assert!(lines[3].ends_with('…'));
        assert_eq!(
            lines[3].split("  ").last().unwrap().chars().count(),
            ERROR_WIDTH
        );
    }

    #[test]
    fn history_rows_fall_back_to_the_reason_name() {
        let events = [AgentEvent {
            revision: 7,
            reason: 5,
            attempt: 2,
            at: at(1_700_000_000),
            ..AgentEvent::default()
        }];
        let table = history(&events);
        assert_eq!(
            table.lines().nth(1).unwrap(),
            "7         2023-11-14T22:13:20.000Z  deadline_missed  2        -"
        );
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo wörld", 6), "héllo…");
    }
}
