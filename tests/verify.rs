//! The verify listener's forward auth (`[verify]`): the same decision as the gateway for nginx
//! `auth_request`, Caddy `forward_auth`, Traefik and Envoy, over real sockets against the real binary,
//! and through a real nginx and a real Caddy configured with the README's own snippets.

mod common;

use common::peers::{self, Addresses};
use common::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// name, path prefix, extra route keys (raw TOML).
type RouteSpec = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const TOKEN_ROUTES: &[RouteSpec] = &[
    ("iot", "/iot", &[]),
    ("video", "/video", &[("required_scope", "\"video:upload\"")]),
    ("public", "/public", &[("auth", "\"none\"")]),
    (
        "metered",
        "/metered",
        &[("rate_limit", "\"4/m\""), ("rate_burst", "4")],
    ),
    ("secure", "/secure", &[("tls_only", "true")]),
];

struct World {
    gw: Gateway,
    verify: SocketAddr,
    upstream: Upstream,
}

fn world_with(extra: &[(&str, &str)]) -> World {
    let upstream = Upstream::start("app");
    let verify = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut b = GatewayBuilder::new()
        .section("verify", "listen", &format!("\"{verify}\""))
        .section("verify", "trusted_proxies", "[\"127.0.0.1/32\"]")
        .gateway("usage_flush_interval", "\"100ms\"");
    for (k, v) in extra {
        b = b.section("verify", k, v);
    }
    for (name, prefix, keys) in TOKEN_ROUTES {
        b = b.route_with(name, prefix, upstream.addr(), keys);
    }
    let gw = b.start();
    World {
        gw,
        verify,
        upstream,
    }
}

fn world() -> World {
    world_with(&[])
}

impl World {
    /// A forward-auth question, as a trusted proxy asks it.
    fn ask(&self, uri: &str, headers: &[(&str, &str)]) -> RawResponse {
        let mut all = vec![("X-Forwarded-Uri", uri), ("X-Forwarded-Method", "GET")];
        all.extend_from_slice(headers);
        raw_http(self.verify, &build_request("GET", "/verify", &all, b""))
    }

    fn ask_with_token(&self, uri: &str, token: &str) -> RawResponse {
        self.ask(uri, &[("Authorization", &bearer(token))])
    }

    /// Polls until a freshly created token is known to the verify listener.
    fn wait_known(&self, token: &str) {
        let ok = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
            self.ask_with_token("/iot/x", token).status == 200
        });
        assert!(ok, "the verify listener never knew the token");
    }
}

/// The parts of a refusal both doors must agree on.
fn refusal(r: &RawResponse) -> (u16, Option<String>, Option<String>, String) {
    let json = r.json();
    (
        r.status,
        r.header("www-authenticate").map(str::to_owned),
        r.header("retry-after").map(str::to_owned),
        format!("{} {}", json["error"], json["detail"]),
    )
}

