//! Secrets and operators' mistakes, with the real binary: a store password never shows, however the
//! connection string is spelled or misspelled (`check-config`, `serve`, `store copy --to`); no log level
//! (`RUST_LOG=trace`) shows a token, its digest or the store password, on SQLite and PostgreSQL, through the
//! CLI and `serve`; `check-config` warns about a store reached without a verified certificate and about
//! `trusted_proxies` wider than one network, and `serve` logs the same; an expiry or grace past year 9999 is
//! a usage error, never a panic.

mod common;

use common::pg::{admin_url, fresh_database, password_of};
use common::*;
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The password every spelling below carries; no output may contain it or its distinctive part.
const PW: &str = "hunter2-Secr3t";
const PW_PART: &str = "Secr3t";

/// Runs `tokengate` with `env`, killing it after `limit` (a panic then: nothing here should hang).
fn run_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tokengate");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tokengate {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_no_password(out: &Output, what: &str) {
    let all = text(out);
    assert!(
        !all.contains(PW_PART),
        "{what}: the password shows:\n{}",
        describe(out)
    );
    assert!(!all.contains("panicked"), "{what}:\n{}", describe(out));
}

/// Connection strings with [`PW`] in every spelling; the server named is a refused port on 127.0.0.1.
fn spellings(port: u16) -> Vec<String> {
    let encoded = PW.replace('-', "%2D");
    vec![
        format!("host=127.0.0.1 port={port} user=tg password={PW} dbname=tg"),
        format!("host=127.0.0.1 port={port} user=tg password='{PW} x' dbname=tg"),
        format!("host = 127.0.0.1 port = {port} password = {PW}"),
        format!("host=127.0.0.1 port={port} PASSWORD={PW}"),
        format!("host=127.0.0.1 port={port} password={PW} sslmode=bogus"),
        format!("host=127.0.0.1 port={port} password='{PW}"),
        format!("host=127.0.0.1 port={port} {PW}"),
        format!("postgres:/tg:{PW}@127.0.0.1:{port}/tg"),
        format!("postgres//tg:{PW}@127.0.0.1:{port}/tg"),
        format!("tg:{PW}@127.0.0.1:{port}/tg"),
        format!("mysql://tg:{PW}@127.0.0.1:{port}/tg"),
        format!("postgresql://tg:{PW}@127.0.0.1:{port}/tg"),
        format!("postgres://tg:{encoded}@127.0.0.1:{port}/tg"),
        format!("postgres://tg@127.0.0.1:{port}/tg?password={PW}"),
        format!("postgres://tg@127.0.0.1:{port}/tg?PASSWORD={PW}&sslmode=disable"),
        format!("postgres://tg:{PW}@127.0.0.1:{port}/tg?sslmode={PW}"),
        format!("postgres://tg:hun@{PW}@127.0.0.1:{port}/tg"),
        format!("postgres://tg:{PW}@127.0.0.1:{port}/tg?{PW}=1"),
    ]
}

/// A config file (a route, the SQLite default store) in a fresh folder.
fn config() -> Gateway {
    GatewayBuilder::new()
        .route("api", "/api", refused_addr())
        .build()
}

