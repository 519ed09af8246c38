//! Sending an allowed request to its route's upstream and relaying the answer: the upstream connection
//! (kept from the last exchange, idle in the pool, or new), the request body streamed in bounded buffers
//! (re-framed when chunked, cut at `max_body_bytes`), the response head and body relayed the same way,
//! and the 502/504/400/408/413 answers when either side fails midway.
//!
//! Only a request that is safe to repeat and has no body is ever sent twice, and only when a reused
//! connection turns out closed before a byte of an answer arrived.

use super::body::{BodyError, BodyLimits, BodyState};
use super::connection::{ClientStream, Facts, Req};
use super::failure::UpstreamFailure;
use super::http1::{Buffer, ResponseHead};
use super::pool::InFlight;
use super::relay::Plan;
use super::timed::timed;
use super::upstream::{Conn, Upstream, UpstreamError};
use super::{connection::Client, RouteIo};
use crate::gateway::answer::Answer;
use crate::gateway::{Admitted, Lapse, Refusal};
use crate::telemetry::connections::Closed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A connection to server `up`: an idle one from the server's queue (unless `fresh`), else a new one
/// (`true`: new).
async fn upstream_for(up: &Arc<Upstream>, fresh: bool) -> Result<(Conn, bool), UpstreamFailure> {
    if !fresh {
        if let Some(conn) = up.take_idle() {
            return Ok((conn, false));
        }
    }
    up.connect()
        .await
        .map(|c| (c, true))
        .map_err(|(kind, e)| UpstreamFailure::new(kind, format!("{}: connect: {e}", up.label)))
}

/// A connection to `server`, or — when it refuses, times out or fails its TLS handshake (nothing of the
/// request went out) — to the next server in rotation, taking each that failed out of it. `fresh`: a
/// new connection, never an idle one (the retry after a reused one failed: the others idle to the same
/// server may have been closed with it). Shared by the HTTP/1.1 and the HTTP/2 forward.
pub(super) async fn connect_any(
    io: &RouteIo,
    mut server: usize,
    user: Option<u64>,
    tried: &mut u64,
    fresh: bool,
) -> Result<(usize, Conn), UpstreamFailure> {
    let pool = &io.pool;
    loop {
        *tried |= 1 << server;
        let up = &pool.members[server].upstream;
        match upstream_for(up, fresh).await {
            Ok((conn, fresh)) => {
                if fresh {
                    pool.connected(server);
                }
                return Ok((server, conn));
            }
            Err(f) => {
                pool.failed(server, &f.detail);
                match pool.pick(user, *tried) {
                    Some(next) => {
                        // Counted here; the last failure is counted with the answer.
                        io.metrics.upstream_error(f.kind);
                        server = next;
                    }
                    None => return Err(f),
                }
            }
        }
    }
}

