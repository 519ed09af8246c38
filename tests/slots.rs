//! Slots per token and per address, and bodies that must keep moving (issue 31): one device token or one
//! address cannot hold the gateway's slots for everyone else, a trickled upload is cut, and `/healthz`
//! says when the gateway is full. Each against the real `tokengate serve` binary over loopback sockets.
//!
//! Waits are bounded and generous (2-core CI); measured numbers are printed (`--no-capture`).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Starts an upload of `len` bytes with `token` and sends only its head and `sent` bytes of the body.
fn start_upload(gw: SocketAddr, token: &str, path: &str, len: usize, sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(gw).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&vec![b'a'; sent]).expect("body start");
    s
}

/// Reads whatever answer the gateway sends on `s` (until it closes), within `timeout`.
fn answer_on(s: &mut TcpStream, timeout: Duration) -> String {
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn one_token_cannot_hold_every_slot_and_its_trickled_uploads_are_cut() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .gateway("max_in_flight", "200")
        .gateway("max_in_flight_per_token", "4")
        .route("iot", "/iot", up.addr())
        .start();
    let (_, leaked) = gw.create_token("mallory", "leaked device");
    let (_, other) = gw.create_token("alice", "hive scale");

    // The leaked token starts four uploads and trickles nothing more.
    let started = Instant::now();
    let mut trickles: Vec<TcpStream> = (0..4)
        .map(|i| start_upload(gw.addr(), &leaked, &format!("/iot/up{i}"), 100_000, 10))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // Its fifth request waits for a slot of its own: 429, and the connection stays usable.
    let r = gw.get_with_token("/iot/fifth", &leaked);
    assert_eq!(r.status, 429, "{r}");
    assert_eq!(r.json_error(), "concurrency_limited", "{r}");
    assert_eq!(r.header("retry-after"), Some("1"), "{r}");
    // Everyone else is served.
    for i in 0..5 {
        let r = gw.get_with_token(&format!("/iot/alice{i}"), &other);
        assert_eq!(r.status, 200, "{r}");
    }
    let m = gw.metrics();
    assert_eq!(
        metric_sum(&m, "tokengate_limited_total", &["kind=\"in_flight\""]),
        1.0,
        "{m}"
    );

    // The trickles fall under min_body_rate (240 bytes/s after a 5 s grace): each gets a 408 and is
    // closed, long before the 60 s a per-read timeout would have allowed.
    for (i, s) in trickles.iter_mut().enumerate() {
        let a = answer_on(s, Duration::from_secs(30));
        assert_eq!(status_of(&a), 408, "upload {i}: {a}");
        assert!(a.contains("slower than 240 bytes a second"), "{a}");
    }
    let cut_after = started.elapsed();
    eprintln!("4 trickled uploads of one token cut after {cut_after:?} (grace 5 s)");
    assert!(cut_after < Duration::from_secs(20), "{cut_after:?}");
    // Their slots came back.
    let r = gw.get_with_token("/iot/after", &leaked);
    assert_eq!(r.status, 200, "{r}");
    // Counted as closed when the lingering close (at most 1 s) is over.
    let closed = |m: &str| {
        metric_sum(
            m,
            "tokengate_connections_closed_total",
            &["reason=\"body_timeout\""],
        )
    };
    let mut m = String::new();
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        m = gw.metrics();
        closed(&m) >= 4.0
    });
    assert_eq!(closed(&m), 4.0, "{m}");
}