#[test]
fn allowed_answers_carry_the_identity_and_refusals_are_the_gateways_own() {
    let w = world();
    let (id, token) =
        w.gw.create_token_with("alice", "t", &["--scope", "telemetry:write"]);
    w.wait_known(&token);
    let r = w.ask_with_token("/iot/hive?x=1", &token);
    assert_eq!(r.status, 200, "{r}");
    assert!(r.body.is_empty());
    assert_eq!(r.header("x-user-id"), Some("alice"));
    assert_eq!(r.header("x-token-id"), Some(id.to_string().as_str()));
    assert_eq!(r.header("x-token-scopes"), Some("telemetry:write"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Refusals: the same status, challenge, code and detail as the gateway's own listener gives.
    let auth = bearer(&token);
    for (uri, with_token) in [
        ("/iot/a", false),
        ("/video/clip", true),
        ("/nowhere", true),
        ("/iot/%2e%2e/public", true),
    ] {
        let headers: Vec<(&str, &str)> = if with_token {
            vec![("Authorization", auth.as_str())]
        } else {
            vec![]
        };
        let at_gateway = w.gw.request("GET", uri, &headers, b"");
        let at_verify = w.ask(uri, &headers);
        assert_ne!(at_gateway.status, 200, "{uri}: {at_gateway}");
        assert_eq!(refusal(&at_verify), refusal(&at_gateway), "{uri}");
    }
    let r = w.ask("/video/clip", &[("Authorization", &auth)]);
    assert_eq!(r.status, 403);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
    // A revoke is honoured on the next question.
    w.gw.revoke(id);
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        w.ask_with_token("/iot/a", &token).status == 401
    });
    assert!(ok, "the revoke never reached the verify listener");
    let r = w.ask_with_token("/iot/a", &token);
    assert!(
        r.json()["detail"].as_str().unwrap().contains("revoked"),
        "{r}"
    );
    // Nothing was forwarded anywhere.
    assert_eq!(
        w.upstream.hits(),
        0,
        "the verify listener forwarded a request"
    );
    // The answers are counted by door and outcome, and not as route requests.
    let m = w.gw.metrics();
    assert!(
        metric_sum(
            &m,
            "tokengate_verify_answers_total",
            &["door=\"forward\"", "outcome=\"ok\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "tokengate_verify_answers_total",
            &["outcome=\"revoked\""]
        ) >= 1.0
    );
}

#[test]
fn usage_counts_as_for_proxied_requests() {
    let w = world();
    let (id, token) = w.gw.create_token("bob", "t");
    w.wait_known(&token);
    for _ in 0..3 {
        assert_eq!(w.ask_with_token("/iot/a", &token).status, 200);
    }
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        w.gw.token_entry(id)["use_count"].as_i64() >= Some(4)
    });
    assert!(ok, "uses never reached the store: {}", w.gw.token_entry(id));
    assert!(!w.gw.token_entry(id)["last_used_at"].is_null());
}

#[test]
fn percent_encoded_and_dot_spellings_are_refused_as_by_the_gateway() {
    let w = world();
    let (_, token) = w.gw.create_token("carol", "t");
    w.wait_known(&token);
    let auth = bearer(&token);
    // Each would reach another route than its first segment names if it were decoded or normalised.
    for uri in [
        "/public/../iot/a",
        "/public/%2e%2e/iot/a",
        "/public/%2E%2E/iot/a",
        "/public/..%2fiot/a",
        "/public%2F..%2Fiot/a",
        "/public/.%2e/video/x",
        "/%69ot/a",
        "/%70ublic/x",
        "/public/..;/iot",
        "/public//../iot",
        "/public\\..\\iot",
        "//iot/a",
        "/iot/./a",
    ] {
        for headers in [vec![], vec![("Authorization", auth.as_str())]] {
            let at_gateway = w.gw.request("GET", uri, &headers, b"");
            let at_verify = w.ask(uri, &headers);
            assert_eq!(at_verify.status, at_gateway.status, "{uri}: {at_verify}");
            if at_gateway.status != 200 {
                assert_eq!(refusal(&at_verify), refusal(&at_gateway), "{uri}");
            }
        }
    }
    // The public route needs no token at either door; its answer names no one (empty fields).
    let r = w.ask("/public/x", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-user-id"), Some(""));
}

#[test]
fn a_rate_limit_counts_both_doors_together() {
    let w = world();
    let (_, token) = w.gw.create_token("dave", "t");
    w.wait_known(&token);
    // "4/m" on /metered: two through the gateway, two through the verify listener, then both refuse.
    assert_eq!(w.gw.get_with_token("/metered/a", &token).status, 200);
    assert_eq!(w.ask_with_token("/metered/a", &token).status, 200);
    assert_eq!(w.gw.get_with_token("/metered/a", &token).status, 200);
    assert_eq!(w.ask_with_token("/metered/a", &token).status, 200);
    let at_verify = w.ask_with_token("/metered/a", &token);
    let at_gateway = w.gw.get_with_token("/metered/a", &token);
    assert_eq!(at_verify.status, 429, "{at_verify}");
    assert!(at_verify.header("retry-after").is_some());
    assert_eq!(refusal(&at_verify).3, refusal(&at_gateway).3);
    assert_eq!(at_gateway.status, 429);
    assert_eq!(
        w.upstream.hits(),
        2,
        "only the gateway's own requests were forwarded"
    );
}

#[test]
fn untrusted_askers_get_403_and_nothing_they_send_is_believed() {
    let w = world();
    let (_, token) = w.gw.create_token("erin", "t");
    w.wait_known(&token);
    let request = build_request(
        "GET",
        "/verify",
        &[
            ("Authorization", &bearer(&token)),
            ("X-Forwarded-Uri", "/iot/a"),
            ("X-Forwarded-For", "127.0.0.1"),
        ],
        b"",
    );
    // 127.0.0.7 is not in trusted_proxies = ["127.0.0.1/32"].
    let mut conn =
        Conn::over(Wired::plain(connect_from(Ipv4Addr::new(127, 0, 0, 7), w.verify)).unwrap());
    let r = conn.roundtrip(&request).unwrap();
    assert_eq!(r.status, 403, "{r}");
    assert_eq!(r.json_error(), "forbidden");
    assert_eq!(r.header("x-user-id"), None);
    let m = w.gw.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "tokengate_verify_answers_total",
            &["outcome=\"untrusted\""]
        ),
        1.0
    );
    // The MQTT endpoints are behind the same check.
    let mut conn =
        Conn::over(Wired::plain(connect_from(Ipv4Addr::new(127, 0, 0, 7), w.verify)).unwrap());
    let body = format!(r#"{{"username":"erin","password":"{token}","clientid":"c"}}"#);
    let r = conn
        .roundtrip(&build_request("POST", "/mqtt/authn", &[], body.as_bytes()))
        .unwrap();
    assert_eq!(r.status, 403);
}

