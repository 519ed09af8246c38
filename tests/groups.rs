//! Groups and licenses over real sockets and processes: a group's role grants a route's scope to all its
//! members' tokens and loses it on removal or deletion; `required_group` / `required_license` refuse
//! with 403 naming what is missing before the upstream is asked, on the gateway and on the verify
//! listener; a license past its end stops granting with no write; seats are never oversold, also with
//! two `license assign` processes at once (SQLite and PostgreSQL); `x-token-groups` and
//! `x-token-licenses` are forwarded and signed, client copies stripped in every spelling; and no
//! self-service caller can put itself in a group or take a seat, by any verb or field.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BEEKEEPER: &str = "[\"hives:read\"]";
const ADMIN_ROLE: &str = "[\"admin\"]";

fn builder(upstream: &Upstream) -> GatewayBuilder {
    GatewayBuilder::new()
        .gateway("sync_interval", "\"50ms\"")
        .section("roles", "beekeeper", BEEKEEPER)
        .section("roles", "ops", ADMIN_ROLE)
        .route_with(
            "hives",
            "/hives",
            upstream.addr(),
            &[("required_scope", "\"hives:read\"")],
        )
        .route_with(
            "apiary",
            "/apiary",
            upstream.addr(),
            &[
                ("required_group", "\"apiary-42\""),
                ("forward_scopes", "true"),
            ],
        )
        .route_with(
            "video",
            "/video",
            upstream.addr(),
            &[
                ("required_license", "\"video-analytics\""),
                ("forward_scopes", "true"),
                ("sign_secret", "\"0123456789abcdef0123456789abcdef-secret\""),
            ],
        )
        .route("plain", "/plain", upstream.addr())
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_ok(gw: &Gateway, args: &[&str]) -> String {
    ok(&gw.cli(args), &args.join(" "))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[test]
fn a_groups_role_grants_the_routes_scope_to_every_member_token_and_goes_with_the_membership() {
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).start();
    // Scoped tokens (a token without scopes has full access, which a group cannot widen).
    let (_, alice_cam) = gw.create_token_with("alice", "camera", &["--scope", "other"]);
    let (_, alice_hive) = gw.create_token_with("alice", "hive", &["--scope", "other"]);
    let (bob_id, bob) = gw.create_token_with("bob", "camera", &["--scope", "other"]);
    gw.wait_status("/hives/1", &alice_cam, 403);
    cli_ok(
        &gw,
        &["group", "create", "apiary-42", "--role", "beekeeper"],
    );
    cli_ok(&gw, &["group", "add", "apiary-42", "--user", "alice"]);
    // The CLI returns once the gateway applied it: no wait needed.
    assert_eq!(gw.get_with_token("/hives/1", &alice_cam).status, 200);
    assert_eq!(gw.get_with_token("/hives/1", &alice_hive).status, 200);
    assert_eq!(gw.get_with_token("/hives/1", &bob).status, 403);
    // A token created later for a member user is in the group too.
    let (_, alice_new) = gw.create_token_with("alice", "new", &["--scope", "other"]);
    gw.wait_ok("/hives/1", &alice_new);
    // One token by id; it keeps the membership through a rotation without grace.
    cli_ok(
        &gw,
        &["group", "add", "apiary-42", "--token", &bob_id.to_string()],
    );
    assert_eq!(gw.get_with_token("/hives/1", &bob).status, 200);
    let rotated = gw.cli_json(&["token", "rotate", &bob_id.to_string(), "--json"]);
    let bob2 = rotated["token"].as_str().unwrap().to_owned();
    gw.wait_ok("/hives/1", &bob2);
    assert_eq!(gw.get_with_token("/hives/1", &bob).status, 401);
    // Removal: the user's tokens lose the scope at once; bob's token keeps it.
    cli_ok(&gw, &["group", "remove", "apiary-42", "--user", "alice"]);
    assert_eq!(gw.get_with_token("/hives/1", &alice_cam).status, 403);
    assert_eq!(gw.get_with_token("/hives/1", &alice_new).status, 403);
    assert_eq!(gw.get_with_token("/hives/1", &bob2).status, 200);
    // A deleted group's role is gone with it.
    cli_ok(&gw, &["group", "delete", "apiary-42"]);
    assert_eq!(gw.get_with_token("/hives/1", &bob2).status, 403);
    // A group of the same name made again does not bring old members back.
    cli_ok(
        &gw,
        &["group", "create", "apiary-42", "--role", "beekeeper"],
    );
    assert_eq!(gw.get_with_token("/hives/1", &bob2).status, 403);
    let shown = gw.cli_json(&["group", "show", "apiary-42", "--json"]);
    assert_eq!(shown["members"], json!([]));
}

#[test]
fn a_group_role_never_grants_admin() {
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).start();
    let (_, t) = gw.create_token_with("carol", "device", &["--scope", "other"]);
    cli_ok(&gw, &["group", "create", "ops-team", "--role", "ops"]);
    cli_ok(&gw, &["group", "add", "ops-team", "--user", "carol"]);
    let r = raw_http(
        gw.admin_addr(),
        &build_request("GET", "/api/tokens", &[("Authorization", &bearer(&t))], b""),
    );
    assert_eq!(r.status, 403, "{r}");
}

