//! The one shape of every JSON error answer the gateway writes, on every listener and door:
//! `{"error": code, "detail": text}`, plus `scope` (the scope a 403 names) and `request_id` (the
//! request's `x-request-id`) when there are. The decision's refusals, the admin API's errors, the admin
//! listener's own answers and the secret-scanning door all write their bodies here, so a client parses
//! one shape whichever part of the gateway answered.
//!
//! And the one catalogue of the answers the gateway gives from itself on its listeners ([`Answer`]):
//! each one's status, JSON `error` code and whether it carries a `WWW-Authenticate` challenge, in one
//! table ([`Answer::spec`]). Callers name an answer; nobody else spells a status with a code.

/// Every answer the gateway gives from itself on its listeners (refusals, bad heads, upstream failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The request is not one the gateway forwards (its target, its path, a chunked body's framing).
    InvalidRequest,
    /// The request head is larger than `max_head_bytes` or has too many fields.
    HeadTooLarge,
    /// A transfer coding other than `chunked`.
    NotImplemented,
    MethodNotAllowed,
    NotFound,
    /// A `tls_only` route asked over plain TCP.
    TlsRequired,
    /// The caller may not ask this listener (the verify listener's untrusted askers).
    Forbidden,
    /// No credential on a bearer route (RFC 6750: the challenge names no error).
    BearerRequired,
    /// More than one `Authorization` field, or one that is not a bearer credential.
    BadCredential,
    /// Unknown, revoked, expired, rotated out, or bound to another certificate.
    InvalidToken,
    /// The token lacks the route's scope.
    InsufficientScope,
    /// The client's address failed authentication too often.
    TooManyFailures,
    RateLimited,
    QuotaExceeded,
    /// The token has `max_in_flight_per_token` requests or tunnels open.
    ConcurrencyLimited,
    /// The address has `max_connections_per_address` connections open.
    TooManyConnections,
    /// `max_connections` or `max_in_flight` reached.
    Overloaded,
    PayloadTooLarge,
    LengthRequired,
    /// A head or body not received in time (or slower than `min_body_rate`).
    RequestTimeout,
    /// The upstream could not be reached or failed.
    BadGateway,
    /// The upstream's TLS certificate could not be verified, or its handshake failed.
    UpstreamTls,
    /// No server of the route is in rotation.
    NoHealthyUpstream,
    /// The upstream did not answer in time.
    GatewayTimeout,
}

/// Whether an answer carries a `WWW-Authenticate: Bearer` challenge (RFC 6750 section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    None,
    Bearer,
}

impl Answer {
    /// The catalogue: status, JSON `error` code, challenge.
    pub const fn spec(self) -> (u16, &'static str, Challenge) {
        use Answer::*;
        use Challenge::Bearer;
        match self {
            InvalidRequest => (400, "invalid_request", Challenge::None),
            HeadTooLarge => (431, "invalid_request", Challenge::None),
            NotImplemented => (501, "not_implemented", Challenge::None),
            MethodNotAllowed => (405, "method_not_allowed", Challenge::None),
            NotFound => (404, "not_found", Challenge::None),
            TlsRequired => (403, "tls_required", Challenge::None),
            Forbidden => (403, "forbidden", Challenge::None),
            BearerRequired => (401, "unauthorized", Bearer),
            BadCredential => (400, "invalid_request", Bearer),
            InvalidToken => (401, "invalid_token", Bearer),
            InsufficientScope => (403, "insufficient_scope", Bearer),
            TooManyFailures => (429, "too_many_requests", Challenge::None),
            RateLimited => (429, "rate_limited", Challenge::None),
            QuotaExceeded => (429, "quota_exceeded", Challenge::None),
            ConcurrencyLimited => (429, "concurrency_limited", Challenge::None),
            TooManyConnections => (429, "too_many_connections", Challenge::None),
            Overloaded => (503, "overloaded", Challenge::None),
            PayloadTooLarge => (413, "payload_too_large", Challenge::None),
            LengthRequired => (411, "length_required", Challenge::None),
            RequestTimeout => (408, "request_timeout", Challenge::None),
            BadGateway => (502, "bad_gateway", Challenge::None),
            UpstreamTls => (502, "upstream_tls", Challenge::None),
            NoHealthyUpstream => (502, "no_healthy_upstream", Challenge::None),
            GatewayTimeout => (504, "gateway_timeout", Challenge::None),
        }
    }

    pub const fn status(self) -> u16 {
        self.spec().0
    }

    /// The JSON `error` code.
    pub const fn code(self) -> &'static str {
        self.spec().1
    }

    pub const fn challenge(self) -> Challenge {
        self.spec().2
    }
}

/// An error answer's body fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorBody<'a> {
    /// The machine-readable code (`invalid_token`, `rate_limited`, `not_found`, ...).
    pub error: &'a str,
    /// What happened, for a person: never a credential.
    pub detail: &'a str,
    /// The scope a 403 names.
    pub scope: Option<&'a str>,
    /// The group or license a 403 names (`group:NAME`, `license:NAME`).
    pub missing: Option<&'a str>,
    /// The request's id.
    pub request_id: Option<&'a str>,
}

impl<'a> ErrorBody<'a> {
    pub fn new(error: &'a str, detail: &'a str) -> ErrorBody<'a> {
        ErrorBody {
            error,
            detail,
            ..ErrorBody::default()
        }
    }

    /// The JSON text.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = serde_json::json!({ "error": self.error, "detail": self.detail });
        if let Some(id) = self.request_id {
            v["request_id"] = id.into();
        }
        if let Some(s) = self.scope {
            v["scope"] = s.into();
        }
        if let Some(m) = self.missing {
            v["missing"] = m.into();
        }
        serde_json::to_vec(&v).expect("json")
    }
}

/// `{"error", "detail"}`.
pub fn error_body(error: &str, detail: &str) -> Vec<u8> {
    ErrorBody::new(error, detail).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_challenges_exactly_the_authentication_answers() {
        use super::super::auth::Denial;
        for d in [
            Denial::Missing,
            Denial::Multiple,
            Denial::Unknown,
            Denial::Expired,
            Denial::InsufficientScope("s".into()),
        ] {
            assert_eq!(d.answer().challenge(), Challenge::Bearer, "{d:?}");
            assert_eq!(d.status(), d.answer().status());
        }
        for a in [
            Answer::InvalidRequest,
            Answer::NotFound,
            Answer::RateLimited,
            Answer::BadGateway,
        ] {
            assert_eq!(a.challenge(), Challenge::None);
            assert!((400..600).contains(&a.status()));
        }
    }

    #[test]
    fn one_shape_with_optional_scope_and_request_id() {
        let v: serde_json::Value =
            serde_json::from_slice(&error_body("not_found", "no \"route\"")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "not_found", "detail": "no \"route\""})
        );
        let full = ErrorBody {
            scope: Some("video:upload"),
            request_id: Some("abc"),
            ..ErrorBody::new("insufficient_scope", "needs video:upload")
        };
        let v: serde_json::Value = serde_json::from_slice(&full.to_vec()).unwrap();
        assert_eq!(v["scope"], "video:upload");
        assert_eq!(v["request_id"], "abc");
    }
}
