//! Integration tests of the admin JSON API (issue 4) against the real `tokengate serve` binary on loopback.
//!
//! Every gateway here runs with `sync_interval = "60s"`, so whenever a change made through the API shows on
//! the proxy listener at once, it is because the API applied it to this gateway's index before answering
//! (not because the periodic sync happened to run). The admin token and the non-admin tokens are made with
//! the CLI before the gateway starts, so the index loads them at start-up.
//!
//! Covered:
//! - authentication: no credential (401 + `WWW-Authenticate: Bearer realm="tokengate"`), a bad token
//!   (401 `invalid_token`), a token without the `admin` scope, full-access or scoped (403
//!   `insufficient_scope`), for every endpoint; refused calls change nothing;
//! - `GET /api/tokens[?user=U]`: the CLI's `token list --json` fields, filtering (percent-encoded too), no
//!   secret or digest anywhere in the body;
//! - `POST /api/tokens`: 201 with the plaintext once, honoured by the proxy at once, `scopes`, `expires_in`
//!   and `expires_at` honoured; every bad request a 4xx `{"error","detail"}` that changes nothing;
//! - `GET /api/tokens/{id}` with its events and actors; `POST .../rotate` with and without grace;
//!   `DELETE` immediate and idempotent; 404/409 answers; wrong methods 405; unknown paths 404;
//! - the OpenAPI document kept true: every documented operation reaches its handler with its documented
//!   success status, every response the tests receive from a documented endpoint is validated against the
//!   document (status listed, body matching its schema), every endpoint the tests call is documented;
//! - the page: strict Content-Security-Policy, assets with the right content types, no inline script or
//!   style in the HTML.
//!
//! Calls to documented endpoints go through [`Env::api`] / [`Env::api_raw`], which check that the endpoint
//! is in [`ENDPOINTS`] and in the served OpenAPI document and validate the answer against that document.
//! Only requests meant to be off the document (wrong methods, unknown paths, non-numeric ids) and the
//! status-coverage test, which collects its findings itself, use [`Env::send`] directly.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// Every API endpoint these tests call on purpose (method, OpenAPI path template). The OpenAPI test checks
/// that this is exactly the set of operations in the document; [`Env::api`] refuses any other endpoint.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/api/tokens"),
    ("POST", "/api/tokens"),
    ("GET", "/api/tokens/{id}"),
    ("DELETE", "/api/tokens/{id}"),
    ("PATCH", "/api/tokens/{id}"),
    ("POST", "/api/tokens/{id}/rotate"),
    ("GET", "/api/routes"),
    ("GET", "/api/whoami"),
    ("POST", "/api/leaks"),
    ("GET", "/api/leaks"),
    ("GET", "/api/groups"),
    ("POST", "/api/groups"),
    ("GET", "/api/groups/{name}"),
    ("DELETE", "/api/groups/{name}"),
    ("POST", "/api/groups/{name}/members"),
    ("DELETE", "/api/groups/{name}/members/{member}"),
    ("GET", "/api/licenses"),
    ("POST", "/api/licenses"),
    ("GET", "/api/licenses/{name}"),
    ("POST", "/api/licenses/{name}/holders"),
    ("DELETE", "/api/licenses/{name}/holders/{member}"),
];

/// The fields of a token in `token list --json` and in the API.
const TOKEN_FIELDS: [&str; 17] = [
    "id",
    "user",
    "label",
    "scopes",
    "roles",
    "created_at",
    "expires_at",
    "revoked_at",
    "rotated_at",
    "last_used_at",
    "use_count",
    "status",
    "bound_cert_sha256",
    "rate_limit",
    "quota",
    "quota_used",
    "quota_resets_at",
];

/// Keys that would carry a secret and must never appear in a token listing.
const SECRET_KEYS: [&str; 6] = [
    "token",
    "digest",
    "prev_digest",
    "secret",
    "hash",
    "plaintext",
];

/// A running gateway with an admin token and two non-admin tokens made by the CLI before it started.
struct Env {
    gw: Gateway,
    _up: Upstream,
    /// The OpenAPI document as served by this gateway.
    doc: Value,
    admin: String,
    admin_id: i64,
    /// A full-access token without scopes (`token create` without `--scope`).
    full: String,
    full_id: i64,
    /// A token with scope `telemetry:write` only.
    scoped: String,
    scoped_id: i64,
}

fn start() -> Env {
    let up = Upstream::start("iot");
    let mut gw = GatewayBuilder::new()
        .gateway("sync_interval", "\"60s\"")
        .route("iot", "/iot", up.addr())
        .route_with(
            "video",
            "/video",
            up.addr(),
            &[("required_scope", "\"video:write\"")],
        )
        .build();
    // `token create --user ops --label console --json --scope admin`.
    let (admin_id, admin) = gw.create_token_with("ops", "console", &["--scope", "admin"]);
    let (full_id, full) = gw.create_token("alice", "phone");
    let (scoped_id, scoped) =
        gw.create_token_with("bob", "sensor", &["--scope", "telemetry:write"]);
    gw.start();
    let doc = gw.admin_get("/api/openapi.json");
    assert_eq!(doc.status, 200, "{doc}");
    let env = Env {
        doc: doc.json(),
        gw,
        _up: up,
        admin,
        admin_id,
        full,
        full_id,
        scoped,
        scoped_id,
    };
    // The index is loaded at start-up; give it a moment in case serving begins before the first load.
    let ready = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        env.send("GET", "/api/tokens", Some(&env.admin), None, b"")
            .status
            == 200
    });
    assert!(ready, "the CLI-made admin token was never accepted");
    env
}

/// The OpenAPI path template of a request target: the query dropped, a numeric id segment as `{id}`.
fn template_of(target: &str) -> String {
    let path = target.split('?').next().unwrap_or_default();
    match path.strip_prefix("/api/tokens/") {
        Some(rest) => {
            let mut segments: Vec<&str> = rest.split('/').collect();
            if segments[0].parse::<i64>().is_ok() {
                segments[0] = "{id}";
            }
            format!("/api/tokens/{}", segments.join("/"))
        }
        None => {
            for c in ["/api/groups/", "/api/licenses/"] {
                if let Some(rest) = path.strip_prefix(c) {
                    let mut segments: Vec<&str> = rest.split('/').collect();
                    segments[0] = "{name}";
                    if segments.len() == 3 {
                        segments[2] = "{member}";
                    }
                    return format!("{c}{}", segments.join("/"));
                }
            }
            path.to_owned()
        }
    }
}

impl Env {
    /// One raw request to the admin listener with an optional bearer token and content type.
    fn send(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> RawResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        if let Some(ct) = content_type {
            headers.push(("Content-Type", ct));
        }
        raw_http(
            self.gw.admin_addr(),
            &build_request(method, target, &headers, body),
        )
    }

    /// A call to a documented endpoint with the admin token; `body` is sent as `application/json`.
    /// Checks the endpoint is one of [`ENDPOINTS`] and validates the answer against the OpenAPI document.
    fn api(&self, method: &str, target: &str, body: Option<&Value>) -> RawResponse {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let ct = body.map(|_| "application/json");
        self.api_raw(method, target, Some(&self.admin), ct, &bytes)
    }

