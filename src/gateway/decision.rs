//! The decision: who gets in. One function, [`Gate::decide`], read top to bottom, that every transport
//! calls with the facts of one request (HTTP/1 over TCP, the same over TLS, later the WebSocket upgrade):
//!
//! method → request target → path check → route → TLS-only route → credential → token (format, digest,
//! index, status, expiry, certificate binding, scope) → throttle of failures → body limit ⇒
//! [`Verdict::Forward`] or [`Verdict::Refuse`].
//!
//! No I/O and no `.await`: it reads the route table it is given, the token index and the clock value
//! passed in, and updates only in-memory counters (a token's use count, an address's failure count).
//! What the transport does with the verdict (write an answer, open an upstream connection, stream the
//! body) is not its business; how the forwarded head is rewritten is described by [`Rewrite`].
//!
//! A stream that outlives its request (a WebSocket tunnel, an upload) is asked the same token rules again
//! at every tick, by the digest it presented ([`Forward::digest`]): see [`super::recheck`].

// A refusal travels by value from the step that refuses to the verdict: boxing it would add an
// allocation to every refused request for a move of 152 bytes.
#![allow(clippy::result_large_err)]

use super::answer::Answer;
use super::auth::{self, Denial, Outcome};
use super::limits::{self, LimitKind, Over, RateLimitField};
use super::paths::{authority, check_path, origin_form};
use super::routes::{Route, RouteTable};
use super::throttle::Throttle;
use crate::config::AuthMode;
use crate::tokens::format::Digest;
use crate::tokens::index::{Entry, InFlight, Index};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// What the decision needs to know about one request; the transport gathers it from the parsed head.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub method: &'a [u8],
    /// The request target as sent (origin form or absolute form).
    pub target: &'a [u8],
    /// The value of the (one) `Host` field, trimmed.
    pub host: Option<&'a [u8]>,
    /// The first `Authorization` field value, and how many there were.
    pub authorization: Option<&'a [u8]>,
    pub authorizations: usize,
    /// The declared body length (`Content-Length`), if any.
    pub content_length: Option<u64>,
    /// The client's address.
    pub peer: Option<IpAddr>,
    /// Set when the request arrived over TLS (the listener's handshake facts).
    pub tls: Option<&'a TlsPeer>,
}

/// What the TLS handshake established about a client connection (computed once per connection).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPeer {
    /// The SHA-256 of the client certificate's DER, when the client sent one that chains to `client_ca`.
    pub client_cert_sha256: Option<[u8; 32]>,
}

/// The gateway state the decision reads besides the route table: the token index and the failure
/// throttle.
pub struct Gate {
    pub index: Arc<Index>,
    pub throttle: Throttle,
    /// `[gateway] max_in_flight_per_token`: requests and tunnels one token may have open at once on
    /// this node (beyond, 429 `concurrency_limited`), so one leaked or looping device cannot hold every
    /// slot of `max_in_flight` or `max_connections` for everyone else.
    pub max_in_flight_per_token: u32,
}

/// What to do with a request.
pub enum Verdict<'a> {
    Forward(Forward<'a>),
    Refuse(Refusal),
}

/// Let the request through to `route`'s upstream, rewritten as `rewrite` says.
pub struct Forward<'a> {
    pub route: &'a Arc<Route>,
    /// The token holder (`None` on a public route): the identity headers name it.
    pub principal: Option<Arc<Entry>>,
    /// The digest of the credential the request was let through with (`None` on a public route): an
    /// open stream (tunnel, upload) is re-checked by it, see [`Gate::recheck`].
    pub digest: Option<Digest>,
    /// `ok`, or `public` on a route without auth.
    pub outcome: Outcome,
    /// `RateLimit` for the response, when the route asks for it (`rate_limit_headers`).
    pub rate_limit: Option<RateLimitField>,
    pub rewrite: Rewrite<'a>,
    /// The token's slot among its `max_in_flight_per_token`: hold it until the exchange (or the
    /// tunnel) ends.
    pub in_flight: Option<InFlight>,
}

/// How the forwarded head differs from the client's, apart from what every forwarded head loses
/// (credential, hop-by-hop fields, client copies of identity headers).
#[derive(Debug, Clone, Copy)]
pub struct Rewrite<'a> {
    /// The target in origin form: the path that matched, and the query (without a legacy token
    /// parameter; see [`Route::query_token_param`]).
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The peer is a trusted proxy: its `X-Forwarded-For`/`-Proto` are kept and appended to.
    pub trusted_peer: bool,
    /// The request arrived over TLS: `X-Forwarded-Proto: https` (unless a trusted proxy said otherwise).
    pub https: bool,
    /// The decision's time (unix seconds), the signature's timestamp.
    pub at: u64,
}

