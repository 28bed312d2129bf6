//! Any replica answers: while this replica does not lead, every call but
//! health and reflection is forwarded, as raw HTTP/2 (unary and streaming
//! alike: heartbeats, writes, reads, `WatchAgent`, the gateway stream), to
//! the leader's address published in the lease. The caller's own headers
//! and credentials go along unchanged, so the leader authenticates the call
//! and judges it itself: a heartbeat is acknowledged by the leader only.
//!
//! This layer sits in front of authentication: a follower holds no
//! credentials of its own and checks none for calls it forwards. Under
//! mutual TLS the follower connects with its own certificate, but the
//! leader judges a forwarded call by the credentials it carries (tokens)
//! only, never by the certificate of the replica that forwarded it (see
//! `edge::layer`): a replica's identity grants nothing.
//! A forwarded call carries `FORWARDED_HEADER`; a replica that receives one
//! and does not lead refuses it (`UNAVAILABLE`) rather than forward again,
//! so a call is never passed around a ring while leadership changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use mission_control_proto::tls::endpoint;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Layer, Service};

use crate::net::PeerTls;
use crate::runtime::Lifecycle;

pub use mission_control_proto::metadata::FORWARDED_BY as FORWARDED_HEADER;

/// Our services' calls go to the leader; every other path (health,
/// reflection, the dashboard, metrics) is this replica's own.
const FORWARDED_PREFIX: &str = "/missioncontrol.";

/// The leader this replica forwards to, refreshed from the store.
struct Directory {
    lifecycle: Lifecycle,
    own_address: String,
    /// TLS to the leader, when this server speaks TLS itself.
    peer_tls: Option<Arc<PeerTls>>,
    leader: Mutex<Option<Leader>>,
    /// Whether a leader other than this replica is known (for health).
    known: watch::Sender<bool>,
}

#[derive(Clone)]
struct Leader {
    address: String,
    /// The peer TLS settings' version the channel was made with.
    tls_version: u64,
    channel: Channel,
}

#[derive(Clone)]
pub struct ForwardLayer {
    directory: Arc<Directory>,
}

impl ForwardLayer {
    /// Starts following the lease; stops with `stop`.
    pub fn new(
        lifecycle: Lifecycle,
        own_address: String,
        peer_tls: Option<Arc<PeerTls>>,
        stop: CancellationToken,
    ) -> Self {
        let directory = Arc::new(Directory {
            lifecycle,
            own_address,
            peer_tls,
            leader: Mutex::new(None),
            known: watch::channel(false).0,
        });
        tokio::spawn(refresh(directory.clone(), stop));
        Self { directory }
    }

    /// True while a leader other than this replica is known: a follower
    /// can serve (by forwarding).
    pub fn leader_known(&self) -> watch::Receiver<bool> {
        self.directory.known.subscribe()
    }

    /// Re-reads the peer TLS files; when they changed, calls from now on
    /// reach the leader over a new connection made with them.
    pub fn reload_peer_tls(&self) {
        let Some(peer_tls) = &self.directory.peer_tls else {
            return;
        };
        if peer_tls.reload()
            && let Some(leader) = self.directory.leader()
        {
            self.directory.remember(&leader.address);
        }
    }
}

/// How often the leader's address is read while following.
fn refresh_period(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

async fn refresh(directory: Arc<Directory>, stop: CancellationToken) {
    let period = refresh_period(directory.lifecycle.leader_lease());
    loop {
        let known = match directory.lifecycle.leader().await {
            Ok(Some(info)) if info.address != directory.own_address => {
                directory.remember(&info.address);
                true
            }
            Ok(_) => {
                *directory.leader.lock().expect("directory lock") = None;
                false
            }
            // Keep what we knew: the database may be away for a moment,
            // and the leader may still be serving.
            Err(_) => directory.leader.lock().expect("directory lock").is_some(),
        };
        directory.known.send_if_modified(|current| {
            let changed = *current != known;
            *current = known;
            changed
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

impl Directory {
    fn remember(&self, address: &str) {
        let (tls_version, tls) = match &self.peer_tls {
            Some(peer_tls) => {
                let (version, tls) = peer_tls.current();
                (version, Some(tls))
            }
            None => (0, None),
        };
        let mut leader = self.leader.lock().expect("directory lock");
        if leader
            .as_ref()
            .is_some_and(|l| l.address == address && l.tls_version == tls_version)
        {
            return;
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        match endpoint(&format!("{scheme}://{address}"), tls.as_ref()) {
            Ok(endpoint) => {
                let channel = endpoint
                    .connect_timeout(Duration::from_secs(2))
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                tracing::info!(leader = %address, "forwarding calls to the leader");
                *leader = Some(Leader {
                    address: address.to_owned(),
                    tls_version,
                    channel,
                });
            }
            Err(error) => {
                tracing::warn!(leader = %address, %error, "the leader's address is not usable");
                *leader = None;
            }
        }
    }

    fn leader(&self) -> Option<Leader> {
        self.leader.lock().expect("directory lock").clone()
    }
}

impl<S> Layer<S> for ForwardLayer {
    type Service = Forward<S>;

    fn layer(&self, inner: S) -> Forward<S> {
        Forward {
            inner,
            directory: self.directory.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Forward<S> {
    inner: S,
    directory: Arc<Directory>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Forward<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let local = !path.starts_with(FORWARDED_PREFIX);
        if local || self.directory.lifecycle.is_leader() {
            // The clone is the one that was made ready (tower's usual dance).
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(inner.call(request));
        }
        if request.headers().contains_key(FORWARDED_HEADER) {
            return refuse(Status::unavailable(
                "this replica is not the leader (any more); retry on another replica",
            ));
        }
        let Some(leader) = self.directory.leader() else {
            return refuse(Status::unavailable(
                "no leader is known to this replica yet; retry shortly",
            ));
        };
        if let Ok(own) = HeaderValue::from_str(&self.directory.own_address) {
            request.headers_mut().insert(FORWARDED_HEADER, own);
        }
        Box::pin(async move {
            let Leader {
                address,
                mut channel,
                ..
            } = leader;
            let ready = std::future::poll_fn(|cx| channel.poll_ready(cx)).await;
            let answered = match ready {
                Ok(()) => channel.call(request).await,
                Err(error) => Err(error),
            };
            Ok(answered.unwrap_or_else(|error| {
                tracing::debug!(leader = %address, %error, "forwarding to the leader failed");
                Status::unavailable(format!(
                    "the leader at {address} could not be reached; retry shortly"
                ))
                .into_http()
            }))
        })
    }
}

fn refuse<E: Send + 'static>(status: Status) -> BoxFuture<http::Response<Body>, E> {
    Box::pin(std::future::ready(Ok(status.into_http())))
}
