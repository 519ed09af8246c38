//! Checks of the fields people give a token (user id, label, scopes, roles, expiry), shared by the CLI
//! and the admin API (through [`super::input`]) so that both refuse exactly the same input with the same
//! words.

use crate::config::{check_scope, parse_duration, Roles};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Quotas are limiter primitives; they are named here too, where token fields are parsed.
pub use crate::limiter::{Period, Quota};

/// The scope the admin API requires; never implied by full access.
pub const ADMIN_SCOPE: &str = "admin";

/// The scope that lets a token manage its own user's tokens (self-service); never implied by full access.
pub const SELF_SCOPE: &str = "tokens:self";

/// How a role is written among a token's grants (the `scopes` column and the index): `@name`. A scope
/// never starts with `@`, so the two cannot be confused.
pub const ROLE_MARK: char = '@';

/// A role's entry among a token's grants.
pub fn role_grant(name: &str) -> String {
    format!("{ROLE_MARK}{name}")
}

/// Splits a token's grants into its scopes and its role names.
pub fn split_grants<S: AsRef<str>>(grants: &[S]) -> (Vec<String>, Vec<String>) {
    let mut scopes = Vec::new();
    let mut roles = Vec::new();
    for g in grants {
        match g.as_ref().strip_prefix(ROLE_MARK) {
            Some(r) => roles.push(r.to_owned()),
            None => scopes.push(g.as_ref().to_owned()),
        }
    }
    (scopes, roles)
}

/// Whether a scope can only be granted by an `admin` token or the CLI.
pub fn is_privileged(scope: &str) -> bool {
    scope == ADMIN_SCOPE || scope == SELF_SCOPE
}

/// Current wall-clock time in unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The latest time a token's expiry or a rotated-out secret's grace may reach: 9999-12-31T23:59:59Z, the
/// last second RFC 3339 can write (four-digit years). Every time tokengate computes from a duration is
/// checked against it, so none overflows and every one can be shown.
pub const MAX_TIME: i64 = 253_402_300_799;

/// Formats unix seconds as RFC 3339 UTC (`2026-11-22T22:30:00Z`). Never panics: times before 1970 show
/// as 1970, times past [`MAX_TIME`] (only a database edited by hand holds them) with a longer year.
pub fn rfc3339(secs: i64) -> String {
    let secs = secs.max(0);
    let (y, m, d) = crate::clock::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Parses RFC 3339 into unix seconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s.trim())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e})"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0))
}

/// Checks a user id: it becomes an HTTP header value, so visible ASCII only, 1 to 128 characters.
pub fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > 128 || !user.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(format!(
            "user {user:?} must be 1 to 128 visible ASCII characters without spaces"
        ));
    }
    Ok(())
}

/// Checks a label: 1 to 100 characters, no control characters.
pub fn check_label(label: &str) -> Result<(), String> {
    let n = label.chars().count();
    if n == 0 || n > 100 || label.chars().any(char::is_control) || label.trim() != label {
        return Err(
            "label must be 1 to 100 characters, without control characters or surrounding spaces"
                .into(),
        );
    }
    Ok(())
}

/// Checks every scope of a token (RFC 6750 scope-token syntax).
pub fn check_scopes(scopes: &[String]) -> Result<(), String> {
    scopes.iter().try_for_each(|s| check_scope(s))
}