impl<S: ClientStream> Client<'_, S> {
    /// Sends the request (head in `self.out`, body from the client) to server `server` of the route (or
    /// the next in rotation if it refuses) and relays the answer; `None`: no server is in rotation (502
    /// at once). Returns whether the client connection may carry another request.
    pub(super) async fn forward(
        &mut self,
        io: &RouteIo,
        server: Option<usize>,
        user: Option<u64>,
        req: Req,
        facts: &mut Facts,
    ) -> bool {
        let Some(server) = server else {
            let f =
                UpstreamFailure::new(UpstreamError::NoHealthy, "every server is out of rotation");
            return self.upstream_failed(io, facts, f, req).await;
        };
        let mut tried = 0u64;
        let mut at = match connect_any(io, server, user, &mut tried, false).await {
            Ok((server, conn)) => Attempt {
                server,
                conn,
                in_flight: io.pool.begin(server),
                tried,
            },
            Err(f) => return self.upstream_failed(io, facts, f, req).await,
        };
        // Whatever of the body is already here goes out with the head, in one write.
        let mut body = BodyState::new(req.framing);
        if let Err(e) = body.stage(&mut self.buf, &mut self.out, io.route.max_body_bytes) {
            return self.body_failed(io, facts, e, req).await;
        }
        let mut resp = ResponseHead::default();
        let result = if body.done() {
            self.send_once_more_if_safe(io, user, req, &mut at, &mut resp)
                .await
                .map(|()| true)
                .map_err(Abort::Upstream)
        } else {
            // An upload is re-checked while it streams, as a tunnel is.
            self.stream_body(&mut at.conn, &mut body, &mut resp, io, req, facts)
                .await
        };
        let Attempt {
            server,
            mut conn,
            in_flight,
            ..
        } = at;
        facts.bytes_in = body.forwarded;
        self.body_pending = !body.done();
        let body_sent = match result {
            Ok(sent) => sent,
            Err(Abort::Upstream(f)) => return self.upstream_failed(io, facts, f, req).await,
            Err(Abort::Body(e)) => return self.body_failed(io, facts, e, req).await,
            Err(Abort::Lapsed(lapse)) => return self.lapsed_midway(io, facts, req, lapse).await,
        };
        if req.upgrade && resp.status == 101 {
            drop(in_flight);
            if !super::handshake::accepts(&resp, conn.buf.filled(), req.websocket_accept.as_ref()) {
                // Not the handshake the client started: no tunnel, and the upstream connection goes.
                drop(conn);
                let f = UpstreamFailure::new(
                    UpstreamError::Other,
                    "101 without the Sec-WebSocket-Accept of the client's key (or without a valid key)",
                );
                return self.upstream_failed(io, facts, f, req).await;
            }
            return self.tunnel(conn, io, &resp, facts).await;
        }
        conn.reused = true;
        let up = &io.pool.members[server].upstream;
        let plan = Plan::new(
            resp.framing,
            req.client_minor,
            req.client_keep_alive,
            body_sent,
            self.engine.is_draining(),
        );
        let keep = self.relay_response(conn, up, io, &resp, plan, facts).await;
        drop(in_flight);
        keep
    }

    /// Sends a whole request (head and body in `self.out`) on `at` and reads the response head. When
    /// nothing came back — a kept-alive connection the server closed while idle, or a server that went
    /// away mid-request — it goes again on a new connection, only for a request that is safe to repeat
    /// and has no body: after a reused connection once to any server (the same one may only have closed
    /// an idle connection), then to each server not yet tried (a server killed a moment ago may still
    /// complete a connection and reset it). At most one more try than the route has servers.
    async fn send_once_more_if_safe<'r>(
        &mut self,
        io: &'r RouteIo,
        user: Option<u64>,
        req: Req,
        at: &mut Attempt<'r>,
        resp: &mut ResponseHead,
    ) -> Result<(), UpstreamFailure> {
        let framing = (req.is_head, req.upgrade);
        let mut result = send_and_read(&mut at.conn, &self.out, resp, io, framing).await;
        let mut same_server_allowed = at.conn.reused;
        loop {
            let Err(f) = &result else { return result };
            if !(f.nothing_received && req.retryable) {
                return result;
            }
            if same_server_allowed {
                at.tried &= !(1 << at.server);
                same_server_allowed = false;
            }
            let Some(next) = io.pool.pick(user, at.tried) else {
                return result;
            };
            log::debug!(
                "route {}: {} closed the connection before answering; trying again on a new connection",
                io.route.name,
                io.pool.members[at.server].upstream.label
            );
            let (server, conn) = connect_any(io, next, user, &mut at.tried, true).await?;
            (at.server, at.conn) = (server, conn);
            at.in_flight = io.pool.begin(server);
            result = send_and_read(&mut at.conn, &self.out, resp, io, framing).await;
        }
    }

    /// Streams a body that did not fit in the first write, while watching for the response (an upstream
    /// may answer before the body ends, e.g. with 413) and re-checking, every [`super::tunnel::CHECK`]
    /// until the body has gone out, that the request would still be let through (whatever either side
    /// does: a write to an upstream that stopped reading does not hold the check up). `Ok(true)`: the
    /// body went out whole.
    async fn stream_body(
        &mut self,
        conn: &mut Conn,
        body: &mut BodyState,
        resp: &mut ResponseHead,
        io: &RouteIo,
        req: Req,
        facts: &Facts,
    ) -> Result<bool, Abort> {
        let write_timeout = io.timeouts.write;
        let engine = self.engine;
        let admitted = Admitted {
            route: &io.route.name,
            digest: facts.digest,
            tls: self.tls.as_ref(),
            websocket: false,
        };
        let (mut up_read, mut up_write) = tokio::io::split(&mut conn.stream);
        let limits = BodyLimits {
            write_timeout,
            read_timeout: engine.body_timeout,
            deadline: io.route.request_timeout.map(|t| facts.start + t),
            max: io.route.max_body_bytes,
            min_rate: engine.min_body_rate,
        };
        let (head_result, sent) = {
            let (client, buf, out) = (&mut self.io, &mut self.buf, &mut self.out);
            let send = async {
                // The head and the body's first bytes, then the rest as the client sends it.
                match timed(|| write_timeout, up_write.write_all(out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(Abort::Upstream(UpstreamFailure::new(
                            UpstreamError::Reset,
                            format!("write: {e}"),
                        )))
                    }
                    Err(_) => {
                        return Err(Abort::Upstream(UpstreamFailure::new(
                            UpstreamError::WriteTimeout,
                            "write timed out",
                        )))
                    }
                }
                Ok(body.pump(client, buf, out, &mut up_write, &limits).await)
            };
            let head = read_response_head(&mut up_read, &mut conn.buf, resp, req.is_head, false);
            tokio::pin!(send, head);
            // The read timeout starts when the body has gone out: an upload may take longer than it.
            let timer = tokio::time::sleep(Duration::from_secs(86_400 * 365));
            tokio::pin!(timer);
            let mut check = tokio::time::interval(super::tunnel::CHECK);
            let mut sent: Option<Result<u64, BodyError>> = None;
            let head_result = loop {
                tokio::select! {
                    biased;
                    h = &mut head => break h,
                    s = &mut send, if sent.is_none() => {
                        match s? {
                            Ok(n) => sent = Some(Ok(n)),
                            Err(BodyError::Upstream(kind, e)) => {
                                // The upstream stopped reading; it may still have an answer (413, 400...).
                                log::debug!("route {}: upstream stopped taking the body: {e}", io.route.name);
                                sent = Some(Err(BodyError::Upstream(kind, e)));
                            }
                            Err(e) => return Err(Abort::Body(e)),
                        }
                        timer.as_mut().reset(tokio::time::Instant::now() + io.timeouts.read);
                    }
                    _ = &mut timer, if sent.is_some() => {
                        break Err(UpstreamFailure::new(UpstreamError::ReadTimeout, "no response within read_timeout"));
                    }
                    _ = check.tick(), if sent.is_none() => {
                        if let Some(lapse) = super::tunnel::lapsed(engine, &admitted) {
                            return Err(Abort::Lapsed(lapse));
                        }
                    }
                }
            };
            (head_result, sent)
        };
        let body_done = body.done();
        match (head_result, sent) {
            (Ok(()), _) => Ok(body_done),
            (Err(f), Some(Err(BodyError::Upstream(kind, e)))) if f.nothing_received => Err(
                Abort::Upstream(UpstreamFailure::new(kind, format!("write: {e}"))),
            ),
            (Err(f), _) => Err(Abort::Upstream(f)),
        }
    }

    /// Answers a request the upstream could not take or answer: 502/504, unless the client is gone.
    async fn upstream_failed(
        &mut self,
        io: &RouteIo,
        facts: &mut Facts,
        f: UpstreamFailure,
        req: Req,
    ) -> bool {
        self.closing.get_or_insert(Closed::Upstream);
        let answer = f.answer();
        log::warn!(
            "route {}: upstream failed: {} ({})",
            io.route.name,
            f.kind.as_str(),
            f.detail
        );
        // Counted before the answer goes out, so that whoever reads the answer can see it counted.
        io.metrics.upstream_error(f.kind);
        let detail = match answer {
            Answer::GatewayTimeout => "the upstream did not answer in time",
            Answer::UpstreamTls => {
                "the upstream's TLS certificate could not be verified, or its TLS handshake failed"
            }
            Answer::NoHealthyUpstream => "no server of this route is in rotation; retry later",
            _ => "the upstream could not be reached or failed",
        };
        // The body may be half read: keep the connection only for a bodiless request. A failed
        // WebSocket handshake closes it too: the client may already be sending frames.
        let keep = !req.framing.has_body()
            && !req.upgrade
            && req.client_keep_alive
            && !self.engine.is_draining();
        facts.status = answer.status();
        match self
            .answer(&Refusal::new(answer, detail), keep, req.is_head)
            .await
        {
            Ok(sent) => {
                facts.bytes_out = sent;
                keep
            }
            Err(_) => false,
        }
    }

    /// Answers an upload that stopped being allowed while it streamed (its token revoked, rotated out,
    /// expired or without the scope now; its route gone or TLS-only now): the upstream connection is
    /// cut (dropped unfinished, so the upstream never sees a complete request), the client gets the
    /// answer the decision would give now, and the connection closes.
    async fn lapsed_midway(
        &mut self,
        io: &RouteIo,
        facts: &mut Facts,
        req: Req,
        lapse: Lapse,
    ) -> bool {
        self.closing.get_or_insert(Closed::Refused);
        log::info!(
            "route {}: an upload of token {} was cut: {}",
            io.route.name,
            facts.entry.as_ref().map_or(0, |e| e.token_id),
            lapse.describe()
        );
        let r = lapse.upload_refusal().closing();
        facts.status = r.status;
        facts.outcome = r.outcome;
        if let Ok(sent) = self.answer(&r, false, req.is_head).await {
            facts.bytes_out = sent;
        }
        false
    }

    /// Answers a request whose body could not be taken from the client (400, 408, 413); always closes.
    async fn body_failed(
        &mut self,
        io: &RouteIo,
        facts: &mut Facts,
        e: BodyError,
        req: Req,
    ) -> bool {
        let (answer, detail): (Answer, std::borrow::Cow<'static, str>) = match e {
            BodyError::ClientGone => {
                self.closing = Some(Closed::ClientGone);
                return false;
            }
            BodyError::Timeout => (
                Answer::RequestTimeout,
                "the request body was not received in time".into(),
            ),
            BodyError::TooSlow(rate) => (
                Answer::RequestTimeout,
                format!("the request body arrived slower than {rate} bytes a second").into(),
            ),
            BodyError::Malformed => (
                Answer::InvalidRequest,
                "the chunked request body is malformed".into(),
            ),
            BodyError::TooLarge(max) => (
                Answer::PayloadTooLarge,
                format!("the request body is larger than this route's limit of {max} bytes").into(),
            ),
            BodyError::Upstream(kind, e) => {
                let f = UpstreamFailure::new(kind, format!("write: {e}"));
                return self.upstream_failed(io, facts, f, req).await;
            }
        };
        self.closing = Some(if answer == Answer::RequestTimeout {
            Closed::BodyTimeout
        } else {
            Closed::Refused
        });
        let refusal = Refusal::new(answer, detail).closing();
        facts.status = refusal.status;
        if let Ok(sent) = self.answer(&refusal, false, req.is_head).await {
            facts.bytes_out = sent;
        }
        false
    }
}

