//! HTTP/2 at the edge: a connection that negotiated `h2` by ALPN on the TLS listener, or opened with
//! the HTTP/2 preface on the plain listener (`[gateway] h2c = true`, prior knowledge only; no
//! `Upgrade: h2c`). The framing, HPACK and flow control are the `h2` crate's (the one hyper and pingora
//! use); this module owns the connection's limits and timeouts and hands each stream to
//! [`stream::exchange`], which writes the stream's request into an HTTP/1.1 head, parses it with the
//! same strict parser as an HTTP/1.1 request and then decides, rewrites and forwards it exactly as
//! the HTTP/1.1 loop does. Upstreams stay HTTP/1.1, on the routes' shared pools.
//!
//! - this file: [`serve`] (the connection: settings, the accept loop, idle and header timeouts,
//!   `GOAWAY` on shutdown, client resets counted), [`sniff`] (the h2c preface on the plain listener).
//! - [`answer`]: the gateway's own answer on a stream, and the reset that may follow it.
//! - [`head`]: an HTTP/2 request as an HTTP/1.1 head (RFC 9113 §8.2/§8.3 checks), and the answers
//!   (the gateway's own and the upstream's) as HTTP/2 responses.
//! - [`stream`]: one stream, one request: the decision, the refusal or the forward, metrics and the
//!   access log.
//! - [`upstream`]: the forward: the request body streamed upstream under flow control (capacity
//!   released only as it is written), re-checked while it streams, the response relayed back.
//!
//! Limits against hostile peers (see README "HTTP/2"): `h2_max_concurrent_streams` streams at once,
//! a 64 KiB header list (HPACK-decoded size, checked while CONTINUATION frames arrive: a header block
//! over it is refused without being kept whole), at most [`MAX_PENDING_RESETS`] streams reset before
//! they were accepted and [`MAX_LOCAL_RESETS`] streams the gateway had to reset for protocol errors
//! (`GOAWAY ENHANCE_YOUR_CALM` beyond), and [`MAX_CLIENT_RESETS`] accepted streams the client reset
//! (the rapid reset attack, CVE-2023-44487, through accepted streams): `GOAWAY ENHANCE_YOUR_CALM`.

mod answer;
mod head;
mod stream;
mod upstream;