#[test]
fn required_group_and_license_answer_403_naming_what_is_missing_before_the_upstream() {
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).start();
    let (id, t) = gw.create_token("dave", "camera");
    gw.wait_ok("/plain/x", &t);
    let before = upstream.hits();
    let r = gw.get_with_token("/apiary/x", &t);
    assert_eq!(r.status, 403, "{r}");
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(r.json()["missing"], "group:apiary-42");
    assert!(r.header("www-authenticate").is_none(), "{r}");
    let r = gw.get_with_token("/video/x", &t);
    assert_eq!(r.status, 403, "{r}");
    assert_eq!(r.json()["missing"], "license:video-analytics");
    assert_eq!(upstream.hits(), before, "the upstream was asked");
    // Another spelling of the name is another group.
    cli_ok(&gw, &["group", "create", "apiary-4"]);
    cli_ok(&gw, &["group", "add", "apiary-4", "--user", "dave"]);
    assert_eq!(gw.get_with_token("/apiary/x", &t).status, 403);
    let out = gw.cli(&["group", "create", "Apiary-42"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lower case"));
    // In the group and holding the license: through.
    cli_ok(&gw, &["group", "create", "apiary-42"]);
    cli_ok(
        &gw,
        &["group", "add", "apiary-42", "--token", &id.to_string()],
    );
    cli_ok(
        &gw,
        &["license", "create", "video-analytics", "--seats", "10"],
    );
    cli_ok(
        &gw,
        &["license", "assign", "video-analytics", "--user", "dave"],
    );
    assert_eq!(gw.get_with_token("/apiary/x", &t).status, 200);
    assert_eq!(gw.get_with_token("/video/x", &t).status, 200);
    // A revoked seat stops at once.
    cli_ok(
        &gw,
        &["license", "revoke", "video-analytics", "--user", "dave"],
    );
    assert_eq!(gw.get_with_token("/video/x", &t).status, 403);
    // The audit log names the actor and the detail of every change.
    let shown = gw.cli_json(&["license", "show", "video-analytics", "--json"]);
    let events: Vec<(&str, &str)> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [("created", "cli"), ("assigned", "cli"), ("revoked", "cli")]
    );
    assert_eq!(shown["events"][1]["detail"], "user dave (seat 1 of 10)");
}

#[test]
fn a_license_past_valid_until_stops_granting_without_any_write() {
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).start();
    let (_, t) = gw.create_token("erin", "camera");
    let end = now() + 3;
    cli_ok(
        &gw,
        &[
            "license",
            "create",
            "video-analytics",
            "--seats",
            "1",
            "--valid-until",
            &rfc3339(end),
        ],
    );
    cli_ok(
        &gw,
        &["license", "assign", "video-analytics", "--user", "erin"],
    );
    let r = gw.get_with_token("/video/x", &t);
    if now() < end {
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(
            upstream.last().single_header("x-token-licenses"),
            "video-analytics"
        );
    }
    let events_before = gw.cli_json(&["license", "show", "video-analytics", "--json"])["events"]
        .as_array()
        .unwrap()
        .len();
    // No write from here on: the clock alone ends it.
    let r = gw.wait_status("/video/x", &t, 403);
    assert!(now() >= end, "refused before its end");
    assert_eq!(r.json()["missing"], "license:video-analytics");
    let shown = gw.cli_json(&["license", "show", "video-analytics", "--json"]);
    assert_eq!(shown["valid"], false);
    assert_eq!(shown["events"].as_array().unwrap().len(), events_before);
    assert_eq!(shown["seats_used"], 1);
}

