//! Token lifecycle over real sockets (issue 3): the real `tokengate` binary serving real upstreams while
//! the CLI changes the store from other processes.
//!
//! - scopes per route: 403 with the RFC 6750 `insufficient_scope` challenge, upstream untouched; a token
//!   without scopes has full access except `admin` (admin API 403 for it, 200 for a `--scope admin` token);
//! - `auth = "none"` routes: no credential needed, client identity headers and credentials still removed;
//! - per-route header rules: `strip_request_headers` (any case, `_` for `-`) and `user_id_header`;
//! - expiry (`--expires-in`, `--expires-at`; a past `--expires-at` refused by the CLI);
//! - rotation while the gateway serves: without grace the old secret is refused within 250 ms of the CLI
//!   exiting, with grace both work until it ends; id, user, label, scopes, expiry and use history survive;
//! - `token show`: the created / rotated / revoked events with actor `cli`;
//! - a version-1 database built by hand is upgraded in place on start and keeps working;
//! - path spellings that could cross from one scoped route to another are refused (400) before routing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The bound for a CLI change (here: a rotation) to reach a running gateway.
const SYNC_LIMIT: Duration = Duration::from_millis(250);

/// Pause between two polls in the timed loops; the measured bounds allow one of these on top.
const POLL: Duration = Duration::from_millis(10);

const TELEMETRY_SCOPE: &str = "telemetry:write";

/// `GET target` on the admin listener with a bearer token.
fn admin_get_with_token(gw: &Gateway, target: &str, token: &str) -> RawResponse {
    raw_http(
        gw.admin_addr(),
        &build_request("GET", target, &[("Authorization", &bearer(token))], b""),
    )
}

/// The value of `param="..."` in a `WWW-Authenticate` challenge.
fn challenge_param<'a>(challenge: &'a str, param: &str) -> Option<&'a str> {
    let start = challenge.find(&format!("{param}=\""))? + param.len() + 2;
    let len = challenge[start..].find('"')?;
    Some(&challenge[start..start + len])
}

/// Asserts the 401 `invalid_token` answer (challenge and JSON body) and returns its `error_description`.
fn assert_invalid_token(r: &RawResponse) -> String {
    assert_eq!(r.status, 401, "{r}");
    let challenge = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("401 without WWW-Authenticate: {r}"));
    assert!(
        challenge.starts_with("Bearer realm=\"tokengate\""),
        "{challenge}"
    );
    assert_eq!(
        challenge_param(challenge, "error"),
        Some("invalid_token"),
        "{r}"
    );
    assert_eq!(r.json_error(), "invalid_token", "{r}");
    challenge_param(challenge, "error_description")
        .unwrap_or_else(|| panic!("no error_description: {r}"))
        .to_owned()
}

/// `token <verb> ID <extra>...` expecting success and JSON on stdout.
fn cli_id_json(gw: &Gateway, verb: &str, id: i64, extra: &[&str]) -> Value {
    let id = id.to_string();
    let mut args = vec!["token", verb, id.as_str()];
    args.extend_from_slice(extra);
    gw.cli_json(&args)
}

/// Seconds since the epoch of an RFC 3339 field of a JSON object; panics when absent or malformed.
fn time_field(v: &Value, field: &str) -> i64 {
    v[field]
        .as_str()
        .and_then(parse_rfc3339_utc)
        .unwrap_or_else(|| panic!("{field} is not an RFC 3339 time in {v}"))
}

