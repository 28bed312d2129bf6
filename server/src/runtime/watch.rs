//! Watch streams: a snapshot (or a replay from a revision), then every
//! committed change, in revision order, with no gaps and no duplicates.
//!
//! Events reach watchers through a bounded broadcast channel, published by
//! the writer after each commit. A watcher that falls more than the channel's
//! capacity behind is ended with the revision to resume from: it never slows
//! the writer or other watchers, and it never silently skips an event.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{LifecycleError, Shared};
use crate::engine::{Agent, AgentFilter, AgentId, BoardId, Event, GatewayId, Status, Timestamp};

/// Replayed history is read from the store in pages of this many events.
const REPLAY_PAGE: usize = 500;

#[derive(Debug, Clone, Default)]
pub struct WatchRequest {
    pub filter: AgentFilter,
    /// 0: snapshot, then changes. R > 0: every change after R, no snapshot.
    pub start_revision: u64,
    pub include_heartbeats: bool,
    /// How long the stream may go without sending anything before it gets
    /// a bookmark (None: the service's setting).
    pub bookmark_interval: Option<Duration>,
}

#[derive(Debug, Clone)]
pub enum WatchItem {
    /// An agent's current state, part of the initial snapshot.
    Snapshot(Box<Agent>),
    SnapshotComplete {
        revision: u64,
    },
    Event(Arc<Event>),
    /// Nothing matched up to this revision.
    Bookmark {
        revision: u64,
    },
    Heartbeat(HeartbeatSeen),
}

/// A lease renewal, for watchers that asked for them. Not a revision.
#[derive(Debug, Clone)]
pub struct HeartbeatSeen {
    pub agent_id: AgentId,
    pub gateway_id: GatewayId,
    pub board_id: Option<BoardId>,
    pub status: Status,
    pub last_seen_at: Timestamp,
    pub lease_expires_at: Option<Timestamp>,
    pub drifted: bool,
}

impl HeartbeatSeen {
    fn matches(&self, filter: &AgentFilter) -> bool {
        filter.matches_parts(
            &self.agent_id,
            &self.gateway_id,
            self.board_id.as_ref(),
            self.status,
        ) && (!filter.drifted || self.drifted)
    }
}

struct Heartbeats {
    receiver: broadcast::Receiver<HeartbeatSeen>,
    /// The heartbeat time of the last one sent, per agent.
    last_sent: HashMap<AgentId, Timestamp>,
}

pub(super) struct Watcher {
    shared: Arc<Shared>,
    filter: AgentFilter,
    /// The revision of the last event this watcher has accounted for.
    position: u64,
    queue: VecDeque<WatchItem>,
    /// Replaying stored history up to this revision.
    replay_until: Option<u64>,
    events: broadcast::Receiver<Arc<Event>>,
    heartbeats: Option<Heartbeats>,
    bookmark: Interval,
    finished: bool,
    _slot: WatchSlot,
}

/// One of the `max_watches` places; given back when the watch ends.
pub(super) struct WatchSlot(Arc<Shared>);

