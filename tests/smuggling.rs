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

// ---------------------------------------------------------------------------------------------------------
// Issue 23: look-alike names in every spelling, proxy fields, through every door
// ---------------------------------------------------------------------------------------------------------

/// A name as the most lenient frameworks read it: lower case, letters and digits only.
fn folded(name: &str) -> String {
    name.bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect()
}

/// The values of every recorded field whose name folds like `name`.
fn folded_values<'a>(seen: &'a Recorded, name: &str) -> Vec<&'a str> {
    let want = folded(name);
    seen.headers
        .iter()
        .filter(|(k, _)| folded(k) == want)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The ways a request comes in; each must get the same field treatment.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Door {
    /// HTTP/1.1, origin form, bearer route.
    Http11,
    /// HTTP/1.0 without Host.
    Http10,
    /// An absolute-form target naming another host.
    AbsoluteForm,
    /// A POST with a chunked body.
    ChunkedPost,
    /// A WebSocket opening handshake on a `websocket = true` route.
    WebSocket,
    /// The public route (`auth = "none"`), no token.
    Public,
    /// The second request on a kept-alive connection.
    Pipelined,
}

impl Door {
    const ALL: [Door; 7] = [
        Door::Http11,
        Door::Http10,
        Door::AbsoluteForm,
        Door::ChunkedPost,
        Door::WebSocket,
        Door::Public,
        Door::Pipelined,
    ];

    /// The raw request through this door with `fields` added; the upstream sees `path`.
    fn request(self, auth: &str, fields: &[(&str, &str)]) -> (Vec<u8>, &'static str) {
        let fields: String = fields
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let auth = format!("Authorization: {auth}\r\n");
        let (text, path) = match self {
            Door::Http11 => (
                format!("GET /secret/d11?q=1 HTTP/1.1\r\nHost: x\r\n{auth}{fields}Connection: close\r\n\r\n"),
                "/secret/d11?q=1",
            ),
            Door::Http10 => (
                format!("GET /secret/d10 HTTP/1.0\r\n{auth}{fields}\r\n"),
                "/secret/d10",
            ),
            Door::AbsoluteForm => (
                format!("GET http://evil.example/secret/abs HTTP/1.1\r\nHost: evil.example\r\n{auth}{fields}Connection: close\r\n\r\n"),
                "/secret/abs",
            ),
            Door::ChunkedPost => (
                format!("POST /secret/post HTTP/1.1\r\nHost: x\r\n{auth}{fields}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
                "/secret/post",
            ),
            Door::WebSocket => (
                format!("GET /live/ws HTTP/1.1\r\nHost: x\r\n{auth}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{fields}\r\n"),
                "/live/ws",
            ),
            Door::Public => (
                format!("GET /pub/x HTTP/1.1\r\nHost: x\r\n{fields}Connection: close\r\n\r\n"),
                "/pub/x",
            ),
            Door::Pipelined => (
                format!("GET /secret/first HTTP/1.1\r\nHost: x\r\n{auth}\r\nGET /secret/second HTTP/1.1\r\nHost: x\r\n{auth}{fields}Connection: close\r\n\r\n"),
                "/secret/second",
            ),
        };
        (text.into_bytes(), path)
    }

    fn authenticated(self) -> bool {
        self != Door::Public
    }
}

/// A gateway (TLS on too) with a signed bearer route `/secret` that forwards scopes, a WebSocket route
/// `/live` alike, and a public route `/pub`, all on one recording upstream; a token for alice.
struct Doors {
    gw: Gateway,
    up: Upstream,
    auth: String,
    token_id: i64,
}

fn doors(trusted: bool) -> Doors {
    let up = Upstream::start("doors");
    let secret = "\"doors-sign-secret-0123456789abcdefghij\"";
    let keys = [("sign_secret", secret), ("forward_scopes", "true")];
    let mut b = GatewayBuilder::new()
        .tls()
        .route_with("secret", "/secret", up.addr(), &keys)
        .route_with(
            "live",
            "/live",
            up.addr(),
            &[keys[0], keys[1], ("websocket", "true")],
        )
        .route_with("pub", "/pub", up.addr(), &[("auth", "\"none\"")]);
    if trusted {
        b = b.gateway("trusted_proxies", "[\"127.0.0.1\"]");
    }
    let mut gw = b.build();
    let (token_id, token) = gw.create_token_with("alice", "doors", &["--scope", "read"]);
    gw.start();
    gw.wait_ok("/secret/warm", &token);
    Doors {
        gw,
        up,
        auth: bearer(&token),
        token_id,
    }
}

impl Doors {
    /// Sends the door's request with `fields` over `wire`; returns the (last) answer and, when the
    /// upstream was reached, what it recorded for the door's path.
    fn send(
        &self,
        wire: Wire,
        door: Door,
        fields: &[(&str, &str)],
    ) -> (RawResponse, Option<Recorded>) {
        let (bytes, path) = door.request(&self.auth, fields);
        let mut c = match wire {
            Wire::Plain => Conn::open(self.gw.addr()),
            Wire::Tls => self.gw.tls_conn(&common::tls::ClientOptions::default()),
            Wire::H2 => unreachable!("the smuggling doors are HTTP/1.1 framing"),
        };
        c.set_read_timeout(Duration::from_secs(10));
        c.send(&bytes).expect("send");
        let mut r = c.read_response().expect("an answer");
        if door == Door::Pipelined && r.status == 200 {
            r = c.read_response().expect("the second answer");
        }
        let seen = (r.status == 200).then(|| {
            assert!(
                poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
                    self.up.requests().iter().any(|s| s.uri == path)
                }),
                "{door:?}: the upstream never finished {path}"
            );
            self.up
                .requests()
                .into_iter()
                .rfind(|s| s.uri == path)
                .unwrap()
        });
        (r, seen)
    }
}

