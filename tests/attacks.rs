//! Hostile clients and failing parts against the real binary (issue 6). The invariant everywhere: no
//! request reaches an upstream without its own valid credential and scope, and a fault degrades one
//! request (or the freshness of the index), never the process.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sends raw bytes on one connection and reads until the peer closes (or 5 s pass).
fn exchange(gw: &Gateway, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn every_upstream_request_is_authenticated(up: &Upstream, user: &str) {
    for r in up.requests() {
        assert_eq!(
            r.header_values("x-user-id"),
            [user],
            "an upstream request without identity: {r:?}"
        );
        assert!(
            r.header_values("authorization").is_empty(),
            "credential forwarded: {r:?}"
        );
    }
}

#[test]
fn smuggling_pipelining_and_malformed_headers_never_reach_the_upstream_unauthenticated() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/iot/warm", &token);
    let auth = format!("Authorization: Bearer {token}\r\n");

    // CL + TE with a credential-less request hidden in the body.
    let smuggled = "GET /iot/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let body = format!("0\r\n\r\n{smuggled}");
    let req = format!(
        "POST /iot/front HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(&gw, req.as_bytes());
    assert!(!answer.contains("\"/iot/smuggled\""), "{answer}");

    // Pipelining: only the first request carries a credential.
    let req = format!("GET /iot/first HTTP/1.1\r\nHost: x\r\n{auth}\r\nGET /iot/second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = exchange(&gw, req.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The second is either answered 401 or dropped with the connection; never forwarded (checked below).
    let second = if answer.contains("HTTP/1.1 401") {
        "401"
    } else {
        "dropped"
    };
    eprintln!("pipelined request without credential: {second}");

    // obs-fold continuing the Authorization header, invalid bytes, oversized header sections.
    let folded = format!("GET /iot/folded HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n {token}\r\nConnection: close\r\n\r\n");
    let answer = exchange(&gw, folded.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 4") || answer.is_empty(),
        "{answer}"
    );
    for bad in [&b"\x00"[..], b"\x01", b"\x7f"] {
        let mut req = b"GET /iot/bytes HTTP/1.1\r\nHost: x\r\nX-Bad: a".to_vec();
        req.extend_from_slice(bad);
        req.extend_from_slice(format!("b\r\n{auth}Connection: close\r\n\r\n").as_bytes());
        let answer = exchange(&gw, &req);
        assert!(
            answer.starts_with("HTTP/1.1 4") || answer.is_empty(),
            "{bad:?}: {answer}"
        );
    }
    let mut huge = format!("GET /iot/huge HTTP/1.1\r\nHost: x\r\n{auth}").into_bytes();
    for i in 0..4096 {
        huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(500)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let answer = exchange(&gw, &huge);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a 2 MiB header section was accepted"
    );

    // Absolute-form targets go out in origin form; without a token they are refused.
    let abs = format!("GET http://evil.example/iot/abs?q=1 HTTP/1.1\r\nHost: evil.example\r\n{auth}Connection: close\r\n\r\n");
    let answer = exchange(&gw, abs.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.last().uri, "/iot/abs?q=1");
    let abs = "GET http://evil.example/iot/abs HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert!(exchange(&gw, abs.as_bytes()).starts_with("HTTP/1.1 401"));

    assert_eq!(gw.get_with_token("/iot/still-serving", &token).status, 200);
    every_upstream_request_is_authenticated(&up, "alice");
    assert!(up
        .requests()
        .iter()
        .all(|r| !r.uri.contains("smuggled") && !r.uri.contains("second")));
}

#[test]
fn half_open_connections_do_not_starve_an_authorized_client() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/iot/warm", &token);
    let stalled: Vec<TcpStream> = (0..300)
        .filter_map(|_| {
            let mut s = TcpStream::connect(gw.addr()).ok()?;
            let _ = s.write_all(b"GET /iot/slow HTTP/1.1\r\nHost: x\r\nAuthor");
            Some(s)
        })
        .collect();
    assert!(
        stalled.len() >= 250,
        "could only open {} connections",
        stalled.len()
    );
    let t = Instant::now();
    let r = gw.get_with_token("/iot/fast", &token);
    let took = t.elapsed();
    eprintln!(
        "authorized request with {} half-open connections: {took:?}",
        stalled.len()
    );
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn in_flight_limit_answers_503_with_retry_after() {
    let up = Upstream::with_delay("slow", Duration::from_millis(600));
    let gw = GatewayBuilder::new()
        .gateway("max_in_flight", "2")
        .route("iot", "/iot", up.addr())
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/iot/warm", &token);
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let (addr, token) = (gw.addr(), token.clone());
            std::thread::spawn(move || {
                raw_http(
                    addr,
                    &build_request(
                        "GET",
                        &format!("/iot/{i}"),
                        &[("Authorization", &format!("Bearer {token}"))],
                        b"",
                    ),
                )
            })
        })
        .collect();
    let answers: Vec<RawResponse> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<&RawResponse> = answers.iter().filter(|r| r.status == 503).collect();
    assert!(!busy.is_empty(), "no 503: {answers:?}");
    assert!(answers.iter().any(|r| r.status == 200));
    assert!(
        answers.iter().all(|r| r.status == 200 || r.status == 503),
        "{answers:?}"
    );
    assert_eq!(busy[0].header("retry-after"), Some("1"));
    assert_eq!(busy[0].json_error(), "overloaded");
    assert_eq!(gw.get_with_token("/iot/after", &token).status, 200);
}