/// Two `license assign` processes at once for the last seat, `rounds` times: one seat each time.
fn race_for_the_last_seat(gw: &Gateway, rounds: usize) {
    for round in 0..rounds {
        let name = format!("season-{round}");
        cli_ok(gw, &["license", "create", &name, "--seats", "1"]);
        let spawn = |user: &str| {
            Command::new(BIN)
                .arg("--config")
                .arg(gw.config_path())
                .args(["license", "assign", &name, "--user", user])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn tokengate")
        };
        let (a, b) = (spawn("ana"), spawn("ben"));
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "round {round}: {outs:?}");
        let lost = outs.iter().find(|o| !o.status.success()).unwrap();
        let err = String::from_utf8_lossy(&lost.stderr);
        assert!(err.contains("all 1 seats are taken"), "{err}");
        let shown = gw.cli_json(&["license", "show", &name, "--json"]);
        assert_eq!(shown["seats_used"], 1, "{shown}");
        assert_eq!(shown["holders"].as_array().unwrap().len(), 1, "{shown}");
    }
}

#[test]
fn seats_are_never_oversold_with_two_processes_assigning_at_once_on_sqlite() {
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).build();
    race_for_the_last_seat(&gw, 8);
    // And one by one: the third is refused with a clear error, the second holder stays.
    cli_ok(&gw, &["license", "create", "pair", "--seats", "2"]);
    cli_ok(&gw, &["license", "assign", "pair", "--user", "a"]);
    cli_ok(&gw, &["license", "assign", "pair", "--user", "b"]);
    let out = gw.cli(&["license", "assign", "pair", "--user", "c"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("license \"pair\": all 2 seats are taken"),
        "{err}"
    );
    // Assigning a holder again takes no second seat.
    cli_ok(&gw, &["license", "assign", "pair", "--user", "a"]);
    let list = gw.cli_json(&["license", "list", "--json"]);
    let pair = list
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "pair")
        .unwrap();
    assert_eq!(pair["seats_used"], 2);
}

#[test]
fn seats_are_never_oversold_with_two_processes_assigning_at_once_on_postgres() {
    let Some(admin) = common::pg::admin_url() else {
        return;
    };
    let db = common::pg::fresh_database(&admin);
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).store_url(db.url()).build();
    cli_ok(&gw, &["store", "migrate"]);
    race_for_the_last_seat(&gw, 8);
}

#[test]
fn groups_and_licenses_reach_a_gateway_on_postgres() {
    let Some(admin) = common::pg::admin_url() else {
        return;
    };
    let db = common::pg::fresh_database(&admin);
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).store_url(db.url()).start();
    let (id, t) = gw.create_token_with("fay", "camera", &["--scope", "other"]);
    gw.wait_status("/hives/x", &t, 403);
    cli_ok(
        &gw,
        &["group", "create", "apiary-42", "--role", "beekeeper"],
    );
    cli_ok(
        &gw,
        &["group", "add", "apiary-42", "--token", &id.to_string()],
    );
    gw.wait_ok("/hives/x", &t);
    gw.wait_ok("/apiary/x", &t);
    cli_ok(
        &gw,
        &["license", "create", "video-analytics", "--seats", "1"],
    );
    cli_ok(
        &gw,
        &["license", "assign", "video-analytics", "--user", "fay"],
    );
    gw.wait_ok("/video/x", &t);
    cli_ok(
        &gw,
        &["group", "remove", "apiary-42", "--token", &id.to_string()],
    );
    gw.wait_status("/hives/x", &t, 403);
    cli_ok(
        &gw,
        &["license", "revoke", "video-analytics", "--user", "fay"],
    );
    gw.wait_status("/video/x", &t, 403);
}

