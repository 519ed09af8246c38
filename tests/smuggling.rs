//! Request smuggling look-alikes, tried as an attacker would, over real sockets against the real binary:
//! header names that upstream frameworks normalise into framing, hop-by-hop or identity fields
//! (`Transfer_Encoding`, `content--length`, `X__User_Id`), TE/CL mutations and other framing corpus
//! families, bodies on the gateway's own answers to `HEAD`, and paths that servers such as Tomcat or Jetty
//! resolve into another route (`..;/`, double encoding, `%00`).
//!
//! Every case checks the two things that matter: what the client is answered, and that no request (or no
//! second, smuggled request) reaches an upstream.

mod common;

use common::*;
use std::time::Duration;

/// A gateway with a bearer route `/secret` and a public (`auth = "none"`) catch-all `/`, both on their own
/// upstream, and a token for `alice`.
struct Bed {
    gw: Gateway,
    secret: Upstream,
    public: Upstream,
    token: String,
}

fn bed() -> Bed {
    let secret = Upstream::start("secret");
    let public = Upstream::start("public");
    let mut gw = GatewayBuilder::new()
        .route("secret", "/secret", secret.addr())
        .route_with("public", "/", public.addr(), &[("auth", "\"none\"")])
        .build();
    let (_, token) = gw.create_token("alice", "smuggling");
    gw.start();
    let r = gw.get_with_token("/secret/warm", &token);
    assert_eq!(r.status, 200, "warm-up: {r}");
    Bed {
        gw,
        secret,
        public,
        token,
    }
}

impl Bed {
    /// Upstream hits so far (secret, public).
    fn hits(&self) -> (usize, usize) {
        (self.secret.hits(), self.public.hits())
    }

    /// Every path either upstream has seen.
    fn seen(&self) -> Vec<String> {
        self.secret
            .requests()
            .into_iter()
            .chain(self.public.requests())
            .map(|r| r.uri)
            .collect()
    }

    /// Sends raw bytes on one connection and reads everything the gateway answers until it closes.
    fn raw(&self, bytes: &[u8]) -> String {
        let mut c = self.gw.connect();
        c.set_read_timeout(Duration::from_secs(5));
        c.send(bytes).expect("send");
        let mut answers = String::new();
        while let Ok(r) = c.read_response() {
            answers.push_str(&format!("{} ", r.status));
            if r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            {
                break;
            }
        }
        answers
    }
}

