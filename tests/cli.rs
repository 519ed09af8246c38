//! The `tokengate` command line (spec, "CLI" and "Config"): `check-config` on the shipped config and on
//! broken ones (the message names file, key and problem), `--config`/`-c` before or after the subcommand,
//! and the `token` commands: create (plain and JSON, expiry, scopes), list (table and JSON, never the token
//! or its digest), revoke, rotate and show. No gateway is started here.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run tokengate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A config with two routes, used as the base of the broken variants. Ports are only text here.
const VALID: &str = r#"[gateway]
listen = "127.0.0.1:18080"

[store]
path = "tokengate.db"

[admin]
listen = "127.0.0.1:19090"

[[routes]]
name = "telemetry"
path_prefix = "/iot"
upstream = "127.0.0.1:18600"

[[routes]]
name = "video"
path_prefix = "/video"
upstream = "127.0.0.1:18601"
read_timeout = "30s"
"#;

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tokengate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn check(path: &Path) -> Output {
    run(&["--config", path.to_str().unwrap(), "check-config"])
}

/// A gateway config folder (never started) for the token commands.
fn store() -> Gateway {
    GatewayBuilder::new()
        .route("api", "/api", refused_addr())
        .build()
}

// ----------------------------------------------------------------------------------------------------------
// check-config
// ----------------------------------------------------------------------------------------------------------

#[test]
fn check_config_accepts_shipped_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokengate.toml");
    let out = check(&path);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.to_ascii_lowercase().contains("ok")),
        "no ok line: {}",
        describe(&out)
    );
}

#[test]
fn check_config_accepts_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), VALID);
    let out = check(&path);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).to_ascii_lowercase().contains("ok"),
        "{}",
        describe(&out)
    );
}

/// Runs check-config on `text`, expects failure, and checks stderr names the file and each of `needles`.
fn assert_config_error(text: &str, needles: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), text);
    let out = check(&path);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "bad config accepted:\n{text}\n{}",
        describe(&out)
    );
    let file_name = path.to_str().unwrap();
    assert!(
        err.contains(file_name) || err.contains("tokengate.toml"),
        "error does not name the file {file_name}:\n{err}"
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "error does not mention {needle:?}:\n{err}"
        );
    }
    err
}

#[test]
fn bad_upstream_names_key_and_value() {
    let text = VALID.replace("127.0.0.1:18601", "not an address");
    assert_config_error(&text, &["routes[1].upstream", "not an address"]);
}

#[test]
fn unknown_keys_are_errors() {
    let text = VALID.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = \"127.0.0.1:18080\"\nlisten_port = 8080",
    );
    assert_config_error(&text, &["listen_port"]);
    let text = VALID.replace(
        "read_timeout = \"30s\"",
        "read_timeout = \"30s\"\npath_prefx = \"/x\"",
    );
    assert_config_error(&text, &["path_prefx"]);
    let text = format!("{VALID}\n[extra]\nkey = 1\n");
    assert_config_error(&text, &["extra"]);
}

#[test]
fn duplicate_route_name_is_an_error() {
    let text = VALID.replace("name = \"video\"", "name = \"telemetry\"");
    let err = assert_config_error(&text, &["routes[1]", "telemetry"]);
    let lower = err.to_ascii_lowercase();
    assert!(
        lower.contains("duplicate") || lower.contains("already"),
        "problem not stated:\n{err}"
    );
}

#[test]
fn missing_route_fields_are_errors() {
    let text = VALID.replace("path_prefix = \"/video\"\n", "");
    assert_config_error(&text, &["path_prefix"]);
    let text = VALID.replace("upstream = \"127.0.0.1:18600\"\n", "");
    assert_config_error(&text, &["upstream"]);
    let text = VALID.replace("name = \"video\"\n", "");
    assert_config_error(&text, &["name"]);
}

#[test]
fn bad_values_are_errors() {
    let text = VALID.replace("read_timeout = \"30s\"", "read_timeout = \"soon\"");
    assert_config_error(&text, &["routes[1].read_timeout", "soon"]);
    let text = VALID.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = \"127.0.0.1:18080\"\ngrace_period = \"forever\"",
    );
    assert_config_error(&text, &["grace_period", "forever"]);
    let text = VALID.replace("listen = \"127.0.0.1:18080\"", "listen = \"nowhere\"");
    assert_config_error(&text, &["listen", "nowhere"]);
}

#[test]
fn toml_syntax_error_names_the_file() {
    assert_config_error("[gateway\nlisten = 1\n", &[]);
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let out = check(&path);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains("absent.toml"), "{}", describe(&out));
}

