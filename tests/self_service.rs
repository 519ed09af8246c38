//! Self-service and roles over real sockets: `tokens:self` tokens of two users against every endpoint,
//! id enumeration, escalation attempts (scope, role, `admin`, `tokens:self`, expiry, another user), the
//! trusted account header from trusted and untrusted addresses, `[roles]` edited under a running
//! gateway (SIGHUP), and `forward_scopes` as the upstream sees it.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::time::Duration;

const ROLES: &str = "[\"telemetry:write\"]";

fn gateway(up: &Upstream) -> GatewayBuilder {
    GatewayBuilder::new()
        // These tests write far more than a person would: no write budget in the way.
        .section("admin", "self_service_rate", "\"1000000/s\"")
        .section("roles", "device", ROLES)
        .section("roles", "ops", "[\"admin\"]")
        .route_with(
            "iot",
            "/iot",
            up.addr(),
            &[
                ("required_scope", "\"telemetry:write\""),
                ("forward_scopes", "true"),
            ],
        )
        .route_with(
            "video",
            "/video",
            up.addr(),
            &[("required_scope", "\"video:upload\"")],
        )
        .route("plain", "/plain", up.addr())
}

/// One admin API call: `token` as bearer (if any), `headers` more, `body` as JSON (if any).
fn call(
    gw: &Gateway,
    method: &str,
    target: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> RawResponse {
    let auth = token.map(bearer);
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    if let Some(a) = &auth {
        h.push(("Authorization", a));
    }
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    if body.is_some() {
        h.push(("Content-Type", "application/json"));
    }
    raw_http(gw.admin_addr(), &build_request(method, target, &h, &bytes))
}

/// Every token as the CLI sees it (the store's truth).
/// Every token as the CLI sees it (the store's truth), without the usage fields: a usage flush may land
/// between two snapshots (the caller's own token is used by every probe), and uses are not changes.
fn snapshot(gw: &Gateway) -> Value {
    let mut list = gw.cli_json(&["token", "list", "--json"]);
    for t in list.as_array_mut().unwrap() {
        let t = t.as_object_mut().unwrap();
        t.remove("use_count");
        t.remove("last_used_at");
    }
    list
}

fn ids_of(list: &Value) -> Vec<i64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect()
}

