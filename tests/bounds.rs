//! Every resource bounded (issue 31): an attacker pays more than the gateway. Each against the real
//! `tokengate serve` binary over real loopback sockets.
//!
//! 1. The access log: a 60 KB path is logged cut with its real length; a log target that stalls costs
//!    bounded memory, the lines it could not take are dropped and counted in `/metrics`, and the gateway
//!    keeps answering.
//! 2. The failed-authentication throttle: a client rotating through fresh addresses evicts clients that
//!    are not throttled, never its own throttled address (client sockets bound to 127.0.x.y).
//! 3. Idle upstream connections: closed after the route's `idle_timeout` once a burst is over, and
//!    closed when the upstream closed them — seen from an upstream that counts its open connections.
//! 4. A client that stops reading a download is closed after `send_timeout`.
//!
//! Waits are bounded and generous (2-core CI); measured numbers are printed (`--no-capture`).

mod common;

use common::*;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// `VmRSS` of `pid` in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// Sends `requests` on keep-alive connections (opening a new one whenever the gateway closes) and
/// returns the statuses seen.
fn send_all(gw: SocketAddr, requests: usize, request: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(requests);
    let mut conn = Conn::open(gw);
    for _ in 0..requests {
        let r = match conn.roundtrip(request) {
            Ok(r) => r,
            Err(_) => {
                conn = Conn::open(gw);
                conn.roundtrip(request)
                    .expect("request on a fresh connection")
            }
        };
        if r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            conn = Conn::open(gw);
        }
        statuses.push(r.status);
    }
    statuses
}

// ---------------------------------------------------------------------------------------------------------
// 1. The access log
// ---------------------------------------------------------------------------------------------------------

#[test]
fn a_60_kb_path_is_logged_cut_to_1_kib_with_its_real_length() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .gateway("max_head_bytes", "65536")
        .section("log", "access", "\"json\"")
        .section("log", "access_path", "\"access.log\"")
        .route("iot", "/iot", up.addr())
        .start();
    let path = format!("/iot/{}", "a".repeat(60_000));
    assert_eq!(path.len(), 60_005);
    let r = gw.request("GET", &path, &[], b"");
    assert_eq!(r.status, 401, "{r}");
    // An extension method is the client's too.
    let method = "X".repeat(20_000);
    let r = gw.request(&method, "/iot/method", &[], b"");
    assert!(r.status >= 400, "{r}");

    let log = gw.dir().join("access.log");
    let mut lines = Vec::new();
    let written = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        lines = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.iter().any(|l| l.contains("/iot/method"))
    });
    assert!(written, "no access log lines: {lines:?}");
    let long = lines
        .iter()
        .find(|l| l.contains("/iot/aaaa"))
        .expect("the long path's line");
    eprintln!(
        "a 60,005-byte path: a {}-byte access log line (was about 60 KB)",
        long.len()
    );
    assert!(long.len() <= 2048, "line of {} bytes", long.len());
    let v: serde_json::Value = serde_json::from_str(long).expect("a JSON line");
    let logged = v["path"].as_str().expect("path");
    assert!(logged.starts_with(&path[..1000]), "{logged}");
    assert!(
        logged.ends_with("…(truncated, 60005 bytes)"),
        "the cut is marked with the real length: {logged}"
    );
    let short = lines
        .iter()
        .find(|l| l.contains("/iot/method"))
        .expect("the long method's line");
    assert!(short.len() <= 2048, "line of {} bytes", short.len());
    let v: serde_json::Value = serde_json::from_str(short).expect("a JSON line");
    assert_eq!(
        v["method"].as_str(),
        Some(format!("{}...", "X".repeat(32)).as_str())
    );
}

#[test]
fn a_stalled_access_log_costs_bounded_memory_drops_and_counts_and_the_gateway_keeps_answering() {
    let up = Upstream::start("iot");
    let mut gw = GatewayBuilder::new()
        .gateway("max_head_bytes", "65536")
        .section("log", "access", "\"json\"")
        .section("log", "access_path", "\"access.fifo\"")
        .route("iot", "/iot", up.addr())
        .build();
    let fifo = gw.dir().join("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    // Held open (read-write: on Linux that never blocks) and never read: once the pipe's 64 KiB are
    // full, the gateway's log writer blocks in `write`, like stdout piped into a process that hung.
    let _stalled = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    let (_, token) = gw.create_token("alice", "log");
    gw.start();
    assert_eq!(gw.wait_ok("/iot/warm", &token).status, 200);
    let rss_before = vm_rss_kib(gw.pid());

    // 8,000 requests with 60 KB paths: queued whole, they were 480 MB.
    let request = keepalive_request("GET", &format!("/iot/{}", "b".repeat(60_000)), &[], b"");
    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (addr, request) = (gw.addr(), request.clone());
            std::thread::spawn(move || send_all(addr, 2000, &request))
        })
        .collect();
    for t in threads {
        let statuses = t.join().expect("client thread");
        assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    }
    let elapsed = started.elapsed();
    let rss_after = vm_rss_kib(gw.pid());
    let hwm = gw.vm_hwm_kib();
    let dropped = metric_sum(&gw.metrics(), "tokengate_access_log_dropped_total", &[]);
    eprintln!(
        "8,000 requests with 60 KB paths, log target stalled, in {elapsed:?}: VmRSS {} MiB before, {} MiB \
         after, peak {} MiB; {dropped} lines dropped",
        rss_before / 1024,
        rss_after / 1024,
        hwm / 1024
    );
    assert!(
        hwm.saturating_sub(rss_before) < 200 * 1024,
        "peak RSS grew by {} MiB with the log stalled",
        hwm.saturating_sub(rss_before) / 1024
    );
    assert!(dropped > 0.0, "no drop counted");
    // Still answering, the log still stalled.
    assert_eq!(gw.get_with_token("/iot/after", &token).status, 200);
}

