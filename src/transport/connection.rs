//! One client connection: a loop of HTTP/1.1 exchanges. Per exchange, in order: a head within
//! `header_timeout` (431/400/501 for bad heads, see [`super::http1`]); `max_in_flight` (503); the
//! decision ([`Gate::decide`](crate::gateway::Gate::decide)); then the gateway's own answer or
//! [`super::forward`]. After each exchange: metrics and the access log.
//!
//! The loop is generic over the client stream, so a TLS listener hands it the decrypted stream and gets
//! exactly the same behaviour. A refused request whose body has not fully arrived closes the connection
//! (after a bounded lingering close) instead of reading the body.

use super::http1::{Buffer, Framing, HeadError, RequestHead};
use super::request_id::{self, RequestId};
use super::rewrite::{write_error_head, write_upstream_head, HeadExtras};
use super::timed::timed;
use super::{take_permit, Engine, RouteIo, Table};
use crate::clock;
use crate::gateway::answer::Answer;
use crate::gateway::auth::Outcome;
use crate::gateway::limits::LimitKind;
use crate::gateway::paths::origin_form;
use crate::gateway::{Refusal, Request, TlsPeer, Verdict};
use crate::telemetry::access_log::{self, Record};
use crate::telemetry::connections::{Closed, Refused};
use crate::tokens::format::Digest;
use crate::tokens::index::Entry;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
// The runtime's clock, so that a paused clock (the in-process tests) reaches every timeout.
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Longest single wait for the next request: an idle connection notices a shutdown within this.
const IDLE_SLICE: Duration = Duration::from_secs(1);

/// The first read of an idle connection, whose buffer was given back, goes to the stack.
const FIRST_READ: usize = 1024;

/// Capacity of the scratch buffer for outgoing heads; given back to this size between requests when a
/// large head or body piece grew it.
const OUT_BYTES: usize = 1024;

/// The stream of a client connection: plain TCP or decrypted TLS.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for T {}

/// What the forwarded request looks like, kept after its head has left the buffer.
#[derive(Clone, Copy)]
pub(super) struct Req {
    pub(super) framing: Framing,
    pub(super) is_head: bool,
    /// Safe to send twice (RFC 9110 section 9.2.2) and without a body: may be retried on a fresh
    /// connection when a reused one turns out closed.
    pub(super) retryable: bool,
    pub(super) client_minor: u8,
    pub(super) client_keep_alive: bool,
    /// A WebSocket upgrade on a `websocket = true` route: a 101 opens a tunnel, if it carries this
    /// `Sec-WebSocket-Accept` (`None`: the client's key was missing or malformed, and no 101 does).
    pub(super) upgrade: bool,
    pub(super) websocket_accept: Option<[u8; super::handshake::ACCEPT_LEN]>,
}

/// What one exchange produced, for metrics and the access log.
pub(super) struct Facts {
    pub(super) start: Instant,
    /// The route's index in the table, when one matched.
    pub(super) route: Option<usize>,
    pub(super) entry: Option<Arc<Entry>>,
    /// The digest of the credential the request was let through with: open streams are re-checked
    /// by it.
    pub(super) digest: Option<Digest>,
    pub(super) outcome: Outcome,
    pub(super) status: u16,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    /// The method, only when the access log is on (the path is kept by the caller: see [`Asker`]).
    pub(super) log: Option<http::Method>,
    /// The `RateLimit` field for the response (a route with `rate_limit_headers`).
    pub(super) rate_limit: Option<crate::gateway::limits::RateLimitField>,
    /// The limit that refused the request (429), for metrics.
    pub(super) limit: Option<LimitKind>,
}

impl Facts {
    /// The facts of an exchange starting now.
    pub(super) fn new() -> Facts {
        Facts {
            start: Instant::now(),
            route: None,
            entry: None,
            digest: None,
            outcome: Outcome::None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            log: None,
            rate_limit: None,
            limit: None,
        }
    }
}

/// Which protocol an exchange came in on (the `protocol` label of `tokengate_protocol_requests_total`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    Http1 = 0,
    Http2 = 1,
}