#[test]
fn store_passwords_never_show_in_check_config_or_serve() {
    let gw = config();
    let path = gw.config_path().to_str().unwrap().to_owned();
    let port = refused_addr().port();
    for url in spellings(port) {
        let env = [("TOKENGATE_STORE_URL", url.as_str()), ("RUST_LOG", "trace")];
        let checked = run_env(
            &["--config", &path, "check-config"],
            &env,
            Duration::from_secs(30),
        );
        assert_no_password(&checked, &format!("check-config with {url}"));
        let served = run_env(&["serve", "--config", &path], &env, Duration::from_secs(60));
        assert!(!served.status.success(), "{url}:\n{}", describe(&served));
        assert_no_password(&served, &format!("serve with {url}"));
        // In the file rather than the environment.
        let file = config();
        let toml = std::fs::read_to_string(file.config_path())
            .unwrap()
            .replace("path = \"tokengate.db\"", &format!("url = {url:?}"));
        std::fs::write(file.config_path(), toml).unwrap();
        let checked = run_env(
            &[
                "--config",
                file.config_path().to_str().unwrap(),
                "check-config",
            ],
            &[],
            Duration::from_secs(30),
        );
        assert_no_password(&checked, &format!("check-config with store.url {url}"));
    }
    // The key=value form is a store URL like any other: valid ones pass check-config, shown redacted.
    let url = "host=db.example.internal user=tg password='hunter2-Secr3t x' dbname=tg sslmode=verify-full";
    let checked = run_env(
        &["--config", &path, "check-config"],
        &[("TOKENGATE_STORE_URL", url)],
        Duration::from_secs(30),
    );
    assert!(checked.status.success(), "{}", describe(&checked));
    assert!(
        text(&checked).contains("host=db.example.internal user=tg password=*** dbname=tg"),
        "{}",
        describe(&checked)
    );
    assert_no_password(&checked, url);
}

