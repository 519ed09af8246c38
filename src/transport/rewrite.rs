//! The heads the gateway writes: the request as forwarded upstream (rebuilt field by field, as the
//! decision's [`Rewrite`](crate::gateway::Rewrite) says), the response as relayed to the client, and the
//! gateway's own JSON answers.
//!
//! Field names are matched as upstream frameworks may read them ([`http1::same_field`]: case and every
//! non-alphanumeric byte ignored, so `X.User.Id`, `XUserId` and `x_user_id-` are all `x-user-id`). The
//! forwarded head never carries `Authorization`, `Expect`, hop-by-hop fields, or any client copy of an
//! identity header (the configured user and token id headers, `x-token-scopes`, `x-token-roles`,
//! `x-token-groups`, `x-token-licenses`, `x-tokengate-signature`) or of `x-request-id`, in any such
//! spelling; the identity headers are added once, after the framing. Proxy fields ([`names::proxy_field`]: `Forwarded`, `X-Forwarded-*`, `X-Real-IP`,
//! ...) say who the client is and how it came: they are kept only from a `trusted_proxies` peer and
//! only spelled as proxies write them; `X-Forwarded-For` and `-Proto` are the gateway's own otherwise.

use super::http1::{self, Framing, RequestHead, ResponseHead};
use super::names::{self, Folded};
use crate::gateway::limits::RateLimitField;
use crate::gateway::routes::Route;
use crate::gateway::signing;
use crate::gateway::{Forward, Refusal};
use crate::tokens::index::Entry;

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

/// Fields never forwarded, in any spelling: the credential, `Expect`, hop-by-hop fields, `x-request-id`,
/// the identity headers any route injects and the route's `strip_request_headers`.
fn never_forwarded(name: &Folded<'_>, route: &crate::gateway::routes::Route) -> bool {
    const OWN: [&[u8]; 3] = [b"authorization", b"expect", b"xrequestid"];
    name.is_any(&names::HOP_BY_HOP)
        || name.is_any(&OWN)
        || route
            .identity_headers
            .iter()
            .chain(route.strip_request_headers.iter())
            .any(|h| name.is(h.as_str().as_bytes()))
}

/// What the upstream head carries beyond the client's: the request's id, and whether it opens a
/// WebSocket tunnel (`Connection: Upgrade` and `Upgrade: websocket` are then sent on).
#[derive(Clone, Copy)]
pub struct HeadExtras<'a> {
    pub request_id: &'a [u8],
    pub upgrade: bool,
}

/// Writes the head of the request for the upstream into `out` (public so that the benches measure the real
/// code): origin-form target (without a legacy token parameter), every field except those
/// `never_forwarded`, proxy fields only from a trusted peer and spelled plainly; `X-Forwarded-For`
/// appended to for trusted peers and replaced otherwise, `X-Forwarded-Proto` likewise; then the framing,
/// the identity headers and, if the route signs, the signature over them.
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    bytes: &[u8],
    forward: &Forward<'_>,
    (upstream_host, peer): (&str, &str),
    extras: HeadExtras<'_>,
) {
    let route = forward.route;
    let trusted = forward.rewrite.trusted_peer;
    let method = head.method.get(bytes);
    let target = push_request_line(out, method, forward);
    let (host, client_proto) = push_client_fields(out, head, bytes, route, trusted);
    push_forwarded_for(out, head, bytes, trusted, peer);
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
    if let Some(entry) = forward.principal.as_deref() {
        push_identity(out, entry, forward, method, target);
    }
    out.extend_from_slice(b"\r\n");
}

