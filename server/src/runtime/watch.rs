//! Watch streams: a snapshot (or a replay from a revision), then every
//! committed change, in revision order, with no gaps and no duplicates.
//!
//! A snapshot is shared by the watchers that open close together and
//! streamed from pointers to the engine's agents (see `snapshot`); the
//! changes after its revision are replayed from stored history up to the
//! revision at which the watcher subscribed to live events, then streamed
//! live. Subscribing only once the snapshot is sent keeps a watcher that
//! reads a large snapshot slowly from falling out of the live channel.
//!
//! Events reach watchers through a bounded broadcast channel, published by
//! the writer after each commit. A watcher that falls more than the channel's
//! capacity behind is ended with the revision to resume from: it never slows
//! the writer or other watchers, and it never silently skips an event.

mod paged;
mod snapshot;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::LifecycleError;
use super::shared::Shared;
use crate::engine::{Agent, AgentFilter, AgentId, BoardId, Event, GatewayId, Status, Timestamp};
pub use paged::PagedWatch;
pub(super) use snapshot::SnapshotCache;
pub use snapshot::SnapshotPage;
use snapshot::{Cursor, FleetSnapshot};

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
    /// An agent's state, part of the initial snapshot.
    Snapshot(Arc<Agent>),
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

/// What a watch streamed by pages yields: a page of the snapshot, for a
/// watcher of the whole fleet, or an item as [`Lifecycle::watch`] yields.
///
/// [`Lifecycle::watch`]: super::Lifecycle::watch
#[derive(Debug, Clone)]
pub enum WatchChunk {
    Page(SnapshotPage),
    Item(WatchItem),
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
    /// The snapshot still being sent; dropped once it is.
    snapshot: Option<Cursor>,
    /// The snapshot is sent by pages (a watch of the whole fleet).
    by_pages: bool,
    queue: VecDeque<WatchItem>,
    /// Replaying stored history up to this revision.
    replay_until: Option<u64>,
    /// Live events: subscribed at open, or once the snapshot is sent (a
    /// watcher reading a large snapshot slowly does not fall behind them).
    events: Option<broadcast::Receiver<Arc<Event>>>,
    include_heartbeats: bool,
    heartbeats: Option<Heartbeats>,
    bookmark: Interval,
    /// When the last live event was sent: the quiet period a bookmark
    /// waits for runs from here (the timer is moved only when it fires,
    /// not on every event).
    last_sent: Instant,
    /// The drain, waited on by one future for the watch's life (a new one
    /// per event would register with the shared token every time).
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
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
        schedule_trim(&self.0);
    }
}

/// How long after a watch closes the heap is given back: watches close in
/// bursts (a dashboard fleet reconnecting), and one return serves a burst.
const TRIM_AFTER_CLOSE: Duration = Duration::from_secs(1);

/// Returns the heap freed by closed watches to the system, once per burst
/// of closes. A full-fleet watch's encoding and HTTP/2 buffers are freed
/// when it ends, but glibc keeps free blocks inside its heaps resident
/// until asked (1,000 closed watches on 100,000 agents left 165 MB:
/// BENCHMARKS.md); what is free at a heap's top, `heap::configure`'s
/// thresholds return.
fn schedule_trim(shared: &Arc<Shared>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if shared.trim_scheduled.swap(true, Ordering::SeqCst) {
        return;
    }
    let shared = shared.clone();
    runtime.spawn(async move {
        tokio::time::sleep(TRIM_AFTER_CLOSE).await;
        shared.trim_scheduled.store(false, Ordering::SeqCst);
        let _ = tokio::task::spawn_blocking(crate::heap::release_freed_memory).await;
    });
}

impl Watcher {
    pub(super) async fn open(
        shared: Arc<Shared>,
        request: WatchRequest,
    ) -> Result<Self, LifecycleError> {
        let slot = WatchSlot::take(&shared)?;
        let filter = request.filter;
        let (position, snapshot) = match request.start_revision {
            0 => {
                let snapshot = match &filter.agent_id {
                    Some(id) => Arc::new(FleetSnapshot::of_one(&shared.engine.lock(), id)),
                    None => {
                        let retention = shared.settings.event_retention;
                        shared.snapshots.get(&shared.engine, retention).await
                    }
                };
                (snapshot.revision, Some(Cursor::new(snapshot)))
            }
            start => {
                let compacted = shared.store.compacted_revision().await?;
                if start < compacted {
                    return Err(too_old(start, compacted));
                }
                let current = shared.engine.lock().revision();
                if start > current {
                    return Err(too_new(start, current));
                }
                (start, None)
            }
        };
        let period = request
            .bookmark_interval
            .unwrap_or(shared.settings.bookmark_interval);
        let mut bookmark = tokio::time::interval_at(Instant::now() + period, period);
        bookmark.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stopped = Box::pin(shared.draining.clone().cancelled_owned());
        let mut watcher = Self {
            shared,
            filter,
            position,
            snapshot,
            by_pages: false,
            queue: VecDeque::new(),
            replay_until: None,
            events: None,
            include_heartbeats: request.include_heartbeats,
            heartbeats: None,
            bookmark,
            last_sent: Instant::now(),
            stopped,
            finished: false,
            _slot: slot,
        };
        if watcher.snapshot.is_none() {
            watcher.subscribe();
        }
        Ok(watcher)
    }