    /// Like [`Self::api`] with any credential, content type and body bytes.
    fn api_raw(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> RawResponse {
        let template = template_of(target);
        assert!(
            ENDPOINTS.contains(&(method, template.as_str())),
            "test bug: {method} {template} is not in ENDPOINTS"
        );
        let r = self.send(method, target, token, content_type, body);
        if let Err(problem) = check_against_doc(&self.doc, method, &template, &r) {
            panic!(
                "{method} {target}: the answer does not match the OpenAPI document: {problem}\n{r}"
            );
        }
        r
    }

    /// `GET /api/tokens` as a JSON array.
    fn list(&self, query: &str) -> Vec<Value> {
        let r = self.api("GET", &format!("/api/tokens{query}"), None);
        assert_eq!(r.status, 200, "{r}");
        match r.json() {
            Value::Array(items) => items,
            other => panic!("GET /api/tokens is not an array: {other}"),
        }
    }

    /// `GET /api/tokens/{id}`.
    fn get(&self, id: i64) -> Value {
        let r = self.api("GET", &format!("/api/tokens/{id}"), None);
        assert_eq!(r.status, 200, "{r}");
        r.json()
    }

    /// `POST /api/tokens`, asserting 201; returns `(id, token, whole answer)`.
    fn create(&self, body: &Value) -> (i64, String, Value) {
        let r = self.api("POST", "/api/tokens", Some(body));
        assert_eq!(r.status, 201, "create {body}: {r}");
        let v = r.json();
        let id = v["id"].as_i64().unwrap_or_else(|| panic!("no id: {v}"));
        let token = v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {v}"))
            .to_owned();
        (id, token, v)
    }

    /// Everything the API can change, without the usage counters (every admin call is a use of the
    /// admin token): each token's lifecycle fields and its events, via the API; and the database's view via
    /// `token list --json`.
    fn snapshot(&self) -> (Vec<Value>, Vec<Value>) {
        let strip = |mut t: Value| {
            if let Some(o) = t.as_object_mut() {
                o.remove("use_count");
                o.remove("last_used_at");
            }
            t
        };
        let api: Vec<Value> = self
            .list("")
            .into_iter()
            .map(|t| {
                let id = t["id"].as_i64().expect("id");
                strip(self.get(id))
            })
            .collect();
        let cli = self.gw.token_list().into_iter().map(strip).collect();
        (api, cli)
    }

    /// Status of `GET /iot/check` on the proxy listener with `token`.
    fn proxy(&self, token: &str) -> u16 {
        self.gw.get_with_token("/iot/check", token).status
    }

    /// Asserts the proxy answers `want` for `token` on several consecutive requests, without waiting.
    fn assert_proxy(&self, token: &str, want: u16, what: &str) {
        for attempt in 0..5 {
            let r = self.gw.get_with_token("/iot/check", token);
            assert_eq!(
                r.status, want,
                "{what}: proxy request {attempt} answered {} instead of {want}: {r}",
                r.status
            );
        }
    }
}

/// Asserts an API error: the status, a JSON `{"error","detail"}` body with string fields, and (if given)
/// the error code.
fn assert_error(r: &RawResponse, status: u16, code: Option<&str>, what: &str) {
    assert_eq!(r.status, status, "{what}: expected {status}, got {r}");
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{what}: error without a JSON content type: {r}"
    );
    let v = r.json();
    assert!(
        v["error"].is_string() && v["detail"].is_string(),
        "{what}: error body is not {{\"error\",\"detail\"}}: {r}"
    );
    assert!(
        !v["detail"].as_str().unwrap_or_default().is_empty(),
        "{what}: empty detail: {r}"
    );
    if let Some(code) = code {
        assert_eq!(v["error"], code, "{what}: error code: {r}");
    }
}

/// A well-formed token (right prefix, length and alphabet) that was never issued.
fn never_issued_token() -> String {
    format!("tg_{}", "A".repeat(49))
}

// ---------------------------------------------------------------------------------------------------------
// OpenAPI checking
// ---------------------------------------------------------------------------------------------------------

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {r}"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(doc, target)
        }
        None => v,
    }
}

/// A small JSON Schema check covering what the document uses: `$ref`, `allOf`, `type`, `required`,
/// `properties`, `items`, `enum`, `nullable`, `format: date-time` and the token `pattern`.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(doc, s, value, at, errors);
        }
    }
    let Some(ty) = schema.get("type").and_then(Value::as_str) else {
        return;
    };
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    match ty {
        "object" => {
            let Some(obj) = value.as_object() else {
                errors.push(format!("{at}: not an object: {value}"));
                return;
            };
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().expect("required names are strings");
                if !obj.contains_key(r) {
                    errors.push(format!("{at}: required field {r:?} missing"));
                }
            }
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    if let Some(v) = obj.get(k) {
                        validate(doc, s, v, &format!("{at}.{k}"), errors);
                    }
                }
            }
        }
        "array" => match value.as_array() {
            Some(items) => {
                for (i, v) in items.iter().enumerate() {
                    validate(doc, &schema["items"], v, &format!("{at}[{i}]"), errors);
                }
            }
            None => errors.push(format!("{at}: not an array: {value}")),
        },
        "string" => {
            let Some(s) = value.as_str() else {
                errors.push(format!("{at}: not a string: {value}"));
                return;
            };
            if let Some(allowed) = schema["enum"].as_array() {
                if !allowed.iter().any(|a| a == value) {
                    errors.push(format!("{at}: {s:?} not one of {allowed:?}"));
                }
            }
            if schema["format"] == "date-time" && parse_rfc3339_utc(s).is_none() {
                errors.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
            }
            match schema["pattern"].as_str() {
                Some("^tg_[0-9A-Za-z]{49}$") if !is_token_format(s) => {
                    errors.push(format!("{at}: {s:?} does not match ^tg_[0-9A-Za-z]{{49}}$"))
                }
                Some("^tg_[0-9A-Za-z]{49}$") | None => {}
                Some(other) => panic!("test bug: pattern {other} not handled by validate()"),
            }
        }
        "integer" => {
            if !value.is_i64() {
                errors.push(format!("{at}: not an integer: {value}"));
            }
        }
        "boolean" => {
            if !value.is_boolean() {
                errors.push(format!("{at}: not a boolean: {value}"));
            }
        }
        other => panic!("test bug: type {other} not handled by validate()"),
    }
}

/// The documented answers of one operation: status → response object (references resolved).
fn documented_responses<'a>(
    doc: &'a Value,
    method: &str,
    template: &str,
) -> Result<&'a serde_json::Map<String, Value>, String> {
    let op = doc["paths"][template]
        .get(method.to_ascii_lowercase())
        .ok_or_else(|| format!("{method} {template} is not in the OpenAPI document"))?;
    op["responses"]
        .as_object()
        .ok_or_else(|| format!("{method} {template} documents no responses"))
}

/// Checks a response against the document: its status is documented for the operation, and its JSON body
/// matches the documented schema.
fn check_against_doc(
    doc: &Value,
    method: &str,
    template: &str,
    r: &RawResponse,
) -> Result<(), String> {
    let responses = documented_responses(doc, method, template)?;
    let documented = responses.get(&r.status.to_string()).ok_or_else(|| {
        format!(
            "status {} is not documented for {method} {template} (documented: {:?})",
            r.status,
            responses.keys().collect::<Vec<_>>()
        )
    })?;
    let documented = resolve(doc, documented);
    if let Some(schema) = documented.pointer("/content/application~1json/schema") {
        let ct = r.header("content-type").unwrap_or_default();
        if !ct.starts_with("application/json") {
            return Err(format!("content type {ct:?}, documented application/json"));
        }
        let body: Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("body is not JSON ({e}): {:?}", r.text()))?;
        let mut errors = Vec::new();
        validate(doc, schema, &body, "$", &mut errors);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
    }
    Ok(())
}

/// Every (METHOD, path) operation of the document.
fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths object") {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                ops.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    ops
}

