//! The forwarding engine: a pingora [`ServerApp`] that serves each client connection as a loop of
//! HTTP/1.1 exchanges — read a head, route, authenticate, rewrite, forward, relay the answer — wiring
//! [`routes`](crate::routes), [`auth`], [`upstream`](crate::upstream), metrics and the access log.
//!
//! Why not pingora-proxy's `ProxyHttp`: its per-request machinery (a boxed state machine, header maps with
//! case maps, body tasks) cost about half of the CPU of a proxied request here, twice what nginx spends on
//! the same job. This engine keeps pingora's server, listeners, signals and socket hand-over, and does the
//! HTTP/1 work in place: heads are parsed by `httparse` into spans of the connection's buffer, the upstream
//! head is written field by field into one reused buffer, a small body travels in the same write as its
//! head, and the upstream connection stays with the client connection (see [`crate::upstream`]).
//!
//! Per exchange, in order: a head within `header_timeout` (431/400/501 for bad heads, see
//! [`crate::http1`]); `max_in_flight` (503); the path check and route (400/404); the credential (RFC 6750
//! 400/401/403, 429 when throttled); `max_body_bytes` (413); then the upstream. The forwarded head never
//! carries `Authorization`, hop-by-hop fields, or any client copy of an identity header (any case, `_` for
//! `-`); the identity headers are added once. Bodies stream both ways in bounded buffers. A refused request
//! whose body has not fully arrived closes the connection instead of draining the body.

use crate::access_log::{AccessLog, Record};
use crate::auth::{self, Denial, Outcome};
use crate::clock;
use crate::http1::{
    self, Buffer, Chunk, ChunkError, ChunkedDecoder, Framing, HeadError, RequestHead, ResponseHead,
};
use crate::index::{Entry, Index};
use crate::metrics::{RouteMetrics, UpstreamError};
use crate::routes::{check_path, Route, RouteTable};
use crate::signing;
use crate::throttle::Throttle;
use crate::upstream::Conn;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a client may take to accept a write of the response, or between two reads of its body.
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The gateway's request handling, shared by all worker threads.
pub struct Gateway {
    /// The current route table; swapped whole on reload, read once per request.
    pub routes: Arc<ArcSwap<RouteTable>>,
    /// The token index (lock-free reads).
    pub index: Arc<Index>,
    /// Collectors for requests that matched no route.
    pub unrouted: RouteMetrics,
    /// Where finished requests are logged (a non-blocking queue).
    pub access_log: AccessLog,
    /// Idle time allowed between requests on a client connection.
    pub keepalive_timeout: Duration,
    /// Time a client has to send a whole request head, from its first byte (or from the connection's
    /// start for the first request).
    pub header_timeout: Duration,
    /// Failed-authentication counters per client address (touched only on failures).
    pub throttle: Throttle,
    /// Requests in flight, when `max_in_flight` is set (an atomic shared by all workers, so it is only
    /// counted when a limit is configured).
    pub in_flight: Option<(Arc<AtomicUsize>, usize)>,
    /// Open client connections and their limit (`max_connections`): one atomic shared by all workers,
    /// touched once per connection.
    pub connections: Arc<AtomicUsize>,
    pub max_connections: usize,
    /// Set when the server starts to shut down or hand over: exchanges end with `Connection: close` and
    /// idle connections close within a second. A plain flag read with a relaxed load: pingora's shutdown
    /// watch would cost a shared lock per idle wait.
    pub draining: Arc<AtomicBool>,
}

impl Gateway {
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Gives a counted slot back when dropped, whatever path the request or connection ended on.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a slot of `count` unless `max` are taken.
fn take_slot(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
    let slot = Slot(count.clone());
    (count.fetch_add(1, Ordering::Relaxed) < max).then_some(slot)
}

#[async_trait]
impl ServerApp for Gateway {
    /// Serves one client connection until it closes, idles out, or the server shuts down. A connection
    /// over `max_connections` gets a 503 and is closed.
    async fn process_new(
        self: &Arc<Self>,
        io: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = io
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let mut client = Client {
            gw: self,
            io,
            buf: Buffer::new(),
            head: RequestHead::default(),
            out: Vec::with_capacity(2048),
            upstream: None,
            peer,
            peer_text: peer.map(|ip| ip.to_string()).unwrap_or_default(),
            served: 0,
            body_pending: false,
        };
        match take_slot(&self.connections, self.max_connections) {
            Some(_slot) => client.run().await,
            None => client.refuse_connection().await,
        }
        if let Some((route, conn)) = client.upstream.take() {
            route.upstream.put_idle(conn);
        }
        None
    }
}

/// What the forwarded request looks like, kept after its head has left the buffer.
#[derive(Clone, Copy)]
struct Req {
    framing: Framing,
    is_head: bool,
    /// Safe to send twice (RFC 9110 section 9.2.2) and without a body: may be retried on a fresh
    /// connection when a reused one turns out closed.
    retryable: bool,
    client_minor: u8,
    client_keep_alive: bool,
}

/// What one exchange produced, for metrics and the access log.
struct Facts {
    start: Instant,
    route: Option<Arc<Route>>,
    entry: Option<Arc<Entry>>,
    outcome: Outcome,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    /// Method and path (never the query), only when the access log is on.
    log: Option<(http::Method, String)>,
}

/// How sending the request body ended badly.
enum BodyError {
    /// The client closed or failed mid-body: nobody to answer.
    ClientGone,
    /// The client stopped sending (408).
    Timeout,
    /// Broken chunked framing (400).
    Malformed,
    /// Past `max_body_bytes` (413).
    TooLarge(u64),
    /// The upstream stopped taking the body (it may still answer).
    Upstream(UpstreamError, io::Error),
}

/// How reading the response ended badly.
#[derive(Debug)]
struct UpstreamFailure {
    kind: UpstreamError,
    detail: String,
    /// Nothing at all came back (the connection was closed or reset before a byte of a response).
    nothing_received: bool,
}

impl UpstreamFailure {
    fn new(kind: UpstreamError, detail: impl Into<String>) -> UpstreamFailure {
        UpstreamFailure {
            kind,
            detail: detail.into(),
            nothing_received: false,
        }
    }

