//! Request-path behaviour of `tokengate serve` against real upstreams (spec, "Gateway behaviour"):
//! admin `/healthz` and `/metrics`; credential handling (missing, non-Bearer, wrong, revoked, expired,
//! duplicated, malformed, in the query string, scheme case); routing (404, segment boundaries, longest
//! prefix, path tricks); what the upstream receives (method, path, query, body, identity and forwarding
//! headers); upstream failures (502, 504); streaming of a 1 GiB upload and a large download. Each runs
//! over the plain listener, over TLS and as HTTP/2 streams over TLS.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

const WWW_AUTH_PLAIN: &str = "Bearer realm=\"tokengate\"";
const WWW_AUTH_INVALID_TOKEN: &str =
    "Bearer realm=\"tokengate\", error=\"invalid_token\", error_description=\"";
const WWW_AUTH_INVALID_REQUEST: &str =
    "Bearer realm=\"tokengate\", error=\"invalid_request\", error_description=\"";

/// One upstream behind route `api` on `/api`, and a fresh token for user `alice`.
struct Setup {
    upstream: Upstream,
    gw: Gateway,
    id: i64,
    token: String,
}

fn setup(wire: Wire) -> Setup {
    let upstream = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .wire(wire)
        .route("api", "/api", upstream.addr())
        .start();
    let (id, token) = gw.create_token("alice", "laptop");
    wait_until_accepted(&gw, "/api/warmup", &token);
    Setup {
        upstream,
        gw,
        id,
        token,
    }
}

/// Polls until `token` is accepted (a token created before or while the gateway starts may take a sync
/// interval to appear), then returns; panics after 10 s.
fn wait_until_accepted(gw: &Gateway, target: &str, token: &str) {
    let mut last = None;
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let response = gw.get_with_token(target, token);
        let ok = response.status == 200;
        last = Some(response);
        ok
    });
    assert!(
        ok,
        "token never accepted on {target}; last response: {}",
        last.unwrap()
    );
}

fn assert_json_content_type(response: &RawResponse) {
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content-type should be application/json: {response}"
    );
}

/// 401 with the plain challenge (no error parameter) and `{"error":"unauthorized","detail":...}`.
fn assert_unauthorized(response: &RawResponse, what: &str) {
    assert_eq!(response.status, 401, "{what}: {response}");
    assert_eq!(
        response.header("www-authenticate"),
        Some(WWW_AUTH_PLAIN),
        "{what}: {response}"
    );
    assert_json_content_type(response);
    let body = response.json();
    assert_eq!(body["error"], "unauthorized", "{what}: {response}");
    assert!(
        body.get("detail").is_some(),
        "{what}: no detail in {response}"
    );
}

/// 401 with `error="invalid_token"` in the challenge and the JSON body; returns the challenge.
fn assert_invalid_token(response: &RawResponse, what: &str) -> String {
    assert_eq!(response.status, 401, "{what}: {response}");
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(WWW_AUTH_INVALID_TOKEN),
        "{what}: challenge {challenge:?}"
    );
    assert!(challenge.ends_with('"'), "{what}: challenge {challenge:?}");
    assert_json_content_type(response);
    let body = response.json();
    assert_eq!(body["error"], "invalid_token", "{what}: {response}");
    assert!(
        body["detail"].is_string(),
        "{what}: no detail in {response}"
    );
    challenge.to_owned()
}

/// 400 with `error="invalid_request"` in the challenge and the JSON body.
fn assert_invalid_request_challenge(response: &RawResponse, what: &str) {
    assert_eq!(response.status, 400, "{what}: {response}");
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(WWW_AUTH_INVALID_REQUEST),
        "{what}: challenge {challenge:?}"
    );
    assert_eq!(
        response.json_error(),
        "invalid_request",
        "{what}: {response}"
    );
}

// ----------------------------------------------------------------------------------------------------------
// Admin listener
// ----------------------------------------------------------------------------------------------------------

#[test]
fn healthz_answers_ok_json() {
    let upstream = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .route("api", "/api", upstream.addr())
        .start();
    let response = gw.admin_get("/healthz");
    assert_eq!(response.status, 200, "{response}");
    assert_json_content_type(&response);
    assert_eq!(response.json()["status"], "ok", "{response}");
}

