//! Token lifecycle against the real binary (issue 3): scopes per route (403 with RFC 6750 challenge, full
//! access without `admin`), public routes, per-route header rules, expiry, rotation with and without grace
//! while the gateway serves (CLI in another process), the event log, an old database upgraded in place,
//! and path spellings that must not cross from one scoped route to another.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn scopes_are_enforced_per_route_with_rfc6750_answers() {
    let telemetry = Upstream::start("telemetry");
    let open = Upstream::start("open");
    let gw = GatewayBuilder::new()
        .route_with(
            "telemetry",
            "/telemetry",
            telemetry.addr(),
            &[("required_scope", "\"telemetry:write\"")],
        )
        .route("open", "/open", open.addr())
        .start();
    let (_, writer) = gw.create_token_with("hive", "scale", &["--scope", "telemetry:write"]);
    let (_, video_only) = gw.create_token_with("cam", "camera", &["--scope", "video:write"]);
    let (_, full) = gw.create_token("beekeeper", "phone");
    let (_, admin) = gw.create_token_with("ops", "console", &["--scope", "admin"]);

    let r = gw.wait_status("/telemetry/x", &writer, 200);
    assert_eq!(telemetry.last().single_header("x-user-id"), "hive", "{r}");

    let hits = telemetry.hits();
    let r = gw.wait_status("/telemetry/x", &video_only, 403);
    let challenge = r.header("www-authenticate").expect("challenge");
    assert!(
        challenge.starts_with("Bearer realm=\"tokengate\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"telemetry:write\""),
        "{challenge}"
    );
    assert_eq!(r.json_error(), "insufficient_scope");
    assert_eq!(telemetry.hits(), hits, "a 403 must not reach the upstream");

    // Full access: every route and scope but admin; a scoped token on a route without a requirement.
    gw.wait_status("/telemetry/x", &full, 200);
    gw.wait_status("/open/x", &video_only, 200);
    let denied = raw_http(
        gw.admin_addr(),
        &build_request(
            "GET",
            "/api/tokens",
            &[("Authorization", &format!("Bearer {full}"))],
            b"",
        ),
    );
    assert_eq!(
        denied.status, 403,
        "full access must not imply admin: {denied}"
    );
    let mut listed = None;
    poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
        let r = raw_http(
            gw.admin_addr(),
            &build_request(
                "GET",
                "/api/tokens",
                &[("Authorization", &format!("Bearer {admin}"))],
                b"",
            ),
        );
        let done = r.status == 200;
        listed = Some(r);
        done
    });
    assert_eq!(listed.unwrap().status, 200);
}