#[test]
fn groups_and_licenses_are_forwarded_signed_and_client_copies_are_stripped_everywhere() {
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).start();
    let (id, t) = gw.create_token("gus", "camera");
    cli_ok(&gw, &["group", "create", "apiary-42"]);
    cli_ok(&gw, &["group", "create", "association"]);
    cli_ok(&gw, &["group", "add", "association", "--user", "gus"]);
    cli_ok(
        &gw,
        &["group", "add", "apiary-42", "--token", &id.to_string()],
    );
    cli_ok(
        &gw,
        &["license", "create", "video-analytics", "--seats", "5"],
    );
    cli_ok(&gw, &["license", "create", "audio", "--seats", "5"]);
    cli_ok(
        &gw,
        &[
            "license",
            "assign",
            "video-analytics",
            "--token",
            &id.to_string(),
        ],
    );
    cli_ok(&gw, &["license", "assign", "audio", "--user", "gus"]);
    let forged = [
        ("X-Token-Groups", "admins"),
        ("x_token_groups", "admins"),
        ("X.TOKEN.GROUPS", "admins"),
        ("xtokengroups", "admins"),
        ("X-Token-Licenses", "everything"),
        ("x_token_licenses", "everything"),
        ("X-TOKEN_LICENSES", "everything"),
    ];
    let auth = bearer(&t);
    for target in ["/video/x", "/apiary/x", "/plain/x"] {
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend_from_slice(&forged);
        let r = gw.request("GET", target, &headers, b"");
        assert_eq!(r.status, 200, "{target}: {r}");
        let seen = upstream.last();
        // No client copy in any spelling reached the upstream (the gateway's own values differ).
        let copies: Vec<&(String, String)> = seen
            .headers
            .iter()
            .filter(|(_, v)| v == "admins" || v == "everything")
            .collect();
        assert!(
            copies.is_empty(),
            "{target}: client copies reached the upstream: {copies:?}"
        );
        if target == "/plain/x" {
            // No forward_scopes: neither field at all.
            assert!(seen.header_values("x-token-groups").is_empty());
            assert!(seen.header_values("x-token-licenses").is_empty());
        } else {
            assert_eq!(
                seen.single_header("x-token-groups"),
                "apiary-42 association"
            );
            assert_eq!(
                seen.single_header("x-token-licenses"),
                "audio video-analytics"
            );
        }
        if target == "/video/x" {
            // The signature covers them (v3): a changed groups line does not verify.
            use tokengate::gateway::signing::{verify, Signed};
            let sig = seen.single_header("x-tokengate-signature").to_owned();
            let signed = |groups: &'static [u8]| Signed {
                user: b"gus",
                token_id: b"",
                scopes: b"*",
                roles: b"",
                groups,
                licenses: b"audio video-analytics",
                method: b"GET",
                path_and_query: b"/video/x",
            };
            let token_id = seen.header_values("x-token-id");
            let token_id = token_id.first().copied().unwrap_or("").as_bytes().to_vec();
            let s = Signed {
                token_id: &token_id,
                ..signed(b"apiary-42 association")
            };
            assert_eq!(
                verify(
                    b"0123456789abcdef0123456789abcdef-secret",
                    &sig,
                    &s,
                    now(),
                    300
                ),
                Ok(())
            );
            let forged = Signed {
                token_id: &token_id,
                ..signed(b"admins")
            };
            assert!(verify(
                b"0123456789abcdef0123456789abcdef-secret",
                &sig,
                &forged,
                now(),
                300
            )
            .is_err());
        }
    }
}

fn admin_call(
    gw: &Gateway,
    method: &str,
    target: &str,
    token: &str,
    body: Option<&Value>,
) -> RawResponse {
    let auth = bearer(token);
    let text = body.map(Value::to_string).unwrap_or_default();
    let mut headers = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    raw_http(
        gw.admin_addr(),
        &build_request(method, target, &headers, text.as_bytes()),
    )
}

