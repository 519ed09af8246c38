//! The admin listener: `GET /healthz`, `GET /metrics` (Prometheus text), and the token management API
//! and page. Served by pingora's `ServeHttp` on its own (loopback by default) address.

use crate::index::Index;
use crate::metrics::Metrics;
use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The admin application.
pub struct Admin {
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
}

/// Builds a response with a body and content type.
pub fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("valid response")
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", serde_json::to_vec(value).expect("json"))
}

/// The `{"error", "detail"}` error shape.
pub fn json_error(status: StatusCode, error: &str, detail: &str) -> Response<Vec<u8>> {
    json(status, &serde_json::json!({ "error": error, "detail": detail }))
}

impl Admin {
    fn healthz(&self) -> Response<Vec<u8>> {
        let h = &self.index.health;
        let sync_error = h.sync_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let flush_error = h.flush_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let status = if sync_error.is_some() || flush_error.is_some() { "degraded" } else { "ok" };
        let now = crate::clock::now() as i64;
        let age = |t: i64| if t == 0 { serde_json::Value::Null } else { (now - t).max(0).into() };
        json(
            StatusCode::OK,
            &serde_json::json!({
                "status": status,
                "tokens_indexed": self.index.len(),
                "seconds_since_sync": age(h.last_sync.load(Ordering::Relaxed)),
                "seconds_since_usage_flush": age(h.last_flush.load(Ordering::Relaxed)),
                "sync_error": sync_error,
                "usage_flush_error": flush_error,
            }),
        )
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => self.healthz(),
            ("GET", "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", self.metrics.render(&self.index)),
            (_, "/healthz" | "/metrics") => json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET"),
            _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }
}