#[test]
fn brute_force_is_throttled_but_valid_tokens_never_are() {
    let up = Upstream::start("iot");
    let mut gw = GatewayBuilder::new()
        .section("throttle", "max_failures", "5")
        .section("throttle", "window", "\"60s\"")
        .route("iot", "/iot", up.addr())
        .build();
    // Created before start, so no request can race the sync and count as a failure.
    let (_, token) = gw.create_token("alice", "scale");
    gw.start();
    assert_eq!(gw.get_with_token("/iot/warm", &token).status, 200);
    for _ in 0..10 {
        assert_eq!(
            gw.request("GET", "/iot/x", &[], b"").status,
            401,
            "missing credentials do not count"
        );
    }
    for i in 0..5 {
        assert_eq!(
            gw.get_with_token("/iot/x", &format!("tg_guess{i}")).status,
            401
        );
    }
    let throttled = gw.get_with_token("/iot/x", "tg_guess6");
    assert_eq!(throttled.status, 429, "{throttled}");
    let retry: u64 = throttled
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(throttled.json_error(), "too_many_requests");
    // Same address, valid token: served.
    assert_eq!(gw.get_with_token("/iot/x", &token).status, 200);
    let text = gw.admin_get("/metrics").text();
    assert!(
        text.lines().any(|l| l.starts_with(
            "tokengate_requests_total{auth=\"throttled\",route=\"iot\",status_class=\"4xx\"} 1"
        )),
        "{text}"
    );
}

#[test]
fn a_locked_database_makes_the_cli_wait_then_fail_clearly() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    gw.create_token("alice", "scale");
    let conn = rusqlite::Connection::open(gw.db_path()).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let t = Instant::now();
    let out = gw.cli(&["token", "create", "--user", "bob", "--label", "l"]);
    let waited = t.elapsed();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked"), "{err}");
    assert!(waited >= Duration::from_secs(4), "gave up after {waited:?}");
    eprintln!(
        "CLI against a locked database: gave up after {waited:?}: {}",
        err.trim()
    );
    conn.execute_batch("ROLLBACK").unwrap();
    gw.create_token("bob", "l");
}

fn health(gw: &Gateway) -> serde_json::Value {
    gw.admin_get("/healthz").json()
}

fn move_db(gw: &Gateway, to: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let from = format!("{}{suffix}", gw.db_path().display());
        let _ = fs::rename(&from, format!("{}{suffix}", to.display()));
    }
}

