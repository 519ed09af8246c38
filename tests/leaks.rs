//! Leaked tokens revoke themselves: the secret-scanning partner endpoint (`[leaks]`) over real sockets,
//! the real binary, signatures made with test keys whose document is in `public_keys_file`. Written as
//! the attacker sees it: the endpoint is public and takes no bearer token, so every test that does not
//! hold the partner's key checks that nothing changes and that the answer tells nothing.

mod common;

use common::leaks::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokengate::tokens::format::Token;

fn gateway(up: &Upstream, signers: &[&Signer], extra: &[(&str, &str)]) -> Gateway {
    let b = with_leaks(
        GatewayBuilder::new()
            .section("log", "access", "\"plain\"")
            .section("log", "access_path", "\"access.log\"")
            .route("api", "/api", up.addr()),
        extra,
    );
    start_with_keys(b, signers)
}

fn body_of(matches: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&Value::Array(matches.to_vec())).unwrap()
}

fn status_of(gw: &Gateway, id: i64) -> String {
    gw.token_entry(id)["status"].as_str().unwrap().to_owned()
}

fn events_of(gw: &Gateway, id: i64) -> Vec<Value> {
    let v = gw.cli_json(&["token", "show", &id.to_string(), "--json"]);
    v["events"].as_array().cloned().unwrap_or_default()
}

/// Everything the gateway wrote: stderr log, access log, the store's events.
fn all_output(gw: &Gateway, ids: &[i64]) -> String {
    let mut out = gw.logs();
    out.push_str(&std::fs::read_to_string(gw.dir().join("access.log")).unwrap_or_default());
    for id in ids {
        out.push_str(&serde_json::to_string(&events_of(gw, *id)).unwrap());
    }
    out
}

#[test]
fn a_signed_report_revokes_the_token_everywhere_and_answers_with_feedback() {
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let gw = gateway(&up, &[&github], &[]);
    let (id, token) = gw.create_token("alice", "hive-7");
    gw.wait_status("/api/x", &token, 200);

    let body = body_of(&[report_match(&token)]);
    let r = send_signed(gw.addr(), &github, &body);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.json(),
        json!([{"token_hash": sha256_hex(token.as_bytes()), "token_type": "tokengate_device_token", "label": "true_positive"}])
    );
    assert!(!r.text().contains(&token));
    // Refused on the very next request, with the reason.
    let r = gw.get_with_token("/api/x", &token);
    assert_eq!(r.status, 401, "{r}");
    assert_eq!(r.json()["error"], "invalid_token");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("revoked: reported leaked"),
        "{r}"
    );
    assert_eq!(status_of(&gw, id), "revoked");
    let events = events_of(&gw, id);
    let revoked: Vec<&Value> = events.iter().filter(|e| e["event"] == "revoked").collect();
    assert_eq!(revoked.len(), 1, "{events:?}");
    assert_eq!(revoked[0]["actor"], "leak:github");
    let detail = revoked[0]["detail"].as_str().unwrap();
    assert!(detail.contains("content"), "{detail}");
    assert!(
        detail.contains("https://github.com/octo/hive/blob/abc123/example.env"),
        "{detail}"
    );

    // Idempotent: the same report again gives the same answer and revokes nothing more.
    let r2 = send_signed(gw.addr(), &github, &body);
    assert_eq!(r2.status, 200, "{r2}");
    assert_eq!(r2.json()[0]["label"], "true_positive");
    let events = events_of(&gw, id);
    assert_eq!(events.iter().filter(|e| e["event"] == "revoked").count(), 1);

    // A second gateway sharing the store refuses it too.
    let gw2 = GatewayBuilder::new()
        .store_path(&gw.db_path())
        .route("api", "/api", up.addr())
        .start();
    let r = gw2.get_with_token("/api/x", &token);
    assert_eq!(r.status, 401, "{r}");
    assert!(r.text().contains("reported leaked"), "{r}");

    let m = gw.metrics();
    assert_eq!(metric_sum(&m, "tokengate_leak_reports_total", &[]), 2.0);
    assert_eq!(
        metric_sum(
            &m,
            "tokengate_leak_matches_total",
            &["label=\"true_positive\"", "action=\"revoked\""]
        ),
        1.0
    );
    assert!(!m.contains(&token) && !m.contains(&sha256_hex(token.as_bytes())));
    assert!(!all_output(&gw, &[id]).contains(&token));
}

