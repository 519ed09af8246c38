//! The pingora `ProxyHttp` implementation: wires routes, auth, header rewriting and metrics into the
//! request phases. It holds no business rules of its own; each hook does one small thing.

use crate::access_log::{AccessLog, Record};
use crate::auth::{self, Denial, Outcome};
use crate::clock;
use crate::index::{Entry, Index};
use crate::metrics::{RouteMetrics, UpstreamError};
use crate::routes::{check_path, Route, RouteTable};
use crate::signing;
use crate::throttle::Throttle;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The gateway's proxy logic, shared by all worker threads.
pub struct Gateway {
    /// The current route table; swapped whole on reload, read once per request.
    pub routes: Arc<ArcSwap<RouteTable>>,
    /// The token index (lock-free reads).
    pub index: Arc<Index>,
    /// Collectors for requests that matched no route.
    pub unrouted: RouteMetrics,
    /// Where finished requests are logged (a non-blocking queue).
    pub access_log: AccessLog,
    /// Idle time allowed between requests on a client connection, in seconds.
    pub keepalive_secs: u64,
    /// Failed-authentication counters per client address (touched only on failures).
    pub throttle: Throttle,
    /// Requests in flight, when `max_in_flight` is set (an atomic shared by all workers, so it is only
    /// counted when a limit is configured).
    pub in_flight: Option<(Arc<AtomicUsize>, usize)>,
}

/// Decrements the in-flight count when the request's context is dropped, whatever path it ended on.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one request learned on its way through the phases.
pub struct RequestCtx {
    start: Instant,
    route: Option<Arc<Route>>,
    entry: Option<Arc<Entry>>,
    outcome: Outcome,
    upstream_error: Option<UpstreamError>,
    /// Request body bytes seen so far (for `max_body_bytes`).
    body_bytes: u64,
    /// Held while the request counts against `max_in_flight`.
    _in_flight: Option<InFlight>,
}

/// Writes a small JSON response and ends the request. Keep-alive is switched off first when the request
/// may carry an unread body, so that pingora does not drain (possibly gigabytes of) upload to reuse the
/// connection.
pub async fn respond_json(
    session: &mut Session,
    status: u16,
    challenge: Option<&str>,
    body: Vec<u8>,
) -> Result<()> {
    if !session.as_downstream_mut().is_body_empty() {
        session.set_keepalive(None);
    }
    let mut h = ResponseHeader::build(status, Some(5))?;
    h.insert_header(CONTENT_TYPE, "application/json")?;
    h.insert_header(CONTENT_LENGTH, body.len())?;
    h.insert_header(CACHE_CONTROL, "no-store")?;
    if let Some(c) = challenge {
        h.insert_header(WWW_AUTHENTICATE, c)?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

fn error_body(error: &str, detail: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": error, "detail": detail })).expect("json")
}

/// `x-user-id`, `X_User_Id` and `x_user-id` are the same header to many upstream frameworks: compare
/// names ignoring case with `_` read as `-`.
fn same_header(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name.bytes().zip(target.bytes()).all(|(a, b)| {
            let a = if a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            };
            let b = if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            };
            a == b
        })
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

/// `path?query` with every `key` parameter removed (and the `?` too when nothing is left).
fn without_query_param(path: &str, query: Option<&str>, key: &str) -> String {
    let mut out = String::with_capacity(path.len() + query.map_or(0, str::len) + 1);
    out.push_str(path);
    let mut first = true;
    for pair in query.unwrap_or("").split('&') {
        let k = pair.split_once('=').map_or(pair, |(k, _)| k);
        if k == key || pair.is_empty() {
            continue;
        }
        out.push(if first { '?' } else { '&' });
        out.push_str(pair);
        first = false;
    }
    out
}

fn classify(e: &Error) -> UpstreamError {
    match e.etype() {
        ErrorType::ConnectRefused | ErrorType::ConnectNoRoute => UpstreamError::ConnectRefused,
        ErrorType::ConnectTimedout => UpstreamError::ConnectTimeout,
        ErrorType::ReadTimedout => UpstreamError::ReadTimeout,
        ErrorType::WriteTimedout => UpstreamError::WriteTimeout,
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            UpstreamError::Reset
        }
        _ => UpstreamError::Other,
    }
}

impl Gateway {
    fn peer_ip(session: &Session) -> Option<IpAddr> {
        session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
    }

