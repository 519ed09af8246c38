//! Running the gateway in production: what operators and their tools see.
//!
//! - [`admin`]: the admin listener — `/healthz`, `/metrics`, the token API and its page.
//!
//! The counters and the access log it exposes live below the transport that writes them, in
//! [`crate::telemetry`].

pub mod admin;