#[test]
fn without_the_partners_key_nothing_changes_and_the_answer_tells_nothing() {
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let mallory = Signer::new("key-1"); // same identifier, another key
    let gw = gateway(&up, &[&github], &[]);
    let (id, token) = gw.create_token("alice", "hive-7");
    gw.wait_status("/api/x", &token, 200);
    let unknown = Token::generate().into_string();

    let body = body_of(&[report_match(&token)]);
    let good = github.sign(&body);
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 0x01; // one byte of the JSON (inside the last string)
    let attempts: Vec<(&str, Vec<u8>)> = vec![
        (
            "another key",
            report_request(&body, Some("key-1"), Some(&mallory.sign(&body))),
        ),
        (
            "tampered body",
            report_request(&tampered, Some("key-1"), Some(&good)),
        ),
        ("no signature", report_request(&body, Some("key-1"), None)),
        ("no key id", report_request(&body, None, Some(&good))),
        ("nothing", report_request(&body, None, None)),
        (
            "unknown key id",
            report_request(&body, Some("key-2"), Some(&good)),
        ),
        (
            "not base64",
            report_request(&body, Some("key-1"), Some("%%%not base64%%%")),
        ),
        (
            "a signature of something else",
            report_request(&body, Some("key-1"), Some(&github.sign(b"[]"))),
        ),
    ];
    let mut answers = Vec::new();
    for (what, req) in &attempts {
        let r = raw_http(gw.addr(), req);
        assert_eq!(r.status, 401, "{what}: {r}");
        assert!(!r.text().contains(&token), "{what}");
        answers.push((what, r.json()));
    }
    // Not an oracle: the same answer whether the token named exists or not.
    let other = body_of(&[report_match(&unknown)]);
    let r = raw_http(
        gw.addr(),
        &report_request(&other, Some("key-1"), Some(&mallory.sign(&other))),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), answers[0].1, "the answer depends on the token");
    // A duplicated signature field is no signature.
    let sig = github.sign(&body);
    let dup = build_request(
        "POST",
        PATH,
        &[
            ("Github-Public-Key-Identifier", "key-1"),
            ("Github-Public-Key-Signature", &sig),
            ("Github-Public-Key-Signature", &sig),
        ],
        &body,
    );
    assert_eq!(raw_http(gw.addr(), &dup).status, 401);

    assert_eq!(gw.get_with_token("/api/x", &token).status, 200);
    assert_eq!(status_of(&gw, id), "active");
    assert_eq!(
        events_of(&gw, id)
            .iter()
            .filter(|e| e["event"] == "revoked")
            .count(),
        0
    );
    let m = gw.metrics();
    assert_eq!(metric_sum(&m, "tokengate_leak_reports_total", &[]), 0.0);
    assert!(metric_sum(&m, "tokengate_leak_signature_failures_total", &[]) >= 9.0);
    assert!(!all_output(&gw, &[id]).contains(&token));
}