#[test]
fn client_sent_identity_fields_are_never_echoed_and_two_credentials_are_400() {
    let w = world();
    let (_, token) = w.gw.create_token("frank", "t");
    w.wait_known(&token);
    let forged = [
        ("x-user-id", "admin"),
        ("X-Token-Id", "1"),
        ("x-token-scopes", "admin"),
        ("x-token-roles", "owner"),
        ("x-tokengate-signature", "v2 forged"),
    ];
    let auth = bearer(&token);
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(&forged);
    let r = w.ask("/iot/a", &headers);
    assert_eq!(r.status, 200);
    assert_eq!(r.header_count("x-user-id"), 1);
    assert_eq!(r.header("x-user-id"), Some("frank"));
    assert_eq!(r.header_count("x-token-roles"), 1);
    assert_eq!(
        r.header("x-token-roles"),
        Some(""),
        "no roles: an empty field"
    );
    assert_eq!(r.header_count("x-tokengate-signature"), 0);
    let r = w.ask("/public/a", &forged);
    assert_eq!(r.status, 200);
    for name in ["x-user-id", "x-token-id", "x-token-scopes", "x-token-roles"] {
        assert_eq!(r.header_count(name), 1, "{name}: {r}");
        assert_eq!(r.header(name), Some(""), "{name}: {r}");
    }
    let r = w.ask("/iot/a", &forged);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-user-id"), None, "{r}");
    assert_eq!(r.header("x-token-scopes"), None, "{r}");
    // Two Authorization fields: 400, as at the gateway.
    let r = w.ask(
        "/iot/a",
        &[
            ("Authorization", auth.as_str()),
            ("Authorization", auth.as_str()),
        ],
    );
    assert_eq!(
        (r.status, r.json_error().as_str()),
        (400, "invalid_request"),
        "{r}"
    );
    // Two X-Forwarded-Uri fields, or two different URIs: 400, never one of them.
    let r = w.ask(
        "/iot/a",
        &[("Authorization", &auth), ("X-Forwarded-Uri", "/public/a")],
    );
    assert_eq!(r.status, 400, "{r}");
    let r = w.ask(
        "/iot/a",
        &[("Authorization", &auth), ("X-Original-URI", "/public/a")],
    );
    assert_eq!(r.status, 400, "{r}");
    let r = raw_http(
        w.verify,
        &build_request("GET", "/verify", &[("Authorization", &auth)], b""),
    );
    assert_eq!(r.status, 400, "no URI at all: {r}");
    assert_eq!(w.upstream.hits(), 0);
}