/// Who asked, as the metrics and the access log name it.
pub(super) struct Asker<'a> {
    /// The peer's address as text (`None`: not an IP peer).
    pub(super) client: Option<&'a str>,
    /// The request's path for the access log, when [`Facts::log`] is set (bytes as they came).
    pub(super) path: &'a [u8],
    pub(super) request_id: &'a str,
    pub(super) tls_marker: Option<&'static str>,
    pub(super) protocol: Protocol,
}

/// After an exchange (HTTP/1.1 or one HTTP/2 stream): its metrics and its access log line.
pub(super) fn record(engine: &Engine, table: &Table, facts: &mut Facts, asker: Asker<'_>) {
    let io = facts.route.map(|i| &table.io[i]);
    // One clock read for the histogram, the log's duration and its time of day.
    let done = Instant::now();
    let took = done.saturating_duration_since(facts.start);
    // The verify listener's answers are counted by door and outcome (super::verify), not as
    // requests of the routes they decided on.
    if engine.verify.is_none() {
        engine.protocol_requests[asker.protocol as usize].inc();
        let m = io.map(|io| &io.metrics).unwrap_or(&engine.unrouted);
        m.count(facts.status, facts.outcome);
        if let Some(kind) = facts.limit {
            m.limited(kind);
        }
        m.duration.observe(took.as_secs_f64());
        m.bytes_in.inc_by(facts.bytes_in);
        m.bytes_out.inc_by(facts.bytes_out);
    }
    if let Some(method) = facts.log.take() {
        engine.access_log.log(&Record {
            at: access_log::wall_clock(done),
            client: asker.client,
            method: method.as_str(),
            path: asker.path,
            route: io.map(|io| &*io.route.name),
            status: facts.status,
            auth: facts.outcome.as_str(),
            duration: took,
            bytes_in: facts.bytes_in,
            bytes_out: facts.bytes_out,
            token_id: facts.entry.as_ref().map(|e| e.token_id),
            user: facts.entry.as_ref().map(|e| e.user_bytes()),
            request_id: asker.request_id,
            tls: asker.tls_marker,
        });
    }
}

/// One client connection.
pub struct Client<'a, S> {
    pub(super) engine: &'a Engine,
    pub(super) io: S,
    pub(super) buf: Buffer,
    pub(super) head: RequestHead,
    /// Scratch for heads and re-framed body data on their way out.
    pub(super) out: Vec<u8>,
    pub(super) peer: Option<IpAddr>,
    /// The peer address as text, formatted once per connection for `X-Forwarded-For`.
    peer_text: String,
    /// What the TLS handshake established (`None` on the plain listener).
    pub(super) tls: Option<TlsPeer>,
    /// The TLS version and whether the session was resumed, as the access log names it (`1.3r`).
    tls_marker: Option<&'static str>,
    served: u64,
    /// The current request's body has not been read to its end (a close then lingers, see
    /// [`Self::linger`]).
    pub(super) body_pending: bool,
    /// The current request's id (`x-request-id`).
    pub(super) request_id: RequestId,
    /// When the connection was accepted: the first request's `header_timeout` counts from here (for
    /// TLS, the handshake included).
    accepted: Instant,
    /// Why the connection is closing, when an exchange knows better than "done" (metrics).
    pub(super) closing: Option<Closed>,
    /// The current request's path for the access log (never the query), reused from request to
    /// request: the head it comes from is gone by the time the line is written.
    log_path: Vec<u8>,
}

