//! The Prometheus registry and collectors. Label values come from fixed sets (route names from the
//! config, status classes, auth outcomes, error kinds): never a token, user id or raw path.
//!
//! Per-route collectors are resolved once when the route table is built ([`RouteMetrics`]), so a request
//! increments plain atomics instead of looking labels up.

use crate::gateway::auth::Outcome;
use crate::gateway::limits::LimitKind;
use crate::tokens::index::Index;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;

const OUTCOMES: [Outcome; 12] = [
    Outcome::Ok,
    Outcome::Missing,
    Outcome::Invalid,
    Outcome::Expired,
    Outcome::Revoked,
    Outcome::InsufficientScope,
    Outcome::Throttled,
    Outcome::CertMismatch,
    Outcome::RateLimited,
    Outcome::QuotaExceeded,
    Outcome::Public,
    Outcome::None,
];
const STATUS_CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upstream failure kinds, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    ConnectRefused,
    ConnectTimeout,
    ReadTimeout,
    WriteTimeout,
    Reset,
    /// The TLS handshake with the upstream failed (certificate not verified, no common parameters).
    Tls,
    /// Every server of the route is out of rotation.
    NoHealthy,
    Other,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 8] = [
        UpstreamError::ConnectRefused,
        UpstreamError::ConnectTimeout,
        UpstreamError::ReadTimeout,
        UpstreamError::WriteTimeout,
        UpstreamError::Reset,
        UpstreamError::Tls,
        UpstreamError::NoHealthy,
        UpstreamError::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::ConnectRefused => "connect_refused",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::ReadTimeout => "read_timeout",
            UpstreamError::WriteTimeout => "write_timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::Tls => "tls",
            UpstreamError::NoHealthy => "no_healthy_upstream",
            UpstreamError::Other => "other",
        }
    }
}

/// All collectors, registered in one registry served at `/metrics`.
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    limited: IntCounterVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    index_tokens: IntGauge,
    since_sync: prometheus::Gauge,
    since_flush: prometheus::Gauge,
    sync_ok: IntGauge,
    reloads: IntCounterVec,
    server_up: IntGaugeVec,
    tunnels_open: IntGaugeVec,
    tunnel_bytes: IntCounterVec,
    server_requests: IntCounterVec,
    server_failures: IntCounterVec,
    health_checks: IntCounterVec,
    /// TLS handshakes on the TLS listener that failed or timed out.
    pub tls_handshake_failures: IntCounter,
    /// Access log lines dropped because the log's queue was full (its target did not keep up).
    pub access_log_dropped: IntCounter,
    /// Client connections: open, refused at accept, closed by reason.
    pub connections: super::connections::ConnectionMetrics,
}

/// One route's collectors, resolved once.
pub struct RouteMetrics {
    requests: Vec<IntCounter>,
    pub duration: Histogram,
    upstream_errors: Vec<IntCounter>,
    limited: Vec<IntCounter>,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    /// WebSocket tunnels open now, and the bytes they carried each way.
    pub tunnels_open: IntGauge,
    pub tunnel_bytes_to_upstream: IntCounter,
    pub tunnel_bytes_to_client: IntCounter,
}

/// One server's collectors (label `server`: the address as configured), resolved once.
pub struct ServerMetrics {
    /// 1 while the server is in rotation.
    pub up: IntGauge,
    /// Requests sent to it.
    pub requests: IntCounter,
    /// Connections it refused, reset or let time out before a request went out.
    pub failures: IntCounter,
    pub checks_ok: IntCounter,
    pub checks_failed: IntCounter,
}

impl RouteMetrics {
    /// Counts one finished request.
    #[inline]
    pub fn count(&self, status: u16, outcome: Outcome) {
        let class = match status {
            100..=599 => (status / 100) as usize,
            _ => 0,
        };
        let o = OUTCOMES
            .iter()
            .position(|x| *x == outcome)
            .unwrap_or(OUTCOMES.len() - 1);
        self.requests[class * OUTCOMES.len() + o].inc();
    }

