//! Fuzzes `Authorization` parsing: `tokengate::gateway::auth::parse_bearer` on arbitrary bytes, and
//! `tokengate::gateway::auth::bearer_token` on a `HeaderMap` holding those bytes when they are a valid header value.
//! Asserts, besides "no panic": on `Ok(t)`, `t` is non-empty, at most `MAX_AUTHORIZATION_LEN` bytes, ASCII
//! without space, tab or control bytes, and the tail of the input; the input starts with `bearer`
//! (any case); every input of RFC 6750's strict form `Bearer 1*SP b64token` is accepted with that token;
//! `bearer_token` agrees with `parse_bearer` for one header and answers `Multiple` for two; and the
//! converse: nothing outside that strict grammar is accepted.
#![no_main]

use http::{header::AUTHORIZATION, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tokengate::gateway::auth::{bearer_token, parse_bearer, Denial, MAX_AUTHORIZATION_LEN};

/// RFC 6750 b64token characters (token68 without the trailing '=').
fn is_b64token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

/// Reference parser for `credentials = "Bearer" 1*SP b64token`, `b64token = 1*(b64 char) *"="`.
fn strict(v: &[u8]) -> Option<&[u8]> {
    if v.len() > MAX_AUTHORIZATION_LEN || v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let rest = &v[6..];
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    if spaces == 0 {
        return None;
    }
    let token = &rest[spaces..];
    let body = token.iter().take_while(|&&b| is_b64token_char(b)).count();
    if body == 0 || !token[body..].iter().all(|&b| b == b'=') {
        return None;
    }
    Some(token)
}


fuzz_target!(|data: &[u8]| {
    let parsed = parse_bearer(data);
    if let Ok(t) = parsed {
        let tb = t.as_bytes();
        assert!(!t.is_empty(), "empty token accepted");
        assert!(tb.len() <= MAX_AUTHORIZATION_LEN, "token longer than the limit");
        assert!(
            tb.iter().all(|&b| b.is_ascii_graphic()),
            "token with a space, tab, control or non-ASCII byte: {t:?}"
        );
        assert!(data.ends_with(tb), "token is not the tail of the input");
        assert!(
            data.len() >= 6 && data[..6].eq_ignore_ascii_case(b"bearer"),
            "accepted without the Bearer scheme: {:?}",
            String::from_utf8_lossy(data)
        );
    }
    match strict(data) {
        Some(tok) => assert_eq!(
            parsed.as_ref().map(|t| t.as_bytes()),
            Ok(tok),
            "a strict RFC 6750 credential was not parsed as such: {:?}",
            String::from_utf8_lossy(data)
        ),
        None => assert!(
            parsed.is_err(),
            "accepted outside the RFC 6750 grammar: {:?} -> {parsed:?}",
            String::from_utf8_lossy(data)
        ),
    }

    // The header-map entry point gives the same answer for one header, and refuses two.
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.clone());
        assert_eq!(bearer_token(&headers), parsed, "bearer_token disagrees with parse_bearer");
        headers.append(AUTHORIZATION, value);
        assert_eq!(bearer_token(&headers), Err(Denial::Multiple));
    }
});