#[test]
fn tls_only_routes_and_certificate_binding_follow_the_forwarded_facts() {
    let w = world();
    let thumb = "ab".repeat(32);
    let (_, token) =
        w.gw.create_token_with("gina", "t", &["--bind-cert-sha256", &thumb]);
    let (_, plain) = w.gw.create_token("hank", "t");
    w.wait_known(&plain);
    let auth = bearer(&plain);
    let r = w.ask("/secure/a", &[("Authorization", &auth)]);
    assert_eq!((r.status, r.json_error().as_str()), (403, "tls_required"));
    let r = w.ask(
        "/secure/a",
        &[("Authorization", &auth), ("X-Forwarded-Proto", "http")],
    );
    assert_eq!(r.status, 403);
    let r = w.ask(
        "/secure/a",
        &[("Authorization", &auth), ("X-Forwarded-Proto", "https")],
    );
    assert_eq!(r.status, 200, "{r}");
    // The bound token works only with its certificate's hash in XFCC.
    let auth = bearer(&token);
    let xfcc = format!("By=spiffe://mesh/gw;Hash={thumb};Subject=\"CN=gina\"");
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        w.ask(
            "/iot/a",
            &[("Authorization", &auth), ("X-Forwarded-Client-Cert", &xfcc)],
        )
        .status
            == 200
    });
    assert!(ok, "the bound token never passed with its certificate");
    let other = format!("Hash={}", "cd".repeat(32));
    for headers in [
        vec![("Authorization", auth.as_str())],
        vec![
            ("Authorization", auth.as_str()),
            ("X-Forwarded-Client-Cert", other.as_str()),
        ],
        vec![
            ("Authorization", auth.as_str()),
            ("X-Forwarded-Proto", "https"),
        ],
    ] {
        let r = w.ask("/iot/a", &headers);
        assert_eq!(r.status, 401, "{headers:?}: {r}");
    }
    // A certificate on a request said to be plain HTTP, or two XFCC elements: 400.
    let r = w.ask(
        "/iot/a",
        &[
            ("Authorization", &auth),
            ("X-Forwarded-Client-Cert", &xfcc),
            ("X-Forwarded-Proto", "http"),
        ],
    );
    assert_eq!(r.status, 400);
    let two = format!("{xfcc},Hash={}", "cd".repeat(32));
    let r = w.ask(
        "/iot/a",
        &[("Authorization", &auth), ("X-Forwarded-Client-Cert", &two)],
    );
    assert_eq!(r.status, 400);
}

#[test]
fn envoy_path_prefix_and_cache_seconds() {
    let w = world_with(&[("path_prefix", "\"/authz\""), ("cache_seconds", "5")]);
    let (_, token) =
        w.gw.create_token_with("ivy", "t", &["--scope", "telemetry:write"]);
    let auth = bearer(&token);
    let ask = |path: &str| {
        raw_http(
            w.verify,
            &build_request("POST", path, &[("Authorization", &auth)], b""),
        )
    };
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        ask("/authz/iot/a?b=1").status == 200
    });
    assert!(ok);
    let r = ask("/authz/iot/a");
    assert_eq!(r.header("cache-control"), Some("private, max-age=5"));
    assert_eq!(r.header("x-user-id"), Some("ivy"));
    assert_eq!(ask("/authz/video/x").status, 403);
    let r = ask("/authz/nowhere");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "refusals are never cached"
    );
    assert_eq!(ask("/authzfoo/iot/a").status, 400);
    assert_eq!(ask("/iot/a").status, 400);
}