    /// Counts a request refused by a limit (429).
    pub fn limited(&self, kind: LimitKind) {
        if let Some(i) = LimitKind::ALL.iter().position(|k| *k == kind) {
            self.limited[i].inc();
        }
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        let i = UpstreamError::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(UpstreamError::ALL.len() - 1);
        self.upstream_errors[i].inc();
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tokengate_requests_total",
                "Requests answered, by route, status class and auth outcome.",
            ),
            &["route", "status_class", "auth"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tokengate_request_duration_seconds",
                "Time from request to end of response, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route"],
        )
        .expect("metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "tokengate_upstream_errors_total",
                "Failures talking to an upstream, by route and kind.",
            ),
            &["route", "kind"],
        )
        .expect("metric");
        let limited = IntCounterVec::new(
            Opts::new(
                "tokengate_limited_total",
                "Requests refused with 429 by a rate limit or quota, by route and kind (rate, user_rate, quota, in_flight).",
            ),
            &["route", "kind"],
        )
        .expect("metric");
        let bytes_in = IntCounterVec::new(
            Opts::new(
                "tokengate_request_body_bytes_total",
                "Request body bytes received from clients, by route.",
            ),
            &["route"],
        )
        .expect("metric");
        let bytes_out = IntCounterVec::new(
            Opts::new(
                "tokengate_response_body_bytes_total",
                "Response body bytes sent to clients, by route.",
            ),
            &["route"],
        )
        .expect("metric");
        let index_tokens = IntGauge::new(
            "tokengate_index_tokens",
            "Token digests held in the in-memory index.",
        )
        .expect("metric");
        let since_sync = prometheus::Gauge::new(
            "tokengate_seconds_since_last_sync",
            "Seconds since the index last checked the database successfully.",
        )
        .expect("metric");
        let since_flush = prometheus::Gauge::new(
            "tokengate_seconds_since_last_usage_flush",
            "Seconds since usage counters were last written to the database.",
        )
        .expect("metric");
        let sync_ok = IntGauge::new(
            "tokengate_store_healthy",
            "1 when the last database sync succeeded, else 0.",
        )
        .expect("metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "tokengate_config_reloads_total",
                "Configuration reloads (SIGHUP), by result.",
            ),
            &["result"],
        )
        .expect("metric");
        let tunnels_open = IntGaugeVec::new(
            Opts::new(
                "tokengate_websocket_tunnels_open",
                "WebSocket tunnels open now, by route.",
            ),
            &["route"],
        )
        .expect("metric");
        let tunnel_bytes = IntCounterVec::new(
            Opts::new(
                "tokengate_websocket_bytes_total",
                "Bytes relayed through closed WebSocket tunnels, by route and direction (to_upstream, to_client).",
            ),
            &["route", "direction"],
        )
        .expect("metric");
        let server_up = IntGaugeVec::new(
            Opts::new(
                "tokengate_upstream_server_up",
                "1 while a route's server is in rotation, 0 while health checks or failures keep it out.",
            ),
            &["route", "server"],
        )
        .expect("metric");
        let server_requests = IntCounterVec::new(
            Opts::new(
                "tokengate_upstream_server_requests_total",
                "Requests sent to each server of a route.",
            ),
            &["route", "server"],
        )
        .expect("metric");
        let server_failures = IntCounterVec::new(
            Opts::new(
                "tokengate_upstream_server_failures_total",
                "Connections a route's server refused, reset or let time out before a request went out.",
            ),
            &["route", "server"],
        )
        .expect("metric");
        let health_checks = IntCounterVec::new(
            Opts::new(
                "tokengate_upstream_health_checks_total",
                "Active health checks of each server of a route, by result (ok, failed).",
            ),
            &["route", "server", "result"],
        )
        .expect("metric");
        let tls_handshake_failures = IntCounter::new(
            "tokengate_tls_handshake_failures_total",
            "TLS handshakes on the TLS listener that failed or did not finish within header_timeout.",
        )
        .expect("metric");
        let access_log_dropped = IntCounter::new(
            "tokengate_access_log_dropped_total",
            "Access log lines dropped because a worker's log buffer (1 MiB) was full: its target did not keep up.",
        )
        .expect("metric");
        reloads.with_label_values(&["ok"]);
        reloads.with_label_values(&["error"]);
        let build = IntGauge::with_opts(
            Opts::new(
                "tokengate_build_info",
                "Build information; the value is always 1.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("metric");
        build.set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(limited.clone()),
            Box::new(bytes_in.clone()),
            Box::new(bytes_out.clone()),
            Box::new(index_tokens.clone()),
            Box::new(since_sync.clone()),
            Box::new(since_flush.clone()),
            Box::new(sync_ok.clone()),
            Box::new(reloads.clone()),
            Box::new(server_up.clone()),
            Box::new(tunnels_open.clone()),
            Box::new(tunnel_bytes.clone()),
            Box::new(server_requests.clone()),
            Box::new(server_failures.clone()),
            Box::new(health_checks.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(build),
        ] {
            registry.register(c).expect("register metric");
        }
        let connections = super::connections::ConnectionMetrics::register(&registry);
        Arc::new(Metrics {
            registry,
            requests,
            duration,
            upstream_errors,
            limited,
            bytes_in,
            bytes_out,
            index_tokens,
            since_sync,
            since_flush,
            sync_ok,
            reloads,
            server_up,
            tunnels_open,
            tunnel_bytes,
            server_requests,
            server_failures,
            health_checks,
            tls_handshake_failures,
            access_log_dropped,
            connections,
        })
    }

    /// Resolves the collectors of one route (`route` is a configured route name or `none`).
    pub fn route(&self, route: &str) -> RouteMetrics {
        let mut requests = Vec::with_capacity(STATUS_CLASSES.len() * OUTCOMES.len());
        for class in STATUS_CLASSES {
            for o in OUTCOMES {
                requests.push(self.requests.with_label_values(&[route, class, o.as_str()]));
            }
        }
        RouteMetrics {
            requests,
            duration: self.duration.with_label_values(&[route]),
            upstream_errors: UpstreamError::ALL
                .iter()
                .map(|k| self.upstream_errors.with_label_values(&[route, k.as_str()]))
                .collect(),
            limited: LimitKind::ALL
                .iter()
                .map(|k| self.limited.with_label_values(&[route, k.as_str()]))
                .collect(),
            bytes_in: self.bytes_in.with_label_values(&[route]),
            bytes_out: self.bytes_out.with_label_values(&[route]),
            tunnels_open: self.tunnels_open.with_label_values(&[route]),
            tunnel_bytes_to_upstream: self.tunnel_bytes.with_label_values(&[route, "to_upstream"]),
            tunnel_bytes_to_client: self.tunnel_bytes.with_label_values(&[route, "to_client"]),
        }
    }

    /// Resolves the collectors of `server` (as configured) on route `route`.
    pub fn server(&self, route: &str, server: &str) -> ServerMetrics {
        let labels = [route, server];
        ServerMetrics {
            up: self.server_up.with_label_values(&labels),
            requests: self.server_requests.with_label_values(&labels),
            failures: self.server_failures.with_label_values(&labels),
            checks_ok: self.health_checks.with_label_values(&[route, server, "ok"]),
            checks_failed: self
                .health_checks
                .with_label_values(&[route, server, "failed"]),
        }
    }

    /// Drops the series of a server a reload removed (a stale `up` would mislead).
    pub fn forget_server(&self, route: &str, server: &str) {
        let labels = [route, server];
        let _ = self.server_up.remove_label_values(&labels);
        let _ = self.server_requests.remove_label_values(&labels);
        let _ = self.server_failures.remove_label_values(&labels);
        for result in ["ok", "failed"] {
            let _ = self
                .health_checks
                .remove_label_values(&[route, server, result]);
        }
    }

    /// Counts one configuration reload.
    pub fn reloads(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Renders the Prometheus text format, refreshing the gauges read from the index first.
    pub fn render(&self, index: &Index) -> Vec<u8> {
        let now = crate::clock::now() as i64;
        self.index_tokens.set(index.len() as i64);
        let age = |t: i64| {
            if t == 0 {
                f64::NAN
            } else {
                (now - t).max(0) as f64
            }
        };
        self.since_sync
            .set(age(index.health.last_sync.load(Ordering::Relaxed)));
        self.since_flush
            .set(age(index.health.last_flush.load(Ordering::Relaxed)));
        let healthy = index
            .health
            .sync_error
            .lock()
            .map(|e| e.is_none())
            .unwrap_or(false);
        self.sync_ok.set(healthy as i64);
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encode metrics");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_route_counters() {
        let m = Metrics::new();
        let r = m.route("telemetry");
        r.count(200, Outcome::Ok);
        r.count(401, Outcome::Invalid);
        r.upstream_error(UpstreamError::ConnectRefused);
        let text = String::from_utf8(m.render(&Index::new())).unwrap();
        assert!(
            text.contains(
                r#"tokengate_requests_total{auth="ok",route="telemetry",status_class="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"tokengate_requests_total{auth="invalid",route="telemetry",status_class="4xx"} 1"#
        ));
        assert!(text.contains(
            r#"tokengate_upstream_errors_total{kind="connect_refused",route="telemetry"} 1"#
        ));
        assert!(text.contains("tokengate_build_info{version="));
        assert!(
            text.contains("tokengate_access_log_dropped_total 0"),
            "{text}"
        );
    }
}
