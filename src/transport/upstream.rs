//! Connections to one route's upstream: connecting with the route's timeout, and a small pool of idle
//! keep-alive connections.
//!
//! A client connection keeps the upstream connection it last used for as long as it stays on that route,
//! so a device sending request after request on one keep-alive connection touches neither the pool nor
//! its lock; the pool only sees a connection when a client connection ends or changes route. A pooled
//! connection is checked for a close (FIN or stray bytes) before it is handed out, and dropped after the
//! route's `idle_timeout`.
//!
//! An `https://` upstream speaks TLS on the same connections ([`UpstreamStream::Tls`]); its certificate is
//! always verified (a failure is a 502 `upstream_tls`).

use super::http1::Buffer;
use super::tls;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Idle connections kept per route at most; more are closed when returned.
const MAX_IDLE: usize = 256;

/// Upstream failure kinds, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    ConnectRefused,
    ConnectTimeout,
    ReadTimeout,
    WriteTimeout,
    Reset,
    /// The TLS handshake with the upstream failed (certificate not verified, no common parameters).
    Tls,
    Other,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 7] = [
        UpstreamError::ConnectRefused,
        UpstreamError::ConnectTimeout,
        UpstreamError::ReadTimeout,
        UpstreamError::WriteTimeout,
        UpstreamError::Reset,
        UpstreamError::Tls,
        UpstreamError::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::ConnectRefused => "connect_refused",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::ReadTimeout => "read_timeout",
            UpstreamError::WriteTimeout => "write_timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::Tls => "tls",
            UpstreamError::Other => "other",
        }
    }
}

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
pub struct UpstreamTls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls_pki_types::ServerName<'static>,
}

/// One route's upstream address, timeouts and idle pool.
pub struct Upstream {
    pub addr: SocketAddr,
    /// `addr` as text, for the `Host` field of requests whose client sent none.
    pub host: String,
    /// Set for an `https://` upstream.
    pub tls: Option<UpstreamTls>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle connections, most recently used last. A mutex: it is touched once per client connection (not
    /// per request), for a push or a pop.
    idle: Mutex<Vec<Conn>>,
}

impl Upstream {
    pub fn new(
        addr: SocketAddr,
        tls: Option<UpstreamTls>,
        connect_timeout: Duration,
        read_timeout: Duration,
        write_timeout: Duration,
        idle_timeout: Duration,
    ) -> Upstream {
        Upstream {
            addr,
            host: addr.to_string(),
            tls,
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The most recently used idle connection that is still open, if any.
    pub fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut conn) = idle.pop() {
            if conn.idle_since.elapsed() < self.idle_timeout && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection that finished an exchange cleanly, for another client connection.
    pub fn put_idle(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        conn.buf.shrink_if_idle();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(conn);
    }

    /// Opens a new connection (TCP, then TLS for an `https://` upstream) within `connect_timeout`.
    pub async fn connect(&self) -> Result<Conn, (UpstreamError, io::Error)> {
        let started = Instant::now();
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
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