#[test]
fn metrics_are_prometheus_text() {
    let s = setup(Wire::Plain);
    assert_eq!(s.gw.get_with_token("/api/a", &s.token).status, 200);
    assert_eq!(s.gw.request("GET", "/api/a", &[], b"").status, 401);
    let response = s.gw.admin_get("/metrics");
    assert_eq!(response.status, 200, "{response}");
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    let text = response.text();
    assert!(
        text.contains("# HELP "),
        "no # HELP line in metrics:\n{text}"
    );
    assert!(
        text.contains("# TYPE "),
        "no # TYPE line in metrics:\n{text}"
    );
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok(),
            "metric line without a numeric value: {line:?}"
        );
    }
}

// ----------------------------------------------------------------------------------------------------------
// Credentials
// ----------------------------------------------------------------------------------------------------------

fn valid_token_is_forwarded(wire: Wire) {
    let s = setup(wire);
    let before = s.upstream.hits();
    let response = s.gw.get_with_token("/api/things", &s.token);
    assert_eq!(response.status, 200, "{response}");
    let echo = response.json();
    assert_eq!(echo["upstream"], "api");
    assert_eq!(echo["uri"], "/api/things");
    assert_eq!(s.upstream.hits(), before + 1);
}

fn missing_credential_is_401_and_upstream_untouched(wire: Wire) {
    let s = setup(wire);
    let before = s.upstream.hits();
    let response = s.gw.request("GET", "/api/things", &[], b"");
    assert_unauthorized(&response, "no Authorization header");
    let response = s.gw.request("POST", "/api/things", &[], b"some body");
    assert_unauthorized(&response, "no Authorization header, POST");
    assert_eq!(s.upstream.hits(), before, "upstream must not be contacted");
}

fn non_bearer_scheme_is_401_unauthorized(wire: Wire) {
    let s = setup(wire);
    let before = s.upstream.hits();
    let cases = [
        "Basic YWxpY2U6c2VjcmV0".to_owned(),
        format!("Token {}", s.token),
        format!("Bearerx {}", s.token),
        "Digest username=\"alice\"".to_owned(),
    ];
    for value in &cases {
        let response =
            s.gw.request("GET", "/api/x", &[("Authorization", value)], b"");
        assert_unauthorized(&response, &format!("Authorization: {value}"));
    }
    assert_eq!(s.upstream.hits(), before, "upstream must not be contacted");
}

fn bearer_scheme_is_case_insensitive(wire: Wire) {
    let s = setup(wire);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {}", s.token);
        let response =
            s.gw.request("GET", "/api/x", &[("Authorization", &value)], b"");
        assert_eq!(response.status, 200, "scheme {scheme}: {response}");
    }
}

/// Replaces the character at `index` by another base62 character.
fn change_char(token: &str, index: usize) -> String {
    let mut bytes = token.as_bytes().to_vec();
    bytes[index] = if bytes[index] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).unwrap()
}

fn wrong_tokens_are_401_invalid_token(wire: Wire) {
    let s = setup(wire);
    // A token of valid format that this gateway's store does not know: made by another store.
    let other = GatewayBuilder::new()
        .wire(wire)
        .route("api", "/api", s.upstream.addr())
        .build();
    let (_, foreign) = other.create_token("mallory", "elsewhere");
    assert!(is_token_format(&foreign), "{foreign}");

    let mut cases = vec![
        ("garbage".to_owned(), "garbage"),
        ("tg_".to_owned(), "prefix only"),
        ("tg_abc".to_owned(), "too short"),
        (format!("{}a", s.token), "one char too long"),
        (s.token[..51].to_owned(), "one char too short"),
        (format!("xx_{}", &s.token[3..]), "wrong prefix"),
        (format!("TG_{}", &s.token[3..]), "prefix in upper case"),
        (
            format!("tg_{}", "A".repeat(49)),
            "right shape, bad checksum",
        ),
        (foreign, "unknown token with a valid checksum"),
    ];
    for index in [0, 3, 10, 25, 45, 46, 51] {
        cases.push((change_char(&s.token, index), "one character changed"));
    }
    let before = s.upstream.hits();
    for (token, what) in &cases {
        let response = s.gw.get_with_token("/api/x", token);
        assert_invalid_token(&response, &format!("{what} ({token})"));
    }
    assert_eq!(s.upstream.hits(), before, "upstream must not be contacted");
    // The real token still works.
    assert_eq!(s.gw.get_with_token("/api/x", &s.token).status, 200);
}