    /// The credential for this request: the one `Authorization` header, or — only on a route that opts
    /// in for legacy firmware, and only when no header was sent — the query parameter.
    fn credential<'a>(session: &'a Session, route: &Route) -> Result<&'a str, Denial> {
        let req = session.req_header();
        match (auth::bearer_token(&req.headers), &route.query_token_param) {
            (Err(Denial::Missing), Some(param)) if !req.headers.contains_key(AUTHORIZATION) => {
                match query_value(req.uri.query(), param) {
                    Some("") => Err(Denial::Malformed("the token parameter is empty")),
                    Some(t) => Ok(t),
                    None => Err(Denial::Missing),
                }
            }
            (result, _) => result,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules: the gateway never compresses, and pingora's default (a disabled compression
    /// module) would still cost a per-request context and filter calls.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            route: None,
            entry: None,
            outcome: Outcome::None,
            upstream_error: None,
            body_bytes: 0,
            _in_flight: None,
        }
    }

    /// Finds the route and decides. Refusals (400 bad path, 404 no route, 400/401/403 auth) are written
    /// here and end the request (`Ok(true)`) before any upstream is chosen. An allowed request leaves the
    /// route and token entry in `ctx` and counts one use in memory.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some((count, max)) = &self.in_flight {
            let now_in_flight = count.fetch_add(1, Ordering::Relaxed) + 1;
            ctx._in_flight = Some(InFlight(count.clone()));
            if now_in_flight > *max {
                ctx.outcome = Outcome::None;
                session.set_keepalive(None);
                return respond_busy(session).await.map(|_| true);
            }
        }
        let route = {
            let table = self.routes.load();
            let path = session.req_header().uri.path();
            if let Err(e) = check_path(path) {
                respond_json(
                    session,
                    400,
                    None,
                    error_body("invalid_request", e.describe()),
                )
                .await?;
                return Ok(true);
            }
            match table.find(path) {
                Some(r) => r.clone(),
                None => {
                    respond_json(
                        session,
                        404,
                        None,
                        error_body("not_found", "no route for this path"),
                    )
                    .await?;
                    return Ok(true);
                }
            }
        };
        // Idle keep-alive connections are closed after `keepalive_timeout` (pingora's default is never).
        if session.get_keepalive() == Some(0) {
            session.set_keepalive(Some(self.keepalive_secs));
        }
        if let Some(t) = route.request_timeout {
            session.set_read_timeout(Some(t));
        }
        ctx.route = Some(route.clone());
        if route.auth == crate::config::AuthMode::None {
            ctx.outcome = Outcome::Public;
        } else {
            let now = clock::now();
            let decision = Self::credential(session, &route).and_then(|t| {
                auth::authorize(&self.index, t, route.required_scope.as_deref(), now)
            });
            match decision {
                Ok(entry) => {
                    entry.record_use(now);
                    ctx.entry = Some(entry);
                    ctx.outcome = Outcome::Ok;
                }
                Err(denial) => {
                    ctx.outcome = denial.outcome();
                    let counts = !matches!(denial, Denial::Missing | Denial::InsufficientScope(_));
                    if let (true, Some(ip)) = (counts, Self::peer_ip(session)) {
                        if let Some(retry_after) = self.throttle.failure(ip, now) {
                            ctx.outcome = Outcome::Throttled;
                            respond_throttled(session, retry_after).await?;
                            return Ok(true);
                        }
                    }
                    deny(session, &denial).await?;
                    return Ok(true);
                }
            }
        }
        if let Some(max) = route.max_body_bytes {
            let declared = session
                .req_header()
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                let detail =
                    format!("the request body is larger than this route's limit of {max} bytes");
                respond_json(session, 413, None, error_body("payload_too_large", &detail)).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Counts request body bytes: past `max_body_bytes` (a chunked body without a declared length) the
    /// request fails with 413 and the upstream connection is dropped before it sees the rest; past
    /// `request_timeout` it fails with 408.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()>
    where
        RequestCtx: Send + Sync,
    {
        let Some(route) = &ctx.route else {
            return Ok(());
        };
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
        }
        if let Some(max) = route.max_body_bytes {
            if ctx.body_bytes > max {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than max_body_bytes",
                );
            }
        }
        if let Some(t) = route.request_timeout {
            if !end_of_stream && ctx.start.elapsed() > t {
                return Error::e_explain(
                    ErrorType::HTTPStatus(408),
                    "request body not received within request_timeout",
                );
            }
        }
        Ok(())
    }

    /// Picks the route's upstream: a clone of the peer built when the configuration loaded.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        match &ctx.route {
            Some(r) => Ok(Box::new(r.peer.clone())),
            None => Error::e_explain(
                ErrorType::InternalError,
                "no route chosen before upstream_peer",
            ),
        }
    }

    /// Rewrites the forwarded request: the credential is removed, every client copy of an injected or
    /// configured-stripped header is removed (any case, `_` for `-`), then the identity headers are
    /// inserted once. `X-Forwarded-For`/`-Proto` are appended to only for trusted peers, else replaced.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = &ctx.route else {
            return Error::e_explain(
                ErrorType::InternalError,
                "no route in upstream_request_filter",
            );
        };
        req.remove_header(&AUTHORIZATION);
        // Absolute-form targets are forwarded in origin form: the path that matched is the path sent.
        if req.uri.scheme().is_some() || req.uri.authority().is_some() {
            let pq = req
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string();
            req.set_uri(
                pq.parse().map_err(|_| {
                    Error::explain(ErrorType::InvalidHTTPHeader, "bad request target")
                })?,
            );
        }
        if let Some(param) = &route.query_token_param {
            if query_value(req.uri.query(), param).is_some() {
                let pq = without_query_param(req.uri.path(), req.uri.query(), param);
                req.set_uri(pq.parse().map_err(|_| {
                    Error::explain(ErrorType::InvalidHTTPHeader, "bad request target")
                })?);
            }
        }
        let peer_ip = Self::peer_ip(session);
        let trusted = match peer_ip {
            Some(ip) => self
                .routes
                .load()
                .trusted_proxies
                .iter()
                .any(|n| n.contains(ip)),
            None => false,
        };
        rewrite_upstream_request(
            req,
            route,
            ctx.entry.as_deref(),
            peer_ip,
            trusted,
            clock::now(),
        )
    }

    /// Answers a failed proxy attempt with a JSON 502 (refused, reset, bad response) or 504 (timeout),
    /// unless a response was already under way.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        let code = match e.esource() {
            ErrorSource::Upstream => {
                let kind = classify(e);
                ctx.upstream_error = Some(kind);
                match kind {
                    UpstreamError::ConnectTimeout
                    | UpstreamError::ReadTimeout
                    | UpstreamError::WriteTimeout => 504,
                    _ => 502,
                }
            }
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                ErrorType::WriteTimedout => 0,
                // The client stopped sending its body: 408 if it is still listening.
                ErrorType::ReadTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                ErrorType::HTTPStatus(c) => *c,
                _ => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            let (error, detail) = match code {
                502 => ("bad_gateway", "the upstream could not be reached or failed"),
                504 => ("gateway_timeout", "the upstream did not answer in time"),
                400 => ("invalid_request", "the request could not be read"),
                408 => (
                    "request_timeout",
                    "the request body was not received in time",
                ),
                413 => (
                    "payload_too_large",
                    "the request body is larger than this route allows",
                ),
                _ => ("internal_error", "the gateway failed to handle the request"),
            };
            session.set_keepalive(None);
            if let Err(err) = respond_json(session, code, None, error_body(error, detail)).await {
                log::debug!("could not send {code} to the client: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// What pingora writes into its own error and warning lines about a request: method, path and host,
    /// never the query (a legacy route may carry a token there).
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        format!("{} {}, Host: {host}", req.method, req.uri.path())
    }

    /// Records metrics for the finished request.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx)
    where
        RequestCtx: Send + Sync,
    {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let m = ctx
            .route
            .as_ref()
            .map(|r| &r.metrics)
            .unwrap_or(&self.unrouted);
        m.count(status, ctx.outcome);
        m.duration.observe(ctx.start.elapsed().as_secs_f64());
        let down = session.as_downstream();
        m.bytes_in.inc_by(down.body_bytes_read() as u64);
        m.bytes_out.inc_by(down.body_bytes_sent() as u64);
        if let Some(kind) = ctx.upstream_error {
            m.upstream_error(kind);
        }
        if self.access_log.enabled() {
            let req = session.req_header();
            self.access_log.log(Record {
                at: SystemTime::now(),
                client: Self::peer_ip(session),
                method: req.method.clone(),
                path: req.uri.path().to_string(),
                route: ctx.route.as_ref().map(|r| r.name.clone()),
                status,
                auth: ctx.outcome.as_str(),
                duration: ctx.start.elapsed(),
                bytes_in: down.body_bytes_read() as u64,
                bytes_out: down.body_bytes_sent() as u64,
                token_id: ctx.entry.as_ref().map(|e| e.token_id),
                user: ctx.entry.as_ref().map(|e| e.user_value()),
            });
        }
    }
}