/// The upstream connection a request is on: its server, the connection, the server's in-flight
/// count, and the servers tried so far (a bit each).
struct Attempt<'a> {
    server: usize,
    conn: Conn,
    in_flight: InFlight<'a>,
    tried: u64,
}

/// Why forwarding stopped before a response head arrived.
enum Abort {
    Upstream(UpstreamFailure),
    Body(BodyError),
    /// The request stopped being allowed while its upload streamed (see [`Gate::recheck`]).
    ///
    /// [`Gate::recheck`]: crate::gateway::Gate::recheck
    Lapsed(Lapse),
}

/// Writes a whole request (already in `out`) and reads the response head into `resp`.
pub(super) async fn send_and_read(
    conn: &mut Conn,
    out: &[u8],
    resp: &mut ResponseHead,
    io: &RouteIo,
    (is_head, upgrade): (bool, bool),
) -> Result<(), UpstreamFailure> {
    match timed(|| io.timeouts.write, conn.stream.write_all(out)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let mut f = UpstreamFailure::new(UpstreamError::Reset, format!("write: {e}"));
            f.nothing_received = true;
            return Err(f);
        }
        Err(_) => {
            return Err(UpstreamFailure::new(
                UpstreamError::WriteTimeout,
                "write timed out",
            ))
        }
    }
    match timed(
        || io.timeouts.read,
        read_response_head(&mut conn.stream, &mut conn.buf, resp, is_head, upgrade),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(UpstreamFailure::new(
            UpstreamError::ReadTimeout,
            "no response within read_timeout",
        )),
    }
}

