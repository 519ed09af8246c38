//! WebSocket tunnels: after the upstream's `101 Switching Protocols` to a request the decision allowed
//! on a route with `websocket = true`, the bytes of both directions are relayed as they are until
//! either side closes, neither sends for the route's `websocket_idle_timeout`, the server shuts down —
//! or the token is revoked or expires: the tunnel's token is looked at every [`CHECK`] (an atomic load),
//! so a revocation closes its open tunnels within the sync bound plus that. Other upgrades never get
//! here (only `Upgrade: websocket` is sent on).

use super::connection::{Client, ClientStream, Facts};
use super::http1::{Buffer, ResponseHead};
use super::rewrite::write_response_head;
use super::upstream::Conn;
use super::RouteIo;
use crate::tokens::index::Entry;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How often an open tunnel (or a streaming upload) looks at its token.
pub const CHECK: Duration = Duration::from_millis(50);

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// One side closed (or failed).
    Closed,
    /// Neither side sent anything for the idle timeout.
    Idle,
    /// The token was revoked or expired.
    Revoked,
    /// The gateway is shutting down.
    Draining,
}

/// Bytes relayed in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Relayed {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Whether `entry` stopped being good (revoked, or expired at unix time `now`).
pub fn token_gone(entry: &Entry, now: u64) -> bool {
    entry.is_revoked() || now >= entry.expires_at
}

/// Relays both directions between the client and the upstream. Bytes already read past the heads
/// (`client_buf`, `upstream_buf`) go first. Returns what was relayed and why it ended; both streams are
/// shut down for writing on the way out.
#[allow(clippy::too_many_arguments)]
pub async fn relay<C, U>(
    client: &mut C,
    client_buf: &mut Buffer,
    upstream: &mut U,
    upstream_buf: &mut Buffer,
    idle_timeout: Duration,
    entry: Option<&Entry>,
    draining: impl Fn() -> bool,
) -> (Relayed, End)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut relayed = Relayed::default();
    let early_up = client_buf.len();
    if early_up > 0 {
        if upstream.write_all(client_buf.filled()).await.is_err() {
            return (relayed, End::Closed);
        }
        client_buf.consume(early_up);
        relayed.to_upstream += early_up as u64;
    }
    let early_down = upstream_buf.len();
    if early_down > 0 {
        if client.write_all(upstream_buf.filled()).await.is_err() {
            return (relayed, End::Closed);
        }
        upstream_buf.consume(early_down);
        relayed.to_client += early_down as u64;
    }
    let _ = client.flush().await;
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            r = client.read(&mut up) => match r {
                Ok(n) if n > 0 => {
                    if upstream.write_all(&up[..n]).await.is_err() {
                        break End::Closed;
                    }
                    relayed.to_upstream += n as u64;
                    last = Instant::now();
                }
                _ => break End::Closed,
            },
            r = upstream.read(&mut down) => match r {
                Ok(n) if n > 0 => {
                    if client.write_all(&down[..n]).await.is_err() || client.flush().await.is_err() {
                        break End::Closed;
                    }
                    relayed.to_client += n as u64;
                    last = Instant::now();
                }
                _ => break End::Closed,
            },
            _ = tick.tick() => {
                if entry.is_some_and(|e| token_gone(e, crate::clock::now())) {
                    break End::Revoked;
                }
                if draining() {
                    break End::Draining;
                }
                if last.elapsed() >= idle_timeout {
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
    (relayed, end)
}

impl<S: ClientStream> Client<'_, S> {
    /// The upstream answered 101 to a WebSocket upgrade: the 101 goes to the client, then the tunnel
    /// runs until it ends. The client connection ends with it.
    pub(super) async fn tunnel(
        &mut self,
        mut conn: Conn,
        io: &RouteIo,
        resp: &ResponseHead,
        facts: &mut Facts,
    ) -> bool {
        self.out.clear();
        write_response_head(
            &mut self.out,
            resp,
            conn.buf.filled(),
            (false, true, 1),
            None,
            (self.request_id.as_bytes(), true),
        );
        conn.buf.consume(resp.len);
        facts.status = 101;
        if self.write_out().await.is_err() {
            return false;
        }
        let m = &io.metrics;
        m.tunnels_open.inc();
        let entry = facts.entry.clone();
        let engine = self.engine;
        let (relayed, end) = relay(
            &mut self.io,
            &mut self.buf,
            &mut conn.stream,
            &mut conn.buf,
            io.route.websocket_idle_timeout,
            entry.as_deref(),
            || engine.is_draining(),
        )
        .await;
        m.tunnels_open.dec();
        m.tunnel_bytes_to_upstream.inc_by(relayed.to_upstream);
        m.tunnel_bytes_to_client.inc_by(relayed.to_client);
        facts.bytes_in = relayed.to_upstream;
        facts.bytes_out = relayed.to_client;
        if end == End::Revoked {
            log::info!(
                "route {}: token {} revoked or expired; its WebSocket tunnel closed",
                io.route.name,
                entry.as_ref().map_or(0, |e| e.token_id)
            );
        }
        self.body_pending = false;
        false
    }
}
