//! The gateway's policy: who gets in, and what the upstream is told about them.
//!
//! - [`decision`]: the one pure function every transport calls — request facts in, a [`Verdict`] out.
//! - [`recheck`]: the same rules asked again of an open stream (tunnel, upload) at every tick.
//! - [`paths`]: request targets and the path check (reject, don't normalise).
//! - [`routes`]: the route table and longest-prefix matching.
//! - [`answer`]: the catalogue of answers ([`answer::Answer`]: status, error code, challenge) and the one
//!   shape of every JSON error body (`{"error", "detail"}`, scope, request id).
//! - [`auth`]: `Authorization` parsing, the token check, RFC 6750 answers.
//! - [`limits`]: rate limits and quotas per token, user and route (GCRA, exact quota counts).
//! - [`throttle`]: per-address throttling of failed authentications.
//! - [`forwarded`]: the original request behind a forward-auth question (`X-Forwarded-*`), as facts
//!   for the same decision.
//! - [`mqtt`]: MQTT brokers' authentication and topic authorization on the same tokens, and the
//!   revocation feed.
//! - [`signing`]: the optional HMAC signature header for upstreams.

pub mod answer;
pub mod auth;
pub mod decision;
pub mod forwarded;
pub mod limits;
pub mod mqtt;
pub mod paths;
pub mod recheck;
pub mod routes;
pub mod signing;
pub mod throttle;

pub use decision::{Forward, Gate, Refusal, Request, Rewrite, TlsPeer, Verdict};
pub use recheck::{Admitted, Lapse};