/// Reads until a final (non-1xx) response head is at the front of `buf`; interim responses are dropped
/// (the gateway answers `Expect` itself). A 101 ends the head only for a WebSocket `upgrade` request;
/// otherwise it is refused: the gateway forwards no other upgrade.
pub(super) async fn read_response_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Buffer,
    resp: &mut ResponseHead,
    is_head: bool,
    upgrade: bool,
) -> Result<(), UpstreamFailure> {
    let mut received = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match resp.parse(buf.filled(), is_head) {
                Ok(true) if resp.status == 101 && upgrade => return Ok(()),
                Ok(true) if resp.status == 101 => {
                    return Err(UpstreamFailure::new(
                        UpstreamError::Other,
                        "101 without an upgrade request",
                    ))
                }
                Ok(true) if resp.status < 200 => {
                    buf.consume(resp.len);
                    continue;
                }
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    return Err(UpstreamFailure::new(
                        UpstreamError::Other,
                        format!("bad response head: {e:?}"),
                    ))
                }
            }
        }
        match r.read(buf.spare()).await {
            Ok(0) => {
                let mut f = UpstreamFailure::new(
                    UpstreamError::Reset,
                    "closed before a complete response head",
                );
                f.nothing_received = !received;
                return Err(f);
            }
            Ok(n) => {
                buf.filled_by(n);
                received = true;
            }
            Err(e) => {
                let mut f = UpstreamFailure::new(UpstreamError::Reset, format!("read: {e}"));
                f.nothing_received = !received;
                return Err(f);
            }
        }
    }
}
