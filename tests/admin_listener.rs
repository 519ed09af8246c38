//! The admin listener as an attacker meets it, over real sockets against the real binary: guessing
//! tokens is throttled per address as on the gateway's listeners (429 with `Retry-After`), while a valid
//! admin token from the same address keeps working.

mod common;

use common::*;

fn admin_call(gw: &Gateway, target: &str, token: Option<&str>) -> RawResponse {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    raw_http(
        gw.admin_addr(),
        &build_request("GET", target, &headers, b""),
    )
}

#[test]
fn guessing_admin_tokens_is_throttled_per_address_but_a_valid_token_never_is() {
    let up = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .section("throttle", "max_failures", "5")
        .section("throttle", "window", "\"60s\"")
        .route("api", "/api", up.addr())
        .start();
    let (_, admin) = gw.create_token_with("ops", "ops", &["--scope", "admin"]);
    let (_, device) = gw.create_token_with("alice", "scale", &[]);
    gw.wait_ok("/api/warm", &device);
    // Missing credentials and tokens without the scope are not guesses.
    for _ in 0..10 {
        assert_eq!(admin_call(&gw, "/api/tokens", None).status, 401);
        assert_eq!(admin_call(&gw, "/api/tokens", Some(&device)).status, 403);
    }
    for i in 0..5 {
        let guess = format!("tg_guess{i}");
        let r = admin_call(&gw, "/api/tokens", Some(&guess));
        assert_eq!(r.status, 401, "guess {}: {r}", i + 1);
    }
    for (i, target) in ["/api/tokens", "/api/whoami", "/api/routes", "/api/tokens/1"]
        .iter()
        .enumerate()
    {
        let guess = format!("tg_more{i}");
        let r = admin_call(&gw, target, Some(&guess));
        assert_eq!(r.status, 429, "{target}: {r}");
        assert_eq!(r.json_error(), "too_many_requests");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        // The operator's valid token from the same address is served meanwhile.
        let ok = admin_call(&gw, "/api/tokens", Some(&admin));
        assert_eq!(ok.status, 200, "valid admin token throttled: {ok}");
    }
    // Still no secret in any answer.
    let r = admin_call(&gw, "/api/tokens", Some("tg_more9"));
    assert!(!r.text().contains("tg_more9"), "{r}");
}

#[test]
fn self_service_writes_are_budgeted_per_user_and_tokens_capped_per_user() {
    let up = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .section("admin", "self_service_rate", "\"5/m\"")
        .section("admin", "max_tokens_per_user", "3")
        .route("api", "/api", up.addr())
        .start();
    let (_, admin) = gw.create_token_with("ops", "ops", &["--scope", "admin"]);
    let (_, alice) =
        gw.create_token_with("alice", "self", &["--scope", "tokens:self", "--scope", "x"]);
    let (_, bob) = gw.create_token_with("bob", "self", &["--scope", "tokens:self", "--scope", "x"]);
    gw.wait_status("/api/warm", &bob, 200);
    let create = |token: &str| {
        let auth = bearer(token);
        let body = br#"{"label": "scale", "scopes": ["x"]}"#;
        raw_http(
            gw.admin_addr(),
            &build_request(
                "POST",
                "/api/tokens",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                body,
            ),
        )
    };
    // alice holds one active token (her self token): two more, then the cap.
    assert_eq!(create(&alice).status, 201);
    assert_eq!(create(&alice).status, 201);
    let r = create(&alice);
    assert_eq!((r.status, r.json_error()), (403, "forbidden".into()), "{r}");
    assert!(r.text().contains("max_tokens_per_user"), "{r}");
    // Two more writes fit the burst of five; the sixth is 429 with Retry-After.
    assert_eq!(create(&alice).status, 403);
    assert_eq!(create(&alice).status, 403);
    let r = create(&alice);
    assert_eq!(
        (r.status, r.json_error()),
        (429, "too_many_requests".into()),
        "{r}"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Reads are not budgeted; another user has its own budget; an admin has none.
    let auth = bearer(&alice);
    let list = raw_http(
        gw.admin_addr(),
        &build_request("GET", "/api/tokens", &[("Authorization", &auth)], b""),
    );
    assert_eq!(list.status, 200);
    assert_eq!(list.json().as_array().unwrap().len(), 3);
    assert_eq!(create(&bob).status, 201);
    for _ in 0..8 {
        let auth = bearer(&admin);
        let body = br#"{"user": "alice", "label": "ops-made", "scopes": ["x"]}"#;
        let r = raw_http(
            gw.admin_addr(),
            &build_request(
                "POST",
                "/api/tokens",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                body,
            ),
        );
        assert_eq!(r.status, 201, "{r}");
    }
}