/// Checks that every role name is one of the configuration's `[roles]`.
pub fn check_roles(names: &[String], roles: &Roles) -> Result<(), String> {
    match names.iter().find(|r| !roles.contains_key(*r)) {
        None => Ok(()),
        Some(r) => Err(format!(
            "unknown role {r:?} (the [roles] of the configuration define: {})",
            if roles.is_empty() {
                "none".to_owned()
            } else {
                roles.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        )),
    }
}

/// The thumbprint a token is bound to: SHA-256 of the DER of the first certificate in a PEM file (the
/// device's own certificate; a chain may follow it).
pub fn cert_thumbprint(pem: &[u8]) -> Result<[u8; 32], String> {
    use rustls_pki_types::pem::PemObject;
    use sha2::{Digest, Sha256};
    let cert = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no PEM certificate (-----BEGIN CERTIFICATE-----) found")?
        .map_err(|e| format!("the PEM certificate cannot be read: {e}"))?;
    Ok(Sha256::digest(cert.as_ref()).into())
}

/// Turns the expiry options into unix seconds: in the future, and no later than [`MAX_TIME`].
pub fn expiry(expires_in: Option<&str>, expires_at: Option<&str>) -> Result<Option<i64>, String> {
    let now = unix_now();
    let at = match (expires_in, expires_at) {
        (Some(d), _) => {
            let duration = parse_duration(d)?;
            if duration < Duration::from_secs(1) {
                return Err("expiry must be at least 1s away".into());
            }
            Some(time_after(now, duration).map_err(|latest| {
                format!("expiry {d:?} from now is past {latest}, the latest expiry tokengate keeps")
            })?)
        }
        (None, Some(t)) => Some(parse_rfc3339(t)?),
        (None, None) => None,
    };
    if let Some(at) = at {
        if at <= now {
            return Err(format!("expiry {} is not in the future", rfc3339(at)));
        }
        if at > MAX_TIME {
            return Err(format!(
                "expiry {} is past {}, the latest expiry tokengate keeps",
                rfc3339(at),
                rfc3339(MAX_TIME)
            ));
        }
    }
    Ok(at)
}

/// `now + duration` in unix seconds, or the latest time allowed ([`MAX_TIME`], formatted) as the error
/// when it would lie past it.
fn time_after(now: i64, duration: Duration) -> Result<i64, String> {
    i64::try_from(duration.as_secs())
        .ok()
        .and_then(|d| now.checked_add(d))
        .filter(|&at| at <= MAX_TIME)
        .ok_or_else(|| rfc3339(MAX_TIME))
}

/// When a rotated-out secret stops working: `now + grace`, refused past [`MAX_TIME`]. The CLI's
/// `token rotate --grace` and the admin API's rotate check a grace with it before rotating (the store
/// itself only saturates, see [`grace_until_saturating`]).
pub fn grace_until(now: i64, grace: Duration) -> Result<i64, String> {
    time_after(now, grace).map_err(|latest| {
        format!(
            "a grace of {} from now ends past {latest}, the latest time tokengate keeps",
            humantime::format_duration(grace)
        )
    })
}

/// Parses a rotation's grace (`10m`, `1h`) and checks it with [`grace_until`] against the current time.
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    let grace = parse_duration(text)?;
    grace_until(unix_now(), grace)?;
    Ok(grace)
}

/// `now + grace`, at most [`MAX_TIME`]: for the store, which never panics nor wraps whatever it is given.
pub fn grace_until_saturating(now: i64, grace: Duration) -> i64 {
    grace_until(now, grace).unwrap_or(MAX_TIME.max(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked() {
        assert!(check_user("beekeeper-42").is_ok());
        assert!(
            check_user("a b").is_err() && check_user("").is_err() && check_user("x\u{7f}").is_err()
        );
        assert!(check_label("Hive scale #3 (garden)").is_ok());
        assert!(check_label("bad\nlabel").is_err() && check_label(&"x".repeat(101)).is_err());
        assert!(check_scopes(&["telemetry:write".into()]).is_ok());
        assert!(check_scopes(&["a b".into()]).is_err());
        assert!(expiry(Some("0s"), None).is_err());
        assert!(expiry(None, Some("2001-01-01T00:00:00Z")).is_err());
        assert!(expiry(Some("90d"), None).unwrap().unwrap() > unix_now() + 89 * 86400);
    }

    #[test]
    fn expiry_and_grace_stop_at_year_9999() {
        assert_eq!(rfc3339(MAX_TIME), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(MAX_TIME + 1), "10000-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "292277026596-12-04T15:30:07Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
        for far in ["10000y", "8000y", "18446744073709551615s"] {
            let e = expiry(Some(far), None).unwrap_err();
            assert!(e.contains("9999-12-31T23:59:59Z"), "{far}: {e}");
            let e = parse_grace(far).unwrap_err();
            assert!(e.contains("9999-12-31T23:59:59Z"), "{far}: {e}");
        }
        assert!(expiry(Some("100y"), None).is_ok());
        assert!(expiry(None, Some("9999-12-31T23:59:59Z")).is_ok());
        assert!(expiry(None, Some("+10000-01-01T00:00:00Z")).is_err());
        let now = 1_795_386_600;
        assert_eq!(grace_until(now, Duration::from_secs(600)), Ok(now + 600));
        assert_eq!(
            grace_until(MAX_TIME - 10, Duration::from_secs(10)),
            Ok(MAX_TIME)
        );
        assert!(grace_until(MAX_TIME - 10, Duration::from_secs(11)).is_err());
        assert!(grace_until(now, Duration::MAX).is_err());
        assert_eq!(grace_until_saturating(now, Duration::MAX), MAX_TIME);
        assert_eq!(grace_until_saturating(now, Duration::from_secs(5)), now + 5);
        assert_eq!(parse_grace("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_grace("soon").is_err());
    }

    #[test]
    fn time_formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_386_600), "2026-11-22T22:30:00Z");
        assert_eq!(parse_rfc3339("2026-11-22T22:30:00Z"), Ok(1_795_386_600));
        assert!(parse_rfc3339("tomorrow").is_err());
    }
}