/// Sends `GET target` with `token` every [`POLL`] until the status is `want`; returns the answer and the
/// time from `since` until it was received. Panics after `timeout`.
fn time_until(
    gw: &Gateway,
    target: &str,
    token: &str,
    want: u16,
    since: Instant,
    timeout: Duration,
) -> (RawResponse, Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let r = gw.get_with_token(target, token);
        let received = since.elapsed();
        if r.status == want {
            return (r, received);
        }
        assert!(
            Instant::now() < deadline,
            "{target} never answered {want} within {timeout:?}; last: {r}"
        );
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------------------
// 1. Scopes
// ---------------------------------------------------------------------------------------------------------

#[test]
fn required_scope_admits_only_tokens_that_carry_it() {
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
    let (writer_id, writer) =
        gw.create_token_with("hive-7", "scale", &["--scope", TELEMETRY_SCOPE]);
    let (_, video_only) = gw.create_token_with("cam-2", "camera", &["--scope", "video:write"]);
    let (full_id, full) = gw.create_token("beekeeper", "phone");

    // The scope is recorded as given; no scope means an empty list (full access).
    assert_eq!(
        gw.token_entry(writer_id)["scopes"],
        json!([TELEMETRY_SCOPE])
    );
    assert_eq!(gw.token_entry(full_id)["scopes"], json!([]));

    // A token with the route's scope.
    gw.wait_ok("/telemetry/hives/7", &writer);
    let seen = telemetry.last();
    assert_eq!(seen.single_header("x-user-id"), "hive-7");
    assert_eq!(seen.single_header("x-token-id"), writer_id.to_string());

    // A valid token with another scope only: 403 with the RFC 6750 challenge, upstream not contacted.
    let hits = telemetry.hits();
    let r = gw.wait_status("/telemetry/hives/7", &video_only, 403);
    let challenge = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("403 without WWW-Authenticate: {r}"));
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"telemetry:write\""),
        "{challenge}"
    );
    assert_eq!(r.json_error(), "insufficient_scope", "{r}");
    // Once more with the token surely synced: still 403, and no request reached the upstream.
    assert_eq!(
        gw.get_with_token("/telemetry/hives/7", &video_only).status,
        403
    );
    assert_eq!(telemetry.hits(), hits, "a 403 must not reach the upstream");

    // A token without scopes has full access.
    gw.wait_ok("/telemetry/hives/7", &full);
    assert_eq!(telemetry.last().single_header("x-user-id"), "beekeeper");

    // A scoped token on a route without required_scope.
    gw.wait_ok("/open/status", &video_only);
    assert_eq!(open.last().single_header("x-user-id"), "cam-2");
    gw.wait_ok("/open/status", &writer);
    assert_eq!(open.last().single_header("x-user-id"), "hive-7");
}

#[test]
fn full_access_does_not_include_admin() {
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
    let (_, full) = gw.create_token("beekeeper", "phone");
    let (_, admin) = gw.create_token_with("ops", "console", &["--scope", "admin"]);

    // Both known to the gateway first, so that a 403 below is about the scope and not a sync delay.
    gw.wait_ok("/open/x", &full);
    gw.wait_ok("/open/x", &admin);

    let r = admin_get_with_token(&gw, "/api/tokens", &full);
    assert_eq!(
        r.status, 403,
        "a token without scopes must not manage tokens: {r}"
    );

    let r = admin_get_with_token(&gw, "/api/tokens", &admin);
    assert_eq!(r.status, 200, "{r}");
    let listed = r.json();
    let users: Vec<&str> = listed
        .as_array()
        .unwrap_or_else(|| panic!("GET /api/tokens is not an array: {listed}"))
        .iter()
        .filter_map(|t| t["user"].as_str())
        .collect();
    assert!(
        users.contains(&"beekeeper") && users.contains(&"ops"),
        "{listed}"
    );

    // `admin` is a scope like the others: an admin-only token has no telemetry:write.
    assert_eq!(gw.get_with_token("/telemetry/x", &admin).status, 403);
    assert_eq!(telemetry.hits(), 0);
}

// ---------------------------------------------------------------------------------------------------------
// 2. Public routes
// ---------------------------------------------------------------------------------------------------------

