//! Parsers and checks for single configuration values (durations, addresses, path prefixes, scopes, header
//! names, group and license names). Each returns the problem as a sentence that quotes the value; the caller adds file and key.

use http::HeaderName;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub(super) fn one_line(message: &str, span: Option<std::ops::Range<usize>>, text: &str) -> String {
    match span {
        Some(s) => {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", message.trim())
        }
        None => message.trim().to_string(),
    }
}

/// Parses durations such as `100ms`, `30s`, `15m`, `12h`, `90d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("{s:?} is not a duration like 100ms, 30s, 15m, 12h or 90d"))
}

pub(super) fn check_listen(s: &str) -> Result<(), String> {
    s.parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:8080 or [::]:8080"))
}

pub fn resolve_upstream(s: &str) -> Result<SocketAddr, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(format!(
            "{s:?} is not host:port with a port from 1 to 65535"
        ));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

pub(super) fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    // The same spellings the request path check refuses can never match, so they are refused here too:
    // every segment (but a trailing empty one) is plain, neither `.` nor `..`.
    let trimmed = p.trim_end_matches('/');
    let plain_segments = trimmed.len() <= 1
        || trimmed[1..]
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if !plain_segments || p.contains('\\') {
        return Err(format!(
            "{p:?} must be a plain path: no '//', '.', '..', '%' escapes or backslashes"
        ));
    }
    if p.contains(['?', '#', '%', ';']) || p.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(format!(
            "{p:?} must be a plain path of visible ASCII without '?', '#', ';' or '%'"
        ));
    }
    Ok(())
}

pub(super) fn normalize_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else {
        t.to_string()
    }
}

/// Scopes are short words of visible ASCII without spaces, quotes or backslashes (RFC 6750 scope-token).
pub fn check_scope(s: &str) -> Result<(), String> {
    if s.starts_with('@') {
        return Err(format!(
            "{s:?} is not a scope: a scope cannot start with '@' (that marks a role)"
        ));
    }
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    {
        return Err(format!("{s:?} is not a scope: 1 to 64 visible ASCII characters, no spaces, quotes or backslashes"));
    }
    Ok(())
}

/// Checks a role name (`[roles]` keys, `--role`): 1 to 64 letters, digits, `-`, `_`, `.` or `:`.
pub fn check_role(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(format!(
            "{s:?} is not a role name: 1 to 64 letters, digits, '-', '_', '.' or ':'"
        ));
    }
    Ok(())
}

pub fn header_name(s: &str) -> Result<HeaderName, String> {
    // Compared as upstream frameworks may read names (case and every non-alphanumeric byte ignored):
    // an injected `content_length` would be the hidden framing the gateway refuses from clients.
    let folded: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|b| b.to_ascii_lowercase())
        .collect();
    if [
        &b"authorization"[..],
        b"host",
        b"contentlength",
        b"transferencoding",
    ]
    .contains(&&folded[..])
    {
        return Err(format!(
            "{s:?} cannot be used here (it reads as Authorization, Host, Content-Length or \
             Transfer-Encoding)"
        ));
    }
    let lower = s.to_ascii_lowercase();
    HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| format!("{s:?} is not a valid HTTP header name"))
}

/// A rate: `count` requests per `per_secs` seconds, written `20/s`, `600/m` or `10000/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// At most 1,000,000,000 (32 bits keep a token's limits in one small allocation).
    pub count: u32,
    pub per_secs: u32,
}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h` (also `/sec`, `/min`, `/hour`).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("{s:?} is not a rate like 20/s, 600/m or 10000/h");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        let per_secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            _ => return Err(bad()),
        };
        if count == 0 || count > 1_000_000_000 {
            return Err(format!("{s:?}: the count must be between 1 and 1000000000"));
        }
        Ok(Rate {
            count: count as u32,
            per_secs,
        })
    }

    /// One second's worth of requests (at least 1): the default burst.
    pub fn one_second(&self) -> u64 {
        (self.count.div_ceil(self.per_secs) as u64).max(1)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per_secs {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// The longest group or license name.
pub const MAX_ACCESS_NAME: usize = 64;

/// Checks a group or license name (`kind`: `group`, `license`): 1 to 64 of `a-z 0-9 . _ -`, starting
/// with a letter or digit. Lower case only, so that `Apiary-42` and `apiary-42` can never be two groups
/// (or one route's requirement and another's group): a name with an upper-case letter is refused, not
/// folded. Shared by the routes' `required_group` / `required_license` and the store.
pub fn check_access_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ACCESS_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} name {name:?} must be 1 to {MAX_ACCESS_NAME} characters of a-z, 0-9, '.', '_', '-' (lower case), starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_that_read_as_reserved_ones_are_refused() {
        for bad in [
            "Authorization",
            "content_length",
            "Content.Length",
            "transfer-encoding-",
            "HOST",
        ] {
            let e = header_name(bad).unwrap_err();
            assert!(e.contains("cannot be used here"), "{bad}: {e}");
        }
        assert_eq!(header_name("X-User-Id").unwrap().as_str(), "x-user-id");
        assert!(header_name("x user").unwrap_err().contains("not a valid"));
    }

    #[test]
    fn rates() {
        assert_eq!(
            Rate::parse("20/s"),
            Ok(Rate {
                count: 20,
                per_secs: 1
            })
        );
        assert_eq!(Rate::parse("600/m").unwrap().one_second(), 10);
        assert_eq!(Rate::parse("1/h").unwrap().one_second(), 1);
        assert_eq!(
            Rate::parse(" 10000 / hour ").unwrap().to_string(),
            "10000/h"
        );
        for bad in ["", "20", "0/s", "x/s", "20/d", "-1/s", "20/"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }
}
