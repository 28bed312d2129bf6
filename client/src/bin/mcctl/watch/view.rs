//! What a watch has seen so far, and how to show it: a redrawn table for a
//! terminal, or one line per message for a pipe.

use std::collections::BTreeMap;
use std::time::SystemTime;

use mission_control_client::watch_agent_response::Kind;
use mission_control_client::{
    Agent, AgentEvent, AgentStatus, EventType, TransitionReason, WatchAgentRequest,
    WatchAgentResponse,
};

use crate::time::{instant, rfc3339};
use crate::{names, table};

/// What the watch asked for. The service also sends the change that takes
/// an agent out of it (another board, another status): it leaves the table.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    agent_id: String,
    gateway_id: String,
    board_id: String,
    statuses: Vec<i32>,
    drifted: bool,
}

impl Filter {
    pub fn of(request: &WatchAgentRequest) -> Self {
        Self {
            agent_id: request.agent_id.clone(),
            gateway_id: request.gateway_id.clone(),
            board_id: request.board_id.clone(),
            statuses: request.statuses.clone(),
            drifted: request.drifted,
        }
    }

    fn matches(&self, agent: &Agent) -> bool {
        let field = |wanted: &str, value: &str| wanted.is_empty() || wanted == value;
        field(&self.agent_id, &agent.id)
            && field(&self.gateway_id, &agent.gateway_id)
            && field(&self.board_id, &agent.board_id)
            && (self.statuses.is_empty() || self.statuses.contains(&agent.status))
            && (!self.drifted || drifted(agent))
    }
}

/// As the service judges drift: another version reported, or none.
fn drifted(agent: &Agent) -> bool {
    agent.reported_template_version.is_empty()
        || agent.reported_template_version != agent.desired_template_version
}

/// The agents currently matching the watch, kept up to date by its messages.
#[derive(Debug, Default)]
pub struct Fleet {
    agents: BTreeMap<String, Agent>,
    filter: Filter,
    /// Where a resumed watch would continue without a gap; 0 until known.
    resume_revision: u64,
    snapshot_complete: bool,
    last_change: String,
}

impl Fleet {
    pub fn new(filter: Filter, start_revision: u64) -> Self {
        Self {
            filter,
            resume_revision: start_revision,
            // Resuming from a revision: no snapshot comes, changes do.
            snapshot_complete: start_revision > 0,
            ..Self::default()
        }
    }

    /// Folds one message in; true when the table should be redrawn.
    pub fn apply(&mut self, message: &WatchAgentResponse) -> bool {
        match &message.kind {
            Some(Kind::Event(event)) => self.apply_event(event),
            Some(Kind::SnapshotComplete(marker)) => {
                self.resume_revision = marker.revision;
                self.snapshot_complete = true;
                self.last_change = format!("snapshot complete at revision {}", marker.revision);
                true
            }
            Some(Kind::Bookmark(bookmark)) => {
                self.resume_revision = bookmark.revision;
                false
            }
            Some(Kind::Heartbeat(seen)) => {
                if let Some(agent) = self.agents.get_mut(&seen.agent_id) {
                    agent.last_seen_at = seen.last_seen_at;
                    agent.lease_expires_at = seen.lease_expires_at;
                }
                self.snapshot_complete
            }
            None => false,
        }
    }

    fn apply_event(&mut self, event: &AgentEvent) -> bool {
        let Some(agent) = &event.agent else {
            return false;
        };
        if event.reason != TransitionReason::Snapshot as i32 {
            self.resume_revision = event.revision;
            self.last_change = format!("rev {} {}: {}", event.revision, agent.id, describe(event));
        }
        let gone = event.r#type == EventType::Deleted as i32 || !self.filter.matches(agent);
        if gone {
            self.agents.remove(&agent.id);
        } else {
            self.agents.insert(agent.id.clone(), agent.clone());
        }
        self.snapshot_complete
    }

