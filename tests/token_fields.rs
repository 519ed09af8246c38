//! One validation of a token's fields for the CLI and the admin API (`tokens::input`): the same bad
//! input is refused by `token create` / `token set` and by `POST` / `PATCH /api/tokens` with the same
//! words — the field named in each side's own spelling (`--rate-limit: ...`, `rate_limit: ...`), then the
//! same problem — and changes nothing.

mod common;

use common::*;
use serde_json::{json, Value};

fn gateway() -> (Gateway, String) {
    let up = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .route("api", "/api", up.addr())
        .section("roles", "device", "[\"telemetry:write\"]")
        .start();
    let (_, admin) = gw.create_token_with("ops", "ops", &["--scope", "admin"]);
    (gw, admin)
}

/// The API's answer to `method path` with `body`: status 400 expected, the `detail` returned.
fn api_refusal(gw: &Gateway, admin: &str, method: &str, path: &str, body: &Value) -> String {
    let r = raw_http(
        gw.admin_addr(),
        &build_request(
            method,
            path,
            &[
                ("Authorization", &bearer(admin)),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        ),
    );
    assert_eq!(r.status, 400, "{method} {path} {body}: {r}");
    assert_eq!(r.json_error(), "invalid_request", "{r}");
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(!detail.is_empty(), "{r}");
    detail
}

/// `name: problem` → (`name`, `problem`).
fn split(text: &str) -> (&str, &str) {
    text.split_once(": ")
        .unwrap_or_else(|| panic!("no field named in {text:?}"))
}

/// The CLI's refusal and the API's: each names the field its own way, then the same problem.
fn assert_same(cli: &str, flag: &str, api: &str, key: &str) {
    let ((cli_field, cli_problem), (api_field, api_problem)) = (split(cli), split(api));
    assert_eq!(cli_field, flag, "{cli}");
    assert_eq!(api_field, key, "{api}");
    assert_eq!(cli_problem, api_problem, "{cli} / {api}");
}

/// The CLI's `error: ...` line for `args` (which must fail).
fn cli_refusal(gw: &Gateway, args: &[&str]) -> String {
    let out = gw.cli(args);
    assert!(
        !out.status.success(),
        "{args:?} succeeded:\n{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("{args:?}: no error line:\n{stderr}"))
        .to_owned()
}

#[test]
fn a_bad_new_token_is_refused_in_the_same_words_by_the_cli_and_the_api() {
    let (gw, admin) = gateway();
    let before = gw.token_list().len();
    let hex = "ab".repeat(31);
    let bind = ["--bind-cert-sha256", hex.as_str()];
    let cases: Vec<(&[&str], Value)> = vec![
        (&["--user", "a b"], json!({"user": "a b"})),
        (&["--label", " l "], json!({"label": " l "})),
        (&["--scope", "a\"b"], json!({"scopes": ["a\"b"]})),
        (&["--scope", "@device"], json!({"scopes": ["@device"]})),
        (&["--role", "writer"], json!({"roles": ["writer"]})),
        (&bind, json!({"bound_cert_sha256": hex})),
        (&["--rate-limit", "often"], json!({"rate_limit": "often"})),
        (&["--rate-limit", "0/s"], json!({"rate_limit": "0/s"})),
        (&["--quota", "often"], json!({"quota": "often"})),
        (&["--quota", "0/day"], json!({"quota": "0/day"})),
    ];
    for (flags, fields) in cases {
        let mut body = json!({"user": "alice", "label": "hive"});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let api = api_refusal(&gw, &admin, "POST", "/api/tokens", &body);
        let mut args = vec!["token", "create", "--user", "alice", "--label", "hive"];
        // A flag given twice would be clap's error: the case's own value replaces the default.
        for pair in flags.chunks(2) {
            if let Some(i) = args.iter().position(|a| *a == pair[0]) {
                args[i + 1] = pair[1];
            } else {
                args.extend_from_slice(pair);
            }
        }
        let cli = cli_refusal(&gw, &args);
        let key = fields.as_object().unwrap().keys().next().unwrap();
        assert_same(&cli, flags[0], &api, key);
    }
    assert_eq!(
        gw.token_list().len(),
        before,
        "a refused create changed nothing"
    );
}

#[test]
fn a_bad_change_is_refused_in_the_same_words_by_the_cli_and_the_api() {
    let (gw, admin) = gateway();
    let (id, _) = gw.create_token_with("alice", "hive", &["--rate-limit", "5/s"]);
    let before = gw.token_entry(id);
    let path = format!("/api/tokens/{id}");
    let id = id.to_string();
    let cases: Vec<(&[&str], Value)> = vec![
        (&["--label", ""], json!({"label": ""})),
        (&["--label", "a\u{7}b"], json!({"label": "a\u{7}b"})),
        (&["--rate-limit", "x"], json!({"rate_limit": "x"})),
        (&["--quota", "often"], json!({"quota": "often"})),
    ];
    for (flags, body) in cases {
        let api = api_refusal(&gw, &admin, "PATCH", &path, &body);
        let args = [&["token", "set", id.as_str()][..], flags].concat();
        let cli = cli_refusal(&gw, &args);
        let key = body.as_object().unwrap().keys().next().unwrap();
        assert_same(&cli, flags[0], &api, key);
    }
    assert_eq!(
        gw.token_entry(id.parse().unwrap()),
        before,
        "a refused change changed nothing"
    );
}