#[test]
fn lookalike_framing_names_are_refused_with_400_and_never_reach_an_upstream() {
    let b = bed();
    let auth = bearer(&b.token);
    let smuggled = "GET /secret/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let variants = [
        format!("POST /secret/a HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: {}\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}", 5 + smuggled.len()),
        format!("POST /secret/a HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer---Encoding: chunked\r\nContent-Length: 4\r\n\r\nabcd"),
        format!("POST /secret/a HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTRANSFER_ENCODING: chunked\r\nContent-Length: 4\r\n\r\nabcd"),
        format!("POST /secret/a HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: {}\r\nContent_Length: 0\r\n\r\n{smuggled}", smuggled.len()),
        format!("POST /secret/a HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\ncontent--length: 0\r\nContent-Length: 4\r\n\r\nabcd"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nContent_Length: 44\r\n\r\n{smuggled}"),
    ];
    let before = b.hits();
    for v in &variants {
        let r = raw_http(b.gw.addr(), v.as_bytes());
        assert_eq!(r.status, 400, "{v:?}: {r}");
        assert_eq!(r.json_error(), "invalid_request", "{v:?}");
        assert!(r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("Content-Length or Transfer-Encoding"));
        assert_eq!(r.header("connection"), Some("close"), "{v:?}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.hits(), before, "seen: {:?}", b.seen());
}

#[test]
fn lookalike_hop_by_hop_and_identity_names_are_dropped_before_forwarding() {
    let b = bed();
    let auth = bearer(&b.token);
    let r = b.gw.request(
        "GET",
        "/secret/x",
        &[
            ("Authorization", &auth),
            ("Keep_Alive", "timeout=5"),
            ("Proxy_Connection", "keep-alive"),
            ("X__User__Id", "mallory"),
            ("x-user--id", "mallory"),
            ("X_Token_Id", "1"),
            ("x-tokengate_signature", "t=1,v1=00"),
            ("X-Keep-Alive-Id", "kept"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{r}");
    let seen = b.secret.last();
    // Names as a normalising framework reads them: case folded, `_` as `-`, runs of `-` as one.
    let norm = |k: &str| {
        let mut out = String::new();
        for c in k
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c == '_' { '-' } else { c })
        {
            if !(c == '-' && out.ends_with('-')) {
                out.push(c);
            }
        }
        out
    };
    let values = |name: &str| -> Vec<&str> {
        seen.headers
            .iter()
            .filter(|(k, _)| norm(k) == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for gone in ["keep-alive", "proxy-connection", "x-tokengate-signature"] {
        assert!(values(gone).is_empty(), "{gone}: {:?}", seen.headers);
    }
    assert_eq!(values("x-user-id"), ["alice"], "{:?}", seen.headers);
    assert_eq!(values("x-token-id").len(), 1, "{:?}", seen.headers);
    assert_eq!(
        seen.header_values("x-keep-alive-id"),
        ["kept"],
        "an unrelated name stays"
    );
}

#[test]
fn te_and_cl_mutations_never_let_a_second_request_through() {
    let b = bed();
    let auth = bearer(&b.token);
    let smuggled = "GET /secret/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let head = |fields: &str| {
        format!("POST /secret/a HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{fields}\r\n")
    };
    let corpus = [
        head("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n") + "0\r\n\r\n" + smuggled,
        head("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n" + smuggled,
        head("Transfer-Encoding: xchunked\r\n") + "0\r\n\r\n" + smuggled,
        head("Transfer-Encoding: chunked, identity\r\n") + "0\r\n\r\n" + smuggled,
        head("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n" + smuggled,
        head("Transfer-Encoding: identity\r\nContent-Length: 5\r\n") + "0\r\n\r\n" + smuggled,
        head("Transfer-Encoding : chunked\r\n") + "0\r\n\r\n" + smuggled,
        head("Transfer-Encoding:\x0bchunked\r\n") + "0\r\n\r\n" + smuggled,
        head("Transfer-Encoding\r\n : chunked\r\n") + "0\r\n\r\n" + smuggled,
        head("X: y\r\n Transfer-Encoding: chunked\r\n") + "0\r\n\r\n" + smuggled,
        head("Content-Length: +5\r\n") + "0\r\n\r\n" + smuggled,
        head("Content-Length: 5, 6\r\n") + "0\r\n\r\n" + smuggled,
        head("Content-Length: 5\r\nContent-Length: 6\r\n") + "0\r\n\r\n" + smuggled,
        head("Content-Length: 0x5\r\n") + "0\r\n\r\n" + smuggled,
        head("Content-Length: 5 5\r\n") + "0\r\n\r\n" + smuggled,
        head("Transfer-Encoding: chunked\r\n") + "5;\n\r\nabcde\r\n0\r\n\r\n" + smuggled,
        head("Transfer-Encoding: chunked\r\n") + "5\nabcde\r\n0\r\n\r\n" + smuggled,
        head("Transfer-Encoding: chunked\r\n") + "0x5\r\nabcde\r\n0\r\n\r\n" + smuggled,
        head("Transfer-Encoding: chunked\r\n") + "5\r\nabcdeXX\r\n0\r\n\r\n" + smuggled,
        format!("POST /secret/a HTTP/1.0\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /secret/a HTTP/1.1\nHost: x\nAuthorization: {auth}\nContent-Length: 0\nTransfer-Encoding: chunked\n\n0\r\n\r\n{smuggled}"),
    ];
    for (i, bytes) in corpus.iter().enumerate() {
        let answers = b.raw(bytes.as_bytes());
        assert!(
            !answers.starts_with("200"),
            "case {i} {bytes:?} was forwarded: {answers}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let seen = b.seen();
    assert!(
        seen.iter().all(|p| p == "/secret/warm"),
        "an upstream saw {seen:?}"
    );
}

#[test]
fn gateway_answers_to_head_carry_no_body_on_a_kept_connection() {
    let slow = Upstream::with_delay("slow", Duration::from_secs(3));
    let refused = refused_addr();
    let secret = Upstream::start("secret");
    let mut gw = GatewayBuilder::new()
        .route("secret", "/secret", secret.addr())
        .route("down", "/down", refused)
        .route_with(
            "slow",
            "/slow",
            slow.addr(),
            &[("read_timeout", "\"300ms\"")],
        )
        .build();
    let (_, token) = gw.create_token("alice", "head");
    gw.start();
    let auth = bearer(&token);
    let mut c = gw.connect();
    let none: Vec<(&str, &str)> = Vec::new();
    let cases = [
        ("/secret/x", none, 401),
        ("/secret/x", vec![("Authorization", "Bearer tg_nope")], 401),
        ("/secret/../x", vec![("Authorization", auth.as_str())], 400),
        ("/nowhere", vec![("Authorization", auth.as_str())], 404),
        ("/down/x", vec![("Authorization", auth.as_str())], 502),
        ("/slow/x", vec![("Authorization", auth.as_str())], 504),
    ];
    for (target, headers, want) in &cases {
        let r = c
            .roundtrip(&keepalive_request("HEAD", target, headers, b""))
            .unwrap_or_else(|e| panic!("HEAD {target}: {e}"));
        assert_eq!(r.status, *want, "HEAD {target}: {r}");
        assert!(r.body.is_empty());
        assert!(r.header("content-length").is_some(), "HEAD {target}: {r}");
        // The next answer on the same connection is read whole and is the right one: no stray body
        // bytes came first.
        let next = c
            .roundtrip(&keepalive_request(
                "GET",
                "/secret/next",
                &[("Authorization", &auth)],
                b"",
            ))
            .unwrap_or_else(|e| panic!("GET after HEAD {target}: {e}"));
        assert_eq!(next.status, 200, "after HEAD {target}: {next}");
        assert_eq!(next.json()["uri"], "/secret/next");
    }
}

#[test]
fn paths_an_upstream_may_resolve_into_another_route_are_refused() {
    let b = bed();
    let before = b.hits();
    for path in [
        "/public/..;/secret",
        "/public/..;a/secret",
        "/public/.;/secret",
        "/public/%252e%252e/secret",
        "/public/%252E%252E/secret",
        "/public/%25%32%65%25%32%65/secret",
        "/public/%252f..%252fsecret",
        "/public/..%00/secret",
        "/public/x%00",
        "/public/%",
        "/public/%zz/secret",
    ] {
        let r = b.gw.request("GET", path, &[], b"");
        assert_eq!(r.status, 400, "{path}: {r}");
        assert_eq!(r.json_error(), "invalid_request", "{path}");
    }
    // A path parameter on the protected prefix stays on the protected route: 401 without a token,
    // never forwarded by the public catch-all.
    let r = b.gw.request("GET", "/secret;jsessionid=1/data", &[], b"");
    assert_eq!(r.status, 401, "{r}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.hits(), before, "seen: {:?}", b.seen());
    let r = b.gw.get_with_token("/secret;v=2/data", &b.token);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(b.secret.last().uri, "/secret;v=2/data");
}