#[test]
fn public_route_strips_identity_and_credentials() {
    let up = Upstream::start("status");
    let gw = GatewayBuilder::new()
        .route_with("status", "/status", up.addr(), &[("auth", "\"none\"")])
        .start();
    let (_, token) = gw.create_token("alice", "phone");
    let r = gw.request(
        "GET",
        "/status/ping",
        &[
            ("x-user-id", "mallory"),
            ("X_User_Id", "mallory"),
            ("X-Token-Id", "1"),
            ("Authorization", &format!("Bearer {token}")),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{r}");
    let seen = up.last();
    assert!(
        seen.header_values("x-user-id").is_empty(),
        "{:?}",
        seen.headers
    );
    assert!(
        seen.header_values("x-token-id").is_empty(),
        "{:?}",
        seen.headers
    );
    assert!(
        seen.header_values("authorization").is_empty(),
        "{:?}",
        seen.headers
    );
    let anonymous = gw.request("GET", "/status/ping", &[], b"");
    assert_eq!(anonymous.status, 200, "{anonymous}");
}

#[test]
fn route_header_rules_strip_and_rename_identity() {
    let up = Upstream::start("legacy");
    let gw = GatewayBuilder::new()
        .route_with(
            "legacy",
            "/legacy",
            up.addr(),
            &[
                ("strip_request_headers", "[\"x-test-auth-bypass\"]"),
                ("user_id_header", "\"internal-userId\""),
            ],
        )
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_status("/legacy/a", &token, 200);
    let r = gw.request(
        "GET",
        "/legacy/a",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Test-Auth-Bypass", "1"),
            ("x_test_auth_bypass", "1"),
            ("Internal-UserId", "mallory"),
            ("internal_userid", "mallory"),
            ("x-user-id", "mallory"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{r}");
    let seen = up.last();
    assert!(
        seen.header_values("x-test-auth-bypass").is_empty(),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.single_header("internal-userid"), "alice");
    assert!(
        seen.header_values("x-user-id").is_empty(),
        "{:?}",
        seen.headers
    );
}

#[test]
fn expired_tokens_are_refused_and_listed_as_expired() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (id, token) = gw.create_token_with("alice", "short", &["--expires-in", "2s"]);
    gw.wait_status("/iot/x", &token, 200);
    let r = gw.wait_status("/iot/x", &token, 401);
    let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
    assert!(
        challenge.contains("error=\"invalid_token\"") && challenge.contains("expired"),
        "{r}"
    );
    assert_eq!(gw.token_entry(id)["status"], "expired");

    let past = gw.cli(&[
        "token",
        "create",
        "--user",
        "a",
        "--label",
        "b",
        "--expires-at",
        "2001-01-01T00:00:00Z",
    ]);
    assert!(!past.status.success(), "{}", describe(&past));
    assert!(
        String::from_utf8_lossy(&past.stderr).contains("not in the future"),
        "{}",
        describe(&past)
    );

    let soon = store_time(unix_now() + 5);
    let (_, at_token) = gw.create_token_with("alice", "until", &["--expires-at", &soon]);
    gw.wait_status("/iot/x", &at_token, 200);
    gw.wait_status("/iot/x", &at_token, 401);
}

fn store_time(secs: i64) -> String {
    tokengate::store::rfc3339(secs)
}

#[test]
fn rotation_without_grace_stops_the_old_secret_at_once() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (id, old) = gw.create_token_with("alice", "scale", &["--scope", "telemetry:write"]);
    gw.wait_status("/iot/x", &old, 200);
    let rotated = gw.cli_json(&["token", "rotate", &id.to_string(), "--json"]);
    let returned = Instant::now();
    let new = rotated["token"].as_str().expect("new token").to_string();
    assert_ne!(new, old);
    assert_eq!(rotated["id"], id);
    assert_eq!(rotated["user"], "alice");
    assert_eq!(rotated["label"], "scale");
    assert_eq!(rotated["scopes"], serde_json::json!(["telemetry:write"]));
    gw.wait_status("/iot/x", &old, 401);
    let delay = returned.elapsed();
    eprintln!("rotation without grace: old secret refused {delay:?} after the CLI returned");
    assert!(
        delay < Duration::from_millis(250) + Duration::from_millis(100),
        "{delay:?}"
    );
    let r = gw.wait_status("/iot/x", &new, 200);
    assert_eq!(up.last().single_header("x-user-id"), "alice", "{r}");
    // Usage history stays with the token id.
    assert!(poll_until(
        Duration::from_secs(1),
        Duration::from_millis(20),
        || gw.token_entry(id)["rotated_at"].is_string()
    ));
}

#[test]
fn rotation_with_grace_keeps_both_until_the_grace_ends() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (id, old) = gw.create_token("alice", "camera");
    gw.wait_status("/iot/x", &old, 200);
    let rotated = gw.cli_json(&[
        "token",
        "rotate",
        &id.to_string(),
        "--grace",
        "3s",
        "--json",
    ]);
    let rotated_at = Instant::now();
    let new = rotated["token"].as_str().expect("new token").to_string();
    gw.wait_status("/iot/x", &new, 200);
    assert_eq!(
        gw.get_with_token("/iot/x", &old).status,
        200,
        "old secret must work during the grace"
    );
    gw.wait_status("/iot/x", &old, 401);
    let waited = rotated_at.elapsed();
    eprintln!("rotation with 3s grace: old secret refused after {waited:?}");
    assert!(
        waited >= Duration::from_secs(2),
        "old secret stopped too early: {waited:?}"
    );
    assert_eq!(gw.get_with_token("/iot/x", &new).status, 200);

    gw.revoke(id);
    let again = gw.cli(&["token", "rotate", &id.to_string()]);
    assert!(
        !again.status.success(),
        "rotating a revoked token must fail: {}",
        describe(&again)
    );
}

#[test]
fn show_lists_lifecycle_events_in_order() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (id, _) = gw.create_token("alice", "scale");
    gw.cli_json(&[
        "token",
        "rotate",
        &id.to_string(),
        "--grace",
        "1m",
        "--json",
    ]);
    gw.revoke(id);
    let shown = gw.cli_json(&["token", "show", &id.to_string(), "--json"]);
    let events: Vec<(&str, &str)> = shown["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [("created", "cli"), ("rotated", "cli"), ("revoked", "cli")]
    );
    for e in shown["events"].as_array().unwrap() {
        assert!(
            parse_rfc3339_utc(e["at"].as_str().unwrap()).is_some(),
            "{e}"
        );
    }
    assert_eq!(shown["status"], "revoked");
    let plain = gw.cli(&["token", "show", &id.to_string()]);
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(
        text.contains("EVENTS") && text.contains("rotated"),
        "{text}"
    );
}