impl<'a, S: ClientStream> Client<'a, S> {
    pub fn new(
        engine: &'a Engine,
        io: S,
        peer: Option<IpAddr>,
        tls: Option<TlsPeer>,
    ) -> Client<'a, S> {
        Client {
            engine,
            io,
            buf: Buffer::with_limit(engine.max_head_bytes),
            head: RequestHead::default(),
            out: Vec::new(),
            peer,
            peer_text: peer.map(|ip| ip.to_string()).unwrap_or_default(),
            tls,
            tls_marker: None,
            served: 0,
            body_pending: false,
            request_id: RequestId::fresh(),
            accepted: Instant::now(),
            closing: None,
            log_path: Vec::new(),
        }
    }

    /// The connection was accepted at `at` (before a TLS handshake), not when the loop was made.
    pub fn accepted_at(mut self, at: Instant) -> Self {
        self.accepted = at;
        self
    }

    /// The connection's TLS handshake, as the access log names it (`1.3`, `1.2r`, ...).
    pub fn tls_marker(mut self, marker: &'static str) -> Self {
        self.tls_marker = Some(marker);
        self
    }

    /// Serves exchanges until the connection ends, and says why it ended.
    pub async fn run(&mut self) -> Closed {
        loop {
            let head = self.read_head().await;
            self.request_id = RequestId::fresh();
            match head {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return why,
                Err(e) => {
                    if self.respond_error(e.answer(), e.describe()).await.is_ok() {
                        self.linger().await;
                    }
                    return Closed::BadRequest;
                }
            }
            self.body_pending = self.head.framing.has_body();
            let keep = self.exchange().await;
            self.served += 1;
            if !keep {
                if self.body_pending {
                    self.linger().await;
                }
                return self.closing.take().unwrap_or(Closed::Done);
            }
            if self.engine.is_draining() {
                return Closed::Shutdown;
            }
            // Memory between requests: the buffers go back to their small sizes.
            self.buf.shrink_if_idle();
            if self.out.capacity() > 4 * OUT_BYTES {
                self.out = Vec::with_capacity(OUT_BYTES);
            }
        }
    }

    /// Closes a connection whose client may still be sending (a refused or failed upload): the answer is
    /// followed by a FIN, then at most 1 MiB or 1 s more of the body is read and dropped. Closing with
    /// unread bytes would make the kernel reset the connection, which can destroy the answer before the
    /// client reads it (nginx's lingering close; bounded, so a refused multi-GB upload is never read).
    async fn linger(&mut self) {
        const LIMIT: usize = 1 << 20;
        let _ = self.io.shutdown().await;
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut drained = 0;
        while drained < LIMIT {
            let wait = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, self.io.read(self.buf.spare())).await {
                Ok(Ok(n)) if n > 0 => {
                    drained += n;
                    self.buf.filled_by(n);
                    self.buf.consume(self.buf.len());
                }
                _ => break,
            }
        }
    }

    /// Over `max_connections` (503) or `max_connections_per_address` (429): the answer to whatever the
    /// client sends first, then close.
    pub async fn refuse_connection(&mut self, limit: Refused) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.read(self.buf.spare())).await;
        let mut r = match limit {
            Refused::MaxConnections => Refusal::new(
                Answer::Overloaded,
                "the gateway has as many connections open as it is allowed to; retry shortly",
            ),
            Refused::PerAddress => Refusal::new(
                Answer::TooManyConnections,
                "this address has as many connections open as it is allowed to; reuse one",
            ),
        }
        .closing();
        r.retry_after = Some(1);
        let _ = self.answer(&r, false, false).await;
    }

    /// Waits for the next complete request head in the buffer. `Ok(Err(why))`: the client closed, stayed
    /// idle past `keepalive_timeout`, took longer than `header_timeout`, or the server is shutting down
    /// — nothing (more) to answer.
    async fn read_head(&mut self) -> Result<Result<(), Closed>, HeadError> {
        let mut deadline: Option<Instant> = None;
        let mut idle_deadline: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                let limit = self.buf.limit();
                if self.head.parse(self.buf.filled())? {
                    if self.head.len > limit {
                        return Err(HeadError::TooLarge);
                    }
                    return Ok(Ok(()));
                }
                if self.buf.len() >= limit {
                    return Err(HeadError::TooLarge);
                }
                deadline.get_or_insert_with(|| Instant::now() + self.engine.header_timeout);
            }
            let idle = self.buf.is_empty();
            let (served, engine, accepted) = (self.served, self.engine, self.accepted);
            let wait = || match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => {
                    let now = Instant::now();
                    let idle_until = *idle_deadline.get_or_insert(if served == 0 {
                        accepted + engine.header_timeout
                    } else {
                        now + engine.keepalive_timeout
                    });
                    idle_until.saturating_duration_since(now).min(IDLE_SLICE)
                }
            };
            let read = if self.buf.is_released() {
                // An idle connection holds no buffer: its next bytes land on the stack first.
                let mut first = [0u8; FIRST_READ];
                let r = timed(wait, self.io.read(&mut first)).await;
                if let Ok(Ok(n)) = r {
                    self.buf.spare()[..n].copy_from_slice(&first[..n]);
                }
                r
            } else {
                timed(wait, self.io.read(self.buf.spare())).await
            };
            match read {
                Ok(Ok(0)) => return Ok(Err(Closed::Done)),
                Ok(Err(_)) => return Ok(Err(Closed::ClientGone)),
                Ok(Ok(n)) => self.buf.filled_by(n),
                // Idle: close at the keep-alive (or first-request) timeout or on shutdown, else wait on.
                Err(_) if idle => {
                    if self.engine.is_draining() {
                        return Ok(Err(Closed::Shutdown));
                    }
                    if idle_deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(Err(if served == 0 {
                            Closed::HeaderTimeout
                        } else {
                            Closed::IdleTimeout
                        }));
                    }
                    // Idle for a while: give the buffers back (a busy connection keeps them, so
                    // requests in a row allocate nothing).
                    self.buf.release();
                    self.out = Vec::new();
                    self.head.fields = Vec::new();
                    self.log_path = Vec::new();
                }
                Err(_) => {
                    let r = Refusal::new(
                        Answer::RequestTimeout,
                        "the request head was not received in time",
                    )
                    .closing();
                    let _ = self.answer(&r, false, false).await;
                    return Ok(Err(Closed::HeaderTimeout));
                }
            }
        }
    }

    /// Handles the request whose head is at the front of the buffer. Returns whether the connection may
    /// carry another request.
    async fn exchange(&mut self) -> bool {
        let engine = self.engine;
        let table = engine.table.load_full();
        let mut facts = Facts::new();
        let keep = self.decide_and_forward(&table, &mut facts).await;
        let asker = Asker {
            client: self.peer.map(|_| self.peer_text.as_str()),
            path: &self.log_path,
            request_id: self.request_id.as_str(),
            tls_marker: self.tls_marker,
            protocol: Protocol::Http1,
        };
        record(engine, &table, &mut facts, asker);
        keep
    }

    /// Asks the decision about the request; answers a refusal, or rewrites the head and forwards.
    async fn decide_and_forward(&mut self, table: &Table, facts: &mut Facts) -> bool {
        let engine = self.engine;
        let _in_flight = match &engine.in_flight {
            Some((count, max)) => match take_permit(count, *max) {
                Some(slot) => Some(slot),
                None => {
                    return self
                        .refuse(facts, Refusal::too_many_in_flight().closing())
                        .await
                }
            },
            None => None,
        };
        if table.routes.trusts(self.peer) {
            self.adopt_request_id();
        }
        if engine.access_log.enabled() {
            let head = &self.buf.filled()[..self.head.len];
            facts.log = Some(logged_request(
                self.head.method.get(head),
                self.head.target.get(head),
                &mut self.log_path,
            ));
        }
        // The verify listener answers (forward auth, MQTT) and never forwards: see super::verify.
        if let Some(v) = &engine.verify {
            return self.verify(v, table, facts).await;
        }
        // The side door (`[leaks]`), before routing and without a bearer token: see super::door.
        if let Some(keep) = self.door(facts).await {
            return keep;
        }
        let req = request(&self.head, &self.buf, self.peer, self.tls.as_ref());
        let now = clock::now();
        let forward = match engine.gate.decide(&table.routes, &req, now) {
            Verdict::Refuse(r) => return self.refuse(facts, r).await,
            Verdict::Forward(f) => f,
        };
        let io: &RouteIo = &table.io[forward.route.index];
        facts.route = Some(forward.route.index);
        facts.outcome = forward.outcome;
        // The server is chosen before the head is written: a client that sent no `Host` gets the chosen
        // server's (kept if a failover moves the request on).
        let user = io
            .pool
            .user_key(forward.principal.as_deref().map(|e| e.user()));
        let server = io.pool.pick(user, 0);
        let host = &io.pool.members[server.unwrap_or(0)].upstream.host;
        let head_bytes = &self.buf.filled()[..self.head.len];
        self.out.clear();
        self.out.reserve(OUT_BYTES);
        let upgrade = self.head.upgrade_websocket && forward.route.websocket;
        write_upstream_head(
            &mut self.out,
            &self.head,
            head_bytes,
            &forward,
            (host, &self.peer_text),
            HeadExtras {
                request_id: self.request_id.as_bytes(),
                upgrade,
            },
        );
        facts.entry = forward.principal;
        facts.digest = forward.digest;
        facts.rate_limit = forward.rate_limit;
        // The token's in-flight slot is held until the exchange (or the tunnel it opens) ends.
        let _token_slot = forward.in_flight;
        let req = self.forwarded_request(upgrade);
        let expect_continue = self.head.expect_continue;
        self.buf.consume(self.head.len);
        if expect_continue && req.framing.has_body() && self.buf.is_empty() {
            // The gateway answers the expectation itself (the upstream never sees `Expect`).
            if !self.answer_continue().await {
                return false;
            }
        }
        self.forward(io, server, user, req, facts).await
    }

    /// Keeps a trusted proxy's own request id, when it sent exactly one and a sane one.
    fn adopt_request_id(&mut self) {
        let head = &self.buf.filled()[..self.head.len];
        let mut ids =
            self.head.fields.iter().filter(|f| {
                super::http1::same_field(f.name.get(head), request_id::HEADER.as_bytes())
            });
        if let (Some(f), None) = (ids.next(), ids.next()) {
            if let Some(id) = RequestId::from_client(f.value.get(head)) {
                self.request_id = id;
            }
        }
    }

    /// What the forwarding needs to know of the request in the buffer: its framing, whether it may be
    /// retried on another server, the client's version and keep-alive, the WebSocket upgrade.
    fn forwarded_request(&self, upgrade: bool) -> Req {
        let head_bytes = &self.buf.filled()[..self.head.len];
        let method = self.head.method.get(head_bytes);
        Req {
            framing: self.head.framing,
            is_head: method == b"HEAD",
            retryable: !self.head.framing.has_body()
                && matches!(
                    method,
                    b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
                ),
            client_minor: self.head.minor,
            client_keep_alive: self.head.keep_alive,
            upgrade,
            websocket_accept: if upgrade {
                websocket_key(&self.head, head_bytes).and_then(super::handshake::expected_accept)
            } else {
                None
            },
        }
    }

    /// Writes `100 Continue`; false when the client is gone.
    async fn answer_continue(&mut self) -> bool {
        self.io
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_ok()
            && self.io.flush().await.is_ok()
    }

    /// Answers the request from the gateway itself. The connection stays open only when the refusal is
    /// `reusable` and the request's body (if any) is already in the buffer, so that it can be skipped
    /// without reading on.
    pub(super) async fn refuse(&mut self, facts: &mut Facts, r: Refusal) -> bool {
        let body_in_buffer = match self.head.framing {
            Framing::None => Some(0),
            Framing::Length(n) if (self.buf.len() - self.head.len) as u64 >= n => Some(n as usize),
            _ => None,
        };
        let keep = r.reusable
            && self.head.keep_alive
            && body_in_buffer.is_some()
            && !self.engine.is_draining();
        let is_head = self.head.method.get(self.buf.filled()) == b"HEAD";
        self.buf.consume(self.head.len);
        if let (true, Some(n)) = (keep, body_in_buffer) {
            self.body_pending = false;
            self.buf.consume(n);
            facts.bytes_in = n as u64;
        }
        if !r.reusable || body_in_buffer.is_none() {
            // Closed by the gateway's choice, not the client's (`Connection: close`).
            self.closing.get_or_insert(Closed::Refused);
        }
        facts.status = r.status;
        facts.outcome = r.outcome;
        facts.limit = r.limit;
        facts.route = r.route.or(facts.route);
        if let Some(token) = &r.principal {
            facts.entry = Some(token.clone());
        }
        match self.answer(&r, keep, is_head).await {
            Ok(sent) => {
                facts.bytes_out = sent;
                keep
            }
            Err(_) => false,
        }
    }

    /// A JSON error answer outside an exchange (a bad head): always closes the connection.
    async fn respond_error(&mut self, answer: Answer, detail: &'static str) -> io::Result<u64> {
        self.answer(&Refusal::new(answer, detail).closing(), false, false)
            .await
    }

    /// Writes the gateway's own answer; a `HEAD` request gets the head alone (a body would be read as the
    /// start of the next response on a kept connection). Returns the body bytes sent.
    pub(super) async fn answer(
        &mut self,
        r: &Refusal,
        keep: bool,
        is_head: bool,
    ) -> io::Result<u64> {
        let body = r.body(Some(self.request_id.as_str()));
        self.out.clear();
        self.out.reserve(OUT_BYTES);
        write_error_head(
            &mut self.out,
            r,
            body.len(),
            keep,
            self.request_id.as_bytes(),
        );
        if !is_head {
            self.out.extend_from_slice(&body);
        }
        self.write_out().await?;
        Ok(if is_head { 0 } else { body.len() as u64 })
    }

    /// Writes `self.out` to the client and flushes.
    pub(super) async fn write_out(&mut self) -> io::Result<()> {
        let io = &mut self.io;
        let out = &self.out;
        let limit = self.engine.send_timeout;
        match timed(|| limit, async {
            io.write_all(out).await?;
            io.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client write timed out",
            )),
        }
    }
}

