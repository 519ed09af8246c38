//! Connections to one server of a route's pool: connecting with the route's timeout, a small queue of
//! idle keep-alive connections, and the server's health (which `transport::pool` reads and the
//! checks in `transport::health` write).
//!
//! An upstream connection serves one exchange at a time and goes back to its server's idle queue (a
//! lock-free `ArrayQueue`) as soon as the response is relayed, like nginx's `keepalive` pool: a client
//! connection between requests holds none, so a thousand mostly idle devices cost as many upstream
//! connections as there are requests in flight, and a burst of new client connections (a fleet
//! reconnecting after a restart) finds the connections of the others waiting instead of opening one each.
//! (Until 2026-12-01 a client connection kept its upstream connection while it lived: one upstream
//! connection per device, and a p99 at 1,000 new connections three times nginx's; BENCHMARKS.md "Latency
//! tail".) A pooled connection is checked for a close (FIN or stray bytes) before it is handed out, and
//! dropped after the route's `idle_timeout`: the pools' background thread ([`Upstream::reap_idle`], from
//! `transport::health`) closes the connections idle past it and those the server closed, so a burst
//! leaves no connections open on either side once it is over (until 2026-12 they were only closed when
//! handed out again: 1,000 were still open 15 s after a burst with `idle_timeout = 5s`).
//!
//! An `https://` upstream speaks TLS on the same connections ([`UpstreamStream::Tls`]); its certificate is
//! always verified (a failure is a 502 `upstream_tls`).

use super::http1::Buffer;
use super::tls;
use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Idle connections kept per server at most; more are closed when returned. Large enough for the
/// connections of a thousand client connections busy at once (shared, every one of them is idle between
/// two exchanges): at 256, 1,000 busy clients closed and reopened upstream connections all the time and
/// served 40 % fewer requests. The queue's slots cost about 100 bytes each per server.
const MAX_IDLE: usize = 1024;

/// Upstream failure kinds (metric labels, owned by the counters that count them).
pub use crate::telemetry::metrics::UpstreamError;

/// The byte stream to an upstream: plain TCP or TLS over it.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection to an upstream and what has been read from it but not yet used.
pub struct Conn {
    pub stream: UpstreamStream,
    pub buf: Buffer,
    /// When this connection last finished an exchange.
    pub idle_since: Instant,
    /// True once it has carried a request (a failure on it may be a close the upstream made while idle).
    pub reused: bool,
}

impl Conn {
    /// False when the upstream closed this idle connection or sent bytes nobody asked for. Needs no
    /// system call when the socket has shown no readiness since it was last read to the end.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match &mut self.stream {
            UpstreamStream::Plain(s) => {
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            // Through TLS: a record may be a session ticket (no data) or a close_notify. One poll that
            // finds nothing to read means the connection is idle and open.
            UpstreamStream::Tls(s) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(s.as_mut())
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

/// TLS to an upstream: the verifying client configuration and the name to verify.
pub struct ServerTls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls_pki_types::ServerName<'static>,
    /// `server_name` as text (to compare configurations on reload).
    pub name: String,
}

/// The settings every server of a route shares.
#[derive(Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

/// One server of a route's pool: its address (re-resolved in the background), TLS, timeouts, idle
/// keep-alive connections and health.
pub struct Upstream {
    /// As configured (`10.0.0.5:8700`, `https://video-3.internal:8700`): the name in metrics and the API.
    pub label: String,
    /// `host:port` as configured: what is resolved again, and the `Host` of requests whose client sent
    /// none.
    pub host: String,
    /// The address connections go to; swapped when a re-resolution finds another one.
    addr: ArcSwap<SocketAddr>,
    /// Set for an `https://` upstream.
    pub tls: Option<ServerTls>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle connections: a lock-free queue, touched when a client connection changes server (with a
    /// pool of several servers, that may be every request).
    idle: ArrayQueue<Conn>,
    /// Whether the server is in rotation (health checks and failures decide; see `transport::pool`).
    pub health: Health,
}

/// A server's health: whether it is in rotation, and what the checks and failures have seen lately.
#[derive(Default)]
pub struct Health {
    /// False while the server is out of rotation.
    pub down: AtomicBool,
    /// When a server taken out by a failure may be tried again (monotonic ns; without active checks).
    pub retry_at: AtomicU64,
    /// Consecutive check failures and successes.
    pub fails: AtomicU32,
    pub oks: AtomicU32,
    /// Requests in flight to this server (kept for `least_requests`).
    pub in_flight: AtomicUsize,
}

impl Upstream {
    pub fn new(
        label: &str,
        host: &str,
        addr: SocketAddr,
        tls: Option<ServerTls>,
        timeouts: &Timeouts,
    ) -> Upstream {
        Upstream {
            label: label.to_owned(),
            host: host.to_owned(),
            addr: ArcSwap::from_pointee(addr),
            tls,
            connect_timeout: timeouts.connect,
            read_timeout: timeouts.read,
            write_timeout: timeouts.write,
            idle_timeout: timeouts.idle,
            idle: ArrayQueue::new(MAX_IDLE),
            health: Health::default(),
        }
    }

    /// The address connections go to now.
    pub fn addr(&self) -> SocketAddr {
        **self.addr.load()
    }

    /// Points new connections at `addr` (a re-resolution found another address); idle connections to
    /// the old one are closed. Returns whether it changed.
    pub fn set_addr(&self, addr: SocketAddr) -> bool {
        if self.addr() == addr {
            return false;
        }
        self.addr.store(Arc::new(addr));
        self.drop_idle();
        true
    }

