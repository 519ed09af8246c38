//! An allowed HTTP/2 stream forwarded to its route's upstream over HTTP/1.1, on the route's shared
//! pool (an idle connection, or a new one; the next server in rotation when one refuses).
//!
//! The request body goes up as it arrives, in DATA-frame pieces: its flow-control capacity is
//! released only once a piece has been written upstream, so a slow upstream slows the client (the
//! stream's window, 256 KiB, and the connection's, 1 MiB, bound what a connection holds). Without a
//! `content-length` it goes chunked. While it streams, the request is re-checked every
//! [`CHECK`](crate::transport::tunnel::CHECK) ([`Gate::recheck`](crate::gateway::Gate::recheck)): a
//! token revoked, rotated out or expired meanwhile cuts the upload — the upstream connection is
//! dropped unfinished (the upstream never sees a complete request), the client gets the answer the
//! decision would give now and the stream is reset. `body_timeout`, `min_body_rate`, the route's
//! `max_body_bytes` and `request_timeout` hold as on HTTP/1.1.
//!
//! The response goes back as DATA frames no larger than the client's window allows at the time (read
//! from the upstream only as the client takes them: bounded memory), decoded from chunked. A client
//! that resets the stream ends it (the upstream connection is dropped, and the reset is counted
//! against the connection, see [`super::MAX_CLIENT_RESETS`]).

use super::answer::{push, refuse, Answering};
use super::Peer;
use crate::config::BODY_RATE_GRACE;
use crate::gateway::answer::Answer;
use crate::gateway::{Admitted, Lapse, Refusal};
use crate::transport::connection::Facts;
use crate::transport::failure::UpstreamFailure;
use crate::transport::forward::connect_any;
use crate::transport::forward::{read_response_head, send_and_read};
use crate::transport::http1::{
    encode_chunk, Chunk, ChunkedDecoder, Framing, ResponseHead, LAST_CHUNK,
};
use crate::transport::request_id::RequestId;
use crate::transport::tunnel::{lapsed, CHECK};
use crate::transport::upstream::{Conn, UpstreamError};
use crate::transport::Engine;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// A stream the decision let through, on its way to the upstream.
pub(super) struct Forwarding<'a> {
    pub(super) engine: &'a Arc<Engine>,
    pub(super) peer: &'a Arc<Peer>,
    pub(super) io: &'a crate::transport::RouteIo,
    /// The server chosen (`None`: none is in rotation).
    pub(super) server: Option<usize>,
    pub(super) user: Option<u64>,
    /// The rewritten HTTP/1.1 head.
    pub(super) head: Vec<u8>,
    pub(super) framing: Framing,
    pub(super) is_head: bool,
    /// Safe to send twice, without a body.
    pub(super) retryable: bool,
    pub(super) request_id: &'a RequestId,
}

/// Why an upload stopped before the response head.
enum Abort {
    Upstream(UpstreamFailure),
    /// The client's body failed the limits: the answer and its detail.
    Body(Answer, String),
    /// The request stopped being allowed while it streamed.
    Lapsed(Lapse),
    /// The client reset the stream (or broke its framing: h2 reset it).
    ClientGone,
}

