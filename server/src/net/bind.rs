//! The listening sockets. On Linux one address is served by several sockets
//! sharing its port (SO_REUSEPORT), each with its own accept queue and its
//! own accept task. The kernel caps each queue at `net.core.somaxconn`
//! (4,096 on many hosts); a flood of silent connections that outruns the
//! accept loop fills a single queue, and from then on the kernel drops every
//! new SYN, a health check's too, which the client resends only after 1 s,
//! then 3 s. Several queues hold several times as many, the kernel spreads
//! new connections over them by address, and their accept loops run on
//! every worker thread at once.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections each socket's kernel queue may hold before they are
/// accepted; the kernel lowers it to `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

/// Sockets sharing the port: 8 x 4,096 queued connections is more than a
/// 20,000-connection flood at the default somaxconn.
#[cfg(target_os = "linux")]
const SOCKETS: usize = 8;
/// Elsewhere SO_REUSEPORT does not spread connections: one socket.
#[cfg(not(target_os = "linux"))]
const SOCKETS: usize = 1;

/// The sockets listening on one address.
pub struct Bound {
    addr: SocketAddr,
    pub(super) listeners: Vec<TcpListener>,
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl From<TcpListener> for Bound {
    fn from(listener: TcpListener) -> Self {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        Self {
            addr,
            listeners: vec![listener],
        }
    }
}

/// Binds `addr` (port 0: a free port) with `SOCKETS` sockets.
pub fn bind(addr: SocketAddr) -> io::Result<Bound> {
    // Port 0: another process may bind the port picked for the claim before
    // the sockets do; then pick another.
    let mut tries = 0;
    loop {
        match bind_once(addr) {
            Err(error)
                if addr.port() == 0 && error.kind() == io::ErrorKind::AddrInUse && tries < 5 =>
            {
                tries += 1;
            }
            bound => return bound,
        }
    }
}

fn bind_once(addr: SocketAddr) -> io::Result<Bound> {
    // SO_REUSEPORT would let another process of this user that asks for it
    // too (a second instance started by mistake) share the port silently.
    // So first claim the address as a plain bind does: it fails when
    // anything listens there, and picks the port when `addr` asks for any.
    let claim = socket(addr)?;
    claim.bind(addr)?;
    let addr = claim.local_addr()?;
    drop(claim);
    let listeners = (0..SOCKETS)
        .map(|_| {
            let socket = socket(addr)?;
            if SOCKETS > 1 {
                socket.set_reuseport(true)?;
            }
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Bound { addr, listeners })
}

fn socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's bind does on Unix: a restarted server can take its port back
    // while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_socket_serves_the_one_port_and_a_second_bind_is_refused() {
        let bound = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = bound.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(bound.listeners.len(), SOCKETS);
        for listener in &bound.listeners {
            assert_eq!(listener.local_addr().unwrap(), addr);
        }
        // Another instance on the same address fails as a plain bind would.
        let error = bind(addr).err().expect("the address is taken");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert!(std::net::TcpListener::bind(addr).is_err());
    }
}