// ---------------------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------------------

#[test]
fn every_endpoint_requires_a_token_with_the_admin_scope() {
    let env = start();
    let (target_id, target, _) = env.create(&json!({"user": "carol", "label": "target"}));
    let before = env.snapshot();
    let create = json!({"user": "mallory", "label": "sneaky"}).to_string();
    let calls: Vec<(&str, String, &[u8])> = vec![
        ("GET", "/api/tokens".to_owned(), b""),
        ("GET", "/api/tokens?user=carol".to_owned(), b""),
        ("POST", "/api/tokens".to_owned(), create.as_bytes()),
        ("GET", format!("/api/tokens/{target_id}"), b""),
        ("POST", format!("/api/tokens/{target_id}/rotate"), b""),
        ("DELETE", format!("/api/tokens/{target_id}"), b""),
        ("GET", "/api/routes".to_owned(), b""),
    ];
    for (method, target_path, body) in &calls {
        let what = format!("{method} {target_path}");
        let ct = (!body.is_empty()).then_some("application/json");

        let none = env.api_raw(method, target_path, None, ct, body);
        assert_error(&none, 401, None, &format!("{what} without credential"));
        assert_eq!(
            none.header("www-authenticate"),
            Some("Bearer realm=\"tokengate\""),
            "{what} without credential: {none}"
        );

        // Another scheme counts as no bearer credential.
        let auth = format!("Basic {}", "b3BzOnNlY3JldA==");
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(ct) = ct {
            headers.push(("Content-Type", ct));
        }
        let basic = raw_http(
            env.gw.admin_addr(),
            &build_request(method, target_path, &headers, body),
        );
        assert_eq!(basic.status, 401, "{what} with Basic: {basic}");

        for bad in [never_issued_token(), "garbage".to_owned()] {
            let r = env.api_raw(method, target_path, Some(&bad), ct, body);
            assert_error(
                &r,
                401,
                Some("invalid_token"),
                &format!("{what} with {bad:?}"),
            );
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer realm=\"tokengate\"")
                    && challenge.contains("error=\"invalid_token\""),
                "{what} with a bad token: challenge {challenge:?}"
            );
        }

        for (name, token) in [
            ("full-access token without scopes", &env.full),
            ("token with scope telemetry:write", &env.scoped),
        ] {
            let r = env.api_raw(method, target_path, Some(token), ct, body);
            assert_error(
                &r,
                403,
                Some("insufficient_scope"),
                &format!("{what} with a {name}"),
            );
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.contains("error=\"insufficient_scope\"")
                    && challenge.contains("scope=\"admin\""),
                "{what} with a {name}: challenge {challenge:?}"
            );
        }
    }
    assert_eq!(
        env.snapshot(),
        before,
        "refused calls changed the token set"
    );
    env.assert_proxy(&target, 200, "the target of refused revoke/rotate calls");
    // The refused tokens still work on the proxy (the API's 401/403 are not counted against them).
    env.assert_proxy(&env.full, 200, "full-access token");

    // And the admin token itself passes everywhere.
    for (method, target_path, body) in &calls {
        let ct = (!body.is_empty()).then_some("application/json");
        let r = env.api_raw(method, target_path, Some(&env.admin), ct, body);
        assert!(
            r.status == 200 || r.status == 201,
            "{method} {target_path} with the admin token: {r}"
        );
    }
}

