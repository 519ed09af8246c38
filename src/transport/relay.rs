//! Relaying one upstream response to the client, with its state explicit (hyper's
//! `State { reading, writing, keep_alive }` is the model) instead of flags threaded through four loops:
//!
//! - [`Plan`]: decided once, before the head goes out — how the body is framed for the client
//!   ([`ClientFraming`]) and whether the request body went out whole;
//! - [`Ended`]: how the body's relay ended — whole, the client gone, or the upstream failing midway;
//! - from the two: whether the client connection may carry another request ([`Ended::client_keeps`])
//!   and whether the upstream connection goes back to its server's idle queue ([`upstream_reusable`]).
//!
//! One function per framing moves the bytes (`Content-Length`, chunked, close-delimited); none of them
//! decides policy.

use super::connection::{ClientStream, Facts};
use super::failure::UpstreamFailure;
use super::http1::{self, Chunk, ChunkedDecoder, Framing, ResponseHead};
use super::rewrite::{write_response_head, ClientFraming};
use super::timed::timed;
use super::upstream::{Conn, Upstream, UpstreamError};
use super::{connection::Client, RouteIo};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// What is decided about a response before its head goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub client: ClientFraming,
    /// The request body went out whole (if not, neither connection can be reused).
    pub body_sent: bool,
}

impl Plan {
    /// The plan for a response framed `framing` to a client that spoke HTTP/1.`minor` and asked for
    /// keep-alive (`keep_alive`); `draining`: the server is shutting down.
    pub fn new(
        framing: Framing,
        minor: u8,
        keep_alive: bool,
        body_sent: bool,
        draining: bool,
    ) -> Plan {
        let chunked = framing == Framing::Chunked && minor >= 1;
        let delimited = matches!(
            framing,
            Framing::None | Framing::Length(_) | Framing::Chunked
        );
        Plan {
            client: ClientFraming {
                chunked,
                // A chunked body decoded for an HTTP/1.0 client is delimited by the close.
                keep_alive: keep_alive
                    && body_sent
                    && delimited
                    && (framing != Framing::Chunked || chunked)
                    && !draining,
                minor,
            },
            body_sent,
        }
    }
}

/// How the relay of a response body ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// The whole body reached the client.
    Whole,
    /// The client stopped taking it (a write failed or timed out).
    ClientGone,
    /// The upstream failed midway: cut, stalled past `read_timeout`, or broken chunked framing.
    Upstream(UpstreamFailure),
}

impl Ended {
    /// Whether the client connection may carry another request.
    pub(super) fn client_keeps(&self, plan: &Plan) -> bool {
        matches!(self, Ended::Whole) && plan.client.keep_alive
    }
}

/// Whether the upstream connection may serve another request: the relay ended whole, the request body
/// went out whole, the upstream keeps the connection alive with a delimited body, and sent nothing beyond
/// what it framed (`leftover`: bytes still in the connection's buffer).
pub(super) fn upstream_reusable(
    ended: &Ended,
    plan: &Plan,
    resp: &ResponseHead,
    leftover: usize,
) -> bool {
    matches!(ended, Ended::Whole)
        && plan.body_sent
        && resp.keep_alive
        && resp.framing != Framing::Close
        && leftover == 0
}