// ---------------------------------------------------------------------------------------------------------
// 2. The failed-authentication throttle
// ---------------------------------------------------------------------------------------------------------

/// One request with a wrong token from source address `from` (see [`connect_from`]), on its own
/// connection; returns the status.
fn guess_from(from: Ipv4Addr, gw: SocketAddr) -> u16 {
    let mut conn = Conn::over(Wired::plain(connect_from(from, gw)).expect("clone socket"));
    let request = build_request(
        "GET",
        "/iot/x",
        &[("Authorization", "Bearer tg_not_a_real_token_0000")],
        b"",
    );
    conn.roundtrip(&request)
        .unwrap_or_else(|e| panic!("request from {from}: {e}"))
        .status
}

#[test]
fn a_client_rotating_addresses_cannot_reset_its_own_throttle() {
    let up = Upstream::start("iot");
    let gw = GatewayBuilder::new()
        .section("throttle", "max_failures", "1")
        .section("throttle", "window", "\"600s\"")
        .section("throttle", "max_clients", "64")
        .route("iot", "/iot", up.addr())
        .start();
    let gw_addr = gw.addr();
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    assert_eq!(guess_from(attacker, gw_addr), 401);
    assert_eq!(guess_from(attacker, gw_addr), 429, "throttled");
    // 63 other clients with one failure each: the table (64) is full.
    for i in 1..=63 {
        assert_eq!(guess_from(Ipv4Addr::new(127, 0, 1, i), gw_addr), 401);
    }
    // The attacker moves through 300 fresh addresses: each is tracked (evicting a client that is not
    // throttled), none frees the throttled one.
    for i in 0..300u16 {
        let fresh = Ipv4Addr::new(127, 0, 2 + (i / 250) as u8, 1 + (i % 250) as u8);
        assert_eq!(guess_from(fresh, gw_addr), 401, "{fresh}");
        if i % 50 == 0 {
            assert_eq!(
                guess_from(attacker, gw_addr),
                429,
                "after {i} fresh addresses"
            );
        }
    }
    assert_eq!(
        guess_from(attacker, gw_addr),
        429,
        "still throttled after 300 fresh addresses"
    );
    // A newcomer is still counted: its second failure is throttled.
    let newcomer = Ipv4Addr::new(127, 0, 9, 9);
    assert_eq!(guess_from(newcomer, gw_addr), 401);
    assert_eq!(guess_from(newcomer, gw_addr), 429);
    assert_eq!(guess_from(attacker, gw_addr), 429);
    assert_eq!(up.hits(), 0, "no guess reached the upstream");
}

// ---------------------------------------------------------------------------------------------------------
// 3. Idle upstream connections
// ---------------------------------------------------------------------------------------------------------

