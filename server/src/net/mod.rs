//! Connections: the listener, TLS (reloaded from disk), and the discipline
//! every connection is held to before and after tonic serves it. The
//! protocol itself stays hyper's and h2's; this module only decides which
//! connections tonic gets and when a silent or idle one is closed.

mod accept;
mod bind;
mod conn;
mod idle;
mod limit;
pub mod peer;
pub mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use bind::{Bound, bind};
pub use conn::Conn;
pub use idle::TrackCallsLayer;
pub use peer::{PeerTls, PeerTlsFiles};
pub use tls::{ReloadingTls, TlsFiles};

/// How connections are held; the defaults are the flags' defaults.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Open connections at most (see `limit`).
    pub max_connections: usize,
    /// From the accept to the end of the TLS handshake and HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// A connection with no call in flight for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// A connection is asked to go (GOAWAY) after this long...
    pub max_connection_age: Option<Duration>,
    /// ...and closed this long after that, calls finished or not.
    pub max_connection_age_grace: Duration,
    /// HTTP/2 PING this often; no answer within the timeout closes it.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_concurrent_streams: u32,
}

impl ConnectionSettings {
    /// A tonic server builder with the HTTP/2 settings applied. HTTP/1.1 is
    /// accepted too, for browsers (gRPC-Web, the dashboard) and scrapers.
    pub fn server_builder(&self) -> tonic::transport::Server {
        let builder = tonic::transport::Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_connection_age_grace(self.max_connection_age_grace);
        match self.max_connection_age {
            Some(age) => builder.max_connection_age(age),
            None => builder,
        }
    }
}

/// Connections for tonic, plaintext or TLS.
pub enum Incoming {
    Plain(ReceiverStream<io::Result<Conn<TcpStream>>>),
    Tls(ReceiverStream<io::Result<Conn<tokio_rustls::server::TlsStream<TcpStream>>>>),
}

/// A bound listener and what its connections need.
pub struct Listener {
    pub incoming: Incoming,
    /// The layer that tells the idle timers which connections have calls.
    pub track_calls: TrackCallsLayer,
}

impl Listener {
    /// Starts accepting on every socket of `bound` until `stop` (or until
    /// tonic drops the incoming stream).
    pub fn start(
        bound: impl Into<Bound>,
        tls: Option<Arc<ReloadingTls>>,
        settings: &ConnectionSettings,
        stop: CancellationToken,
    ) -> Self {
        let connections = idle::Connections::default();
        let limit = limit::ConnectionLimit::new(settings.max_connections);
        let trouble = accept::Trouble::default();
        let acceptors: Vec<_> = (bound.into().listeners.into_iter())
            .map(|listener| accept::Acceptor {
                listener,
                limit: limit.clone(),
                connections: connections.clone(),
                trouble: trouble.clone(),
                handshake_timeout: settings.handshake_timeout,
                idle_timeout: settings.idle_timeout,
                stop: stop.clone(),
            })
            .collect();
        let incoming = match tls {
            None => {
                let (tx, rx) = mpsc::channel(64);
                for acceptor in acceptors {
                    tokio::spawn(acceptor.run_plain(tx.clone()));
                }
                Incoming::Plain(ReceiverStream::new(rx))
            }
            Some(tls) => {
                let (tx, rx) = mpsc::channel(64);
                for acceptor in acceptors {
                    tokio::spawn(acceptor.run_tls(Arc::clone(&tls), tx.clone()));
                }
                Incoming::Tls(ReceiverStream::new(rx))
            }
        };
        Self {
            incoming,
            track_calls: TrackCallsLayer::new(connections),
        }
    }
}

/// Raises this process's soft open-file limit to its hard limit, and
/// returns the soft limit now in force (None where it cannot be read).
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(max)) = (limit.current, limit.maximum)
        && current < max
    {
        limit.current = Some(max);
        if setrlimit(Resource::Nofile, limit).is_err() {
            limit.current = Some(current);
        }
    }
    limit.current
}

/// The default connection cap: 10,000, but always well below the open-file
/// limit, leaving room for the database pool, logs and the listener.
pub fn default_max_connections(open_file_limit: Option<u64>) -> usize {
    const DEFAULT: usize = 10_000;
    match open_file_limit {
        None => DEFAULT,
        Some(files) => {
            let files = usize::try_from(files).unwrap_or(usize::MAX);
            let reserve = (files / 10).max(256);
            DEFAULT.min(files.saturating_sub(reserve)).max(16)
        }
    }
}

#[cfg(test)]
mod default_cap_tests {
    use super::*;

    #[test]
    fn the_default_cap_stays_below_the_open_file_limit() {
        assert_eq!(default_max_connections(None), 10_000);
        assert_eq!(default_max_connections(Some(1_048_576)), 10_000);
        assert_eq!(default_max_connections(Some(20_000)), 10_000);
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(100)), 16);
    }
}

#[cfg(test)]
mod tests;