fn revoked_token_is_401_invalid_token(wire: Wire) {
    let s = setup(wire);
    s.gw.revoke(s.id);
    let mut last = None;
    let rejected = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let response = s.gw.get_with_token("/api/x", &s.token);
        let done = response.status != 200;
        last = Some(response);
        done
    });
    let last = last.unwrap();
    assert!(rejected, "revoked token still accepted after 10 s: {last}");
    assert_invalid_token(&last, "revoked token");
}

fn expired_token_is_401_mentioning_expired(wire: Wire) {
    let s = setup(wire);
    let (_, token) =
        s.gw.create_token_with("alice", "short-lived", &["--expires-in", "2s"]);
    // Before the sync the token is merely unknown ("not valid"); wait for the expiry-specific answer.
    let mentions_expired = |response: &RawResponse| {
        let challenge = response.header("www-authenticate").unwrap_or_default();
        let description = challenge
            .split("error_description=")
            .nth(1)
            .unwrap_or_default();
        description.to_ascii_lowercase().contains("expired")
    };
    let mut last = None;
    let expired = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let response = s.gw.get_with_token("/api/x", &token);
        let done = response.status == 401 && mentions_expired(&response);
        last = Some(response);
        done
    });
    let last = last.unwrap();
    assert!(
        expired,
        "token with --expires-in 2s not rejected with an error_description mentioning expiry \
         within 20 s; last response: {last}"
    );
    assert_invalid_token(&last, "expired token");
}

fn two_authorization_headers_are_400(wire: Wire) {
    let s = setup(wire);
    let bearer = format!("Bearer {}", s.token);
    let before = s.upstream.hits();
    let cases: [[&str; 2]; 3] = [
        [&bearer, &bearer],
        [&bearer, "Bearer garbage"],
        ["Basic YTpi", &bearer],
    ];
    for [first, second] in cases {
        let response = s.gw.request(
            "GET",
            "/api/x",
            &[("Authorization", first), ("authorization", second)],
            b"",
        );
        assert_eq!(
            response.status, 400,
            "two Authorization headers {first:?} {second:?}: {response}"
        );
        assert_eq!(response.json_error(), "invalid_request", "{response}");
    }
    assert_eq!(s.upstream.hits(), before, "upstream must not be contacted");
}

fn malformed_bearer_credentials_are_400(wire: Wire) {
    let s = setup(wire);
    let t = &s.token;
    let cases = [
        ("Bearer ".to_owned(), "empty token"),
        ("Bearer".to_owned(), "scheme only"),
        (format!("Bearer {t} extra"), "something after the token"),
        (format!("Bearer {t} {t}"), "two tokens"),
        (format!("Bearer {t},"), "trailing comma"),
        (format!("Bearer\t{t}"), "tab instead of space"),
        (
            format!("Bearer {}", "a".repeat(1100)),
            "token over 1024 bytes",
        ),
        (
            format!("Bearer {}{}", t, "=".repeat(1100)),
            "credential over 1024 bytes",
        ),
        (format!("Bearer {}$", &t[..51]), "non-token68 character $"),
        (
            format!("Bearer {}\"", &t[..51]),
            "non-token68 character quote",
        ),
        (format!("Bearer {}=x", &t[..50]), "padding in the middle"),
        (format!("Bearer {}é", &t[..50]), "non-ASCII character"),
    ];
    let before = s.upstream.hits();
    for (value, what) in &cases {
        let response =
            s.gw.request("GET", "/api/x", &[("Authorization", value)], b"");
        assert_invalid_request_challenge(&response, &format!("{what}: {value:?}"));
    }
    assert_eq!(s.upstream.hits(), before, "upstream must not be contacted");
}

