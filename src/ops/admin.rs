//! The admin listener: `GET /healthz`, `GET /metrics` (Prometheus text), the token management JSON API
//! under `/api/tokens` ([`api`]; for admins and, on their own tokens, self-service callers — see
//! [`access`]), groups and licenses under `/api/groups` and `/api/licenses` ([`groups_api`]), `GET /api/whoami`, the routes' servers at `GET /api/routes` (admins), its OpenAPI
//! document, and the token management page (`GET /`, assets embedded in the binary, strict
//! Content-Security-Policy).

mod access;
mod api;
mod bounds;
mod groups_api;
mod leaks_api;
mod listener;
mod rule;

pub use listener::AdminListener;

use crate::config::{AdminConfig, Roles};
use crate::gateway::auth::Denial;
use crate::gateway::throttle::Throttle;
use crate::telemetry::metrics::Metrics;
use crate::tokens::index::Index;
use crate::tokens::store::{Location, Store};
use crate::transport::{Load, Table};
use access::Caller;
use api::ApiError;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
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
    /// The running route table (for `/api/routes`, `/healthz` and the `[roles]`), when serving.
    routes: Option<Arc<ArcSwap<Table>>>,
    /// The trusted account header and the proxies it is believed from.
    access: AdminConfig,
    /// Failed authentications per address, as on the gateway's listeners: past the limit, 429.
    throttle: Throttle,
    /// Self-service writes per user (`[admin] self_service_rate`).
    budget: bounds::WriteBudget,
    /// What `POST /api/leaks` does with a report (see [`leaks_api`]).
    leaks: Option<Arc<crate::ops::leaks::Taker>>,
    /// How full the gateway's listeners are (for `/healthz`), when serving.
    load: Option<Load>,
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
    reply(
        status,
        "application/json",
        crate::gateway::answer::error_body(error, detail),
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

impl Admin {
    pub fn new(index: Arc<Index>, metrics: Arc<Metrics>, location: Location) -> Admin {
        Admin {
            index,
            metrics,
            store: Arc::new(Mutex::new(None)),
            location,
            routes: None,
            access: AdminConfig::on(""),
            throttle: Throttle::new(0, 60, 1),
            budget: bounds::WriteBudget::new(AdminConfig::DEFAULT_SELF_SERVICE_RATE),
            leaks: None,
            load: None,
        }
    }

    /// Takes leak reports at `POST /api/leaks` with `taker`.
    pub fn with_leaks(mut self, taker: Arc<crate::ops::leaks::Taker>) -> Admin {
        self.leaks = Some(taker);
        self
    }

    /// Throttles failed authentications per address with `throttle` (the `[throttle]` settings).
    pub fn with_throttle(mut self, throttle: Throttle) -> Admin {
        self.throttle = throttle;
        self
    }

    /// Believes `config`'s trusted account header from its trusted proxies.
    pub fn with_access(mut self, config: AdminConfig) -> Admin {
        self.budget = bounds::WriteBudget::new(config.self_service_rate);
        self.access = config;
        self
    }

    /// What stands before a write reaches the API: account mode's same-origin JSON rule (403/415), then
    /// the self-service caller's write budget (429). `None`: go on.
    fn guard_write(&self, caller: &Caller, session: &ServerSession) -> Option<Reply> {
        if let Caller::Account { .. } = caller {
            match access::check_account_write(&session.req_header().headers) {
                Ok(()) => {}
                Err(access::CrossSite::Forbidden(why)) => {
                    return Some(json_error(StatusCode::FORBIDDEN, "forbidden", &why))
                }
                Err(access::CrossSite::NotJson) => {
                    return Some(json_error(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        "a write in account mode must be sent as Content-Type: application/json",
                    ))
                }
            }
        }
        let user = caller.user()?;
        let retry_after = self.budget.take(user, crate::clock::mono_nanos()).err()?;
        let mut r = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many token changes for this user (admin.self_service_rate); retry later",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, retry_after.into());
        Some(r)
    }

    /// The `[roles]` in force (the running table's).
    fn roles(&self) -> Arc<Roles> {
        self.routes
            .as_ref()
            .map(|t| t.load().routes.roles.clone())
            .unwrap_or_default()
    }

    /// Who is calling: the trusted account header from a trusted proxy, or an admin / self token. A
    /// refusal is the RFC 6750 answer, or 429 once the address has failed too often (a wrong token
    /// counts; a missing one or one without the scope does not, as on the gateway's listeners).
    fn caller(&self, session: &ServerSession) -> Result<Caller, Box<Reply>> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        access::identify(
            &self.index,
            &self.access,
            &self.roles(),
            &session.req_header().headers,
            peer,
        )
        .map_err(|d| {
            let counts = d.is_failure();
            let throttled = peer
                .filter(|_| counts)
                .and_then(|ip| self.throttle.failure(ip, crate::clock::now()));
            Box::new(match throttled {
                Some(retry_after) => {
                    let mut r = json_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_requests",
                        "too many failed authentications from this address; retry later",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, retry_after.into());
                    r
                }
                None => denial_reply(&d),
            })
        })
    }

    /// `GET /api/whoami`: the caller's mode and user, for the page.
    fn whoami(caller: &Caller) -> Reply {
        json(
            StatusCode::OK,
            &serde_json::json!({ "mode": caller.mode(), "user": caller.user() }),
        )
    }

    /// Reports the gateway's connections and requests in flight against their limits in `/healthz`.
    pub fn with_load(mut self, load: Load) -> Admin {
        self.load = Some(load);
        self
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
        let saturated = self.load.as_ref().map(Load::saturated).unwrap_or_default();
        // Saturated: new clients are being turned away (503), so a load balancer should send them
        // elsewhere until it drains; degraded: still serving, with a fault to look at.
        let (code, status) = if !saturated.is_empty() {
            (StatusCode::SERVICE_UNAVAILABLE, "saturated")
        } else if sync_error.is_some() || flush_error.is_some() || !routes_down.is_empty() {
            (StatusCode::OK, "degraded")
        } else {
            (StatusCode::OK, "ok")
        };
        let now = crate::clock::now() as i64;
        let age = |t: i64| {
            if t == 0 {
                serde_json::Value::Null
            } else {
                (now - t).max(0).into()
            }
        };
        let mut body = serde_json::json!({
                "status": status,
                "tokens_indexed": self.index.len(),
                "seconds_since_sync": age(h.last_sync.load(Ordering::Relaxed)),
                "seconds_since_usage_flush": age(h.last_flush.load(Ordering::Relaxed)),
                "sync_error": sync_error,
                "usage_flush_error": flush_error,
                "routes_without_healthy_upstream": routes_down,
        });
        if let Some(load) = &self.load {
            let mut l = load.to_json();
            l["saturated"] = saturated.into();
            body["load"] = l;
        }
        json(code, &body)
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
            "/" | "/index.html" if get => {
                // Behind the platform's account page, the page signs in as the account by itself.
                let account = matches!(self.caller(session), Ok(Caller::Account { .. }));
                if account {
                    page(
                        "text/html; charset=utf-8",
                        &PAGE_HTML.replacen("<body>", "<body data-account=\"1\">", 1),
                    )
                } else {
                    page("text/html; charset=utf-8", PAGE_HTML)
                }
            }
            "/assets/app.js" if get => page("text/javascript; charset=utf-8", PAGE_JS),
            "/assets/app.css" if get => page("text/css; charset=utf-8", PAGE_CSS),
            "/healthz" | "/metrics" | "/api/openapi.json" | "/" | "/index.html"
            | "/assets/app.js" | "/assets/app.css" => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            ),
            "/api/routes" | "/api/whoami" => match self.caller(session) {
                Err(refused) => *refused,
                Ok(c) if path == "/api/whoami" && get => Self::whoami(&c),
                Ok(c) => match access::require_admin(&c) {
                    Err(d) => denial_reply(&d),
                    Ok(()) if get => self.routes(),
                    Ok(()) => json_error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        "use GET",
                    ),
                },
            },
            "/api/leaks" => match self.caller(session) {
                Err(refused) => *refused,
                Ok(c) => match (!get).then(|| self.guard_write(&c, session)).flatten() {
                    Some(refused) => refused,
                    None => self.leaks_api(session, c, &method).await,
                },
            },
            p if p == "/api/groups"
                || p.starts_with("/api/groups/")
                || p == "/api/licenses"
                || p.starts_with("/api/licenses/") =>
            {
                match self.caller(session) {
                    Err(refused) => *refused,
                    Ok(c) => match (!get).then(|| self.guard_write(&c, session)).flatten() {
                        Some(refused) => refused,
                        None => self.groups_api(session, c, &method, p).await,
                    },
                }
            }
            p if p == "/api/tokens" || p.starts_with("/api/tokens/") => {
                match self.caller(session) {
                    Err(refused) => *refused,
                    Ok(c) => match (!get).then(|| self.guard_write(&c, session)).flatten() {
                        Some(refused) => refused,
                        None => self
                            .api(session, c, &method, p)
                            .await
                            .unwrap_or_else(ApiError::into_reply),
                    },
                }
            }
            _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_document_is_json_and_names_every_endpoint() {
        let v: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3."));
        for p in [
            "/api/tokens",
            "/api/tokens/{id}",
            "/api/tokens/{id}/rotate",
            "/api/routes",
            "/api/whoami",
            "/api/groups",
            "/api/groups/{name}",
            "/api/groups/{name}/members",
            "/api/groups/{name}/members/{member}",
            "/api/licenses",
            "/api/licenses/{name}",
            "/api/licenses/{name}/holders",
            "/api/licenses/{name}/holders/{member}",
        ] {
            assert!(v["paths"][p].is_object(), "{p}");
        }
    }
}