    fn status(&self) -> u16 {
        match self.kind {
            UpstreamError::ConnectTimeout
            | UpstreamError::ReadTimeout
            | UpstreamError::WriteTimeout => 504,
            _ => 502,
        }
    }
}

/// One client connection.
struct Client<'a> {
    gw: &'a Gateway,
    io: Stream,
    buf: Buffer,
    head: RequestHead,
    /// Scratch for heads and re-framed body data on their way out.
    out: Vec<u8>,
    /// The upstream connection of the last exchange, kept while the client stays on that route.
    upstream: Option<(Arc<Route>, Conn)>,
    peer: Option<IpAddr>,
    /// The peer address as text, formatted once per connection for `X-Forwarded-For`.
    peer_text: String,
    served: u64,
    /// The current request's body has not been read to its end (a close then lingers, see
    /// [`Self::linger`]).
    body_pending: bool,
}

/// Longest single wait for the next request: an idle connection notices a shutdown within this.
const IDLE_SLICE: Duration = Duration::from_secs(1);

impl Client<'_> {
    async fn run(&mut self) {
        loop {
            match self.read_head().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    if self.respond_error(e.status(), e.describe()).await.is_ok() {
                        self.linger().await;
                    }
                    return;
                }
            }
            self.body_pending = self.head.framing.has_body();
            let keep = self.exchange().await;
            self.served += 1;
            if !keep {
                if self.body_pending {
                    self.linger().await;
                }
                return;
            }
            if self.gw.is_draining() {
                return;
            }
            self.buf.shrink_if_idle();
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

    /// Over `max_connections`: a 503 for whatever the client sends first, then close.
    async fn refuse_connection(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.read(self.buf.spare())).await;
        self.out.clear();
        let body = error_body(
            "overloaded",
            "the gateway has as many connections open as it is allowed to; retry shortly",
        );
        write_error_head(&mut self.out, 503, &body, None, Some(1), false);
        self.out.extend_from_slice(&body);
        let _ = self.write_out().await;
    }

    /// Waits for the next complete request head in the buffer. `Ok(false)`: the client closed, stayed idle
    /// past `keepalive_timeout`, or the server is shutting down — nothing to answer.
    async fn read_head(&mut self) -> Result<bool, HeadError> {
        let mut deadline: Option<Instant> = None;
        let mut idle_deadline: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                if self.head.parse(self.buf.filled())? {
                    return Ok(true);
                }
                deadline.get_or_insert_with(|| Instant::now() + self.gw.header_timeout);
            }
            let idle = self.buf.is_empty();
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => {
                    let limit = if self.served == 0 {
                        self.gw.header_timeout
                    } else {
                        self.gw.keepalive_timeout
                    };
                    let idle_until = *idle_deadline.get_or_insert_with(|| Instant::now() + limit);
                    idle_until
                        .saturating_duration_since(Instant::now())
                        .min(IDLE_SLICE)
                }
            };
            match tokio::time::timeout(wait, self.io.read(self.buf.spare())).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(false),
                Ok(Ok(n)) => self.buf.filled_by(n),
                // Idle: close at the keep-alive (or first-request) timeout or on shutdown, else wait on.
                Err(_) if idle => {
                    let expired = idle_deadline.is_some_and(|d| Instant::now() >= d);
                    if expired || self.gw.is_draining() {
                        return Ok(false);
                    }
                }
                Err(_) => {
                    let body = error_body(
                        "request_timeout",
                        "the request head was not received in time",
                    );
                    self.out.clear();
                    write_error_head(&mut self.out, 408, &body, None, None, false);
                    self.out.extend_from_slice(&body);
                    let _ = self.write_out().await;
                    return Ok(false);
                }
            }
        }
    }

    /// Handles the request whose head is at the front of the buffer. Returns whether the connection may
    /// carry another request.
    async fn exchange(&mut self) -> bool {
        let gw = self.gw;
        let mut facts = Facts {
            start: Instant::now(),
            route: None,
            entry: None,
            outcome: Outcome::None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            log: None,
        };
        let keep = self.decide_and_forward(gw, &mut facts).await;
        let m = facts
            .route
            .as_ref()
            .map(|r| &r.metrics)
            .unwrap_or(&gw.unrouted);
        m.count(facts.status, facts.outcome);
        m.duration.observe(facts.start.elapsed().as_secs_f64());
        m.bytes_in.inc_by(facts.bytes_in);
        m.bytes_out.inc_by(facts.bytes_out);
        if let Some((method, path)) = facts.log.take() {
            gw.access_log.log(Record {
                at: SystemTime::now(),
                client: self.peer,
                method,
                path,
                route: facts.route.as_ref().map(|r| r.name.clone()),
                status: facts.status,
                auth: facts.outcome.as_str(),
                duration: facts.start.elapsed(),
                bytes_in: facts.bytes_in,
                bytes_out: facts.bytes_out,
                token_id: facts.entry.as_ref().map(|e| e.token_id),
                user: facts.entry.as_ref().map(|e| e.user_value()),
            });
        }
        keep
    }

    /// Everything up to the upstream: checks, decision, rewrite; then [`Self::forward`].
    async fn decide_and_forward(&mut self, gw: &Gateway, facts: &mut Facts) -> bool {
        let _in_flight = match &gw.in_flight {
            Some((count, max)) => match take_slot(count, *max) {
                Some(slot) => Some(slot),
                None => {
                    let body = error_body(
                        "overloaded",
                        "the gateway is handling as many requests as it is allowed to; retry shortly",
                    );
                    return self.refuse(facts, 503, &body, None, Some(1), false).await;
                }
            },
            None => None,
        };
        let head_bytes = &self.buf.filled()[..self.head.len];
        let method = self.head.method.get(head_bytes);
        let target = self.head.target.get(head_bytes);
        let origin = origin_form(target);
        if gw.access_log.enabled() {
            // The path as forwarded (origin form), never the query.
            let path = match origin {
                Some((p, _)) => p.to_owned(),
                None => String::from_utf8_lossy(target).into_owned(),
            };
            facts.log = Some((
                http::Method::from_bytes(method).unwrap_or(http::Method::GET),
                path,
            ));
        }
        if method == b"CONNECT" {
            let body = error_body("method_not_allowed", "CONNECT is not supported");
            return self.refuse(facts, 405, &body, None, None, false).await;
        }
        let Some((path, query)) = origin else {
            let body = error_body("invalid_request", "the request target must be a path");
            return self.refuse(facts, 400, &body, None, None, true).await;
        };
        if let Some(authority) = authority(target) {
            // An absolute-form target must name the host the Host field names: two answers to "which
            // host" are refused rather than resolved one way here and maybe another way upstream.
            let host = self
                .head
                .fields
                .iter()
                .find(|f| f.name.get(head_bytes).eq_ignore_ascii_case(b"host"))
                .map(|f| f.value.get(head_bytes).trim_ascii());
            if host.is_none_or(|h| !h.eq_ignore_ascii_case(authority)) {
                let body = error_body(
                    "invalid_request",
                    "the request target and the Host header name different hosts",
                );
                return self.refuse(facts, 400, &body, None, None, true).await;
            }
        }
        // The table guard is dropped before any await.
        let found = check_path(path).map(|()| {
            let table = gw.routes.load();
            let trusted = self
                .peer
                .is_some_and(|ip| table.trusted_proxies.iter().any(|n| n.contains(ip)));
            table.find(path).map(|r| (r.clone(), trusted))
        });
        let (route, trusted) = match found {
            Err(e) => {
                let body = error_body("invalid_request", e.describe());
                return self.refuse(facts, 400, &body, None, None, true).await;
            }
            Ok(None) => {
                let body = error_body("not_found", "no route for this path");
                return self.refuse(facts, 404, &body, None, None, true).await;
            }
            Ok(Some(found)) => found,
        };
        facts.route = Some(route.clone());
        let now = clock::now();
        if route.auth == crate::config::AuthMode::None {
            facts.outcome = Outcome::Public;
        } else {
            let decision = credential(&self.head, head_bytes, &route, query)
                .and_then(|t| auth::authorize(&gw.index, t, route.required_scope.as_deref(), now));
            match decision {
                Ok(entry) => {
                    entry.record_use(now);
                    facts.entry = Some(entry);
                    facts.outcome = Outcome::Ok;
                }
                Err(denial) => {
                    facts.outcome = denial.outcome();
                    let counts = !matches!(denial, Denial::Missing | Denial::InsufficientScope(_));
                    if let (true, Some(ip)) = (counts, self.peer) {
                        if let Some(retry_after) = gw.throttle.failure(ip, now) {
                            facts.outcome = Outcome::Throttled;
                            let body = error_body(
                                "too_many_requests",
                                "too many failed authentications from this address; retry later",
                            );
                            return self
                                .refuse(facts, 429, &body, None, Some(retry_after), false)
                                .await;
                        }
                    }
                    let challenge = denial.challenge();
                    return self
                        .refuse(
                            facts,
                            denial.status(),
                            &denial.body(),
                            Some(&challenge),
                            None,
                            true,
                        )
                        .await;
                }
            }
        }
        if let (Some(max), Framing::Length(n)) = (route.max_body_bytes, self.head.framing) {
            if n > max {
                let detail =
                    format!("the request body is larger than this route's limit of {max} bytes");
                let body = error_body("payload_too_large", &detail);
                return self.refuse(facts, 413, &body, None, None, false).await;
            }
        }
        self.out.clear();
        write_upstream_head(
            &mut self.out,
            &self.head,
            head_bytes,
            (path, query),
            &route,
            facts.entry.as_deref(),
            &self.peer_text,
            trusted,
            now,
        );
        let req = Req {
            framing: self.head.framing,
            is_head: method == b"HEAD",
            retryable: !self.head.framing.has_body()
                && matches!(
                    method,
                    b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
                ),
            client_minor: self.head.minor,
            client_keep_alive: self.head.keep_alive,
        };
        let expect_continue = self.head.expect_continue;
        self.buf.consume(self.head.len);
        if expect_continue && req.framing.has_body() && self.buf.is_empty() {
            // The gateway answers the expectation itself (the upstream never sees `Expect`).
            if self
                .io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
                || self.io.flush().await.is_err()
            {
                return false;
            }
        }
        self.forward(&route, req, facts).await
    }

    /// Answers the request from the gateway itself. The connection stays open only when `reusable` and the
    /// request's body (if any) is already in the buffer, so that it can be skipped without reading on.
    async fn refuse(
        &mut self,
        facts: &mut Facts,
        status: u16,
        body: &[u8],
        challenge: Option<&str>,
        retry_after: Option<u64>,
        reusable: bool,
    ) -> bool {
        let body_in_buffer = match self.head.framing {
            Framing::None => Some(0),
            Framing::Length(n) if (self.buf.len() - self.head.len) as u64 >= n => Some(n as usize),
            _ => None,
        };
        let keep =
            reusable && self.head.keep_alive && body_in_buffer.is_some() && !self.gw.is_draining();
        self.buf.consume(self.head.len);
        if let (true, Some(n)) = (keep, body_in_buffer) {
            self.body_pending = false;
            self.buf.consume(n);
            facts.bytes_in = n as u64;
        }
        self.out.clear();
        write_error_head(&mut self.out, status, body, challenge, retry_after, keep);
        self.out.extend_from_slice(body);
        facts.status = status;
        facts.bytes_out = body.len() as u64;
        self.write_out().await.is_ok() && keep
    }

    /// A JSON error answer outside an exchange (a bad head): always closes the connection.
    async fn respond_error(&mut self, status: u16, detail: &str) -> io::Result<()> {
        let error = if status == 501 {
            "not_implemented"
        } else {
            "invalid_request"
        };
        let body = error_body(error, detail);
        self.out.clear();
        write_error_head(&mut self.out, status, &body, None, None, false);
        self.out.extend_from_slice(&body);
        self.write_out().await
    }

    /// Writes `self.out` to the client and flushes.
    async fn write_out(&mut self) -> io::Result<()> {
        let io = &mut self.io;
        let out = &self.out;
        match tokio::time::timeout(CLIENT_IO_TIMEOUT, async {
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

    /// The upstream connection for `route`: the one this client used last if it is on the same route,
    /// else an idle one from the route's pool, else a new one.
    async fn upstream_for(&mut self, route: &Arc<Route>) -> Result<Conn, UpstreamFailure> {
        if let Some((r, conn)) = self.upstream.take() {
            if Arc::ptr_eq(&r, route) {
                let idle = conn.idle_since.elapsed();
                // Always checked: bytes an upstream sent after a complete response must never be taken
                // for the next answer (RFC 9112 section 6.3). Free when the socket shows no readiness,
                // as after a response read to its end.
                if idle < route.upstream.idle_timeout && conn.is_usable() {
                    return Ok(conn);
                }
            } else {
                r.upstream.put_idle(conn);
            }
        }
        if let Some(conn) = route.upstream.take_idle() {
            return Ok(conn);
        }
        route
            .upstream
            .connect()
            .await
            .map_err(|(kind, e)| UpstreamFailure::new(kind, format!("connect: {e}")))
    }

    /// Sends the request (head in `self.out`, body from the client) and relays the answer. Returns whether
    /// the client connection may carry another request.
    async fn forward(&mut self, route: &Arc<Route>, req: Req, facts: &mut Facts) -> bool {
        let mut conn = match self.upstream_for(route).await {
            Ok(c) => c,
            Err(f) => return self.upstream_failed(route, facts, f, req).await,
        };
        // Whatever of the body is already here goes out with the head, in one write.
        let mut body = BodyState::new(req.framing);
        if let Err(e) = body.stage(&mut self.buf, &mut self.out, route.max_body_bytes) {
            return self.body_failed(route, facts, e, req).await;
        }
        let mut resp = ResponseHead::default();
        let result = if body.done() {
            let mut r = send_and_read(&mut conn, &self.out, &mut resp, route, req.is_head).await;
            if let Err(f) = &r {
                if f.nothing_received && conn.reused && req.retryable {
                    // The upstream closed this kept-alive connection while it was idle: once more on a new
                    // one (only requests that are safe to repeat and have no body).
                    log::debug!(
                        "route {}: reused upstream connection closed; retrying once",
                        route.name
                    );
                    match route.upstream.connect().await {
                        Ok(fresh) => {
                            conn = fresh;
                            r = send_and_read(&mut conn, &self.out, &mut resp, route, req.is_head)
                                .await;
                        }
                        Err((kind, e)) => {
                            r = Err(UpstreamFailure::new(kind, format!("connect: {e}")))
                        }
                    }
                }
            }
            r.map(|()| true).map_err(Stop::Upstream)
        } else {
            self.stream_body(&mut conn, &mut body, &mut resp, route, req, facts.start)
                .await
        };
        facts.bytes_in = body.forwarded;
        self.body_pending = !body.done();
        let body_sent = match result {
            Ok(sent) => sent,
            Err(Stop::Upstream(f)) => return self.upstream_failed(route, facts, f, req).await,
            Err(Stop::Body(e)) => return self.body_failed(route, facts, e, req).await,
        };
        conn.reused = true;
        self.relay_response(conn, route, &resp, req, body_sent, facts)
            .await
    }

    /// Streams a body that did not fit in the first write, while watching for the response (an upstream
    /// may answer before the body ends, e.g. with 413). `Ok(true)`: the body went out whole.
    async fn stream_body(
        &mut self,
        conn: &mut Conn,
        body: &mut BodyState,
        resp: &mut ResponseHead,
        route: &Route,
        req: Req,
        start: Instant,
    ) -> Result<bool, Stop> {
        let write_timeout = route.upstream.write_timeout;
        let (mut up_read, mut up_write) = conn.stream.split();
        match tokio::time::timeout(write_timeout, up_write.write_all(&self.out)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Stop::Upstream(UpstreamFailure::new(
                    UpstreamError::Reset,
                    format!("write: {e}"),
                )))
            }
            Err(_) => {
                return Err(Stop::Upstream(UpstreamFailure::new(
                    UpstreamError::WriteTimeout,
                    "write timed out",
                )))
            }
        }
        let deadline = route.request_timeout.map(|t| start + t);
        let (head_result, sent) = {
            let send = body.pump(
                &mut self.io,
                &mut self.buf,
                &mut self.out,
                &mut up_write,
                write_timeout,
                deadline,
                route.max_body_bytes,
            );
            let head = read_response_head(&mut up_read, &mut conn.buf, resp, req.is_head);
            tokio::pin!(send, head);
            // The read timeout starts when the body has gone out: an upload may take longer than it.
            let timer = tokio::time::sleep(Duration::from_secs(86_400 * 365));
            tokio::pin!(timer);
            let mut sent: Option<Result<u64, BodyError>> = None;
            let head_result = loop {
                tokio::select! {
                    biased;
                    h = &mut head => break h,
                    s = &mut send, if sent.is_none() => {
                        match s {
                            Ok(n) => sent = Some(Ok(n)),
                            Err(BodyError::Upstream(kind, e)) => {
                                // The upstream stopped reading; it may still have an answer (413, 400...).
                                log::debug!("route {}: upstream stopped taking the body: {e}", route.name);
                                sent = Some(Err(BodyError::Upstream(kind, e)));
                            }
                            Err(e) => return Err(Stop::Body(e)),
                        }
                        timer.as_mut().reset(tokio::time::Instant::now() + route.upstream.read_timeout);
                    }
                    _ = &mut timer, if sent.is_some() => {
                        break Err(UpstreamFailure::new(UpstreamError::ReadTimeout, "no response within read_timeout"));
                    }
                }
            };
            (head_result, sent)
        };
        let body_done = body.done();
        match (head_result, sent) {
            (Ok(()), _) => Ok(body_done),
            (Err(f), Some(Err(BodyError::Upstream(kind, e)))) if f.nothing_received => Err(
                Stop::Upstream(UpstreamFailure::new(kind, format!("write: {e}"))),
            ),
            (Err(f), _) => Err(Stop::Upstream(f)),
        }
    }

    /// Relays the response whose head is in `resp` (bytes at the front of `conn.buf`) and its body.
    async fn relay_response(
        &mut self,
        mut conn: Conn,
        route: &Arc<Route>,
        resp: &ResponseHead,
        req: Req,
        body_sent: bool,
        facts: &mut Facts,
    ) -> bool {
        // Re-frame for the client: chunked passes on as chunked to HTTP/1.1 clients (re-encoded), is
        // decoded for HTTP/1.0 ones, whose connection then ends the body.
        let chunked_out = resp.framing == Framing::Chunked && req.client_minor >= 1;
        let keep_client = req.client_keep_alive
            && body_sent
            && matches!(
                resp.framing,
                Framing::None | Framing::Length(_) | Framing::Chunked
            )
            && (resp.framing != Framing::Chunked || chunked_out)
            && !self.gw.is_draining();
        self.out.clear();
        write_response_head(
            &mut self.out,
            resp,
            conn.buf.filled(),
            chunked_out,
            keep_client,
            req.client_minor,
        );
        conn.buf.consume(resp.len);
        facts.status = resp.status;
        let mut sent_body = 0u64;
        let read_timeout = route.upstream.read_timeout;
        let mut complete = true;
        let mut error: Option<UpstreamFailure> = None;
        match resp.framing {
            Framing::None => {
                if self.write_out().await.is_err() {
                    complete = false;
                }
            }
            Framing::Length(n) => {
                let mut left = n;
                loop {
                    let take = (conn.buf.len() as u64).min(left) as usize;
                    self.out.extend_from_slice(&conn.buf.filled()[..take]);
                    conn.buf.consume(take);
                    left -= take as u64;
                    sent_body += take as u64;
                    if self.write_out().await.is_err() {
                        complete = false;
                        break;
                    }
                    self.out.clear();
                    if left == 0 {
                        break;
                    }
                    if let Err(f) = fill(&mut conn, read_timeout).await {
                        error = Some(f);
                        complete = false;
                        break;
                    }
                }
            }
            Framing::Chunked => {
                let mut dec = ChunkedDecoder::default();
                loop {
                    let mut end = false;
                    while !conn.buf.is_empty() && !end {
                        let step = dec.decode(conn.buf.filled());
                        match step {
                            Ok((n, c)) => {
                                match &c {
                                    Chunk::Data(r) => {
                                        let data = &conn.buf.filled()[r.clone()];
                                        sent_body += data.len() as u64;
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
                            Err(e) => {
                                error = Some(UpstreamFailure::new(
                                    UpstreamError::Other,
                                    format!("chunked body: {e:?}"),
                                ));
                                break;
                            }
                        }
                    }
                    if error.is_some() {
                        complete = false;
                        break;
                    }
                    if end && chunked_out {
                        self.out.extend_from_slice(http1::LAST_CHUNK);
                    }
                    if !self.out.is_empty() && self.write_out().await.is_err() {
                        complete = false;
                        break;
                    }
                    self.out.clear();
                    if end {
                        break;
                    }
                    if let Err(f) = fill(&mut conn, read_timeout).await {
                        error = Some(f);
                        complete = false;
                        break;
                    }
                }
            }
            Framing::Close => loop {
                self.out.extend_from_slice(conn.buf.filled());
                let had = conn.buf.len();
                conn.buf.consume(had);
                sent_body += had as u64;
                if self.write_out().await.is_err() {
                    complete = false;
                    break;
                }
                self.out.clear();
                match fill(&mut conn, read_timeout).await {
                    Ok(()) => {}
                    Err(f) if f.nothing_received => break, // the end of the body
                    Err(f) => {
                        error = Some(f);
                        complete = false;
                        break;
                    }
                }
            },
        }
        facts.bytes_out = sent_body;
        if let Some(f) = error {
            log::warn!(
                "route {}: upstream failed during the response body: {} ({})",
                route.name,
                f.kind.as_str(),
                f.detail
            );
            route.metrics.upstream_error(f.kind);
        }
        // Bytes beyond the response (an upstream that sent more than it framed) make the connection unusable.
        if complete
            && body_sent
            && resp.keep_alive
            && resp.framing != Framing::Close
            && conn.buf.is_empty()
        {
            conn.idle_since = Instant::now();
            self.upstream = Some((route.clone(), conn));
        }
        complete && keep_client
    }

    /// Answers a request the upstream could not take or answer: 502/504, unless the client is gone.
    async fn upstream_failed(
        &mut self,
        route: &Route,
        facts: &mut Facts,
        f: UpstreamFailure,
        req: Req,
    ) -> bool {
        let status = f.status();
        log::warn!(
            "route {}: upstream {} failed: {} ({})",
            route.name,
            route.upstream.addr,
            f.kind.as_str(),
            f.detail
        );
        // Counted before the answer goes out, so that whoever reads the answer can see it counted.
        route.metrics.upstream_error(f.kind);
        let (error, detail) = if status == 504 {
            ("gateway_timeout", "the upstream did not answer in time")
        } else {
            ("bad_gateway", "the upstream could not be reached or failed")
        };
        let body = error_body(error, detail);
        // The body may be half read: keep the connection only for a bodiless request.
        let keep = !req.framing.has_body() && req.client_keep_alive && !self.gw.is_draining();
        self.out.clear();
        write_error_head(&mut self.out, status, &body, None, None, keep);
        self.out.extend_from_slice(&body);
        facts.status = status;
        facts.bytes_out = body.len() as u64;
        self.write_out().await.is_ok() && keep
    }

    /// Answers a request whose body could not be taken from the client (400, 408, 413); always closes.
    async fn body_failed(
        &mut self,
        route: &Route,
        facts: &mut Facts,
        e: BodyError,
        req: Req,
    ) -> bool {
        let (status, error, detail) = match e {
            BodyError::ClientGone => return false,
            BodyError::Timeout => (
                408,
                "request_timeout",
                "the request body was not received in time".to_string(),
            ),
            BodyError::Malformed => (
                400,
                "invalid_request",
                "the chunked request body is malformed".to_string(),
            ),
            BodyError::TooLarge(max) => (
                413,
                "payload_too_large",
                format!("the request body is larger than this route's limit of {max} bytes"),
            ),
            BodyError::Upstream(kind, e) => {
                let f = UpstreamFailure::new(kind, format!("write: {e}"));
                return self.upstream_failed(route, facts, f, req).await;
            }
        };
        let body = error_body(error, &detail);
        self.out.clear();
        write_error_head(&mut self.out, status, &body, None, None, false);
        self.out.extend_from_slice(&body);
        facts.status = status;
        facts.bytes_out = body.len() as u64;
        let _ = self.write_out().await;
        false
    }
}

/// Why forwarding stopped before a response head arrived.
enum Stop {
    Upstream(UpstreamFailure),
    Body(BodyError),
}

/// Progress of a request body from the client to the upstream.
struct BodyState {
    framing: Framing,
    /// Body bytes (data, without chunk framing) still to come for `Length`.
    left: u64,
    decoder: ChunkedDecoder,
    /// Body data bytes forwarded so far.
    forwarded: u64,
    finished: bool,
}

impl BodyState {
    fn new(framing: Framing) -> BodyState {
        BodyState {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            decoder: ChunkedDecoder::default(),
            forwarded: 0,
            finished: matches!(framing, Framing::None),
        }
    }

    fn done(&self) -> bool {
        self.finished
    }

    /// Moves what the buffer holds of the body into `out` (re-framed when chunked). Returns the data bytes
    /// moved.
    fn stage(
        &mut self,
        buf: &mut Buffer,
        out: &mut Vec<u8>,
        max: Option<u64>,
    ) -> Result<u64, BodyError> {
        let before = self.forwarded;
        match self.framing {
            Framing::None | Framing::Close => {}
            Framing::Length(_) => {
                let take = (buf.len() as u64).min(self.left) as usize;
                out.extend_from_slice(&buf.filled()[..take]);
                buf.consume(take);
                self.left -= take as u64;
                self.forwarded += take as u64;
                self.finished = self.left == 0;
            }
            Framing::Chunked => {
                while !buf.is_empty() && !self.finished {
                    let (n, c) = self.decoder.decode(buf.filled()).map_err(|e| match e {
                        ChunkError::Syntax | ChunkError::TooLarge => BodyError::Malformed,
                    })?;
                    match c {
                        Chunk::Data(r) => {
                            let data = &buf.filled()[r];
                            self.forwarded += data.len() as u64;
                            if let Some(max) = max {
                                if self.forwarded > max {
                                    return Err(BodyError::TooLarge(max));
                                }
                            }
                            http1::encode_chunk(out, data);
                        }
                        Chunk::End => {
                            out.extend_from_slice(http1::LAST_CHUNK);
                            self.finished = true;
                        }
                        Chunk::More => {}
                    }
                    buf.consume(n);
                }
            }
        }
        Ok(self.forwarded - before)
    }

    /// Reads the rest of the body from the client and writes it upstream.
    #[allow(clippy::too_many_arguments)]
    async fn pump<R, W>(
        &mut self,
        client: &mut R,
        buf: &mut Buffer,
        out: &mut Vec<u8>,
        upstream: &mut W,
        write_timeout: Duration,
        deadline: Option<Instant>,
        max: Option<u64>,
    ) -> Result<u64, BodyError>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin,
    {
        while !self.finished {
            let wait = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(CLIENT_IO_TIMEOUT),
                None => CLIENT_IO_TIMEOUT,
            };
            match tokio::time::timeout(wait, client.read(buf.spare())).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(BodyError::ClientGone),
                Ok(Ok(n)) => buf.filled_by(n),
                Err(_) => return Err(BodyError::Timeout),
            }
            out.clear();
            self.stage(buf, out, max)?;
            if !out.is_empty() {
                match tokio::time::timeout(write_timeout, upstream.write_all(out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(BodyError::Upstream(UpstreamError::Reset, e)),
                    Err(_) => {
                        return Err(BodyError::Upstream(
                            UpstreamError::WriteTimeout,
                            io::Error::new(io::ErrorKind::TimedOut, "write timed out"),
                        ))
                    }
                }
            }
        }
        Ok(self.forwarded)
    }
}

/// Writes a whole request (already in `out`) and reads the response head into `resp`.
async fn send_and_read(
    conn: &mut Conn,
    out: &[u8],
    resp: &mut ResponseHead,
    route: &Route,
    is_head: bool,
) -> Result<(), UpstreamFailure> {
    match tokio::time::timeout(route.upstream.write_timeout, conn.stream.write_all(out)).await {
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
    match tokio::time::timeout(
        route.upstream.read_timeout,
        read_response_head(&mut conn.stream, &mut conn.buf, resp, is_head),
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
/// (the gateway answers `Expect` itself). 101 is refused: the gateway does not forward upgrades.
async fn read_response_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Buffer,
    resp: &mut ResponseHead,
    is_head: bool,
) -> Result<(), UpstreamFailure> {
    let mut received = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match resp.parse(buf.filled(), is_head) {
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

/// Reads more of a response body into the connection's buffer. A clean close is reported with
/// `nothing_received` set (the end of a close-delimited body).
async fn fill(conn: &mut Conn, read_timeout: Duration) -> Result<(), UpstreamFailure> {
    match tokio::time::timeout(read_timeout, conn.stream.read(conn.buf.spare())).await {
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

/// The authority of an absolute-form target (`http://HOST:PORT/...` gives `HOST:PORT`).
fn authority(target: &[u8]) -> Option<&[u8]> {
    let rest = if target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() >= 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return None;
    };
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The path and query of a request target in origin form (public for the benches); absolute-form targets give their path (the
/// path that matched is the path forwarded). `None` for `*` and authority-form.
pub fn origin_form(target: &[u8]) -> Option<(&str, Option<&str>)> {
    let pq = if target.first() == Some(&b'/') {
        target
    } else {
        let lower = |n: usize| target.get(..n).map(|p| p.to_ascii_lowercase());
        let rest = if lower(7).as_deref() == Some(b"http://") {
            &target[7..]
        } else if lower(8).as_deref() == Some(b"https://") {
            &target[8..]
        } else {
            return None;
        };
        match rest.iter().position(|&b| b == b'/' || b == b'?') {
            Some(i) if rest[i] == b'/' => &rest[i..],
            _ => b"/",
        }
    };
    let pq = std::str::from_utf8(pq).ok()?;
    Some(match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    })
}

/// The credential for this request: the one `Authorization` header, or — only on a route that opts in for
/// legacy firmware, and only when no header was sent — the query parameter.
fn credential<'a>(
    head: &RequestHead,
    bytes: &'a [u8],
    route: &Route,
    query: Option<&'a str>,
) -> Result<&'a str, Denial> {
    let mut found = None;
    for f in &head.fields {
        if f.name.get(bytes).eq_ignore_ascii_case(b"authorization") {
            if found.is_some() {
                return Err(Denial::Multiple);
            }
            found = Some(f.value.get(bytes));
        }
    }
    match (found, &route.query_token_param) {
        (Some(v), _) => auth::parse_bearer(v),
        (None, Some(param)) => match query_value(query, param) {
            Some("") => Err(Denial::Malformed("the token parameter is empty")),
            Some(t) => Ok(t),
            None => Err(Denial::Missing),
        },
        (None, None) => Err(Denial::Missing),
    }
}

fn error_body(error: &str, detail: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": error, "detail": detail })).expect("json")
}

/// `x-user-id`, `X_User_Id` and `x_user-id` are the same header to many upstream frameworks: compare
/// names ignoring case with `_` read as `-`.
fn same_header(name: &[u8], target: &[u8]) -> bool {
    fn norm(b: u8) -> u8 {
        if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    }
    name.len() == target.len() && name.iter().zip(target).all(|(&a, &b)| norm(a) == norm(b))
}

/// The value of `key` in a query string, if present (no decoding: tokens are plain base62).
fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if pair == key => Some(""),
            _ => None,
        })
}

/// Appends the query with every `key` parameter removed (and the `?` too when nothing is left).
fn push_query_without(out: &mut Vec<u8>, query: &str, key: &str) {
    let mut first = true;
    for pair in query.split('&') {
        let k = pair.split_once('=').map_or(pair, |(k, _)| k);
        if k == key || pair.is_empty() {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        out.extend_from_slice(pair.as_bytes());
        first = false;
    }
}

/// Writes the head of the request for the upstream into `out` (public so that the benches measure the real
/// code): origin-form target (without a legacy token parameter), every field except `Authorization`,
/// hop-by-hop fields and client copies of injected or configured-stripped headers; `X-Forwarded-For`/
/// `-Proto` appended to only for trusted peers and replaced otherwise; then the framing, the identity
/// headers and, if the route signs, the signature.
#[allow(clippy::too_many_arguments)]
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    bytes: &[u8],
    (path, query): (&str, Option<&str>),
    route: &Route,
    entry: Option<&Entry>,
    peer: &str,
    trusted: bool,
    now: u64,
) {
    let method = head.method.get(bytes);
    out.extend_from_slice(method);
    out.push(b' ');
    let target_start = out.len();
    out.extend_from_slice(path.as_bytes());
    match (query, &route.query_token_param) {
        (Some(q), Some(param)) => push_query_without(out, q, param),
        (Some(q), None) => {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        (None, _) => {}
    }
    let target_end = out.len();
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let mut host = false;
    let mut client_proto = false;
    for f in &head.fields {
        let name = f.name.get(bytes);
        let value = f.value.get(bytes);
        if name.eq_ignore_ascii_case(b"authorization")
            || name.eq_ignore_ascii_case(b"expect")
            || http1::is_hop_by_hop(name)
            || route
                .identity_headers
                .iter()
                .chain(route.strip_request_headers.iter())
                .any(|h| same_header(name, h.as_str().as_bytes()))
            || head.named_by_connection(bytes, name)
        {
            continue;
        }
        if same_header(name, b"x-forwarded-for") {
            // Written below: the chain from a trusted proxy, then the peer.
            continue;
        }
        if same_header(name, b"x-forwarded-proto") {
            if trusted && !client_proto {
                client_proto = true;
                http1::push_field(out, b"X-Forwarded-Proto", value);
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            host = true;
        }
        http1::push_field(out, name, value);
    }
    // X-Forwarded-For: one field, the trusted proxy's chain (all its copies, in order) and then the peer.
    let xff_start = out.len();
    out.extend_from_slice(b"X-Forwarded-For: ");
    let mut empty = true;
    if trusted {
        for f in head
            .fields
            .iter()
            .filter(|f| same_header(f.name.get(bytes), b"x-forwarded-for"))
        {
            let v = f.value.get(bytes).trim_ascii();
            if !v.is_empty() {
                if !empty {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(v);
                empty = false;
            }
        }
    }
    if !peer.is_empty() {
        if !empty {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(peer.as_bytes());
        empty = false;
    }
    if empty {
        out.truncate(xff_start);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    if !client_proto {
        out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
    }
    if !host {
        let addr = route.upstream.addr.to_string();
        http1::push_field(out, b"Host", addr.as_bytes());
    }
    match head.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            http1::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    if let Some(entry) = entry {
        http1::push_field(
            out,
            route.user_id_header.as_str().as_bytes(),
            entry.user().as_bytes(),
        );
        if let Some(h) = &route.token_id_header {
            http1::push_field(out, h.as_str().as_bytes(), entry.token_id_text());
        }
        if let Some(secret) = &route.sign_secret {
            let pq = std::str::from_utf8(&out[target_start..target_end])
                .unwrap_or("/")
                .to_owned();
            let method = std::str::from_utf8(method).unwrap_or("");
            let sig = signing::sign(secret, entry.user(), entry.token_id, now, method, &pq);
            http1::push_field(out, signing::SIGNATURE_HEADER.as_bytes(), sig.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the response head for the client: the upstream's status and fields less hop-by-hop ones, then
/// the gateway's own framing and connection fields.
fn write_response_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    bytes: &[u8],
    chunked_out: bool,
    keep_client: bool,
    client_minor: u8,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    http1::push_decimal(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.get(bytes));
    out.extend_from_slice(b"\r\n");
    for f in &resp.fields {
        let name = f.name.get(bytes);
        if name.eq_ignore_ascii_case(b"content-length") {
            // Kept for bodiless answers to HEAD and for 304s (the length of the representation); a body's
            // own length is written below.
            if resp.framing == Framing::None && resp.status != 204 {
                http1::push_field(out, name, f.value.get(bytes));
            }
            continue;
        }
        if http1::is_hop_by_hop(name) || resp.named_by_connection(bytes, name) {
            continue;
        }
        http1::push_field(out, name, f.value.get(bytes));
    }
    match resp.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            http1::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked if chunked_out => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    if !keep_client {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the head of a JSON answer made by the gateway.
fn write_error_head(
    out: &mut Vec<u8>,
    status: u16,
    body: &[u8],
    challenge: Option<&str>,
    retry_after: Option<u64>,
    keep: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    http1::push_decimal(out, u64::from(status));
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(
        b"\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: ",
    );
    http1::push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if let Some(c) = challenge {
        http1::push_field(out, b"www-authenticate", c.as_bytes());
    }
    if let Some(s) = retry_after {
        out.extend_from_slice(b"retry-after: ");
        http1::push_decimal(out, s);
        out.extend_from_slice(b"\r\n");
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_token_helpers() {
        assert_eq!(
            query_value(Some("a=1&api_token=tg_x&b=2"), "api_token"),
            Some("tg_x")
        );
        assert_eq!(query_value(Some("api_tokenx=1"), "api_token"), None);
        assert_eq!(query_value(None, "api_token"), None);
        let without = |q: &str| {
            let mut out = b"/p".to_vec();
            push_query_without(&mut out, q, "api_token");
            String::from_utf8(out).unwrap()
        };
        assert_eq!(without("a=1&api_token=x&b=2"), "/p?a=1&b=2");
        assert_eq!(without("api_token=x"), "/p");
        assert_eq!(without("api_token=x&api_token=y&c"), "/p?c");
    }

    #[test]
    fn header_names_compare_like_upstream_frameworks_do() {
        assert!(same_header(b"x-user-id", b"x-user-id"));
        assert!(same_header(b"x_user_id", b"x-user-id"));
        assert!(same_header(b"X_User-Id", b"x-user-id"));
        assert!(!same_header(b"x-user-idx", b"x-user-id"));
        assert!(!same_header(b"x-userid", b"x-user-id"));
    }

    #[test]
    fn request_targets() {
        assert_eq!(origin_form(b"/a/b?c=d"), Some(("/a/b", Some("c=d"))));
        assert_eq!(origin_form(b"http://h:1/a?x"), Some(("/a", Some("x"))));
        assert_eq!(origin_form(b"HTTPS://h"), Some(("/", None)));
        assert_eq!(origin_form(b"http://h?q"), Some(("/", None)));
        assert_eq!(origin_form(b"*"), None);
        assert_eq!(origin_form(b"h:443"), None);
        assert_eq!(authority(b"http://h:1/a?x"), Some(&b"h:1"[..]));
        assert_eq!(authority(b"HTTP://h?x"), Some(&b"h"[..]));
        assert_eq!(authority(b"/a"), None);
    }
}
