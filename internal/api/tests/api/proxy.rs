//! A TCP proxy a test can cut, to play a network failure between the app and one of its
//! services without stopping the shared service (other tests are using it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    stall: watch::Sender<bool>,
    mute: watch::Sender<bool>,
    muted_bytes: Arc<AtomicU64>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> Self {
        let target: SocketAddr = target.parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let (stall, stall_rx) = watch::channel(false);
        let (mute, mute_rx) = watch::channel(false);
        let muted_bytes = Arc::new(AtomicU64::new(0));
        let counter = muted_bytes.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let (mut cut_rx, mut stall_rx) = (cut_rx.clone(), stall_rx.clone());
                let (mute_rx, counter) = (mute_rx.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let stalled = tokio::select! {
                        _ = forward(inbound, outbound, mute_rx, counter) => false,
                        _ = cut_rx.wait_for(|cut| *cut) => false,
                        _ = stall_rx.wait_for(|stall| *stall) => true,
                    };
                    if stalled {
                        // Both sockets stay open and nothing moves, until the proxy is cut.
                        let _ = cut_rx.wait_for(|cut| *cut).await;
                    }
                });
            }
        });
        Self { addr, cut, stall, mute, muted_bytes }
    }

    /// Keeps every connection open but forwards nothing more, in either direction, like a
    /// frozen server: new connections are accepted and never answered.
    pub fn stall(&self) {
        self.stall.send_replace(true);
    }

    /// Keeps forwarding what the app sends, but drops everything the server answers: the
    /// server acts on every request and the app never hears back.
    pub fn mute_replies(&self) {
        self.mute.send_replace(true);
    }

    /// How many bytes of the server's answers were dropped since [`TcpProxy::mute_replies`].
    pub fn muted_bytes(&self) -> u64 {
        self.muted_bytes.load(Ordering::Relaxed)
    }

    /// Drops every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

/// Copies both ways until both sides have closed, as `copy_bidirectional` does, except
/// that the server's bytes are counted and dropped while `mute` is set.
async fn forward(mut inbound: TcpStream, mut outbound: TcpStream, mute: watch::Receiver<bool>, muted: Arc<AtomicU64>) {
    let (mut app_reads, mut app_writes) = inbound.split();
    let (mut server_reads, mut server_writes) = outbound.split();
    let requests = async {
        let _ = tokio::io::copy(&mut app_reads, &mut server_writes).await;
        let _ = server_writes.shutdown().await;
    };
    let replies = async {
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(read @ 1..) = server_reads.read(&mut buffer).await {
            if *mute.borrow() {
                muted.fetch_add(read as u64, Ordering::Relaxed);
            } else if app_writes.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
        let _ = app_writes.shutdown().await;
    };
    tokio::join!(requests, replies);
}