impl WatchSlot {
    pub(super) fn take(shared: &Arc<Shared>) -> Result<Self, LifecycleError> {
        let limit = shared.settings.max_watches;
        let taken = shared
            .open_watches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < limit).then_some(open + 1)
            });
        match taken {
            Ok(_) => Ok(Self(shared.clone())),
            Err(_) => Err(LifecycleError::TooManyStreams(format!(
                "{limit} watches are open, the most this server allows; retry later"
            ))),
        }
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Watcher {
    pub(super) async fn open(
        shared: Arc<Shared>,
        request: WatchRequest,
    ) -> Result<Self, LifecycleError> {
        let slot = WatchSlot::take(&shared)?;
        let filter = request.filter;
        // Subscribing and reading the state under one lock: the writer
        // publishes under the same lock, so nothing falls in between.
        let (events, heartbeats, snapshot, current) = {
            let engine = shared.engine();
            let events = shared.events.subscribe();
            let heartbeats = request
                .include_heartbeats
                .then(|| shared.heartbeats.subscribe());
            let snapshot = (request.start_revision == 0).then(|| {
                let mut agents: Vec<Agent> = engine
                    .agents()
                    .filter(|agent| filter.matches(agent))
                    .cloned()
                    .collect();
                // Revisions increase along the whole stream, snapshot included.
                agents.sort_by_key(|agent| agent.revision);
                agents
            });
            (events, heartbeats, snapshot, engine.revision())
        };

        let mut queue = VecDeque::new();
        let (position, replay_until) = match snapshot {
            Some(agents) => {
                queue.extend(agents.into_iter().map(|a| WatchItem::Snapshot(Box::new(a))));
                queue.push_back(WatchItem::SnapshotComplete { revision: current });
                (current, None)
            }
            None => {
                let start = request.start_revision;
                let compacted = shared.store.compacted_revision().await?;
                if start < compacted {
                    return Err(too_old(start, compacted));
                }
                if start > current {
                    return Err(too_new(start, current));
                }
                (start, (start < current).then_some(current))
            }
        };
        let period = request
            .bookmark_interval
            .unwrap_or(shared.settings.bookmark_interval);
        let mut bookmark = tokio::time::interval_at(Instant::now() + period, period);
        bookmark.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            shared,
            filter,
            position,
            queue,
            replay_until,
            events,
            heartbeats: heartbeats.map(|receiver| Heartbeats {
                receiver,
                last_sent: HashMap::new(),
            }),
            bookmark,
            finished: false,
            _slot: slot,
        })
    }

    /// The next item, or `None` once the stream has ended.
    pub(super) async fn next(&mut self) -> Option<Result<WatchItem, LifecycleError>> {
        if self.finished {
            return None;
        }
        let result = self.next_item().await;
        if result.is_err() {
            self.finished = true;
        }
        Some(result)
    }

    async fn next_item(&mut self) -> Result<WatchItem, LifecycleError> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Ok(item);
            }
            match self.replay_until {
                Some(until) => self.replay_page(until).await?,
                None => return self.next_live().await,
            }
        }
    }

    /// Reads the next page of stored history into the queue.
    async fn replay_page(&mut self, until: u64) -> Result<(), LifecycleError> {
        let page = self
            .shared
            .store
            .events_after(self.position, REPLAY_PAGE)
            .await?;
        if page.first().is_none_or(|e| e.revision != self.position + 1) {
            // Compacted while we were reading it.
            let compacted = self.shared.store.compacted_revision().await?;
            return Err(too_old(self.position, compacted));
        }
        for event in page {
            if event.revision > until {
                break;
            }
            self.position = event.revision;
            if self.filter.matches_event(&event) {
                self.queue.push_back(WatchItem::Event(Arc::new(event)));
            }
        }
        if self.position >= until {
            self.replay_until = None;
        }
        Ok(())
    }

    async fn next_live(&mut self) -> Result<WatchItem, LifecycleError> {
        let stop = self.shared.draining.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(LifecycleError::shutting_down()),
                received = self.events.recv() => match received {
                    Ok(event) => {
                        if event.revision <= self.position {
                            continue;
                        }
                        self.position = event.revision;
                        if self.filter.matches_event(&event) {
                            self.bookmark.reset();
                            return Ok(WatchItem::Event(event));
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        return Err(LifecycleError::ResourceExhausted {
                            message: format!(
                                "this watch fell too far behind; resume from revision {}",
                                self.position
                            ),
                            resume_revision: self.position,
                        });
                    }
                    Err(RecvError::Closed) => return Err(LifecycleError::shutting_down()),
                },
                Some(seen) = next_heartbeat(&mut self.heartbeats) => {
                    if self.heartbeat_due(&seen) {
                        return Ok(WatchItem::Heartbeat(seen));
                    }
                }
                _ = self.bookmark.tick() => {
                    return Ok(WatchItem::Bookmark { revision: self.position });
                }
            }
        }
    }

    /// At most one heartbeat per agent per configured interval, judged by
    /// when the heartbeats arrived, not when this watcher reads them.
    fn heartbeat_due(&mut self, seen: &HeartbeatSeen) -> bool {
        let Some(heartbeats) = self.heartbeats.as_mut() else {
            return false;
        };
        if !seen.matches(&self.filter) {
            return false;
        }
        let interval = self.shared.settings.heartbeat_event_interval;
        match heartbeats.last_sent.get(&seen.agent_id) {
            Some(last) if seen.last_seen_at.since(*last) < interval => false,
            _ => {
                heartbeats
                    .last_sent
                    .insert(seen.agent_id.clone(), seen.last_seen_at);
                true
            }
        }
    }
}

/// The next heartbeat notice; heartbeats are best effort, so a lag is skipped.
async fn next_heartbeat(heartbeats: &mut Option<Heartbeats>) -> Option<HeartbeatSeen> {
    let heartbeats = heartbeats.as_mut()?;
    loop {
        match heartbeats.receiver.recv().await {
            Ok(seen) => return Some(seen),
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return None,
        }
    }
}

/// What a client whose revision is unusable does instead.
const LIST_AGAIN: &str = "list the agents again and watch from the revision of the list";

fn too_old(revision: u64, compacted: u64) -> LifecycleError {
    let oldest = compacted + 1;
    LifecycleError::OutOfRange {
        message: format!(
            "revision {revision} is older than the retained history \
             (oldest available: {oldest}); {LIST_AGAIN}"
        ),
        oldest_revision: oldest,
    }
}

fn too_new(revision: u64, current: u64) -> LifecycleError {
    LifecycleError::RevisionAhead {
        message: format!(
            "start_revision {revision} is ahead of the current revision {current}: it is \
             from another history; {LIST_AGAIN}"
        ),
        current_revision: current,
    }
}
