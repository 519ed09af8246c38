//! The admin listener: `GET /healthz`, `GET /metrics` (Prometheus text), the token management JSON API
//! under `/api/tokens` and the routes' servers at `GET /api/routes` (bearer token with scope `admin`),
//! its OpenAPI document, and the token management
//! page (`GET /`, assets embedded in the binary, strict Content-Security-Policy).
//!
//! API changes go to SQLite on a blocking thread and are applied to this process's index before the
//! answer is sent, so a revoked token is refused by this gateway once `DELETE` has returned.

use super::metrics::Metrics;
use crate::config::parse_duration;
use crate::config::Rate;
use crate::gateway::auth::{self, Denial};
use crate::tokens::fields::Quota;
use crate::tokens::fields::{check_label, check_scopes, check_user, expiry, ADMIN_SCOPE};
use crate::tokens::index::Index;
use crate::tokens::store::{self, Location, NewToken, Store, StoreError, TokenPatch, TokenRecord};
use crate::transport::Table;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Largest JSON body the API reads.
pub const MAX_BODY: usize = 64 * 1024;
/// How much of an oversized body is read and dropped before the 413 goes out.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// The OpenAPI 3 description of the API, served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("admin/openapi.json");
const PAGE_HTML: &str = include_str!("admin/page/index.html");
const PAGE_JS: &str = include_str!("admin/page/app.js");
const PAGE_CSS: &str = include_str!("admin/page/app.css");

/// The page's Content-Security-Policy: only same-origin scripts, styles and API calls; nothing inline.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                       img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The admin application.
pub struct Admin {
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    /// The API's own store connection, used from blocking threads.
    store: Arc<Mutex<Option<Store>>>,
    location: Location,
    /// The running route table (for `/api/routes` and `/healthz`), when serving.
    routes: Option<Arc<ArcSwap<Table>>>,
}

type Reply = Response<Vec<u8>>;

/// Builds a response with a body and content type.
pub fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Reply {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(body)
        .expect("valid response")
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    reply(
        status,
        "application/json",
        serde_json::to_vec(value).expect("json"),
    )
}

/// The `{"error", "detail"}` error shape.
pub fn json_error(status: StatusCode, error: &str, detail: &str) -> Reply {
    json(
        status,
        &serde_json::json!({ "error": error, "detail": detail }),
    )
}

fn page(content_type: &str, body: &str) -> Reply {
    let mut r = reply(StatusCode::OK, content_type, body.as_bytes().to_vec());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    user: String,
    label: String,
    expires_in: Option<String>,
    expires_at: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    /// Bind the token to the certificate with this SHA-256 (hex of its DER).
    bound_cert_sha256: Option<String>,
    rate_limit: Option<String>,
    quota: Option<String>,
}

/// `PATCH /api/tokens/{id}`: the fields to change; a limit given as `null` is cleared.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PatchRequest {
    label: Option<String>,
    expires_in: Option<String>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    quota: Option<Option<String>>,
}

/// A field that is present (`Some`, possibly `null`) as opposed to absent (`None`, by `default`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    grace: Option<String>,
}

/// An API failure, turned into the JSON error shape.
struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    fn bad(detail: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, "invalid_request", detail.into())
    }
    fn into_reply(self) -> Reply {
        json_error(self.0, self.1, &self.2)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => {
                ApiError(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            StoreError::Revoked { .. } => ApiError(StatusCode::CONFLICT, "conflict", e.to_string()),
            StoreError::Busy { .. } => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_busy", e.to_string())
            }
            // The store cannot be reached: nothing was changed; the gateway keeps serving its index.
            other if other.is_unavailable() => {
                log::error!("admin API: {other}");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the token store cannot be reached; nothing was changed, retry later".into(),
                )
            }
            other => {
                log::error!("admin API: {other}");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the token database failed".into(),
                )
            }
        }
    }
}

/// Decodes `%XX` and `+` in a query component.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query_param(query: Option<&str>, key: &str) -> Result<Option<String>, ApiError> {
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return percent_decode(v)
                .map(Some)
                .ok_or_else(|| ApiError::bad(format!("query parameter {key} is not valid UTF-8")));
        }
    }
    Ok(None)
}

/// Adds this gateway's not-yet-flushed usage to a record, so the page shows uses as they happen.
fn with_pending(index: &Index, mut record: TokenRecord) -> TokenRecord {
    let (uses, last) = index.pending_usage(record.id);
    record.use_count += uses as i64;
    if last > 0 && record.last_used_at.is_none_or(|l| l < last) {
        record.last_used_at = Some(last);
    }
    let now = store::unix_now();
    if let (Some(q), Some(here)) = (record.quota, index.quota_used(record.id, now)) {
        // This node's view (the shared count of its last flush + its unflushed requests) or the store's,
        // whichever has counted more.
        record.quota_used = record.quota_used_now(now).max(here as i64);
        record.quota_period = Some(q.period.start_of(q.period.index(now)));
    }
    record
}

