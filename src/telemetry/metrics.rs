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
    index: IndexGauges,
    reloads: IntCounterVec,
    servers: ServerFamilies,
    tunnels_open: IntGaugeVec,
    tunnel_bytes: IntCounterVec,
    /// TLS handshakes on the TLS listener that failed or timed out.
    pub tls_handshake_failures: IntCounter,
    /// Access log lines dropped because the log's queue was full (its target did not keep up).
    pub access_log_dropped: IntCounter,
    /// Client connections: open, refused at accept, closed by reason.
    pub connections: super::connections::ConnectionMetrics,
    /// Requests answered on the gateway's listeners by protocol: `[http/1.1, h2]` (an HTTP/2 stream
    /// is one request).
    pub protocol_requests: [IntCounter; 2],
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
    /// Every collector, registered in a new registry.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let r = &registry;
        register_build_info(r);
        let reloads = counter_vec(
            r,
            "tokengate_config_reloads_total",
            "Configuration reloads (SIGHUP), by result.",
            &["result"],
        );
        reloads.with_label_values(&["ok"]);
        reloads.with_label_values(&["error"]);
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
        Arc::new(Metrics {
            requests: counter_vec(
                r,
                "tokengate_requests_total",
                "Requests answered, by route, status class and auth outcome.",
                &["route", "status_class", "auth"],
            ),
            duration: register(r, duration),
            upstream_errors: counter_vec(
                r,
                "tokengate_upstream_errors_total",
                "Failures talking to an upstream, by route and kind.",
                &["route", "kind"],
            ),
            limited: counter_vec(
                r,
                "tokengate_limited_total",
                "Requests refused with 429 by a rate limit or quota, by route and kind (rate, user_rate, quota, in_flight).",
                &["route", "kind"],
            ),
            bytes_in: counter_vec(
                r,
                "tokengate_request_body_bytes_total",
                "Request body bytes received from clients, by route.",
                &["route"],
            ),
            bytes_out: counter_vec(
                r,
                "tokengate_response_body_bytes_total",
                "Response body bytes sent to clients, by route.",
                &["route"],
            ),
            index: IndexGauges::register(r),
            reloads,
            servers: ServerFamilies::register(r),
            tunnels_open: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tokengate_websocket_tunnels_open",
                        "WebSocket tunnels open now, by route.",
                    ),
                    &["route"],
                )
                .expect("metric"),
            ),
            tunnel_bytes: counter_vec(
                r,
                "tokengate_websocket_bytes_total",
                "Bytes relayed through closed WebSocket tunnels, by route and direction (to_upstream, to_client).",
                &["route", "direction"],
            ),
            tls_handshake_failures: counter(
                r,
                "tokengate_tls_handshake_failures_total",
                "TLS handshakes on the TLS listener that failed or did not finish within header_timeout.",
            ),
            access_log_dropped: counter(
                r,
                "tokengate_access_log_dropped_total",
                "Access log lines dropped because a worker's log buffer (4 MiB) was full: its target did not keep up.",
            ),
            connections: super::connections::ConnectionMetrics::register(r),
            protocol_requests: {
                let v = counter_vec(
                    r,
                    "tokengate_protocol_requests_total",
                    "Requests answered on the gateway's listeners, by protocol (http/1.1, h2: one HTTP/2 stream is one request).",
                    &["protocol"],
                );
                [
                    v.with_label_values(&["http/1.1"]),
                    v.with_label_values(&["h2"]),
                ]
            },
            registry,
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
            up: self.servers.up.with_label_values(&labels),
            requests: self.servers.requests.with_label_values(&labels),
            failures: self.servers.failures.with_label_values(&labels),
            checks_ok: self
                .servers
                .health_checks
                .with_label_values(&[route, server, "ok"]),
            checks_failed: self
                .servers
                .health_checks
                .with_label_values(&[route, server, "failed"]),
        }
    }

    /// Drops the series of a server a reload removed (a stale `up` would mislead).
    pub fn forget_server(&self, route: &str, server: &str) {
        let labels = [route, server];
        let _ = self.servers.up.remove_label_values(&labels);
        let _ = self.servers.requests.remove_label_values(&labels);
        let _ = self.servers.failures.remove_label_values(&labels);
        for result in ["ok", "failed"] {
            let _ = self
                .servers
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
        self.index.refresh(index);
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encode metrics");
        out
    }
}

/// The gauges read from the index when the metrics are rendered.
struct IndexGauges {
    tokens: IntGauge,
    since_sync: prometheus::Gauge,
    since_flush: prometheus::Gauge,
    sync_ok: IntGauge,
}

impl IndexGauges {
    fn register(r: &Registry) -> IndexGauges {
        IndexGauges {
            tokens: register(
                r,
                IntGauge::new(
                    "tokengate_index_tokens",
                    "Token digests held in the in-memory index.",
                )
                .expect("metric"),
            ),
            since_sync: register(
                r,
                prometheus::Gauge::new(
                    "tokengate_seconds_since_last_sync",
                    "Seconds since the index last checked the database successfully.",
                )
                .expect("metric"),
            ),
            since_flush: register(
                r,
                prometheus::Gauge::new(
                    "tokengate_seconds_since_last_usage_flush",
                    "Seconds since usage counters were last written to the database.",
                )
                .expect("metric"),
            ),
            sync_ok: register(
                r,
                IntGauge::new(
                    "tokengate_store_healthy",
                    "1 when the last database sync succeeded, else 0.",
                )
                .expect("metric"),
            ),
        }
    }

    /// Sets the gauges from the index as it is now.
    fn refresh(&self, index: &Index) {
        let now = crate::clock::now() as i64;
        self.tokens.set(index.len() as i64);
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
    }
}

/// The families of every route's servers (labels `route`, `server`).
struct ServerFamilies {
    up: IntGaugeVec,
    requests: IntCounterVec,
    failures: IntCounterVec,
    health_checks: IntCounterVec,
}

impl ServerFamilies {
    fn register(r: &Registry) -> ServerFamilies {
        ServerFamilies {
            up: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tokengate_upstream_server_up",
                        "1 while a route's server is in rotation, 0 while health checks or failures keep it out.",
                    ),
                    &["route", "server"],
                )
                .expect("metric"),
            ),
            requests: counter_vec(
                r,
                "tokengate_upstream_server_requests_total",
                "Requests sent to each server of a route.",
                &["route", "server"],
            ),
            failures: counter_vec(
                r,
                "tokengate_upstream_server_failures_total",
                "Connections a route's server refused, reset or let time out before a request went out.",
                &["route", "server"],
            ),
            health_checks: counter_vec(
                r,
                "tokengate_upstream_health_checks_total",
                "Active health checks of each server of a route, by result (ok, failed).",
                &["route", "server", "result"],
            ),
        }
    }
}

/// `tokengate_build_info{version}`, always 1.
fn register_build_info(r: &Registry) {
    let build = IntGauge::with_opts(
        Opts::new(
            "tokengate_build_info",
            "Build information; the value is always 1.",
        )
        .const_label("version", env!("CARGO_PKG_VERSION")),
    )
    .expect("metric");
    build.set(1);
    register(r, build);
}

/// Registers `c` in `r` and returns it (a collector is a handle: the clone counts into the same series).
fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("register metric");
    c
}

/// A counter family, registered.
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("metric"),
    )
}

/// A counter, registered.
fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("metric"))
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