#[test]
fn an_admin_token_revoked_through_the_api_is_refused_at_once() {
    let env = start();
    let (second_id, second, _) = env.create(&json!({
        "user": "ops", "label": "second console", "scopes": ["admin"]
    }));
    // An admin token minted by the API works on the API at once.
    let r = env.api_raw("GET", "/api/tokens", Some(&second), None, b"");
    assert_eq!(r.status, 200, "{r}");
    // It revokes itself; the very next call with it is refused.
    let r = env.api_raw(
        "DELETE",
        &format!("/api/tokens/{second_id}"),
        Some(&second),
        None,
        b"",
    );
    assert_eq!(r.status, 200, "{r}");
    for attempt in 0..5 {
        let r = env.api_raw("GET", "/api/tokens", Some(&second), None, b"");
        assert_error(
            &r,
            401,
            Some("invalid_token"),
            &format!("revoked admin token, attempt {attempt}"),
        );
    }
    let events = &env.get(second_id)["events"];
    assert_eq!(events[1]["event"], "revoked", "{events}");
    assert_eq!(
        events[1]["actor"],
        format!("admin:{second_id}"),
        "the actor is the revoking token itself: {events}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// GET /api/tokens
// ---------------------------------------------------------------------------------------------------------

#[test]
fn list_has_the_cli_fields_filters_by_user_and_never_shows_a_secret() {
    let env = start();
    let (_, t1, _) = env.create(&json!({"user": "alice", "label": "tablet"}));
    let (odd_id, t2, _) = env.create(&json!({"user": "al+ice@x.org/1", "label": "odd user"}));
    let (_, t3, _) = env.create(&json!({"user": "dave", "label": "watch", "scopes": ["a", "b"]}));
    let secrets = [
        env.admin.clone(),
        env.full.clone(),
        env.scoped.clone(),
        t1,
        t2,
        t3,
    ];

    let all = env.list("");
    let cli = env.gw.token_list();
    assert_eq!(all.len(), 6, "{all:?}");
    let ids = |v: &[Value]| v.iter().map(|t| t["id"].as_i64()).collect::<Vec<_>>();
    assert_eq!(ids(&all), ids(&cli), "API and CLI list different tokens");
    for (a, c) in all.iter().zip(&cli) {
        let keys = |v: &Value| {
            v.as_object()
                .expect("object")
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(keys(a), keys(c), "API and CLI fields differ: {a} vs {c}");
        assert_eq!(
            keys(a),
            TOKEN_FIELDS.iter().map(|s| s.to_string()).collect(),
            "{a}"
        );
        for f in [
            "id",
            "user",
            "label",
            "scopes",
            "created_at",
            "expires_at",
            "revoked_at",
            "rotated_at",
            "status",
        ] {
            assert_eq!(a[f], c[f], "field {f}: API {a} vs CLI {c}");
        }
        for k in SECRET_KEYS {
            assert!(a.get(k).is_none(), "list shows {k:?}: {a}");
        }
    }

    // Filtering, also with a percent-encoded user (`+` must be %2B: a bare `+` is a space).
    let alice = env.list("?user=alice");
    assert_eq!(
        alice.iter().map(|t| &t["label"]).collect::<Vec<_>>(),
        [&json!("phone"), &json!("tablet")],
        "{alice:?}"
    );
    let cli_alice = env
        .gw
        .cli_json(&["token", "list", "--user", "alice", "--json"]);
    assert_eq!(
        ids(&alice),
        ids(cli_alice.as_array().expect("array")),
        "API and CLI filter differently"
    );
    let odd = env.list("?user=al%2Bice%40x.org%2F1");
    assert_eq!(ids(&odd), [Some(odd_id)], "{odd:?}");
    assert!(env.list("?user=nobody").is_empty());
    assert_eq!(env.list("?other=1&user=dave").len(), 1);

    // Invalid UTF-8 in the filter is a documented 400.
    let r = env.api("GET", "/api/tokens?user=%ff", None);
    assert_error(&r, 400, None, "user=%ff");

    // No plaintext, and no digest in hex, anywhere in any listing or token view.
    let mut bodies = vec![
        env.api("GET", "/api/tokens", None).text(),
        env.api("GET", "/api/tokens?user=alice", None).text(),
    ];
    for t in &all {
        bodies.push(
            env.api("GET", &format!("/api/tokens/{}", t["id"]), None)
                .text(),
        );
    }
    for body in &bodies {
        for s in &secrets {
            assert!(!body.contains(s.as_str()), "a plaintext token is in {body}");
            let digest = sha256_hex(s.as_bytes());
            assert!(!body.contains(&digest), "a token digest is in {body}");
            assert!(!body.contains(&s[3..20]), "part of a secret is in {body}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// POST /api/tokens
// ---------------------------------------------------------------------------------------------------------

#[test]
fn create_returns_the_secret_once_and_the_proxy_honours_it_at_once() {
    let env = start();
    let before = unix_now();
    let (id, token, v) = env.create(&json!({"user": "dev1", "label": "sensor 1"}));
    assert!(is_token_format(&token), "{token}");
    assert_eq!(v["user"], "dev1");
    assert_eq!(v["label"], "sensor 1");
    assert_eq!(v["scopes"], json!([]));
    assert_eq!(v["status"], "active");
    assert_eq!(v["use_count"], 0);
    for f in ["expires_at", "revoked_at", "rotated_at", "last_used_at"] {
        assert!(v[f].is_null(), "{f}: {v}");
    }
    let created = parse_rfc3339_utc(v["created_at"].as_str().expect("created_at")).expect("time");
    assert!(
        (before - 1..=unix_now() + 1).contains(&created),
        "created_at {created}"
    );
    // Applied to this gateway before the answer (the sync interval is 60 s).
    env.assert_proxy(&token, 200, "a token created through the API");
    let upstream = env.gw.get_with_token("/iot/who", &token);
    assert!(
        upstream.text().contains("dev1"),
        "user id not injected: {upstream}"
    );

    // Shown once: neither the listing nor the token view carries it.
    let view = env.get(id);
    assert!(view.get("token").is_none(), "{view}");
    assert!(!env.api("GET", "/api/tokens", None).text().contains(&token));
    let events = view["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{view}");
    assert_eq!(events[0]["event"], "created");
    assert_eq!(events[0]["actor"], format!("admin:{}", env.admin_id));

    // Two creates with the same user and label are two tokens with different secrets.
    let (id2, token2, _) = env.create(&json!({"user": "dev1", "label": "sensor 1"}));
    assert!(id2 != id && token2 != token);

    // Scopes are honoured by the proxy.
    let (_, telemetry, v) = env.create(&json!({
        "user": "dev2", "label": "telemetry only", "scopes": ["telemetry:write"]
    }));
    assert_eq!(v["scopes"], json!(["telemetry:write"]));
    assert_eq!(env.proxy(&telemetry), 200, "route without a scope");
    let r = env.gw.get_with_token("/video/x", &telemetry);
    assert_eq!(r.status, 403, "a telemetry token on the video route: {r}");
    let (_, video, _) = env.create(&json!({
        "user": "dev3", "label": "camera", "scopes": ["video:write"]
    }));
    let r = env.gw.get_with_token("/video/x", &video);
    assert_eq!(r.status, 200, "a video token on the video route: {r}");
    // A token created without scopes is full access but never admin.
    let r = env.api_raw("GET", "/api/tokens", Some(&token), None, b"");
    assert_error(&r, 403, Some("insufficient_scope"), "API-made full token");

    // expires_at is honoured and echoed.
    let at = "2999-01-02T03:04:05Z";
    let (_, _, v) = env.create(&json!({"user": "dev4", "label": "far", "expires_at": at}));
    assert_eq!(v["expires_at"], at);
    assert_eq!(v["status"], "active");

    // A label of 100 characters (not bytes) is accepted.
    let long = "é".repeat(100);
    let (_, _, v) = env.create(&json!({"user": "dev5", "label": long}));
    assert_eq!(v["label"], long);

    // expires_in is honoured: it works now and is refused once it has passed.
    let t0 = unix_now();
    let (exp_id, short, v) = env.create(&json!({
        "user": "dev6", "label": "short lived", "expires_in": "2s"
    }));
    let expires = parse_rfc3339_utc(v["expires_at"].as_str().expect("expires_at")).expect("time");
    assert!(
        (t0 + 1..=unix_now() + 3).contains(&expires),
        "expires_at {expires} is not about 2 s from {t0}"
    );
    assert_eq!(env.proxy(&short), 200, "before expiry");
    let mut last = 0;
    let expired = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        last = env.proxy(&short);
        last == 401
    });
    assert!(expired, "still answered {last} after expires_in 2s");
    assert!(unix_now() >= expires, "refused before its expiry");
    assert_eq!(env.get(exp_id)["status"], "expired");
}

/// A refused create: what, content type, body, expected status, expected error code.
type BadCreate = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    Option<&'static str>,
);

#[test]
fn bad_create_requests_answer_4xx_and_change_nothing() {
    let env = start();
    let before = env.snapshot();
    let json_ct = Some("application/json");
    let big = format!(
        "{{\"user\":\"big\",\"label\":\"{}\"}}",
        "a".repeat(64 * 1024 + 10)
    );
    let cases: Vec<BadCreate> = vec![
        (
            "malformed JSON",
            json_ct,
            br#"{"user": "x", "label": "#.to_vec(),
            400,
            Some("invalid_json"),
        ),
        ("empty body", json_ct, b"".to_vec(), 400, None),
        ("JSON null", json_ct, b"null".to_vec(), 400, None),
        ("JSON array", json_ct, b"[]".to_vec(), 400, None),
        ("JSON string", json_ct, br#""alice""#.to_vec(), 400, None),
        (
            "unknown field",
            json_ct,
            json!({"user": "x", "label": "l", "admin": true})
                .to_string()
                .into_bytes(),
            400,
            None,
        ),
        (
            "missing user",
            json_ct,
            json!({"label": "l"}).to_string().into_bytes(),
            400,
            None,
        ),
        (
            "missing label",
            json_ct,
            json!({"user": "x"}).to_string().into_bytes(),
            400,
            None,
        ),
        (
            "user not a string",
            json_ct,
            json!({"user": 42, "label": "l"}).to_string().into_bytes(),
            400,
            None,
        ),
        (
            "empty label",
            json_ct,
            json!({"user": "x", "label": ""}).to_string().into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "label of 101 characters",
            json_ct,
            json!({"user": "x", "label": "a".repeat(101)})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "label with a newline",
            json_ct,
            json!({"user": "x", "label": "a\nb"})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "label with BEL",
            json_ct,
            json!({"user": "x", "label": "a\u{7}b"})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "label with a raw control byte in the JSON",
            json_ct,
            b"{\"user\":\"x\",\"label\":\"a\x07b\"}".to_vec(),
            400,
            None,
        ),
        (
            "label with surrounding spaces",
            json_ct,
            json!({"user": "x", "label": " l "})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "user with a space",
            json_ct,
            json!({"user": "a b", "label": "l"})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "empty user",
            json_ct,
            json!({"user": "", "label": "l"}).to_string().into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "user of 129 characters",
            json_ct,
            json!({"user": "u".repeat(129), "label": "l"})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "non-ASCII user",
            json_ct,
            json!({"user": "élan", "label": "l"})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "scope with a space",
            json_ct,
            json!({"user": "x", "label": "l", "scopes": ["a b"]})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "empty scope",
            json_ct,
            json!({"user": "x", "label": "l", "scopes": [""]})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "scope with a quote",
            json_ct,
            json!({"user": "x", "label": "l", "scopes": ["a\"b"]})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "scopes not an array",
            json_ct,
            json!({"user": "x", "label": "l", "scopes": "admin"})
                .to_string()
                .into_bytes(),
            400,
            None,
        ),
        (
            "expires_in not a duration",
            json_ct,
            json!({"user": "x", "label": "l", "expires_in": "soon"})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "expires_in zero",
            json_ct,
            json!({"user": "x", "label": "l", "expires_in": "0s"})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "expires_at not a time",
            json_ct,
            json!({"user": "x", "label": "l", "expires_at": "tomorrow"})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "expires_at in the past",
            json_ct,
            json!({"user": "x", "label": "l", "expires_at": "2001-01-01T00:00:00Z"})
                .to_string()
                .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "both expires_in and expires_at",
            json_ct,
            json!({"user": "x", "label": "l", "expires_in": "1h",
                   "expires_at": "2999-01-01T00:00:00Z"})
            .to_string()
            .into_bytes(),
            400,
            Some("invalid_request"),
        ),
        (
            "body over 64 KiB",
            json_ct,
            big.into_bytes(),
            413,
            Some("payload_too_large"),
        ),
        (
            "content-type text/plain",
            Some("text/plain"),
            json!({"user": "x", "label": "l"}).to_string().into_bytes(),
            415,
            Some("unsupported_media_type"),
        ),
        (
            "content-type form",
            Some("application/x-www-form-urlencoded"),
            b"user=x&label=l".to_vec(),
            415,
            Some("unsupported_media_type"),
        ),
    ];
    for (what, ct, body, status, code) in &cases {
        let r = env.api_raw("POST", "/api/tokens", Some(&env.admin), *ct, body);
        assert_error(&r, *status, *code, what);
        assert!(
            !r.text().contains("tg_"),
            "{what}: an error carries a token: {r}"
        );
        assert_eq!(
            env.snapshot(),
            before,
            "{what}: the refused create changed something"
        );
    }
    // The gateway is still fine after all that.
    let (_, token, _) = env.create(&json!({"user": "x", "label": "l"}));
    env.assert_proxy(&token, 200, "a create after the refused ones");
}

// ---------------------------------------------------------------------------------------------------------
// GET /api/tokens/{id}
// ---------------------------------------------------------------------------------------------------------

#[test]
fn one_token_with_its_events_and_unknown_ids() {
    let env = start();
    let admin = env.get(env.admin_id);
    assert_eq!(admin["id"], env.admin_id);
    assert_eq!(admin["user"], "ops");
    assert_eq!(admin["label"], "console");
    assert_eq!(admin["scopes"], json!(["admin"]));
    let events = admin["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{admin}");
    assert_eq!(events[0]["event"], "created");
    assert_eq!(events[0]["actor"], "cli", "made by the CLI: {admin}");

    // The CLI's `token show --json` agrees.
    let shown = env
        .gw
        .cli_json(&["token", "show", &env.full_id.to_string(), "--json"]);
    let api = env.get(env.full_id);
    for f in [
        "id",
        "user",
        "label",
        "scopes",
        "created_at",
        "status",
        "events",
    ] {
        assert_eq!(api[f], shown[f], "field {f}: API {api} vs CLI {shown}");
    }

    let (id, _, _) = env.create(&json!({"user": "eve", "label": "laptop"}));
    let v = env.get(id);
    assert_eq!(v["events"][0]["actor"], format!("admin:{}", env.admin_id));
    assert!(v.get("token").is_none(), "{v}");

    let before = env.snapshot();
    for missing in ["999999", "0", "-1"] {
        let r = env.api("GET", &format!("/api/tokens/{missing}"), None);
        assert_error(&r, 404, Some("not_found"), &format!("GET id {missing}"));
    }
    // Not an id at all: 404 too (these paths are not documented, so sent without the document check).
    for bad in ["abc", "1.5", "1e3", "99999999999999999999", "%31"] {
        let r = env.send(
            "GET",
            &format!("/api/tokens/{bad}"),
            Some(&env.admin),
            None,
            b"",
        );
        assert_error(&r, 404, Some("not_found"), &format!("GET id {bad:?}"));
    }
    assert_eq!(env.snapshot(), before);
}

// ---------------------------------------------------------------------------------------------------------
// POST /api/tokens/{id}/rotate
// ---------------------------------------------------------------------------------------------------------

#[test]
fn rotate_with_and_without_grace() {
    let env = start();
    let (id, original, created) = env.create(&json!({
        "user": "frank", "label": "router", "scopes": ["telemetry:write"], "expires_in": "90d"
    }));
    env.assert_proxy(&original, 200, "before rotation");

    // With grace: a new secret, both work at once, the old one stops after the grace period.
    let r = env.api(
        "POST",
        &format!("/api/tokens/{id}/rotate"),
        Some(&json!({"grace": "2s"})),
    );
    assert_eq!(r.status, 200, "{r}");
    let rotated = r.json();
    let graced_new = rotated["token"].as_str().expect("token").to_owned();
    assert!(is_token_format(&graced_new) && graced_new != original);
    for f in ["id", "user", "label", "scopes", "created_at", "expires_at"] {
        assert_eq!(rotated[f], created[f], "rotation changed {f}");
    }
    assert!(rotated["rotated_at"].is_string(), "{rotated}");
    assert_eq!(rotated["status"], "active");
    env.assert_proxy(&graced_new, 200, "new secret after rotation with grace");
    env.assert_proxy(&original, 200, "old secret within the grace period");
    let mut last = 0;
    let stopped = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        last = env.proxy(&original);
        last == 401
    });
    assert!(stopped, "old secret still answered {last} after a 2s grace");
    env.assert_proxy(&graced_new, 200, "new secret after the grace period");

    // Without a body: the old secret is refused by this gateway at once.
    let r = env.api_raw(
        "POST",
        &format!("/api/tokens/{id}/rotate"),
        Some(&env.admin),
        None,
        b"",
    );
    assert_eq!(r.status, 200, "rotate without a body: {r}");
    let plain_new = r.json()["token"].as_str().expect("token").to_owned();
    assert!(is_token_format(&plain_new) && plain_new != graced_new);
    env.assert_proxy(
        &graced_new,
        401,
        "old secret right after rotation without grace",
    );
    env.assert_proxy(&plain_new, 200, "new secret right after rotation");

    // With an empty JSON object: same.
    let r = env.api(
        "POST",
        &format!("/api/tokens/{id}/rotate"),
        Some(&json!({})),
    );
    assert_eq!(r.status, 200, "rotate with {{}}: {r}");
    let third = r.json()["token"].as_str().expect("token").to_owned();
    env.assert_proxy(&plain_new, 401, "old secret after rotation with {}");
    env.assert_proxy(&third, 200, "new secret after rotation with {}");

    // Events: created, then three rotations by the admin token.
    let v = env.get(id);
    let events = v["events"].as_array().expect("events");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["created", "rotated", "rotated", "rotated"], "{v}");
    for e in &events[1..] {
        assert_eq!(e["actor"], format!("admin:{}", env.admin_id), "{e}");
    }
    assert!(!v.to_string().contains(&third), "the view shows the secret");

    // Bad requests change nothing.
    let before = env.snapshot();
    for (what, body) in [
        ("bad grace", json!({"grace": "a while"})),
        ("negative grace", json!({"grace": "-5m"})),
        ("grace not a string", json!({"grace": 10})),
        ("unknown field", json!({"grace": "1s", "force": true})),
    ] {
        let r = env.api("POST", &format!("/api/tokens/{id}/rotate"), Some(&body));
        assert_error(&r, 400, None, what);
        assert_eq!(env.snapshot(), before, "{what} changed something");
        env.assert_proxy(&third, 200, what);
    }
    let r = env.api_raw(
        "POST",
        &format!("/api/tokens/{id}/rotate"),
        Some(&env.admin),
        Some("application/json"),
        b"{\"grace\":",
    );
    assert_error(&r, 400, Some("invalid_json"), "malformed rotate body");
    assert_eq!(env.snapshot(), before);

    // Unknown id: 404.
    let r = env.api("POST", "/api/tokens/999999/rotate", Some(&json!({})));
    assert_error(&r, 404, Some("not_found"), "rotate unknown id");

    // A revoked token cannot be rotated: 409, and it stays revoked and refused.
    let r = env.api("DELETE", &format!("/api/tokens/{id}"), None);
    assert_eq!(r.status, 200, "{r}");
    let revoked = env.snapshot();
    let r = env.api(
        "POST",
        &format!("/api/tokens/{id}/rotate"),
        Some(&json!({})),
    );
    assert_error(&r, 409, Some("conflict"), "rotate a revoked token");
    assert!(!r.text().contains("tg_"), "{r}");
    assert_eq!(
        env.snapshot(),
        revoked,
        "a refused rotation changed something"
    );
    env.assert_proxy(&third, 401, "revoked token after a refused rotation");
}

// ---------------------------------------------------------------------------------------------------------
// DELETE /api/tokens/{id}
// ---------------------------------------------------------------------------------------------------------

#[test]
fn revoke_is_immediate_and_idempotent() {
    let env = start();
    let (id, token, _) = env.create(&json!({"user": "gina", "label": "car"}));
    env.assert_proxy(&token, 200, "before revoke");

    // A revoke made behind the gateway's back (the CLI) is seen at once too, without waiting for the 60 s
    // sync: the database's change notification wakes the gateway (issue 13's same-host guarantee; this
    // was the control "not seen before the next sync" before it).
    env.gw.revoke(env.scoped_id);
    assert!(
        poll_until(Duration::from_secs(1), Duration::from_millis(2), || env
            .proxy(&env.scoped)
            == 401),
        "a CLI revoke was not honoured within 1 s with a 60 s sync interval"
    );

    let r = env.api("DELETE", &format!("/api/tokens/{id}"), None);
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!(v["id"], id);
    assert_eq!(v["status"], "revoked", "{v}");
    assert!(v["revoked_at"].is_string(), "{v}");
    assert!(v.get("token").is_none(), "{v}");
    // Refused by the very next requests, without waiting (the sync interval is 60 s).
    env.assert_proxy(&token, 401, "right after DELETE");
    let r = env.gw.get_with_token("/iot/check", &token);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.contains("invalid_token")),
        "{r}"
    );

    // A second DELETE: 200, still revoked, nothing new.
    let r = env.api("DELETE", &format!("/api/tokens/{id}"), None);
    assert_eq!(r.status, 200, "second DELETE: {r}");
    let again = r.json();
    assert_eq!(again["status"], "revoked");
    assert_eq!(
        again["revoked_at"], v["revoked_at"],
        "the second DELETE moved revoked_at"
    );
    let events = env.get(id)["events"].clone();
    let revoked: Vec<&Value> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == "revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "one revoked event: {events}");
    assert_eq!(revoked[0]["actor"], format!("admin:{}", env.admin_id));
    env.assert_proxy(&token, 401, "after the second DELETE");
    // The list and the CLI agree.
    assert_eq!(env.gw.token_entry(id)["status"], "revoked");

    // A token the CLI made before start is revoked just as fast.
    env.assert_proxy(&env.full, 200, "CLI-made token before revoke");
    let r = env.api("DELETE", &format!("/api/tokens/{}", env.full_id), None);
    assert_eq!(r.status, 200, "{r}");
    env.assert_proxy(&env.full, 401, "CLI-made token right after DELETE");

    // Unknown ids: 404, nothing changed.
    let before = env.snapshot();
    for missing in ["999999", "0"] {
        let r = env.api("DELETE", &format!("/api/tokens/{missing}"), None);
        assert_error(&r, 404, Some("not_found"), &format!("DELETE {missing}"));
    }
    let r = env.send("DELETE", "/api/tokens/abc", Some(&env.admin), None, b"");
    assert_error(&r, 404, Some("not_found"), "DELETE abc");
    assert_eq!(env.snapshot(), before);
}