    pub fn resume_revision(&self) -> u64 {
        self.resume_revision
    }

    pub fn snapshot_complete(&self) -> bool {
        self.snapshot_complete
    }

    /// A summary line, the last change, then the table; within `rows`
    /// lines if given, saying how many agents did not fit.
    pub fn render(&self, now: SystemTime, rows: Option<usize>) -> String {
        let count = |status: AgentStatus| {
            let status = status as i32;
            self.agents.values().filter(|a| a.status == status).count()
        };
        let online = count(AgentStatus::Online);
        let offline = count(AgentStatus::Offline);
        let waiting = self.agents.len() - online - offline;
        let mut agents: Vec<&Agent> = self.agents.values().collect();
        // Three header lines, the table's own header, and one for the rest.
        let room = rows.map_or(usize::MAX, |rows| rows.saturating_sub(5).max(1));
        let hidden = agents.len().saturating_sub(room);
        agents.truncate(room);
        let mut screen = format!(
            "{} agents: {online} online, {offline} offline, {waiting} awaiting check-in   \
             (revision {}, {}; Ctrl-C to quit)\nlast: {}\n\n{}",
            self.agents.len(),
            self.resume_revision,
            rfc3339(now),
            if self.last_change.is_empty() {
                "-"
            } else {
                &self.last_change
            },
            table::agents(&agents, now),
        );
        if hidden > 0 {
            screen.truncate(screen.trim_end().len());
            screen.push_str(&format!(
                "\n... and {hidden} more (widen the window or filter)"
            ));
        }
        screen
    }
}

/// One watch message as one line for a pipe or a log; `None` for bookmarks.
pub fn line(message: &WatchAgentResponse) -> Option<String> {
    match message.kind.as_ref()? {
        Kind::Event(event) => {
            let agent = event.agent.clone().unwrap_or_default();
            let status = names::status(agent.status).to_uppercase();
            if event.reason == TransitionReason::Snapshot as i32 {
                return Some(format!(
                    "snapshot  {}  {status}  attempts {}  (rev {})",
                    agent.id, agent.wake_attempts, event.revision
                ));
            }
            let at = instant(&event.at).map_or("-".into(), rfc3339);
            let previous = names::status(event.previous_status).to_uppercase();
            let transition = if event.previous_status == 0 || previous == status {
                status
            } else {
                format!("{previous}->{status}")
            };
            Some(format!(
                "{at}  rev {}  {}  {}  {transition}  {}",
                event.revision,
                names::event_type(event.r#type),
                agent.id,
                describe(event)
            ))
        }
        Kind::SnapshotComplete(marker) => Some(format!(
            "-- snapshot complete at revision {}; changes follow --",
            marker.revision
        )),
        Kind::Bookmark(_) => None,
        Kind::Heartbeat(seen) => Some(format!(
            "{}  heartbeat  {}  lease until {}",
            instant(&seen.last_seen_at).map_or("-".into(), rfc3339),
            seen.agent_id,
            instant(&seen.lease_expires_at).map_or("-".into(), rfc3339),
        )),
    }
}

/// The event's description, plus its attempt and error when it lacks them.
fn describe(event: &AgentEvent) -> String {
    let mut text = if event.description.is_empty() {
        names::reason(event.reason)
    } else {
        event.description.clone()
    };
    let attempt = event.attempt.to_string();
    let mentions_attempt = text
        .split(|c: char| !c.is_ascii_digit())
        .any(|n| n == attempt);
    if event.attempt > 0 && !mentions_attempt {
        text.push_str(&format!(" (attempt {})", event.attempt));
    }
    if event.error.starts_with(&text) {
        // The error already says it, and more ("wake attempt 3 failed: ...").
        text = event.error.clone();
    } else if !event.error.is_empty() && !text.contains(&event.error) {
        text.push_str(&format!(": {}", event.error));
    }
    text
}

#[cfg(test)]
mod tests;
