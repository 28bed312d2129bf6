//! The accept loop, one per listening socket: admits connections under the
//! cap, gives each one deadline for its TLS handshake and HTTP/2 preface,
//! and backs off when the process runs out of file descriptors instead of
//! spinning.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use super::idle::Connections;
use super::limit::{Admission, ConnectionLimit, Pending, Slot};
use super::tls::ReloadingTls;

/// At most one log line per kind of trouble per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(super) struct Acceptor {
    pub listener: TcpListener,
    pub limit: ConnectionLimit,
    pub connections: Connections,
    pub trouble: Trouble,
    pub handshake_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub stop: CancellationToken,
}

/// An admitted connection, before its handshake.
struct Admitted {
    tcp: TcpStream,
    slot: Slot,
    pending: Pending,
    deadline: Instant,
    peer: std::net::SocketAddr,
}

impl Acceptor {
    pub async fn run_plain(self, tx: mpsc::Sender<io::Result<Conn<TcpStream>>>) {
        let connections = self.connections.clone();
        let idle_timeout = self.idle_timeout;
        self.run(&tx, |admitted| {
            let connections = connections.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Admitted {
                    tcp,
                    slot,
                    pending,
                    deadline,
                    peer,
                } = admitted;
                // Until the first byte, a connection is only a socket
                // waiting in its own task: one that never speaks never
                // reaches hyper.
                let first_bytes = tokio::time::timeout_at(deadline, tcp.readable());
                tokio::select! {
                    result = first_bytes => match result {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "connection failed before it spoke");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "nothing received within the handshake timeout");
                            return;
                        }
                    },
                    _ = pending.evicted() => return,
                }
                let _ = tcp.set_nodelay(true);
                let idle = connections.timer(Some(peer), idle_timeout);
                let conn = Conn::new(tcp, slot, pending, deadline, idle);
                let _ = tx.send(Ok(conn)).await;
            });
        })
        .await
    }

    pub async fn run_tls(
        self,
        tls: Arc<ReloadingTls>,
        tx: mpsc::Sender<io::Result<Conn<tokio_rustls::server::TlsStream<TcpStream>>>>,
    ) {
        let connections = self.connections.clone();
        let idle_timeout = self.idle_timeout;
        self.run(&tx, |admitted| {
            // The configuration current at the accept: rotated files reach
            // new connections.
            let acceptor = tls.acceptor();
            let connections = connections.clone();
            let tx = tx.clone();
            // Each handshake in its own task, so a slow one holds up nobody.
            tokio::spawn(async move {
                let Admitted {
                    tcp,
                    slot,
                    pending,
                    deadline,
                    peer,
                } = admitted;
                let _ = tcp.set_nodelay(true);
                let handshake = tokio::time::timeout_at(deadline, acceptor.accept(tcp));
                let stream = tokio::select! {
                    result = handshake => match result {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "tls handshake timed out");
                            return;
                        }
                    },
                    _ = pending.evicted() => return,
                };
                let idle = connections.timer(Some(peer), idle_timeout);
                let conn = Conn::new(stream, slot, pending, deadline, idle);
                let _ = tx.send(Ok(conn)).await;
            });
        })
        .await
    }

    /// Accepts until `stop`, handing each admitted connection to `admit`,
    /// which must not wait: under a flood of connections the kernel's accept
    /// queue fills faster than a slow loop drains it, and a new connection
    /// (a health check) waits behind every one queued before it.
    async fn run<T, F>(self, tx: &mpsc::Sender<T>, mut admit: F)
    where
        F: FnMut(Admitted),
    {
        let mut backoff = BACKOFF_START;
        // Made once, not per accept: each registers a waiter when polled.
        let stopped = self.stop.cancelled();
        let closed = tx.closed();
        tokio::pin!(stopped, closed);
        loop {
            let accepted = tokio::select! {
                _ = &mut stopped => return,
                _ = &mut closed => return,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => {
                    backoff = BACKOFF_START;
                    accepted
                }
                Err(error) if is_resource_exhaustion(&error) => {
                    if let Some(times) = Throttled::note(&self.trouble.out_of_files) {
                        tracing::warn!(%error, times, open = self.limit.open(),
                            "cannot accept connections: out of file descriptors or memory; backing off");
                    }
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
                Err(error) => {
                    // The peer gave up before the accept (ECONNABORTED and
                    // the like): nothing to do but take the next one.
                    tracing::debug!(%error, "accept failed");
                    continue;
                }
            };
            let (slot, pending) = match self.limit.admit() {
                Admission::Admitted(slot, pending) | Admission::Replaced(slot, pending) => {
                    (slot, pending)
                }
                Admission::Refused => {
                    if let Some(times) = Throttled::note(&self.trouble.refused) {
                        tracing::warn!(%peer, times, max = self.limit.max(),
                            "connection cap reached; refusing new connections");
                    }
                    drop(tcp);
                    continue;
                }
            };
            let deadline = Instant::now() + self.handshake_timeout;
            admit(Admitted {
                tcp,
                slot,
                pending,
                deadline,
                peer,
            });
        }
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or the system is out of
/// something; accepting again at once would fail again at once.
fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// What the accept loops of one listener log, shared so that together they
/// log each kind at most once per interval.
#[derive(Clone, Default)]
pub(super) struct Trouble {
    out_of_files: Arc<Mutex<Throttled>>,
    refused: Arc<Mutex<Throttled>>,
}

/// Counts occurrences and says when to log: at most once per interval,
/// with how many happened since the last line.
#[derive(Default)]
struct Throttled {
    last_logged: Option<Instant>,
    since: u64,
}

impl Throttled {
    fn note(shared: &Mutex<Self>) -> Option<u64> {
        let mut this = shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        this.record()
    }

    fn record(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
        {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn trouble_is_logged_at_most_once_per_interval_with_a_count() {
        let mut throttled = Throttled::default();
        assert_eq!(throttled.record(), Some(1));
        assert_eq!(throttled.record(), None);
        assert_eq!(throttled.record(), None);
        tokio::time::advance(LOG_INTERVAL).await;
        assert_eq!(throttled.record(), Some(3));
    }

    #[test]
    fn out_of_descriptors_is_told_apart_from_a_peer_that_gave_up() {
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(24)));
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(23)));
        assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(103)));
    }
}