#[test]
fn self_service_cannot_put_itself_in_a_group_or_take_a_seat_by_any_verb_or_field() {
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).start();
    let (self_id, me) = gw.create_token_with("hal", "account", &["--scope", "tokens:self"]);
    let (dev_id, _) = gw.create_token_with("hal", "device", &["--scope", "other"]);
    let (_, admin) = gw.create_token_with("ops", "console", &["--scope", "admin"]);
    cli_ok(
        &gw,
        &["group", "create", "apiary-42", "--role", "beekeeper"],
    );
    cli_ok(&gw, &["group", "create", "other-team"]);
    cli_ok(&gw, &["group", "add", "other-team", "--user", "ivy"]);
    cli_ok(
        &gw,
        &["license", "create", "video-analytics", "--seats", "3"],
    );
    let me_m = json!({"user": "hal"});
    let writes: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/api/groups".into(),
            Some(json!({"name": "mine", "roles": ["beekeeper"]})),
        ),
        (
            "POST",
            "/api/groups/apiary-42/members".into(),
            Some(me_m.clone()),
        ),
        (
            "POST",
            "/api/groups/apiary-42/members".into(),
            Some(json!({"token_id": self_id})),
        ),
        (
            "POST",
            "/api/groups/apiary-42/members".into(),
            Some(json!({"token_id": dev_id})),
        ),
        (
            "PUT",
            "/api/groups/apiary-42/members".into(),
            Some(me_m.clone()),
        ),
        (
            "PATCH",
            "/api/groups/apiary-42".into(),
            Some(json!({"roles": ["ops"]})),
        ),
        (
            "PUT",
            "/api/groups/apiary-42".into(),
            Some(json!({"name": "apiary-42"})),
        ),
        ("DELETE", "/api/groups/other-team".into(), None),
        ("DELETE", "/api/groups/other-team/members/ivy".into(), None),
        ("DELETE", "/api/groups/apiary-42/members/hal".into(), None),
        (
            "POST",
            "/api/licenses".into(),
            Some(json!({"name": "free", "seats": 9})),
        ),
        (
            "POST",
            "/api/licenses/video-analytics/holders".into(),
            Some(me_m.clone()),
        ),
        (
            "POST",
            "/api/licenses/video-analytics/holders".into(),
            Some(json!({"token_id": dev_id})),
        ),
        (
            "PUT",
            "/api/licenses/video-analytics/holders/hal".into(),
            None,
        ),
        (
            "PATCH",
            "/api/licenses/video-analytics".into(),
            Some(json!({"seats": 100})),
        ),
        (
            "DELETE",
            format!("/api/licenses/video-analytics/holders/token:{dev_id}"),
            None,
        ),
    ];
    for (method, target, body) in &writes {
        let r = admin_call(&gw, method, target, &me, body.as_ref());
        assert_eq!(r.status, 403, "{method} {target}: {r}");
    }
    // Fields on the token itself: refused as unknown, nothing changed.
    for body in [
        json!({"groups": ["apiary-42"]}),
        json!({"licenses": ["video-analytics"]}),
        json!({"label": "x", "group": "apiary-42"}),
    ] {
        let r = admin_call(
            &gw,
            "PATCH",
            &format!("/api/tokens/{dev_id}"),
            &me,
            Some(&body),
        );
        assert_eq!(r.status, 400, "PATCH {body}: {r}");
        let r = admin_call(
            &gw,
            "POST",
            "/api/tokens",
            &me,
            Some(
                &json!({"label": "new", "groups": ["apiary-42"], "licenses": ["video-analytics"]}),
            ),
        );
        assert_eq!(r.status, 400, "{r}");
    }
    let g = gw.cli_json(&["group", "show", "apiary-42", "--json"]);
    assert_eq!(g["members"], json!([]));
    let l = gw.cli_json(&["license", "show", "video-analytics", "--json"]);
    assert_eq!(l["seats_used"], 0);
    assert!(
        gw.cli_json(&["group", "list", "--json"])
            .as_array()
            .unwrap()
            .len()
            == 2
    );

    // Reads: only the groups and licenses of its own user, only its own memberships.
    cli_ok(&gw, &["group", "add", "apiary-42", "--user", "hal"]);
    cli_ok(&gw, &["group", "add", "apiary-42", "--user", "ivy"]);
    cli_ok(
        &gw,
        &[
            "license",
            "assign",
            "video-analytics",
            "--token",
            &dev_id.to_string(),
        ],
    );
    cli_ok(
        &gw,
        &["license", "assign", "video-analytics", "--user", "ivy"],
    );
    let r = admin_call(&gw, "GET", "/api/groups", &me, None);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.json(),
        json!([{"name": "apiary-42", "roles": ["beekeeper"], "members": [{"user": "hal"}],
                "created_at": r.json()[0]["created_at"]}])
    );
    let r = admin_call(&gw, "GET", "/api/licenses/video-analytics", &me, None);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["holders"], json!([{"token_id": dev_id}]));
    assert!(r.json().get("events").is_none(), "{r}");
    // Another's group answers as one that does not exist.
    let theirs = admin_call(&gw, "GET", "/api/groups/other-team", &me, None);
    let none = admin_call(&gw, "GET", "/api/groups/no-such", &me, None);
    assert_eq!((theirs.status, none.status), (404, 404));
    assert_eq!(theirs.json()["error"], none.json()["error"]);
    // An admin sees everything and may write.
    let r = admin_call(&gw, "GET", "/api/groups/apiary-42", &admin, None);
    assert_eq!(r.json()["members"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r.json()["events"][0]["actor"], "cli");
    let r = admin_call(
        &gw,
        "DELETE",
        "/api/groups/apiary-42/members/hal",
        &admin,
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    let r = admin_call(&gw, "GET", "/api/groups/apiary-42", &admin, None);
    let last = r.json()["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event"], "member_removed");
    assert!(
        last["actor"].as_str().unwrap().starts_with("admin:"),
        "{last}"
    );
}