#[test]
fn a_mixed_report_revokes_exactly_the_active_token_and_labels_each_match() {
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let gw = gateway(&up, &[&github], &[]);
    let (id, token) = gw.create_token("alice", "hive-7");
    let (other_id, other) = gw.create_token("bob", "hive-8");
    gw.wait_status("/api/x", &token, 200);
    let unknown = Token::generate().into_string();
    let mut bad_checksum = token.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
    let foreign = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
    let matches = [&token, &unknown, &bad_checksum, foreign];
    let body = body_of(&matches.iter().map(|t| report_match(t)).collect::<Vec<_>>());
    let r = send_signed(gw.addr(), &github, &body);
    assert_eq!(r.status, 200, "{r}");
    let labels: Vec<(String, String)> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["token_hash"].as_str().unwrap().to_owned(),
                f["label"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = matches
        .iter()
        .zip([
            "true_positive",
            "false_positive",
            "false_positive",
            "false_positive",
        ])
        .map(|(t, l)| (sha256_hex(t.as_bytes()), l.to_owned()))
        .collect();
    assert_eq!(labels, want);
    assert_eq!(status_of(&gw, id), "revoked");
    assert_eq!(status_of(&gw, other_id), "active");
    assert_eq!(gw.get_with_token("/api/x", &other).status, 200);
    let text = r.text();
    let out = all_output(&gw, &[id, other_id]);
    for t in matches {
        assert!(!text.contains(t), "a plaintext in the answer");
        assert!(!out.contains(t), "a plaintext in a log line or event");
    }
    let m = gw.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "tokengate_leak_matches_total",
            &["label=\"false_positive\""]
        ),
        3.0
    );
}

#[test]
fn action_report_revokes_nothing() {
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let gw = gateway(&up, &[&github], &[("action", "\"report\"")]);
    let (id, token) = gw.create_token("alice", "hive-7");
    gw.wait_status("/api/x", &token, 200);
    let r = send_signed(gw.addr(), &github, &body_of(&[report_match(&token)]));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()[0]["label"], "true_positive");
    assert_eq!(gw.get_with_token("/api/x", &token).status, 200);
    assert_eq!(status_of(&gw, id), "active");
    let m = gw.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "tokengate_leak_matches_total",
            &["label=\"true_positive\"", "action=\"reported\""]
        ),
        1.0
    );
}

#[test]
fn only_post_on_the_exact_path_and_every_other_path_is_routed_as_before() {
    let up = Upstream::start("root");
    let github = Signer::new("key-1");
    // A route that would take the endpoint's path if it were routed.
    let b = with_leaks(GatewayBuilder::new().route("root", "/", up.addr()), &[]);
    let gw = start_with_keys(b, &[&github]);
    let (_, token) = gw.create_token("alice", "hive-7");
    gw.wait_status("/x", &token, 200);
    for method in ["GET", "PUT", "DELETE"] {
        let r = raw_http(gw.addr(), &build_request(method, PATH, &[], b""));
        assert_eq!(r.status, 405, "{method}: {r}");
        assert_eq!(r.header("allow"), Some("POST"));
    }
    let mut c = gw.connect();
    c.send(&build_request("HEAD", PATH, &[], b"")).unwrap();
    assert_eq!(c.read_head_response().unwrap().status, 405);
    let hits = up.hits();
    // Neighbours of the path go through routing (a bearer token required there, as before).
    for path in [
        &format!("{PATH}/"),
        &format!("{PATH}x"),
        "/.well-known/tokengate",
        "/.well-known/tokengate/Secret-Scanning",
    ] {
        let r = raw_http(gw.addr(), &build_request("POST", path, &[], b"[]"));
        assert_eq!(r.status, 401, "{path}: {r}");
        let r = gw.get_with_token(path, &token);
        assert_eq!(r.status, 200, "{path}: {r}");
    }
    assert_eq!(up.hits(), hits + 4);
    // A query does not change which path it is.
    let r = raw_http(
        gw.addr(),
        &build_request("POST", &format!("{PATH}?x=1"), &[], b"[]"),
    );
    assert_eq!(r.status, 401, "{r}");
    assert_eq!(r.json()["error"], "invalid_signature");
}

