//! One accepted connection, as tonic sees it: the socket (or TLS stream)
//! plus the deadlines and the slot it holds.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::transport::server::Connected;

use super::idle::IdleTimer;
use super::limit::{Pending, Slot};

/// Bytes in the HTTP/2 client connection preface ("PRI * HTTP/2.0..."); an
/// HTTP/1.1 request line and its headers are longer, so either ends the
/// opening.
const PREFACE_LEN: usize = 24;

pub struct Conn<S> {
    io: S,
    /// Until the client has sent as many bytes as the HTTP/2 preface: the
    /// deadline (from the accept), and the signal that a newer connection
    /// took this one's place.
    opening: Option<Opening>,
    idle: IdleTimer,
    _slot: Slot,
}

struct Opening {
    received: usize,
    deadline: Pin<Box<Sleep>>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
    _pending: Pending,
}

impl<S> Conn<S> {
    pub(super) fn new(
        io: S,
        slot: Slot,
        pending: Pending,
        deadline: Instant,
        idle: IdleTimer,
    ) -> Self {
        Self {
            io,
            opening: Some(Opening {
                received: 0,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                evicted: Box::pin(pending.evicted()),
                _pending: pending,
            }),
            idle,
            _slot: slot,
        }
    }
}

/// tonic's own connection info (`TcpConnectInfo`, or
/// `TlsConnectInfo<TcpConnectInfo>` with the peer's certificates), so
/// `Request::remote_addr()` and `Request::peer_certs()` work.
impl<S: Connected> Connected for Conn<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(opening) = &mut this.opening {
            if opening.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface or HTTP/1.1 request within the handshake timeout",
                )));
            }
            if opening.evicted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed to make room: connection cap reached before this one spoke",
                )));
            }
        }
        if this.idle.poll_expired(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle connection closed",
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(opening) = &mut this.opening {
            opening.received += buf.filled().len() - before;
            if opening.received >= PREFACE_LEN {
                this.opening = None;
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
