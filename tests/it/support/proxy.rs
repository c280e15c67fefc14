//! A TCP proxy inside the test that can be told to stop forwarding bytes without closing anything:
//! what a network that silently drops packets looks like to both ends. Connections stay open,
//! the kernel still accepts new ones, but no byte crosses until it is told to forward again.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; it stops (and closes its connections) when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    blackholed: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards connections on a free local port to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (blackholed, gate) = watch::channel(false);
        let accept = tokio::spawn(async move {
            let mut pumps = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pumps.spawn(pump(client_read, server_write, gate.clone()));
                pumps.spawn(pump(server_read, client_write, gate.clone()));
            }
        });
        Proxy { addr, blackholed, accept }
    }

    /// Stops (`true`) or resumes (`false`) forwarding, in both directions, on every connection.
    pub fn blackhole(&self, on: bool) {
        self.blackholed.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every pump.
        self.accept.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is blackholed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if gate.wait_for(|blackholed| !blackholed).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