#[test]
fn without_a_leaks_section_the_path_is_routed() {
    let up = Upstream::start("root");
    let gw = GatewayBuilder::new().route("root", "/", up.addr()).start();
    let (_, token) = gw.create_token("alice", "hive-7");
    let r = gw.wait_status(PATH, &token, 200);
    assert_eq!(r.status, 200);
    let r = raw_http(gw.addr(), &build_request("POST", PATH, &[], b"[]"));
    assert_eq!(r.status, 401);
    assert_ne!(r.json()["error"], "invalid_signature");
}

#[test]
fn memory_and_work_are_bounded_before_the_signature_is_checked() {
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let gw = gateway(&up, &[&github], &[]);
    let (id, token) = gw.create_token("alice", "hive-7");
    gw.wait_status("/api/x", &token, 200);
    // Over 1 MiB announced: refused before a byte of the body is sent.
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nGithub-Public-Key-Identifier: key-1\r\nGithub-Public-Key-Signature: AAAA\r\nContent-Length: {}\r\n\r\n",
        (1 << 20) + 1
    );
    let r = raw_http(gw.addr(), head.as_bytes());
    assert_eq!(r.status, 413, "{r}");
    // Chunked: a length is required.
    let chunked = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nGithub-Public-Key-Identifier: key-1\r\nGithub-Public-Key-Signature: AAAA\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n"
    );
    let r = raw_http(gw.addr(), chunked.as_bytes());
    assert_eq!(r.status, 411, "{r}");
    // Unsigned: refused before the body is read, whatever its size.
    let r = raw_http(
        gw.addr(),
        format!("POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 401, "{r}");
    // Signed, but more than 1000 matches.
    let many: Vec<Value> = (0..1001).map(|_| report_match(&token)).collect();
    let r = send_signed(gw.addr(), &github, &body_of(&many));
    assert_eq!(r.status, 413, "{r}");
    // Signed, not the shape: 400 that does not quote the body.
    let weird = format!("{{\"token\": \"{token}\"}}");
    let r = send_signed(gw.addr(), &github, weird.as_bytes());
    assert_eq!(r.status, 400, "{r}");
    assert!(!r.text().contains(&token));
    assert_eq!(status_of(&gw, id), "active");
    assert_eq!(gw.get_with_token("/api/x", &token).status, 200);
    assert!(!gw.logs().contains(&token));
}

#[test]
fn the_endpoint_answers_on_the_tls_listener_too() {
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let b = with_leaks(
        GatewayBuilder::new()
            .wire(Wire::Tls)
            .route("api", "/api", up.addr()),
        &[],
    );
    let gw = start_with_keys(b, &[&github]);
    let (id, token) = gw.create_token("alice", "hive-7");
    gw.wait_status("/api/x", &token, 200);
    let body = body_of(&[report_match(&token)]);
    let mut conn = gw.tls_conn(&tls::ClientOptions::default());
    let r = conn
        .roundtrip(&report_request(
            &body,
            Some("key-1"),
            Some(&github.sign(&body)),
        ))
        .unwrap();
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()[0]["label"], "true_positive");
    assert_eq!(status_of(&gw, id), "revoked");
    let r = gw.get_with_token("/api/x", &token);
    assert_eq!(r.status, 401, "{r}");
}

/// The example an operator uses to test the endpoint end to end (`examples/sign_leak_report.rs`),
/// compiled in: the test runs the example's own code.
#[allow(dead_code)]
#[path = "../examples/sign_leak_report.rs"]
mod example_signer;

/// The webhook verifier of `examples/verify_leak_hook.rs`, compiled in.
#[allow(dead_code)]
#[path = "../examples/verify_leak_hook.rs"]
mod example_hook;

fn run_example(args: &[&str]) -> Result<(), String> {
    use clap::Parser;
    let mut argv = vec!["sign_leak_report"];
    argv.extend_from_slice(args);
    example_signer::run(example_signer::Args::parse_from(argv))
}

