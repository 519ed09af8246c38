//! Operations against the real binary (issue 7): SIGHUP reload under load (no failed request, invalid files
//! refused), every metric family, the access log formats, per-route body limits (413) and request timeout
//! (408), the legacy query-token route, and the idle keep-alive timeout.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn hup(gw: &Gateway) {
    let st = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(gw.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn metrics(gw: &Gateway) -> String {
    gw.admin_get("/metrics").text()
}

/// The value of the first sample line starting with `prefix` (a metric name with its labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn reload_under_load_changes_routes_without_a_failed_request() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let gw = GatewayBuilder::new().route("a", "/a", a.addr()).start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/a/x", &token);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let addr = gw.addr();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, token) =
                (stop.clone(), ok.clone(), failed.clone(), token.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let req = build_request(
                        "GET",
                        "/a/x",
                        &[("Authorization", &format!("Bearer {token}"))],
                        b"",
                    );
                    match try_raw_http(addr, &req) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed during reload: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let base = fs::read_to_string(gw.config_path()).unwrap();
    let with_b = format!(
        "{base}\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"{}\"\n",
        b.addr()
    );
    for round in 0..3 {
        fs::write(gw.config_path(), &with_b).unwrap();
        hup(&gw);
        gw.wait_ok("/b/x", &token);
        fs::write(gw.config_path(), &base).unwrap();
        hup(&gw);
        assert!(
            poll_until(Duration::from_secs(5), Duration::from_millis(5), || gw
                .get_with_token("/b/x", &token)
                .status
                == 404),
            "round {round}: route b was not removed"
        );
    }
    // A header rule added by reload applies to new requests.
    let stripping = base.replace(
        "name = \"a\"\n",
        "name = \"a\"\nstrip_request_headers = [\"x-debug\"]\n",
    );
    assert_ne!(stripping, base, "config layout changed: {base}");
    fs::write(gw.config_path(), &stripping).unwrap();
    hup(&gw);
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            gw.request(
                "GET",
                "/a/y",
                &[
                    ("Authorization", &format!("Bearer {token}")),
                    ("X-Debug", "1"),
                ],
                b"",
            );
            a.last().uri == "/a/y" && a.last().header_values("x-debug").is_empty()
        }
    ));

    // An invalid file is refused and the running configuration kept.
    let before = sample(
        &metrics(&gw),
        "tokengate_config_reloads_total{result=\"error\"}",
    )
    .unwrap();
    fs::write(gw.config_path(), format!("{stripping}\nbogus_key = 1\n")).unwrap();
    hup(&gw);
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            sample(
                &metrics(&gw),
                "tokengate_config_reloads_total{result=\"error\"}",
            ) == Some(before + 1.0)
        }
    ));
    assert!(gw.logs().contains("refused"), "the refusal is logged");
    let check = gw.cli(&["check-config"]);
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("bogus_key"),
        "{}",
        describe(&check)
    );

    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("reload under load: {ok} requests ok, {failed} failed, 7 reloads");
    assert!(ok > 50, "the load did not run: {ok}");
    assert_eq!(failed, 0, "requests failed during reloads");
    assert_eq!(
        gw.get_with_token("/a/x", &token).status,
        200,
        "old config still serves"
    );
}