fn control_characters_in_credential_are_400(wire: Wire) {
    // httparse may reject these before tokengate sees them, so only the status and the upstream are checked.
    // Over HTTP/2 the field is malformed (RFC 9113 §8.2.1): the stream may be reset instead of answered.
    let s = setup(wire);
    let t = &s.token;
    let cases = [
        format!("Bearer {}\x01{}", &t[..20], &t[20..]),
        format!("Bearer {t}\x7f"),
        format!("Bearer \x00{t}"),
    ];
    let before = s.upstream.hits();
    for value in &cases {
        let request = build_request("GET", "/api/x", &[("Authorization", value)], b"");
        match s.gw.try_raw(&request) {
            Ok(response) => assert_eq!(response.status, 400, "{value:?}: {response}"),
            Err(e) if wire == Wire::H2 => eprintln!("{value:?}: the stream was refused: {e}"),
            Err(e) => panic!("{value:?}: {e}"),
        }
    }
    assert_eq!(s.upstream.hits(), before, "upstream must not be contacted");
}

fn token_in_query_string_is_not_a_credential(wire: Wire) {
    let s = setup(wire);
    let before = s.upstream.hits();
    for target in [
        format!("/api/x?access_token={}", s.token),
        format!("/api/x?token={}", s.token),
        format!("/api/x?authorization=Bearer%20{}", s.token),
    ] {
        let response = s.gw.request("GET", &target, &[], b"");
        assert_unauthorized(&response, &target);
    }
    assert_eq!(s.upstream.hits(), before, "upstream must not be contacted");
}

// ----------------------------------------------------------------------------------------------------------
// Routing
// ----------------------------------------------------------------------------------------------------------

fn unknown_route_is_404_and_prefix_matches_whole_segments(wire: Wire) {
    let iot = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .wire(wire)
        .route("telemetry", "/iot", iot.addr())
        .start();
    let (_, token) = gw.create_token("alice", "laptop");
    wait_until_accepted(&gw, "/iot", &token);

    let before = iot.hits();
    for target in [
        "/", "/nothing", "/iotx", "/iotx/a", "/io", "/api/iot", "/?x=/iot",
    ] {
        let response = gw.get_with_token(target, &token);
        assert_eq!(response.status, 404, "{target}: {response}");
        assert_json_content_type(&response);
        assert_eq!(response.json_error(), "not_found", "{target}: {response}");
    }
    assert_eq!(
        iot.hits(),
        before,
        "upstream must not be contacted for unknown routes"
    );

    for target in ["/iot", "/iot/", "/iot/a", "/iot/a/b", "/iot?x=1"] {
        let response = gw.get_with_token(target, &token);
        assert_eq!(response.status, 200, "{target}: {response}");
        assert_eq!(response.json()["uri"], target);
    }
}

fn longest_prefix_wins(wire: Wire) {
    let api = Upstream::start("api");
    let v2 = Upstream::start("v2");
    // The shorter prefix comes first, so first-match routing would fail.
    let gw = GatewayBuilder::new()
        .wire(wire)
        .route("api", "/api", api.addr())
        .route("api-v2", "/api/v2", v2.addr())
        .start();
    let (_, token) = gw.create_token("alice", "laptop");
    wait_until_accepted(&gw, "/api", &token);

    let expectations = [
        ("/api/v2", "v2"),
        ("/api/v2/", "v2"),
        ("/api/v2/users?id=1", "v2"),
        ("/api/v2x", "api"),
        ("/api/v1/users", "api"),
        ("/api", "api"),
        ("/api/", "api"),
    ];
    for (target, upstream) in expectations {
        let response = gw.get_with_token(target, &token);
        assert_eq!(response.status, 200, "{target}: {response}");
        let echo = response.json();
        assert_eq!(
            echo["upstream"], upstream,
            "{target} went to the wrong upstream"
        );
        assert_eq!(echo["uri"], target);
    }
}