#[test]
fn a_database_moved_away_keeps_the_last_good_index_and_recovers() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .gateway("usage_flush_interval", "\"200ms\"")
        .route("iot", "/iot", up.addr())
        .start();
    let (id, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/iot/warm", &token);
    let aside = gw.dir().join("aside.db");
    move_db(&gw, &aside);
    assert!(poll_until(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || health(&gw)["status"] == "degraded"
    ));
    assert!(health(&gw)["sync_error"]
        .as_str()
        .unwrap()
        .contains("missing"));
    let text = gw.admin_get("/metrics").text();
    assert!(text.contains("tokengate_store_healthy 0"), "{text}");
    for _ in 0..5 {
        assert_eq!(
            gw.get_with_token("/iot/while-gone", &token).status,
            200,
            "last good index serves"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !gw.db_path().exists(),
        "the gateway must not create a new empty database"
    );
    assert!(gw.logs().contains("missing"), "a log line says why");
    move_db_back(&gw, &aside);
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || health(&gw)["status"] == "ok"
    ));
    let (_, later) = gw.create_token("bob", "later");
    gw.wait_ok("/iot/after", &later);
    // The uses made while the file was away are counted once it is back.
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || gw.token_entry(id)["use_count"].as_i64().unwrap() >= 6
    ));
}

fn move_db_back(gw: &Gateway, aside: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::rename(
            format!("{}{suffix}", aside.display()),
            format!("{}{suffix}", gw.db_path().display()),
        );
    }
}

#[test]
fn a_corrupted_database_keeps_the_last_good_index() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/iot/warm", &token);
    // Overwrite the header of the file (and the WAL, which holds the recent pages) with garbage.
    for path in [
        gw.db_path(),
        std::path::PathBuf::from(format!("{}-wal", gw.db_path().display())),
    ] {
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(&path) {
            f.write_all(&[0x5a; 100]).unwrap();
        }
    }
    // Nudge the sync: another process tries to write (it fails, but the gateway must notice the file).
    let _ = gw.cli(&["token", "create", "--user", "x", "--label", "y"]);
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || health(&gw)["status"] == "degraded"
    ));
    assert_eq!(gw.get_with_token("/iot/still", &token).status, 200);
}

/// A fake upstream on a raw socket: `behaviour` handles each connection; connections are counted.
fn fake_upstream(behaviour: fn(TcpStream)) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || behaviour(s));
        }
    });
    (addr, count)
}

#[test]
fn upstream_faults_give_5xx_and_no_retry_of_uploads() {
    let (reset_addr, reset_conns) = fake_upstream(|mut s| {
        let mut buf = vec![0u8; 64 * 1024];
        let _ = s.read(&mut buf);
        let _ = s.read(&mut buf);
        drop(s); // close with unread data: the kernel sends a reset
    });
    let (garbage_addr, _) = fake_upstream(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"this is not http\r\n\r\n");
    });
    let slow = Upstream::with_delay("slow", Duration::from_secs(3));
    let gw = GatewayBuilder::new()
        .route("reset", "/reset", reset_addr)
        .route("garbage", "/garbage", garbage_addr)
        .route_with(
            "slow",
            "/slow",
            slow.addr(),
            &[("read_timeout", "\"500ms\"")],
        )
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(5),
        || gw.get_with_token("/garbage/x", &token).status != 401
    ));
    let auth = format!("Bearer {token}");
    let body = vec![9u8; 10 * 1024 * 1024];
    let r = try_raw_http(
        gw.addr(),
        &build_request("POST", "/reset/upload", &[("Authorization", &auth)], &body),
    );
    match r {
        Ok(r) => assert_eq!(r.status, 502, "{r}"),
        Err(e) => eprintln!("upload connection closed by the gateway: {e}"),
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        reset_conns.load(Ordering::SeqCst),
        1,
        "a non-idempotent request was retried"
    );
    let r = gw.get_with_token("/garbage/x", &token);
    assert_eq!(r.status, 502, "{r}");
    assert_eq!(r.json_error(), "bad_gateway");
    let t = Instant::now();
    let r = gw.get_with_token("/slow/x", &token);
    assert_eq!(r.status, 504, "{r}");
    assert_eq!(r.json_error(), "gateway_timeout");
    assert!(t.elapsed() < Duration::from_millis(2500));
}