/// The request line as forwarded: the method, the matched path and the query (without a legacy token
/// parameter). Returns where the target is in `out` (it is signed).
#[inline]
fn push_request_line(
    out: &mut Vec<u8>,
    method: &[u8],
    forward: &Forward<'_>,
) -> std::ops::Range<usize> {
    let (path, query) = (forward.rewrite.path, forward.rewrite.query);
    out.extend_from_slice(method);
    out.push(b' ');
    let target_start = out.len();
    out.extend_from_slice(path.as_bytes());
    match (query, &forward.route.query_token_param) {
        (Some(q), Some(param)) => push_query_without(out, q, param),
        (Some(q), None) => {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        (None, _) => {}
    }
    let target = target_start..out.len();
    out.extend_from_slice(b" HTTP/1.1\r\n");
    target
}

/// The client's fields that may go on: never the credential, hop-by-hop fields, client copies of
/// identity fields or the route's stripped ones; proxy fields only from a trusted proxy (its
/// `X-Forwarded-For` is written by [`push_forwarded_for`]). Returns whether a `Host` and an
/// `X-Forwarded-Proto` went out.
#[inline]
fn push_client_fields(
    out: &mut Vec<u8>,
    head: &RequestHead,
    bytes: &[u8],
    route: &Route,
    trusted: bool,
) -> (bool, bool) {
    let mut host = false;
    let mut client_proto = false;
    for f in &head.fields {
        let name = f.name.get(bytes);
        let value = f.value.get(bytes);
        let folded = Folded::new(name);
        if never_forwarded(&folded, route) || head.named_by_connection(bytes, name) {
            continue;
        }
        if names::proxy_field(&folded) {
            // X-Forwarded-For is written apart (the trusted chain, then the peer); X-Forwarded-Proto
            // once; the others as the trusted proxy sent them.
            if !trusted
                || !names::plain_proxy_spelling(name)
                || name.eq_ignore_ascii_case(b"x-forwarded-for")
            {
                continue;
            }
            if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                if client_proto {
                    continue;
                }
                client_proto = true;
            }
            http1::push_field(out, name, value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            host = true;
        }
        http1::push_field(out, name, value);
    }
    (host, client_proto)
}

/// X-Forwarded-For: one field, the trusted proxy's chain (all its copies, in order) and then the peer.
#[inline]
fn push_forwarded_for(
    out: &mut Vec<u8>,
    head: &RequestHead,
    bytes: &[u8],
    trusted: bool,
    peer: &str,
) {
    let xff_start = out.len();
    out.extend_from_slice(b"X-Forwarded-For: ");
    let mut empty = true;
    if trusted {
        for f in head
            .fields
            .iter()
            .filter(|f| f.name.get(bytes).eq_ignore_ascii_case(b"x-forwarded-for"))
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
}

/// The identity fields of the token holder (user id, token id, scopes and roles when the route forwards
/// them) and, on a route with `sign_secret`, the signature over them as written.
#[inline]
fn push_identity(
    out: &mut Vec<u8>,
    entry: &Entry,
    forward: &Forward<'_>,
    method: &[u8],
    target: std::ops::Range<usize>,
) {
    let route = forward.route;
    let user = push_value_span(
        out,
        route.user_id_header.as_str().as_bytes(),
        entry.user().as_bytes(),
    );
    let token_id = route
        .token_id_header
        .as_ref()
        .map(|h| push_value_span(out, h.as_str().as_bytes(), entry.token_id_text()));
    let (scopes, roles) = if route.forward_scopes {
        write_scopes(out, entry, &route.roles)
    } else {
        (None, None)
    };
    let (groups, licenses) = if route.forward_scopes {
        write_access(out, entry, forward.rewrite.at)
    } else {
        (None, None)
    };
    if let Some(secret) = &route.sign_secret {
        // Each identity field's value as just written; an empty one for a field not sent.
        let signed = signing::Signed {
            user: &out[user],
            token_id: &out[token_id.unwrap_or_default()],
            scopes: &out[scopes.unwrap_or_default()],
            roles: &out[roles.unwrap_or_default()],
            groups: &out[groups.unwrap_or_default()],
            licenses: &out[licenses.unwrap_or_default()],
            method,
            path_and_query: &out[target],
        };
        let value = signing::value(secret, &signed, forward.rewrite.at);
        http1::push_field(out, signing::SIGNATURE_HEADER.as_bytes(), value.as_bytes());
    }
}

/// Appends `name: value\r\n` and returns where the value is in `out`.
fn push_value_span(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> std::ops::Range<usize> {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    let start = out.len();
    out.extend_from_slice(value);
    let end = out.len();
    out.extend_from_slice(b"\r\n");
    start..end
}

/// `x-token-scopes`: the token's effective scopes, sorted, space-separated (`*` for full access: every
/// scope but `admin` and `tokens:self`); `x-token-roles`: its roles, sorted (absent without roles).
/// Returns where each value is in `out`.
pub(super) fn write_scopes(
    out: &mut Vec<u8>,
    entry: &crate::tokens::index::Entry,
    roles: &crate::config::Roles,
) -> (
    Option<std::ops::Range<usize>>,
    Option<std::ops::Range<usize>>,
) {
    use crate::gateway::routes::{ROLES_HEADER, SCOPES_HEADER};
    out.extend_from_slice(SCOPES_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    let start = out.len();
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
    let scopes = start..out.len();
    out.extend_from_slice(b"\r\n");
    let names = entry.effective_roles();
    if names.is_empty() {
        return (Some(scopes), None);
    }
    out.extend_from_slice(ROLES_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    let start = out.len();
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(n.as_bytes());
    }
    let roles = start..out.len();
    out.extend_from_slice(b"\r\n");
    (Some(scopes), Some(roles))
}

/// `x-token-groups` and `x-token-licenses` (the licenses valid at `now`): sorted, space-separated, built
/// when the token was indexed; absent when empty. Returns where each value is in `out`.
pub(super) fn write_access(
    out: &mut Vec<u8>,
    entry: &Entry,
    now: u64,
) -> (
    Option<std::ops::Range<usize>>,
    Option<std::ops::Range<usize>>,
) {
    use crate::gateway::routes::{GROUPS_HEADER, LICENSES_HEADER};
    let Some(g) = entry.grants.as_deref() else {
        return (None, None);
    };
    let groups = g
        .groups_value()
        .map(|v| push_value_span(out, GROUPS_HEADER.as_bytes(), v.as_bytes()));
    let licenses = g
        .licenses_value(now)
        .map(|v| push_value_span(out, LICENSES_HEADER.as_bytes(), v.as_bytes()));
    (groups, licenses)
}

/// How a response goes out to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFraming {
    /// A chunked response passes on chunked (re-encoded) to an HTTP/1.1 client; an HTTP/1.0 client gets
    /// it decoded, and the end of its connection ends the body.
    pub chunked: bool,
    /// The client connection may carry another request after this answer.
    pub keep_alive: bool,
    /// The client's HTTP minor version (1.0 needs `Connection: keep-alive` spelled out).
    pub minor: u8,
}

impl ClientFraming {
    /// The head of a `101 Switching Protocols` that opens a tunnel: no framing of its own.
    pub const TUNNEL: ClientFraming = ClientFraming {
        chunked: false,
        keep_alive: true,
        minor: 1,
    };
}

/// Writes the response head for the client: the upstream's status and fields less hop-by-hop ones, then
/// the gateway's own framing and connection fields.
pub fn write_response_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    bytes: &[u8],
    client: ClientFraming,
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
        Framing::Chunked if client.chunked => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
        }
        _ => {}
    }
    if !client.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client.minor == 0 {
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
        let mut r =
            Refusal::new(crate::gateway::answer::Answer::TooManyFailures, "slow down").closing();
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
