//! WebSocket tunnels: after the upstream's `101 Switching Protocols` to a request the decision allowed
//! on a route with `websocket = true`, the bytes of both directions are relayed as they are.
//!
//! The 101 opens a tunnel only when it completes the opening handshake the client started (RFC 6455
//! section 4.1): its `Sec-WebSocket-Accept` must be the one derived from the client's
//! `Sec-WebSocket-Key` ([`super::handshake`]). Anything else — no key, a malformed key, no
//! or a wrong accept, `Upgrade` not `websocket` — is a 502 and no tunnel: an upstream that can be made to
//! reflect a 101 must not turn the client's connection into a raw pipe past the gateway's checks.
//!
//! A tunnel ends when either side closes or fails, when no byte moves either way for the route's
//! `websocket_idle_timeout`, when the server shuts down, or when the stream would no longer be let
//! through: every [`CHECK`] the gateway's re-check ([`crate::gateway::Gate::recheck`]) asks the token
//! index and the current route table again, by the digest the client presented. Writes to either side
//! never hold the relay up: both directions and the check tick are polled together, so a peer that
//! stops reading (its writes stuck) still sees its tunnel closed at the next tick after a revoke, and
//! a stuck write counts as no traffic for the idle timeout. Other upgrades never get here (only
//! `Upgrade: websocket` is sent on).

use super::connection::{Client, ClientStream, Facts};
use super::http1::{Buffer, ResponseHead};
use super::rewrite::{write_response_head, ClientFraming};
use super::upstream::Conn;
use super::{Engine, RouteIo};
use crate::gateway::{Admitted, Lapse};
use crate::telemetry::connections::Closed;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
// The runtime's clock, so that a paused clock (the in-process tests) reaches every timeout.
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// How often an open tunnel (or a streaming upload) is re-checked.
pub const CHECK: Duration = Duration::from_millis(50);

/// The size of each direction's buffer.
const PIPE_BYTES: usize = 16 * 1024;

/// Buffers one direction fills and empties in a row before letting the other direction and the tick
/// have their turn.
const ROUNDS: usize = 8;

/// Why a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// One side closed (or failed).
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// The re-check said no: the token was revoked, rotated out, expired, lost the scope, or the
    /// route changed.
    Lapsed(Lapse),
    /// The gateway is shutting down.
    Draining,
}

/// Bytes relayed in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Relayed {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// One direction of a tunnel: bytes read from one side, waiting to be written to the other.
struct Pipe {
    buf: Box<[u8]>,
    /// `buf[at..end]` is still to be written.
    at: usize,
    end: usize,
    /// Bytes written to the far side, `early` not counted.
    moved: u64,
    /// Bytes of `early` still counted out of `moved`.
    early: usize,
    /// Written since the last flush.
    unflushed: bool,
}

impl Pipe {
    /// A direction whose first bytes to write are `first` then `second` (already read past the heads).
    fn new(first: &[u8], second: &[u8], counted: bool) -> Pipe {
        let len = first.len() + second.len();
        let mut buf = vec![0u8; PIPE_BYTES.max(len)].into_boxed_slice();
        buf[..first.len()].copy_from_slice(first);
        buf[first.len()..len].copy_from_slice(second);
        Pipe {
            buf,
            at: 0,
            end: len,
            moved: 0,
            early: if counted { 0 } else { first.len() },
            unflushed: false,
        }
    }

    /// Bytes of the tunnel written to the far side (the 101 head not counted).
    fn relayed(&self) -> u64 {
        self.moved.saturating_sub(self.early as u64)
    }