#[test]
fn the_admin_api_manages_groups_and_licenses_and_the_gateway_applies_it_before_answering() {
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).start();
    let (_, admin) = gw.create_token_with("ops", "console", &["--scope", "admin"]);
    let (id, t) = gw.create_token_with("jo", "camera", &["--scope", "other"]);
    gw.wait_status("/hives/x", &t, 403);
    let post = |target: &str, body: Value| admin_call(&gw, "POST", target, &admin, Some(&body));
    assert_eq!(
        post(
            "/api/groups",
            json!({"name": "apiary-42", "roles": ["beekeeper"]})
        )
        .status,
        201
    );
    assert_eq!(
        post("/api/groups", json!({"name": "apiary-42"})).status,
        409
    );
    assert_eq!(
        post("/api/groups", json!({"name": "Apiary-42"})).status,
        400
    );
    assert_eq!(
        post("/api/groups", json!({"name": "x", "roles": ["nope"]})).status,
        400
    );
    assert_eq!(
        post("/api/groups", json!({"name": "x", "extra": 1})).status,
        400
    );
    let r = post("/api/groups/apiary-42/members", json!({"token_id": id}));
    assert_eq!(
        (r.status, r.json()["added"].clone()),
        (200, json!(true)),
        "{r}"
    );
    // Applied before the answer: the very next request is decided on it.
    assert_eq!(gw.get_with_token("/hives/x", &t).status, 200);
    assert_eq!(
        post(
            "/api/groups/apiary-42/members",
            json!({"user": "jo", "token_id": id})
        )
        .status,
        400
    );
    assert_eq!(
        post(
            "/api/groups/apiary-42/members",
            json!({"token_id": 999_999})
        )
        .status,
        404
    );
    assert_eq!(
        post("/api/groups/nope/members", json!({"user": "jo"})).status,
        404
    );
    assert_eq!(
        post(
            "/api/licenses",
            json!({"name": "video-analytics", "seats": 1})
        )
        .status,
        201
    );
    assert_eq!(
        post(
            "/api/licenses/video-analytics/holders",
            json!({"user": "jo"})
        )
        .status,
        200
    );
    assert_eq!(gw.get_with_token("/video/x", &t).status, 200);
    let r = post(
        "/api/licenses/video-analytics/holders",
        json!({"user": "kim"}),
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (409, json!("seats_taken")),
        "{r}"
    );
    let r = admin_call(
        &gw,
        "DELETE",
        &format!("/api/groups/apiary-42/members/token:{id}"),
        &admin,
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(gw.get_with_token("/hives/x", &t).status, 403);
    let r = admin_call(
        &gw,
        "DELETE",
        "/api/licenses/video-analytics/holders/jo",
        &admin,
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(gw.get_with_token("/video/x", &t).status, 403);
    let r = admin_call(
        &gw,
        "DELETE",
        "/api/licenses/video-analytics/holders/jo",
        &admin,
        None,
    );
    assert_eq!(r.status, 404, "{r}");
    let r = admin_call(&gw, "DELETE", "/api/groups/apiary-42", &admin, None);
    assert_eq!(r.status, 200, "{r}");
    let r = admin_call(&gw, "GET", "/api/groups", &admin, None);
    assert_eq!(r.json(), json!([]));
    let r = admin_call(&gw, "DELETE", "/api/licenses/video-analytics", &admin, None);
    assert_eq!(r.status, 405, "{r}");
}

#[test]
fn the_verify_listener_holds_required_group_and_license() {
    let upstream = Upstream::start("app");
    let verify = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = builder(&upstream)
        .section("verify", "listen", &format!("\"{verify}\""))
        .section("verify", "trusted_proxies", "[\"127.0.0.1/32\"]")
        .start();
    let (_, t) = gw.create_token("lee", "camera");
    gw.wait_ok("/plain/x", &t);
    let ask = |uri: &str| {
        let auth = bearer(&t);
        raw_http(
            verify,
            &build_request(
                "GET",
                "/verify",
                &[
                    ("X-Forwarded-Uri", uri),
                    ("X-Forwarded-Method", "GET"),
                    ("Authorization", &auth),
                ],
                b"",
            ),
        )
    };
    let r = ask("/apiary/x");
    assert_eq!(r.status, 403, "{r}");
    assert_eq!(r.json()["missing"], "group:apiary-42");
    let r = ask("/video/x");
    assert_eq!(r.status, 403, "{r}");
    assert_eq!(r.json()["missing"], "license:video-analytics");
    cli_ok(&gw, &["group", "create", "apiary-42"]);
    cli_ok(&gw, &["group", "add", "apiary-42", "--user", "lee"]);
    let r = ask("/apiary/x");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("x-token-groups"), Some("apiary-42"));
    assert_eq!(r.header("x-token-licenses"), Some(""));
}