/// Checks a PATCH body into a store patch.
fn patch_from(req: PatchRequest) -> Result<TokenPatch, ApiError> {
    if let Some(l) = &req.label {
        check_label(l).map_err(ApiError::bad)?;
    }
    if req.expires_in.is_some() && req.expires_at.is_some() {
        return Err(ApiError::bad("give expires_in or expires_at, not both"));
    }
    let expires_at = match (req.expires_in.as_deref(), req.expires_at) {
        (Some(d), _) => Some(expiry(Some(d), None).map_err(ApiError::bad)?),
        (None, Some(None)) => Some(None),
        (None, Some(Some(t))) => Some(expiry(None, Some(&t)).map_err(ApiError::bad)?),
        (None, None) => None,
    };
    fn limit<T>(
        v: Option<Option<String>>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<Option<T>>, ApiError> {
        v.map(|v| v.as_deref().map(parse).transpose())
            .transpose()
            .map_err(ApiError::bad)
    }
    Ok(TokenPatch {
        label: req.label,
        expires_at,
        rate_limit: limit(req.rate_limit, Rate::parse)?,
        quota: limit(req.quota, Quota::parse)?,
    })
}

fn with_token(record: &TokenRecord, token: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(record.view(store::unix_now())).expect("json");
    v["token"] = token.into();
    v
}

impl Admin {
    pub fn new(index: Arc<Index>, metrics: Arc<Metrics>, location: Location) -> Admin {
        Admin {
            index,
            metrics,
            store: Arc::new(Mutex::new(None)),
            location,
            routes: None,
        }
    }

    /// Shows `table`'s routes and servers at `/api/routes` and their health in `/healthz`.
    pub fn with_routes(mut self, table: Arc<ArcSwap<Table>>) -> Admin {
        self.routes = Some(table);
        self
    }

    /// `GET /api/routes`: each route's prefix, auth, balance and servers with their state. Nothing
    /// secret: no signing key, no CA path.
    fn routes(&self) -> Reply {
        let Some(table) = &self.routes else {
            return json(StatusCode::OK, &serde_json::json!([]));
        };
        let table = table.load();
        let routes: Vec<serde_json::Value> = table
            .io
            .iter()
            .map(|io| {
                let r = &io.route;
                serde_json::json!({
                    "name": &*r.name,
                    "path_prefix": r.path_prefix,
                    "auth": if r.auth == crate::config::AuthMode::None { "none" } else { "bearer" },
                    "balance": match io.pool.balance {
                        crate::config::Balance::RoundRobin => "round_robin",
                        crate::config::Balance::LeastRequests => "least_requests",
                        crate::config::Balance::UserHash => "user_hash",
                    },
                    "health_check": io.pool.check.as_ref().map(|c| serde_json::json!({
                        "path": c.path,
                        "interval_ms": c.interval.as_millis() as u64,
                        "timeout_ms": c.timeout.as_millis() as u64,
                        "unhealthy_after": c.unhealthy_after,
                        "healthy_after": c.healthy_after,
                    })),
                    "healthy": io.pool.any_up(),
                    "servers": io.pool.servers_json(),
                })
            })
            .collect();
        json(StatusCode::OK, &serde_json::Value::Array(routes))
    }

    /// The routes with no server in rotation.
    fn routes_down(&self) -> Vec<String> {
        self.routes.as_ref().map_or_else(Vec::new, |t| {
            t.load()
                .io
                .iter()
                .filter(|io| !io.pool.any_up())
                .map(|io| io.route.name.to_string())
                .collect()
        })
    }

    fn healthz(&self) -> Reply {
        let h = &self.index.health;
        let sync_error = h
            .sync_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let flush_error = h
            .flush_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let routes_down = self.routes_down();
        let status = if sync_error.is_some() || flush_error.is_some() || !routes_down.is_empty() {
            "degraded"
        } else {
            "ok"
        };
        let now = crate::clock::now() as i64;
        let age = |t: i64| {
            if t == 0 {
                serde_json::Value::Null
            } else {
                (now - t).max(0).into()
            }
        };
        json(
            StatusCode::OK,
            &serde_json::json!({
                "status": status,
                "tokens_indexed": self.index.len(),
                "seconds_since_sync": age(h.last_sync.load(Ordering::Relaxed)),
                "seconds_since_usage_flush": age(h.last_flush.load(Ordering::Relaxed)),
                "sync_error": sync_error,
                "usage_flush_error": flush_error,
                "routes_without_healthy_upstream": routes_down,
            }),
        )
    }

    /// Checks the caller's bearer token for the `admin` scope; returns the actor name for the event log.
    fn authenticate(&self, session: &ServerSession) -> Result<String, Denial> {
        let decision = auth::bearer_token(&session.req_header().headers).and_then(|t| {
            auth::authorize(&self.index, t, Some(ADMIN_SCOPE), None, crate::clock::now())
        });
        match decision {
            Ok(entry) => {
                entry.record_use(crate::clock::now());
                Ok(format!("admin:{}", entry.token_id))
            }
            Err(d) => Err(d),
        }
    }

    /// Runs a store operation on a blocking thread, then brings the index up to date.
    async fn with_store<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (store, location, index) = (
            self.store.clone(),
            self.location.clone(),
            self.index.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(Store::open_existing(&location)?);
            }
            let s = guard.as_mut().expect("opened above");
            let result = op(s);
            if matches!(
                result,
                Err(StoreError::Sqlite { .. }
                    | StoreError::Unavailable { .. }
                    | StoreError::Postgres { .. })
            ) {
                *guard = None; // reopen next time
                return result;
            }
            let out = result?;
            index.sync_from(guard.as_mut().expect("still open"))?;
            Ok(out)
        })
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                e.to_string(),
            )
        })?
        .map_err(ApiError::from)
    }

    async fn read_json<T: serde::de::DeserializeOwned + Default>(
        session: &mut ServerSession,
        empty_ok: bool,
    ) -> Result<T, ApiError> {
        if let Some(ct) = session.req_header().headers.get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            if !ct.starts_with("application/json") {
                return Err(ApiError(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send application/json".into(),
                ));
            }
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        session.set_keepalive(None);
                        // Read (and drop) a bounded rest of the body first: closing with unread bytes makes
                        // the kernel send a reset, which can destroy the 413 before the client reads it.
                        let mut drained = 0usize;
                        while drained < DRAIN_LIMIT {
                            match session.read_request_body().await {
                                Ok(Some(more)) => drained += more.len(),
                                _ => break,
                            }
                        }
                        return Err(ApiError(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            format!("the body is larger than {MAX_BODY} bytes"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(ApiError::bad(format!("could not read the body: {e}"))),
            }
        }
        if body.iter().all(u8::is_ascii_whitespace) && empty_ok {
            return Ok(T::default());
        }
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))
    }

    async fn api(
        &self,
        session: &mut ServerSession,
        method: &Method,
        path: &str,
    ) -> Result<Reply, ApiError> {
        let rest = path.strip_prefix("/api/tokens").unwrap_or("");
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let actor = match self.authenticate(session) {
            Ok(a) => a,
            Err(d) => return Ok(denial_reply(&d)),
        };
        let id = match segments.first() {
            Some(s) => Some(s.parse::<i64>().map_err(|_| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("{s:?} is not a token id"),
                )
            })?),
            None => None,
        };
        let now = store::unix_now();
        match (
            method.as_str(),
            id,
            segments.get(1).copied(),
            segments.len(),
        ) {
            ("GET", None, _, 0) => {
                let user = query_param(session.req_header().uri.query(), "user")?;
                let records = self.with_store(move |s| s.list(user.as_deref())).await?;
                let views: Vec<_> = records
                    .into_iter()
                    .map(|r| with_pending(&self.index, r).view(now))
                    .collect();
                Ok(json(
                    StatusCode::OK,
                    &serde_json::to_value(views).expect("json"),
                ))
            }
            ("POST", None, _, 0) => {
                let req: CreateRequest = Self::read_json(session, false).await.and_then(
                    |r: Option<CreateRequest>| {
                        r.ok_or_else(|| {
                            ApiError::bad("a JSON object with user and label is required")
                        })
                    },
                )?;
                check_user(&req.user).map_err(ApiError::bad)?;
                check_label(&req.label).map_err(ApiError::bad)?;
                check_scopes(&req.scopes).map_err(ApiError::bad)?;
                if req.expires_in.is_some() && req.expires_at.is_some() {
                    return Err(ApiError::bad("give expires_in or expires_at, not both"));
                }
                let expires_at = expiry(req.expires_in.as_deref(), req.expires_at.as_deref())
                    .map_err(ApiError::bad)?;
                let bound_cert = req
                    .bound_cert_sha256
                    .as_deref()
                    .map(store::parse_sha256_hex)
                    .transpose()
                    .map_err(ApiError::bad)?;
                let rate_limit = req
                    .rate_limit
                    .as_deref()
                    .map(Rate::parse)
                    .transpose()
                    .map_err(ApiError::bad)?;
                let quota = req
                    .quota
                    .as_deref()
                    .map(Quota::parse)
                    .transpose()
                    .map_err(ApiError::bad)?;
                let new = NewToken {
                    user: req.user,
                    label: req.label,
                    scopes: req.scopes,
                    expires_at,
                    bound_cert,
                    rate_limit,
                    quota,
                };
                let (record, token) = self.with_store(move |s| s.create(&new, &actor)).await?;
                Ok(json(
                    StatusCode::CREATED,
                    &with_token(&record, token.as_str()),
                ))
            }
            ("GET", Some(id), None, 1) => {
                let (record, events) = self
                    .with_store(move |s| Ok((s.get(id)?, s.events(id)?)))
                    .await?;
                let mut v = serde_json::to_value(with_pending(&self.index, record).view(now))
                    .expect("json");
                v["events"] = serde_json::to_value(events).expect("json");
                Ok(json(StatusCode::OK, &v))
            }
            ("DELETE", Some(id), None, 1) => {
                let (record, _changed) = self.with_store(move |s| s.revoke(id, &actor)).await?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::to_value(record.view(now)).expect("json"),
                ))
            }
            ("PATCH", Some(id), None, 1) => {
                let req: PatchRequest = Self::read_json::<Option<PatchRequest>>(session, false)
                    .await?
                    .unwrap_or_default();
                let patch = patch_from(req)?;
                if patch.is_empty() {
                    return Err(ApiError::bad(
                        "give at least one of label, expires_in, expires_at, rate_limit, quota",
                    ));
                }
                let (record, _) = self
                    .with_store(move |s| s.update(id, &patch, &actor))
                    .await?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::to_value(with_pending(&self.index, record).view(now))
                        .expect("json"),
                ))
            }
            ("POST", Some(id), Some("rotate"), 2) => {
                let req: RotateRequest = Self::read_json::<Option<RotateRequest>>(session, true)
                    .await?
                    .unwrap_or_default();
                let grace = req
                    .grace
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(ApiError::bad)?;
                let (record, token) = self
                    .with_store(move |s| s.rotate(id, grace, &actor))
                    .await?;
                Ok(json(StatusCode::OK, &with_token(&record, token.as_str())))
            }
            (_, None, _, 0) | (_, Some(_), None, 1) | (_, Some(_), Some("rotate"), 2) => {
                Err(ApiError(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} is not allowed here"),
                ))
            }
            _ => Err(ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API endpoint".into(),
            )),
        }
    }
}

