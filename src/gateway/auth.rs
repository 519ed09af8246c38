//! The allow/deny decision: parsing the one `Authorization` header, checking the token's format, looking
//! its digest up, and the status, expiry, scope, group and license checks. Denials carry their RFC 6750 answer.

use super::answer::Answer;
use crate::tokens::format::{self as token, Digest, FormatError};
use crate::tokens::index::{Entry, Index};
use http::{header::AUTHORIZATION, HeaderMap};
use std::sync::Arc;

/// The longest `Authorization` value considered; longer is a malformed request (a token is 52 bytes).
pub const MAX_AUTHORIZATION_LEN: usize = 1024;

/// The realm in every challenge.
pub const REALM: &str = "tokengate";

/// Why a request is not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No `Authorization` header, or one with another scheme.
    Missing,
    /// More than one `Authorization` header.
    Multiple,
    /// A Bearer credential that is not syntactically a token (empty, extra parts, bad characters, too long).
    Malformed(&'static str),
    /// Syntactically fine but not one of our tokens (prefix, length or checksum wrong).
    BadFormat(FormatError),
    /// Well-formed but not in the index, or a rotated-out secret whose grace period ended.
    Unknown,
    Revoked,
    /// Revoked because it was reported leaked (`[leaks]`).
    Leaked,
    Expired,
    /// Valid token without the route's required scope.
    InsufficientScope(String),
    /// Valid token (nor its user) not in the route's `required_group`.
    NotInGroup(String),
    /// Valid token (nor its user) without the route's `required_license`, or with it past its end.
    NoLicense(String),
    /// A token bound to a client certificate, presented without that certificate (or not over TLS).
    CertificateMismatch,
}

/// The auth outcome as a metric label value. A fixed set: never a token, user or path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Missing,
    Invalid,
    Expired,
    Revoked,
    InsufficientScope,
    /// Refused with 429: too many failures from this address.
    Throttled,
    /// A certificate-bound token without its certificate.
    CertMismatch,
    /// Refused with 429: over a rate limit (the token's, the route's per token or per user).
    RateLimited,
    /// Refused with 429: the token's quota for the period is used up.
    QuotaExceeded,
    /// The route needs no credential.
    Public,
    /// Refused before authentication (no route, bad path).
    None,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Missing => "missing",
            Outcome::Invalid => "invalid",
            Outcome::Expired => "expired",
            Outcome::Revoked => "revoked",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::Throttled => "throttled",
            Outcome::CertMismatch => "cert_mismatch",
            Outcome::RateLimited => "rate_limited",
            Outcome::QuotaExceeded => "quota_exceeded",
            Outcome::Public => "public",
            Outcome::None => "none",
        }
    }
}

impl Denial {
    /// The answer of the catalogue ([`Answer`]) this denial gets.
    pub fn answer(&self) -> Answer {
        match self {
            Denial::Missing => Answer::BearerRequired,
            Denial::Multiple | Denial::Malformed(_) => Answer::BadCredential,
            Denial::InsufficientScope(_) => Answer::InsufficientScope,
            Denial::NotInGroup(_) | Denial::NoLicense(_) => Answer::Forbidden,
            _ => Answer::InvalidToken,
        }
    }

