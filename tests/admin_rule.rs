//! The admin rule over real sockets: after a self-service caller's write (a `tokens:self` token, or the
//! platform's account header), nothing exists that the caller could not have created itself. Every verb
//! (rotate, each PATCH field, DELETE) against every kind of wider sibling (admin, tokens:self, full
//! access, later expiry, looser limits), from both kinds of caller: 403 and the store unchanged (tokens
//! and their event logs, compared through the CLI); the same verbs on a narrower sibling still work. And
//! account-mode writes are refused cross-site (403) and without a JSON content type (415).

mod common;

use common::*;
use serde_json::{json, Value};

fn gateway(up: &Upstream) -> GatewayBuilder {
    GatewayBuilder::new()
        // These tests write far more than a person would: no write budget in the way.
        .section("admin", "self_service_rate", "\"1000000/s\"")
        .section("roles", "device", "[\"telemetry:write\"]")
        .section("roles", "ops", "[\"admin\"]")
        .section("admin", "trusted_user_header", "\"x-forwarded-user\"")
        .section("admin", "trusted_proxies", "[\"127.0.0.1\"]")
        .route_with(
            "iot",
            "/iot",
            up.addr(),
            &[("required_scope", "\"telemetry:write\"")],
        )
}

/// Who calls: a bearer token, or the account header (from the trusted 127.0.0.1), with more headers.
#[derive(Clone, Copy)]
enum As<'a> {
    Token(&'a str),
    Account(&'a str),
}

/// One admin API call with a JSON body (if any; then also `Content-Type: application/json`).
fn call(
    gw: &Gateway,
    who: As<'_>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> RawResponse {
    let auth;
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    match who {
        As::Token(t) => {
            auth = bearer(t);
            h.push(("Authorization", &auth));
        }
        As::Account(user) => h.push(("X-Forwarded-User", user)),
    }
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    if body.is_some() {
        h.push(("Content-Type", "application/json"));
    }
    raw_http(gw.admin_addr(), &build_request(method, target, &h, &bytes))
}

/// The store's truth: every token (without its usage: a usage flush may land between two looks, and uses
/// are not changes), and every token's event log.
fn store_state(gw: &Gateway) -> Value {
    let mut list = gw.cli_json(&["token", "list", "--json"]);
    for t in list.as_array_mut().unwrap() {
        let t = t.as_object_mut().unwrap();
        t.remove("use_count");
        t.remove("last_used_at");
    }
    let events: Vec<Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let id = t["id"].to_string();
            gw.cli_json(&["token", "show", &id, "--json"])["events"].clone()
        })
        .collect();
    json!({ "tokens": list, "events": events })
}

/// Every write a self-service caller could try on token `id`: (method, path, body).
fn verbs(id: i64) -> Vec<(&'static str, String, Option<Value>)> {
    let one = format!("/api/tokens/{id}");
    let rotate = format!("/api/tokens/{id}/rotate");
    vec![
        ("POST", rotate.clone(), Some(json!({}))),
        ("POST", rotate, Some(json!({"grace": "3650d"}))),
        ("PATCH", one.clone(), Some(json!({"label": "mine now"}))),
        ("PATCH", one.clone(), Some(json!({"expires_at": null}))),
        ("PATCH", one.clone(), Some(json!({"expires_in": "3650d"}))),
        ("PATCH", one.clone(), Some(json!({"rate_limit": null}))),
        (
            "PATCH",
            one.clone(),
            Some(json!({"rate_limit": "1000000/s"})),
        ),
        ("PATCH", one.clone(), Some(json!({"quota": null}))),
        ("DELETE", one, None),
    ]
}

fn assert_refused(r: &RawResponse, what: &str) {
    assert_eq!(r.status, 403, "{what}: {r}");
    assert_eq!(r.json_error(), "forbidden", "{what}");
    assert!(
        !r.text().contains("tg_"),
        "{what}: a secret in a refusal: {r}"
    );
}

