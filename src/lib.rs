//! tokengate: an authentication gateway on pingora. Devices send `Authorization: Bearer <token>`; the
//! gateway checks the token against an in-memory index of SHA-256 digests kept in sync with SQLite,
//! removes the credential, injects the owner's identity (`x-user-id`) and forwards to the route's upstream.
//!
//! # Layout
//! - [`config`]: the TOML schema, defaults and validation (file/key/problem errors).
//! - [`token`]: the token format — generation from the OS CSPRNG, checksum, digest.
//! - [`store`]: SQLite — migrations, create/list/revoke/rotate, events, change feed, usage flush.
//! - [`index`]: the lock-free digest → entry map, its sync loop and the usage counters.
//! - [`auth`]: `Authorization` parsing and the allow/deny decision with RFC 6750 answers.
//! - [`routes`]: the route table, path checks and longest-prefix matching.
//! - [`proxy`]: the forwarding engine (a pingora `ServerApp`): per connection, read, decide, rewrite,
//!   forward, relay — wiring the above together.
//! - [`http1`]: HTTP/1.x on the wire — heads, framing, the chunked coding, hop-by-hop fields.
//! - [`upstream`]: connections to a route's upstream and their idle pool.
//! - [`admin`]: the admin listener — `/healthz`, `/metrics`, the token API and page.
//! - [`metrics`]: the Prometheus registry and per-route collectors.
//! - [`clock`]: the coarse clock read on the request path.
//! - [`throttle`]: per-address throttling of failed authentications.
//! - [`access_log`]: the non-blocking access log.
//! - [`signing`]: the optional HMAC signature header for upstreams.
//! - [`server`]: `serve` — assembling and running the pingora server.
//! - [`cli`]: the command line.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod http1;
pub mod index;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod signing;
pub mod store;
pub mod throttle;
pub mod token;
pub mod upstream;