/// The response with its id-dependent parts made comparable: the body with `id` written as `ID`, and
/// the header fields (`Content-Length` checked against the body instead: it counts the id's digits).
fn shape(r: &RawResponse, id: i64) -> (u16, String, Vec<(String, String)>) {
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| {
            !k.eq_ignore_ascii_case("date") && !k.eq_ignore_ascii_case("content-length")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    headers.sort();
    (r.status, r.text().replace(&id.to_string(), "ID"), headers)
}

#[test]
fn two_users_with_self_tokens_never_see_or_touch_each_other_s_tokens() {
    let up = Upstream::start("api");
    let gw = gateway(&up).start();
    let (alice_self_id, alice_self) = gw.create_token_with(
        "alice",
        "alice account",
        &["--scope", "tokens:self", "--role", "device"],
    );
    let (_, bob_self) = gw.create_token_with("bob", "bob account", &["--scope", "tokens:self"]);
    let (bob_dev_id, bob_dev) = gw.create_token_with("bob", "bob scale", &["--role", "device"]);
    let (alice_dev_id, _) = gw.create_token_with("alice", "alice scale", &["--role", "device"]);
    gw.wait_ok("/iot/warmup", &bob_dev);

    // Listing: only one's own, whatever the query says.
    for target in ["/api/tokens", "/api/tokens?user=bob", "/api/tokens?user="] {
        let r = call(&gw, "GET", target, Some(&alice_self), &[], None);
        assert_eq!(r.status, 200, "{target}: {r}");
        let users: Vec<String> = r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["user"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            users.iter().all(|u| u == "alice") && users.len() == 2,
            "{target}: {users:?}"
        );
    }
    let who = call(&gw, "GET", "/api/whoami", Some(&alice_self), &[], None).json();
    assert_eq!(who, json!({"mode": "self", "user": "alice"}));

    let before = snapshot(&gw);
    let all_ids = ids_of(&before);
    let absent = all_ids.iter().max().unwrap() + 1000;
    let absent_get = call(
        &gw,
        "GET",
        &format!("/api/tokens/{absent}"),
        Some(&alice_self),
        &[],
        None,
    );
    assert_eq!(absent_get.status, 404);
    // Enumerate every id (and some that do not exist) with every method: another user's token answers
    // exactly as an absent one.
    for id in 1..=absent {
        let own = id == alice_self_id || id == alice_dev_id;
        let exists = all_ids.contains(&id);
        for (method, suffix, body) in [
            ("GET", "", None),
            ("DELETE", "", None),
            ("PATCH", "", Some(json!({"label": "taken over"}))),
            ("POST", "/rotate", Some(json!({}))),
        ] {
            if own && method != "GET" {
                continue; // alice may change her own; not part of the probe
            }
            let r = call(
                &gw,
                method,
                &format!("/api/tokens/{id}{suffix}"),
                Some(&alice_self),
                &[],
                body.as_ref(),
            );
            if own {
                assert_eq!(r.status, 200, "{method} own {id}: {r}");
                continue;
            }
            let reference = call(
                &gw,
                method,
                &format!("/api/tokens/{absent}{suffix}"),
                Some(&alice_self),
                &[],
                body.as_ref(),
            );
            assert_eq!(
                shape(&r, id),
                shape(&reference, absent),
                "{method} /api/tokens/{id}{suffix} (exists: {exists}) differs from an absent id"
            );
        }
    }
    // A body field or a header cannot name another user either.
    let r = call(
        &gw,
        "POST",
        "/api/tokens",
        Some(&alice_self),
        &[],
        Some(&json!({"user": "bob", "label": "x", "roles": ["device"]})),
    );
    assert_eq!(
        (r.status, r.json_error()),
        (403, "forbidden".to_owned()),
        "{r}"
    );
    let r = call(
        &gw,
        "GET",
        "/api/tokens",
        Some(&alice_self),
        &[("X-Forwarded-User", "bob")],
        None,
    );
    assert!(r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["user"] == "alice"));
    assert_eq!(snapshot(&gw), before, "the probes changed tokens");
    assert_eq!(
        gw.get_with_token("/iot/x", &bob_dev).status,
        200,
        "bob's token still works"
    );

    // Bob, the other way round; and the admin-only endpoint.
    let r = call(
        &gw,
        "DELETE",
        &format!("/api/tokens/{alice_dev_id}"),
        Some(&bob_self),
        &[],
        None,
    );
    assert_eq!(r.status, 404);
    let r = call(&gw, "GET", "/api/routes", Some(&bob_self), &[], None);
    assert_eq!(r.status, 403, "{r}");
    // Alice manages her own: revoke her device token, see it in her list with an event by self:<id>.
    let r = call(
        &gw,
        "DELETE",
        &format!("/api/tokens/{alice_dev_id}"),
        Some(&alice_self),
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    let detail = call(
        &gw,
        "GET",
        &format!("/api/tokens/{alice_dev_id}"),
        Some(&alice_self),
        &[],
        None,
    )
    .json();
    let actors: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["cli", &format!("self:{alice_self_id}")]);
    let _ = bob_dev_id;
}