/// nginx `auth_request`, configured with the README's snippet.
#[test]
fn nginx_auth_request_with_the_readme_snippet() {
    if !peers::installed(peers::NGINX) {
        return;
    }
    let w = world();
    let addrs = Addresses {
        listen: peers::loopback(),
        verify: w.verify,
        upstream: w.upstream.addr(),
    };
    let nginx = peers::nginx(&addrs.apply(&peers::readme_snippet("nginx")), addrs.listen);
    let (id, token) =
        w.gw.create_token_with("judy", "t", &["--scope", "telemetry:write"]);
    w.wait_known(&token);
    let auth = bearer(&token);
    let get = |uri: &str, headers: &[(&str, &str)]| {
        raw_http(nginx.addr, &build_request("GET", uri, headers, b""))
    };
    // A valid token: the application sees the user, never the credential or a client's forged identity.
    let r = get(
        "/iot/a?x=1",
        &[("Authorization", &auth), ("X-User-Id", "admin")],
    );
    assert_eq!(r.status, 200, "{r}\n{}", nginx.logs());
    let seen = w.upstream.last();
    assert_eq!(seen.single_header("x-user-id"), "judy");
    assert_eq!(seen.single_header("x-token-id"), id.to_string());
    assert_eq!(seen.single_header("x-token-scopes"), "telemetry:write");
    assert!(seen.header_values("authorization").is_empty());
    // Missing: 401 with tokengate's challenge.
    let r = get("/iot/a", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tokengate\"")
    );
    // Out of scope: 403 with the challenge naming the scope.
    let r = get("/video/a", &[("Authorization", &auth)]);
    assert_eq!(r.status, 403, "{r}");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("scope=\"video:upload\""),
        "{r}"
    );
    // A spelling that would cross into another route is refused, not forwarded.
    let hits = w.upstream.hits();
    let r = get("/public/%2e%2e/iot/a", &[]);
    assert_eq!(r.status, 400, "{r}");
    // A client's own X-Forwarded-Uri is overwritten by the snippet, never believed.
    let r = get(
        "/iot/a",
        &[
            ("X-Forwarded-Uri", "/public/a"),
            ("X-Original-URI", "/public/a"),
        ],
    );
    assert_eq!(r.status, 401, "{r}");
    // Over the rate limit: 429 with Retry-After.
    for _ in 0..4 {
        assert_eq!(get("/metered/a", &[("Authorization", &auth)]).status, 200);
    }
    let r = get("/metered/a", &[("Authorization", &auth)]);
    assert_eq!(r.status, 429, "{r}");
    assert!(r.header("retry-after").is_some(), "{r}");
    assert_eq!(w.upstream.hits(), hits + 4);
    // Revoked: refused on the next request.
    w.gw.revoke(id);
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        get("/iot/a", &[("Authorization", &auth)]).status == 401
    });
    assert!(ok, "the revoke never reached nginx's answers");
    let r = get("/iot/a", &[("Authorization", &auth)]);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token"),
        "{r}"
    );
}