/// Rewrites a request for the upstream (the part of `upstream_request_filter` that needs no session, public
/// so that the benches measure the real code): every client copy of an injected or configured-stripped
/// header is removed (any case, `_` for `-`), `X-Forwarded-For`/`-Proto` are appended to only for trusted
/// peers and replaced otherwise, then the identity headers (and the signature, if the route signs) are
/// inserted once. The credential itself is removed by the caller.
pub fn rewrite_upstream_request(
    req: &mut RequestHeader,
    route: &Route,
    entry: Option<&Entry>,
    peer_ip: Option<IpAddr>,
    trusted: bool,
    now: u64,
) -> Result<()> {
    let mut remove: Vec<HeaderName> = Vec::new();
    for name in req.headers.keys() {
        let n = name.as_str();
        if route
            .identity_headers
            .iter()
            .chain(route.strip_request_headers.iter())
            .any(|h| same_header(n, h.as_str()))
        {
            remove.push(name.clone());
        }
    }
    for name in &remove {
        req.remove_header(name);
    }

    let mut xff = String::new();
    if trusted {
        for v in req.headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(s) = v.to_str() {
                if !xff.is_empty() {
                    xff.push_str(", ");
                }
                xff.push_str(s.trim());
            }
        }
    }
    if let Some(ip) = peer_ip {
        if !xff.is_empty() {
            xff.push_str(", ");
        }
        use std::fmt::Write;
        let _ = write!(xff, "{ip}");
    }
    req.remove_header(&X_FORWARDED_FOR);
    if !xff.is_empty() {
        req.insert_header(X_FORWARDED_FOR.clone(), xff)?;
    }
    if !(trusted && req.headers.contains_key(&X_FORWARDED_PROTO)) {
        req.insert_header(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"))?;
    }

    if let Some(entry) = entry {
        req.insert_header(route.user_id_header.clone(), entry.user_value())?;
        if let Some(h) = &route.token_id_header {
            req.insert_header(h.clone(), entry.token_id_value())?;
        }
        if let Some(secret) = &route.sign_secret {
            let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let user = entry.user();
            let sig = signing::sign(secret, user, entry.token_id, now, req.method.as_str(), pq);
            req.insert_header(signing::SIGNATURE_HEADER, sig)?;
        }
    }
    Ok(())
}