    pub fn status(&self) -> u16 {
        self.answer().status()
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            Denial::Missing => Outcome::Missing,
            Denial::Revoked | Denial::Leaked => Outcome::Revoked,
            Denial::Expired => Outcome::Expired,
            Denial::InsufficientScope(_) | Denial::NotInGroup(_) | Denial::NoLicense(_) => {
                Outcome::InsufficientScope
            }
            Denial::CertificateMismatch => Outcome::CertMismatch,
            _ => Outcome::Invalid,
        }
    }

    /// The RFC 6750 error code, if any (none when no credential was sent, section 3.1).
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            Denial::Missing => None,
            _ => Some(self.answer().code()),
        }
    }

    /// A human description. Never contains the credential.
    pub fn description(&self) -> String {
        match self {
            Denial::Missing => "a bearer token is required".into(),
            Denial::Multiple => "exactly one Authorization header is allowed".into(),
            Denial::Malformed(why) => (*why).into(),
            Denial::BadFormat(e) => e.to_string(),
            Denial::Unknown => "the token is not valid".into(),
            Denial::Revoked => "the token has been revoked".into(),
            Denial::Leaked => "revoked: reported leaked".into(),
            Denial::Expired => "the token has expired".into(),
            Denial::InsufficientScope(s) => format!("this route requires the scope {s}"),
            Denial::NotInGroup(g) => format!("this route requires membership of the group {g}"),
            Denial::NoLicense(l) => format!("this route requires a valid license {l}"),
            Denial::CertificateMismatch => {
                "the token is bound to a client certificate: send it over TLS with that certificate"
                    .into()
            }
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 section 3).
    pub fn challenge(&self) -> String {
        let mut c = format!("Bearer realm=\"{REALM}\"");
        if let Some(code) = self.error_code() {
            c.push_str(&format!(
                ", error=\"{code}\", error_description=\"{}\"",
                self.description()
            ));
        }
        if let Denial::InsufficientScope(s) = self {
            c.push_str(&format!(", scope=\"{s}\""));
        }
        c
    }

    /// The JSON body: `{"error": ..., "detail": ...}` (plus `scope` or `missing` for 403).
    pub fn body(&self) -> Vec<u8> {
        let missing = self.missing();
        super::answer::ErrorBody {
            scope: match self {
                Denial::InsufficientScope(s) => Some(s),
                _ => None,
            },
            missing: missing.as_deref(),
            ..super::answer::ErrorBody::new(self.answer().code(), &self.description())
        }
        .to_vec()
    }

    /// What a 403 for a group or license names: `group:NAME`, `license:NAME`.
    pub fn missing(&self) -> Option<String> {
        match self {
            Denial::NotInGroup(g) => Some(format!("group:{g}")),
            Denial::NoLicense(l) => Some(format!("license:{l}")),
            _ => None,
        }
    }

    /// Whether it counts as a failed guess towards the address's throttle: not a missing credential,
    /// nor a valid token lacking a scope, group or license.
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            Denial::Missing
                | Denial::InsufficientScope(_)
                | Denial::NotInGroup(_)
                | Denial::NoLicense(_)
        )
    }
}

/// Characters of RFC 6750's b64token (token68), apart from trailing '='.
fn is_b64token_char(b: u8) -> bool {
    B64TOKEN[b as usize]
}

/// `b64token` characters (RFC 6750 §2.1) as a table: one load per byte on the request path.
static B64TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        i += 1;
    }
    t
};

/// Extracts the bearer token from the request headers. Allocation-free.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, Denial> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let value = all.next().ok_or(Denial::Missing)?;
    if all.next().is_some() {
        return Err(Denial::Multiple);
    }
    parse_bearer(value.as_bytes())
}

/// Parses an `Authorization` value as `Bearer 1*SP b64token`.
pub fn parse_bearer(v: &[u8]) -> Result<&str, Denial> {
    if v.len() > MAX_AUTHORIZATION_LEN {
        return Err(Denial::Malformed("the Authorization header is too long"));
    }
    let scheme_end = v
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(v.len());
    if !v[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Err(Denial::Missing);
    }
    let rest = &v[scheme_end..];
    if rest.first() == Some(&b'\t') {
        return Err(Denial::Malformed(
            "the scheme and token must be separated by a space",
        ));
    }
    // `1*SP`: only spaces separate the scheme from the token (any other whitespace is malformed).
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    let token = &rest[spaces..];
    if token.first().is_some_and(|b| b.is_ascii_whitespace()) {
        return Err(Denial::Malformed(
            "the scheme and token must be separated by a space",
        ));
    }
    if token.is_empty() {
        return Err(Denial::Malformed("the bearer token is empty"));
    }
    let body_end = token
        .iter()
        .rposition(|&b| b != b'=')
        .map(|i| i + 1)
        .unwrap_or(0);
    if body_end == 0 || !token[..body_end].iter().all(|&b| is_b64token_char(b)) {
        return Err(Denial::Malformed(
            "the bearer token contains characters a token cannot have",
        ));
    }
    // All bytes are ASCII here.
    Ok(std::str::from_utf8(token).expect("ascii"))
}