fn path_tricks_are_400_before_routing(wire: Wire) {
    let s = setup(wire);
    let tricks = [
        "/api/../secret",
        "/api/..",
        "/api/./x",
        "/api/x/.",
        "/api/x/../y",
        "/./api/x",
        "/api//x",
        "//api/x",
        "/api/x//",
        "/api/%2e%2e/x",
        "/api/%2E%2E/x",
        "/api/%2e/x",
        "/api/.%2e/x",
        "/api/%2E./x",
        "/api/a%2fb",
        "/api/a%2Fb",
        "/api/a%5cb",
        "/api/a%5Cb",
        "/api/a\\b",
        "/api\\x",
        "/zzz/../api/x",
        "/nope/%2e%2e/api",
    ];
    let before = s.upstream.hits();
    for target in tricks {
        let response = s.gw.get_with_token(target, &s.token);
        assert_eq!(response.status, 400, "{target}: {response}");
        assert_json_content_type(&response);
        assert_eq!(
            response.json_error(),
            "invalid_request",
            "{target}: {response}"
        );
    }
    assert_eq!(s.upstream.hits(), before, "upstream must not be contacted");

    // Dots that are not whole segments are fine, and the query string is not inspected.
    for target in [
        "/api/file.txt",
        "/api/..hidden/a..b",
        "/api/x?path=../../etc%2fpasswd&b=a//b&c=%2e%5c",
        "/api/x?..",
    ] {
        let response = s.gw.get_with_token(target, &s.token);
        assert_eq!(response.status, 200, "{target}: {response}");
        assert_eq!(
            s.upstream.last().uri,
            target,
            "path and query must reach the upstream unchanged"
        );
    }
}

// ----------------------------------------------------------------------------------------------------------
// What the upstream receives
// ----------------------------------------------------------------------------------------------------------

async fn method_path_query_and_body_are_forwarded_unchanged(wire: Wire) {
    let s = setup(wire);
    let http = s.gw.http_client();
    let body: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let body_crc = crc32fast::hash(&body);

    let cases = [
        (
            reqwest::Method::GET,
            "/api/things?a=1&b=%2F&c=x%20y&a=2",
            Vec::new(),
        ),
        (
            reqwest::Method::POST,
            "/api/upload?kind=video",
            body.clone(),
        ),
        (reqwest::Method::PUT, "/api/items/7", body.clone()),
        (
            reqwest::Method::PATCH,
            "/api/items/7?partial",
            b"{\"x\":1}".to_vec(),
        ),
        (reqwest::Method::DELETE, "/api/items/7", Vec::new()),
    ];
    for (method, target, payload) in cases {
        let expected_len = payload.len() as u64;
        let expected_crc = crc32fast::hash(&payload);
        let response = http
            .request(method.clone(), s.gw.url(target))
            .bearer_auth(&s.token)
            .header("x-custom", "keep me")
            .body(payload)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{method} {target}");
        let seen = s.upstream.last();
        assert_eq!(seen.method, method.as_str());
        assert_eq!(seen.uri, target);
        assert_eq!(
            seen.body_len, expected_len,
            "{method} {target}: body length"
        );
        assert_eq!(
            seen.body_crc, expected_crc,
            "{method} {target}: body checksum"
        );
        assert_eq!(seen.single_header("x-custom"), "keep me");
        assert!(
            seen.header_values("authorization").is_empty(),
            "Authorization forwarded: {:?}",
            seen.headers
        );
    }
    assert_eq!(
        s.upstream
            .requests()
            .iter()
            .filter(|r| r.body_crc == body_crc)
            .count(),
        2
    );
}