/// Answer the request from the gateway itself.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    /// The JSON `error` code.
    pub error: &'static str,
    /// The JSON `detail`: never a credential.
    pub detail: Cow<'static, str>,
    /// The `WWW-Authenticate` challenge (RFC 6750), for 400/401/403 on a bearer route.
    pub challenge: Option<String>,
    /// `Retry-After` in seconds (429, 503).
    pub retry_after: Option<u64>,
    /// The connection may carry another request (if the refused request's body is already buffered):
    /// false when the client is misbehaving or the body may be large.
    pub reusable: bool,
    /// The auth outcome, for metrics and the access log.
    pub outcome: Outcome,
    /// The route, when one matched (metrics).
    pub route: Option<usize>,
    /// The scope a 403 names in its body.
    pub scope: Option<String>,
    /// The group or license a 403 names in its body (`group:NAME`, `license:NAME`).
    pub missing: Option<String>,
    /// More fields of the answer (`RateLimit-Policy`, `RateLimit`).
    pub headers: Vec<(&'static str, String)>,
    /// Which limit refused it (429), for metrics.
    pub limit: Option<LimitKind>,
    /// The token, when the refusal came after it was authenticated (a limit, a body too large): the
    /// access log names it, so an operator sees which device is over its limit. Never in the answer.
    pub principal: Option<Arc<Entry>>,
}

impl Refusal {
    /// The 503 for a request over `[gateway] max_in_flight` (any transport): retry in a second.
    pub fn too_many_in_flight() -> Refusal {
        let mut r = Refusal::new(
            Answer::Overloaded,
            "the gateway is handling as many requests as it is allowed to; retry shortly",
        );
        r.retry_after = Some(1);
        r
    }

    /// The answer `answer` of the catalogue ([`Answer`]), with `detail`.
    pub fn new(answer: Answer, detail: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            status: answer.status(),
            error: answer.code(),
            detail: detail.into(),
            challenge: None,
            retry_after: None,
            reusable: true,
            outcome: Outcome::None,
            route: None,
            scope: None,
            missing: None,
            principal: None,
            headers: Vec::new(),
            limit: None,
        }
    }

    /// The connection closes after the answer.
    pub fn closing(mut self) -> Refusal {
        self.reusable = false;
        self
    }

    fn on(mut self, route: &Route) -> Refusal {
        self.route = Some(route.index);
        self
    }

    /// The RFC 6750 answer to a failed authentication, with its challenge.
    pub fn denial(denial: &Denial, detail: impl Into<Cow<'static, str>>) -> Refusal {
        let mut r = Refusal::new(denial.answer(), detail);
        // A missing group or license is no matter of the credential: a plain 403, no challenge.
        r.challenge = (denial.answer().challenge() == super::answer::Challenge::Bearer)
            .then(|| denial.challenge());
        r.outcome = denial.outcome();
        if let Denial::InsufficientScope(s) = denial {
            r.scope = Some(s.clone());
        }
        r.missing = denial.missing();
        r
    }

    fn denied(denial: &Denial, route: &Route) -> Refusal {
        Refusal::denial(denial, denial.description()).on(route)
    }

    /// The head of an answer whose status and body a door's handler wrote (see `transport::door`).
    pub fn door(status: u16, retry_after: Option<u64>) -> Refusal {
        let mut r = Refusal::new(Answer::InvalidRequest, "");
        (r.status, r.error, r.retry_after) = (status, "", retry_after);
        r
    }

    /// The JSON body: `{"error", "detail"}` (plus `scope` for 403, and the request's id when given).
    pub fn body(&self, request_id: Option<&str>) -> Vec<u8> {
        super::answer::ErrorBody {
            error: self.error,
            detail: &self.detail,
            scope: self.scope.as_deref(),
            missing: self.missing.as_deref(),
            request_id,
        }
        .to_vec()
    }
}