/// A scope a route or endpoint requires, and the roles that grant it (resolved from `[roles]` when the
/// route table was built).
#[derive(Debug, Clone, Copy)]
pub struct Required<'a> {
    pub scope: &'a str,
    pub roles: &'a [Box<str>],
}

/// Everything a route asks of a token beyond being valid: a scope, a group, a license.
#[derive(Debug, Clone, Copy, Default)]
pub struct Requirements<'a> {
    pub scope: Option<Required<'a>>,
    /// `required_group`.
    pub group: Option<&'a str>,
    /// `required_license`.
    pub license: Option<&'a str>,
}

impl Requirements<'_> {
    /// Nothing beyond a valid token.
    pub const NONE: Requirements<'static> = Requirements {
        scope: None,
        group: None,
        license: None,
    };
}

/// The digest a presented credential is looked up by, once its format is checked (prefix, length,
/// checksum): a string that cannot be a token is never hashed or looked up.
pub fn digest(token: &str) -> Result<Digest, Denial> {
    token::check_format(token).map_err(Denial::BadFormat)?;
    Ok(Digest::of(token))
}

/// Decides whether `token` may use a route requiring `required_scope`, at unix time `now`, on a
/// connection whose client certificate has the SHA-256 `client_cert` (if any).
pub fn authorize(
    index: &Index,
    token: &str,
    required: Requirements<'_>,
    client_cert: Option<&[u8; 32]>,
    now: u64,
) -> Result<Arc<Entry>, Denial> {
    authorize_digest(index, &digest(token)?, required, client_cert, now)
}