#[test]
fn public_route_needs_no_credential_and_still_strips_identity() {
    let public = Upstream::start("status");
    let private = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .route_with("status", "/status", public.addr(), &[("auth", "\"none\"")])
        .route("api", "/api", private.addr())
        .start();

    // No credential at all.
    let r = gw.request("GET", "/status/ping?x=1", &[], b"");
    assert_eq!(r.status, 200, "{r}");
    let seen = public.last();
    assert_eq!(seen.uri, "/status/ping?x=1");
    assert!(seen.header_values("x-user-id").is_empty(), "{seen:?}");
    assert!(seen.header_values("x-token-id").is_empty(), "{seen:?}");

    // Forged identity headers in several spellings: all removed, nothing injected.
    let r = gw.request(
        "GET",
        "/status/ping",
        &[
            ("x-user-id", "mallory"),
            ("X_User_Id", "mallory"),
            ("X-USER-ID", "mallory"),
            ("x-token-id", "1"),
            ("X_Token_Id", "1"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{r}");
    let seen = public.last();
    assert!(
        seen.header_values("x-user-id").is_empty(),
        "client identity reached a public upstream: {:?}",
        seen.headers
    );
    assert!(
        seen.header_values("x-token-id").is_empty(),
        "client token id reached a public upstream: {:?}",
        seen.headers
    );

    // A credential sent to a public route (valid or not) is removed too; no identity is injected.
    let (_, token) = gw.create_token("alice", "phone");
    gw.wait_ok("/api/x", &token);
    for credential in [
        bearer(&token),
        "Bearer tg_not_a_real_token".to_owned(),
        "Basic YWxpY2U6c2VjcmV0".to_owned(),
    ] {
        let r = gw.request(
            "GET",
            "/status/ping",
            &[("Authorization", &credential), ("X_User_Id", "mallory")],
            b"",
        );
        assert_eq!(r.status, 200, "{credential:?}: {r}");
        let seen = public.last();
        assert!(
            seen.header_values("authorization").is_empty(),
            "a credential reached the public upstream: {:?}",
            seen.headers
        );
        assert!(seen.header_values("x-user-id").is_empty(), "{seen:?}");
        assert!(seen.header_values("x-token-id").is_empty(), "{seen:?}");
    }

    // The bearer route next to it still requires a token.
    let hits = private.hits();
    assert_eq!(gw.request("GET", "/api/x", &[], b"").status, 401);
    assert_eq!(private.hits(), hits);
}

// ---------------------------------------------------------------------------------------------------------
// 3. Per-route header rules
// ---------------------------------------------------------------------------------------------------------

#[test]
fn route_strips_listed_headers_and_renames_the_identity_header() {
    let legacy = Upstream::start("legacy");
    let plain = Upstream::start("plain");
    let gw = GatewayBuilder::new()
        .route_with(
            "legacy",
            "/legacy",
            legacy.addr(),
            &[
                ("strip_request_headers", "[\"x-test-auth-bypass\"]"),
                ("user_id_header", "\"internal-userId\""),
            ],
        )
        .route("plain", "/plain", plain.addr())
        .start();
    let (id, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/legacy/a", &token);

    let auth = bearer(&token);
    let forged = [
        ("Authorization", auth.as_str()),
        ("X-Test-Auth-Bypass", "1"),
        ("x_test_auth_bypass", "1"),
        ("internal-userid", "mallory"),
        ("Internal_UserId", "mallory"),
        ("x-user-id", "mallory"),
        ("X_User_Id", "mallory"),
        ("x-other", "kept"),
    ];
    let r = gw.request("GET", "/legacy/a", &forged, b"");
    assert_eq!(r.status, 200, "{r}");
    let seen = legacy.last();
    assert!(
        seen.header_values("x-test-auth-bypass").is_empty(),
        "strip_request_headers missed a spelling: {:?}",
        seen.headers
    );
    assert_eq!(
        seen.header_values("internal-userid"),
        ["alice"],
        "exactly one gateway-set internal-userid: {:?}",
        seen.headers
    );
    assert!(
        seen.header_values("x-user-id").is_empty(),
        "client x-user-id copies must be removed on a route with its own identity header: {:?}",
        seen.headers
    );
    assert_eq!(seen.single_header("x-token-id"), id.to_string());
    assert_eq!(seen.single_header("x-other"), "kept");
    assert!(seen.header_values("authorization").is_empty());

    // The rules belong to that route: elsewhere the default identity header is used, and a header not in
    // the gateway-wide rules passes.
    let r = gw.request("GET", "/plain/a", &forged, b"");
    assert_eq!(r.status, 200, "{r}");
    let seen = plain.last();
    assert_eq!(seen.header_values("x-user-id"), ["alice"], "{seen:?}");
    assert_eq!(
        seen.header_values("x-test-auth-bypass").len(),
        2,
        "{seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 4. Expiry
// ---------------------------------------------------------------------------------------------------------

#[test]
fn expires_in_token_works_then_is_refused_as_expired() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let created = gw.cli_json(&[
        "token",
        "create",
        "--user",
        "alice",
        "--label",
        "short",
        "--expires-in",
        "2s",
        "--json",
    ]);
    let id = created["id"].as_i64().expect("id");
    let token = created["token"].as_str().expect("token").to_owned();
    let expires_at = time_field(&created, "expires_at");
    assert_eq!(
        expires_at - time_field(&created, "created_at"),
        2,
        "{created}"
    );

    gw.wait_ok("/iot/x", &token);
    assert_eq!(up.last().single_header("x-user-id"), "alice");
    assert_eq!(gw.token_entry(id)["status"], "active");

    let (r, _) = time_until(
        &gw,
        "/iot/x",
        &token,
        401,
        Instant::now(),
        Duration::from_secs(10),
    );
    let refused_at = unix_now();
    let hits = up.hits();
    let description = assert_invalid_token(&r);
    assert!(description.contains("expired"), "{r}");
    assert!(
        r.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("expired")),
        "{r}"
    );
    assert!(
        refused_at >= expires_at,
        "refused at {refused_at}, before its expiry {expires_at}"
    );
    assert!(
        refused_at <= expires_at + 3,
        "refused at {refused_at}, long after its expiry {expires_at}"
    );
    assert_eq!(
        up.hits(),
        hits,
        "an expired token must not reach the upstream"
    );

    // Stays refused, and the listing says so.
    assert_eq!(gw.get_with_token("/iot/x", &token).status, 401);
    let entry = gw.token_entry(id);
    assert_eq!(entry["status"], "expired", "{entry}");
    assert_eq!(time_field(&entry, "expires_at"), expires_at, "{entry}");
}

#[test]
fn expires_at_in_the_past_is_refused_by_the_cli() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .build();
    let before = gw.token_list().len();
    let yesterday = tokengate::tokens::store::rfc3339(unix_now() - 86_400);
    for past in ["2001-01-01T00:00:00Z", yesterday.as_str()] {
        let out = gw.cli(&[
            "token",
            "create",
            "--user",
            "alice",
            "--label",
            "late",
            "--expires-at",
            past,
        ]);
        assert!(
            !out.status.success(),
            "--expires-at {past} accepted:\n{}",
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("not in the future"),
            "unclear message for --expires-at {past}:\n{}",
            describe(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("tg_"),
            "a token was printed:\n{}",
            describe(&out)
        );
    }
    assert_eq!(
        gw.token_list().len(),
        before,
        "a refused create stored a token"
    );
}

#[test]
fn expires_at_a_few_seconds_ahead_works_like_expires_in() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let at = unix_now() + 4;
    let at_text = tokengate::tokens::store::rfc3339(at);
    let created = gw.cli_json(&[
        "token",
        "create",
        "--user",
        "bob",
        "--label",
        "until",
        "--expires-at",
        &at_text,
        "--json",
    ]);
    assert_eq!(created["expires_at"], at_text.as_str(), "{created}");
    let id = created["id"].as_i64().expect("id");
    let token = created["token"].as_str().expect("token").to_owned();

    gw.wait_ok("/iot/x", &token);
    let (r, _) = time_until(
        &gw,
        "/iot/x",
        &token,
        401,
        Instant::now(),
        Duration::from_secs(12),
    );
    let refused_at = unix_now();
    assert!(assert_invalid_token(&r).contains("expired"), "{r}");
    assert!(
        refused_at >= at,
        "refused at {refused_at}, before --expires-at {at}"
    );
    assert_eq!(gw.token_entry(id)["status"], "expired");
}

// ---------------------------------------------------------------------------------------------------------
// 5. Rotation while the gateway serves
// ---------------------------------------------------------------------------------------------------------

#[test]
fn rotate_without_grace_refuses_the_old_secret_within_250ms() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (id, old) = gw.create_token_with("alice", "scale", &["--scope", TELEMETRY_SCOPE]);
    gw.wait_ok("/iot/x", &old);

    let rotated = cli_id_json(&gw, "rotate", id, &["--json"]);
    let returned = Instant::now();
    let new = rotated["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in rotate --json: {rotated}"))
        .to_owned();

    // Poll both secrets together: first 401 for the old one, first 200 for the new one.
    let mut old_refused: Option<(Duration, Duration, RawResponse)> = None;
    let mut new_accepted: Option<(Duration, Duration)> = None;
    let deadline = returned + Duration::from_secs(10);
    while old_refused.is_none() || new_accepted.is_none() {
        assert!(
            Instant::now() < deadline,
            "rotation not in effect after 10 s: old refused {:?}, new accepted {new_accepted:?}",
            old_refused.as_ref().map(|(_, at, _)| at)
        );
        if old_refused.is_none() {
            let sent = returned.elapsed();
            let r = gw.get_with_token("/iot/x", &old);
            let received = returned.elapsed();
            match r.status {
                401 => old_refused = Some((sent, received, r)),
                200 => {}
                _ => panic!("old secret after rotation: {r}"),
            }
        }
        if new_accepted.is_none() {
            let sent = returned.elapsed();
            let r = gw.get_with_token("/iot/x", &new);
            let received = returned.elapsed();
            match r.status {
                200 => new_accepted = Some((sent, received)),
                401 => {}
                _ => panic!("new secret after rotation: {r}"),
            }
        }
        std::thread::sleep(POLL);
    }
    let (old_sent, old_received, old_answer) = old_refused.unwrap();
    let (new_sent, new_received) = new_accepted.unwrap();
    eprintln!(
        "rotate without grace, after the CLI exited: old secret refused by {old_received:?} \
         (request sent at {old_sent:?}); new secret accepted by {new_received:?} (sent at {new_sent:?})"
    );
    assert_invalid_token(&old_answer);
    assert!(
        old_received <= SYNC_LIMIT + POLL,
        "old secret still accepted {old_received:?} after the rotation (limit {SYNC_LIMIT:?} + one poll)"
    );
    assert!(
        new_received <= SYNC_LIMIT + POLL,
        "new secret accepted only {new_received:?} after the rotation (limit {SYNC_LIMIT:?} + one poll)"
    );

    // Settled: the old one stays refused, the new one carries the same identity.
    assert_invalid_token(&gw.get_with_token("/iot/x", &old));
    assert_eq!(gw.get_with_token("/iot/x", &new).status, 200);
    let seen = up.last();
    assert_eq!(seen.single_header("x-user-id"), "alice");
    assert_eq!(seen.single_header("x-token-id"), id.to_string());
}

#[test]
fn rotate_with_grace_keeps_both_secrets_until_the_grace_ends() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (id, old) = gw.create_token("alice", "camera");
    gw.wait_ok("/iot/x", &old);

    let grace = Duration::from_secs(3);
    let cli_started = Instant::now();
    let rotated = cli_id_json(&gw, "rotate", id, &["--grace", "3s", "--json"]);
    let returned = Instant::now();
    let new = rotated["token"].as_str().expect("new token").to_owned();
    assert_ne!(new, old);

    // Right after the CLI returns the old secret still works, and the new one within the sync bound.
    let r = gw.get_with_token("/iot/x", &old);
    assert_eq!(
        r.status, 200,
        "old secret refused right after rotate --grace 3s: {r}"
    );
    let (_, new_after) = time_until(&gw, "/iot/x", &new, 200, returned, Duration::from_secs(10));
    eprintln!("rotate --grace 3s: new secret accepted {new_after:?} after the CLI exited");
    assert!(
        new_after <= SYNC_LIMIT + POLL,
        "new secret accepted only {new_after:?} after the rotation"
    );

    // Watch both until the old one stops: the new one must work on every poll.
    let mut old_stopped = None;
    let mut polls = 0;
    while old_stopped.is_none() {
        assert!(
            returned.elapsed() <= grace + Duration::from_secs(2),
            "old secret still accepted {:?} after a 3 s grace",
            returned.elapsed()
        );
        let r = gw.get_with_token("/iot/x", &old);
        let at = cli_started.elapsed();
        match r.status {
            200 => {}
            401 => old_stopped = Some((at, r)),
            _ => panic!("old secret during grace: {r}"),
        }
        let r = gw.get_with_token("/iot/x", &new);
        assert_eq!(r.status, 200, "new secret during the grace: {r}");
        polls += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (stopped_after, answer) = old_stopped.unwrap();
    eprintln!(
        "rotate --grace 3s: old secret refused {stopped_after:?} after the CLI started \
         ({:?} after it returned, {polls} polls)",
        stopped_after.saturating_sub(returned - cli_started)
    );
    assert_invalid_token(&answer);
    // The store keeps whole seconds: the grace ends at (rotation second + 3 s), so at least 2 s after the
    // CLI started.
    assert!(
        stopped_after >= grace - Duration::from_secs(1),
        "old secret stopped {stopped_after:?} after rotate --grace 3s started"
    );

    // After the grace: the old one stays refused, the new one keeps working.
    for _ in 0..3 {
        assert_eq!(gw.get_with_token("/iot/x", &old).status, 401);
        assert_eq!(gw.get_with_token("/iot/x", &new).status, 200);
    }
    assert_eq!(up.last().single_header("x-user-id"), "alice");
}

#[test]
fn rotate_keeps_id_user_label_scopes_expiry_and_use_history() {
    let up = Upstream::start("iot");
    // Use counts are only written on SIGTERM, so every use before and after the rotation must survive in
    // the gateway's memory.
    let mut gw = GatewayBuilder::new()
        .gateway("usage_flush_interval", "\"1h\"")
        .route("iot", "/iot", up.addr())
        .start();
    let (id, old) = gw.create_token_with(
        "alice",
        "entrance cam 2",
        &[
            "--scope",
            TELEMETRY_SCOPE,
            "--scope",
            "video:write",
            "--expires-in",
            "90d",
        ],
    );
    let before = gw.token_entry(id);

    let mut uses = 0;
    let mut count_ok = |token: &str| {
        let r = gw.get_with_token("/iot/x", token);
        if r.status == 200 {
            uses += 1;
        }
        r.status
    };
    assert!(poll_until(
        Duration::from_secs(10),
        Duration::from_millis(5),
        || count_ok(&old) == 200
    ));
    for _ in 0..4 {
        assert_eq!(count_ok(&old), 200);
    }

    let rotated = cli_id_json(&gw, "rotate", id, &["--json"]);
    let new = rotated["token"].as_str().expect("new token").to_owned();
    assert!(is_token_format(&new), "{rotated}");
    assert_ne!(new, old);
    for key in ["id", "user", "label", "scopes", "created_at", "expires_at"] {
        assert_eq!(
            rotated[key], before[key],
            "{key} changed by rotate: {rotated}"
        );
    }
    assert_eq!(rotated["status"], "active", "{rotated}");

    // Requests with the old secret still accepted before the sync count as uses of the same token.
    assert!(poll_until(
        Duration::from_secs(10),
        Duration::from_millis(5),
        || count_ok(&old) == 401
    ));
    assert!(poll_until(
        Duration::from_secs(10),
        Duration::from_millis(5),
        || count_ok(&new) == 200
    ));
    for _ in 0..2 {
        assert_eq!(count_ok(&new), 200);
    }
    assert_eq!(up.last().single_header("x-user-id"), "alice");

    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM exit: {status}\n{}", gw.logs());

    let after = gw.token_entry(id);
    for key in ["id", "user", "label", "scopes", "created_at", "expires_at"] {
        assert_eq!(after[key], before[key], "{key} changed by rotate: {after}");
    }
    assert_eq!(
        after["use_count"].as_i64(),
        Some(uses),
        "use count across the rotation (every 200 with the old or the new secret): {after}"
    );
    assert!(after["last_used_at"].is_string(), "{after}");
    assert_eq!(gw.token_list().len(), 1, "rotate must not add a token");
}

#[test]
fn rotate_refuses_revoked_and_unknown_tokens() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (id, token) = gw.create_token("alice", "lost phone");
    gw.wait_ok("/iot/x", &token);
    gw.revoke(id);
    // Revoke while serving (the bound itself is measured in tests/lifecycle_process.rs).
    let r = gw.wait_status("/iot/x", &token, 401);
    assert!(assert_invalid_token(&r).contains("revoked"), "{r}");

    let id_text = id.to_string();
    for args in [
        vec!["token", "rotate", id_text.as_str()],
        vec![
            "token",
            "rotate",
            id_text.as_str(),
            "--grace",
            "1m",
            "--json",
        ],
        vec!["token", "rotate", "999"],
    ] {
        let out = gw.cli(&args);
        assert!(
            !out.status.success(),
            "{args:?} succeeded:\n{}",
            describe(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("tg_"),
            "{args:?} printed a token:\n{}",
            describe(&out)
        );
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
    let entry = gw.token_entry(id);
    assert_eq!(entry["status"], "revoked", "{entry}");
    assert!(
        entry["rotated_at"].is_null(),
        "a refused rotation changed the token: {entry}"
    );
    assert_eq!(gw.get_with_token("/iot/x", &token).status, 401);
}

// ---------------------------------------------------------------------------------------------------------
// 6. The event log
// ---------------------------------------------------------------------------------------------------------

#[test]
fn show_lists_created_rotated_revoked_events_in_order() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let started = unix_now();
    let (id, _) = gw.create_token("alice", "scale");
    let (other, _) = gw.create_token("bob", "other");
    cli_id_json(&gw, "rotate", id, &["--grace", "1m", "--json"]);
    gw.revoke(id);
    let finished = unix_now();

    let shown = cli_id_json(&gw, "show", id, &["--json"]);
    assert_eq!(shown["id"], id, "{shown}");
    assert_eq!(shown["status"], "revoked", "{shown}");
    let events = shown["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array: {shown}"));
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default(),
                e["actor"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("created", "cli"), ("rotated", "cli"), ("revoked", "cli")],
        "{shown}"
    );
    let mut previous = 0;
    for event in events {
        let at = time_field(event, "at");
        assert!(
            (started - 1..=finished + 1).contains(&at),
            "event time outside the test: {event}"
        );
        assert!(at >= previous, "events out of order: {shown}");
        previous = at;
    }
    assert!(
        events[1]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("60s")),
        "rotated detail should name the grace: {shown}"
    );

    // Events belong to their token.
    let other_events = cli_id_json(&gw, "show", other, &["--json"]);
    assert_eq!(
        other_events["events"]
            .as_array()
            .map(|e| e.iter().map(|e| e["event"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("created")]),
        "{other_events}"
    );

    // The plain form prints an EVENTS section with the same events in order.
    let out = gw.cli(&["token", "show", &id.to_string()]);
    assert_success(&out, &["token", "show"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let section = text
        .split_once("EVENTS")
        .unwrap_or_else(|| panic!("no EVENTS section:\n{text}"))
        .1;
    let lines: Vec<&str> = section.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, kind) in lines.iter().zip(["created", "rotated", "revoked"]) {
        assert!(
            line.contains(kind) && line.contains("cli"),
            "expected a {kind} event by cli: {line:?}\n{text}"
        );
    }
    assert!(
        !text.contains("tg_"),
        "show must never print a secret:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 7. Schema upgrade in place
// ---------------------------------------------------------------------------------------------------------

#[test]
fn version_1_database_is_upgraded_in_place_and_keeps_working() {
    let up = Upstream::start("iot");
    let mut gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .build();
    let kept = tokengate::tokens::format::Token::generate();
    let revoked = tokengate::tokens::format::Token::generate();
    let created_at = unix_now() - 30 * 86_400;
    {
        let conn = rusqlite::Connection::open(gw.db_path()).expect("create a v1 database");
        conn.execute_batch(tokengate::tokens::store::sqlite::MIGRATIONS[0])
            .expect("migration 1");
        conn.execute_batch("PRAGMA user_version = 1")
            .expect("user_version");
        conn.execute(
            "INSERT INTO tokens (user_id, label, digest, created_at, rev) VALUES (?1, ?2, ?3, ?4, 1)",
            rusqlite::params!["old-user", "v1 device", &kept.digest().0[..], created_at],
        )
        .expect("insert v1 token");
        conn.execute(
            "INSERT INTO tokens (user_id, label, digest, created_at, revoked_at, rev)
             VALUES (?1, ?2, ?3, ?4, ?5, 2)",
            rusqlite::params![
                "old-user",
                "v1 revoked",
                &revoked.digest().0[..],
                created_at,
                created_at + 60
            ],
        )
        .expect("insert revoked v1 token");
    }
    gw.start();

    let r = gw.wait_ok("/iot/x", kept.as_str());
    let seen = up.last();
    assert_eq!(seen.single_header("x-user-id"), "old-user", "{r}");
    assert_eq!(seen.single_header("x-token-id"), "1");
    let r = gw.get_with_token("/iot/x", revoked.as_str());
    assert!(assert_invalid_token(&r).contains("revoked"), "{r}");

    let version: i64 = rusqlite::Connection::open(gw.db_path())
        .expect("open upgraded database")
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("user_version");
    assert_eq!(
        version,
        tokengate::tokens::store::sqlite::MIGRATIONS.len() as i64
    );

    let entry = gw.token_entry(1);
    assert_eq!(entry["status"], "active", "{entry}");
    assert_eq!(entry["scopes"], json!([]), "{entry}");
    assert!(entry["expires_at"].is_null(), "{entry}");
    assert_eq!(time_field(&entry, "created_at"), created_at, "{entry}");
    assert_eq!(gw.token_entry(2)["status"], "revoked");

    let shown = cli_id_json(&gw, "show", 1, &["--json"]);
    let events = shown["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{shown}");
    assert_eq!(events[0]["event"], "created", "{shown}");
    assert_eq!(time_field(&events[0], "at"), created_at, "{shown}");
    let out = gw.cli(&["token", "show", "1"]);
    assert_success(&out, &["token", "show", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.split_once("EVENTS")
            .is_some_and(|(_, events)| events.contains("created")),
        "{text}"
    );
    let shown = cli_id_json(&gw, "show", 2, &["--json"]);
    let kinds: Vec<&str> = shown["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(kinds, ["created", "revoked"], "{shown}");

    // New tokens on the upgraded database, rotated with grace while the gateway serves.
    let (id, first) =
        gw.create_token_with("new-user", "after upgrade", &["--scope", TELEMETRY_SCOPE]);
    assert_eq!(id, 3, "ids continue after the old rows");
    gw.wait_ok("/iot/x", &first);
    let rotated = cli_id_json(&gw, "rotate", id, &["--grace", "1m", "--json"]);
    let second = rotated["token"].as_str().expect("new token").to_owned();
    gw.wait_ok("/iot/x", &second);
    assert_eq!(up.last().single_header("x-user-id"), "new-user");
    assert_eq!(
        gw.get_with_token("/iot/x", &first).status,
        200,
        "the grace keeps the previous secret on an upgraded database"
    );

    // The migrated token can be rotated with grace too.
    let rotated = cli_id_json(&gw, "rotate", 1, &["--grace", "1m", "--json"]);
    let replacement = rotated["token"].as_str().expect("new token").to_owned();
    gw.wait_ok("/iot/x", &replacement);
    assert_eq!(up.last().single_header("x-user-id"), "old-user");
    assert_eq!(gw.get_with_token("/iot/x", kept.as_str()).status, 200);
    let shown = cli_id_json(&gw, "show", 1, &["--json"]);
    assert_eq!(shown["events"][1]["event"], "rotated", "{shown}");
    assert_eq!(shown["events"][1]["actor"], "cli", "{shown}");
}

// ---------------------------------------------------------------------------------------------------------
// 8. Path tricks
// ---------------------------------------------------------------------------------------------------------

#[test]
fn path_tricks_never_cross_from_one_scoped_route_to_another() {
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
    let (_, token) = gw.create_token_with("hive", "scale", &["--scope", TELEMETRY_SCOPE]);
    let (_, full) = gw.create_token("beekeeper", "phone");

    // The routes are live and scoped as expected.
    gw.wait_ok("/telemetry/x", &token);
    gw.wait_ok("/video/x", &full);
    assert_eq!(gw.get_with_token("/video/x", &token).status, 403);
    let (t_hits, v_hits) = (telemetry.hits(), video.hits());

    // Raw request lines: client libraries would normalise these before sending.
    let tricks = [
        "/telemetry/../video/x",
        "/telemetry/%2e%2e/video/x",
        "/telemetry/%2E%2E/video",
        "/telemetry%2fvideo",
        "/telemetry//video",
        "/telemetry/./x",
        "/telemetry/..%2fvideo",
        "/telemetry/%2e%2E/video/x",
        "/telemetry%2Fvideo/x",
        "/telemetry/..%2Fvideo",
        "/telemetry/%2e/x",
        "/telemetry/..",
        "/telemetry/x/../../video/x",
        "/telemetry/%5c..%5cvideo",
        "/telemetry/%5C..%5Cvideo",
    ];
    for tok in [&token, &full] {
        for path in tricks {
            let r = gw.get_with_token(path, tok);
            assert_eq!(r.status, 400, "{path}: {r}");
            assert_eq!(r.json_error(), "invalid_request", "{path}: {r}");
            assert_eq!(
                (telemetry.hits(), video.hits()),
                (t_hits, v_hits),
                "{path} reached an upstream"
            );
        }
    }
    // A raw backslash: pingora's parser or the gateway may answer, but always 400 and never an upstream.
    for path in ["/telemetry\\..\\video", "/telemetry\\video/x"] {
        let r = gw.get_with_token(path, &token);
        assert_eq!(r.status, 400, "{path}: {r}");
    }
    // Without a credential too: the path check comes first.
    for path in tricks {
        let r = gw.request("GET", path, &[], b"");
        assert_eq!(r.status, 400, "{path} without credential: {r}");
    }
    assert_eq!(
        telemetry.hits(),
        t_hits,
        "a trick reached the telemetry upstream"
    );
    assert_eq!(video.hits(), v_hits, "a trick reached the video upstream");

    // A query string is not part of the path check.
    gw.wait_ok("/telemetry/x?next=/../video/%2e%2e", &token);
    assert_eq!(telemetry.last().uri, "/telemetry/x?next=/../video/%2e%2e");
    assert_eq!(video.hits(), v_hits);
}