#[test]
fn the_signing_example_revokes_a_token_end_to_end() {
    let up = Upstream::start("api");
    let b = with_leaks(GatewayBuilder::new().route("api", "/api", up.addr()), &[]);
    let mut gw = b.build();
    let key = gw.dir().join("leak-test.p8");
    let (key_s, doc) = (
        key.to_str().unwrap().to_owned(),
        gw.dir().join(KEYS_FILE).to_str().unwrap().to_owned(),
    );
    run_example(&["keygen", "--key", &key_s, "--document", &doc]).unwrap();
    gw.start();
    let (id, token) = gw.create_token("alice", "hive-7");
    gw.wait_status("/api/x", &token, 200);
    let url = format!("http://{}{PATH}", gw.addr());
    // Another key id than the document's: refused, nothing revoked.
    let err = run_example(&[
        "send", "--key", &key_s, "--url", &url, "--key-id", "nope", &token,
    ]);
    assert!(err.unwrap_err().contains("401"));
    assert_eq!(status_of(&gw, id), "active");
    run_example(&["send", "--key", &key_s, "--url", &url, &token]).unwrap();
    assert_eq!(status_of(&gw, id), "revoked");
    assert_eq!(gw.get_with_token("/api/x", &token).status, 401);
}

/// A webhook receiver: answers `500` to the first `fail` deliveries, then `200`; records every
/// delivery's signature field and body.
struct Hook {
    deliveries: std::sync::Arc<std::sync::Mutex<Vec<(String, String, u16)>>>,
}

impl Hook {
    fn start(listener: std::net::TcpListener, fail: usize) -> Hook {
        use std::io::{BufRead, BufReader, Read, Write};
        let deliveries = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = deliveries.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut sig, mut len) = (String::new(), 0usize);
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    let (k, v) = line.split_once(':').unwrap();
                    match k.to_ascii_lowercase().as_str() {
                        "x-tokengate-signature" => sig = v.trim().to_owned(),
                        "content-length" => len = v.trim().parse().unwrap(),
                        _ => {}
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let mut seen = seen.lock().unwrap();
                let status = if seen.len() < fail { 500 } else { 200 };
                seen.push((sig, String::from_utf8(body).unwrap(), status));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Hook { deliveries }
    }

    fn delivered(&self) -> Vec<(String, String)> {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.2 == 200)
            .map(|d| (d.0.clone(), d.1.clone()))
            .collect()
    }

    fn attempts(&self) -> usize {
        self.deliveries.lock().unwrap().len()
    }
}

/// Checks `t=<unix>,v1=<hex>` over `t.body` with `secret`.
fn hook_signature_ok(secret: &[u8], field: &str, body: &str) -> bool {
    use hmac::Mac;
    let (t, v1) = field.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    want == v1
}

#[test]
fn the_owner_is_notified_once_through_a_hook_that_was_down_across_a_restart() {
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let port = free_port();
    let secret = "a-long-random-hook-key-for-tests";
    let b = with_leaks(
        GatewayBuilder::new().route("api", "/api", up.addr()),
        &[
            (
                "notify_url",
                &format!("\"http://127.0.0.1:{port}/hooks/token-leaked\""),
            ),
            ("notify_secret_file", "\"hook.key\""),
        ],
    );
    let mut gw = b.build();
    std::fs::write(gw.dir().join("hook.key"), format!("{secret}\n")).unwrap();
    std::fs::write(gw.dir().join(KEYS_FILE), document(&[&github])).unwrap();
    gw.start();
    let (id, token) = gw.create_token("alice", "hive-7");
    gw.wait_status("/api/x", &token, 200);
    let body = body_of(&[report_match(&token)]);
    // Twice: one report, one notification.
    assert_eq!(send_signed(gw.addr(), &github, &body).status, 200);
    assert_eq!(send_signed(gw.addr(), &github, &body).status, 200);
    // The hook is down (connection refused) for the first attempt, then answers 500 once.
    std::thread::sleep(Duration::from_secs(2));
    let hook = Hook::start(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(), 1);
    // The gateway restarts meanwhile: the queue is in the store.
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(10));
    gw.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while hook.delivered().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let delivered = hook.delivered();
    assert_eq!(delivered.len(), 1, "attempts: {}", hook.attempts());
    assert!(hook.attempts() >= 2, "the 500 was not retried");
    let (field, json) = &delivered[0];
    assert!(hook_signature_ok(secret.as_bytes(), field, json), "{field}");
    assert_eq!(
        example_hook::verify(secret.as_bytes(), Some(field), json.as_bytes(), 300),
        Ok(())
    );
    let tampered = json.replace("alice", "mallory");
    assert!(
        example_hook::verify(secret.as_bytes(), Some(field), tampered.as_bytes(), 300).is_err()
    );
    assert!(example_hook::verify(
        b"another-key-of-enough-length",
        Some(field),
        json.as_bytes(),
        300
    )
    .is_err());
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["event"], "token_leaked");
    assert_eq!(v["token_id"], id);
    assert_eq!(v["user"], "alice");
    assert_eq!(v["label"], "hive-7");
    assert_eq!(v["action"], "revoked");
    assert_eq!(v["source"], "content");
    assert!(!json.contains(&token));
    // Nothing more comes.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hook.delivered().len(), 1);
}