#[test]
fn a_self_token_never_acts_on_a_token_wider_than_itself() {
    let up = Upstream::start("api");
    let gw = gateway(&up).start();
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        [extra, &["--rate-limit", "10/s", "--quota", "1000/day"][..]].concat()
    }
    let (admin_id, admin) = gw.create_token_with("alice", "alice admin", &["--scope", "admin"]);
    let (self_id, me) = gw.create_token_with(
        "alice",
        "alice self",
        &with(&[
            "--scope",
            "tokens:self",
            "--scope",
            "telemetry:write",
            "--expires-in",
            "1h",
        ]),
    );
    let mut wider = vec![
        ("admin", admin_id),
        (
            "ops role",
            gw.create_token_with(
                "alice",
                "ops",
                &with(&["--role", "ops", "--expires-in", "30m"]),
            )
            .0,
        ),
        (
            "tokens:self",
            gw.create_token_with(
                "alice",
                "another self",
                &with(&[
                    "--scope",
                    "tokens:self",
                    "--scope",
                    "telemetry:write",
                    "--expires-in",
                    "30m",
                ]),
            )
            .0,
        ),
        (
            "full access",
            gw.create_token_with("alice", "full", &with(&["--expires-in", "30m"]))
                .0,
        ),
        (
            "later expiry",
            gw.create_token_with(
                "alice",
                "later",
                &with(&["--scope", "telemetry:write", "--expires-in", "2h"]),
            )
            .0,
        ),
        (
            "no expiry",
            gw.create_token_with("alice", "permanent", &with(&["--scope", "telemetry:write"]))
                .0,
        ),
        (
            "another scope",
            gw.create_token_with(
                "alice",
                "billing",
                &with(&["--scope", "billing:read", "--expires-in", "30m"]),
            )
            .0,
        ),
    ];
    wider.push((
        "looser rate",
        gw.create_token_with(
            "alice",
            "fast",
            &[
                "--scope",
                "telemetry:write",
                "--expires-in",
                "30m",
                "--rate-limit",
                "100/s",
                "--quota",
                "1000/day",
            ],
        )
        .0,
    ));
    wider.push((
        "no quota",
        gw.create_token_with(
            "alice",
            "unmetered",
            &[
                "--scope",
                "telemetry:write",
                "--expires-in",
                "30m",
                "--rate-limit",
                "10/s",
            ],
        )
        .0,
    ));
    let (narrow_id, _) = gw.create_token_with(
        "alice",
        "scale",
        &[
            "--role",
            "device",
            "--expires-in",
            "30m",
            "--rate-limit",
            "5/s",
            "--quota",
            "100/day",
        ],
    );
    gw.wait_ok("/iot/warm", &me);
    let who = As::Token(&me);

    let before = store_state(&gw);
    for (kind, id) in &wider {
        for (method, path, body) in verbs(*id) {
            let r = call(&gw, who, method, &path, &[], body.as_ref());
            assert_refused(
                &r,
                &format!("{method} {path} {body:?} on the {kind} sibling"),
            );
        }
    }
    // The caller lifting or loosening its own limits and expiry; a grace outliving it.
    for body in [
        json!({"quota": null}),
        json!({"rate_limit": null}),
        json!({"quota": null, "rate_limit": null}),
        json!({"rate_limit": "11/s"}),
        json!({"quota": "1001/day"}),
        json!({"expires_at": null}),
        json!({"expires_in": "2h"}),
    ] {
        let r = call(
            &gw,
            who,
            "PATCH",
            &format!("/api/tokens/{self_id}"),
            &[],
            Some(&body),
        );
        assert_refused(&r, &format!("own PATCH {body}"));
    }
    for id in [self_id, narrow_id] {
        let r = call(
            &gw,
            who,
            "POST",
            &format!("/api/tokens/{id}/rotate"),
            &[],
            Some(&json!({"grace": "2h"})),
        );
        assert_refused(
            &r,
            &format!("rotate {id} with a grace past the caller's expiry"),
        );
    }
    // Creating: no limits, looser limits, or no expiry.
    for body in [
        json!({"label": "x", "roles": ["device"], "expires_in": "10m"}),
        json!({"label": "x", "roles": ["device"], "expires_in": "10m", "rate_limit": "11/s", "quota": "10/day"}),
        json!({"label": "x", "roles": ["device"], "rate_limit": "1/s", "quota": "10/day"}),
        json!({"label": "x", "roles": ["device"], "expires_in": "10m", "rate_limit": "1/s", "quota": "1001/month"}),
    ] {
        let r = call(&gw, who, "POST", "/api/tokens", &[], Some(&body));
        assert_refused(&r, &format!("create {body}"));
    }
    assert_eq!(
        store_state(&gw),
        before,
        "a refused write changed the store"
    );
    // The admin token was never touched: its secret still opens the admin API.
    let r = call(&gw, As::Token(&admin), "GET", "/api/routes", &[], None);
    assert_eq!(r.status, 200, "{r}");

    // The same verbs on a narrower sibling, and the caller's own narrowing, work.
    let narrow = format!("/api/tokens/{narrow_id}");
    for body in [
        json!({"label": "hive scale"}),
        json!({"expires_in": "40m"}),
        json!({"rate_limit": "2/s", "quota": "50/day"}),
    ] {
        let r = call(&gw, who, "PATCH", &narrow, &[], Some(&body));
        assert_eq!(r.status, 200, "PATCH narrow {body}: {r}");
    }
    let r = call(
        &gw,
        who,
        "POST",
        &format!("{narrow}/rotate"),
        &[],
        Some(&json!({"grace": "10m"})),
    );
    assert_eq!(r.status, 200, "{r}");
    let r = call(&gw, who, "DELETE", &narrow, &[], None);
    assert_eq!(r.status, 200, "{r}");
    let made = call(
        &gw,
        who,
        "POST",
        "/api/tokens",
        &[],
        Some(
            &json!({"label": "new scale", "roles": ["device"], "expires_in": "10m", "rate_limit": "10/s", "quota": "1000/day"}),
        ),
    );
    assert_eq!(made.status, 201, "{made}");
    let own = format!("/api/tokens/{self_id}");
    for body in [
        json!({"label": "alice's own"}),
        json!({"rate_limit": "5/s"}),
        json!({"expires_in": "50m"}),
    ] {
        let r = call(&gw, who, "PATCH", &own, &[], Some(&body));
        assert_eq!(r.status, 200, "own PATCH {body}: {r}");
    }
    let r = call(
        &gw,
        who,
        "POST",
        &format!("{own}/rotate"),
        &[],
        Some(&json!({"grace": "1m"})),
    );
    assert_eq!(r.status, 200, "own rotate: {r}");
    let me2 = r.json()["token"].as_str().unwrap().to_owned();
    // The rotated self token revokes itself.
    gw.wait_status("/iot/x", &me2, 200);
    let r = call(&gw, As::Token(&me2), "DELETE", &own, &[], None);
    assert_eq!(r.status, 200, "own revoke: {r}");
}