#[test]
fn a_version_1_database_is_upgraded_in_place() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .build();
    let token = tokengate::token::Token::generate();
    {
        let conn = rusqlite::Connection::open(gw.db_path()).expect("create v1 database");
        conn.execute_batch(tokengate::store::MIGRATIONS[0]).unwrap();
        conn.execute_batch("PRAGMA user_version = 1").unwrap();
        conn.execute(
            "INSERT INTO tokens (user_id, label, digest, created_at, rev) VALUES ('old-user', 'v1 device', ?1, 1700000000, 1)",
            [&token.digest().0[..]],
        )
        .unwrap();
    }
    let mut gw = gw;
    gw.start();
    let r = gw.wait_status("/iot/x", token.as_str(), 200);
    assert_eq!(up.last().single_header("x-user-id"), "old-user", "{r}");
    let version: i64 = rusqlite::Connection::open(gw.db_path())
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, tokengate::store::MIGRATIONS.len() as i64);
    let shown = gw.cli_json(&["token", "show", "1", "--json"]);
    assert_eq!(shown["events"][0]["event"], "created");
    let rotated = gw.cli_json(&["token", "rotate", "1", "--grace", "1m", "--json"]);
    let new = rotated["token"].as_str().unwrap().to_string();
    gw.wait_status("/iot/x", &new, 200);
    assert_eq!(
        gw.get_with_token("/iot/x", token.as_str()).status,
        200,
        "grace keeps the old secret"
    );
}

#[test]
fn path_spellings_never_cross_from_one_scoped_route_to_another() {
    let telemetry = Upstream::start("telemetry");
    let video = Upstream::start("video");
    let gw = GatewayBuilder::new()
        .route_with(
            "telemetry",
            "/telemetry",
            telemetry.addr(),
            &[("required_scope", "\"telemetry:write\"")],
        )
        .route_with(
            "video",
            "/video",
            video.addr(),
            &[("required_scope", "\"video:write\"")],
        )
        .start();
    let (_, token) = gw.create_token_with("hive", "scale", &["--scope", "telemetry:write"]);
    gw.wait_status("/telemetry/ok", &token, 200);
    let (t_hits, v_hits) = (telemetry.hits(), video.hits());
    for path in [
        "/telemetry/../video/x",
        "/telemetry/%2e%2e/video/x",
        "/telemetry/%2E%2E/video",
        "/telemetry%2fvideo",
        "/telemetry%2Fvideo/x",
        "/telemetry//video",
        "/telemetry/./x",
        "/telemetry/..%2fvideo",
        "/telemetry/%5c..%5cvideo",
    ] {
        let r = gw.get_with_token(path, &token);
        assert_eq!(r.status, 400, "{path}: {r}");
        assert_eq!(r.json_error(), "invalid_request", "{path}");
    }
    assert_eq!(
        telemetry.hits(),
        t_hits,
        "no trick may reach the telemetry upstream"
    );
    assert_eq!(
        video.hits(),
        v_hits,
        "no trick may reach the video upstream"
    );
    assert_eq!(gw.get_with_token("/video/x", &token).status, 403);
}