    /// Sends the snapshot by pages from here on, if the watch has a fleet
    /// snapshot to send and wants all of it.
    pub(super) fn by_pages(&mut self) {
        self.by_pages = self.snapshot.is_some() && self.filter == AgentFilter::default();
    }

    /// The next page or item, or `None` once the stream has ended.
    pub(super) async fn next_chunk(&mut self) -> Option<Result<WatchChunk, LifecycleError>> {
        if let Some(page) = self.next_page() {
            return Some(Ok(WatchChunk::Page(page)));
        }
        self.next().await.map(|item| item.map(WatchChunk::Item))
    }

    /// What is ready without waiting: a queued item, a page, or a live
    /// event already received. `None`: wait with [`Self::next_chunk`].
    pub(super) fn ready_chunk(&mut self) -> Option<Result<WatchChunk, LifecycleError>> {
        if self.finished {
            return None;
        }
        if let Some(item) = self.queue.pop_front() {
            return Some(Ok(WatchChunk::Item(item)));
        }
        if let Some(page) = self.next_page() {
            return Some(Ok(WatchChunk::Page(page)));
        }
        if self.snapshot.is_some() || self.replay_until.is_some() {
            return None;
        }
        let result = self.ready_live()?;
        if result.is_err() {
            self.finished = true;
        }
        Some(result.map(|event| WatchChunk::Item(WatchItem::Event(event))))
    }

    /// The next page of a snapshot sent by pages.
    fn next_page(&mut self) -> Option<SnapshotPage> {
        if !self.by_pages {
            return None;
        }
        self.snapshot.as_mut()?.next_page()
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
            if let Some(cursor) = self.snapshot.as_mut() {
                let filter = &self.filter;
                if let Some(agent) = cursor.next(|agent| filter.matches(agent)).await {
                    return Ok(WatchItem::Snapshot(agent));
                }
                // Sent: the snapshot is let go of now, not when the watch ends.
                let revision = cursor.revision();
                self.snapshot = None;
                self.subscribe();
                return Ok(WatchItem::SnapshotComplete { revision });
            }
            match self.replay_until {
                Some(until) => self.replay_page(until).await?,
                None => return self.next_live().await,
            }
        }
    }

    /// Subscribes to live events, and replays what was committed since the
    /// watcher's position up to then. The writer publishes under the engine
    /// lock, so every event is either at most the revision read here (in
    /// stored history, as it commits to the store first) or published to
    /// this subscription: none is lost, and the live stream skips the
    /// replayed ones.
    fn subscribe(&mut self) {
        let engine = self.shared.engine.lock();
        self.events = Some(self.shared.events.subscribe());
        self.heartbeats = self.include_heartbeats.then(|| Heartbeats {
            receiver: self.shared.heartbeats.subscribe(),
            last_sent: HashMap::new(),
        });
        let current = engine.revision();
        self.replay_until = (self.position < current).then_some(current);
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

    /// A live event already received that this watcher wants, if any.
    fn ready_live(&mut self) -> Option<Result<Arc<Event>, LifecycleError>> {
        if self.shared.draining.is_cancelled() {
            return Some(Err(LifecycleError::shutting_down()));
        }
        loop {
            let received = self.events.as_mut()?.try_recv();
            match received {
                Ok(event) => {
                    if let Some(event) = self.admit(event) {
                        return Some(Ok(event));
                    }
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Lagged(_)) => return Some(Err(self.fell_behind())),
                Err(TryRecvError::Closed) => return Some(Err(LifecycleError::shutting_down())),
            }
        }
    }

    /// Moves the watch past `event`; returns it if this watcher sends it
    /// (not seen before, and matching the filter).
    fn admit(&mut self, event: Arc<Event>) -> Option<Arc<Event>> {
        if event.revision <= self.position {
            return None;
        }
        self.position = event.revision;
        if !self.filter.matches_event(&event) {
            return None;
        }
        self.last_sent = Instant::now();
        Some(event)
    }

    fn fell_behind(&self) -> LifecycleError {
        LifecycleError::ResourceExhausted {
            message: format!(
                "this watch fell too far behind; resume from revision {}",
                self.position
            ),
            resume_revision: self.position,
        }
    }

    async fn next_live(&mut self) -> Result<WatchItem, LifecycleError> {
        loop {
            tokio::select! {
                biased;
                _ = &mut self.stopped => return Err(LifecycleError::shutting_down()),
                received = self.events.as_mut().expect("subscribed before going live").recv() => match received {
                    Ok(event) => {
                        if let Some(event) = self.admit(event) {
                            return Ok(WatchItem::Event(event));
                        }
                    }
                    Err(RecvError::Lagged(_)) => return Err(self.fell_behind()),
                    Err(RecvError::Closed) => return Err(LifecycleError::shutting_down()),
                },
                Some(seen) = next_heartbeat(&mut self.heartbeats) => {
                    if self.heartbeat_due(&seen) {
                        return Ok(WatchItem::Heartbeat(seen));
                    }
                }
                _ = self.bookmark.tick() => {
                    let quiet_until = self.last_sent + self.bookmark.period();
                    if Instant::now() < quiet_until {
                        self.bookmark.reset_at(quiet_until);
                        continue;
                    }
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