/// The value of the request's one `Sec-WebSocket-Key` field (`None`: none, or more than one).
fn websocket_key<'b>(head: &RequestHead, bytes: &'b [u8]) -> Option<&'b [u8]> {
    let mut keys = head
        .fields
        .iter()
        .filter(|f| f.name.get(bytes).eq_ignore_ascii_case(b"sec-websocket-key"));
    match (keys.next(), keys.next()) {
        (Some(f), None) => Some(f.value.get(bytes)),
        _ => None,
    }
}

/// The facts of the request whose head is at the front of `buf`, for the decision.
fn request<'b>(
    head: &RequestHead,
    buf: &'b Buffer,
    peer: Option<IpAddr>,
    tls: Option<&'b TlsPeer>,
) -> Request<'b> {
    request_facts(head, &buf.filled()[..head.len], peer, tls)
}

/// The facts of the request whose head `head` was parsed from `bytes`, for the decision (HTTP/2
/// streams come here too, as the HTTP/1.1 head they were written into).
pub(super) fn request_facts<'b>(
    head: &RequestHead,
    bytes: &'b [u8],
    peer: Option<IpAddr>,
    tls: Option<&'b TlsPeer>,
) -> Request<'b> {
    Request {
        method: head.method.get(bytes),
        target: head.target.get(bytes),
        host: head.host.map(|s| s.get(bytes).trim_ascii()),
        authorization: head.authorization.map(|s| s.get(bytes)),
        authorizations: head.authorizations as usize,
        content_length: match head.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        },
        peer,
        tls,
    }
}

/// What the access log records of a request: its method, and (into `path`, whose room is reused) the
/// path as forwarded (origin form), never the query.
pub(super) fn logged_request(method: &[u8], target: &[u8], path: &mut Vec<u8>) -> http::Method {
    path.clear();
    // Never the query, whatever the target's form or bytes: cut at its first `?` before anything else
    // (a query with bytes that are not UTF-8 once made the whole target, query and all, the path).
    let raw = match target.iter().position(|&b| b == b'?') {
        Some(i) => &target[..i],
        None => target,
    };
    let p = match raw.first() {
        Some(b'/') => raw,
        _ => origin_form(raw).map_or(raw, |(p, _)| p.as_bytes()),
    };
    // As bytes: the log's formatter reads them as UTF-8 (lossily) only when they are not plain ASCII.
    path.extend_from_slice(p);
    http::Method::from_bytes(method).unwrap_or(http::Method::GET)
}
