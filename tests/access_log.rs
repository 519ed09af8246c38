//! The access log's delivery, through the real binary: every request's line is written whole by a
//! graceful shutdown (lines are formatted by the worker into its own ring and written by the writer
//! thread), and a line reaches the file within a second without one. The formats and the bounds are
//! unit-tested in src/telemetry/access_log; a stalled target is in tests/bounds.rs.

mod common;

use common::*;
use std::collections::HashSet;
use std::fs;
use std::time::{Duration, Instant};

fn logged(gw: &Gateway) -> Vec<serde_json::Value> {
    fs::read_to_string(gw.dir().join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a whole JSON line ({e}): {l}")))
        .collect()
}

#[test]
fn every_request_s_line_is_written_whole_by_a_graceful_shutdown() {
    let up = Upstream::start("iot");
    let mut gw = GatewayBuilder::new()
        .gateway("threads", "2")
        .section("log", "access", "\"json\"")
        .section("log", "access_path", "\"access.log\"")
        .route("iot", "/iot", up.addr())
        .build();
    let (_, token) = gw.create_token("alice", "log");
    gw.start();
    // 4 clients × 1,000 keep-alive requests, allowed and refused, each with its own request id.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (addr, token) = (gw.addr(), token.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                for i in 0..1_000 {
                    let id = format!("c{c}-{i}");
                    let auth = bearer(if i % 3 == 0 { "tg_wrong" } else { &token });
                    let request = keepalive_request(
                        "GET",
                        &format!("/iot/{c}/{i}"),
                        &[("Authorization", &auth), ("x-request-id", &id)],
                        b"",
                    );
                    let r = conn.roundtrip(&request).expect("a response");
                    assert_eq!(r.status, if i % 3 == 0 { 401 } else { 200 }, "{r}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
    let lines = logged(&gw);
    let mut seen = HashSet::new();
    for v in &lines {
        let path = v["path"].as_str().expect("path");
        if path == "/iot/warm" || !path.starts_with("/iot/") {
            continue;
        }
        assert!(seen.insert(path.to_owned()), "logged twice: {v}");
        let i: u32 = path.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(
            v["status"],
            if i.is_multiple_of(3) { 401 } else { 200 },
            "{v}"
        );
        assert_eq!(v["user_id"].is_null(), i.is_multiple_of(3), "{v}");
    }
    assert_eq!(seen.len(), 4_000, "every request has its line, once");
}

#[test]
fn a_line_reaches_the_file_within_a_second_while_the_gateway_runs() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .section("log", "access", "\"json\"")
        .section("log", "access_path", "\"access.log\"")
        .route("iot", "/iot", up.addr())
        .start();
    // Warm: the first line of a worker thread makes its ring.
    assert_eq!(gw.request("GET", "/iot/warm", &[], b"").status, 401);
    assert!(poll_until(
        Duration::from_secs(10),
        Duration::from_millis(10),
        || { !logged(&gw).is_empty() }
    ));
    let sent = Instant::now();
    assert_eq!(gw.request("GET", "/iot/one", &[], b"").status, 401);
    let mut at = None;
    poll_until(Duration::from_secs(10), Duration::from_millis(5), || {
        let found = logged(&gw).iter().any(|v| v["path"] == "/iot/one");
        if found {
            at = Some(sent.elapsed());
        }
        found
    });
    let at = at.expect("the line was written");
    eprintln!("the line was in the file {at:?} after the request was sent");
    // The writer looks every 100 ms; a second leaves room for a busy machine.
    assert!(at < Duration::from_secs(1), "{at:?}");
}

/// A request refused after its token was known (over the route's rate, over the token's concurrency, a
/// body over the route's limit) names the token and its user in its line, so an operator sees which
/// device is over its limit, on HTTP/1.1 and on HTTP/2; a token that was not known names none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_authentication_names_the_token() {
    let up = Upstream::start("iot");
    let mut gw = GatewayBuilder::new()
        .tls()
        .section("log", "access", "\"json\"")
        .section("log", "access_path", "\"access.log\"")
        .route_with("iot", "/iot", up.addr(), &[("rate_limit", "\"1/m\"")])
        .route_with("small", "/small", up.addr(), &[("max_body_bytes", "10")])
        .build();
    let (id, token) = gw.create_token("alice", "scale");
    gw.start();
    gw.wait_ok("/small/warm", &token);
    let auth = bearer(&token);
    for i in 0..2 {
        let r = gw.request(
            "GET",
            &format!("/iot/h1/{i}"),
            &[("Authorization", &auth)],
            b"",
        );
        assert_eq!(r.status, if i == 0 { 200 } else { 429 }, "{r}");
    }
    let r = gw.request("POST", "/small/h1", &[("Authorization", &auth)], &[7; 100]);
    assert_eq!(r.status, 413, "{r}");
    let mut h2 = common::http2::tls_connect(&gw, &tls::ClientOptions::default())
        .await
        .expect("h2");
    let head = http::Request::get("https://localhost/iot/h2")
        .header("authorization", &auth)
        .body(())
        .unwrap();
    let r = common::http2::send_one(&mut h2, head, Vec::new())
        .await
        .expect("h2 answer");
    assert_eq!(r.status, 429, "{r}");
    let r = gw.request(
        "GET",
        "/iot/unknown",
        &[("Authorization", "Bearer tg_wrong")],
        b"",
    );
    assert_eq!(r.status, 401, "{r}");

    let mut lines = Vec::new();
    poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        lines = logged(&gw);
        lines.iter().any(|v| v["path"] == "/iot/unknown")
    });
    let line = |path: &str| {
        lines
            .iter()
            .find(|v| v["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {lines:?}"))
            .clone()
    };
    for (path, status, auth) in [
        ("/iot/h1/1", 429, "rate_limited"),
        ("/small/h1", 413, "ok"),
        ("/iot/h2", 429, "rate_limited"),
    ] {
        let v = line(path);
        assert_eq!(v["status"], status, "{v}");
        assert_eq!(v["token_id"], id, "{v}");
        assert_eq!(v["user_id"], "alice", "{v}");
        assert_eq!(v["auth"], auth, "{v}");
    }
    let v = line("/iot/unknown");
    assert!(v["token_id"].is_null() && v["user_id"].is_null(), "{v}");
}

