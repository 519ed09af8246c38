//! One spelling per route: a percent-encoded unreserved character (RFC 3986 §2.3) or `;` in a path is the
//! same path to an upstream that decodes it (§6.2.2.2), so it must never let a request onto another
//! route than the decoded path's — over real sockets against the real binary, with one upstream per route.

mod common;

use common::*;

/// Routes `/api` (scope `telemetry:write`), `/api/admin` (scope `ops:admin`), `/secret` (any token) and a
/// public catch-all `/`, each on its own upstream; a telemetry token for alice.
struct Bed {
    gw: Gateway,
    api: Upstream,
    admin: Upstream,
    secret: Upstream,
    public: Upstream,
    token: String,
}

fn bed() -> Bed {
    let (api, admin, secret, public) = (
        Upstream::start("api"),
        Upstream::start("admin"),
        Upstream::start("secret"),
        Upstream::start("public"),
    );
    let mut gw = GatewayBuilder::new()
        .route_with(
            "api",
            "/api",
            api.addr(),
            &[("required_scope", "\"telemetry:write\"")],
        )
        .route_with(
            "admin",
            "/api/admin",
            admin.addr(),
            &[("required_scope", "\"ops:admin\"")],
        )
        .route("secret", "/secret", secret.addr())
        .route_with("public", "/", public.addr(), &[("auth", "\"none\"")])
        .build();
    let (_, token) = gw.create_token_with("alice", "device", &["--scope", "telemetry:write"]);
    gw.start();
    gw.wait_ok("/api/warm", &token);
    Bed {
        gw,
        api,
        admin,
        secret,
        public,
        token,
    }
}

/// Every way of writing `prefix` with one of its characters percent-encoded, in both hex cases.
fn encoded_spellings(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, c) in prefix.char_indices().filter(|(_, c)| *c != '/') {
        for hex in [format!("%{:02X}", c as u8), format!("%{:02x}", c as u8)] {
            out.push(format!("{}{hex}{}", &prefix[..i], &prefix[i + 1..]));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn an_encoded_letter_never_moves_a_request_onto_a_less_scoped_route() {
    let b = bed();
    // Before: the telemetry token is refused on /api/admin itself.
    let r = b.gw.get_with_token("/api/admin/users", &b.token);
    assert_eq!(r.status, 403, "{r}");
    let before = (b.api.hits(), b.admin.hits(), b.public.hits());
    let spellings = encoded_spellings("/api/admin");
    assert_eq!(spellings.len(), 10, "{spellings:?}");
    for p in &spellings {
        let r = b.gw.get_with_token(&format!("{p}/users"), &b.token);
        assert_eq!(r.status, 400, "{p}: {r}");
        assert_eq!(r.json_error(), "invalid_request", "{p}");
    }
    // `;` encoded: `/api%3Badmin` must not be routed as something an upstream reads otherwise.
    for p in [
        "/api/admin%3Bx/users",
        "/api%3B/admin/users",
        "/api/admin%3b",
    ] {
        let r = b.gw.get_with_token(p, &b.token);
        assert_eq!(r.status, 400, "{p}: {r}");
    }
    // Double encodings, which a server that decodes twice reads as the letter.
    for p in ["/api/%2561dmin/users", "/api/%25%36%31dmin/users"] {
        let r = b.gw.get_with_token(p, &b.token);
        assert_eq!(r.status, 400, "{p}: {r}");
    }
    assert_eq!(
        (b.api.hits(), b.admin.hits(), b.public.hits()),
        before,
        "an encoded spelling reached an upstream: api {:?}",
        b.api.requests().iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    // The plain spellings still route as before.
    assert_eq!(b.gw.get_with_token("/api/data", &b.token).status, 200);
    assert_eq!(b.api.last().uri, "/api/data");
    // Escapes of other characters pass unchanged.
    let r = b.gw.get_with_token("/api/a%20b%3Fc%E2%82%AC", &b.token);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(b.api.last().uri, "/api/a%20b%3Fc%E2%82%AC");
}

#[test]
fn an_encoded_letter_never_skips_authentication_on_a_public_catch_all() {
    let b = bed();
    let before = (b.secret.hits(), b.public.hits());
    for p in encoded_spellings("/secret") {
        // Without any credential: the public route must not take it.
        let r = b.gw.request("GET", &format!("{p}/x"), &[], b"");
        assert_eq!(r.status, 400, "{p}: {r}");
        // With a valid token too: 400, not the secret route's upstream under another name.
        let r = b.gw.get_with_token(&format!("{p}/x"), &b.token);
        assert_eq!(r.status, 400, "{p}: {r}");
    }
    assert_eq!((b.secret.hits(), b.public.hits()), before);
    // Without a token the plain spelling is refused, as it always was.
    assert_eq!(b.gw.request("GET", "/secret/x", &[], b"").status, 401);
    assert_eq!(b.gw.request("GET", "/other", &[], b"").status, 200);
    assert_eq!(b.public.last().uri, "/other");
}