fn identity_and_forwarding_headers_are_replaced(wire: Wire) {
    let s = setup(wire);
    let bearer = format!("Bearer {}", s.token);
    let spoofed = [
        ("Authorization", bearer.as_str()),
        ("x-user-id", "evil-1"),
        ("X-User-Id", "evil-2"),
        ("x_user_id", "evil-3"),
        ("X_USER_ID", "evil-4"),
        ("X-User_Id", "evil-5"),
        ("x-token-id", "999"),
        ("X_Token_Id", "998"),
        ("X-TOKEN-ID", "997"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("x-forwarded-for", "7.7.7.7, 8.8.8.8"),
        ("X-Forwarded-Proto", "https"),
        ("X-Custom", "keep"),
        ("x-user-idx", "not an identity header"),
    ];
    let response =
        s.gw.request("POST", "/api/ingest?x=1", &spoofed, b"payload");
    assert_eq!(response.status, 200, "{response}");
    let seen = s.upstream.last();
    let id = s.id.to_string();
    assert!(
        seen.header_values("authorization").is_empty(),
        "Authorization forwarded: {:?}",
        seen.headers
    );
    assert_eq!(seen.single_header("x-user-id"), "alice");
    assert_eq!(seen.single_header("x-token-id"), id);
    assert_eq!(seen.single_header("x-forwarded-for"), "127.0.0.1");
    assert_eq!(seen.single_header("x-forwarded-proto"), proto(wire));
    assert_eq!(seen.single_header("x-custom"), "keep");
    assert_eq!(seen.single_header("x-user-idx"), "not an identity header");
    assert_eq!(seen.body_len, 7);

    // Without anything spoofed the same headers are added.
    let response = s.gw.get_with_token("/api/plain", &s.token);
    assert_eq!(response.status, 200, "{response}");
    let seen = s.upstream.last();
    assert_eq!(seen.single_header("x-user-id"), "alice");
    assert_eq!(seen.single_header("x-token-id"), id);
    assert_eq!(seen.single_header("x-forwarded-for"), "127.0.0.1");
    assert_eq!(seen.single_header("x-forwarded-proto"), proto(wire));
}

// ----------------------------------------------------------------------------------------------------------
// Upstream failures
// ----------------------------------------------------------------------------------------------------------

fn refused_upstream_is_502_and_other_routes_keep_working(wire: Wire) {
    let api = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .wire(wire)
        .route("dead", "/dead", refused_addr())
        .route("api", "/api", api.addr())
        .start();
    let (_, token) = gw.create_token("alice", "laptop");
    wait_until_accepted(&gw, "/api", &token);
    for _ in 0..3 {
        let response = gw.get_with_token("/dead/x", &token);
        assert_eq!(response.status, 502, "{response}");
        assert_json_content_type(&response);
        assert_eq!(response.json_error(), "bad_gateway", "{response}");
        let response = gw.get_with_token("/api/x", &token);
        assert_eq!(response.status, 200, "{response}");
    }
}

fn slow_upstream_is_504_after_read_timeout(wire: Wire) {
    let slow = Upstream::with_delay("slow", Duration::from_secs(8));
    let api = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .wire(wire)
        .route_with("slow", "/slow", slow.addr(), &[("read_timeout", "\"1s\"")])
        .route("api", "/api", api.addr())
        .start();
    let (_, token) = gw.create_token("alice", "laptop");
    wait_until_accepted(&gw, "/api", &token);

    let started = Instant::now();
    let response = gw.get_with_token("/slow/x", &token);
    let elapsed = started.elapsed();
    eprintln!("504 after {elapsed:?} (read_timeout 1s, upstream delay 8s)");
    assert_eq!(response.status, 504, "{response}");
    assert_json_content_type(&response);
    assert_eq!(response.json_error(), "gateway_timeout", "{response}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "504 before the read timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(6),
        "504 came too late: {elapsed:?}"
    );
    assert_eq!(slow.hits(), 1, "the slow upstream got the request");
    assert_eq!(gw.get_with_token("/api/x", &token).status, 200);
}

// ----------------------------------------------------------------------------------------------------------
// Streaming
// ----------------------------------------------------------------------------------------------------------

const MIB: u64 = 1024 * 1024;
const MEMORY_LIMIT_KIB: u64 = 200 * 1024;

async fn one_gib_chunked_upload_streams_through(wire: Wire) {
    let s = setup(wire);
    let total: u64 = 1024 * MIB;
    let hwm_before = s.gw.vm_hwm_kib();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        pattern_chunks(total).map(Ok::<_, std::io::Error>),
    ));
    let started = Instant::now();
    let send =
        s.gw.http_client()
            .put(s.gw.url("/api/videos/big.bin"))
            .bearer_auth(&s.token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send();
    let response = tokio::time::timeout(Duration::from_secs(900), send)
        .await
        .expect("upload did not finish within 900 s")
        .expect("upload failed");
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    if wire == Wire::H2 {
        assert_eq!(
            response.version(),
            reqwest::Version::HTTP_2,
            "one HTTP/2 stream"
        );
    }
    let hwm_after = s.gw.vm_hwm_kib();
    eprintln!(
        "1 GiB upload in {elapsed:?} ({:.0} MiB/s); gateway VmHWM {} MiB before, {} MiB after",
        1024.0 / elapsed.as_secs_f64(),
        hwm_before / 1024,
        hwm_after / 1024
    );

    let seen = s.upstream.last();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.body_len, total, "upstream byte count");
    assert_eq!(seen.body_crc, pattern_crc(total), "upstream checksum");
    assert!(
        hwm_after < MEMORY_LIMIT_KIB,
        "gateway peak RSS {} MiB while streaming 1 GiB (limit {} MiB)",
        hwm_after / 1024,
        MEMORY_LIMIT_KIB / 1024
    );
}