#[test]
fn store_copy_targets_never_show_the_password() {
    let gw = config();
    gw.create_token("alice", "one");
    let port = refused_addr().port();
    for to in spellings(port) {
        let out = gw.cli(&["store", "copy", "--to", &to]);
        assert!(!out.status.success(), "{to}:\n{}", describe(&out));
        assert_no_password(&out, &format!("store copy --to {to}"));
    }
    // Nothing was created under a name made of the URL (a typo is not an SQLite path).
    let made: Vec<_> = std::fs::read_dir(gw.dir().join("cwd"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(made.is_empty(), "{made:?}");
}

#[test]
fn check_config_warns_about_unverified_remote_stores() {
    let gw = config();
    let path = gw.config_path().to_str().unwrap().to_owned();
    let check = |url: &str| {
        let out = run_env(
            &["--config", &path, "check-config"],
            &[("TOKENGATE_STORE_URL", url)],
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{url}:\n{}", describe(&out));
        assert_no_password(&out, url);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (url, mode) in [
        (
            format!("postgres://tg:{PW}@db.example.internal/tg?sslmode=disable"),
            "sslmode=disable",
        ),
        (
            format!("host=10.20.30.40 user=tg password={PW} sslmode=require"),
            "sslmode=require",
        ),
        (
            format!("postgres://tg:{PW}@db.example.internal:6432/tg?sslmode=prefer"),
            "sslmode=prefer",
        ),
    ] {
        let warned = check(&url);
        assert!(
            warned.contains(&format!(
                "warning: {path}: TOKENGATE_STORE_URL: the store at"
            )) && warned.contains(mode)
                && warned.contains("verify-full"),
            "{url}: {warned}"
        );
        assert!(
            warned.contains("db.example.internal") || warned.contains("10.20.30.40"),
            "{warned}"
        );
    }
    for quiet in [
        format!("postgres://tg:{PW}@127.0.0.1/tg?sslmode=disable"),
        format!("host=/run/postgresql password={PW} sslmode=disable"),
        format!("postgres://tg:{PW}@db.example.internal/tg"),
        format!("postgres://tg:{PW}@db.example.internal/tg?sslmode=verify-full"),
    ] {
        let warned = check(&quiet);
        assert!(!warned.contains("warning"), "{quiet}: {warned}");
    }
    // The key names where the URL came from: store.url in the file.
    let file = config();
    let toml = std::fs::read_to_string(file.config_path())
        .unwrap()
        .replace(
            "path = \"tokengate.db\"",
            "url = \"postgres://tg@db.example.internal/tg?sslmode=require\"",
        );
    std::fs::write(file.config_path(), toml).unwrap();
    let out = run_env(
        &[
            "--config",
            file.config_path().to_str().unwrap(),
            "check-config",
        ],
        &[],
        Duration::from_secs(30),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(": store.url: the store at db.example.internal:5432"),
        "{}",
        describe(&out)
    );
}

#[test]
fn trusted_proxies_wider_than_one_network_are_warned_about_by_check_config_and_serve() {
    let up = Upstream::start("api");
    let mut gw = GatewayBuilder::new()
        .gateway("trusted_proxies", r#"["10.0.0.0/8", "0.0.0.0/0"]"#)
        .section("admin", "trusted_user_header", "\"x-forwarded-user\"")
        .section(
            "admin",
            "trusted_proxies",
            r#"["fc00::/7", "::/0", "127.0.0.1"]"#,
        )
        .route("api", "/api", up.addr())
        .build();
    let file = gw.config_path().display().to_string();
    let out = gw.cli(&["check-config"]);
    assert_success(&out, &["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings[0].starts_with(&format!(
            "warning: {file}: gateway.trusted_proxies[1]: 0.0.0.0/0"
        )) && warnings[0].contains("X-Forwarded-For"),
        "{stderr}"
    );
    assert!(
        warnings[1].starts_with(&format!("warning: {file}: admin.trusted_proxies[1]: ::/0"))
            && warnings[1].contains("any user"),
        "{stderr}"
    );
    gw.start();
    let logs = gw.logs();
    for key in ["gateway.trusted_proxies[1]", "admin.trusted_proxies[1]"] {
        assert!(
            logs.lines()
                .any(|l| l.contains("WARN") && l.contains(&file) && l.contains(key)),
            "{key}: {logs}"
        );
    }
    // Narrow lists say nothing.
    let quiet = GatewayBuilder::new()
        .gateway(
            "trusted_proxies",
            r#"["10.0.0.0/8", "2001:db8::/32", "192.168.1.1"]"#,
        )
        .route("api", "/api", up.addr())
        .build();
    let out = quiet.cli(&["check-config"]);
    assert_success(&out, &["check-config"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        describe(&out)
    );
}

#[test]
fn expiry_and_grace_past_year_9999_are_usage_errors_not_panics() {
    let gw = config();
    let (id, _) = gw.create_token("alice", "kept");
    let id = id.to_string();
    let attempts: [&[&str]; 7] = [
        &[
            "token",
            "create",
            "--user",
            "bob",
            "--label",
            "far",
            "--expires-in",
            "10000y",
        ],
        &[
            "token",
            "create",
            "--user",
            "bob",
            "--label",
            "far",
            "--expires-in",
            "18446744073709551615s",
        ],
        &[
            "token",
            "create",
            "--user",
            "bob",
            "--label",
            "far",
            "--expires-in",
            "7980y",
        ],
        &["token", "set", &id, "--expires-in", "10000y"],
        &["token", "rotate", &id, "--grace", "10000y"],
        &["token", "rotate", &id, "--grace", "18446744073709551615s"],
        &[
            "token",
            "create",
            "--user",
            "bob",
            "--label",
            "far",
            "--expires-at",
            "10000-01-01T00:00:00Z",
        ],
    ];
    for args in attempts {
        let out = gw.cli(args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}:\n{}", describe(&out));
        assert!(
            !all.contains("panicked") && !all.contains("backtrace"),
            "{args:?}:\n{all}"
        );
        assert!(
            all.contains("9999-12-31T23:59:59Z") || all.contains("RFC 3339"),
            "{args:?}:\n{all}"
        );
    }
    // Nothing changed: one token, never rotated, no expiry; the bound itself is accepted.
    let list = gw.token_list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(
        list[0]["expires_at"].is_null() && list[0]["rotated_at"].is_null(),
        "{list:?}"
    );
    let (_, _) = gw.create_token_with("carol", "last", &["--expires-at", "9999-12-31T23:59:59Z"]);
    let rotated = gw.cli_json(&["token", "rotate", &id, "--grace", "100y", "--json"]);
    assert!(rotated["token"].is_string(), "{rotated}");
}

#[test]
fn a_hand_edited_expiry_past_year_9999_is_listed_not_panicked_on() {
    let gw = config();
    let (id, _) = gw.create_token("alice", "edited");
    let db = rusqlite::Connection::open(gw.db_path()).unwrap();
    db.execute(
        "UPDATE tokens SET expires_at = ?1 WHERE id = ?2",
        rusqlite::params![i64::MAX, id],
    )
    .unwrap();
    drop(db);
    let out = gw.cli(&["token", "list"]);
    assert_success(&out, &["token", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("292277026596-12-04T15:30:07Z"),
        "{}",
        describe(&out)
    );
    let shown = gw.cli_json(&["token", "show", &id.to_string(), "--json"]);
    assert_eq!(shown["expires_at"], "292277026596-12-04T15:30:07Z");
}

#[test]
fn the_admin_api_refuses_an_expiry_past_year_9999_and_never_answers_a_panic() {
    let up = Upstream::start("api");
    let mut gw = GatewayBuilder::new()
        .route("api", "/api", up.addr())
        .build();
    let (id, admin) = gw.create_token_with("ops", "console", &["--scope", "admin"]);
    gw.start();
    let call = |method: &str, path: &str, body: &Value| {
        let auth = bearer(&admin);
        let body = body.to_string();
        raw_http(
            gw.admin_addr(),
            &build_request(
                method,
                path,
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            ),
        )
    };
    for far in ["10000y", "18446744073709551615s"] {
        let r = call(
            "POST",
            "/api/tokens",
            &json!({"user": "bob", "label": "far", "expires_in": far}),
        );
        assert_eq!(r.status, 400, "{r}");
        assert!(r.text().contains("9999-12-31T23:59:59Z"), "{r}");
        let r = call(
            "PATCH",
            &format!("/api/tokens/{id}"),
            &json!({"expires_in": far}),
        );
        assert_eq!(r.status, 400, "{r}");
        // Rotation's grace: refused like an expiry, never a 500.
        let r = call(
            "POST",
            &format!("/api/tokens/{id}/rotate"),
            &json!({"grace": far}),
        );
        assert_eq!(r.status, 400, "{r}");
        assert!(!r.text().contains("panicked"), "{r}");
    }
    assert!(!gw.logs().contains("panicked"), "{}", gw.logs());
}

// ----------------------------------------------------------------------------------------------------------
// Logs at every level
// ----------------------------------------------------------------------------------------------------------

/// Every form a token can take in a log line: the plaintext, its SHA-256 in hex, and the digest bytes as
/// `Debug` prints them (`[18, 52, ...]`, how tokio-postgres logs a statement's parameters).
fn forms_of(token: &str) -> Vec<String> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    let bytes: Vec<String> = digest.iter().map(u8::to_string).collect();
    vec![
        token.to_owned(),
        token[3..].to_owned(),
        sha256_hex(token.as_bytes()),
        sha256_hex(token.as_bytes()).to_uppercase(),
        bytes[..12].join(", "),
    ]
}

/// Runs a token command as the CLI would with `RUST_LOG=trace`; returns (stdout, stderr).
fn traced_cli(gw: &Gateway, args: &[&str]) -> (String, String) {
    let mut full = vec!["--config", gw.config_path().to_str().unwrap()];
    full.extend_from_slice(args);
    let out = run_env(&full, &[("RUST_LOG", "trace")], Duration::from_secs(60));
    assert_success(&out, args);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn token_of(json_text: &str) -> String {
    let v: Value = serde_json::from_str(json_text).unwrap_or_else(|e| panic!("{e}: {json_text}"));
    v["token"].as_str().expect("token").to_owned()
}

/// Creates, rotates and copies tokens through the CLI and the admin API of a `serve` run with
/// `RUST_LOG=trace`, then checks that no output holds a token in any form, nor `password`.
fn nothing_secret_at_trace(gw: &mut Gateway, up: &Upstream, copy_to: &str, password: Option<&str>) {
    let mut tokens = Vec::new();
    let mut logs = String::new();
    let (out, err) = traced_cli(
        gw,
        &[
            "token", "create", "--user", "ops", "--label", "console", "--scope", "admin", "--json",
        ],
    );
    let admin = token_of(&out);
    tokens.push(admin.clone());
    logs.push_str(&err);
    let (out, err) = traced_cli(
        gw,
        &[
            "token", "create", "--user", "alice", "--label", "a", "--json",
        ],
    );
    let first: Value = serde_json::from_str(&out).unwrap();
    tokens.push(token_of(&out));
    logs.push_str(&err);
    let id = first["id"].as_i64().unwrap().to_string();
    let (out, err) = traced_cli(gw, &["token", "rotate", &id, "--grace", "1m", "--json"]);
    tokens.push(token_of(&out));
    logs.push_str(&err);
    let (out, err) = traced_cli(gw, &["store", "copy", "--to", copy_to]);
    logs.push_str(&out);
    logs.push_str(&err);
    gw.start();
    let call = |method: &str, path: &str, body: &Value| {
        let auth = bearer(&admin);
        let body = body.to_string();
        raw_http(
            gw.admin_addr(),
            &build_request(
                method,
                path,
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            ),
        )
    };
    let created = call("POST", "/api/tokens", &json!({"user": "bob", "label": "b"}));
    assert_eq!(created.status, 201, "{created}");
    let bob = created.json();
    tokens.push(bob["token"].as_str().unwrap().to_owned());
    let rotated = call(
        "POST",
        &format!("/api/tokens/{}/rotate", bob["id"]),
        &json!({"grace": "1m"}),
    );
    assert_eq!(rotated.status, 200, "{rotated}");
    tokens.push(rotated.json()["token"].as_str().unwrap().to_owned());
    for t in &tokens[1..] {
        gw.wait_ok("/api/x", t);
    }
    assert!(up.hits() >= tokens.len() - 1);
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(20));
    logs.push_str(&gw.logs());
    assert!(
        logs.contains("TRACE") && logs.contains("DEBUG"),
        "RUST_LOG=trace took no effect:\n{logs}"
    );
    for t in &tokens {
        for form in forms_of(t) {
            if let Some(at) = logs.find(&form) {
                let line = logs[..at].rsplit('\n').next().unwrap_or_default();
                panic!("a token ({form}) shows in the logs, in the line starting: {line}");
            }
        }
    }
    if let Some(pw) = password {
        assert!(!logs.contains(pw), "the store password shows in the logs");
    }
}

#[test]
fn no_log_level_shows_tokens_on_sqlite() {
    let up = Upstream::start("api");
    let mut gw = GatewayBuilder::new()
        .env("RUST_LOG", "trace")
        .route("api", "/api", up.addr())
        .build();
    let copy = gw.dir().join("copy.db");
    let copy = format!("sqlite:{}", copy.display());
    nothing_secret_at_trace(&mut gw, &up, &copy, None);
}

#[test]
fn no_log_level_shows_tokens_digests_or_the_password_on_postgres() {
    let Some(admin) = admin_url() else { return };
    let (db, target) = (fresh_database(&admin), fresh_database(&admin));
    let up = Upstream::start("api");
    let mut gw = GatewayBuilder::new()
        .store_url(&db)
        .env("RUST_LOG", "trace")
        .route("api", "/api", up.addr())
        .build();
    let password = password_of(&db);
    nothing_secret_at_trace(&mut gw, &up, &target, Some(&password));
    // And the way back, PostgreSQL to SQLite and SQLite to PostgreSQL, each with its own tokens.
    let mut local = GatewayBuilder::new()
        .env("RUST_LOG", "trace")
        .route("api", "/api", up.addr())
        .build();
    let back = fresh_database(&admin);
    nothing_secret_at_trace(&mut local, &up, &back, Some(&password));
    let _ = Path::new(&*back);
}