#[test]
fn operators_report_leaks_through_the_admin_api_and_the_cli_and_list_them() {
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let gw = gateway(&up, &[&github], &[]);
    let (_, admin) = gw.create_token_with("ops", "console", &["--scope", "admin"]);
    let (_, device) = gw.create_token("bob", "hive-9");
    let (id, token) = gw.create_token("alice", "hive-7");
    let (cli_id, cli_token) = gw.create_token("carol", "hive-8");
    gw.wait_status("/api/x", &token, 200);
    let body = serde_json::to_vec(&json!([
        {"token": token, "type": "found_in_logs", "url": "https://tickets.example/T-17", "source": "support"}
    ]))
    .unwrap();
    let post = |auth: &str| {
        raw_http(
            gw.admin_addr(),
            &build_request(
                "POST",
                "/api/leaks",
                &[
                    ("Authorization", &bearer(auth)),
                    ("Content-Type", "application/json"),
                ],
                &body,
            ),
        )
    };
    // Not an admin: refused, nothing revoked.
    let r = post(&device);
    assert_eq!(r.status, 403, "{r}");
    assert_eq!(gw.get_with_token("/api/x", &token).status, 200);
    let r = post(&admin);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.json(),
        json!([{"token_hash": sha256_hex(token.as_bytes()), "token_type": "found_in_logs", "label": "true_positive"}])
    );
    let r = gw.get_with_token("/api/x", &token);
    assert_eq!(r.status, 401, "{r}");
    assert!(r.text().contains("reported leaked"));
    let revoked: Vec<Value> = events_of(&gw, id)
        .into_iter()
        .filter(|e| e["event"] == "revoked")
        .collect();
    assert!(revoked[0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("leak:admin:"));

    // The CLI, from a file.
    let file = gw.dir().join("found.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&json!([{"token": cli_token, "type": "scanner", "url": "s3://bucket/x", "source": "other"}]))
            .unwrap(),
    )
    .unwrap();
    let out = gw.cli(&[
        "token",
        "leaked",
        "--from-file",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["label"], "true_positive");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&cli_token));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&cli_token));
    assert_eq!(status_of(&gw, cli_id), "revoked");
    assert_eq!(gw.get_with_token("/api/x", &cli_token).status, 401);

    // The listing: both reports, no token, no hash.
    let r = raw_http(
        gw.admin_addr(),
        &build_request(
            "GET",
            "/api/leaks",
            &[("Authorization", &bearer(&admin))],
            b"",
        ),
    );
    assert_eq!(r.status, 200, "{r}");
    let list = r.json();
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["token_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![cli_id, id]);
    assert_eq!(list[1]["action"], "revoked");
    assert_eq!(list[1]["url"], "https://tickets.example/T-17");
    let text = r.text();
    for t in [&token, &cli_token] {
        assert!(!text.contains(t.as_str()) && !text.contains(&sha256_hex(t.as_bytes())));
    }
    let r = raw_http(
        gw.admin_addr(),
        &build_request(
            "GET",
            &format!("/api/leaks?token_id={id}"),
            &[("Authorization", &bearer(&admin))],
            b"",
        ),
    );
    assert_eq!(r.json().as_array().unwrap().len(), 1);
}