// ---------------------------------------------------------------------------------------------------------
// Methods and paths
// ---------------------------------------------------------------------------------------------------------

#[test]
fn wrong_methods_answer_405_and_unknown_paths_404() {
    let env = start();
    let id = env.admin_id;
    let before = env.snapshot();
    let json_ct = Some("application/json");
    for (method, target) in [
        ("PUT", format!("/api/tokens/{id}")),
        ("POST", format!("/api/tokens/{id}")),
        ("DELETE", "/api/tokens".to_owned()),
        ("PUT", "/api/tokens".to_owned()),
        ("PATCH", "/api/tokens".to_owned()),
        ("GET", format!("/api/tokens/{id}/rotate")),
        ("PUT", format!("/api/tokens/{id}/rotate")),
        ("DELETE", format!("/api/tokens/{id}/rotate")),
    ] {
        let r = env.send(method, &target, Some(&env.admin), json_ct, b"{}");
        assert_error(
            &r,
            405,
            Some("method_not_allowed"),
            &format!("{method} {target}"),
        );
    }
    for target in [
        "/api",
        "/api/",
        "/api/unknown",
        "/api/tokensx",
        "/api/users",
        &format!("/api/tokens/{id}/unknown"),
        &format!("/api/tokens/{id}/rotate/again"),
        "/nothing-here",
    ] {
        let r = env.send("GET", target, Some(&env.admin), None, b"");
        assert_error(&r, 404, Some("not_found"), &format!("GET {target}"));
        let r = env.send("POST", target, Some(&env.admin), json_ct, b"{}");
        assert_error(&r, 404, Some("not_found"), &format!("POST {target}"));
    }
    assert_eq!(
        env.snapshot(),
        before,
        "wrong methods or paths changed something"
    );

    // The other admin endpoints work without any credential.
    let h = env.gw.admin_get("/healthz");
    assert_eq!(h.status, 200, "{h}");
    assert_eq!(h.json()["status"], "ok", "{h}");
    assert!(h.json()["tokens_indexed"].as_u64().unwrap_or(0) >= 3, "{h}");
    let m = env.gw.admin_get("/metrics");
    assert_eq!(m.status, 200, "{m}");
    assert!(
        m.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{m}"
    );
    let metrics = m.text();
    assert!(metrics.contains("tokengate_build_info"), "{metrics}");
    assert!(
        !metrics.contains(&env.admin) && !metrics.contains("tg_"),
        "a token in /metrics"
    );
    let o = env.gw.admin_get("/api/openapi.json");
    assert_eq!(o.status, 200, "{o}");
    let r = env.send("POST", "/healthz", None, None, b"");
    assert_error(&r, 405, Some("method_not_allowed"), "POST /healthz");
}