/// The `sh` block under "## Groups and licenses" in README.md, run as written (`tokengate` standing for
/// the binary with this test's configuration), on a store where token 1 is beekeeper-42's camera.
#[test]
fn the_readme_groups_and_licenses_commands_run_as_written() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let after = &readme[readme.find("## Groups and licenses").expect("the section")..];
    let start = after.find("```sh\n").expect("an sh block") + "```sh\n".len();
    let end = after[start..].find("```").expect("the block's end");
    let block = &after[start..start + end];
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).build();
    let (id, _) = gw.create_token("beekeeper-42", "camera");
    assert_eq!(id, 1);
    let cmd = format!("{BIN} --config {}", gw.config_path().display());
    let mut lines = 0;
    let script: String = block
        .lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("tokengate ") {
                lines += 1;
                format!("{cmd} {rest}\n")
            } else {
                assert!(
                    l.starts_with('#') || l.is_empty(),
                    "not a tokengate command: {l}"
                );
                format!("{l}\n")
            }
        })
        .collect();
    assert!(lines >= 10, "{block}");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .output()
        .unwrap();
    let stdout = ok(&out, "the README's block");
    assert!(stdout.contains("roles:   beekeeper"), "{stdout}");
    assert!(stdout.contains("  user beekeeper-42"), "{stdout}");
    assert!(stdout.contains("1/10"), "{stdout}");
    assert!(
        stdout.contains("\"valid_until\":\"2027-10-31T23:59:59Z\""),
        "{stdout}"
    );
    let g = gw.cli_json(&["group", "show", "imkerverein-nord", "--json"]);
    assert_eq!(g["members"], json!([{"token_id": 1}]));
    let l = gw.cli_json(&["license", "show", "video-analytics", "--json"]);
    assert_eq!(l["seats_used"], 0);
}

/// `store copy` carries groups and licenses with their members and holders: the copied gateway grants
/// what the original did (SQLite to SQLite, and to PostgreSQL when there is one); a second copy has
/// nothing to do.
#[test]
fn store_copy_carries_groups_and_licenses_with_their_members() {
    let upstream = Upstream::start("app");
    let gw = builder(&upstream).build();
    let (id, t) = gw.create_token_with("gil", "camera", &["--scope", "other"]);
    let (_, t2) = gw.create_token_with("hal", "camera", &["--scope", "other"]);
    cli_ok(
        &gw,
        &["group", "create", "apiary-42", "--role", "beekeeper"],
    );
    cli_ok(
        &gw,
        &["group", "add", "apiary-42", "--token", &id.to_string()],
    );
    cli_ok(&gw, &["group", "add", "apiary-42", "--user", "hal"]);
    let until = rfc3339(now() + 86_400);
    cli_ok(
        &gw,
        &[
            "license",
            "create",
            "video-analytics",
            "--seats",
            "2",
            "--valid-until",
            &until,
        ],
    );
    cli_ok(
        &gw,
        &["license", "assign", "video-analytics", "--user", "gil"],
    );
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("copy.db");
    let mut targets = vec![(
        format!("sqlite:{}", sqlite.display()),
        builder(&upstream).store_path(&sqlite),
    )];
    let pg = common::pg::admin_url().map(|admin| common::pg::fresh_database(&admin));
    if let Some(db) = &pg {
        targets.push((db.url().to_owned(), builder(&upstream).store_url(db.url())));
    }
    for (to, target) in targets {
        let out = cli_ok(&gw, &["store", "copy", "--to", &to]);
        assert!(out.contains("1 groups and 1 licenses"), "{out}");
        let again = cli_ok(&gw, &["store", "copy", "--to", &to]);
        assert!(again.contains("nothing to do"), "{again}");
        let moved = target.start();
        moved.wait_ok("/hives/x", &t);
        moved.wait_ok("/apiary/x", &t2);
        moved.wait_ok("/video/x", &t);
        assert_eq!(moved.get_with_token("/video/x", &t2).status, 403);
        let l = moved.cli_json(&["license", "show", "video-analytics", "--json"]);
        assert_eq!(
            (l["seats"].as_i64(), l["seats_used"].as_i64()),
            (Some(2), Some(1)),
            "{l}"
        );
        assert_eq!(l["valid_until"], until.as_str(), "{l}");
    }
}

