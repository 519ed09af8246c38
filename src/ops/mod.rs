//! Running the gateway in production: what operators and their tools see.
//!
//! - [`admin`]: the admin listener — `/healthz`, `/metrics`, the token API and its page.
//! - [`leaks`]: the secret-scanning endpoint on the gateway's listeners (`[leaks]`): leaked tokens revoke
//!   themselves.
//!
//! The counters and the access log it exposes live below the transport that writes them, in
//! [`crate::telemetry`].

pub mod admin;
pub mod leaks;
