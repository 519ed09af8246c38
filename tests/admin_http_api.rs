//! The admin JSON API against the real binary (issue 4): authentication (401/403), every endpoint's
//! success and error answers, that a bad request changes nothing, that changes reach this gateway's index
//! before the answer, the event log's actor, the OpenAPI document kept true, and the page's headers.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// One admin request with an optional bearer token and JSON body.
fn api(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> RawResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    raw_http(
        gw.admin_addr(),
        &build_request(method, path, &headers, body.unwrap_or("").as_bytes()),
    )
}

struct Setup {
    gw: Gateway,
    up: Upstream,
    admin: String,
    admin_id: i64,
}

fn setup() -> Setup {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (admin_id, admin) = gw.create_token_with("ops", "console", &["--scope", "admin"]);
    assert!(
        poll_until(Duration::from_secs(5), Duration::from_millis(5), || api(
            &gw,
            "GET",
            "/api/tokens",
            Some(&admin),
            None
        )
        .status
            == 200),
        "admin token never accepted"
    );
    Setup {
        gw,
        up,
        admin,
        admin_id,
    }
}

fn list(s: &Setup) -> Value {
    let r = api(&s.gw, "GET", "/api/tokens", Some(&s.admin), None);
    assert_eq!(r.status, 200, "{r}");
    r.json()
}

const TOKEN_FIELDS: [&str; 11] = [
    "id",
    "user",
    "label",
    "scopes",
    "created_at",
    "expires_at",
    "revoked_at",
    "rotated_at",
    "last_used_at",
    "use_count",
    "status",
];

fn assert_token_shape(v: &Value) {
    for f in TOKEN_FIELDS {
        assert!(v.get(f).is_some(), "field {f} missing in {v}");
    }
    assert!(v.get("digest").is_none(), "no digest may be listed: {v}");
}

#[test]
fn authentication_is_required_and_admin_scope_is_explicit() {
    let s = setup();
    let none = api(&s.gw, "GET", "/api/tokens", None, None);
    assert_eq!(none.status, 401, "{none}");
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"tokengate\"")
    );
    let bad = api(&s.gw, "GET", "/api/tokens", Some("tg_garbage"), None);
    assert_eq!(bad.status, 401);
    assert!(bad
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    let (_, full) = s.gw.create_token("alice", "phone");
    let (_, scoped) =
        s.gw.create_token_with("bob", "scale", &["--scope", "telemetry:write"]);
    for t in [&full, &scoped] {
        assert!(poll_until(
            Duration::from_secs(5),
            Duration::from_millis(5),
            || { api(&s.gw, "GET", "/api/tokens", Some(t), None).status == 403 }
        ));
        let r = api(
            &s.gw,
            "POST",
            "/api/tokens",
            Some(t),
            Some(r#"{"user":"x","label":"y"}"#),
        );
        assert_eq!(r.status, 403, "{r}");
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope"));
    }
    // Health and metrics stay open on the (loopback) admin listener.
    assert_eq!(s.gw.admin_get("/healthz").status, 200);
    assert_eq!(s.gw.admin_get("/metrics").status, 200);
}

#[test]
fn list_matches_the_cli_fields_and_filters_by_user() {
    let s = setup();
    let (_, alice_token) = s.gw.create_token("alice@example.org", "phone");
    s.gw.create_token("bob", "scale");
    let all = list(&s);
    let all = all.as_array().expect("array");
    assert_eq!(all.len(), 3);
    let cli = s.gw.token_list();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&all[0]),
        keys(&cli[0]),
        "API and CLI list the same fields"
    );
    all.iter().for_each(assert_token_shape);
    let r = api(
        &s.gw,
        "GET",
        "/api/tokens?user=alice%40example.org",
        Some(&s.admin),
        None,
    );
    let only = r.json();
    assert_eq!(only.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(only[0]["user"], "alice@example.org");
    assert!(
        !r.text().contains(&alice_token),
        "the plaintext is never listed"
    );
    assert!(
        !r.text().contains(&sha256_hex(alice_token.as_bytes())),
        "no digest is listed"
    );
}

