//! tokengate: an authentication gateway on pingora. Devices send `Authorization: Bearer <token>`; the
//! gateway checks the token against an in-memory index of SHA-256 digests kept in sync with the store,
//! removes the credential, injects the owner's identity (`x-user-id`) and forwards to the route's upstream.
//!
//! # Layout
//! Rooms by concern; dependencies point down this list (no cycles):
//! - [`server`], [`cli`], [`logging`]: assembling and running the pingora server; the command line; the
//!   logger (which never lets the libraries that print statement parameters and request heads do so).
//! - [`ops`]: the admin listener (API, page, `/healthz`, `/metrics` rendered from [`telemetry`]).
//! - [`transport`]: bytes on the wire — the HTTP/1 connection loop, forwarding, upstream connections.
//! - [`telemetry`]: counters and the access log's sink, written by the transport, read by ops.
//! - [`gateway`]: the policy — the one pure decision every transport calls, routes, auth, throttle,
//!   signing.
//! - [`tokens`]: the token format, field checks, the store, the in-memory index and its sync.
//! - [`config`]: the TOML schema, defaults and validation (file/key/problem errors).
//! - [`shutdown`]: the background threads' stop signal.
//! - [`clock`]: the coarse clock read on the request path; [`limiter`]: rate bucket and quota counter
//!   primitives (no policy).
//! - [`crypto`]: the rustls set-up shared by the edge, the https upstreams and the PostgreSQL client
//!   (provider, PEM reading, trust roots, client configs); uses no other room.

pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod gateway;
pub mod limiter;
pub mod logging;
pub mod ops;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tokens;
pub mod transport;