#[test]
fn an_upload_at_a_real_link_rate_is_not_cut_and_a_silent_body_times_out() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .gateway("body_timeout", "\"2s\"")
        .gateway("min_body_rate", "1000")
        .route("iot", "/iot", up.addr())
        .start();
    let (_, token) = gw.create_token("alice", "camera");

    // 2,000 bytes a second for 7 s (past the 5 s grace) against a minimum of 1,000: served whole.
    let len = 14_000;
    let mut s = start_upload(gw.addr(), &token, "/iot/clip", len, 0);
    for _ in 0..28 {
        s.write_all(&[b'v'; 500]).expect("body piece");
        std::thread::sleep(Duration::from_millis(250));
    }
    let a = answer_on(&mut s, Duration::from_secs(10));
    assert_eq!(status_of(&a), 200, "{a}");
    assert_eq!(up.last().body_len, len as u64);

    // A body that stops: 408 after body_timeout, not 60 s.
    let t = Instant::now();
    let mut s = start_upload(gw.addr(), &token, "/iot/stalled", 100_000, 50_000);
    let a = answer_on(&mut s, Duration::from_secs(30));
    let took = t.elapsed();
    eprintln!("a stalled body (body_timeout = 2s) answered after {took:?}");
    assert_eq!(status_of(&a), 408, "{a}");
    assert!(a.contains("not received in time"), "{a}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn one_address_cannot_hold_every_connection_but_a_trusted_proxy_may() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .gateway("max_connections_per_address", "5")
        .gateway("trusted_proxies", "[\"127.0.0.3/32\"]")
        .route("iot", "/iot", up.addr())
        .start();
    let (_, token) = gw.create_token("alice", "camera");
    let request = build_request("GET", "/iot/x", &[("Authorization", &bearer(&token))], b"");
    let attacker = Ipv4Addr::new(127, 0, 0, 2);

    // Five silent connections from one address hold its share; a sixth is answered 429 and closed.
    let held: Vec<TcpStream> = (0..5).map(|_| connect_from(attacker, gw.addr())).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut sixth = Conn::over(Wired::plain(connect_from(attacker, gw.addr())).unwrap());
    let r = sixth.roundtrip(&request).expect("an answer");
    assert_eq!(r.status, 429, "{r}");
    assert_eq!(r.json_error(), "too_many_connections", "{r}");
    assert_eq!(r.header("connection"), Some("close"), "{r}");
    // Counted now: the polling below may be refused again while the gateway notices the closes.
    let m = gw.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "tokengate_connections_refused_total",
            &["listener=\"plain\"", "reason=\"per_address\""]
        ),
        1.0,
        "{m}"
    );

    // Another address is served.
    let mut other =
        Conn::over(Wired::plain(connect_from(Ipv4Addr::new(127, 0, 0, 4), gw.addr())).unwrap());
    assert_eq!(other.roundtrip(&request).unwrap().status, 200);

    // A trusted proxy carries many clients on one address: not limited.
    let proxied: Vec<Conn> = (0..12)
        .map(|_| {
            Conn::over(Wired::plain(connect_from(Ipv4Addr::new(127, 0, 0, 3), gw.addr())).unwrap())
        })
        .collect();
    for mut c in proxied {
        assert_eq!(c.roundtrip(&request).unwrap().status, 200);
    }

    // The address gets its share back as its connections close.
    drop(held);
    let mut back = None;
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let mut c = Conn::over(Wired::plain(connect_from(attacker, gw.addr())).unwrap());
        back = c.roundtrip(&request).ok().map(|r| r.status);
        back == Some(200)
    });
    assert_eq!(back, Some(200));

    assert!(
        metric_sum(&m, "tokengate_connections_open", &["listener=\"plain\""]) >= 0.0,
        "{m}"
    );
}

#[test]
fn healthz_says_saturated_while_max_in_flight_is_reached() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .gateway("max_in_flight", "2")
        .route("iot", "/iot", up.addr())
        .start();
    let (_, a) = gw.create_token("alice", "camera");
    let (_, b) = gw.create_token("bob", "camera");
    let h = gw.health();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["load"]["in_flight"]["max"], 2, "{h}");
    assert_eq!(h["load"]["connections"]["max"], 10_000, "{h}");

    // Two uploads in flight fill max_in_flight: /healthz answers 503 "saturated".
    let mut uploads = [
        start_upload(gw.addr(), &a, "/iot/u1", 10_000, 10),
        start_upload(gw.addr(), &b, "/iot/u2", 10_000, 10),
    ];
    let mut seen = None;
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let r = gw.admin_get("/healthz");
        let saturated = r.status == 503;
        seen = Some(r);
        saturated
    });
    let r = seen.expect("an answer");
    assert_eq!(r.status, 503, "{r}");
    let h = r.json();
    assert_eq!(h["status"], "saturated", "{h}");
    assert_eq!(
        h["load"]["saturated"],
        serde_json::json!(["max_in_flight"]),
        "{h}"
    );
    assert_eq!(h["load"]["in_flight"]["open"], 2, "{h}");

    // The uploads finish: back to ok.
    for u in &mut uploads {
        u.write_all(&vec![b'z'; 9_990]).expect("rest of the body");
        assert_eq!(status_of(&answer_on(u, Duration::from_secs(10))), 200);
    }
    let mut status = serde_json::Value::Null;
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        status = gw.health()["status"].clone();
        status == "ok"
    });
    assert_eq!(status, "ok");
}

#[test]
fn heads_are_bounded_by_max_head_bytes_32_kib_unless_configured() {
    let up = Upstream::start("iot");
    let small = GatewayBuilder::new()
        .route("iot", "/iot", up.addr())
        .start();
    let (_, token) = small.create_token("alice", "camera");
    let pad = "p".repeat(40 * 1024);
    let r = small.request(
        "GET",
        "/iot/x",
        &[("Authorization", &bearer(&token)), ("X-Pad", &pad)],
        b"",
    );
    assert_eq!(r.status, 431, "a 40 KiB head with the default: {r}");
    let fits = "p".repeat(30 * 1024);
    let r = small.request(
        "GET",
        "/iot/x",
        &[("Authorization", &bearer(&token)), ("X-Pad", &fits)],
        b"",
    );
    assert_eq!(r.status, 200, "a 30 KiB head: {r}");

    let large = GatewayBuilder::new()
        .gateway("max_head_bytes", "65536")
        .route("iot", "/iot", up.addr())
        .start();
    let (_, token) = large.create_token("alice", "camera");
    let r = large.request(
        "GET",
        "/iot/x",
        &[("Authorization", &bearer(&token)), ("X-Pad", &pad)],
        b"",
    );
    assert_eq!(
        r.status, 200,
        "a 40 KiB head with max_head_bytes = 65536: {r}"
    );
}