#[test]
fn create_returns_the_plaintext_once_and_the_gateway_honours_it_at_once() {
    let s = setup();
    let r = api(
        &s.gw,
        "POST",
        "/api/tokens",
        Some(&s.admin),
        Some(
            r#"{"user":"carol","label":"entrance cam","expires_in":"90d","scopes":["telemetry:write"]}"#,
        ),
    );
    assert_eq!(r.status, 201, "{r}");
    let v = r.json();
    assert_token_shape(&v);
    let token = v["token"].as_str().expect("token").to_string();
    assert!(is_token_format(&token), "{token}");
    assert_eq!(v["scopes"], json!(["telemetry:write"]));
    let expires = parse_rfc3339_utc(v["expires_at"].as_str().unwrap()).unwrap();
    assert!((expires - unix_now() - 90 * 86400).abs() < 60);
    // Applied to this gateway's index before the answer: no waiting.
    let through = s.gw.get_with_token("/iot/x", &token);
    assert_eq!(through.status, 200, "{through}");
    assert_eq!(s.up.last().single_header("x-user-id"), "carol");
    // Shown once: neither the list nor the token's page carries it.
    let id = v["id"].as_i64().unwrap();
    let one = api(
        &s.gw,
        "GET",
        &format!("/api/tokens/{id}"),
        Some(&s.admin),
        None,
    );
    assert!(!one.text().contains(&token) && !list(&s).to_string().contains(&token));
}