#[test]
fn every_escalation_attempt_is_refused_and_changes_nothing() {
    let up = Upstream::start("api");
    let gw = gateway(&up).start();
    let (_, limited) = gw.create_token_with(
        "alice",
        "account",
        &[
            "--scope",
            "tokens:self",
            "--scope",
            "telemetry:write",
            "--expires-in",
            "1h",
        ],
    );
    // Made by the CLI (another process): known to the gateway once synced.
    gw.wait_ok("/iot/x", &limited);
    let before = snapshot(&gw);
    let in_2h = "2h";
    for (body, why) in [
        (
            json!({"label": "a", "scopes": ["video:upload"]}),
            "a scope it does not hold",
        ),
        (json!({"label": "a", "scopes": ["admin"]}), "admin"),
        (
            json!({"label": "a", "scopes": ["tokens:self"]}),
            "tokens:self",
        ),
        (
            json!({"label": "a", "roles": ["ops"]}),
            "a role carrying admin",
        ),
        (
            json!({"label": "a", "scopes": ["telemetry:write"], "expires_in": in_2h}),
            "a longer expiry",
        ),
        (
            json!({"label": "a", "scopes": ["telemetry:write"]}),
            "no expiry at all",
        ),
        (json!({"label": "a", "expires_in": "10m"}), "full access"),
        (
            json!({"user": "bob", "label": "a", "scopes": ["telemetry:write"], "expires_in": "10m"}),
            "another user",
        ),
    ] {
        let r = call(&gw, "POST", "/api/tokens", Some(&limited), &[], Some(&body));
        assert_eq!(r.status, 403, "{why}: {r}");
        assert_eq!(r.json_error(), "forbidden", "{why}: {r}");
    }
    assert_eq!(snapshot(&gw), before, "a refused create changed the store");
    // Within what it holds: fine, and the new token works on the proxy.
    let r = call(
        &gw,
        "POST",
        "/api/tokens",
        Some(&limited),
        &[],
        Some(&json!({"label": "scale", "scopes": ["telemetry:write"], "expires_in": "30m"})),
    );
    assert_eq!(r.status, 201, "{r}");
    let made = r.json();
    assert_eq!(made["user"], "alice");
    let id = made["id"].as_i64().unwrap();
    gw.wait_ok("/iot/x", made["token"].as_str().unwrap());
    // Changing it: no expiry beyond its maker's either.
    for body in [json!({"expires_in": "2h"}), json!({"expires_at": null})] {
        let r = call(
            &gw,
            "PATCH",
            &format!("/api/tokens/{id}"),
            Some(&limited),
            &[],
            Some(&body),
        );
        assert_eq!(r.status, 403, "{body}: {r}");
    }
    let r = call(
        &gw,
        "PATCH",
        &format!("/api/tokens/{id}"),
        Some(&limited),
        &[],
        Some(&json!({"label": "renamed", "rate_limit": "5/s"})),
    );
    assert_eq!(r.status, 200, "{r}");
    // A token without tokens:self or admin gets nowhere.
    let (_, device) = gw.create_token_with("alice", "device", &["--role", "device"]);
    gw.wait_ok("/iot/x", &device);
    let r = call(&gw, "GET", "/api/tokens", Some(&device), &[], None);
    assert_eq!(r.status, 403, "{r}");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
}