impl Forwarding<'_> {
    /// Sends the request and relays the answer on `respond`.
    pub(super) async fn run(
        self,
        respond: &mut SendResponse<Bytes>,
        body: Option<RecvStream>,
        facts: &mut Facts,
    ) {
        let io = self.io;
        let Some(first) = self.server else {
            let f =
                UpstreamFailure::new(UpstreamError::NoHealthy, "every server is out of rotation");
            return self.failed(respond, facts, f).await;
        };
        let mut tried = 0u64;
        let (mut server, mut conn) =
            match connect_any(io, first, self.user, &mut tried, false).await {
                Ok(c) => c,
                Err(f) => return self.failed(respond, facts, f).await,
            };
        let mut in_flight = io.pool.begin(server);
        let mut resp = ResponseHead::default();
        let body_sent = match body {
            None => {
                let sent = tokio::select! {
                    r = send_and_read(&mut conn, &self.head, &mut resp, io, (self.is_head, false)) => Some(r),
                    _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => None,
                };
                let mut result = match sent {
                    Some(r) => r,
                    None => {
                        self.peer.client_reset();
                        return;
                    }
                };
                // Nothing came back: again on a new connection, as the HTTP/1.1 forward does (after a
                // reused connection once to any server, then to each not yet tried).
                let mut same_server_allowed = conn.reused;
                while let Err(f) = &result {
                    if !(f.nothing_received && self.retryable) {
                        break;
                    }
                    if same_server_allowed {
                        tried &= !(1 << server);
                        same_server_allowed = false;
                    }
                    let Some(next) = io.pool.pick(self.user, tried) else {
                        break;
                    };
                    match connect_any(io, next, self.user, &mut tried, true).await {
                        Ok((s, c)) => {
                            (server, conn) = (s, c);
                            in_flight = io.pool.begin(server);
                            result = send_and_read(
                                &mut conn,
                                &self.head,
                                &mut resp,
                                io,
                                (self.is_head, false),
                            )
                            .await;
                        }
                        Err(f) => {
                            result = Err(f);
                            break;
                        }
                    }
                }
                if let Err(f) = result {
                    return self.failed(respond, facts, f).await;
                }
                true
            }
            Some(body) => match self.upload(&mut conn, body, &mut resp, facts).await {
                Ok(done) => done,
                Err(Abort::Upstream(f)) => return self.failed(respond, facts, f).await,
                Err(Abort::Body(answer, detail)) => {
                    let r = Refusal::new(answer, detail);
                    return refuse(respond, facts, &r, self.answering()).await;
                }
                Err(Abort::Lapsed(lapse)) => return self.lapsed(respond, facts, lapse).await,
                Err(Abort::ClientGone) => return,
            },
        };
        conn.reused = true;
        let up = &io.pool.members[server].upstream;
        if let Some(conn) = self.relay(respond, conn, &resp, facts).await {
            if body_sent && resp.keep_alive {
                up.put_idle(conn);
            }
        }
        drop(in_flight);
    }

    /// Streams the request body upstream while watching for an early answer and re-checking the
    /// request every [`CHECK`]. `Ok(true)`: the body went out whole.
    async fn upload(
        &self,
        conn: &mut Conn,
        mut body: RecvStream,
        resp: &mut ResponseHead,
        facts: &mut Facts,
    ) -> Result<bool, Abort> {
        let (engine, io) = (self.engine, self.io);
        let admitted = Admitted {
            route: &io.route.name,
            digest: facts.digest,
            tls: self.peer.tls.as_ref(),
            websocket: false,
        };
        let chunked = self.framing == Framing::Chunked;
        let max = io.route.max_body_bytes;
        let deadline = io.route.request_timeout.map(|t| facts.start + t);
        let write_timeout = io.timeouts.write;
        let mut forwarded = 0u64;
        let (mut up_read, mut up_write) = tokio::io::split(&mut conn.stream);
        let (head_result, sent) = {
            let forwarded = &mut forwarded;
            let head = &self.head;
            let send = async {
                write(&mut up_write, head, write_timeout).await?;
                let started = Instant::now();
                let mut frame = Vec::new();
                loop {
                    let mut wait = engine.body_timeout;
                    if let Some(d) = deadline {
                        wait = wait.min(d.saturating_duration_since(Instant::now()));
                    }
                    let data = match tokio::time::timeout(wait, body.data()).await {
                        Err(_) => {
                            return Err(Abort::Body(
                                Answer::RequestTimeout,
                                "the request body was not received in time".into(),
                            ))
                        }
                        Ok(None) => break,
                        Ok(Some(Err(e))) => {
                            log::debug!("HTTP/2 request body ended: {e}");
                            return Err(Abort::ClientGone);
                        }
                        Ok(Some(Ok(d))) => d,
                    };
                    let n = data.len();
                    if max.is_some_and(|m| *forwarded + n as u64 > m) {
                        return Err(Abort::Body(
                            Answer::PayloadTooLarge,
                            format!(
                                "the request body is larger than this route's limit of {} bytes",
                                max.unwrap_or(0)
                            ),
                        ));
                    }
                    if chunked {
                        frame.clear();
                        encode_chunk(&mut frame, &data);
                        write(&mut up_write, &frame, write_timeout).await?;
                    } else {
                        write(&mut up_write, &data, write_timeout).await?;
                    }
                    // Written upstream: only now may the client send as much again.
                    let _ = body.flow_control().release_capacity(n);
                    *forwarded += n as u64;
                    let elapsed = started.elapsed();
                    let min = engine.min_body_rate;
                    if min > 0 && elapsed > BODY_RATE_GRACE {
                        let due = min.saturating_mul(elapsed.as_secs());
                        if *forwarded < due.saturating_sub(min * BODY_RATE_GRACE.as_secs()) {
                            return Err(Abort::Body(
                                Answer::RequestTimeout,
                                format!(
                                    "the request body arrived slower than {min} bytes a second"
                                ),
                            ));
                        }
                    }
                }
                if chunked {
                    write(&mut up_write, LAST_CHUNK, write_timeout).await?;
                }
                let _ = up_write.flush().await;
                Ok(())
            };
            let head = read_response_head(&mut up_read, &mut conn.buf, resp, self.is_head, false);
            tokio::pin!(send, head);
            // The read timeout starts when the body has gone out: an upload may take longer than it.
            let timer = tokio::time::sleep(Duration::from_secs(86_400 * 365));
            tokio::pin!(timer);
            let mut check = tokio::time::interval(CHECK);
            let mut sent: Option<Result<(), Abort>> = None;
            let head_result = loop {
                tokio::select! {
                    biased;
                    h = &mut head => break h,
                    s = &mut send, if sent.is_none() => {
                        match s {
                            Ok(()) => sent = Some(Ok(())),
                            // The upstream stopped reading; it may still have an answer (413...).
                            Err(Abort::Upstream(f)) => sent = Some(Err(Abort::Upstream(f))),
                            Err(e) => return Err(e),
                        }
                        timer.as_mut().reset(Instant::now() + io.timeouts.read);
                    }
                    _ = &mut timer, if sent.is_some() => {
                        break Err(UpstreamFailure::new(UpstreamError::ReadTimeout, "no response within read_timeout"));
                    }
                    _ = check.tick(), if sent.is_none() => {
                        if let Some(lapse) = lapsed(engine, &admitted) {
                            return Err(Abort::Lapsed(lapse));
                        }
                    }
                }
            };
            (head_result, sent)
        };
        facts.bytes_in = forwarded;
        match (head_result, sent) {
            (Ok(()), Some(Ok(()))) => Ok(true),
            (Ok(()), _) => Ok(false),
            (Err(f), Some(Err(Abort::Upstream(w)))) if f.nothing_received => {
                Err(Abort::Upstream(w))
            }
            (Err(f), _) => Err(Abort::Upstream(f)),
        }
    }

    /// Sends the response head and relays its body. Returns the upstream connection when the body
    /// was relayed whole and nothing is left on it (it may serve again).
    async fn relay(
        &self,
        respond: &mut SendResponse<Bytes>,
        mut conn: Conn,
        resp: &ResponseHead,
        facts: &mut Facts,
    ) -> Option<Conn> {
        let io = self.io;
        let mut scratch = Vec::with_capacity(1024);
        let head = super::head::response(
            resp,
            conn.buf.filled(),
            facts.rate_limit.as_ref(),
            self.request_id.as_bytes(),
            &mut scratch,
        );
        let Some(head) = head else {
            let f =
                UpstreamFailure::new(UpstreamError::Other, "a response head HTTP/2 cannot carry");
            self.failed(respond, facts, f).await;
            return None;
        };
        facts.status = resp.status;
        conn.buf.consume(resp.len);
        let framing = resp.framing;
        let bodiless = matches!(framing, Framing::None | Framing::Length(0));
        let mut send = match respond.send_response(head, bodiless) {
            Ok(s) => s,
            Err(_) => {
                self.peer.client_reset();
                return None;
            }
        };
        if bodiless {
            return (framing != Framing::Close && conn.buf.is_empty()).then_some(conn);
        }
        let mut remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut decoder = ChunkedDecoder::default();
        loop {
            if conn.buf.is_empty() {
                let read =
                    tokio::time::timeout(io.timeouts.read, conn.stream.read(conn.buf.spare()))
                        .await;
                match read {
                    Ok(Ok(0)) if framing == Framing::Close => {
                        let _ = send.send_data(Bytes::new(), true);
                        return None;
                    }
                    Ok(Ok(n)) if n > 0 => conn.buf.filled_by(n),
                    _ => {
                        io.metrics.upstream_error(UpstreamError::Reset);
                        send.send_reset(Reason::INTERNAL_ERROR);
                        return None;
                    }
                }
            }
            let filled = conn.buf.filled();
            let (consumed, data, done) = match framing {
                Framing::Length(_) => {
                    let n = (filled.len() as u64).min(remaining) as usize;
                    remaining -= n as u64;
                    (n, 0..n, remaining == 0)
                }
                Framing::Chunked => match decoder.decode(filled) {
                    Ok((c, Chunk::Data(r))) => (c, r, false),
                    Ok((c, Chunk::More)) => (c, 0..0, false),
                    Ok((c, Chunk::End)) => (c, 0..0, true),
                    Err(_) => {
                        io.metrics.upstream_error(UpstreamError::Other);
                        send.send_reset(Reason::INTERNAL_ERROR);
                        return None;
                    }
                },
                _ => (filled.len(), 0..filled.len(), false),
            };
            let piece = Bytes::copy_from_slice(&filled[data]);
            conn.buf.consume(consumed);
            if !piece.is_empty() {
                let n = piece.len() as u64;
                if push(&mut send, piece, self.engine.send_timeout)
                    .await
                    .is_err()
                {
                    self.peer.client_reset();
                    return None;
                }
                facts.bytes_out += n;
            }
            if done {
                let _ = send.send_data(Bytes::new(), true);
                return conn.buf.is_empty().then_some(conn);
            }
        }
    }

    /// Answers a request the upstream could not take or answer: 502/504.
    async fn failed(
        &self,
        respond: &mut SendResponse<Bytes>,
        facts: &mut Facts,
        f: UpstreamFailure,
    ) {
        let io = self.io;
        log::warn!(
            "route {}: upstream failed: {} ({})",
            io.route.name,
            f.kind.as_str(),
            f.detail
        );
        io.metrics.upstream_error(f.kind);
        let answer = f.answer();
        let detail = match answer {
            Answer::GatewayTimeout => "the upstream did not answer in time",
            Answer::UpstreamTls => {
                "the upstream's TLS certificate could not be verified, or its TLS handshake failed"
            }
            Answer::NoHealthyUpstream => "no server of this route is in rotation; retry later",
            _ => "the upstream could not be reached or failed",
        };
        let r = Refusal::new(answer, detail);
        refuse(respond, facts, &r, self.answering()).await;
    }

    fn answering(&self) -> Answering<'_> {
        Answering {
            request_id: self.request_id,
            is_head: self.is_head,
            send_timeout: self.engine.send_timeout,
        }
    }

    /// Answers an upload that stopped being allowed while it streamed; the stream is then reset.
    async fn lapsed(&self, respond: &mut SendResponse<Bytes>, facts: &mut Facts, lapse: Lapse) {
        log::info!(
            "route {}: an HTTP/2 upload of token {} was cut: {}",
            self.io.route.name,
            facts.entry.as_ref().map_or(0, |e| e.token_id),
            lapse.describe()
        );
        let r = lapse.upload_refusal();
        refuse(respond, facts, &r, self.answering()).await;
    }
}

/// Writes `bytes` upstream within `timeout`.
async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), Abort> {
    match tokio::time::timeout(timeout, w.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Abort::Upstream(UpstreamFailure::new(
            UpstreamError::Reset,
            format!("write: {e}"),
        ))),
        Err(_) => Err(Abort::Upstream(UpstreamFailure::new(
            UpstreamError::WriteTimeout,
            "write timed out",
        ))),
    }
}
