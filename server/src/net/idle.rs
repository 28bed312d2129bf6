//! Idle connections: a connection with no call in flight for the idle
//! timeout is closed. The connection's I/O wrapper owns the timer; a tower
//! layer (which sees each call, with the peer address tonic puts in the
//! request) counts calls in flight per connection, until each response body
//! ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::codegen::Bytes;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Calls in flight on one connection, and when it was last busy.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds after the registry's epoch.
    last_busy: AtomicU64,
}

/// Each open connection's activity, by peer address (unique while open:
/// every connection of a listener shares the local address).
#[derive(Clone)]
pub struct Connections {
    epoch: Instant,
    by_peer: Arc<Mutex<HashMap<SocketAddr, Arc<Activity>>>>,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            by_peer: Arc::default(),
        }
    }
}

impl Connections {
    fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.epoch).as_millis() as u64
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Activity>>> {
        self.by_peer.lock().expect("connections lock")
    }

    /// The timer for a new connection from `peer` (no timer without a
    /// timeout or a peer address).
    pub fn timer(&self, peer: Option<SocketAddr>, timeout: Option<Duration>) -> IdleTimer {
        let (Some(peer), Some(timeout)) = (peer, timeout) else {
            return IdleTimer { inner: None };
        };
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_busy: AtomicU64::new(self.now_ms()),
        });
        self.map().insert(peer, Arc::clone(&activity));
        IdleTimer {
            inner: Some(Timer {
                connections: self.clone(),
                peer,
                timeout,
                activity,
                sleep: Box::pin(tokio::time::sleep(timeout)),
            }),
        }
    }

    fn begin_call(&self, peer: SocketAddr) -> Option<CallGuard> {
        let activity = Arc::clone(self.map().get(&peer)?);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(CallGuard {
            connections: self.clone(),
            activity,
        })
    }
}

pub struct IdleTimer {
    inner: Option<Timer>,
}

struct Timer {
    connections: Connections,
    peer: SocketAddr,
    timeout: Duration,
    activity: Arc<Activity>,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimer {
    /// True once the connection has had no call in flight for the timeout.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timer) = &mut self.inner else {
            return false;
        };
        loop {
            if timer.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let busy = timer.activity.in_flight.load(Ordering::Relaxed) > 0;
            let last_busy = timer.connections.epoch
                + Duration::from_millis(timer.activity.last_busy.load(Ordering::Relaxed));
            let now = Instant::now();
            if !busy && now >= last_busy + timer.timeout {
                return true;
            }
            let next = if busy { now } else { last_busy } + timer.timeout;
            timer.sleep.as_mut().reset(next);
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let mut map = self.connections.map();
        if map
            .get(&self.peer)
            .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
        {
            map.remove(&self.peer);
        }
    }
}

/// A call in flight: counted until dropped (its response body ended).
struct CallGuard {
    connections: Connections,
    activity: Arc<Activity>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.activity
            .last_busy
            .store(self.connections.now_ms(), Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The tower layer that counts calls per connection.
#[derive(Clone)]
pub struct TrackCallsLayer {
    connections: Connections,
}

impl TrackCallsLayer {
    pub fn new(connections: Connections) -> Self {
        Self { connections }
    }
}

impl<S> tower::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackCalls {
            inner,
            connections: self.connections.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TrackCalls<S> {
    inner: S,
    connections: Connections,
}

fn peer_addr<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for TrackCalls<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = peer_addr(&request).and_then(|peer| self.connections.begin_call(peer));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    tonic::body::Body::new(GuardedBody {
                        inner: body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that keeps its call counted until it ends or is dropped.
struct GuardedBody {
    inner: tonic::body::Body,
    _guard: CallGuard,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