/// Forged identity, request id and hop-by-hop fields in the spellings of an external smuggling corpus
/// (every `tchar` separator, none, a trailing one, a leading one) and a few more.
const FORGED_IDENTITY: [(&str, &str); 27] = [
    ("X.User.Id", "FORGED-1"),
    ("XUserId", "FORGED-2"),
    ("X-User-Id-", "FORGED-3"),
    ("x_user_id", "FORGED-4"),
    ("-x-user-id", "FORGED-5"),
    ("x~user|id", "FORGED-6"),
    ("X!User#Id$", "FORGED-7"),
    ("x%user&id'", "FORGED-8"),
    ("x*user+id^", "FORGED-9"),
    ("x`user.id", "FORGED-10"),
    ("X-USER-ID", "FORGED-11"),
    ("X.Token.Id", "FORGED-12"),
    ("XTokenId", "FORGED-13"),
    ("X_Token_Scopes", "FORGED-admin"),
    ("x.token.scopes", "FORGED-admin"),
    ("XTokenRoles", "FORGED-ops"),
    ("x-token-roles-", "FORGED-ops"),
    ("X.Tokengate.Signature", "t=1,v2=FORGED"),
    ("XTokengateSignature", "t=1,v2=FORGED"),
    ("X.Request.Id", "FORGED-rid"),
    ("XRequestId", "FORGED-rid"),
    ("Keep.Alive", "FORGED-ka"),
    ("ProxyConnection", "FORGED-pc"),
    ("T.E", "FORGED-te"),
    ("Trailer_", "FORGED-trailer"),
    ("Authori.zation", "Basic FORGED"),
    ("Ex.pect", "FORGED-100-continue"),
];