/// A loopback mirror of the key document: serves whatever `doc` holds, counts the fetches.
fn key_mirror(
    doc: std::sync::Arc<std::sync::Mutex<String>>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = fetches.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = doc.lock().unwrap().clone();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, fetches)
}

#[test]
fn keys_from_a_url_are_fetched_again_for_a_new_key_id_at_most_once_a_minute() {
    use std::sync::atomic::Ordering::SeqCst;
    let up = Upstream::start("api");
    let (old, new, mallory) = (
        Signer::new("key-1"),
        Signer::new("key-2"),
        Signer::new("key-3"),
    );
    let doc = std::sync::Arc::new(std::sync::Mutex::new(document(&[&old])));
    let (mirror, fetches) = key_mirror(doc.clone());
    let gw = GatewayBuilder::new()
        .route("api", "/api", up.addr())
        .section(
            "leaks",
            "public_keys_url",
            &format!("\"http://{mirror}/keys\""),
        )
        .start();
    assert_eq!(fetches.load(SeqCst), 1, "read once at start");
    let (id, token) = gw.create_token("alice", "hive-7");
    let (id2, token2) = gw.create_token("bob", "hive-8");
    gw.wait_status("/api/x", &token2, 200);
    // GitHub rotates: the mirror now has key-2 too, and a report comes signed with it.
    *doc.lock().unwrap() = document(&[&new, &old]);
    let r = send_signed(gw.addr(), &new, &body_of(&[report_match(&token)]));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(fetches.load(SeqCst), 2);
    assert_eq!(status_of(&gw, id), "revoked");
    // Made-up key ids: 401, and no more fetches within the minute.
    for _ in 0..5 {
        let r = send_signed(gw.addr(), &mallory, &body_of(&[report_match(&token2)]));
        assert_eq!(r.status, 401, "{r}");
    }
    assert_eq!(fetches.load(SeqCst), 2);
    assert_eq!(status_of(&gw, id2), "active");
}

#[test]
fn a_missing_or_bad_key_document_stops_the_start_naming_the_key() {
    let up = Upstream::start("api");
    let mut gw = with_leaks(GatewayBuilder::new().route("api", "/api", up.addr()), &[]).build();
    // No document at all.
    gw.spawn();
    let status = gw.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let logs = gw.logs();
    assert!(logs.contains("leaks.public_keys_file"), "{logs}");
    // A document with a key that is not P-256.
    std::fs::write(
        gw.dir().join(KEYS_FILE),
        r#"{"public_keys":[{"key_identifier":"x","key":"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----","is_current":true}]}"#,
    )
    .unwrap();
    gw.spawn();
    let status = gw.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        gw.logs().contains("not an ECDSA P-256 public key"),
        "{}",
        gw.logs()
    );
}