/// The account header (the platform's account page behind its own login, from a trusted proxy) is a
/// self-service caller too: it reads its own user's groups and licenses only, and never puts itself in
/// a group or takes a seat, by any verb.
#[test]
fn the_account_header_reads_its_own_groups_and_never_writes_them() {
    let upstream = Upstream::start("app");
    let gw = builder(&upstream)
        .section("admin", "trusted_user_header", "\"x-forwarded-user\"")
        .section("admin", "trusted_proxies", "[\"127.0.0.1\"]")
        .start();
    gw.create_token_with("hal", "camera", &["--scope", "other"]);
    cli_ok(
        &gw,
        &["group", "create", "apiary-42", "--role", "beekeeper"],
    );
    cli_ok(&gw, &["group", "add", "apiary-42", "--user", "hal"]);
    cli_ok(&gw, &["group", "create", "other-team"]);
    cli_ok(&gw, &["group", "add", "other-team", "--user", "ivy"]);
    cli_ok(
        &gw,
        &["license", "create", "video-analytics", "--seats", "3"],
    );
    let call = |method: &str, target: &str, body: Option<Value>| {
        let text = body.map(|b| b.to_string()).unwrap_or_default();
        let mut h = vec![("X-Forwarded-User", "hal")];
        // Account-mode writes must be JSON (else 415 before anything else): the rule is what is tested.
        if method != "GET" {
            h.push(("Content-Type", "application/json"));
        }
        raw_http(
            gw.admin_addr(),
            &build_request(method, target, &h, text.as_bytes()),
        )
    };
    let listed = call("GET", "/api/groups", None);
    assert_eq!(listed.status, 200, "{listed}");
    let names: Vec<String> = listed.json().as_array().map_or_else(Vec::new, |a| {
        a.iter()
            .filter_map(|g| g["name"].as_str().map(str::to_owned))
            .collect()
    });
    assert_eq!(names, ["apiary-42"], "{listed}");
    assert_eq!(call("GET", "/api/groups/other-team", None).status, 404);
    for (method, target, body) in [
        (
            "POST",
            "/api/groups/other-team/members",
            Some(json!({"user": "hal"})),
        ),
        (
            "POST",
            "/api/licenses/video-analytics/holders",
            Some(json!({"user": "hal"})),
        ),
        (
            "POST",
            "/api/groups",
            Some(json!({"name": "mine", "roles": ["beekeeper"]})),
        ),
        ("DELETE", "/api/groups/apiary-42/members/hal", None),
        ("DELETE", "/api/groups/apiary-42", None),
    ] {
        let r = call(method, target, body);
        assert!(
            r.status == 403 || r.status == 401,
            "{method} {target} as the account header: {r}"
        );
    }
    let other = gw.cli_json(&["group", "show", "other-team", "--json"]);
    assert_eq!(other["members"], json!([{"user": "ivy"}]), "{other}");
    let lic = gw.cli_json(&["license", "show", "video-analytics", "--json"]);
    assert_eq!(lic["seats_used"], 0, "{lic}");
    let mine = gw.cli_json(&["group", "show", "apiary-42", "--json"]);
    assert_eq!(mine["members"], json!([{"user": "hal"}]), "{mine}");
}