impl Gate {
    /// Decides what happens to `req` at unix time `now`, against the route table of this request: the
    /// steps below, in this order, each of which may refuse.
    pub fn decide<'a>(&self, table: &'a RouteTable, req: &Request<'a>, now: u64) -> Verdict<'a> {
        let admit = || -> Result<Forward<'a>, Refusal> {
            let (path, query) = target(req)?;
            let route = route(table, req, path)?;
            let (principal, digest) = self.authenticate(route, req, query, now)?;
            let known = |mut r: Refusal| {
                r.principal = principal.clone();
                r
            };
            body_limit(route, req, principal.is_some()).map_err(known)?;
            let (in_flight, rate_limit) = match &principal {
                Some(entry) => self.token_limits(table, route, entry, now).map_err(known)?,
                None => (None, None),
            };
            Ok(Forward {
                route,
                outcome: if principal.is_some() {
                    Outcome::Ok
                } else {
                    Outcome::Public
                },
                principal,
                digest,
                rate_limit,
                rewrite: Rewrite {
                    path,
                    query,
                    trusted_peer: table.trusts(req.peer),
                    https: req.tls.is_some(),
                    at: now,
                },
                in_flight,
            })
        };
        match admit() {
            Ok(forward) => Verdict::Forward(forward),
            Err(refusal) => Verdict::Refuse(refusal),
        }
    }

    /// The token on a bearer route (none on a public one): credential → format → digest → index →
    /// status, expiry, certificate binding, scope. A failure may count towards the address's throttle.
    fn authenticate<'a>(
        &self,
        route: &Route,
        req: &Request<'a>,
        query: Option<&'a str>,
        now: u64,
    ) -> Result<(Option<Arc<Entry>>, Option<Digest>), Refusal> {
        match route.auth {
            AuthMode::None => Ok((None, None)),
            AuthMode::Bearer => {
                let client_cert = req.tls.and_then(|t| t.client_cert_sha256.as_ref());
                credential(req, route, query)
                    .and_then(auth::digest)
                    .and_then(|digest| {
                        auth::authorize_digest(
                            &self.index,
                            &digest,
                            required(route),
                            client_cert,
                            now,
                        )
                        .map(|entry| (Some(entry), Some(digest)))
                    })
                    .map_err(|denial| self.denied(&denial, route, req.peer, now))
            }
        }
    }

    /// The token's share, once it is known: a slot among its requests in flight (before the rate limits:
    /// a request refused here has not spent the token's rate or quota), then the token's and the route's
    /// rates and quota; then the use is counted.
    fn token_limits(
        &self,
        table: &RouteTable,
        route: &Route,
        entry: &Entry,
        now: u64,
    ) -> Result<(Option<InFlight>, Option<RateLimitField>), Refusal> {
        let Some(slot) = entry.enter(self.max_in_flight_per_token) else {
            return Err(too_many_in_flight(route, self.max_in_flight_per_token));
        };
        let mut rate_limit = None;
        if entry.limits.is_some() || route.limits.any() {
            let mono = crate::clock::mono_nanos();
            rate_limit = limits::check(
                &table.limiters,
                route.index,
                &route.limits,
                entry,
                now,
                mono,
            )
            .map_err(|over| limited(route, over))?;
        }
        entry.record_use(now);
        Ok((Some(slot), rate_limit))
    }

    /// The answer to a failed authentication: the RFC 6750 one, or 429 once the client's address has
    /// failed too often (failures only; a missing credential or a missing scope is not a guess).
    fn denied(&self, denial: &Denial, route: &Route, peer: Option<IpAddr>, now: u64) -> Refusal {
        let counts = denial.is_failure();
        if let (true, Some(ip)) = (counts, peer) {
            if let Some(retry_after) = self.throttle.failure(ip, now) {
                let mut r = Refusal::new(
                    Answer::TooManyFailures,
                    "too many failed authentications from this address; retry later",
                )
                .closing()
                .on(route);
                r.retry_after = Some(retry_after);
                r.outcome = Outcome::Throttled;
                return r;
            }
        }
        Refusal::denied(denial, route)
    }
}

/// What `route` asks of a token: its scope, with the roles that grant it in the route table `route`
/// belongs to, its group and its license.
pub(super) fn required(route: &Route) -> auth::Requirements<'_> {
    auth::Requirements {
        scope: route.required_scope.as_deref().map(|scope| auth::Required {
            scope,
            roles: &route.scope_roles,
        }),
        group: route.required_group.as_deref(),
        license: route.required_license.as_deref(),
    }
}

/// A `tls_only` route asked over plain TCP.
pub(super) fn needs_tls(route: &Route, tls: Option<&TlsPeer>) -> bool {
    route.tls_only && tls.is_none()
}