/// Caddy `forward_auth`, configured with the README's snippet.
#[test]
fn caddy_forward_auth_with_the_readme_snippet() {
    if !peers::installed(peers::CADDY) {
        return;
    }
    let w = world();
    let addrs = Addresses {
        listen: peers::loopback(),
        verify: w.verify,
        upstream: w.upstream.addr(),
    };
    let caddy = peers::caddy(&addrs.apply(&peers::readme_snippet("caddy")), addrs.listen);
    let (id, token) =
        w.gw.create_token_with("kim", "t", &["--scope", "telemetry:write"]);
    w.wait_known(&token);
    let auth = bearer(&token);
    let get = |uri: &str, headers: &[(&str, &str)]| {
        raw_http(caddy.addr, &build_request("GET", uri, headers, b""))
    };
    let r = get(
        "/iot/a?x=1",
        &[("Authorization", &auth), ("X-User-Id", "admin")],
    );
    assert_eq!(r.status, 200, "{r}\n{}", caddy.logs());
    let seen = w.upstream.last();
    assert_eq!(seen.uri, "/iot/a?x=1");
    assert_eq!(seen.single_header("x-user-id"), "kim");
    assert_eq!(seen.single_header("x-token-id"), id.to_string());
    // Missing, out of scope: tokengate's own answer reaches the client, JSON body included.
    let r = get("/iot/a", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tokengate\"")
    );
    assert_eq!(r.json_error(), "unauthorized");
    let r = get("/video/a", &[("Authorization", &auth)]);
    assert_eq!(
        (r.status, r.json_error().as_str()),
        (403, "insufficient_scope")
    );
    // A public route: the application sees no identity, not even a client's forged one.
    let r = get(
        "/public/a",
        &[("X-User-Id", "admin"), ("X-Token-Scopes", "admin")],
    );
    assert_eq!(r.status, 200, "{r}");
    let seen = w.upstream.last();
    assert!(
        seen.header_values("x-user-id").iter().all(|v| v.is_empty()),
        "a forged identity reached the application: {:?}",
        seen.header_values("x-user-id")
    );
    assert!(seen
        .header_values("x-token-scopes")
        .iter()
        .all(|v| v.is_empty()));
    // Encoded spellings are refused as at the gateway.
    assert_eq!(get("/public/%2e%2e/iot/a", &[]).status, 400);
    // Over the rate limit: 429, Retry-After.
    for _ in 0..4 {
        assert_eq!(get("/metered/a", &[("Authorization", &auth)]).status, 200);
    }
    let r = get("/metered/a", &[("Authorization", &auth)]);
    assert_eq!((r.status, r.json_error().as_str()), (429, "rate_limited"));
    assert!(r.header("retry-after").is_some());
    // Revoked: refused on the next request.
    w.gw.revoke(id);
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        get("/iot/a", &[("Authorization", &auth)]).status == 401
    });
    assert!(ok, "the revoke never reached Caddy's answers");
}

#[test]
fn with_verify_tls_the_listener_speaks_tls() {
    let upstream = Upstream::start("app");
    let verify = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // `.tls()` writes the harness's server certificate (server0.crt) next to the config.
    let gw = GatewayBuilder::new()
        .tls()
        .section("verify", "listen", &format!("\"{verify}\""))
        .section("verify", "trusted_proxies", "[\"127.0.0.1/32\"]")
        .section(
            "verify",
            "tls",
            r#"{ min_version = "1.3", certificates = [{ cert = "server0.crt", key = "server0.key" }] }"#,
        )
        .route("iot", "/iot", upstream.addr())
        .start();
    let (_, token) = gw.create_token("lee", "t");
    let client = gw.tls_client(&tls::ClientOptions::default());
    let request = build_request(
        "GET",
        "/verify",
        &[
            ("Authorization", &bearer(&token)),
            ("X-Forwarded-Uri", "/iot/a"),
        ],
        b"",
    );
    let ask = || {
        let stream = tls::connect(verify, &client, "localhost").expect("TLS handshake");
        Conn::over(Wired::tls(stream).unwrap())
            .roundtrip(&request)
            .unwrap()
    };
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        ask().status == 200
    });
    assert!(ok, "never allowed over TLS");
    assert_eq!(ask().header("x-user-id"), Some("lee"));
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(try_raw_http(verify, &request).map_or(true, |r| r.status != 200));
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn check_config_reads_the_verify_listeners_certificates() {
    let gw = GatewayBuilder::new()
        .section("verify", "listen", "\"127.0.0.1:9191\"")
        .section("verify", "trusted_proxies", "[\"127.0.0.1/32\"]")
        .section(
            "verify",
            "tls",
            r#"{ certificates = [{ cert = "missing.crt", key = "missing.key" }] }"#,
        )
        .route("iot", "/iot", refused_addr())
        .build();
    let out = gw.cli(&["check-config"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[verify.tls]"), "{err}");
}