    /// Moves bytes from `from` to `to` until one of them has to wait (`Pending`, woken when it can go
    /// on) or the direction ends (`Ready`: an end of stream, or an error on either side).
    fn poll_move<R, W>(&mut self, cx: &mut Context<'_>, from: &mut R, to: &mut W) -> Poll<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        for _ in 0..ROUNDS {
            while self.at < self.end {
                match Pin::new(&mut *to).poll_write(cx, &self.buf[self.at..self.end]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.at += n;
                        self.moved += n as u64;
                        self.unflushed = true;
                    }
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let mut rb = ReadBuf::new(&mut self.buf);
            match Pin::new(&mut *from).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(());
                    }
                    (self.at, self.end) = (0, n);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {
                    if self.unflushed {
                        match Pin::new(&mut *to).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.unflushed = false,
                            Poll::Ready(Err(_)) => return Poll::Ready(()),
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
        // A busy direction yields, so that the other one and the tick get their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What woke the relay.
enum Event {
    Closed,
    Tick,
}

/// The bytes waiting at the start of a tunnel: for the client, `to_client` (the 101 head) and then
/// what the upstream sent past it; for the upstream, what the client sent past its request.
pub struct Early<'a> {
    pub to_client: &'a [u8],
    pub client_buf: &'a mut Buffer,
    pub upstream_buf: &'a mut Buffer,
}

/// Relays both directions between the client and the upstream, `early` bytes first, until one side
/// closes, no byte moves for `idle_timeout`, or `watch` (asked every [`CHECK`], whatever either side
/// does) gives a reason to end. Returns what was relayed and why it ended; both streams are shut down
/// for writing on the way out (for at most a second).
pub async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    early: Early<'_>,
    idle_timeout: Duration,
    mut watch: impl FnMut() -> Option<End>,
) -> (Relayed, End)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pipe::new(early.client_buf.filled(), &[], true);
    early.client_buf.consume(early.client_buf.len());
    let mut down = Pipe::new(early.to_client, early.upstream_buf.filled(), false);
    early.upstream_buf.consume(early.upstream_buf.len());
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut seen = 0u64;
    let end = loop {
        let event = std::future::poll_fn(|cx| {
            if up.poll_move(cx, client, upstream).is_ready()
                || down.poll_move(cx, upstream, client).is_ready()
            {
                return Poll::Ready(Event::Closed);
            }
            tick.poll_tick(cx).map(|_| Event::Tick)
        })
        .await;
        match event {
            Event::Closed => break End::Closed,
            Event::Tick => {
                if let Some(end) = watch() {
                    break end;
                }
                let moved = up.moved + down.moved;
                if moved != seen {
                    (seen, last) = (moved, Instant::now());
                } else if last.elapsed() >= idle_timeout {
                    break End::Idle;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = upstream.shutdown().await;
        let _ = client.shutdown().await;
    })
    .await;
    let relayed = Relayed {
        to_upstream: up.relayed(),
        to_client: down.relayed(),
    };
    (relayed, end)
}

/// Whether the stream let through as `admitted` has lapsed (the gateway's re-check, against the route
/// table of now).
pub(super) fn lapsed(engine: &Engine, admitted: &Admitted<'_>) -> Option<Lapse> {
    let table = engine.table.load();
    engine
        .gate
        .recheck(&table.routes, admitted, crate::clock::now())
        .err()
}

impl<S: ClientStream> Client<'_, S> {
    /// The upstream answered 101 to a WebSocket upgrade (and completed the handshake): the 101 goes to
    /// the client, then the tunnel runs until it ends. The client connection ends with it.
    pub(super) async fn tunnel(
        &mut self,
        mut conn: Conn,
        io: &RouteIo,
        resp: &ResponseHead,
        facts: &mut Facts,
    ) -> bool {
        self.closing = Some(Closed::Tunnel);
        self.out.clear();
        write_response_head(
            &mut self.out,
            resp,
            conn.buf.filled(),
            ClientFraming::TUNNEL,
            None,
            (self.request_id.as_bytes(), true),
        );
        conn.buf.consume(resp.len);
        facts.status = 101;
        let m = &io.metrics;
        m.tunnels_open.inc();
        let engine = self.engine;
        let admitted = Admitted {
            route: &io.route.name,
            digest: facts.digest,
            tls: self.tls.as_ref(),
            websocket: true,
        };
        let watch = || {
            if let Some(lapse) = lapsed(engine, &admitted) {
                return Some(End::Lapsed(lapse));
            }
            engine.is_draining().then_some(End::Draining)
        };
        let early = Early {
            to_client: &self.out,
            client_buf: &mut self.buf,
            upstream_buf: &mut conn.buf,
        };
        let (relayed, end) = relay(
            &mut self.io,
            &mut conn.stream,
            early,
            io.route.websocket_idle_timeout,
            watch,
        )
        .await;
        m.tunnels_open.dec();
        m.tunnel_bytes_to_upstream.inc_by(relayed.to_upstream);
        m.tunnel_bytes_to_client.inc_by(relayed.to_client);
        facts.bytes_in = relayed.to_upstream;
        facts.bytes_out = relayed.to_client;
        if let End::Lapsed(lapse) = &end {
            log::info!(
                "route {}: a WebSocket tunnel of token {} closed: {}",
                io.route.name,
                facts.entry.as_ref().map_or(0, |e| e.token_id),
                lapse.describe()
            );
        }
        self.body_pending = false;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn buffer(bytes: &[u8]) -> Buffer {
        let mut b = Buffer::new();
        b.spare()[..bytes.len()].copy_from_slice(bytes);
        b.filled_by(bytes.len());
        b
    }

    #[tokio::test]
    async fn early_bytes_go_first_and_both_directions_flow() {
        let (mut client, mut client_end) = tokio::io::duplex(64 * 1024);
        let (mut upstream, mut upstream_end) = tokio::io::duplex(64 * 1024);
        let (mut cb, mut ub) = (buffer(b"frame-from-client"), buffer(b"frame-from-upstream"));
        let early = Early {
            to_client: b"HEAD\r\n\r\n",
            client_buf: &mut cb,
            upstream_buf: &mut ub,
        };
        let peers = async move {
            let mut got = [0u8; 27];
            client_end.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"HEAD\r\n\r\nframe-from-upstream");
            let mut got = [0u8; 17];
            upstream_end.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"frame-from-client");
            client_end.write_all(b"more").await.unwrap();
            let mut got = [0u8; 4];
            upstream_end.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"more");
            drop(client_end);
            upstream_end
        };
        let relaying = relay(
            &mut client,
            &mut upstream,
            early,
            Duration::from_secs(5),
            || None,
        );
        let ((relayed, end), _upstream_end) = tokio::join!(relaying, peers);
        assert_eq!(end, End::Closed);
        assert_eq!((relayed.to_upstream, relayed.to_client), (21, 19));
        assert!(cb.is_empty() && ub.is_empty());
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_does_not_stop_the_watch_or_the_idle_timeout() {
        // Either peer may be the one that stops reading while the other floods it.
        for client_stuck in [true, false] {
            for (watch_ends, idle) in [
                (true, Duration::from_secs(60)),
                (false, Duration::from_millis(300)),
            ] {
                let (mut client, client_end) = tokio::io::duplex(1024);
                let (mut upstream, upstream_end) = tokio::io::duplex(1024);
                let (mut flooder, stuck) = if client_stuck {
                    (upstream_end, client_end)
                } else {
                    (client_end, upstream_end)
                };
                // Fills every buffer on the way to the peer that never reads.
                let flood = tokio::spawn(async move {
                    let chunk = [9u8; 1024];
                    while flooder.write_all(&chunk).await.is_ok() {}
                });
                let started = Instant::now();
                let (mut cb, mut ub) = (Buffer::new(), Buffer::new());
                let early = Early {
                    to_client: b"",
                    client_buf: &mut cb,
                    upstream_buf: &mut ub,
                };
                let (_, end) = tokio::time::timeout(
                    Duration::from_secs(10),
                    relay(&mut client, &mut upstream, early, idle, || {
                        (watch_ends && started.elapsed() > Duration::from_millis(200))
                            .then_some(End::Draining)
                    }),
                )
                .await
                .expect("the relay hung in a write to a peer that does not read");
                assert_eq!(end, if watch_ends { End::Draining } else { End::Idle });
                drop((client, upstream, stuck));
                flood.abort();
            }
        }
    }
}
