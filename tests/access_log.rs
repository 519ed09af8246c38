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
