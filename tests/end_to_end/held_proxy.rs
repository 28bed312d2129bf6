//! A TCP proxy that can go dead without closing anything: after `cut()`,
//! every connection it holds stays open and carries nothing more, as a
//! proxy or NAT does with connections whose other end is long gone.
//! Connections made after the cut are forwarded as usual. Dropping the
//! proxy closes everything it holds.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct HeldProxy {
    pub addr: SocketAddr,
    /// Bumped by each cut; connections older than it are held silent.
    cuts: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl HeldProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, _) = watch::channel(0);
        let watching = cuts.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, watching.subscribe()));
            }
        });
        Self { addr, cuts, accept }
    }

    /// Every connection open now goes silent, and stays open.
    pub fn cut(&self) {
        self.cuts.send_modify(|cuts| *cuts += 1);
    }
}

impl Drop for HeldProxy {
    fn drop(&mut self) {
        // The held connections end with the last sender (this one and the
        // accept loop's).
        self.accept.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut cuts: watch::Receiver<u64>) {
    let born = *cuts.borrow_and_update();
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        cut = cuts.wait_for(|cuts| *cuts > born) => if cut.is_err() { return },
    }
    // Cut: both sockets stay open, and nothing more passes, until the
    // proxy is dropped.
    let _ = cuts.wait_for(|_| false).await;
}
