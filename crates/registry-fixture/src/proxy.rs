//! [`CountingProxy`]: a TCP forwarder on 127.0.0.1 that counts the bytes an upstream server sends
//! to its clients, as they flow. Tests put it between a client and a registry to see how much of a
//! blob went over the wire (a resumed download must not fetch the whole blob again) or to act when
//! a given share of a download has passed (kill a daemon mid-download).
//!
//! Owns a small tokio runtime of its own (so it forwards whatever the test's thread does: awaiting,
//! blocking on a child process, …), its listening socket and one task per connection; dropping the
//! proxy stops accepting and closes every connection. It knows nothing of HTTP.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Size of one read from upstream; each read is counted once it was written to the client.
const CHUNK: usize = 64 * 1024;

/// Forwards every TCP connection made to [`CountingProxy::addr`] to an upstream address, both
/// ways, counting the bytes from upstream to the client (module docs).
pub struct CountingProxy {
    addr: SocketAddr,
    served: Arc<watch::Sender<u64>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl CountingProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`. Callable from
    /// synchronous and asynchronous code alike.
    pub fn start(upstream: SocketAddr) -> io::Result<CountingProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("counting-proxy")
            .enable_io()
            .build()?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let served = Arc::new(watch::Sender::new(0u64));
        runtime.spawn(accept(listener, upstream, served.clone()));
        Ok(CountingProxy {
            addr,
            served,
            runtime: Some(runtime),
        })
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>` of the proxy, usable as the registry host of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Bytes sent from upstream to clients so far, over every connection since the start or the
    /// last [`CountingProxy::reset`].
    pub fn served(&self) -> u64 {
        *self.served.borrow()
    }

    /// Sets the count back to 0.
    pub fn reset(&self) {
        self.served.send_replace(0);
    }

    /// Resolves once [`CountingProxy::served`] is at least `at_least` (at once if it already is).
    pub async fn wait_served(&self, at_least: u64) {
        let mut rx = self.served.subscribe();
        // The sender lives as long as `self`, which this future borrows: `wait_for` cannot fail.
        let _ = rx.wait_for(|n| *n >= at_least).await;
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        // Does not block, so it may run inside an async test; the listener and every connection
        // are closed as the runtime's tasks are dropped.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Accepts connections until the runtime shuts down; one task per connection.
async fn accept(listener: TcpListener, upstream: SocketAddr, served: Arc<watch::Sender<u64>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(forward(client, upstream, served.clone()));
    }
}

/// Forwards one connection both ways until both directions are done or one fails.
async fn forward(client: TcpStream, upstream: SocketAddr, served: Arc<watch::Sender<u64>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return; // dropping `client` closes it: the client sees the upstream as unreachable
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let _ = tokio::try_join!(
        copy_up(client_read, server_write),
        copy_down(server_read, client_write, &served),
    );
}

/// Client → upstream, uncounted; passes on the client's half-close.
async fn copy_up(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> io::Result<()> {
    tokio::io::copy(&mut from, &mut to).await?;
    to.shutdown().await
}

/// Upstream → client, counting each chunk once the client's socket took it.
async fn copy_down(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    served: &watch::Sender<u64>,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        served.send_modify(|total| *total += n as u64);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A server on loopback that answers each connection's first byte with `reply`, then closes.
    fn upstream(reply: Vec<u8>) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut first = [0u8; 1];
                if conn.read_exact(&mut first).is_ok() {
                    let _ = conn.write_all(&reply);
                }
            }
        });
        addr
    }

    fn fetch(addr: SocketAddr) -> Vec<u8> {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"?").unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    }

    #[tokio::test]
    async fn the_proxy_forwards_both_ways_and_counts_what_upstream_sends() {
        let reply: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let proxy = CountingProxy::start(upstream(reply.clone())).unwrap();
        assert_eq!(proxy.host(), proxy.addr().to_string());
        assert_eq!(proxy.served(), 0);

        let addr = proxy.addr();
        let waiting = proxy.wait_served(2 * reply.len() as u64);
        let fetching = tokio::task::spawn_blocking(move || (fetch(addr), fetch(addr)));
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("two replies' worth passes through");
        let (a, b) = fetching.await.unwrap();
        assert_eq!((a == reply, b == reply), (true, true));
        assert_eq!(proxy.served(), 2 * reply.len() as u64);

        proxy.reset();
        assert_eq!(proxy.served(), 0);
        proxy.wait_served(0).await;
        let again = tokio::task::spawn_blocking(move || fetch(addr))
            .await
            .unwrap();
        assert_eq!(again, reply);
        assert_eq!(proxy.served(), reply.len() as u64);
    }

    #[test]
    fn a_dropped_proxy_no_longer_forwards() {
        let proxy = CountingProxy::start(upstream(b"hello".to_vec())).unwrap();
        let addr = proxy.addr();
        assert_eq!(fetch(addr), b"hello");
        drop(proxy);
        // Refused, or accepted by a listener that is going away and closed without a reply.
        if let Ok(mut conn) = std::net::TcpStream::connect(addr) {
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let _ = conn.write_all(b"?");
            let mut got = Vec::new();
            let _ = conn.read_to_end(&mut got);
            assert!(got.is_empty(), "forwarded after drop: {got:?}");
        }
    }
}
