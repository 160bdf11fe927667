//! A TCP proxy a test can cut, to play a network failure between the app and one of its
//! services without stopping the shared service (other tests are using it).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    stall: watch::Sender<bool>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> Self {
        let target: SocketAddr = target.parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let (stall, stall_rx) = watch::channel(false);
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
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    let stalled = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
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
        Self { addr, cut, stall }
    }

    /// Keeps every connection open but forwards nothing more, in either direction, like a
    /// frozen server: new connections are accepted and never answered.
    pub fn stall(&self) {
        self.stall.send_replace(true);
    }

    /// Drops every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}