#[test]
fn the_account_never_acts_on_privileged_tokens_nor_loosens_limits() {
    let up = Upstream::start("api");
    let gw = gateway(&up).start();
    let (admin_id, admin) = gw.create_token_with("carol", "carol admin", &["--scope", "admin"]);
    let (ops_id, _) = gw.create_token_with("carol", "carol ops", &["--role", "ops"]);
    let (self_id, _) = gw.create_token_with("carol", "carol self", &["--scope", "tokens:self"]);
    let (limited_id, _) = gw.create_token_with(
        "carol",
        "metered scale",
        &[
            "--role",
            "device",
            "--rate-limit",
            "5/s",
            "--quota",
            "100/day",
        ],
    );
    let who = As::Account("carol");
    let same_origin = [("Origin", "http://127.0.0.1")];
    let before = store_state(&gw);
    for (kind, id) in [
        ("admin", admin_id),
        ("ops role", ops_id),
        ("tokens:self", self_id),
    ] {
        for (method, path, body) in verbs(id) {
            let r = call(
                &gw,
                who,
                method,
                &path,
                &same_origin,
                body.as_ref().or(Some(&json!({}))),
            );
            assert_refused(&r, &format!("account {method} {path} {body:?} on {kind}"));
        }
    }
    let limited = format!("/api/tokens/{limited_id}");
    for body in [
        json!({"rate_limit": null}),
        json!({"quota": null}),
        json!({"rate_limit": "6/s"}),
        json!({"quota": "101/day"}),
        json!({"quota": "100/month", "rate_limit": "5/s"}),
    ] {
        let r = call(&gw, who, "PATCH", &limited, &same_origin, Some(&body));
        if body["quota"] == "100/month" {
            // 100 a month is tighter than 100 a day: allowed, but undo nothing else below.
            assert_eq!(r.status, 200, "{r}");
            continue;
        }
        assert_refused(&r, &format!("account loosening {body}"));
    }
    let after = store_state(&gw);
    assert_eq!(after["events"][0], before["events"][0]);
    assert_eq!(after["tokens"][0], before["tokens"][0]);
    assert_eq!(after["tokens"][1], before["tokens"][1]);
    assert_eq!(after["tokens"][2], before["tokens"][2]);
    let r = call(&gw, As::Token(&admin), "GET", "/api/routes", &[], None);
    assert_eq!(r.status, 200, "{r}");
    // Narrowing and ordinary management of a device token works.
    let r = call(
        &gw,
        who,
        "PATCH",
        &limited,
        &same_origin,
        Some(&json!({"label": "hive 1", "rate_limit": "1/s"})),
    );
    assert_eq!(r.status, 200, "{r}");
    let r = call(
        &gw,
        who,
        "POST",
        &format!("{limited}/rotate"),
        &same_origin,
        Some(&json!({"grace": "3650d"})),
    );
    assert_eq!(r.status, 200, "{r}");
    let r = call(
        &gw,
        who,
        "DELETE",
        &limited,
        &[("Content-Type", "application/json")],
        None,
    );
    assert_eq!(r.status, 200, "{r}");
}

