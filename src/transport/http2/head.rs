//! Heads across the protocol line. An HTTP/2 request is written into an HTTP/1.1 head
//! ([`http1_head`]) that the gateway's strict HTTP/1.1 parser then reads: the decision, the rewrite
//! (credential and identity headers stripped in every spelling, identity injected) and the limits
//! (`max_head_bytes`, 128 fields) see exactly what they see for an HTTP/1.1 request, so HTTP/2 opens
//! no second door. Before that, what RFC 9113 §8.2 and §8.3 make malformed is refused (400): a
//! connection-specific field (the `h2` crate already resets those streams, and uppercase names),
//! a `host` that differs from `:authority`, a `:path` that is not origin-form (or `*` for
//! `OPTIONS`), `CONNECT`, a field value with CR, LF or NUL.
//!
//! The way back: the gateway's own answers ([`refusal`]) and the upstream's response head
//! ([`response`]) become HTTP/2 responses without hop-by-hop fields.

use crate::gateway::answer::Answer;
use crate::gateway::Refusal;
use crate::transport::http1::{self, Framing, ResponseHead};
use crate::transport::rewrite::{write_response_head, ClientFraming};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Response, StatusCode};

/// Why a stream's head is refused before the decision: the answer and its detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub answer: Answer,
    pub detail: &'static str,
}

fn malformed(detail: &'static str) -> Malformed {
    Malformed {
        answer: Answer::InvalidRequest,
        detail,
    }
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2), refused in any case even if the HTTP/2 layer let them by.
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Writes the request of an HTTP/2 stream (`end_stream`: it has no body) as an HTTP/1.1 head into
/// `out`: the request line from `:method` and `:path`, `Host` from `:authority` (or the one `host`
/// field), the fields as sent (`cookie` fields joined with `; `, RFC 9113 §8.2.3), `te: trailers`
/// dropped, and the framing: the client's `content-length`, or `transfer-encoding: chunked` for a
/// body without one.
pub fn http1_head(parts: &Parts, end_stream: bool, out: &mut Vec<u8>) -> Result<(), Malformed> {
    if parts.method == Method::CONNECT {
        return Err(Malformed {
            answer: Answer::MethodNotAllowed,
            detail: "CONNECT is not forwarded",
        });
    }
    let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let origin = target.starts_with('/');
    if !(origin || target == "*" && parts.method == Method::OPTIONS) {
        return Err(malformed(
            "the :path must be an absolute path (or * for OPTIONS)",
        ));
    }
    let authority = parts.uri.authority().map(|a| a.as_str());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(a) = authority {
        http1::push_field(out, b"host", a.as_bytes());
    }
    let mut cookies: Option<Vec<u8>> = None;
    for (name, value) in &parts.headers {
        let n = name.as_str();
        let v = value.as_bytes();
        if v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(malformed("a field value carries CR, LF or NUL"));
        }
        if n.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(malformed("field names must be lower-case in HTTP/2"));
        }
        if CONNECTION_SPECIFIC.contains(&n) {
            return Err(malformed(
                "connection-specific fields are not allowed in HTTP/2",
            ));
        }
        match n {
            "te" if v != b"trailers" => {
                return Err(malformed(
                    "te other than \"trailers\" is not allowed in HTTP/2",
                ))
            }
            "te" => continue,
            "host" => match authority {
                Some(a) if v.trim_ascii() != a.as_bytes() => {
                    return Err(malformed("the host field differs from :authority"))
                }
                Some(_) => continue,
                None => {}
            },
            "cookie" => {
                let c = cookies.get_or_insert_with(Vec::new);
                if !c.is_empty() {
                    c.extend_from_slice(b"; ");
                }
                c.extend_from_slice(v);
                continue;
            }
            _ => {}
        }
        http1::push_field(out, n.as_bytes(), v);
    }
    if let Some(c) = cookies {
        http1::push_field(out, b"cookie", &c);
    }
    if !end_stream && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// The gateway's own answer `r` as an HTTP/2 response and its body (empty for `HEAD`).