#[test]
fn on_postgresql_a_fleet_refuses_the_leaked_token_and_notifies_once() {
    let Some(admin) = common::pg::admin_url() else {
        return;
    };
    let db = common::pg::fresh_database(&admin);
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let hook = Hook::start(listener, 0);
    let secret = "a-long-random-hook-key-for-tests";
    let node = || {
        let b = with_leaks(
            GatewayBuilder::new()
                .store_url(db.url())
                .route("api", "/api", up.addr()),
            &[
                ("notify_url", &format!("\"http://{hook_addr}/hook\"")),
                ("notify_secret_file", "\"hook.key\""),
            ],
        );
        let mut gw = b.build();
        std::fs::write(gw.dir().join("hook.key"), secret).unwrap();
        std::fs::write(gw.dir().join(KEYS_FILE), document(&[&github])).unwrap();
        gw.start();
        gw
    };
    let (a, b) = (node(), node());
    let (_, admin_token) = a.create_token_with("ops", "console", &["--scope", "admin"]);
    let (id, token) = a.create_token("alice", "hive-7");
    a.wait_status("/api/x", &token, 200);
    b.wait_status("/api/x", &token, 200);
    let body = body_of(&[report_match(&token)]);
    let r = send_signed(a.addr(), &github, &body);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()[0]["label"], "true_positive");
    // The other node refuses it within its sync bound, with the reason.
    let r = b.wait_status("/api/x", &token, 401);
    assert!(r.text().contains("revoked: reported leaked"), "{r}");
    // Reported again at the other node: nothing more.
    assert_eq!(send_signed(b.addr(), &github, &body).status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while hook.delivered().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let delivered = hook.delivered();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(hook_signature_ok(
        secret.as_bytes(),
        &delivered[0].0,
        &delivered[0].1
    ));
    let r = raw_http(
        b.admin_addr(),
        &build_request(
            "GET",
            "/api/leaks",
            &[("Authorization", &bearer(&admin_token))],
            b"",
        ),
    );
    assert_eq!(r.status, 200, "{r}");
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["token_id"], id);
    assert_eq!(list[0]["action"], "revoked");
}

#[test]
fn slow_bodies_hold_a_bounded_number_of_slots_and_expect_continue_is_answered() {
    use std::io::{Read, Write};
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let gw = gateway(&up, &[&github], &[]);
    let (id, token) = gw.create_token("alice", "hive-7");
    gw.wait_status("/api/x", &token, 200);
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nGithub-Public-Key-Identifier: key-1\r\nGithub-Public-Key-Signature: AAAA\r\nContent-Length: 1000000\r\n\r\n"
    );
    // Sixteen callers announce a large body and send nothing more: each holds a slot.
    let mut held = Vec::new();
    for _ in 0..16 {
        let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let r = raw_http(gw.addr(), head.as_bytes());
    assert_eq!(r.status, 503, "{r}");
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(held); // their slots come back when they go away
    let body = body_of(&[report_match(&token)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = send_signed(gw.addr(), &github, &body);
        if r.status != 503 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(status_of(&gw, id), "revoked");

    // `Expect: 100-continue` (curl sends it for bodies over 1 KiB): the 100 comes before the body.
    let sig = github.sign(&body);
    let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nGithub-Public-Key-Identifier: key-1\r\nGithub-Public-Key-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(&body).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
}

#[test]
fn what_a_report_says_cannot_forge_log_lines_or_grow_events() {
    let up = Upstream::start("api");
    let github = Signer::new("key-1");
    let gw = gateway(&up, &[&github], &[]);
    let (id, token) = gw.create_token("alice", "hive-7");
    gw.wait_status("/api/x", &token, 200);
    let long = "a".repeat(5000);
    let body = serde_json::to_vec(&json!([{
        "token": token,
        "type": format!("t\r\n{long}"),
        "url": format!("https://x/\r\n[ERROR] forged line {long}"),
        "source": "content\nforged",
    }]))
    .unwrap();
    let r = send_signed(gw.addr(), &github, &body);
    assert_eq!(r.status, 200, "{r}");
    assert!(r.json()[0]["token_type"].as_str().unwrap().len() <= 64);
    let events = events_of(&gw, id);
    let detail = events.iter().find(|e| e["event"] == "revoked").unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !detail.contains('\n') && !detail.contains('\r'),
        "{detail:?}"
    );
    assert!(detail.len() < 1200, "{} bytes", detail.len());
    assert!(
        !gw.logs().lines().any(|l| l.starts_with("[ERROR] forged")),
        "a forged log line"
    );
}