/// The 429 for a request over a limit: `Retry-After`, the policies and what is left of them.
fn limited(route: &Route, over: Over) -> Refusal {
    let (answer, detail) = match over.kind {
        LimitKind::Quota => (
            Answer::QuotaExceeded,
            "this token's quota for the period is used up",
        ),
        _ => (
            Answer::RateLimited,
            "too many requests for this token; slow down",
        ),
    };
    // Keep-alive stays (when no unread body is pending): a device over its limit should wait and retry,
    // not pay, and make the gateway pay, for a new connection or TLS handshake per attempt.
    let mut r = Refusal::new(answer, detail).on(route);
    r.retry_after = Some(over.retry_after);
    r.outcome = match over.kind {
        LimitKind::Quota => Outcome::QuotaExceeded,
        _ => Outcome::RateLimited,
    };
    r.limit = Some(over.kind);
    r.headers.push(("ratelimit-policy", over.policy));
    r.headers.push(("ratelimit", over.remaining));
    r
}

/// The 429 for a token that already has `max` requests or tunnels in flight: the connection stays (a
/// device should wait and retry, not reconnect).
fn too_many_in_flight(route: &Route, max: u32) -> Refusal {
    let detail = format!(
        "this token already has {max} requests or streams in flight; retry when one has ended"
    );
    let mut r = Refusal::new(Answer::ConcurrencyLimited, detail).on(route);
    r.retry_after = Some(1);
    r.outcome = Outcome::RateLimited;
    r.limit = Some(LimitKind::InFlight);
    r
}

/// The request target: not CONNECT; in origin form (path, query), or in absolute form naming the host the
/// `Host` field names; a path of a shape every upstream reads the same way.
fn target<'a>(req: &Request<'a>) -> Result<(&'a str, Option<&'a str>), Refusal> {
    if req.method == b"CONNECT" {
        return Err(Refusal::new(Answer::MethodNotAllowed, "CONNECT is not supported").closing());
    }
    let Some((path, query)) = origin_form(req.target) else {
        return Err(Refusal::new(
            Answer::InvalidRequest,
            "the request target must be a path",
        ));
    };
    if let Some(authority) = authority(req.target) {
        // An absolute-form target must name the host the Host field names: two answers to "which
        // host" are refused rather than resolved one way here and maybe another way upstream.
        if req.host.is_none_or(|h| !h.eq_ignore_ascii_case(authority)) {
            return Err(Refusal::new(
                Answer::InvalidRequest,
                "the request target and the Host header name different hosts",
            ));
        }
    }
    check_path(path).map_err(|e| Refusal::new(Answer::InvalidRequest, e.describe()))?;
    Ok((path, query))
}

/// The route for `path`; a `tls_only` route asked over plain TCP is refused here, before any credential
/// is read: a token sent in the clear is not even looked at.
fn route<'a>(
    table: &'a RouteTable,
    req: &Request<'_>,
    path: &str,
) -> Result<&'a Arc<Route>, Refusal> {
    let Some(route) = table.find(path) else {
        return Err(Refusal::new(Answer::NotFound, "no route for this path"));
    };
    if needs_tls(route, req.tls) {
        let r = Refusal::new(
            Answer::TlsRequired,
            "this route is served over TLS (https) only",
        );
        return Err(r.on(route));
    }
    Ok(route)
}

/// The declared body (`Content-Length`) within the route's `max_body_bytes`.
fn body_limit(route: &Route, req: &Request<'_>, authenticated: bool) -> Result<(), Refusal> {
    if let (Some(max), Some(n)) = (route.max_body_bytes, req.content_length) {
        if n > max {
            let detail =
                format!("the request body is larger than this route's limit of {max} bytes");
            let mut r = Refusal::new(Answer::PayloadTooLarge, detail)
                .closing()
                .on(route);
            r.outcome = if authenticated {
                Outcome::Ok
            } else {
                Outcome::Public
            };
            return Err(r);
        }
    }
    Ok(())
}

/// The credential for this request: the one `Authorization` header, or — only on a route that opts in for
/// legacy firmware, and only when no header was sent — the query parameter.
fn credential<'a>(
    req: &Request<'a>,
    route: &Route,
    query: Option<&'a str>,
) -> Result<&'a str, Denial> {
    if req.authorizations > 1 {
        return Err(Denial::Multiple);
    }
    match (req.authorization, &route.query_token_param) {
        (Some(v), _) => auth::parse_bearer(v),
        (None, Some(param)) => match query_value(query, param) {
            Some("") => Err(Denial::Malformed("the token parameter is empty")),
            Some(t) => Ok(t),
            None => Err(Denial::Missing),
        },
        (None, None) => Err(Denial::Missing),
    }
}