/// A JSON refusal that asks the client to come back later (429, 503): `Retry-After`, connection closed.
async fn respond_retry_later(
    session: &mut Session,
    status: u16,
    retry_after: u64,
    body: Vec<u8>,
) -> Result<()> {
    session.set_keepalive(None);
    let mut h = ResponseHeader::build(status, Some(5))?;
    h.insert_header(CONTENT_TYPE, "application/json")?;
    h.insert_header(CONTENT_LENGTH, body.len())?;
    h.insert_header(CACHE_CONTROL, "no-store")?;
    h.insert_header(http::header::RETRY_AFTER, retry_after)?;
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// 429 for an address over its failure limit.
async fn respond_throttled(session: &mut Session, retry_after: u64) -> Result<()> {
    let detail = "too many failed authentications from this address; retry later";
    respond_retry_later(
        session,
        429,
        retry_after,
        error_body("too_many_requests", detail),
    )
    .await
}

/// 503 when `max_in_flight` requests are already being handled.
async fn respond_busy(session: &mut Session) -> Result<()> {
    let detail = "the gateway is handling as many requests as it is allowed to; retry shortly";
    respond_retry_later(session, 503, 1, error_body("overloaded", detail)).await
}

/// Writes the RFC 6750 answer for a denial.
async fn deny(session: &mut Session, denial: &Denial) -> Result<()> {
    respond_json(
        session,
        denial.status(),
        Some(&denial.challenge()),
        denial.body(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::same_header;

    #[test]
    fn query_token_helpers() {
        use super::{query_value, without_query_param};
        assert_eq!(
            query_value(Some("a=1&api_token=tg_x&b=2"), "api_token"),
            Some("tg_x")
        );
        assert_eq!(query_value(Some("api_tokenx=1"), "api_token"), None);
        assert_eq!(query_value(None, "api_token"), None);
        assert_eq!(
            without_query_param("/p", Some("a=1&api_token=x&b=2"), "api_token"),
            "/p?a=1&b=2"
        );
        assert_eq!(
            without_query_param("/p", Some("api_token=x"), "api_token"),
            "/p"
        );
        assert_eq!(
            without_query_param("/p", Some("api_token=x&api_token=y&c"), "api_token"),
            "/p?c"
        );
    }

    #[test]
    fn header_names_compare_like_upstream_frameworks_do() {
        assert!(same_header("x-user-id", "x-user-id"));
        assert!(same_header("x_user_id", "x-user-id"));
        assert!(same_header("X_User-Id", "x-user-id"));
        assert!(!same_header("x-user-idx", "x-user-id"));
        assert!(!same_header("x-userid", "x-user-id"));
    }
}