/// The query is never logged, whatever the target's form: a target that is neither origin nor absolute
/// form (`iot?api_token=…`, `*?api_token=…`) once made the whole target, token and all, the logged
/// path. Over the plain and the JSON log, with and without the token in the header too.
#[test]
fn a_query_is_not_logged_whatever_the_target_s_form() {
    for format in ["plain", "json"] {
        let up = Upstream::start("iot");
        let mut gw = GatewayBuilder::new()
            .section("log", "access", &format!("\"{format}\""))
            .section("log", "access_path", "\"access.log\"")
            .route("iot", "/iot", up.addr())
            .build();
        let (_, token) = gw.create_token("alice", "log");
        gw.start();
        let targets = ["iot/a", "*", "http:/iot/b", "/iot/c"];
        for (i, target) in targets.iter().enumerate() {
            let mut request = format!("GET {target}?api_token={token} HTTP/1.1\r\nHost: gw\r\n");
            if i % 2 == 0 {
                request.push_str(&format!("Authorization: Bearer {token}\r\n"));
            }
            request.push_str(&format!(
                "x-request-id: probe-{i}\r\nConnection: close\r\n\r\n"
            ));
            let r = gw.raw(request.as_bytes());
            eprintln!("{format} {target}: {}", r.status);
        }
        let file = gw.dir().join("access.log");
        let mut text = String::new();
        poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
            text = fs::read_to_string(&file).unwrap_or_default();
            text.contains("/iot/c")
        });
        assert!(text.contains("/iot/c"), "{format}: logged:\n{text}");
        assert!(
            !text.contains("api_token"),
            "{format}: the query is in the log:\n{text}"
        );
        assert!(
            !text.contains(&token[3..20]),
            "{format}: the token is in the log"
        );
    }
}