/// The value of `key` in a query string, if present (no decoding: tokens are plain base62).
pub fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if pair == key => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::tokens::format::Token;
    use crate::tokens::store::IndexRow;
    use std::path::Path;

    const CONFIG: &str = r#"
[gateway]
listen = "127.0.0.1:8080"
trusted_proxies = ["10.0.0.0/8"]
[[routes]]
name = "iot"
path_prefix = "/iot"
upstream = "127.0.0.1:1"
max_body_bytes = 100
[[routes]]
name = "video"
path_prefix = "/video"
upstream = "127.0.0.1:2"
required_scope = "video:upload"
[[routes]]
name = "status"
path_prefix = "/status"
upstream = "127.0.0.1:3"
auth = "none"
max_body_bytes = 10
[[routes]]
name = "legacy"
path_prefix = "/v1/scale"
upstream = "127.0.0.1:4"
query_token_param = "api_token"
[[routes]]
name = "metered"
path_prefix = "/metered"
upstream = "127.0.0.1:5"
rate_limit = "1/m"
rate_limit_headers = true
"#;

    struct World {
        gate: Gate,
        table: RouteTable,
        token: Token,
        device: Token,
        revoked: Token,
        expired: Token,
    }

    const NOW: u64 = 1_000_000;

    fn world(max_failures: u32) -> World {
        let table = RouteTable::new(&Config::parse(CONFIG, Path::new("t.toml")).unwrap());
        let index = Index::new();
        let row = |id, t: &Token, scopes: &[&str], expires_at, revoked| IndexRow {
            id,
            user: format!("user{id}"),
            digest: t.digest(),
            prev_digest: None,
            prev_valid_until: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at,
            revoked,
            rev: id,
            bound_cert: None,
            rate_limit: None,
            quota: None,
            quota_used: 0,
            quota_period: None,
            leaked: false,
            access: Default::default(),
        };
        let (token, device, revoked, expired) = (
            Token::generate(),
            Token::generate(),
            Token::generate(),
            Token::generate(),
        );
        index.apply(&row(1, &token, &[], None, false));
        index.apply(&row(2, &device, &["telemetry:write"], None, false));
        index.apply(&row(3, &revoked, &[], None, true));
        index.apply(&row(4, &expired, &[], Some(NOW as i64), false));
        World {
            gate: Gate {
                index: Arc::new(index),
                throttle: Throttle::new(max_failures, 60, 1000),
                max_in_flight_per_token: 2,
            },
            table,
            token,
            device,
            revoked,
            expired,
        }
    }

    fn get<'a>(target: &'a str, auth: Option<&'a str>) -> Request<'a> {
        Request {
            method: b"GET",
            target: target.as_bytes(),
            host: Some(b"gw"),
            authorization: auth.map(str::as_bytes),
            authorizations: auth.is_some() as usize,
            content_length: None,
            peer: Some("192.0.2.1".parse().unwrap()),
            tls: None,
        }
    }

    fn refusal(v: Verdict<'_>) -> Refusal {
        match v {
            Verdict::Refuse(r) => r,
            Verdict::Forward(f) => panic!("forwarded to {}", f.route.name),
        }
    }

    fn forward<'a>(v: Verdict<'a>) -> Forward<'a> {
        match v {
            Verdict::Forward(f) => f,
            Verdict::Refuse(r) => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn valid_token_is_forwarded_with_its_principal() {
        let w = world(20);
        let bearer = format!("Bearer {}", w.token.as_str());
        let f = forward(
            w.gate
                .decide(&w.table, &get("/iot/hive?x=1", Some(&bearer)), NOW),
        );
        assert_eq!(&*f.route.name, "iot");
        assert_eq!(f.outcome, Outcome::Ok);
        assert_eq!(f.principal.as_ref().unwrap().user(), "user1");
        assert_eq!(
            (f.rewrite.path, f.rewrite.query),
            ("/iot/hive", Some("x=1"))
        );
        assert!(!f.rewrite.trusted_peer);
        assert_eq!(f.rewrite.at, NOW);
        assert_eq!(
            w.gate.index.take_usage()[0].uses,
            1,
            "a forwarded request is a use"
        );
    }

    #[test]
    fn a_token_over_its_in_flight_slots_is_refused_until_one_ends() {
        let w = world(20);
        let bearer = format!("Bearer {}", w.token.as_str());
        let req = get("/iot/hive", Some(&bearer));
        let first = forward(w.gate.decide(&w.table, &req, NOW));
        let second = forward(w.gate.decide(&w.table, &req, NOW));
        let r = refusal(w.gate.decide(&w.table, &req, NOW));
        assert_eq!(
            (r.status, r.error, r.reusable, r.retry_after),
            (429, "concurrency_limited", true, Some(1))
        );
        assert_eq!(r.limit, Some(LimitKind::InFlight));
        assert_eq!(r.outcome, Outcome::RateLimited);
        // The access log names the token over its limit; the answer does not.
        assert_eq!(r.principal.as_ref().map(|e| e.token_id), Some(1));
        let body = String::from_utf8(r.body(None)).unwrap();
        assert!(
            !body.contains("user1") && !body.contains("token_id"),
            "{body}"
        );
        // A token that is not known is named by nothing.
        let unknown = refusal(
            w.gate
                .decide(&w.table, &get("/iot/hive", Some("Bearer tg_x")), NOW),
        );
        assert!(unknown.principal.is_none());
        assert_eq!(
            w.gate.index.take_usage()[0].uses,
            2,
            "a request refused for concurrency is not a use"
        );
        // Another token has its own slots.
        let other = format!("Bearer {}", w.device.as_str());
        drop(forward(w.gate.decide(
            &w.table,
            &get("/iot/x", Some(&other)),
            NOW,
        )));
        // A slot is given back when the exchange ends, whichever way.
        drop(first);
        let third = forward(w.gate.decide(&w.table, &req, NOW));
        assert_eq!(third.principal.as_ref().unwrap().in_flight(), 2);
        drop((second, third));
        assert_eq!(
            w.gate
                .index
                .get(&w.token.digest())
                .map(|s| s.entry.in_flight()),
            Some(0)
        );
    }

    #[test]
    fn an_edit_of_the_token_does_not_give_it_fresh_in_flight_slots() {
        // A self-service token may edit itself (a tighter rate limit): the edit replaces its index
        // entry, and the requests still open on the old entry must keep counting.
        let w = world(20);
        let bearer = format!("Bearer {}", w.token.as_str());
        let req = get("/iot/hive", Some(&bearer));
        let first = forward(w.gate.decide(&w.table, &req, NOW));
        let before = w.gate.index.get(&w.token.digest()).unwrap().entry.clone();
        w.gate.index.apply(&IndexRow {
            id: 1,
            user: "user1".into(),
            digest: w.token.digest(),
            prev_digest: None,
            prev_valid_until: None,
            scopes: Vec::new(),
            expires_at: None,
            revoked: false,
            leaked: false,
            access: Default::default(),
            rev: 100,
            bound_cert: None,
            rate_limit: Some(crate::config::Rate::parse("1000/s").unwrap()),
            quota: None,
            quota_used: 0,
            quota_period: None,
        });
        let after = w.gate.index.get(&w.token.digest()).unwrap().entry.clone();
        assert!(!Arc::ptr_eq(&before, &after), "the edit made a new entry");
        let second = forward(w.gate.decide(&w.table, &req, NOW));
        let r = refusal(w.gate.decide(&w.table, &req, NOW));
        assert_eq!((r.status, r.error), (429, "concurrency_limited"));
        drop((first, second));
        assert_eq!(after.in_flight(), 0);
        drop(forward(w.gate.decide(&w.table, &req, NOW)));
    }

    #[test]
    fn trusted_peer_and_absolute_form() {
        let w = world(20);
        let bearer = format!("Bearer {}", w.token.as_str());
        let mut req = get("http://gw/iot/a", Some(&bearer));
        req.peer = Some("10.1.2.3".parse().unwrap());
        let f = forward(w.gate.decide(&w.table, &req, NOW));
        assert!(f.rewrite.trusted_peer);
        assert_eq!(f.rewrite.path, "/iot/a");
        req.host = Some(b"elsewhere");
        let r = refusal(w.gate.decide(&w.table, &req, NOW));
        assert_eq!(
            (r.status, r.error, r.reusable),
            (400, "invalid_request", true)
        );
        req.host = None;
        assert_eq!(refusal(w.gate.decide(&w.table, &req, NOW)).status, 400);
    }

    #[test]
    fn refusals_before_routing() {
        let w = world(20);
        let mut req = get("/iot", None);
        req.method = b"CONNECT";
        let r = refusal(w.gate.decide(&w.table, &req, NOW));
        assert_eq!(
            (r.status, r.reusable, r.outcome),
            (405, false, Outcome::None)
        );
        for target in ["*", "gw:443"] {
            let r = refusal(w.gate.decide(&w.table, &get(target, None), NOW));
            assert_eq!((r.status, r.route), (400, None), "{target}");
        }
        let r = refusal(w.gate.decide(&w.table, &get("/iot/../video", None), NOW));
        assert_eq!((r.status, r.error), (400, "invalid_request"));
        let r = refusal(w.gate.decide(&w.table, &get("/status/..;/iot", None), NOW));
        assert_eq!(r.status, 400, "a dot segment with parameters");
        let r = refusal(w.gate.decide(&w.table, &get("/nowhere", None), NOW));
        assert_eq!((r.status, r.error, r.reusable), (404, "not_found", true));
        assert!(r.challenge.is_none());
    }

    #[test]
    fn public_route_needs_no_token_but_keeps_its_limit() {
        let w = world(20);
        let f = forward(w.gate.decide(&w.table, &get("/status", None), NOW));
        assert!(f.principal.is_none());
        assert_eq!(f.outcome, Outcome::Public);
        let mut req = get("/status", None);
        req.content_length = Some(11);
        let r = refusal(w.gate.decide(&w.table, &req, NOW));
        assert_eq!(
            (r.status, r.reusable, r.outcome),
            (413, false, Outcome::Public)
        );
    }

    #[test]
    fn credential_problems() {
        let w = world(20);
        let r = refusal(w.gate.decide(&w.table, &get("/iot", None), NOW));
        assert_eq!(
            (r.status, r.error, r.outcome),
            (401, "unauthorized", Outcome::Missing)
        );
        assert_eq!(r.challenge.as_deref(), Some("Bearer realm=\"tokengate\""));
        assert_eq!(r.route, Some(0));
        let r = refusal(
            w.gate
                .decide(&w.table, &get("/iot", Some("Basic dXNlcg==")), NOW),
        );
        assert_eq!((r.status, r.outcome), (401, Outcome::Missing));
        let bearer = format!("Bearer {}", w.token.as_str());
        let mut req = get("/iot", Some(&bearer));
        req.authorizations = 2;
        let r = refusal(w.gate.decide(&w.table, &req, NOW));
        assert_eq!((r.status, r.error), (400, "invalid_request"));
        let r = refusal(
            w.gate
                .decide(&w.table, &get("/iot", Some("Bearer a b")), NOW),
        );
        assert_eq!((r.status, r.error), (400, "invalid_request"));
        let r = refusal(
            w.gate
                .decide(&w.table, &get("/iot", Some("Bearer tg_short")), NOW),
        );
        assert_eq!(
            (r.status, r.error, r.outcome),
            (401, "invalid_token", Outcome::Invalid)
        );
    }

    #[test]
    fn token_states() {
        let w = world(20);
        let ask = |t: &Token, target: &str| {
            let bearer = format!("Bearer {}", t.as_str());
            refusal(w.gate.decide(&w.table, &get(target, Some(&bearer)), NOW))
        };
        let r = ask(&Token::generate(), "/iot");
        assert_eq!((r.status, r.outcome), (401, Outcome::Invalid));
        let r = ask(&w.revoked, "/iot");
        assert_eq!((r.status, r.outcome), (401, Outcome::Revoked));
        assert!(r.detail.contains("revoked"));
        let r = ask(&w.expired, "/iot");
        assert_eq!((r.status, r.outcome), (401, Outcome::Expired));
        let r = ask(&w.device, "/video/clip");
        assert_eq!((r.status, r.error), (403, "insufficient_scope"));
        assert_eq!(r.scope.as_deref(), Some("video:upload"));
        assert!(r.challenge.unwrap().contains("scope=\"video:upload\""));
        assert!(
            w.gate.index.take_usage().is_empty(),
            "refusals are not uses"
        );
    }

    #[test]
    fn failures_are_throttled_per_address_but_valid_tokens_are_not() {
        let w = world(2);
        let bad = format!("Bearer {}", Token::generate().as_str());
        for _ in 0..2 {
            assert_eq!(
                refusal(w.gate.decide(&w.table, &get("/iot", Some(&bad)), NOW)).status,
                401
            );
        }
        let r = refusal(w.gate.decide(&w.table, &get("/iot", Some(&bad)), NOW));
        assert_eq!(
            (r.status, r.outcome, r.reusable),
            (429, Outcome::Throttled, false)
        );
        assert_eq!(r.retry_after, Some(60));
        // Missing credentials and missing scopes are not counted as failures.
        for _ in 0..5 {
            assert_eq!(
                refusal(w.gate.decide(&w.table, &get("/iot", None), NOW)).status,
                401
            );
        }
        let bearer = format!("Bearer {}", w.token.as_str());
        forward(w.gate.decide(&w.table, &get("/iot", Some(&bearer)), NOW));
        let mut other = get("/iot", Some(&bad));
        other.peer = Some("192.0.2.99".parse().unwrap());
        assert_eq!(refusal(w.gate.decide(&w.table, &other, NOW)).status, 401);
    }

    #[test]
    fn body_limit_after_authentication() {
        let w = world(20);
        let bearer = format!("Bearer {}", w.token.as_str());
        let mut req = get("/iot", Some(&bearer));
        req.content_length = Some(101);
        let r = refusal(w.gate.decide(&w.table, &req, NOW));
        assert_eq!((r.status, r.reusable, r.outcome), (413, false, Outcome::Ok));
        req.content_length = Some(100);
        forward(w.gate.decide(&w.table, &req, NOW));
        // Unauthenticated oversized uploads get their 401 first.
        let mut req = get("/iot", None);
        req.content_length = Some(101);
        assert_eq!(refusal(w.gate.decide(&w.table, &req, NOW)).status, 401);
    }

    #[test]
    fn legacy_query_token() {
        let w = world(20);
        let target = format!("/v1/scale/7?a=1&api_token={}", w.token.as_str());
        let f = forward(w.gate.decide(&w.table, &get(&target, None), NOW));
        assert_eq!(f.principal.unwrap().token_id, 1);
        let r = refusal(
            w.gate
                .decide(&w.table, &get("/v1/scale/7?api_token=", None), NOW),
        );
        assert_eq!(r.status, 400);
        let r = refusal(w.gate.decide(&w.table, &get("/v1/scale/7?a=1", None), NOW));
        assert_eq!((r.status, r.outcome), (401, Outcome::Missing));
        // The header wins over the parameter; other routes ignore the parameter.
        let r = refusal(
            w.gate
                .decide(&w.table, &get(&target, Some("Bearer tg_nope")), NOW),
        );
        assert_eq!(r.status, 401);
        let iot = format!("/iot?api_token={}", w.token.as_str());
        assert_eq!(
            refusal(w.gate.decide(&w.table, &get(&iot, None), NOW)).status,
            401
        );
    }

    #[test]
    fn limits_are_decided_after_authentication_and_before_forwarding() {
        let w = world(20);
        let bearer = format!("Bearer {}", w.token.as_str());
        let f = forward(
            w.gate
                .decide(&w.table, &get("/metered/a", Some(&bearer)), NOW),
        );
        let field = f
            .rate_limit
            .expect("rate_limit_headers: the field rides on the 200");
        assert_eq!(field.to_string(), "\"route\";r=0;t=60");
        let r = refusal(
            w.gate
                .decide(&w.table, &get("/metered/a", Some(&bearer)), NOW),
        );
        assert_eq!(
            (r.status, r.error, r.outcome),
            (429, "rate_limited", Outcome::RateLimited)
        );
        assert_eq!((r.retry_after, r.limit), (Some(60), Some(LimitKind::Rate)));
        assert!(
            r.reusable,
            "a bodiless request over its limit keeps its connection"
        );
        let names: Vec<_> = r.headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["ratelimit-policy", "ratelimit"]);
        // An unknown token is refused as such (401), not counted against anyone's limit.
        let stranger = format!("Bearer {}", Token::generate().as_str());
        let r = refusal(
            w.gate
                .decide(&w.table, &get("/metered/a", Some(&stranger)), NOW),
        );
        assert_eq!(r.status, 401);
        // Another token has its own bucket; the unmetered routes are not limited at all.
        let device = format!("Bearer {}", w.device.as_str());
        forward(
            w.gate
                .decide(&w.table, &get("/metered/a", Some(&device)), NOW),
        );
        for _ in 0..5 {
            let f = forward(w.gate.decide(&w.table, &get("/iot/a", Some(&bearer)), NOW));
            assert!(f.rate_limit.is_none());
        }
    }

    #[test]
    fn refusal_bodies_are_json() {
        let r = Refusal::new(Answer::NotFound, "no route for this path");
        let v: serde_json::Value = serde_json::from_slice(&r.body(None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "not_found", "detail": "no route for this path"})
        );
        assert_eq!(
            query_value(Some("a=1&api_token=tg_x&b=2"), "api_token"),
            Some("tg_x")
        );
        assert_eq!(query_value(Some("api_tokenx=1"), "api_token"), None);
        assert_eq!(query_value(None, "api_token"), None);
    }
}