    /// Whether `other` would be the same server with the same settings (a reload keeps its
    /// connections and health then).
    pub fn same_as(&self, label: &str, tls_name: Option<&str>, timeouts: &Timeouts) -> bool {
        self.label == label
            && self.tls.as_ref().map(|t| t.name.as_str()) == tls_name
            && self.connect_timeout == timeouts.connect
            && self.read_timeout == timeouts.read
            && self.write_timeout == timeouts.write
            && self.idle_timeout == timeouts.idle
    }

    /// An idle connection that is still open, if any.
    pub fn take_idle(&self) -> Option<Conn> {
        while let Some(mut conn) = self.idle.pop() {
            if conn.idle_since.elapsed() < self.idle_timeout && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection that finished an exchange cleanly, for another client connection (the
    /// oldest idle one is closed when the queue is full; nothing is kept for a server out of rotation).
    pub fn put_idle(&self, mut conn: Conn) {
        if self.health.down.load(Ordering::Relaxed) {
            return;
        }
        conn.idle_since = Instant::now();
        conn.buf.shrink_if_idle();
        drop(self.idle.force_push(conn));
    }

    /// Closes the idle connections past `idle_timeout`, those the server closed and those it sent
    /// bytes on unasked; the others go back to the queue with their idle time unchanged. Returns how
    /// many were closed. Runs on the pools' background thread: it looks at each connection queued when it
    /// started once (requests meanwhile take and return connections as usual; one the reaper is holding
    /// for a moment is simply not found idle, and a new one is opened).
    pub fn reap_idle(&self) -> usize {
        let mut closed = 0;
        for _ in 0..self.idle.len() {
            let Some(mut conn) = self.idle.pop() else {
                break;
            };
            if conn.idle_since.elapsed() < self.idle_timeout && conn.is_usable() {
                // Full meanwhile: the oldest gives way, as in `put_idle`.
                if self.idle.force_push(conn).is_some() {
                    closed += 1;
                }
            } else {
                closed += 1;
            }
        }
        closed
    }

    /// How many idle connections the server has now.
    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Closes every idle connection (the server went out of rotation, or moved).
    pub fn drop_idle(&self) {
        while self.idle.pop().is_some() {}
    }

    /// Opens a new connection (TCP, then TLS for an `https://` upstream) within `connect_timeout`.
    pub async fn connect(&self) -> Result<Conn, (UpstreamError, io::Error)> {
        let started = Instant::now();
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr())).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let kind = match e.kind() {
                        io::ErrorKind::ConnectionRefused => UpstreamError::ConnectRefused,
                        _ => UpstreamError::Other,
                    };
                    return Err((kind, e));
                }
                Err(_) => {
                    return Err((
                        UpstreamError::ConnectTimeout,
                        io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                    ))
                }
            };
        // Heads and small bodies go out in one write each; never wait for Nagle.
        let _ = stream.set_nodelay(true);
        let stream = match &self.tls {
            None => UpstreamStream::Plain(stream),
            Some(t) => {
                let left = self.connect_timeout.saturating_sub(started.elapsed());
                match tls::connect(&t.connector, t.server_name.clone(), stream, left).await {
                    Ok(s) => UpstreamStream::Tls(Box::new(s)),
                    Err(tls::ConnectError::Timeout(_)) => {
                        return Err((
                            UpstreamError::ConnectTimeout,
                            io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"),
                        ))
                    }
                    Err(e) => return Err((UpstreamError::Tls, io::Error::other(e.to_string()))),
                }
            }
        };
        Ok(Conn {
            stream,
            buf: Buffer::new(),
            idle_since: Instant::now(),
            reused: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn timeouts(idle: Duration) -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(1),
            write: Duration::from_secs(1),
            idle,
        }
    }

    #[tokio::test]
    async fn the_sweep_closes_what_the_server_closed_and_what_idled_too_long_and_keeps_the_rest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut up = Upstream::new(
            "t",
            &addr.to_string(),
            addr,
            None,
            &timeouts(Duration::from_secs(60)),
        );
        let mut servers = Vec::new();
        for _ in 0..3 {
            let conn = up.connect().await.unwrap();
            servers.push(listener.accept().await.unwrap().0);
            up.put_idle(conn);
        }
        assert_eq!(
            (up.reap_idle(), up.idle_count()),
            (0, 3),
            "all open and fresh"
        );
        // The server closes one: the sweep closes it (once the reactor has seen the FIN).
        drop(servers.remove(0));
        let mut closed = 0;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            closed += up.reap_idle();
            if closed > 0 {
                break;
            }
        }
        assert_eq!((closed, up.idle_count()), (1, 2));
        // A server that sends bytes unasked: closed too.
        servers[0].try_write(b"stray").unwrap();
        let mut closed = 0;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            closed += up.reap_idle();
            if closed > 0 {
                break;
            }
        }
        assert_eq!((closed, up.idle_count()), (1, 1));
        // Past idle_timeout: closed, and the server sees the close.
        up.idle_timeout = Duration::from_millis(1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!((up.reap_idle(), up.idle_count()), (1, 0));
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), servers[1].read(&mut byte))
            .await
            .expect("closed within 5 s")
            .unwrap();
        assert_eq!(n, 0);
    }
}
