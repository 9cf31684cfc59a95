//! A loopback TCP proxy between a worker and NATS that can cut the worker off.
//!
//! [`Proxy::cut`] is a network partition: bytes stop flowing both ways on every open
//! connection (they are held open, so the client sees silence rather than a reset),
//! and new connections are closed at once. [`Proxy::heal`] ends it: the held
//! connections are closed (as a long partition ends in practice) and new ones pass.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    /// Must be called inside a Tokio runtime (the forwarding runs on it).
    pub fn start_blocking(target: String) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let addr = listener.local_addr()?;
        let (tx, _) = watch::channel(false);
        let cut = Arc::new(tx);
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, target, cut.clone(), stop.clone()));
        Ok(Self { addr, cut, stop })
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: String,
    cut: Arc<watch::Sender<bool>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        if *cut.borrow() {
            let _ = inbound.shutdown().await;
            continue;
        }
        let target = target.clone();
        let cut_rx = cut.subscribe();
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Ok(outbound) = TcpStream::connect(&target).await {
                pipe(inbound, outbound, cut_rx, stop).await;
            }
        });
    }
}

/// Copies both ways until either side closes; on a cut, stops copying and holds both
/// sockets until the cut is healed (or the proxy stops), then closes them.
async fn pipe(
    mut a: TcpStream,
    mut b: TcpStream,
    mut cut: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = &mut copy => return,
        _ = cut.wait_for(|c| *c) => {}
    }
    // Partitioned: nothing flows; the sockets stay open until healed.
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = cut.wait_for(|c| !*c) => {}
    }
}