// ---------------------------------------------------------------------------------------------------------
// OpenAPI
// ---------------------------------------------------------------------------------------------------------

#[test]
fn openapi_every_documented_operation_reaches_its_handler() {
    let env = start();
    let doc = &env.doc;
    let r = env.gw.admin_get("/api/openapi.json");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{r}"
    );
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "openapi {version:?}");

    // The tests call exactly the documented operations.
    let documented = documented_operations(doc);
    let called: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, called,
        "documented operations vs the endpoints these tests call"
    );

    for (method, template) in &documented {
        let responses = documented_responses(doc, method, template).expect("responses");
        let success: Vec<&String> = responses.keys().filter(|s| s.starts_with('2')).collect();
        assert_eq!(
            success.len(),
            1,
            "{method} {template}: one success status: {success:?}"
        );
        let success: u16 = success[0].parse().expect("numeric status");
        let want = if method == "POST"
            && ["/api/tokens", "/api/groups", "/api/licenses"].contains(&template.as_str())
        {
            201
        } else {
            200
        };
        assert_eq!(
            success, want,
            "{method} {template}: documented success status"
        );
        for code in ["401", "403"] {
            assert!(
                responses.contains_key(code),
                "{method} {template} does not document {code}"
            );
        }

        // A fresh token for operations on one id.
        let (id, _, _) =
            env.create(&json!({"user": "openapi", "label": format!("{method} {template}")}));
        let mut target = template.replace("{id}", &id.to_string());
        let op = &doc["paths"][template.as_str()][method.to_ascii_lowercase()];
        // Groups and licenses: a fresh one named after the token, with the token as member when the
        // operation removes one.
        let collection = ["/api/groups", "/api/licenses"]
            .into_iter()
            .find(|c| template.starts_with(c));
        let name = format!("openapi-{id}");
        if let Some(c) = collection {
            let create = if c == "/api/groups" {
                json!({"name": name, "roles": []})
            } else {
                json!({"name": name, "seats": 5})
            };
            if template.contains("{name}") {
                assert_eq!(env.api("POST", c, Some(&create)).status, 201);
            }
            if template.ends_with("{member}") {
                let sub = if c == "/api/groups" {
                    "members"
                } else {
                    "holders"
                };
                let r = env.api(
                    "POST",
                    &format!("{c}/{name}/{sub}"),
                    Some(&json!({"token_id": id})),
                );
                assert_eq!(r.status, 200, "{r}");
            }
            target = template
                .replace("{name}", &name)
                .replace("{member}", &format!("token:{id}"));
        }
        let body = match (op.pointer("/requestBody/required"), method.as_str()) {
            (Some(Value::Bool(true)), _) if collection.is_some() && template.contains("{name}") => {
                Some(json!({"token_id": id}))
            }
            (Some(Value::Bool(true)), _) if template == "/api/groups" => {
                Some(json!({"name": name, "roles": []}))
            }
            (Some(Value::Bool(true)), _) if template == "/api/licenses" => {
                Some(json!({"name": name, "seats": 5, "valid_until": "2999-01-01T00:00:00Z"}))
            }
            (Some(Value::Bool(true)), "PATCH") => Some(json!({"label": "happy path"})),
            (Some(Value::Bool(true)), _) if template == "/api/leaks" => {
                Some(json!([{"token": "tg_not_one_of_ours", "type": "happy path"}]))
            }
            (Some(Value::Bool(true)), _) => Some(json!({"user": "openapi", "label": "happy path"})),
            _ => None,
        };
        // The happy path answers the documented success status (the body is validated by `api`).
        let r = env.api(method, &target, body.as_ref());
        assert_eq!(
            r.status, success,
            "{method} {target}: documented {success}, handler answered {r}"
        );
        if (r.status == 201 && collection.is_none()) || template.ends_with("/rotate") {
            assert!(r.json()["token"].is_string(), "{r}");
        }
        // Without a credential and without the admin scope: documented 401 and 403 (checked by api_raw).
        let ct = body.as_ref().map(|_| "application/json");
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let r = env.api_raw(method, &target, None, ct, &bytes);
        assert_eq!(r.status, 401, "{method} {target}: {r}");
        let r = env.api_raw(method, &target, Some(&env.scoped), ct, &bytes);
        assert_eq!(r.status, 403, "{method} {target}: {r}");
    }

    // Documented parameters and request schemas match what the handlers accept.
    let create = resolve(
        doc,
        doc.pointer("/paths/~1api~1tokens/post/requestBody/content/application~1json/schema")
            .expect("create schema"),
    );
    let required: BTreeSet<&str> = create["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // `user` is required from an admin, and may be left out by a self-service caller (its own user).
    assert_eq!(required, BTreeSet::from(["label"]));
    assert_eq!(
        create["additionalProperties"], false,
        "unknown fields are refused"
    );
    assert_eq!(create["properties"]["label"]["maxLength"], 100);
    assert_eq!(create["properties"]["user"]["maxLength"], 128);
    let mut props: Vec<&String> = create["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    props.sort();
    assert_eq!(
        props,
        [
            "bound_cert_sha256",
            "expires_at",
            "expires_in",
            "label",
            "quota",
            "rate_limit",
            "roles",
            "scopes",
            "user"
        ],
        "documented create fields"
    );
    // Every documented create field is accepted by the handler.
    env.create(&json!({"user": "all", "label": "fields", "expires_in": "1h", "scopes": ["x"]}));
    env.create(&json!({"user": "all", "label": "fields", "expires_at": "2999-01-01T00:00:00Z"}));
    env.create(&json!({"user": "all", "label": "fields", "bound_cert_sha256": "00".repeat(32)}));
    env.create(&json!({"user": "all", "label": "fields", "rate_limit": "5/s", "quota": "10/day"}));
    let rotate = resolve(
        doc,
        doc.pointer(
            "/paths/~1api~1tokens~1{id}~1rotate/post/requestBody/content/application~1json/schema",
        )
        .expect("rotate schema"),
    );
    assert_eq!(rotate["additionalProperties"], false);
    assert!(rotate["properties"]["grace"].is_object());

    // The Token schema names exactly the fields the API and the CLI give.
    let token_schema = &doc["components"]["schemas"]["Token"];
    let mut req: Vec<&str> = token_schema["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    req.sort();
    let mut fields = TOKEN_FIELDS.to_vec();
    fields.sort();
    assert_eq!(req, fields, "Token.required");
}

/// A request to a documented endpoint: method, target, content type, body, expected status.
type StatusCase = (&'static str, String, Option<&'static str>, Vec<u8>, u16);

/// Each status a handler answers for a documented operation is listed for it in the document (not only the
/// happy path): the document promises every 4xx a client must handle.
#[test]
fn openapi_documents_every_status_the_handlers_answer() {
    let env = start();
    let (live, _, _) = env.create(&json!({"user": "h", "label": "live"}));
    let (dead, _, _) = env.create(&json!({"user": "h", "label": "dead"}));
    assert_eq!(
        env.api("DELETE", &format!("/api/tokens/{dead}"), None)
            .status,
        200
    );
    let big = format!("{{\"grace\":\"{}\"}}", " ".repeat(64 * 1024 + 10));
    let big_create = format!(
        "{{\"user\":\"x\",\"label\":\"{}\"}}",
        "a".repeat(64 * 1024 + 10)
    );
    let json_ct = Some("application/json");
    let cases: Vec<StatusCase> = vec![
        ("GET", "/api/tokens?user=%ff".into(), None, vec![], 400),
        ("POST", "/api/tokens".into(), json_ct, b"{".to_vec(), 400),
        (
            "POST",
            "/api/tokens".into(),
            json_ct,
            big_create.into_bytes(),
            413,
        ),
        (
            "POST",
            "/api/tokens".into(),
            Some("text/plain"),
            b"{}".to_vec(),
            415,
        ),
        ("GET", "/api/tokens/999999".into(), None, vec![], 404),
        ("DELETE", "/api/tokens/999999".into(), None, vec![], 404),
        (
            "POST",
            format!("/api/tokens/{live}/rotate"),
            json_ct,
            br#"{"grace":"x"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/tokens/999999/rotate".into(),
            None,
            vec![],
            404,
        ),
        (
            "POST",
            format!("/api/tokens/{dead}/rotate"),
            None,
            vec![],
            409,
        ),
        (
            "POST",
            format!("/api/tokens/{live}/rotate"),
            Some("text/plain"),
            b"{}".to_vec(),
            415,
        ),
        (
            "POST",
            format!("/api/tokens/{live}/rotate"),
            json_ct,
            big.into_bytes(),
            413,
        ),
    ];
    let mut undocumented = Vec::new();
    for (method, target, ct, body, status) in &cases {
        let r = env.send(method, target, Some(&env.admin), *ct, body);
        assert_error(&r, *status, None, &format!("{method} {target}"));
        if let Err(problem) = check_against_doc(&env.doc, method, &template_of(target), &r) {
            undocumented.push(format!("{method} {target} -> {}: {problem}", r.status));
        }
    }
    assert!(
        undocumented.is_empty(),
        "answers missing from the OpenAPI document:\n{}",
        undocumented.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------------------------------------

/// A start tag: lower-case name, attributes, and for `script`/`style` the text up to the end tag.
type Tag = (String, Vec<(String, String)>, String);

/// The start tags of an HTML document: (lower-case name, attributes as lower-case name → value, the text
/// up to the matching end tag for `script` and `style`).
fn html_tags(html: &str) -> Vec<Tag> {
    let mut tags = Vec::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |e| &after[e + 3..]);
            continue;
        }
        // Find the end of the tag, skipping quoted attribute values.
        let bytes = rest.as_bytes();
        let (mut i, mut quote) = (1, None);
        while i < bytes.len() {
            match (quote, bytes[i]) {
                (None, b'"' | b'\'') => quote = Some(bytes[i]),
                (Some(q), c) if c == q => quote = None,
                (None, b'>') => break,
                _ => {}
            }
            i += 1;
        }
        let inner = &rest[1..i.min(rest.len())];
        rest = rest.get(i + 1..).unwrap_or("");
        if inner.starts_with('/') || inner.starts_with('!') || inner.starts_with('?') {
            continue;
        }
        let name_end = inner
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(inner.len());
        let name = inner[..name_end].to_ascii_lowercase();
        let attrs = parse_attributes(&inner[name_end..]);
        let mut content = String::new();
        if name == "script" || name == "style" {
            let close = format!("</{name}");
            let end = rest.to_ascii_lowercase().find(&close).unwrap_or(rest.len());
            content = rest[..end].to_owned();
            rest = &rest[end..];
        }
        tags.push((name, attrs, content));
    }
    tags
}

/// Attributes of a start tag (the text after its name).
fn parse_attributes(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.trim_end_matches('/').chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == '/') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return out;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            match chars.peek().copied() {
                Some(q @ ('"' | '\'')) => {
                    chars.next();
                    for c in chars.by_ref() {
                        if c == q {
                            break;
                        }
                        value.push(c);
                    }
                }
                _ => {
                    while let Some(&c) = chars.peek() {
                        if c.is_whitespace() {
                            break;
                        }
                        value.push(c);
                        chars.next();
                    }
                }
            }
        }
        out.push((name.to_ascii_lowercase(), value));
    }
}