#[test]
fn identity_hop_by_hop_and_credential_look_alikes_never_reach_an_upstream_through_any_door() {
    let d = doors(false);
    let mut fields = FORGED_IDENTITY.to_vec();
    // Names that only resemble reserved ones are the client's own and pass.
    fields.extend([
        ("X-Keep-Alive-Id", "kept-1"),
        ("X-User-Ident", "kept-2"),
        ("X-Authorization-Hint", "kept-3"),
    ]);
    // A client naming the identity fields as hop-by-hop does not make the gateway's own go away.
    fields.push((
        "Connection",
        "x-user-id, X-Token-Scopes, x-tokengate-signature, X-Forwarded-For",
    ));
    for wire in [Wire::Plain, Wire::Tls] {
        for door in Door::ALL {
            let (r, seen) = d.send(wire, door, &fields);
            assert_eq!(r.status, 200, "{wire:?} {door:?}: {r}");
            let seen = seen.unwrap();
            let what = format!("{wire:?} {door:?}: {:?}", seen.headers);
            assert!(
                seen.headers.iter().all(|(_, v)| !v.contains("FORGED")),
                "a forged field reached the upstream: {what}"
            );
            for (k, v) in [
                ("X-Keep-Alive-Id", "kept-1"),
                ("X-User-Ident", "kept-2"),
                ("X-Authorization-Hint", "kept-3"),
            ] {
                assert_eq!(seen.header_values(k), [v], "{what}");
            }
            let rid = folded_values(&seen, "x-request-id");
            assert!(rid.len() == 1 && rid[0].len() == 32, "{what}");
            assert!(folded_values(&seen, "authorization").is_empty(), "{what}");
            if door.authenticated() {
                assert_eq!(folded_values(&seen, "x-user-id"), ["alice"], "{what}");
                assert_eq!(
                    folded_values(&seen, "x-token-id"),
                    [d.token_id.to_string().as_str()],
                    "{what}"
                );
                assert_eq!(folded_values(&seen, "x-token-scopes"), ["read"], "{what}");
                assert!(folded_values(&seen, "x-token-roles").is_empty(), "{what}");
                let sig = folded_values(&seen, "x-tokengate-signature");
                assert!(sig.len() == 1 && sig[0].contains(",v2="), "{what}");
            } else {
                for name in [
                    "x-user-id",
                    "x-token-id",
                    "x-token-scopes",
                    "x-token-roles",
                    "x-tokengate-signature",
                ] {
                    assert!(folded_values(&seen, name).is_empty(), "{name}: {what}");
                }
            }
        }
    }
    // A space inside a name is not HTTP: refused before anything else.
    let r = d.gw.raw(
        format!(
            "GET /secret/x HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nX User Id: FORGED\r\n\r\n",
            d.auth
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 400, "{r}");
}

#[test]
fn framing_look_alikes_in_any_spelling_are_refused_through_any_door() {
    let d = doors(false);
    let before = d.up.hits();
    for name in [
        "Content.Length",
        "ContentLength",
        "content-length-",
        "-Content-Length",
        "Content~Length",
        "CONTENT|LENGTH",
        "Transfer.Encoding",
        "TransferEncoding",
        "transfer-encoding-",
        "Transfer!Encoding",
        "transfer_encoding",
    ] {
        for wire in [Wire::Plain, Wire::Tls] {
            for door in Door::ALL {
                let (r, _) = d.send(wire, door, &[(name, "0")]);
                let what = format!("{name} {wire:?} {door:?}: {r}");
                assert_eq!(r.status, 400, "{what}");
                assert_eq!(r.json_error(), "invalid_request", "{what}");
                assert_eq!(r.header("connection"), Some("close"), "{what}");
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    // The pipelined door's first request is answered before its second head is read.
    let firsts =
        d.up.requests()
            .iter()
            .filter(|s| s.uri == "/secret/first")
            .count();
    assert_eq!(
        d.up.hits(),
        before + firsts,
        "{:?}",
        d.up.requests().iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
}

/// Proxy fields: canonical spellings (kept from a trusted proxy) and look-alikes (never kept).
const PROXY_CANONICAL: [&str; 16] = [
    "Forwarded",
    "X-Real-IP",
    "X-Forwarded-Host",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
    "X-Forwarded-Ssl",
    "X-Forwarded-Uri",
    "X-Forwarded-User",
    "X-Original-URL",
    "X-Rewrite-URL",
    "True-Client-IP",
    "X-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Cluster-Client-IP",
];
const PROXY_LOOKALIKES: [&str; 16] = [
    "x_real_ip",
    "X.Real.IP",
    "XRealIP",
    "x-real-ip-",
    "forwarded_",
    "Forwarded.",
    "X_Forwarded_Host",
    "x.forwarded.host",
    "XForwardedHost",
    "X-Forwarded--Port",
    "x-forwarded_prefix",
    "X_Forwarded_For",
    "X-Forwarded-For-",
    "x.forwarded.proto",
    "X_Original_URL",
    "True.Client.IP",
];

#[test]
fn proxy_fields_reach_an_upstream_only_from_a_trusted_proxy_and_only_spelled_plainly() {
    // From an untrusted peer: none of them, in any spelling, through any door, on either listener;
    // X-Forwarded-For and -Proto are the gateway's own.
    let d = doors(false);
    let mut fields: Vec<(&str, &str)> = PROXY_CANONICAL.iter().map(|k| (*k, "FORGED")).collect();
    fields.extend(PROXY_LOOKALIKES.iter().map(|k| (*k, "FORGED")));
    fields.extend([
        ("X-Forwarded-For", "203.0.113.9 FORGED"),
        ("X-Forwarded-Proto", "FORGED"),
    ]);
    for wire in [Wire::Plain, Wire::Tls] {
        for door in Door::ALL {
            let (r, seen) = d.send(wire, door, &fields);
            assert_eq!(r.status, 200, "{wire:?} {door:?}: {r}");
            let seen = seen.unwrap();
            let what = format!("{wire:?} {door:?}: {:?}", seen.headers);
            assert!(
                seen.headers.iter().all(|(_, v)| !v.contains("FORGED")),
                "a client's proxy field reached the upstream: {what}"
            );
            assert_eq!(
                folded_values(&seen, "x-forwarded-for"),
                ["127.0.0.1"],
                "{what}"
            );
            let proto = if wire == Wire::Tls { "https" } else { "http" };
            assert_eq!(folded_values(&seen, "x-forwarded-proto"), [proto], "{what}");
        }
    }

    // From a trusted proxy: its plainly spelled fields as sent (the XFF chain with the peer appended),
    // look-alikes never.
    let d = doors(true);
    let mut fields: Vec<(&str, String)> = PROXY_CANONICAL
        .iter()
        .map(|k| (*k, format!("trusted-{}", folded(k))))
        .collect();
    fields.extend(PROXY_LOOKALIKES.iter().map(|k| (*k, "FORGED".to_owned())));
    fields.extend([
        ("X-Forwarded-For", "203.0.113.9".to_owned()),
        ("X-Forwarded-Proto", "https".to_owned()),
    ]);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for door in Door::ALL {
        let (r, seen) = d.send(Wire::Plain, door, &fields);
        assert_eq!(r.status, 200, "{door:?}: {r}");
        let seen = seen.unwrap();
        let what = format!("{door:?}: {:?}", seen.headers);
        assert!(
            seen.headers.iter().all(|(_, v)| !v.contains("FORGED")),
            "a look-alike reached the upstream: {what}"
        );
        for k in PROXY_CANONICAL {
            let want = format!("trusted-{}", folded(k));
            assert_eq!(seen.header_values(k), [want.as_str()], "{k}: {what}");
        }
        assert_eq!(
            folded_values(&seen, "x-forwarded-for"),
            ["203.0.113.9, 127.0.0.1"],
            "{what}"
        );
        assert_eq!(
            folded_values(&seen, "x-forwarded-proto"),
            ["https"],
            "{what}"
        );
    }
}

#[test]
fn identity_and_framing_fields_in_a_chunked_trailer_never_reach_an_upstream() {
    let d = doors(false);
    for trailer in [
        "X-User-Id: FORGED\r\n",
        "x.user.id: FORGED\r\nX-Token-Scopes: FORGED\r\n",
        "Content-Length: 99\r\nTransfer-Encoding: FORGED\r\n",
        "X-Forwarded-For: FORGED\r\nForwarded: for=FORGED\r\n",
    ] {
        let req = format!(
            "POST /secret/trailer HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\nTrailer: X-User-Id\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n{trailer}\r\n",
            d.auth
        );
        // The recording upstream does see trailers sent to it directly.
        let r = raw_http(d.up.addr(), req.as_bytes());
        assert_eq!(r.status, 200, "{r}");
        assert!(!d.up.last().trailers.is_empty(), "{trailer:?}");
        let r = d.gw.raw(req.as_bytes());
        assert_eq!(r.status, 200, "{trailer:?}: {r}");
        let seen = d.up.last();
        assert_eq!((seen.uri.as_str(), seen.body_len), ("/secret/trailer", 5));
        assert!(seen.trailers.is_empty(), "{trailer:?}: {:?}", seen.trailers);
        assert!(
            seen.headers.iter().all(|(_, v)| !v.contains("FORGED")),
            "{:?}",
            seen.headers
        );
        assert_eq!(folded_values(&seen, "x-user-id"), ["alice"]);
    }
}