/// A raw HTTP/1.1 upstream that counts its open connections. It answers every request head with a
/// 2-byte body after `delay`; with `keepalive`, a connection idle that long is half-closed by the
/// upstream, which then waits (up to 60 s) for the gateway to close its side: it counts as open until
/// then.
struct CountingUpstream {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl CountingUpstream {
    fn start(delay: Duration, keepalive: Option<Duration>) -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (o, a) = (open.clone(), accepted.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                std::thread::spawn(move || {
                    serve_counted(stream, delay, keepalive);
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CountingUpstream {
            addr,
            open,
            accepted,
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn serve_counted(mut s: TcpStream, delay: Duration, keepalive: Option<Duration>) {
    let _ = s.set_read_timeout(Some(keepalive.unwrap_or(Duration::from_secs(60))));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match s.read(&mut tmp) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if keepalive.is_some()
                        && buf.is_empty()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    // Idle too long: close our side, then wait for the gateway to close its own.
                    let _ = s.shutdown(Shutdown::Write);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                    while matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
                    return;
                }
                Err(_) => return,
            }
        };
        buf.drain(..end);
        std::thread::sleep(delay);
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// `n` requests at once, each on its own client connection; returns their statuses.
fn burst(gw: SocketAddr, token: &str, n: usize) -> Vec<u16> {
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (start, token) = (start.clone(), token.to_owned());
            std::thread::spawn(move || {
                let mut conn = Conn::open(gw);
                start.wait();
                let request = build_request(
                    "GET",
                    &format!("/iot/burst/{i}"),
                    &[("Authorization", &bearer(&token))],
                    b"",
                );
                conn.roundtrip(&request).map_or(0, |r| r.status)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect()
}

#[test]
fn a_burst_leaves_no_upstream_connection_open_after_idle_timeout() {
    let up = CountingUpstream::start(Duration::from_millis(500), None);
    // 64 at once from one token: over the default max_in_flight_per_token (32, tests/slots.rs).
    let mut gw = GatewayBuilder::new()
        .gateway("max_in_flight_per_token", "64")
        .route_with("iot", "/iot", up.addr, &[("idle_timeout", "\"1s\"")])
        .build();
    let (_, token) = gw.create_token("alice", "burst");
    gw.start();
    assert_eq!(gw.wait_ok("/iot/warm", &token).status, 200);
    let statuses = burst(gw.addr(), &token, 64);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let after_burst = up.open();
    assert!(
        up.accepted() >= 32 && after_burst >= 32,
        "the burst should open many upstream connections: {} accepted, {after_burst} open",
        up.accepted()
    );
    let t = Instant::now();
    let closed = poll_until(Duration::from_secs(15), Duration::from_millis(50), || {
        up.open() == 0
    });
    eprintln!(
        "burst of 64 with idle_timeout = 1s: {} upstream connections accepted, {after_burst} open after the \
         burst, {} open {:?} later",
        up.accepted(),
        up.open(),
        t.elapsed()
    );
    assert!(
        closed,
        "{} upstream connections still open 15 s after the burst (idle_timeout 1s)",
        up.open()
    );
    // The route still works (a fresh connection).
    assert_eq!(gw.get_with_token("/iot/again", &token).status, 200);
}

#[test]
fn idle_connections_the_upstream_closed_are_closed_by_the_gateway() {
    // The upstream closes a keep-alive connection idle for 300 ms; the gateway's own idle_timeout is
    // the default 60 s, so only noticing the close can end these connections.
    let up = CountingUpstream::start(Duration::from_millis(300), Some(Duration::from_millis(300)));
    let mut gw = GatewayBuilder::new().route("iot", "/iot", up.addr).build();
    let (_, token) = gw.create_token("alice", "closed");
    gw.start();
    assert_eq!(gw.wait_ok("/iot/warm", &token).status, 200);
    let statuses = burst(gw.addr(), &token, 16);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert!(up.accepted() >= 8, "{} accepted", up.accepted());
    let t = Instant::now();
    let closed = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        up.open() == 0
    });
    eprintln!(
        "{} upstream connections half-closed by the upstream: {} still open {:?} later",
        up.accepted(),
        up.open(),
        t.elapsed()
    );
    assert!(
        closed,
        "{} connections the upstream closed are still open on the gateway's side",
        up.open()
    );
    // Nothing of this reached a client: the next request gets a fresh connection and succeeds.
    assert_eq!(gw.get_with_token("/iot/again", &token).status, 200);
}

/// A client that asks for a large download and stops reading: the gateway's write waits at most
/// `send_timeout`, then the connection is closed (what the kernel buffered still arrives, the rest never).
#[test]
fn a_client_that_stops_reading_is_closed_after_send_timeout() {
    let up = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .gateway("send_timeout", "\"2s\"")
        .route("api", "/api", up.addr())
        .start();
    let (_, token) = gw.create_token("alice", "laptop");
    gw.wait_ok("/api/warm", &token);
    let total: u64 = 256 * 1024 * 1024;
    let mut tcp = TcpStream::connect(gw.addr()).unwrap();
    tcp.write_all(&build_request(
        "GET",
        "/api/video.bin",
        &[
            ("Authorization", &bearer(&token)),
            (DOWNLOAD_HEADER, &total.to_string()),
        ],
        b"",
    ))
    .unwrap();
    // Not reading for twice the timeout: the gateway's write is stuck on full buffers past it.
    std::thread::sleep(Duration::from_secs(4));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut received = 0u64;
    let mut chunk = vec![0u8; 1 << 16];
    let ended = loop {
        match tcp.read(&mut chunk) {
            Ok(0) => break "closed",
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break "reset",
            Err(e) => {
                panic!("after {received} bytes: {e} (the connection was neither closed nor reset)")
            }
        }
    };
    eprintln!("a client that stopped reading for 4 s: {ended} after {received} of {total} bytes");
    assert!(
        received < total / 2,
        "the gateway kept writing to a client that stopped reading: {received} of {total} bytes"
    );
}
