//! A delaying TCP proxy: puts a round-trip time between the ingester (or the bare drain) and the
//! emulator, as real SQS answers in 10-30 ms where the emulator on loopback answers in under one.
//!
//! Every chunk read from either side is written to the other half the round trip later, in order, so
//! a request and its response each pay one way and requests on one connection still pipeline (the
//! delay is a pipe, not a pause). A new connection pays one round trip before it is opened, as a TCP
//! handshake would. `tc netem` on a veth pair does the same in the kernel but needs a network
//! namespace and root; this runs anywhere the benchmark runs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A running proxy; stops accepting (open connections end with their peers) when dropped.
pub(crate) struct DelayProxy {
    /// Where to point the client: `http://<addr>`.
    pub(crate) addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Listens on an ephemeral loopback port and forwards to `upstream` with `rtt` added to every round trip.
pub(crate) async fn start(upstream: SocketAddr, rtt: Duration) -> std::io::Result<DelayProxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accept = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(rtt).await;
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, rtt / 2));
                tokio::spawn(pipe(server_read, client_write, rtt / 2));
            });
        }
    });
    Ok(DelayProxy { addr, accept })
}

/// Copies `from` to `to`, each chunk `delay` after it was read. Reading never waits for writing, so
/// the delay does not cap the throughput of a connection.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buffer[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