#[test]
fn account_writes_are_refused_cross_site_and_without_a_json_type() {
    let up = Upstream::start("api");
    let gw = gateway(&up).start();
    let (id, _) = gw.create_token_with("carol", "camera", &["--role", "device"]);
    let who = As::Account("carol");
    let rotate = format!("/api/tokens/{id}/rotate");
    let one = format!("/api/tokens/{id}");
    let before = store_state(&gw);
    // The forged request of the report: no body, no type, cross-site.
    let r = call(
        &gw,
        who,
        "POST",
        &rotate,
        &[
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        None,
    );
    assert_eq!((r.status, r.json_error()), (403, "forbidden".into()), "{r}");
    for headers in [
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site")],
        vec![("Origin", "https://evil.example")],
        vec![("Origin", "null")],
        vec![("Origin", "http://127.0.0.1.evil.example")],
    ] {
        for (method, path, body) in [
            ("POST", rotate.as_str(), Some(json!({}))),
            ("PATCH", one.as_str(), Some(json!({"label": "x"}))),
            ("DELETE", one.as_str(), None),
            ("POST", "/api/tokens", Some(json!({"label": "x"}))),
        ] {
            let mut h = headers.clone();
            h.push(("Content-Type", "application/json"));
            let bytes = body.map(|b| b.to_string()).unwrap_or_default();
            h.push(("X-Forwarded-User", "carol"));
            let r = raw_http(
                gw.admin_addr(),
                &build_request(method, path, &h, bytes.as_bytes()),
            );
            assert_eq!(r.status, 403, "{method} {path} {headers:?}: {r}");
        }
    }
    // Same origin but not JSON: 415, bodiless writes included.
    for (method, path, ct) in [
        ("POST", rotate.as_str(), None),
        ("DELETE", one.as_str(), None),
        ("POST", rotate.as_str(), Some("text/plain")),
        (
            "DELETE",
            one.as_str(),
            Some("application/x-www-form-urlencoded"),
        ),
    ] {
        let mut h = vec![
            ("Origin", "http://127.0.0.1"),
            ("X-Forwarded-User", "carol"),
        ];
        if let Some(ct) = ct {
            h.push(("Content-Type", ct));
        }
        let r = raw_http(gw.admin_addr(), &build_request(method, path, &h, b""));
        assert_eq!(
            (r.status, r.json_error()),
            (415, "unsupported_media_type".into()),
            "{method} {ct:?}: {r}"
        );
    }
    assert_eq!(
        store_state(&gw),
        before,
        "a refused account write changed the store"
    );
    // Reads are not affected; same-origin JSON writes work as before.
    assert_eq!(call(&gw, who, "GET", "/api/tokens", &[], None).status, 200);
    let r = call(
        &gw,
        who,
        "POST",
        &rotate,
        &[
            ("Origin", "http://127.0.0.1"),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        Some(&json!({})),
    );
    assert_eq!(r.status, 200, "{r}");
    let r = call(
        &gw,
        who,
        "DELETE",
        &one,
        &[("Content-Type", "application/json")],
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    // A bearer token is not ambient: token callers are not held to it.
    let (admin_id, admin) = gw.create_token_with("carol", "admin", &["--scope", "admin"]);
    let (other, _) = gw.create_token_with("dave", "x", &[]);
    gw.wait_status("/iot/x", &admin, 403); // indexed (the route's scope is not admin's)
    let r = call(
        &gw,
        As::Token(&admin),
        "DELETE",
        &format!("/api/tokens/{other}"),
        &[("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    let _ = admin_id;
}
