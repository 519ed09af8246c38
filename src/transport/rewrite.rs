//! The heads the gateway writes: the request as forwarded upstream (rebuilt field by field, as the
//! decision's [`Rewrite`](crate::gateway::Rewrite) says), the response as relayed to the client, and the
//! gateway's own JSON answers.
//!
//! The forwarded head never carries `Authorization`, `Expect`, hop-by-hop fields (and their look-alikes,
//! see [`http1::same_field`]), or any client copy of an identity header (any case, `_` for `-`); the
//! identity headers are added once, after the framing.

use super::http1::{self, Framing, RequestHead, ResponseHead};
use crate::gateway::limits::RateLimitField;
use crate::gateway::signing;
use crate::gateway::{Forward, Refusal};

/// Appends the query with every `key` parameter removed (and the `?` too when nothing is left).
pub fn push_query_without(out: &mut Vec<u8>, query: &str, key: &str) {
    let mut first = true;
    for pair in query.split('&') {
        let k = pair.split_once('=').map_or(pair, |(k, _)| k);
        if k == key || pair.is_empty() {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        out.extend_from_slice(pair.as_bytes());
        first = false;
    }
}

/// Writes the head of the request for the upstream into `out` (public so that the benches measure the real
/// code): origin-form target (without a legacy token parameter), every field except `Authorization`,
/// hop-by-hop fields and client copies of injected or configured-stripped headers; `X-Forwarded-For`/
/// `-Proto` appended to only for trusted peers and replaced otherwise; then the framing, the identity
/// headers and, if the route signs, the signature.
/// What the upstream head carries beyond the client's: the request's id, and whether it opens a
/// WebSocket tunnel (`Connection: Upgrade` and `Upgrade: websocket` are then sent on).
#[derive(Clone, Copy)]
pub struct HeadExtras<'a> {
    pub request_id: &'a [u8],
    pub upgrade: bool,
}

