//! Property tests (proptest) for the parsers an attacker controls: the `Authorization` value, the token
//! format, and request paths against the route table. Each property is checked on generated inputs,
//! including arbitrary bytes, and must never panic.

use proptest::prelude::*;
use std::path::Path;
use tokengate::config::Config;
use tokengate::gateway::auth::{parse_bearer, Denial, MAX_AUTHORIZATION_LEN};
use tokengate::gateway::paths::check_path;
use tokengate::gateway::routes::RouteTable;
use tokengate::tokens::format::{check_format, Token, TOKEN_LEN};

/// A `%` not followed by two hex digits, an encoded control byte, or an encoded `%` (a double encoding):
/// spellings the path check refuses on their own.
fn has_bad_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && match (b.get(i + 1), b.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap();
                    // Control bytes, `%`, and (one spelling per route) unreserved characters and `;`.
                    v < 0x20
                        || v == 0x7f
                        || v == b'%'
                        || v.is_ascii_alphanumeric()
                        || b"-._~;".contains(&v)
                }
                _ => true,
            }
    })
}

fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn table() -> RouteTable {
    let text = r#"
[gateway]
listen = "127.0.0.1:8080"
[[routes]]
name = "iot"
path_prefix = "/iot"
upstream = "127.0.0.1:1"
[[routes]]
name = "iot-admin"
path_prefix = "/iot/admin"
upstream = "127.0.0.1:2"
[[routes]]
name = "video"
path_prefix = "/video"
upstream = "127.0.0.1:3"
"#;
    RouteTable::new(&Config::parse(text, Path::new("p.toml")).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic; whatever is accepted is a b64token under the Bearer scheme.
    #[test]
    fn authorization_parsing_is_total(v in proptest::collection::vec(any::<u8>(), 0..1200)) {
        match parse_bearer(&v) {
            Ok(t) => {
                prop_assert!(is_b64token(t));
                prop_assert!(v.len() <= MAX_AUTHORIZATION_LEN);
                prop_assert!(v[..6].eq_ignore_ascii_case(b"bearer"));
            }
            Err(Denial::Missing | Denial::Malformed(_)) => {}
            Err(other) => prop_assert!(false, "unexpected denial {:?}", other),
        }
    }

    /// Any b64token behind any casing of "Bearer" and any run of spaces parses back to itself.
    #[test]
    fn bearer_round_trip(
        token in "[A-Za-z0-9._~+/-]{1,200}={0,2}",
        scheme in "[bB][eE][aA][rR][eE][rR]",
        spaces in 1usize..4,
    ) {
        let value = format!("{scheme}{}{token}", " ".repeat(spaces));
        prop_assert_eq!(parse_bearer(value.as_bytes()), Ok(token.as_str()));
        // Anything after the token is refused.
        let extra = format!("{value} x");
        prop_assert!(matches!(parse_bearer(extra.as_bytes()), Err(Denial::Malformed(_))));
    }

    /// Random strings are not tokens unless they have the exact shape; the check never panics.
    #[test]
    fn token_format_rejects_garbage(s in "\\PC{0,80}") {
        if check_format(&s).is_ok() {
            prop_assert_eq!(s.len(), TOKEN_LEN);
            prop_assert!(s.starts_with("tg_"));
            prop_assert!(s[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }

    /// Every single-character substitution or transposition in a real token is caught by the checksum
    /// (or the alphabet/prefix check).
    #[test]
    fn token_typos_are_caught(pos in 0usize..TOKEN_LEN, c in "[0-9A-Za-z_-]", swap in any::<bool>()) {
        let t = Token::generate().into_string();
        prop_assert!(check_format(&t).is_ok());
        let mut b = t.clone().into_bytes();
        if swap && pos + 1 < TOKEN_LEN {
            b.swap(pos, pos + 1);
        } else {
            b[pos] = c.as_bytes()[0];
        }
        let typo = String::from_utf8(b).unwrap();
        if typo != t {
            prop_assert!(check_format(&typo).is_err(), "{} accepted", typo);
        }
    }

    /// A path that passes the check and matches a route lies under that route's prefix on a segment
    /// boundary, contains no dot segment or encoded separator, and no longer prefix would match it.
    #[test]
    fn path_matching_never_crosses_routes(
        segs in proptest::collection::vec(
            prop_oneof!["iot", "admin", "video", "\\.", "\\.\\.", "%2e%2e", "%2F", "%5c", "", "[a-z%0-9.]{1,6}"],
            0..6),
        trailing in any::<bool>(),
    ) {
        let mut path = String::new();
        for s in &segs {
            path.push('/');
            path.push_str(s);
        }
        if trailing || path.is_empty() {
            path.push('/');
        }
        let t = table();
        if check_path(&path).is_ok() {
            let inner: Vec<&str> = path[1..].split('/').collect();
            prop_assert!(inner.iter().all(|s| *s != "." && *s != ".."));
            prop_assert!(!path.to_ascii_lowercase().contains("%2e") && !path.to_ascii_lowercase().contains("%2f"));
            // Every escape left decodes to something an upstream cannot read as another route's path.
            prop_assert!(!has_bad_escape(&path));
            if let Some(r) = t.find(&path) {
                let p = &*r.path_prefix;
                let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
                prop_assert!(under(p));
                for other in t.routes() {
                    let q = &*other.path_prefix;
                    if q.len() > p.len() {
                        prop_assert!(!under(q));
                    }
                }
            }
        } else {
            prop_assert!(
                segs.iter().any(|s| matches!(s.as_str(), "." | ".." | "")
                    || s.to_ascii_lowercase().contains("%2e")
                    || s.to_ascii_lowercase().contains("%2f")
                    || s.to_ascii_lowercase().contains("%5c")
                    || has_bad_escape(s))
                    || path.starts_with("//")
            );
        }
    }
}