pub fn refusal(r: &Refusal, request_id: &str, is_head: bool) -> (Response<()>, Bytes) {
    let body = r.body(Some(request_id));
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    if let Some(c) = r
        .challenge
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert(http::header::WWW_AUTHENTICATE, c);
    }
    if let Some(s) = r.retry_after {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    for (name, value) in &r.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
    let body = if is_head { Bytes::new() } else { body.into() };
    (resp, body)
}

/// The upstream's response head (`resp`, parsed from `bytes`) as an HTTP/2 response: the fields
/// the HTTP/1.1 relay would send on (it writes them, [`write_response_head`]), without the
/// connection-specific ones; `content-length` only for a body of known length (or a bodiless
/// answer that carries the representation's). `None`: the head could not be carried (a field
/// HTTP/2 cannot hold).
pub fn response(
    resp: &ResponseHead,
    bytes: &[u8],
    rate_limit: Option<&crate::gateway::limits::RateLimitField>,
    request_id: &[u8],
    scratch: &mut Vec<u8>,
) -> Option<Response<()>> {
    scratch.clear();
    let framing = ClientFraming {
        chunked: false,
        keep_alive: true,
        minor: 1,
    };
    write_response_head(
        scratch,
        resp,
        bytes,
        framing,
        rate_limit,
        (request_id, false),
    );
    let mut fields = [httparse::EMPTY_HEADER; 160];
    let mut parsed = httparse::Response::new(&mut fields);
    match parsed.parse(scratch) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let mut out = Response::new(());
    *out.status_mut() = StatusCode::from_u16(resp.status).ok()?;
    let h = out.headers_mut();
    for f in parsed.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).ok()?;
        if CONNECTION_SPECIFIC.contains(&name.as_str()) || name == http::header::TE {
            continue;
        }
        if name == http::header::CONTENT_LENGTH && resp.framing == Framing::Chunked {
            continue;
        }
        h.append(name, HeaderValue::from_bytes(f.value).ok()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(build: http::request::Builder) -> Parts {
        build.body(()).unwrap().into_parts().0
    }

    fn head(p: &Parts, end: bool) -> Result<String, Malformed> {
        let mut out = Vec::new();
        http1_head(p, end, &mut out).map(|()| String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_stream_becomes_the_http1_head_the_parser_reads() {
        let p = parts(
            http::Request::get("https://api.example/iot/x?a=1")
                .header("authorization", "Bearer t")
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .header("te", "trailers"),
        );
        let h = head(&p, true).unwrap();
        assert_eq!(
            h,
            "GET /iot/x?a=1 HTTP/1.1\r\nhost: api.example\r\nauthorization: Bearer t\r\ncookie: a=1; b=2\r\n\r\n"
        );
        let with_body = head(&parts(http::Request::post("https://a/p")), false).unwrap();
        assert!(
            with_body.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{with_body}"
        );
        let sized = head(
            &parts(http::Request::post("https://a/p").header("content-length", "3")),
            false,
        )
        .unwrap();
        assert!(!sized.contains("transfer-encoding"), "{sized}");
    }

    #[test]
    fn what_http2_makes_malformed_is_refused() {
        let refused = |b: http::request::Builder| head(&parts(b), true).unwrap_err();
        assert_eq!(
            refused(http::Request::get("https://a/p").header("host", "b")).detail,
            "the host field differs from :authority"
        );
        for name in CONNECTION_SPECIFIC {
            refused(http::Request::get("https://a/p").header(name, "x"));
        }
        refused(http::Request::get("https://a/p").header("te", "gzip"));
        refused(http::Request::get("*"));
        assert_eq!(
            refused(http::Request::connect("a:443")).answer,
            Answer::MethodNotAllowed
        );
        // The same host is fine, and only written once.
        let h = head(
            &parts(http::Request::get("https://a/p").header("host", "a")),
            true,
        )
        .unwrap();
        assert_eq!(h.matches("host").count(), 1, "{h}");
        let h = head(&parts(http::Request::options("*")), true).unwrap();
        assert!(h.starts_with("OPTIONS * HTTP/1.1\r\n"), "{h}");
    }
}