pub fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    bytes: &[u8],
    forward: &Forward<'_>,
    (upstream_host, peer): (&str, &str),
    extras: HeadExtras<'_>,
) {
    let route = forward.route;
    let (path, query) = (forward.rewrite.path, forward.rewrite.query);
    let trusted = forward.rewrite.trusted_peer;
    let entry = forward.principal.as_deref();
    let method = head.method.get(bytes);
    out.extend_from_slice(method);
    out.push(b' ');
    let target_start = out.len();
    out.extend_from_slice(path.as_bytes());
    match (query, &route.query_token_param) {
        (Some(q), Some(param)) => push_query_without(out, q, param),
        (Some(q), None) => {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        (None, _) => {}
    }
    let target_end = out.len();
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let mut host = false;
    let mut client_proto = false;
    for f in &head.fields {
        let name = f.name.get(bytes);
        let value = f.value.get(bytes);
        if name.eq_ignore_ascii_case(b"authorization")
            || name.eq_ignore_ascii_case(b"expect")
            || http1::is_hop_by_hop(name)
            || route
                .identity_headers
                .iter()
                .chain(route.strip_request_headers.iter())
                .any(|h| http1::same_field(name, h.as_str().as_bytes()))
            || head.named_by_connection(bytes, name)
            || http1::same_field(name, b"x-request-id")
        {
            continue;
        }
        if http1::same_field(name, b"x-forwarded-for") {
            // Written below: the chain from a trusted proxy, then the peer.
            continue;
        }
        if http1::same_field(name, b"x-forwarded-proto") {
            if trusted && !client_proto {
                client_proto = true;
                http1::push_field(out, b"X-Forwarded-Proto", value);
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            host = true;
        }
        http1::push_field(out, name, value);
    }
    // X-Forwarded-For: one field, the trusted proxy's chain (all its copies, in order) and then the peer.
    let xff_start = out.len();
    out.extend_from_slice(b"X-Forwarded-For: ");
    let mut empty = true;
    if trusted {
        for f in head
            .fields
            .iter()
            .filter(|f| http1::same_field(f.name.get(bytes), b"x-forwarded-for"))
        {
            let v = f.value.get(bytes).trim_ascii();
            if !v.is_empty() {
                if !empty {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(v);
                empty = false;
            }
        }
    }
    if !peer.is_empty() {
        if !empty {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(peer.as_bytes());
        empty = false;
    }
    if empty {
        out.truncate(xff_start);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    if !client_proto {
        out.extend_from_slice(if forward.rewrite.https {
            b"X-Forwarded-Proto: https\r\n"
        } else {
            b"X-Forwarded-Proto: http\r\n"
        });
    }
    if !host {
        http1::push_field(out, b"Host", upstream_host.as_bytes());
    }
    http1::push_field(out, b"x-request-id", extras.request_id);
    if extras.upgrade {
        out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n");
    }
    match head.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            http1::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    if let Some(entry) = entry {
        http1::push_field(
            out,
            route.user_id_header.as_str().as_bytes(),
            entry.user().as_bytes(),
        );
        if let Some(h) = &route.token_id_header {
            http1::push_field(out, h.as_str().as_bytes(), entry.token_id_text());
        }
        if route.forward_scopes {
            write_scopes(out, entry, &route.roles);
        }
        if let Some(secret) = &route.sign_secret {
            let pq = std::str::from_utf8(&out[target_start..target_end])
                .unwrap_or("/")
                .to_owned();
            let method = std::str::from_utf8(method).unwrap_or("");
            let sig = signing::sign(
                secret,
                entry.user(),
                entry.token_id,
                forward.rewrite.at,
                method,
                &pq,
            );
            http1::push_field(out, signing::SIGNATURE_HEADER.as_bytes(), sig.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `x-token-scopes`: the token's effective scopes, sorted, space-separated (`*` for full access: every
/// scope but `admin` and `tokens:self`); `x-token-roles`: its roles, sorted (absent without roles).
fn write_scopes(
    out: &mut Vec<u8>,
    entry: &crate::tokens::index::Entry,
    roles: &crate::config::Roles,
) {
    use crate::gateway::routes::{ROLES_HEADER, SCOPES_HEADER};
    out.extend_from_slice(SCOPES_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    match entry.effective_scopes(roles) {
        None => out.push(b'*'),
        Some(all) => {
            for (i, s) in all.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    let mut names: Vec<&str> = entry.roles().collect();
    if !names.is_empty() {
        names.sort_unstable();
        http1::push_field(out, ROLES_HEADER.as_bytes(), names.join(" ").as_bytes());
    }
}

/// Writes the response head for the client: the upstream's status and fields less hop-by-hop ones, then
/// the gateway's own framing and connection fields.
pub fn write_response_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    bytes: &[u8],
    (chunked_out, keep_client, client_minor): (bool, bool, u8),
    rate_limit: Option<&RateLimitField>,
    (request_id, upgrade): (&[u8], bool),
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    http1::push_decimal(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.get(bytes));
    out.extend_from_slice(b"\r\n");
    for f in &resp.fields {
        let name = f.name.get(bytes);
        if name.eq_ignore_ascii_case(b"content-length") {
            // Kept for bodiless answers to HEAD and for 304s (the length of the representation); a body's
            // own length is written below.
            if resp.framing == Framing::None && resp.status != 204 {
                http1::push_field(out, name, f.value.get(bytes));
            }
            continue;
        }
        if http1::is_hop_by_hop(name) || resp.named_by_connection(bytes, name) {
            continue;
        }
        // The gateway's own limits are the ones a client is told about, not an upstream's; its own
        // request id too.
        if rate_limit.is_some() && name.eq_ignore_ascii_case(b"ratelimit")
            || http1::same_field(name, b"x-request-id")
        {
            continue;
        }
        http1::push_field(out, name, f.value.get(bytes));
    }
    http1::push_field(out, b"x-request-id", request_id);
    if upgrade {
        // 101 Switching Protocols: the tunnel's own hop-by-hop fields, nothing about framing.
        out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        return;
    }
    if let Some(v) = rate_limit {
        use std::io::Write;
        out.extend_from_slice(b"RateLimit: ");
        let _ = write!(out, "{v}"); // writing to a Vec cannot fail
        out.extend_from_slice(b"\r\n");
    }
    match resp.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            http1::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked if chunked_out => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    if !keep_client {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the head of a JSON answer made by the gateway (the body, `body_len` bytes, follows unless the
/// request was `HEAD`).
pub fn write_error_head(
    out: &mut Vec<u8>,
    r: &Refusal,
    body_len: usize,
    keep: bool,
    request_id: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    http1::push_decimal(out, u64::from(r.status));
    out.push(b' ');
    let reason = http::StatusCode::from_u16(r.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(
        b"\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: ",
    );
    http1::push_decimal(out, body_len as u64);
    out.extend_from_slice(b"\r\n");
    http1::push_field(out, b"x-request-id", request_id);
    if let Some(c) = &r.challenge {
        http1::push_field(out, b"www-authenticate", c.as_bytes());
    }
    if let Some(s) = r.retry_after {
        out.extend_from_slice(b"retry-after: ");
        http1::push_decimal(out, s);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &r.headers {
        http1::push_field(out, name.as_bytes(), value.as_bytes());
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_token_parameter_is_removed() {
        let without = |q: &str| {
            let mut out = b"/p".to_vec();
            push_query_without(&mut out, q, "api_token");
            String::from_utf8(out).unwrap()
        };
        assert_eq!(without("a=1&api_token=x&b=2"), "/p?a=1&b=2");
        assert_eq!(without("api_token=x"), "/p");
        assert_eq!(without("api_token=x&api_token=y&c"), "/p?c");
    }

    #[test]
    fn gateway_answers() {
        let mut r = Refusal::new(429, "too_many_requests", "slow down").closing();
        r.retry_after = Some(7);
        r.challenge = Some("Bearer realm=\"tokengate\"".into());
        let mut out = Vec::new();
        write_error_head(&mut out, &r, 12, false, b"id");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        for line in [
            "content-length: 12\r\n",
            "retry-after: 7\r\n",
            "www-authenticate: Bearer realm=\"tokengate\"\r\n",
            "connection: close\r\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"));
    }
}
