//! The runtime's settings, and the state the handle, the writer and the
//! background tasks share.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch as tokio_watch};
use tokio_util::sync::CancellationToken;

use super::actor::Command;
use super::engine_lock::EngineLock;
use super::leader::Leadership;
use super::watch::{self, HeartbeatSeen};
use super::{Clock, InFlight, gateways, limits, metrics};
use crate::engine::{Event, Policy};
use crate::store::Store;

/// Commands (and, separately, due timers) per committed batch, by default.
pub const MAX_BATCH: usize = 512;

/// Runtime settings beyond the policy. Defaults suit production.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Policy,
    /// How often leases renewed in memory are written to the store.
    pub checkpoint_interval: Duration,
    /// How long event history is kept (for history and watch resume).
    pub event_retention: Duration,
    pub compaction_interval: Duration,
    /// Events a watcher may fall behind before it is ended.
    pub watch_buffer: usize,
    /// An idle watch gets a bookmark this often.
    pub bookmark_interval: Duration,
    /// With `include_heartbeats`, at most one per agent this often.
    pub heartbeat_event_interval: Duration,
    pub health_check_interval: Duration,
    /// Commands (and, separately, due timers) per committed batch.
    pub max_batch: usize,
    /// Watch streams open at once, at most.
    pub max_watches: usize,
    /// The bound within which a dead or stalled leader is replaced; the
    /// lease's expiry, renewal and proof are fractions of it
    /// ([`LeaseTiming`](super::LeaseTiming)).
    pub leader_lease: Duration,
    /// Where other replicas reach this one, published while it leads.
    pub advertise_address: String,
    /// A command a gateway has not acknowledged within this goes out again
    /// on its open stream (same command id).
    pub gateway_ack_timeout: Duration,
}

impl Settings {
    /// The defaults, suited to production: the one source of the server's
    /// flag defaults as well.
    pub const DEFAULT: Self = Self {
        policy: Policy::DEFAULT,
        checkpoint_interval: Duration::from_secs(5),
        event_retention: Duration::from_secs(7 * 24 * 3600),
        compaction_interval: Duration::from_secs(60),
        watch_buffer: 8192,
        bookmark_interval: Duration::from_secs(15),
        heartbeat_event_interval: Duration::from_secs(5),
        health_check_interval: Duration::from_secs(2),
        max_batch: MAX_BATCH,
        max_watches: 1024,
        leader_lease: Duration::from_secs(5),
        advertise_address: String::new(),
        gateway_ack_timeout: Duration::from_secs(10),
    };
}

impl Default for Settings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// State shared by the handle, the writer and the background tasks.
pub(super) struct Shared {
    pub(super) engine: EngineLock,
    pub(super) store: Arc<dyn Store>,
    pub(super) clock: Clock,
    pub(super) hub: gateways::GatewayHub,
    pub(super) events: broadcast::Sender<Arc<Event>>,
    pub(super) heartbeats: broadcast::Sender<HeartbeatSeen>,
    /// Each rollout after every committed change to it.
    pub(super) rollouts: broadcast::Sender<Arc<crate::engine::rollout::Rollout>>,
    pub(super) database_reachable: tokio_watch::Sender<bool>,
    /// Set while the writer rebuilds its state after a failed commit: the
    /// database may answer pings, but no command is served yet.
    pub(super) recovering: std::sync::atomic::AtomicBool,
    /// The writer's queue.
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) settings: Settings,
    /// Ends gateway streams: the last step of a drain, once the wakes of
    /// the calls in flight are sent. Cancelling it also cancels `draining`.
    pub(super) streams_stop: CancellationToken,
    /// The first step of a drain: health turns NOT_SERVING, watches end.
    pub(super) draining: CancellationToken,
    /// Calls waiting for the writer, so a drain knows when they are done.
    pub(super) in_flight: InFlight,
    pub(super) open_watches: std::sync::atomic::AtomicUsize,
    /// Whether a return of freed memory is due after watches closed.
    pub(super) trim_scheduled: std::sync::atomic::AtomicBool,
    /// The fleet snapshot watchers opening now share.
    pub(super) snapshots: watch::SnapshotCache,
    pub(super) metrics: metrics::Metrics,
    pub(super) limits: limits::AgentLimits,
    pub(super) leadership: Leadership,
}

impl Shared {
    /// Marks the writer as recovering until the guard is dropped.
    pub(super) fn writer_recovering(&self) -> impl Drop + '_ {
        use std::sync::atomic::Ordering;
        struct Recovering<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Recovering<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        self.recovering.store(true, Ordering::Release);
        Recovering(&self.recovering)
    }

    pub(super) fn is_recovering(&self) -> bool {
        self.recovering.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn set_database_reachable(&self, reachable: bool) {
        self.database_reachable.send_if_modified(|current| {
            let changed = *current != reachable;
            if changed {
                if reachable {
                    tracing::info!("database reachable");
                } else {
                    tracing::error!("database unreachable");
                }
            }
            *current = reachable;
            changed
        });
    }
}
