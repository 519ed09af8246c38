//! Running the gateway in production: what operators and their tools see.
//!
//! - [`admin`]: the admin listener — `/healthz`, `/metrics`, the token API and its page.
//! - [`metrics`]: the Prometheus registry and per-route collectors.
//! - [`access_log`]: the non-blocking access log, bounded in bytes (8 MiB queued; long paths cut).

pub mod access_log;
pub mod admin;
pub mod metrics;