#[test]
fn config_option_is_accepted_after_the_subcommand_and_short() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), VALID);
    let path = path.to_str().unwrap();
    for args in [
        vec!["check-config", "--config", path],
        vec!["check-config", "-c", path],
        vec!["-c", path, "check-config"],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
    }
    let out = run(&[
        "token", "create", "--user", "u", "--label", "l", "--config", path, "--json",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = run(&["token", "list", "--json", "--config", path]);
    assert!(out.status.success(), "{}", describe(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert!(
        dir.path().join("tokengate.db").exists(),
        "store not next to the config file"
    );
}

// ----------------------------------------------------------------------------------------------------------
// token commands
// ----------------------------------------------------------------------------------------------------------

#[test]
fn token_create_plain_prints_token_then_reminder() {
    let gw = store();
    let out = gw.cli(&["token", "create", "--user", "alice", "--label", "laptop"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        is_token_format(first),
        "first stdout line is not a token: {first:?}"
    );
    assert!(!stderr(&out).trim().is_empty(), "no reminder on stderr");
    assert!(
        !stderr(&out).contains(first),
        "token must go to stdout only"
    );
}

#[test]
fn token_create_json_has_all_fields() {
    let gw = store();
    let now = unix_now();
    let created = gw.cli_json(&[
        "token", "create", "--user", "alice", "--label", "laptop", "--json",
    ]);
    assert!(created["id"].is_i64(), "{created}");
    assert!(
        is_token_format(created["token"].as_str().unwrap_or_default()),
        "{created}"
    );
    assert_eq!(created["user"], "alice");
    assert_eq!(created["label"], "laptop");
    let created_at = created["created_at"].as_str().unwrap_or_default();
    assert!(
        created_at.ends_with('Z'),
        "created_at not UTC 'Z': {created_at:?}"
    );
    let created_at =
        parse_rfc3339_utc(created_at).unwrap_or_else(|| panic!("created_at: {created}"));
    assert!(
        (created_at - now).abs() <= 120,
        "created_at far from now: {created}"
    );
    assert!(created["expires_at"].is_null(), "{created}");
    assert_eq!(created["scopes"], serde_json::json!([]), "{created}");

    let second = gw.cli_json(&[
        "token", "create", "--user", "bob", "--label", "phone", "--json",
    ]);
    assert_ne!(second["id"], created["id"]);
    assert_ne!(second["token"], created["token"]);
}

#[test]
fn token_create_expiry_and_scopes() {
    let gw = store();
    let created = gw.cli_json(&[
        "token",
        "create",
        "--user",
        "alice",
        "--label",
        "cam",
        "--json",
        "--expires-in",
        "90d",
        "--scope",
        "telemetry:write",
        "--scope",
        "video:upload",
    ]);
    let created_at =
        parse_rfc3339_utc(created["created_at"].as_str().unwrap_or_default()).expect("created_at");
    let expires_at = parse_rfc3339_utc(created["expires_at"].as_str().unwrap_or_default())
        .unwrap_or_else(|| panic!("expires_at: {created}"));
    assert!(
        (expires_at - created_at - 90 * 86_400).abs() <= 5,
        "{created}"
    );
    assert_eq!(
        created["scopes"],
        serde_json::json!(["telemetry:write", "video:upload"])
    );

    for (arg, seconds) in [("30s", 30), ("15m", 900), ("12h", 43_200)] {
        let created = gw.cli_json(&[
            "token",
            "create",
            "--user",
            "a",
            "--label",
            "l",
            "--json",
            "--expires-in",
            arg,
        ]);
        let created_at =
            parse_rfc3339_utc(created["created_at"].as_str().unwrap_or_default()).unwrap();
        let expires_at = parse_rfc3339_utc(created["expires_at"].as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("--expires-in {arg}: {created}"));
        assert!(
            (expires_at - created_at - seconds).abs() <= 5,
            "--expires-in {arg}: {created}"
        );
    }

    let created = gw.cli_json(&[
        "token",
        "create",
        "--user",
        "alice",
        "--label",
        "until",
        "--json",
        "--expires-at",
        "2031-01-02T03:04:05Z",
    ]);
    let expires_at = parse_rfc3339_utc(created["expires_at"].as_str().unwrap_or_default());
    assert_eq!(
        expires_at,
        parse_rfc3339_utc("2031-01-02T03:04:05Z"),
        "{created}"
    );
}

#[test]
fn token_list_json_fields_and_status() {
    let gw = store();
    let (alice, _) = gw.create_token("alice", "laptop");
    let (bob, _) = gw.create_token("bob", "phone");
    let (short, _) = gw.create_token_with("alice", "short", &["--expires-in", "1s"]);
    gw.revoke(bob);

    let mut list = Vec::new();
    let expired = poll_until(Duration::from_secs(15), Duration::from_millis(200), || {
        list = gw.token_list();
        list.iter()
            .any(|t| t["id"].as_i64() == Some(short) && t["status"] == "expired")
    });
    assert!(
        expired,
        "token with --expires-in 1s never listed as expired: {list:?}"
    );
    assert_eq!(list.len(), 3, "{list:?}");
    for entry in &list {
        for field in [
            "id",
            "user",
            "label",
            "created_at",
            "last_used_at",
            "use_count",
            "status",
            "expires_at",
            "scopes",
        ] {
            assert!(entry.get(field).is_some(), "field {field} missing: {entry}");
        }
        assert!(
            entry.get("token").is_none(),
            "list shows the token: {entry}"
        );
        assert!(entry["last_used_at"].is_null(), "{entry}");
        assert_eq!(entry["use_count"], 0, "{entry}");
        assert!(entry["scopes"].is_array(), "{entry}");
        assert!(
            parse_rfc3339_utc(entry["created_at"].as_str().unwrap_or_default()).is_some(),
            "{entry}"
        );
    }
    let status =
        |id: i64| list.iter().find(|t| t["id"].as_i64() == Some(id)).unwrap()["status"].clone();
    assert_eq!(status(alice), "active");
    assert_eq!(status(bob), "revoked");
    assert_eq!(status(short), "expired");

    let only_bob = gw.cli_json(&["token", "list", "--user", "bob", "--json"]);
    let only_bob = only_bob.as_array().expect("array");
    assert_eq!(only_bob.len(), 1, "{only_bob:?}");
    assert_eq!(only_bob[0]["user"], "bob");
}

#[test]
fn token_list_plain_is_a_table() {
    let gw = store();
    let (alice, _) = gw.create_token("alice", "laptop-one");
    let (bob, _) = gw.create_token("bob", "phone-two");
    let out = gw.cli(&["token", "list"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or_default().to_ascii_lowercase();
    assert!(
        header.contains("id") && header.contains("user"),
        "no header line:\n{text}"
    );
    let rows: Vec<&str> = lines.collect();
    for (id, user, label) in [(alice, "alice", "laptop-one"), (bob, "bob", "phone-two")] {
        assert!(
            rows.iter().any(|row| {
                let cells: Vec<&str> = row.split_whitespace().collect();
                cells.contains(&id.to_string().as_str())
                    && cells.contains(&user)
                    && cells.contains(&label)
            }),
            "no row for {id} {user} {label}:\n{text}"
        );
    }
}

#[test]
fn listings_never_show_token_or_digest() {
    let gw = store();
    let (id, token) = gw.create_token("alice", "laptop");
    let id = id.to_string();
    let digest = sha256_hex(token.as_bytes());
    let secret = &token[3..46];
    let outputs = [
        gw.cli(&["token", "list"]),
        gw.cli(&["token", "list", "--json"]),
        gw.cli(&["token", "list", "--user", "alice", "--json"]),
        gw.cli(&["token", "show", &id]),
        gw.cli(&["token", "show", &id, "--json"]),
    ];
    for out in &outputs {
        assert!(out.status.success(), "{}", describe(out));
        let all = format!("{}{}", stdout(out), stderr(out));
        assert!(!all.contains(secret), "token secret printed:\n{all}");
        assert!(!all.contains(&digest), "token digest printed:\n{all}");
        assert!(
            !all.contains(&digest.to_ascii_uppercase()),
            "token digest printed:\n{all}"
        );
    }
    let db = std::fs::read(gw.db_path()).expect("read database");
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "plaintext token in the database"
    );
}

#[test]
fn revoke_unknown_id_fails() {
    let gw = store();
    gw.create_token("alice", "laptop");
    let out = gw.cli(&["token", "revoke", "987654"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("987654"),
        "message should name the id: {}",
        describe(&out)
    );
}

#[test]
fn revoke_known_id_succeeds() {
    let gw = store();
    let (id, _) = gw.create_token("alice", "laptop");
    let out = gw.cli(&["token", "revoke", &id.to_string()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(gw.token_entry(id)["status"], "revoked");
}

#[test]
fn rotate_prints_a_new_token() {
    let gw = store();
    let (id, old) = gw.create_token("alice", "laptop");
    let rotated = gw.cli_json(&[
        "token",
        "rotate",
        &id.to_string(),
        "--grace",
        "1h",
        "--json",
    ]);
    let new = rotated["token"].as_str().unwrap_or_default();
    assert!(is_token_format(new), "{rotated}");
    assert_ne!(new, old);
    assert_eq!(rotated["user"], "alice", "{rotated}");

    let out = gw.cli(&["token", "rotate", &id.to_string()]);
    assert!(out.status.success(), "{}", describe(&out));
    let first = stdout(&out).lines().next().unwrap_or_default().to_owned();
    assert!(
        is_token_format(&first),
        "plain rotate output: {}",
        describe(&out)
    );
}

#[test]
fn show_has_events() {
    let gw = store();
    let (id, _) = gw.create_token("alice", "laptop");
    gw.revoke(id);
    let shown = gw.cli_json(&["token", "show", &id.to_string(), "--json"]);
    assert_eq!(shown["id"].as_i64(), Some(id), "{shown}");
    assert_eq!(shown["user"], "alice", "{shown}");
    let events = shown["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array: {shown}"));
    assert!(
        events.len() >= 2,
        "create and revoke should both be events: {shown}"
    );
    for event in events {
        for field in ["at", "event", "actor", "detail"] {
            assert!(
                event.get(field).is_some(),
                "event field {field} missing: {event}"
            );
        }
        assert!(
            parse_rfc3339_utc(event["at"].as_str().unwrap_or_default()).is_some(),
            "{event}"
        );
    }
}