#[test]
fn the_account_header_counts_only_from_a_trusted_proxy() {
    let up = Upstream::start("api");
    let trusted = gateway(&up)
        .section("admin", "trusted_user_header", "\"x-forwarded-user\"")
        .section("admin", "trusted_proxies", "[\"127.0.0.1\"]")
        .start();
    let as_carol = [("X-Forwarded-User", "carol")];
    let who = call(&trusted, "GET", "/api/whoami", None, &as_carol, None);
    assert_eq!(
        who.json(),
        json!({"mode": "account", "user": "carol"}),
        "{who}"
    );
    let r = call(
        &trusted,
        "POST",
        "/api/tokens",
        None,
        &as_carol,
        Some(&json!({"label": "hive 3", "roles": ["device"]})),
    );
    assert_eq!(r.status, 201, "{r}");
    let made = r.json();
    assert_eq!(made["user"], "carol");
    let events =
        trusted.cli_json(&["token", "show", &made["id"].to_string(), "--json"])["events"].clone();
    assert_eq!(events[0]["actor"], "account:carol");
    for body in [
        json!({"label": "x", "scopes": ["admin"]}),
        json!({"label": "x", "user": "dave"}),
    ] {
        assert_eq!(
            call(
                &trusted,
                "POST",
                "/api/tokens",
                None,
                &as_carol,
                Some(&body)
            )
            .status,
            403
        );
    }
    assert_eq!(
        call(&trusted, "GET", "/api/routes", None, &as_carol, None).status,
        403
    );
    let listed = call(&trusted, "GET", "/api/tokens", None, &as_carol, None).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let r = call(
        &trusted,
        "GET",
        "/api/whoami",
        None,
        &[("X-Forwarded-User", "bad user")],
        None,
    );
    assert_eq!(r.status, 400, "{r}");

    // The same header from an address that is not trusted: as if absent.
    let untrusted = gateway(&up)
        .section("admin", "trusted_user_header", "\"x-forwarded-user\"")
        .section("admin", "trusted_proxies", "[\"10.0.0.0/8\"]")
        .start();
    let r = call(&untrusted, "GET", "/api/tokens", None, &as_carol, None);
    assert_eq!(r.status, 401, "{r}");
    let r = call(
        &untrusted,
        "POST",
        "/api/tokens",
        None,
        &as_carol,
        Some(&json!({"label": "x"})),
    );
    assert_eq!(r.status, 401, "{r}");
    assert!(untrusted
        .cli_json(&["token", "list", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_role_edited_under_a_running_gateway_changes_its_tokens_access_within_the_reload() {
    let up = Upstream::start("api");
    let mut gw = gateway(&up).build();
    let bad = gw.cli(&[
        "token", "create", "--user", "a", "--label", "x", "--role", "nosuch",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("\"nosuch\"") && err.contains("device, ops"),
        "{err}"
    );
    let (_, token) = gw.create_token_with("alice", "scale", &["--role", "device"]);
    let listed = gw.cli_json(&["token", "list", "--json"]);
    assert_eq!(listed[0]["roles"], json!(["device"]));
    assert_eq!(listed[0]["scopes"], json!([]));
    gw.start();
    gw.wait_ok("/iot/x", &token);
    assert_eq!(gw.get_with_token("/video/x", &token).status, 403);

    // A reload without a role change changes nothing.
    gw.sighup();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gw.get_with_token("/video/x", &token).status, 403);
    assert_eq!(gw.get_with_token("/iot/x", &token).status, 200);

    // The role gains video:upload: the token may upload once the reload is through.
    let config = fs::read_to_string(gw.config_path()).unwrap();
    fs::write(
        gw.config_path(),
        config.replace(
            &format!("device = {ROLES}"),
            "device = [\"telemetry:write\", \"video:upload\"]",
        ),
    )
    .unwrap();
    gw.sighup();
    gw.wait_ok("/video/x", &token);

    // A reload that would drop a role tokens use is refused: the running roles stay.
    let current = fs::read_to_string(gw.config_path()).unwrap();
    let without: String = current
        .lines()
        .filter(|l| !l.starts_with("device ="))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(gw.config_path(), without).unwrap();
    gw.sighup();
    assert!(
        poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
            metric_sum(
                &gw.metrics(),
                "tokengate_config_reloads_total",
                &["result=\"error\""],
            ) >= 1.0
        }),
        "the reload was not refused"
    );
    assert!(
        gw.logs()
            .contains("\"device\" used by tokens but not defined"),
        "{}",
        gw.logs()
    );
    assert_eq!(gw.get_with_token("/video/x", &token).status, 200);
}

#[test]
fn forward_scopes_tells_the_upstream_the_effective_scopes_and_never_the_client_s_own() {
    let up = Upstream::start("api");
    let gw = gateway(&up).start();
    let (_, device) = gw.create_token_with(
        "alice",
        "scale",
        &["--role", "device", "--scope", "status:read"],
    );
    let (_, full) = gw.create_token("bob", "laptop");
    gw.wait_ok("/iot/x", &device);
    let spoof = [
        ("X-Token-Scopes", "admin"),
        ("x_token_scopes", "admin"),
        ("X-Token-Roles", "ops"),
    ];
    let send = |target: &str, token: &str| {
        let auth = bearer(token);
        let mut h = spoof.to_vec();
        h.push(("Authorization", &auth));
        let r = gw.request("GET", target, &h, b"");
        assert_eq!(r.status, 200, "{target}: {r}");
        up.last()
    };
    let seen = send("/iot/readings", &device);
    assert_eq!(
        seen.single_header("x-token-scopes"),
        "status:read telemetry:write"
    );
    assert_eq!(seen.single_header("x-token-roles"), "device");
    let seen = send("/iot/readings", &full);
    assert_eq!(seen.single_header("x-token-scopes"), "*", "full access");
    assert!(seen.header_values("x-token-roles").is_empty());
    // Without forward_scopes: none of it reaches the upstream, not even the client's copies.
    let seen = send("/plain/x", &device);
    assert!(
        seen.header_values("x-token-scopes").is_empty(),
        "{:?}",
        seen.headers
    );
    assert!(
        seen.header_values("x-token-roles").is_empty(),
        "{:?}",
        seen.headers
    );
}