impl Drop for Admin {
    /// The admin service is dropped on a runtime thread at shutdown; a PostgreSQL connection closes by
    /// blocking on its own runtime, which tokio forbids there: it is closed on a plain thread instead.
    fn drop(&mut self) {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner()).take();
        if store.is_some() {
            let _ = std::thread::spawn(move || drop(store)).join();
        }
    }
}

/// The RFC 6750 answer for a refused admin credential.
fn denial_reply(d: &Denial) -> Reply {
    let mut r = reply(
        StatusCode::from_u16(d.status()).expect("status"),
        "application/json",
        d.body(),
    );
    if let Ok(v) = header::HeaderValue::from_str(&d.challenge()) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Reply {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let get = method == Method::GET || method == Method::HEAD;
        match path.as_str() {
            "/healthz" if get => self.healthz(),
            "/metrics" if get => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(&self.index),
            ),
            "/api/openapi.json" if get => reply(
                StatusCode::OK,
                "application/json",
                OPENAPI.as_bytes().to_vec(),
            ),
            "/" | "/index.html" if get => page("text/html; charset=utf-8", PAGE_HTML),
            "/assets/app.js" if get => page("text/javascript; charset=utf-8", PAGE_JS),
            "/assets/app.css" if get => page("text/css; charset=utf-8", PAGE_CSS),
            "/healthz" | "/metrics" | "/api/openapi.json" | "/" | "/index.html"
            | "/assets/app.js" | "/assets/app.css" => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            ),
            "/api/routes" => match self.authenticate(session) {
                Err(d) => denial_reply(&d),
                Ok(_) if get => self.routes(),
                Ok(_) => json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use GET",
                ),
            },
            p if p == "/api/tokens" || p.starts_with("/api/tokens/") => self
                .api(session, &method, p)
                .await
                .unwrap_or_else(ApiError::into_reply),
            _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_decode() {
        assert_eq!(
            query_param(Some("user=al%20ice&x=1"), "user")
                .ok()
                .flatten()
                .as_deref(),
            Some("al ice")
        );
        assert_eq!(query_param(Some("x=1"), "user").ok().flatten(), None);
        assert!(query_param(Some("user=%ff"), "user").is_err());
    }

    #[test]
    fn openapi_document_is_json_and_names_every_endpoint() {
        let v: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3."));
        for p in [
            "/api/tokens",
            "/api/tokens/{id}",
            "/api/tokens/{id}/rotate",
            "/api/routes",
        ] {
            assert!(v["paths"][p].is_object(), "{p}");
        }
    }
}