impl<S: ClientStream> Client<'_, S> {
    /// Relays the response whose head is in `resp` (bytes at the front of `conn.buf`) and its body as
    /// `plan` says; the upstream connection goes back to `up`'s idle queue when it can serve again.
    /// Returns whether the client connection may carry another request.
    pub(super) async fn relay_response(
        &mut self,
        mut conn: Conn,
        up: &Arc<Upstream>,
        io: &RouteIo,
        resp: &ResponseHead,
        plan: Plan,
        facts: &mut Facts,
    ) -> bool {
        self.out.clear();
        write_response_head(
            &mut self.out,
            resp,
            conn.buf.filled(),
            plan.client,
            facts.rate_limit.as_ref(),
            (self.request_id.as_bytes(), false),
        );
        conn.buf.consume(resp.len);
        facts.status = resp.status;
        let read_timeout = io.timeouts.read;
        let mut sent = 0u64;
        let ended = match resp.framing {
            Framing::None => match self.write_out().await {
                Ok(()) => Ended::Whole,
                Err(_) => Ended::ClientGone,
            },
            Framing::Length(n) => {
                self.relay_length(&mut conn, n, read_timeout, &mut sent)
                    .await
            }
            Framing::Chunked => {
                self.relay_chunked(&mut conn, plan.client.chunked, read_timeout, &mut sent)
                    .await
            }
            Framing::Close => {
                self.relay_until_close(&mut conn, read_timeout, &mut sent)
                    .await
            }
        };
        facts.bytes_out = sent;
        if let Ended::Upstream(f) = &ended {
            log::warn!(
                "route {}: upstream failed during the response body: {} ({})",
                io.route.name,
                f.kind.as_str(),
                f.detail
            );
            io.metrics.upstream_error(f.kind);
        }
        let keep = ended.client_keeps(&plan);
        if upstream_reusable(&ended, &plan, resp, conn.buf.len()) {
            // Back to the server's queue at once, for whichever client connection asks next: a client
            // between requests holds no upstream connection (see `upstream`).
            up.put_idle(conn);
        }
        keep
    }

    /// A `Content-Length` body of `n` bytes (the head is in `self.out` and goes with its first piece).
    async fn relay_length(
        &mut self,
        conn: &mut Conn,
        n: u64,
        read_timeout: Duration,
        sent: &mut u64,
    ) -> Ended {
        let mut left = n;
        loop {
            let take = (conn.buf.len() as u64).min(left) as usize;
            self.out.extend_from_slice(&conn.buf.filled()[..take]);
            conn.buf.consume(take);
            left -= take as u64;
            *sent += take as u64;
            if self.write_out().await.is_err() {
                return Ended::ClientGone;
            }
            self.out.clear();
            if left == 0 {
                return Ended::Whole;
            }
            if let Err(f) = fill(conn, read_timeout).await {
                return Ended::Upstream(f);
            }
        }
    }

    /// A chunked body, decoded strictly and re-encoded (`chunked_out`) or passed on as plain data.
    async fn relay_chunked(
        &mut self,
        conn: &mut Conn,
        chunked_out: bool,
        read_timeout: Duration,
        sent: &mut u64,
    ) -> Ended {
        let mut dec = ChunkedDecoder::default();
        loop {
            let mut end = false;
            while !conn.buf.is_empty() && !end {
                let (n, c) = match dec.decode(conn.buf.filled()) {
                    Ok(step) => step,
                    Err(e) => {
                        return Ended::Upstream(UpstreamFailure::new(
                            UpstreamError::Other,
                            format!("chunked body: {e:?}"),
                        ))
                    }
                };
                match &c {
                    Chunk::Data(r) => {
                        let data = &conn.buf.filled()[r.clone()];
                        *sent += data.len() as u64;
                        if chunked_out {
                            http1::encode_chunk(&mut self.out, data);
                        } else {
                            self.out.extend_from_slice(data);
                        }
                    }
                    Chunk::End => end = true,
                    Chunk::More => {}
                }
                conn.buf.consume(n);
            }
            if end && chunked_out {
                self.out.extend_from_slice(http1::LAST_CHUNK);
            }
            if !self.out.is_empty() && self.write_out().await.is_err() {
                return Ended::ClientGone;
            }
            self.out.clear();
            if end {
                return Ended::Whole;
            }
            if let Err(f) = fill(conn, read_timeout).await {
                return Ended::Upstream(f);
            }
        }
    }

    /// A body delimited by the upstream closing the connection.
    async fn relay_until_close(
        &mut self,
        conn: &mut Conn,
        read_timeout: Duration,
        sent: &mut u64,
    ) -> Ended {
        loop {
            self.out.extend_from_slice(conn.buf.filled());
            let had = conn.buf.len();
            conn.buf.consume(had);
            *sent += had as u64;
            if self.write_out().await.is_err() {
                return Ended::ClientGone;
            }
            self.out.clear();
            match fill(conn, read_timeout).await {
                Ok(()) => {}
                Err(f) if f.nothing_received => return Ended::Whole, // the end of the body
                Err(f) => return Ended::Upstream(f),
            }
        }
    }
}