#[test]
fn signed_identity_verifies_and_client_copies_are_stripped() {
    let up = Upstream::start("signed");
    let plain = Upstream::start("plain");
    let secret = "0123456789abcdef0123456789abcdef-test-secret";
    let gw = GatewayBuilder::new()
        .route_with(
            "signed",
            "/signed",
            up.addr(),
            &[("sign_secret", &format!("\"{secret}\""))],
        )
        .route("plain", "/plain", plain.addr())
        .start();
    let (id, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/plain/warm", &token);
    let r = gw.request(
        "POST",
        "/signed/x?a=1",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Tokengate-Signature", "t=1,v1=forged"),
        ],
        b"{}",
    );
    assert_eq!(r.status, 200, "{r}");
    let seen = up.last();
    let sig = seen.single_header("x-tokengate-signature");
    assert!(sig.starts_with("t=") && sig.contains(",v1="), "{sig}");
    let verified = tokengate::signing::verify(
        secret.as_bytes(),
        sig,
        "alice",
        id,
        "POST",
        "/signed/x?a=1",
        unix_now() as u64,
        300,
    );
    assert_eq!(verified, Ok(()));
    assert!(tokengate::signing::verify(
        b"wrong",
        sig,
        "alice",
        id,
        "POST",
        "/signed/x?a=1",
        unix_now() as u64,
        300
    )
    .is_err());
    gw.request(
        "GET",
        "/plain/x",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("x_tokengate_signature", "t=1,v1=x"),
        ],
        b"",
    );
    assert!(plain
        .last()
        .header_values("x-tokengate-signature")
        .is_empty());
}

#[test]
fn secrets_never_appear_in_logs_or_listings() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .env("RUST_LOG", "debug")
        .section("log", "access", "\"plain\"")
        .route("iot", "/iot", up.addr())
        .route_with(
            "legacy",
            "/legacy",
            up.addr(),
            &[("query_token_param", "\"api_token\"")],
        )
        .start();
    let (id, token) = gw.create_token("alice", "scale");
    let (revoked_id, revoked) = gw.create_token("bob", "old");
    gw.wait_ok("/iot/a", &token);
    gw.revoke(revoked_id);
    let rotated = gw.cli_json(&[
        "token",
        "rotate",
        &id.to_string(),
        "--grace",
        "1m",
        "--json",
    ]);
    let new = rotated["token"].as_str().unwrap().to_string();
    gw.wait_ok("/iot/b", &new);
    gw.get_with_token("/iot/c", &revoked);
    gw.get_with_token("/iot/d", "tg_not_a_token_at_all");
    gw.request("GET", &format!("/legacy/e?api_token={new}"), &[], b"");
    gw.request("GET", &format!("/legacy/f?api_token={revoked}"), &[], b"");
    let list = gw.cli(&["token", "list"]);
    let show = gw.cli(&["token", "show", &id.to_string(), "--json"]);
    std::thread::sleep(Duration::from_millis(300));
    let mut haystack = gw.logs();
    haystack.push_str(&String::from_utf8_lossy(&list.stdout));
    haystack.push_str(&String::from_utf8_lossy(&show.stdout));
    haystack.push_str(&gw.admin_get("/metrics").text());
    assert!(
        haystack.contains("route=iot"),
        "the access log is in the captured output"
    );
    for secret in [&token, &new, &revoked] {
        assert!(
            !haystack.contains(secret.as_str()),
            "a token appears in the logs"
        );
        assert!(
            !haystack.contains(&sha256_hex(secret.as_bytes())),
            "a digest appears in the logs"
        );
    }
}
