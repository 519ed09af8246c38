//! What the wire writes and operators read: counters and the access log's sink. Below the transport that
//! writes into them and the admin listener that exposes them, so neither depends on the other.
//!
//! - [`metrics`]: the Prometheus registry and per-route collectors (and the upstream failure kinds they
//!   count).
//! - [`connections`]: client connections open, refused at accept (by limit) and closed (by reason).
//! - [`verify`]: the verify listener's answers by door and outcome.
//! - [`access_log`]: the access log: lines formatted by each worker into its own 4 MiB ring, written by a
//!   writer thread (long paths cut; a full ring drops and counts).

pub mod access_log;
pub mod connections;
pub mod metrics;
pub mod verify;