async fn large_download_streams_through(wire: Wire) {
    let s = setup(wire);
    let total: u64 = 256 * MIB;
    let started = Instant::now();
    let response =
        s.gw.http_client()
            .get(s.gw.url("/api/videos/big.bin"))
            .bearer_auth(&s.token)
            .header(DOWNLOAD_HEADER, total.to_string())
            .send()
            .await
            .expect("download request");
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = 0u64;
    let mut crc = crc32fast::Hasher::new();
    let read_all = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("download body");
            received += chunk.len() as u64;
            crc.update(&chunk);
        }
    };
    tokio::time::timeout(Duration::from_secs(600), read_all)
        .await
        .expect("download did not finish within 600 s");
    let elapsed = started.elapsed();
    let hwm = s.gw.vm_hwm_kib();
    eprintln!(
        "256 MiB download in {elapsed:?} ({:.0} MiB/s); gateway VmHWM {} MiB",
        256.0 / elapsed.as_secs_f64(),
        hwm / 1024
    );
    assert_eq!(received, total, "bytes received");
    assert_eq!(crc.finalize(), pattern_crc(total), "download checksum");
    assert!(
        hwm < MEMORY_LIMIT_KIB,
        "gateway peak RSS {} MiB while streaming",
        hwm / 1024
    );
}

/// The `X-Forwarded-Proto` the upstream sees for a request that arrived over `wire`.
fn proto(wire: Wire) -> &'static str {
    match wire {
        Wire::Plain => "http",
        Wire::Tls | Wire::H2 => "https",
    }
}

/// Every test above runs three times: over the plain listener, over TLS, and as HTTP/2 streams over TLS
/// (the same guarantees on each: one decision behind every transport).
macro_rules! over_every_wire {
    (sync: $($name:ident),* ; async: $($aname:ident),* $(,)?) => {
        mod plain {
            use super::Wire;
            $( #[test] fn $name() { super::$name(Wire::Plain) } )*
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $aname() { super::$aname(Wire::Plain).await } )*
        }
        mod tls {
            use super::Wire;
            $( #[test] fn $name() { super::$name(Wire::Tls) } )*
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $aname() { super::$aname(Wire::Tls).await } )*
        }
        mod http2 {
            use super::Wire;
            $( #[test] fn $name() { super::$name(Wire::H2) } )*
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $aname() { super::$aname(Wire::H2).await } )*
        }
    };
}

over_every_wire! {
    sync: valid_token_is_forwarded, missing_credential_is_401_and_upstream_untouched, non_bearer_scheme_is_401_unauthorized, bearer_scheme_is_case_insensitive, wrong_tokens_are_401_invalid_token, revoked_token_is_401_invalid_token, expired_token_is_401_mentioning_expired, two_authorization_headers_are_400, malformed_bearer_credentials_are_400, control_characters_in_credential_are_400, token_in_query_string_is_not_a_credential, unknown_route_is_404_and_prefix_matches_whole_segments, longest_prefix_wins, path_tricks_are_400_before_routing, identity_and_forwarding_headers_are_replaced, refused_upstream_is_502_and_other_routes_keep_working, slow_upstream_is_504_after_read_timeout;
    async: method_path_query_and_body_are_forwarded_unchanged, one_gib_chunked_upload_streams_through, large_download_streams_through
}