#[test]
fn every_metric_family_is_exported_without_secrets_in_labels() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .route_with(
            "scoped",
            "/scoped",
            up.addr(),
            &[("required_scope", "\"video:write\"")],
        )
        .route("dead", "/dead", refused_addr())
        .start();
    let (_, token) = gw.create_token("secret-user-name", "scale");
    gw.wait_ok("/iot/private-path-segment", &token);
    gw.request(
        "POST",
        "/iot/upload",
        &[("Authorization", &format!("Bearer {token}"))],
        &[7u8; 5000],
    );
    gw.request("GET", "/iot/x", &[], b"");
    gw.get_with_token("/iot/x", "tg_nonsense");
    let (_, scoped) = gw.create_token_with("other", "cam", &["--scope", "telemetry:write"]);
    gw.wait_ok("/iot/x", &scoped);
    assert_eq!(gw.get_with_token("/scoped/x", &scoped).status, 403);
    gw.get_with_token("/dead/x", &token);
    gw.get_with_token("/nowhere", &token);
    let text = metrics(&gw);
    for want in [
        "tokengate_requests_total{auth=\"ok\",route=\"iot\",status_class=\"2xx\"}",
        "tokengate_requests_total{auth=\"missing\",route=\"iot\",status_class=\"4xx\"}",
        "tokengate_requests_total{auth=\"invalid\",route=\"iot\",status_class=\"4xx\"}",
        "tokengate_requests_total{auth=\"insufficient_scope\",route=\"scoped\",status_class=\"4xx\"}",
        "tokengate_requests_total{auth=\"ok\",route=\"dead\",status_class=\"5xx\"}",
        "tokengate_requests_total{auth=\"none\",route=\"none\",status_class=\"4xx\"}",
        "tokengate_upstream_errors_total{kind=\"connect_refused\",route=\"dead\"}",
    ] {
        assert!(sample(&text, want).unwrap_or(0.0) >= 1.0, "{want} missing or zero in\n{text}");
    }
    assert!(text.contains("tokengate_request_duration_seconds_bucket{route=\"iot\",le="));
    assert!(sample(&text, "tokengate_request_body_bytes_total{route=\"iot\"}").unwrap() >= 5000.0);
    assert!(sample(&text, "tokengate_response_body_bytes_total{route=\"iot\"}").unwrap() > 0.0);
    assert_eq!(
        sample(&text, "tokengate_index_tokens"),
        Some(2.0),
        "two tokens indexed"
    );
    assert!(sample(&text, "tokengate_seconds_since_last_sync").unwrap() < 5.0);
    assert!(text.contains("tokengate_seconds_since_last_usage_flush"));
    assert_eq!(sample(&text, "tokengate_store_healthy"), Some(1.0));
    assert!(text.contains("tokengate_config_reloads_total{result=\"ok\"}"));
    assert!(text
        .lines()
        .any(|l| l.starts_with("tokengate_build_info{version=") && l.ends_with(" 1")));
    for secret in [
        token.as_str(),
        "secret-user-name",
        "private-path-segment",
        "nowhere",
    ] {
        assert!(!text.contains(secret), "{secret} appears in /metrics");
    }
}

fn access_log_gateway(format: &str, log: &std::path::Path, up: &Upstream) -> Gateway {
    GatewayBuilder::new()
        .section("log", "access", &format!("\"{format}\""))
        .section("log", "access_path", &format!("\"{}\"", log.display()))
        .route("iot", "/iot", up.addr())
        .route_with(
            "legacy",
            "/legacy",
            up.addr(),
            &[("query_token_param", "\"api_token\"")],
        )
        .start()
}

fn lines_eventually(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        lines = fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= n
    });
    lines
}

#[test]
fn json_access_log_has_one_line_per_request_and_no_secrets() {
    let up = Upstream::start("iot");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = access_log_gateway("json", &log, &up);
    let (id, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/iot/a", &token);
    // Lines are written in batches every 100 ms: let the ones from the wait above land first.
    std::thread::sleep(Duration::from_millis(400));
    let before = lines_eventually(&log, 1).len();
    gw.get_with_token("/iot/ok", &token);
    gw.request("GET", "/iot/denied", &[], b"");
    gw.get_with_token("/missing", &token);
    gw.request("GET", &format!("/legacy/q?api_token={token}&x=1"), &[], b"");
    let lines = lines_eventually(&log, before + 4);
    assert_eq!(lines.len(), before + 4, "{lines:#?}");
    let v: Vec<serde_json::Value> = lines[before..]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        (v[0]["status"].as_u64(), v[0]["route"].as_str()),
        (Some(200), Some("iot"))
    );
    assert_eq!(v[0]["token_id"], id);
    assert_eq!(v[0]["user_id"], "alice");
    assert_eq!(v[0]["auth"], "ok");
    assert_eq!(v[0]["path"], "/iot/ok");
    for key in [
        "time",
        "client",
        "method",
        "duration_ms",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(v[0].get(key).is_some(), "{key} missing: {}", v[0]);
    }
    assert_eq!(
        (v[1]["status"].as_u64(), v[1]["auth"].as_str()),
        (Some(401), Some("missing"))
    );
    assert!(v[1]["user_id"].is_null() && v[1]["token_id"].is_null());
    assert_eq!(
        (v[2]["status"].as_u64(), v[2]["route"].is_null()),
        (Some(404), true)
    );
    assert_eq!(
        (v[3]["status"].as_u64(), v[3]["path"].as_str()),
        (Some(200), Some("/legacy/q"))
    );
    let all = fs::read_to_string(&log).unwrap();
    assert!(!all.contains(&token), "a token reached the access log");
}