#[test]
fn bad_create_requests_are_refused_and_change_nothing() {
    let s = setup();
    let before = list(&s);
    let long_label = format!(r#"{{"user":"u","label":"{}"}}"#, "x".repeat(101));
    let big = format!(r#"{{"user":"u","label":"{}"}}"#, "x".repeat(70 * 1024));
    let cases: Vec<(&str, u16, &str)> = vec![
        (r#"{"user":"u","label":"#, 400, "invalid_json"),
        (
            r#"{"user":"u","label":"l","colour":"red"}"#,
            400,
            "invalid_json",
        ),
        (r#"{"label":"l"}"#, 400, "invalid_json"),
        (r#"{"user":"u"}"#, 400, "invalid_json"),
        (r#"{"user":"u","label":""}"#, 400, "invalid_request"),
        (&long_label, 400, "invalid_request"),
        (r#"{"user":"u","label":"a\nb"}"#, 400, "invalid_request"),
        (
            r#"{"user":"u","label":"bell\u0007"}"#,
            400,
            "invalid_request",
        ),
        (r#"{"user":"a b","label":"l"}"#, 400, "invalid_request"),
        (
            r#"{"user":"u","label":"l","scopes":["has space"]}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"user":"u","label":"l","expires_in":"soon"}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"user":"u","label":"l","expires_in":"1d","expires_at":"2030-01-01T00:00:00Z"}"#,
            400,
            "invalid_request",
        ),
        (&big, 413, "payload_too_large"),
        ("null", 400, "invalid_request"),
    ];
    for (body, status, error) in cases {
        let r = api(&s.gw, "POST", "/api/tokens", Some(&s.admin), Some(body));
        assert_eq!(r.status, status, "{}: {r}", &body[..body.len().min(80)]);
        assert_eq!(r.json_error(), error, "{}", &body[..body.len().min(80)]);
        assert!(r.json()["detail"].is_string());
    }
    let text = raw_http(
        s.gw.admin_addr(),
        &build_request(
            "POST",
            "/api/tokens",
            &[
                ("Authorization", &format!("Bearer {}", s.admin)),
                ("Content-Type", "text/plain"),
            ],
            br#"{"user":"u","label":"l"}"#,
        ),
    );
    assert_eq!(text.status, 415, "{text}");
    // The admin token's own use count moves with every call; everything else must be as before.
    let summary = |v: &Value| -> Vec<(Value, Value, Value, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].clone(),
                    t["user"].clone(),
                    t["label"].clone(),
                    t["status"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(summary(&list(&s)), summary(&before), "nothing changed");
}

#[test]
fn get_rotate_and_revoke_one_token() {
    let s = setup();
    let (id, first) = s.gw.create_token("dave", "hive 9");
    let actor = format!("admin:{}", s.admin_id);

    let one = api(
        &s.gw,
        "GET",
        &format!("/api/tokens/{id}"),
        Some(&s.admin),
        None,
    );
    assert_eq!(one.status, 200, "{one}");
    assert_token_shape(&one.json());
    assert_eq!(one.json()["events"][0]["actor"], "cli");
    for (path, status) in [
        ("/api/tokens/999", 404),
        ("/api/tokens/abc", 404),
        ("/api/tokens/1/nope", 404),
    ] {
        let r = api(&s.gw, "GET", path, Some(&s.admin), None);
        assert_eq!(r.status, status, "{path}: {r}");
        assert_eq!(r.json_error(), "not_found");
    }

    // Rotate with grace: both secrets work; then without grace: the previous one stops at once.
    let r = api(
        &s.gw,
        "POST",
        &format!("/api/tokens/{id}/rotate"),
        Some(&s.admin),
        Some(r#"{"grace":"1m"}"#),
    );
    assert_eq!(r.status, 200, "{r}");
    let second = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(s.gw.get_with_token("/iot/x", &first).status, 200);
    assert_eq!(s.gw.get_with_token("/iot/x", &second).status, 200);
    let r = api(
        &s.gw,
        "POST",
        &format!("/api/tokens/{id}/rotate"),
        Some(&s.admin),
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    let third = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        s.gw.get_with_token("/iot/x", &second).status,
        401,
        "no grace: refused at once"
    );
    assert_eq!(s.gw.get_with_token("/iot/x", &first).status, 401);
    assert_eq!(s.gw.get_with_token("/iot/x", &third).status, 200);
    let r = api(
        &s.gw,
        "POST",
        &format!("/api/tokens/{id}/rotate"),
        Some(&s.admin),
        Some(r#"{"grace":"whenever"}"#),
    );
    assert_eq!(
        (r.status, r.json_error().as_str()),
        (400, "invalid_request"),
        "{r}"
    );
    let r = api(
        &s.gw,
        "POST",
        "/api/tokens/999/rotate",
        Some(&s.admin),
        None,
    );
    assert_eq!(r.status, 404, "{r}");

    // Revoke: refused by this gateway in the very next request; repeating changes nothing.
    let r = api(
        &s.gw,
        "DELETE",
        &format!("/api/tokens/{id}"),
        Some(&s.admin),
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["status"], "revoked");
    for _ in 0..5 {
        assert_eq!(s.gw.get_with_token("/iot/x", &third).status, 401);
    }
    let again = api(
        &s.gw,
        "DELETE",
        &format!("/api/tokens/{id}"),
        Some(&s.admin),
        None,
    );
    assert_eq!(
        (again.status, again.json()["status"].as_str()),
        (200, Some("revoked")),
        "{again}"
    );
    assert_eq!(
        api(&s.gw, "DELETE", "/api/tokens/999", Some(&s.admin), None).status,
        404
    );
    let r = api(
        &s.gw,
        "POST",
        &format!("/api/tokens/{id}/rotate"),
        Some(&s.admin),
        None,
    );
    assert_eq!(
        (r.status, r.json_error().as_str()),
        (409, "conflict"),
        "{r}"
    );

    let events = api(
        &s.gw,
        "GET",
        &format!("/api/tokens/{id}"),
        Some(&s.admin),
        None,
    )
    .json()["events"]
        .clone();
    let seen: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("created", "cli"),
        ("rotated", &*actor),
        ("rotated", &*actor),
        ("revoked", &*actor),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(seen, want);
}

#[test]
fn wrong_methods_and_paths() {
    let s = setup();
    for (method, path, status) in [
        ("PUT", "/api/tokens/1", 405),
        ("DELETE", "/api/tokens", 405),
        ("GET", "/api/tokens/1/rotate", 405),
        ("GET", "/api/other", 404),
        ("POST", "/healthz", 405),
    ] {
        let r = api(&s.gw, method, path, Some(&s.admin), None);
        assert_eq!(r.status, status, "{method} {path}: {r}");
        assert!(r.json()["error"].is_string());
    }
}

/// Resolves `#/components/schemas/X` references one level (enough for this document).
fn required_fields(doc: &Value, schema: &Value) -> Vec<String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        return required_fields(doc, &doc["components"]["schemas"][name]);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        return all.iter().flat_map(|s| required_fields(doc, s)).collect();
    }
    schema["required"]
        .as_array()
        .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn openapi_document_is_kept_true() {
    let s = setup();
    let r = s.gw.admin_get("/api/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let (id, _) = s.gw.create_token("erin", "sensor");
    let mut exercised = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let concrete = path.replace("{id}", &id.to_string());
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/api/tokens") => Some(r#"{"user":"frank","label":"doc check"}"#),
                ("post", _) => Some(r#"{"grace":"1m"}"#),
                _ => None,
            };
            // Revoke last, so that rotate still finds an active token.
            if method == "delete" {
                continue;
            }
            let r = api(
                &s.gw,
                &method.to_uppercase(),
                &concrete,
                Some(&s.admin),
                body,
            );
            let ok_status = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .find(|k| k.starts_with('2'))
                .unwrap()
                .clone();
            assert_eq!(r.status.to_string(), ok_status, "{method} {path}: {r}");
            let schema = &op["responses"][&ok_status]["content"]["application/json"]["schema"];
            let item_schema = if schema["type"] == "array" {
                &schema["items"]
            } else {
                schema
            };
            let value = r.json();
            let sample = if value.is_array() {
                value[0].clone()
            } else {
                value
            };
            for field in required_fields(&doc, item_schema) {
                assert!(
                    sample.get(&field).is_some(),
                    "{method} {path}: documented field {field} missing in {sample}"
                );
            }
            // Every documented error status is a status the handler can give: 401 without credentials.
            if op["responses"].get("401").is_some() {
                assert_eq!(
                    api(&s.gw, &method.to_uppercase(), &concrete, None, body).status,
                    401
                );
            }
            exercised.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    let r = api(
        &s.gw,
        "DELETE",
        &format!("/api/tokens/{id}"),
        Some(&s.admin),
        None,
    );
    assert_eq!(r.status, 200);
    assert!(doc["paths"]["/api/tokens/{id}"]["delete"]["responses"]["200"].is_object());
    exercised.push("DELETE /api/tokens/{id}".into());
    exercised.sort();
    // Conversely, every endpoint the API serves is documented.
    let served = [
        "DELETE /api/tokens/{id}",
        "GET /api/tokens",
        "GET /api/tokens/{id}",
        "POST /api/tokens",
        "POST /api/tokens/{id}/rotate",
    ];
    assert_eq!(exercised, served);
}

#[test]
fn page_is_served_with_a_strict_content_security_policy() {
    let s = setup();
    let page = s.gw.admin_get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    let html = page.text();
    assert!(!html.contains(" style="), "no inline style attributes");
    for chunk in html.split("<script").skip(1) {
        let open_end = chunk.find('>').unwrap();
        let inner = &chunk[open_end + 1..chunk.find("</script>").unwrap()];
        assert!(inner.trim().is_empty(), "inline script content: {inner}");
        assert!(chunk[..open_end].contains("src="), "script without src");
    }
    let js = s.gw.admin_get("/assets/app.js");
    assert!(js
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    let css = s.gw.admin_get("/assets/app.css");
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
}