/// Reads more of a response body into the connection's buffer. A clean close is reported with
/// `nothing_received` set (the end of a close-delimited body).
async fn fill(conn: &mut Conn, read_timeout: Duration) -> Result<(), UpstreamFailure> {
    conn.buf.reserve_body();
    match timed(|| read_timeout, conn.stream.read(conn.buf.spare())).await {
        Ok(Ok(0)) => {
            let mut f = UpstreamFailure::new(
                UpstreamError::Reset,
                "closed before the end of the response body",
            );
            f.nothing_received = true;
            Err(f)
        }
        Ok(Ok(n)) => {
            conn.buf.filled_by(n);
            Ok(())
        }
        Ok(Err(e)) => Err(UpstreamFailure::new(
            UpstreamError::Reset,
            format!("read: {e}"),
        )),
        Err(_) => Err(UpstreamFailure::new(
            UpstreamError::ReadTimeout,
            "response body stalled past read_timeout",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_connection_is_kept_only_for_a_delimited_whole_exchange() {
        let keep = |framing, minor, body_sent, draining| {
            Plan::new(framing, minor, true, body_sent, draining)
                .client
                .keep_alive
        };
        assert!(keep(Framing::Length(5), 1, true, false));
        assert!(keep(Framing::None, 0, true, false));
        assert!(keep(Framing::Chunked, 1, true, false));
        assert!(
            !keep(Framing::Chunked, 0, true, false),
            "decoded for HTTP/1.0: the close ends the body"
        );
        assert!(!keep(Framing::Close, 1, true, false));
        assert!(
            !keep(Framing::Length(5), 1, false, false),
            "body not sent whole"
        );
        assert!(!keep(Framing::Length(5), 1, true, true), "draining");
        assert!(
            !Plan::new(Framing::Length(5), 1, false, true, false)
                .client
                .keep_alive
        );
        let p = Plan::new(Framing::Chunked, 1, true, true, false);
        assert!(p.client.chunked);
        assert!(
            !Plan::new(Framing::Chunked, 0, true, true, false)
                .client
                .chunked
        );
        assert!(Ended::Whole.client_keeps(&p));
        assert!(!Ended::ClientGone.client_keeps(&p));
    }

    #[test]
    fn the_upstream_connection_is_reused_only_after_a_clean_delimited_exchange() {
        let plan = Plan::new(Framing::Length(2), 1, true, true, false);
        let mut resp = ResponseHead {
            keep_alive: true,
            framing: Framing::Length(2),
            ..Default::default()
        };
        assert!(upstream_reusable(&Ended::Whole, &plan, &resp, 0));
        assert!(
            !upstream_reusable(&Ended::Whole, &plan, &resp, 3),
            "bytes beyond the framed body"
        );
        assert!(!upstream_reusable(&Ended::ClientGone, &plan, &resp, 0));
        let cut = Ended::Upstream(UpstreamFailure::new(UpstreamError::Reset, "cut"));
        assert!(!upstream_reusable(&cut, &plan, &resp, 0));
        let unsent = Plan::new(Framing::Length(2), 1, true, false, false);
        assert!(!upstream_reusable(&Ended::Whole, &unsent, &resp, 0));
        resp.keep_alive = false;
        assert!(!upstream_reusable(&Ended::Whole, &plan, &resp, 0));
        resp.keep_alive = true;
        resp.framing = Framing::Close;
        assert!(!upstream_reusable(&Ended::Whole, &plan, &resp, 0));
    }
}