#[test]
fn plain_and_off_access_logs() {
    let up = Upstream::start("iot");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("plain.log");
    let gw = access_log_gateway("plain", &log, &up);
    let (id, token) = gw.create_token("bob", "scale");
    gw.wait_ok("/iot/a", &token);
    let mut last = String::new();
    poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        last = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(" 200 "))
            .unwrap_or_default()
            .to_string();
        !last.is_empty()
    });
    assert!(
        last.contains("\"GET /iot/a\" 200 route=iot auth=ok"),
        "{last}"
    );
    assert!(last.contains(&format!("token={id} user=bob")), "{last}");
    assert!(last.contains(" ms="), "{last}");
    drop(gw);

    let off = dir.path().join("off.log");
    let gw = access_log_gateway("off", &off, &up);
    let (_, token) = gw.create_token("carol", "scale");
    gw.wait_ok("/iot/a", &token);
    std::thread::sleep(Duration::from_millis(300));
    assert!(fs::read_to_string(&off).unwrap_or_default().is_empty());
}

#[test]
fn body_limits_answer_413_before_the_upstream_sees_the_rest() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route_with("iot", "/iot", up.addr(), &[("max_body_bytes", "1000")])
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/iot/a", &token);
    let auth = format!("Bearer {token}");
    let hits = up.hits();
    let r = gw.request(
        "POST",
        "/iot/big",
        &[("Authorization", &auth)],
        &[1u8; 2000],
    );
    assert_eq!(r.status, 413, "{r}");
    assert_eq!(r.json_error(), "payload_too_large");
    assert_eq!(
        up.hits(),
        hits,
        "a declared oversize body is refused before any upstream contact"
    );

    // Chunked, no declared length: cut off when it passes the limit.
    let mut req = format!(
        "POST /iot/chunked HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..5 {
        req.extend_from_slice(b"3e8\r\n");
        req.extend_from_slice(&[2u8; 1000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    match try_raw_http(gw.addr(), &req) {
        Ok(r) => assert_eq!(r.status, 413, "{r}"),
        Err(e) => eprintln!("connection closed while sending the oversize chunked body: {e}"),
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        up.requests()
            .iter()
            .all(|r| r.uri != "/iot/chunked" || r.body_len < 5000),
        "the upstream received the whole oversize body"
    );
    let small = gw.request(
        "POST",
        "/iot/small",
        &[("Authorization", &auth)],
        &[3u8; 900],
    );
    assert_eq!(small.status, 200, "{small}");
    assert_eq!(up.last().body_len, 900);
}

#[test]
fn query_token_only_on_the_route_that_opts_in_and_removed_before_forwarding() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route_with(
            "legacy",
            "/legacy",
            up.addr(),
            &[("query_token_param", "\"api_token\"")],
        )
        .route("iot", "/iot", up.addr())
        .start();
    let (_, token) = gw.create_token("old-scale", "firmware 1.0");
    let path = format!("/legacy/x?a=1&api_token={token}&b=2");
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(5),
        || gw.request("GET", &path, &[], b"").status == 200
    ));
    let seen = up.last();
    assert_eq!(seen.uri, "/legacy/x?a=1&b=2");
    assert_eq!(seen.single_header("x-user-id"), "old-scale");
    assert_eq!(
        gw.request("GET", &format!("/iot/x?api_token={token}"), &[], b"")
            .status,
        401
    );
    assert_eq!(
        gw.request("GET", "/legacy/x?api_token=tg_wrong", &[], b"")
            .status,
        401
    );
    assert_eq!(gw.request("GET", "/legacy/x?a=1", &[], b"").status, 401);
}

#[test]
fn slow_request_bodies_get_408_and_others_are_served() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route_with("iot", "/iot", up.addr(), &[("request_timeout", "\"1s\"")])
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/iot/a", &token);
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST /iot/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n0123456789").unwrap();
    let started = Instant::now();
    assert_eq!(
        gw.get_with_token("/iot/other", &token).status,
        200,
        "others are served meanwhile"
    );
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    eprintln!(
        "stalled body answered after {:?}: {:?}",
        started.elapsed(),
        text.lines().next()
    );
    assert!(
        text.starts_with("HTTP/1.1 408") || answer.is_empty(),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn idle_keepalive_connections_are_closed() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .gateway("keepalive_timeout", "\"1s\"")
        .route("iot", "/iot", up.addr())
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/iot/a", &token);
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    write!(
        s,
        "GET /iot/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle = Instant::now();
    // Drain whatever is left of the response, then wait for the close.
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => panic!("connection not closed after {:?}: {e}", idle.elapsed()),
        }
    }
    eprintln!(
        "idle keep-alive connection closed after {:?}",
        idle.elapsed()
    );
    assert!(idle.elapsed() < Duration::from_secs(5));
}