#[test]
fn page_is_served_under_a_strict_content_security_policy() {
    let env = start();
    for path in ["/", "/index.html"] {
        let r = env.gw.admin_get(path);
        assert_eq!(r.status, 200, "{path}: {r}");
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/html")),
            "{path}: {r:?}"
        );
        let csp = r.header("content-security-policy").unwrap_or_default();
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        assert!(
            directives.contains(&"script-src 'self'"),
            "{path}: CSP {csp:?}"
        );
        assert!(
            directives.iter().any(|d| d.starts_with("style-src 'self'")),
            "{path}: CSP {csp:?}"
        );
        for forbidden in ["'unsafe-inline'", "'unsafe-eval'", "*"] {
            assert!(
                !csp.split_whitespace()
                    .any(|w| w.trim_end_matches(';') == forbidden),
                "{path}: CSP {csp:?} allows {forbidden}"
            );
        }
        assert!(
            directives.contains(&"default-src 'none'")
                || directives.contains(&"default-src 'self'"),
            "{path}: CSP {csp:?} has no restrictive default-src"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }

    let html = env.gw.admin_get("/").text();
    let tags = html_tags(&html);
    assert!(
        tags.iter().any(|(n, _, _)| n == "body"),
        "the tag scanner found no <body>"
    );
    let mut scripts = Vec::new();
    let mut sheets = Vec::new();
    for (name, attrs, content) in &tags {
        let attr = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        for (a, _) in attrs {
            assert!(a != "style", "a style= attribute on <{name} {attrs:?}>");
            assert!(
                !(a.starts_with("on") && a.len() > 2),
                "an inline event handler {a}= on <{name}>"
            );
        }
        if name == "script" {
            assert!(
                content.trim().is_empty(),
                "an inline <script> with content: {content:?}"
            );
            let src = attr("src").unwrap_or_else(|| panic!("a <script> without src: {attrs:?}"));
            scripts.push(src.to_owned());
        }
        assert!(name != "style", "an inline <style> element: {content:?}");
        if name == "link" && attr("rel") == Some("stylesheet") {
            sheets.push(attr("href").expect("stylesheet href").to_owned());
        }
        for url_attr in ["src", "href", "action"] {
            if let Some(u) = attr(url_attr) {
                assert!(
                    !u.to_ascii_lowercase().starts_with("javascript:"),
                    "a javascript: URL in <{name} {url_attr}={u:?}>"
                );
            }
        }
    }
    assert_eq!(scripts, ["/assets/app.js"], "scripts of the page");
    assert_eq!(sheets, ["/assets/app.css"], "stylesheets of the page");

    for (path, want) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let r = env.gw.admin_get(path);
        assert_eq!(r.status, 200, "{path}: {r}");
        let ct = r.header("content-type").unwrap_or_default();
        assert!(
            ct.split(';').next() == Some(want),
            "{path}: content type {ct:?}, want {want}"
        );
        assert!(!r.body.is_empty(), "{path} is empty");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    // The page's own assets need no credential, but the API behind them does.
    let r = env.send("GET", "/api/tokens", None, None, b"");
    assert_eq!(r.status, 401, "{r}");
}

#[test]
fn leak_reports_are_taken_and_listed_as_documented() {
    let env = start();
    let report = json!([{"token": env.full, "type": "found_in_logs", "url": "https://tickets.example/1", "source": "support"}]);
    let r = env.api("POST", "/api/leaks", Some(&report));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()[0]["label"], "true_positive");
    assert!(!r.text().contains(&env.full));
    let r = env.api("GET", "/api/leaks", None);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()[0]["token_id"], env.full_id);
    let r = env.api(
        "GET",
        &format!("/api/leaks?token_id={}", env.scoped_id),
        None,
    );
    assert_eq!(r.json(), json!([]));
    // Not the shape: 400, quoting nothing of the body.
    let r = env.api("POST", "/api/leaks", Some(&json!({"token": env.scoped})));
    assert_error(
        &r,
        400,
        Some("invalid_request"),
        "POST /api/leaks with an object",
    );
    assert!(!r.text().contains(&env.scoped));
    // Without admin: refused.
    let r = env.api_raw(
        "POST",
        "/api/leaks",
        Some(&env.scoped),
        Some("application/json"),
        report.to_string().as_bytes(),
    );
    assert_eq!(r.status, 403, "{r}");
}