/// The token rules, on the digest of what was presented: the index entry as it is now (a token edited
/// since is looked at in its new state), revoked, this digest's own validity (a secret rotated out, or
/// whose grace period ended, is unknown), expired, the certificate binding, and the required scope
/// with roles as `required_scope` resolves them (and the roles of the token's groups), the required
/// group and the required license valid at `now`. Every request goes through it ([`authorize`], from
/// the decision), and so does every re-check of an open stream ([`super::recheck`]).
pub fn authorize_digest(
    index: &Index,
    digest: &Digest,
    required: Requirements<'_>,
    client_cert: Option<&[u8; 32]>,
    now: u64,
) -> Result<Arc<Entry>, Denial> {
    let slot = index.get(digest).ok_or(Denial::Unknown)?;
    let entry = slot.entry;
    if entry.is_revoked() {
        return Err(if entry.is_leaked() {
            Denial::Leaked
        } else {
            Denial::Revoked
        });
    }
    if now >= slot.valid_until {
        return Err(Denial::Unknown);
    }
    if now >= entry.expires_at {
        return Err(Denial::Expired);
    }
    if let Some(bound) = entry.bound_cert.as_deref() {
        // Proof of possession (RFC 8705 style): the TLS peer holds the key of the bound certificate.
        let matches = client_cert
            .is_some_and(|c| bool::from(subtle::ConstantTimeEq::ct_eq(&c[..], &bound[..])));
        if !matches {
            return Err(Denial::CertificateMismatch);
        }
    }
    if let Some(r) = required.scope {
        if !entry.allows(r.scope, r.roles) {
            return Err(Denial::InsufficientScope(r.scope.to_string()));
        }
    }
    if let Some(g) = required.group {
        if !entry.in_group(g) {
            return Err(Denial::NotInGroup(g.to_string()));
        }
    }
    if let Some(l) = required.license {
        if !entry.holds_license(l, now) {
            return Err(Denial::NoLicense(l.to_string()));
        }
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::format::Token;
    use crate::tokens::store::IndexRow;
    use http::HeaderValue;

    #[test]
    fn parses_bearer_credentials() {
        assert_eq!(parse_bearer(b"Bearer abc"), Ok("abc"));
        assert_eq!(parse_bearer(b"bEaReR   abc=="), Ok("abc=="));
        assert_eq!(parse_bearer(b"Basic dXNlcjpwYXNz"), Err(Denial::Missing));
        assert_eq!(parse_bearer(b"Bearerabc"), Err(Denial::Missing));
        assert!(matches!(parse_bearer(b"Bearer"), Err(Denial::Malformed(_))));
        assert!(matches!(
            parse_bearer(b"Bearer "),
            Err(Denial::Malformed(_))
        ));
        assert!(matches!(
            parse_bearer(b"Bearer abc def"),
            Err(Denial::Malformed(_))
        ));
        assert!(matches!(
            parse_bearer(b"Bearer abc "),
            Err(Denial::Malformed(_))
        ));
        assert!(matches!(
            parse_bearer(b"Bearer\tabc"),
            Err(Denial::Malformed(_))
        ));
        for odd in [
            &b"Bearer \rz"[..],
            b"Bearer \nz",
            b"Bearer \x0cz",
            b"Bearer  \tz",
        ] {
            assert!(
                matches!(parse_bearer(odd), Err(Denial::Malformed(_))),
                "{odd:?}"
            );
        }
        assert!(matches!(
            parse_bearer(b"Bearer a\x01c"),
            Err(Denial::Malformed(_))
        ));
        assert!(matches!(
            parse_bearer(b"Bearer ="),
            Err(Denial::Malformed(_))
        ));
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_LEN));
        assert!(matches!(
            parse_bearer(long.as_bytes()),
            Err(Denial::Malformed(_))
        ));
    }

    #[test]
    fn multiple_headers_are_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), Err(Denial::Missing));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert_eq!(bearer_token(&h), Ok("a"));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(bearer_token(&h), Err(Denial::Multiple));
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(Denial::Missing.challenge(), "Bearer realm=\"tokengate\"");
        assert_eq!(
            Denial::Expired.challenge(),
            "Bearer realm=\"tokengate\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
        let c = Denial::InsufficientScope("video:write".into()).challenge();
        assert!(
            c.contains("error=\"insufficient_scope\"") && c.ends_with("scope=\"video:write\""),
            "{c}"
        );
        assert_eq!(Denial::InsufficientScope("x".into()).status(), 403);
        assert_eq!(Denial::Multiple.status(), 400);
    }

    #[test]
    fn decisions() {
        let index = Index::new();
        let t = Token::generate();
        let row = |id, digest, expires_at, revoked, rev| IndexRow {
            id,
            user: "alice".into(),
            digest,
            prev_digest: None,
            prev_valid_until: None,
            scopes: vec!["telemetry:write".into()],
            expires_at,
            revoked,
            rev,
            bound_cert: None,
            rate_limit: None,
            quota: None,
            quota_used: 0,
            quota_period: None,
            leaked: false,
            access: Default::default(),
        };
        index.apply(&row(1, t.digest(), Some(1000), false, 1));
        assert_eq!(
            authorize(&index, t.as_str(), Requirements::NONE, None, 999)
                .unwrap()
                .token_id,
            1
        );
        assert_eq!(
            authorize(
                &index,
                t.as_str(),
                Requirements {
                    scope: Some(Required {
                        scope: "telemetry:write",
                        roles: &[]
                    }),
                    ..Requirements::NONE
                },
                None,
                999
            )
            .unwrap()
            .token_id,
            1
        );
        assert_eq!(
            authorize(
                &index,
                t.as_str(),
                Requirements {
                    scope: Some(Required {
                        scope: "admin",
                        roles: &[]
                    }),
                    ..Requirements::NONE
                },
                None,
                999
            )
            .unwrap_err(),
            Denial::InsufficientScope("admin".into())
        );
        assert_eq!(
            authorize(&index, t.as_str(), Requirements::NONE, None, 1000).unwrap_err(),
            Denial::Expired
        );
        let other = Token::generate();
        assert_eq!(
            authorize(&index, other.as_str(), Requirements::NONE, None, 1).unwrap_err(),
            Denial::Unknown
        );
        assert_eq!(
            authorize(&index, "tg_short", Requirements::NONE, None, 1).unwrap_err(),
            Denial::BadFormat(FormatError::Length)
        );
        index.apply(&row(1, t.digest(), None, true, 2));
        assert_eq!(
            authorize(&index, t.as_str(), Requirements::NONE, None, 1).unwrap_err(),
            Denial::Revoked
        );
    }

    /// A token in a group (itself or through its user) with licenses: the route's group and license
    /// hold or refuse with the name missing; a license past its end refuses from that second, with no
    /// write; a group's role grants a route's scope but never `admin`; a full-access token is not
    /// made narrower by a group.
    #[test]
    fn groups_and_licenses() {
        use crate::tokens::store::Access;
        let index = Index::new();
        let (t, full) = (Token::generate(), Token::generate());
        let row = |id, digest, scopes: Vec<String>| IndexRow {
            id,
            user: "alice".into(),
            digest,
            prev_digest: None,
            prev_valid_until: None,
            scopes,
            expires_at: None,
            revoked: false,
            rev: id,
            bound_cert: None,
            rate_limit: None,
            quota: None,
            quota_used: 0,
            quota_period: None,
            leaked: false,
            access: Access::parse(
                Some("apiary-42\u{1f}beekeeper"),
                Some("video-analytics\u{1f}1000\u{1e}forever\u{1f}"),
            ),
        };
        index.apply(&row(1, t.digest(), vec!["other".into()]));
        index.apply(&row(2, full.digest(), vec![]));
        let req = |group, license| Requirements {
            scope: None,
            group,
            license,
        };
        let ask =
            |tok: &Token, r, now| authorize(&index, tok.as_str(), r, None, now).map(|e| e.token_id);
        assert_eq!(
            ask(&t, req(Some("apiary-42"), Some("video-analytics")), 999),
            Ok(1)
        );
        assert_eq!(
            ask(&full, req(Some("apiary-42"), Some("forever")), 5000),
            Ok(2)
        );
        let no_group = ask(&t, req(Some("apiary-4"), None), 999).unwrap_err();
        assert_eq!(no_group, Denial::NotInGroup("apiary-4".into()));
        assert_eq!(no_group.status(), 403);
        assert!(!no_group.is_failure());
        let body: serde_json::Value = serde_json::from_slice(&no_group.body()).unwrap();
        assert_eq!(body["error"], "forbidden");
        assert_eq!(body["missing"], "group:apiary-4");
        // The license ends at 1000: refused from that second on.
        let expired = ask(&t, req(None, Some("video-analytics")), 1000).unwrap_err();
        assert_eq!(expired, Denial::NoLicense("video-analytics".into()));
        let body: serde_json::Value = serde_json::from_slice(&expired.body()).unwrap();
        assert_eq!(body["missing"], "license:video-analytics");
        assert_eq!(
            ask(&t, req(None, Some("Video-Analytics")), 1).unwrap_err(),
            Denial::NoLicense("Video-Analytics".into())
        );
        // The group's role grants a scope (as `[roles]` resolves it), never a privileged one.
        let granting: Vec<Box<str>> = vec!["beekeeper".into()];
        let scope = |s| Requirements {
            scope: Some(Required {
                scope: s,
                roles: &granting,
            }),
            ..Requirements::NONE
        };
        assert_eq!(ask(&t, scope("hives:read"), 1), Ok(1));
        assert_eq!(
            ask(&t, scope("admin"), 1).unwrap_err(),
            Denial::InsufficientScope("admin".into())
        );
        assert_eq!(
            ask(&full, scope("tokens:self"), 1).unwrap_err(),
            Denial::InsufficientScope("tokens:self".into())
        );
        // Removed from the group (a new revision without it): refused at once.
        let mut gone = row(1, t.digest(), vec!["other".into()]);
        gone.access = Access::default();
        gone.rev = 10;
        index.apply(&gone);
        assert_eq!(
            ask(&t, req(Some("apiary-42"), None), 1).unwrap_err(),
            Denial::NotInGroup("apiary-42".into())
        );
        assert!(ask(&t, scope("hives:read"), 1).is_err());
    }
}