use super::connection::ClientStream;
use super::Engine;
use crate::gateway::TlsPeer;
use crate::telemetry::connections::Closed;
use bytes::Bytes;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest header list a stream may send, HPACK-decoded (RFC 9113 §6.5.2
/// `SETTINGS_MAX_HEADER_LIST_SIZE`): the HTTP/1.1 limit's ceiling. The HTTP/1.1 head the stream is
/// written into is then held to `max_head_bytes` and 128 fields like any other.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;

/// Streams the client may reset before the gateway accepted them (h2's own rapid-reset guard).
pub const MAX_PENDING_RESETS: usize = 20;

/// Streams the gateway may reset for the client's protocol errors before it closes the connection.
pub const MAX_LOCAL_RESETS: usize = 64;

/// Accepted streams the client may reset on one connection within [`RESET_WINDOW`].
pub const MAX_CLIENT_RESETS: usize = 100;

/// The window [`MAX_CLIENT_RESETS`] counts in.
const RESET_WINDOW: Duration = Duration::from_secs(10);

/// A stream's receive window: the request body bytes the client may send ahead of the upstream.
const STREAM_WINDOW: u32 = 256 * 1024;

/// The connection's receive window, for all its streams together: bounds the memory one connection's
/// uploads hold (capacity is released only as bytes are written upstream).
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Longest single wait of the accept loop: an idle connection notices a shutdown within this.
const SLICE: Duration = Duration::from_secs(1);

/// How long a closing connection (`GOAWAY` sent) may take to finish once no stream is open.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What one HTTP/2 connection's streams share: the peer, as the decision and the log see it.
pub struct Peer {
    pub(super) addr: Option<IpAddr>,
    /// The address as text, for `X-Forwarded-For`.
    pub(super) addr_text: String,
    /// What the TLS handshake established (the client certificate binds tokens), `None` for h2c.
    pub(super) tls: Option<TlsPeer>,
    pub(super) tls_marker: Option<&'static str>,
    /// Accepted streams open now.
    open: AtomicUsize,
    /// Accepted streams the client reset (RST_STREAM before the answer ended), in this window.
    client_resets: AtomicUsize,
}

impl Peer {
    pub fn new(
        addr: Option<IpAddr>,
        tls: Option<TlsPeer>,
        tls_marker: Option<&'static str>,
    ) -> Peer {
        Peer {
            addr,
            addr_text: addr.map(|a| a.to_string()).unwrap_or_default(),
            tls,
            tls_marker,
            open: AtomicUsize::new(0),
            client_resets: AtomicUsize::new(0),
        }
    }

    /// The client reset a stream it had opened.
    pub(super) fn client_reset(&self) {
        self.client_resets.fetch_add(1, Ordering::Relaxed);
    }
}

/// An open stream, counted while it lives.
struct Open(Arc<Peer>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server side of HTTP/2 with the gateway's limits.
fn builder(engine: &Engine) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(engine.h2_max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .max_concurrent_reset_streams(MAX_LOCAL_RESETS)
        .max_send_buffer_size(64 * 1024);
    b
}

/// Serves one HTTP/2 connection until it closes, idles out, misbehaves or the server shuts down, and
/// says why it ended. Each stream runs in its own task (the connection's I/O stays in this one); the
/// connection's `max_connections` slot is the caller's.
pub async fn serve<S: ClientStream>(
    engine: &Arc<Engine>,
    io: S,
    peer: Peer,
    accepted: Instant,
) -> Closed {
    let peer = Arc::new(peer);
    // The preface and the client's SETTINGS within `header_timeout` of accept (the TLS handshake
    // included), as the first HTTP/1.1 head.
    let handshake = builder(engine).handshake::<S, Bytes>(io);
    let mut conn = match tokio::time::timeout_at(accepted + engine.header_timeout, handshake).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            log::debug!("HTTP/2 handshake from {:?} failed: {e}", peer.addr);
            return Closed::BadRequest;
        }
        Err(_) => return Closed::HeaderTimeout,
    };
    let mut served = 0u64;
    // When the connection became idle (no stream open): it closes `keepalive_timeout` later, or
    // `header_timeout` after accept before its first stream.
    let mut idle_since = Some(accepted);
    let mut closing: Option<(Instant, Closed)> = None;
    let mut window_start = Instant::now();
    loop {
        let next = tokio::select! {
            biased;
            next = conn.accept() => Some(next),
            _ = tokio::time::sleep(SLICE) => None,
        };
        match next {
            Some(Some(Ok((request, respond)))) => {
                served += 1;
                peer.open.fetch_add(1, Ordering::Relaxed);
                let open = Open(peer.clone());
                let engine = engine.clone();
                tokio::spawn(async move {
                    stream::exchange(&engine, &open.0, request, respond).await;
                    drop(open);
                });
            }
            Some(Some(Err(e))) => {
                log::debug!("HTTP/2 connection from {:?} ended: {e}", peer.addr);
                return match closing {
                    Some((_, why)) => why,
                    None if e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) => Closed::Refused,
                    None if e.is_io() => Closed::ClientGone,
                    None => Closed::BadRequest,
                };
            }
            Some(None) => return closing.map_or(Closed::Done, |(_, why)| why),
            None => {}
        }
        let now = Instant::now();
        if now.duration_since(window_start) >= RESET_WINDOW {
            window_start = now;
            peer.client_resets.store(0, Ordering::Relaxed);
        } else if peer.client_resets.load(Ordering::Relaxed) > MAX_CLIENT_RESETS {
            // Streams opened and reset in a loop (each costs a decision and maybe an upstream
            // request): the rapid reset attack through accepted streams.
            log::info!(
                "HTTP/2 connection from {:?} closed: more than {MAX_CLIENT_RESETS} streams reset in {RESET_WINDOW:?}",
                peer.addr
            );
            conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            closing.get_or_insert((now, Closed::Refused));
            continue;
        }
        let open = peer.open.load(Ordering::Relaxed);
        if open > 0 {
            idle_since = None;
        } else if idle_since.is_none() {
            idle_since = Some(now);
        }
        if let Some((since, _)) = closing {
            // GOAWAY went out: the open streams finish; a peer that keeps the connection open after
            // them (or never answers the closing PING) is dropped.
            if open == 0 && now.duration_since(since) >= CLOSE_GRACE {
                return closing.map_or(Closed::Done, |(_, why)| why);
            }
            continue;
        }
        if engine.is_draining() {
            conn.graceful_shutdown();
            closing = Some((now, Closed::Shutdown));
            continue;
        }
        if let Some(since) = idle_since {
            let (limit, why) = if served == 0 {
                (engine.header_timeout, Closed::HeaderTimeout)
            } else {
                (engine.keepalive_timeout, Closed::IdleTimeout)
            };
            if now.duration_since(since) >= limit {
                conn.graceful_shutdown();
                closing = Some((now, why));
            }
        }
    }
}

/// What the first bytes of a plain connection said.
pub enum Sniffed<S> {
    /// The HTTP/2 preface: serve HTTP/2 (the preface is handed back to the HTTP/2 handshake).
    H2(Rewind<S>),
    /// Anything else: HTTP/1.1, from the bytes already read.
    Http1(Rewind<S>),
    /// The client closed or sent nothing before `header_timeout`.
    Gone(Closed),
}

/// Reads the first bytes of a plain connection, until they stop matching the HTTP/2 preface or are
/// all of it, before `deadline`.
pub async fn sniff<S: ClientStream>(mut io: S, deadline: Instant) -> Sniffed<S> {
    let mut first = [0u8; PREFACE.len()];
    let mut n = 0;
    while n < PREFACE.len() {
        match tokio::time::timeout_at(deadline, io.read(&mut first[n..])).await {
            Ok(Ok(0)) | Ok(Err(_)) if n == 0 => return Sniffed::Gone(Closed::Done),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(k)) => n += k,
            Err(_) if n == 0 => return Sniffed::Gone(Closed::HeaderTimeout),
            Err(_) => break,
        }
        if first[..n] != PREFACE[..n] {
            break;
        }
    }
    let rewind = Rewind {
        first,
        at: 0,
        end: n,
        io,
    };
    if n == PREFACE.len() && first == *PREFACE {
        Sniffed::H2(rewind)
    } else {
        Sniffed::Http1(rewind)
    }
}

/// A stream whose first bytes were already read: they are read again first.
pub struct Rewind<S> {
    first: [u8; PREFACE.len()],
    at: usize,
    end: usize,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.end {
            let n = (me.end - me.at).min(buf.remaining());
            buf.put_slice(&me.first[me.at..me.at + n]);
            me.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
