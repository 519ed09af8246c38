//! Edge TLS over real sockets with real TLS clients (rustls, certificates made here with rcgen): versions
//! (1.2, 1.3, `min_version`, legacy versions refused), an ESP32-like client, plain HTTP on the TLS port,
//! certificates by SNI and their live reload (a bad file refuses the reload), the handshake deadline and
//! the connection limit, client certificates (optional, required) and certificate-bound tokens,
//! `tls_only` routes, `https://` upstreams (verified; 502 `upstream_tls`), and `check-config` on the TLS
//! section (errors by key, warnings, never key material).
//!
//! What the plain listener guarantees is also checked over TLS by running the core suite twice
//! (`tests/gateway.rs`, `plain::` and `tls::`).

mod common;

use common::tls::{ClientOptions, Leaf, Pki};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn get_over(conn: &mut Conn, target: &str, token: Option<&str>) -> RawResponse {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    conn.roundtrip(&keepalive_request("GET", target, &headers, b""))
        .expect("request over TLS")
}

/// One TLS request with `options` (a fresh connection); `Err` when the handshake or the exchange fails.
fn tls_get(
    gw: &Gateway,
    options: &ClientOptions,
    target: &str,
    token: Option<&str>,
) -> std::io::Result<RawResponse> {
    let stream = gw.tls_connect(options, "localhost")?;
    let mut conn = Conn::over(Wired::tls(stream)?);
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    conn.roundtrip(&build_request("GET", target, &headers, b""))
}

fn versions(v: &[&'static rustls::SupportedProtocolVersion]) -> ClientOptions {
    ClientOptions {
        versions: Some(v.to_vec()),
        ..ClientOptions::default()
    }
}

/// A gateway with TLS on, one route `/api`, and a token for alice.
fn tls_gateway(builder: GatewayBuilder, up: &Upstream) -> (Gateway, String) {
    let mut gw = builder.tls().route("api", "/api", up.addr()).build();
    let (_, token) = gw.create_token("alice", "tls");
    gw.start();
    (gw, token)
}

/// A TLS record the server sent first, or `None` when it closed without one.
fn first_record(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 5];
    match stream.read_exact(&mut buf) {
        Ok(()) => Some(buf.to_vec()),
        Err(_) => None,
    }
}

/// A minimal ClientHello of a TLS 1.0/1.1-only client (legacy version, no supported_versions).
fn legacy_client_hello(minor: u8) -> Vec<u8> {
    let mut body = vec![0x03, minor];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x14, 0xc0, 0x0a]); // ECDHE-*-AES256-SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

#[test]
fn tls_12_and_13_succeed_legacy_versions_and_plain_http_are_refused() {
    let up = Upstream::start("api");
    let (gw, token) = tls_gateway(GatewayBuilder::new(), &up);
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let r = tls_get(&gw, &versions(&[v]), "/api/v", Some(&token)).expect("handshake");
        assert_eq!(r.status, 200, "{v:?}: {r}");
        assert_eq!(up.last().single_header("x-forwarded-proto"), "https");
    }
    // SSLv3-era and TLS 1.0/1.1 ClientHellos: an alert or a close, never a ServerHello.
    for minor in [1u8, 2] {
        let mut s = TcpStream::connect(gw.tls_addr()).unwrap();
        s.write_all(&legacy_client_hello(minor)).unwrap();
        let first = first_record(&mut s);
        assert!(
            first.as_ref().is_none_or(|r| r[0] == 0x15),
            "TLS 1.{}: the server answered {first:?}",
            minor - 1
        );
    }
    // Plain HTTP to the TLS port: closed at once; the listener keeps serving.
    let t = Instant::now();
    let mut s = TcpStream::connect(gw.tls_addr()).unwrap();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut rest);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "plain HTTP held the connection"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"));
    let r = tls_get(&gw, &ClientOptions::default(), "/api/after", Some(&token)).unwrap();
    assert_eq!(r.status, 200);
    let failures = metric_sum(&gw.metrics(), "tokengate_tls_handshake_failures_total", &[]);
    assert!(failures >= 3.0, "handshake failures counted: {failures}");
}

#[test]
fn min_version_13_refuses_a_tls12_client() {
    let up = Upstream::start("api");
    let (gw, token) = tls_gateway(GatewayBuilder::new().tls_key("min_version", "\"1.3\""), &up);
    assert!(tls_get(
        &gw,
        &versions(&[&rustls::version::TLS12]),
        "/api",
        Some(&token)
    )
    .is_err());
    let r = tls_get(
        &gw,
        &versions(&[&rustls::version::TLS13]),
        "/api",
        Some(&token),
    )
    .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn an_esp32_like_client_connects() {
    use rustls::crypto::ring::cipher_suite::*;
    let up = Upstream::start("api");
    let (gw, token) = tls_gateway(GatewayBuilder::new(), &up);
    // mbedTLS defaults: TLS 1.2 only, ECDHE with AES-GCM (the harness's certificate is ECDSA P-256).
    for suite in [
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ] {
        let options = ClientOptions {
            versions: Some(vec![&rustls::version::TLS12]),
            suites: Some(vec![suite]),
            ..ClientOptions::default()
        };
        let r = tls_get(&gw, &options, "/api/esp32", Some(&token)).expect("ESP32-like handshake");
        assert_eq!(r.status, 200, "{suite:?}: {r}");
    }
}

#[test]
fn certificates_are_chosen_by_sni_and_reload_swaps_them_live() {
    let up = Upstream::start("api");
    let mut b = GatewayBuilder::new();
    let pki = b.pki();
    let (a1, b1) = (
        pki.leaf(&["a.example", "localhost"]),
        pki.leaf(&["b.example"]),
    );
    let (gw, token) = tls_gateway(b.tls_certificates(vec![a1.clone(), b1.clone()]), &up);
    let looking = ClientOptions {
        any_server_certificate: true,
        ..ClientOptions::default()
    };
    let presented = |name: &str| {
        let s = gw.tls_connect(&looking, name).expect("handshake");
        common::tls::peer_certificate(&s)
    };
    assert_eq!(presented("a.example"), a1.der);
    assert_eq!(presented("b.example"), b1.der);
    assert_eq!(presented("B.Example"), b1.der, "names compare without case");
    assert_eq!(presented("other.example"), a1.der, "no match: the first");
    // An IP address as server name: rustls sends no SNI; the first certificate answers.
    assert_eq!(presented("127.0.0.1"), a1.der, "no SNI: the first");
    // A verifying client accepts each name's own certificate.
    assert!(gw
        .tls_connect(&ClientOptions::default(), "b.example")
        .is_ok());

    // Keep a connection open across the reload.
    let mut kept = gw.tls_conn(&ClientOptions::default());
    assert_eq!(get_over(&mut kept, "/api/before", Some(&token)).status, 200);

    let (a2, b2) = (
        pki.leaf(&["a.example", "localhost"]),
        pki.leaf(&["b.example"]),
    );
    a2.write(gw.dir(), "server0");
    b2.write(gw.dir(), "server1");
    gw.sighup();
    assert!(
        poll_until(
            Duration::from_secs(5),
            Duration::from_millis(20),
            || presented("b.example") == b2.der
        ),
        "the reload did not swap the certificates"
    );
    assert_eq!(presented("a.example"), a2.der);
    assert_eq!(
        get_over(&mut kept, "/api/after", Some(&token)).status,
        200,
        "kept connection"
    );

    // A broken key refuses the whole reload: the running certificates stay.
    std::fs::write(
        gw.dir().join("server1.key"),
        "-----BEGIN PRIVATE KEY-----\nnope\n",
    )
    .unwrap();
    gw.sighup();
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            metric_sum(
                &gw.metrics(),
                "tokengate_config_reloads_total",
                &["result=\"error\""],
            ) >= 1.0
        }
    ));
    assert_eq!(presented("b.example"), b2.der);
    assert!(
        gw.logs().contains("tls.certificates[1].key"),
        "the log names the key:\n{}",
        gw.logs()
    );
    assert!(
        !gw.logs().contains(&b2.key_pem[30..60]),
        "key material logged"
    );
}

#[test]
fn a_silent_client_is_dropped_at_header_timeout_and_frees_its_connection_slot() {
    let up = Upstream::start("api");
    let (gw, token) = tls_gateway(
        GatewayBuilder::new()
            .gateway("header_timeout", "\"300ms\"")
            .gateway("max_connections", "2"),
        &up,
    );
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(gw.tls_addr()).unwrap())
        .collect();
    // Both slots are taken by clients that never send a ClientHello...
    std::thread::sleep(Duration::from_millis(100));
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        let closed = matches!(s.read(&mut b), Ok(0) | Err(_));
        assert!(closed, "a silent client was not dropped");
    }
    let held = started.elapsed();
    assert!(
        held < Duration::from_secs(2),
        "silent clients held for {held:?} (header_timeout 300ms)"
    );
    // ...and once dropped, a real client gets a slot.
    let r = tls_get(&gw, &ClientOptions::default(), "/api/x", Some(&token)).unwrap();
    assert_eq!(r.status, 200, "{r}");
}

/// Reads from a raw socket until the server closes it: `Some(elapsed since start)` for a close (EOF or
/// reset), `None` when the read timed out with the connection still open.
fn closed_within(s: &mut TcpStream, start: Instant, wait: Duration) -> Option<Duration> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// A TLS connection as soon as a `max_connections` slot is free (a closed connection gives its slot back
/// a moment after the client sees the close); panics after 10 s.
fn tls_conn_when_free(gw: &Gateway, options: &ClientOptions) -> Conn {
    let mut conn = None;
    let got = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        conn = gw.tls_connect(options, "localhost").ok();
        conn.is_some()
    });
    assert!(got, "no connection slot came free");
    Conn::over(Wired::tls(conn.unwrap()).unwrap())
}

/// A raw TCP connection to the TLS listener that the gateway admitted (it was not closed at once for
/// want of a slot), and when it was made; retries for up to 10 s.
fn admitted_tcp(gw: &Gateway) -> (TcpStream, Instant) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let s = TcpStream::connect(gw.tls_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 1];
        match s.peek(&mut b) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (s, started)
            }
            _ => assert!(Instant::now() < deadline, "no connection slot came free"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn over_the_limit_tls_connections_are_closed_before_the_handshake_as_fast_as_plain_ones_get_503() {
    let up = Upstream::start("api");
    let (gw, token) = tls_gateway(
        GatewayBuilder::new()
            .gateway("header_timeout", "\"6s\"")
            .gateway("max_connections", "2"),
        &up,
    );
    // Two real TLS clients take both slots and keep them (keep-alive).
    let mut holders: Vec<Conn> = (0..2)
        .map(|_| gw.tls_conn(&ClientOptions::default()))
        .collect();
    for c in &mut holders {
        let r = get_over(c, "/api/hold", Some(&token));
        assert_eq!(r.status, 200, "{r}");
    }
    // Four raw TCP connections that never send a ClientHello: closed at once, not at header_timeout.
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(gw.tls_addr()).unwrap())
        .collect();
    for s in &mut silent {
        let closed = closed_within(s, started, Duration::from_secs(10))
            .expect("an over-the-limit connection was kept open");
        assert!(
            closed < Duration::from_secs(3),
            "an over-the-limit TLS connection was held {closed:?} (header_timeout 6 s)"
        );
    }
    let silent_closed = started.elapsed();
    // Four real TLS clients: their handshake fails at once (no slot, no handshake).
    let t = Instant::now();
    for _ in 0..4 {
        let r = tls_get(&gw, &ClientOptions::default(), "/api/x", Some(&token));
        assert!(r.is_err(), "an over-the-limit TLS client was served: {r:?}");
    }
    let tls_refused = t.elapsed();
    // The plain listener shares the limit: 503 with Retry-After.
    let t = Instant::now();
    for _ in 0..4 {
        let r = raw_http(gw.addr(), &build_request("GET", "/api/x", &[], b""));
        assert_eq!(r.status, 503, "{r}");
        assert_eq!(r.json_error(), "overloaded");
    }
    let plain_refused = t.elapsed();
    eprintln!(
        "over the limit: 4 silent TLS connections closed within {silent_closed:?}, 4 TLS clients \
         refused in {tls_refused:?}, 4 plain clients answered 503 in {plain_refused:?}"
    );
    assert!(tls_refused < Duration::from_secs(3), "{tls_refused:?}");
    let m = gw.metrics();
    let refused = |l: &str| {
        metric_sum(
            &m,
            "tokengate_connections_refused_total",
            &[&format!("listener=\"{l}\"")],
        )
    };
    assert_eq!((refused("tls"), refused("plain")), (8.0, 4.0), "{m}");
    assert_eq!(
        metric_sum(&m, "tokengate_tls_handshake_failures_total", &[]),
        0.0,
        "refusals are not handshake failures"
    );

    // Slot accounting: the refusals took nothing. One holder leaves: exactly one slot comes free.
    drop(holders.pop());
    let mut again = tls_conn_when_free(&gw, &ClientOptions::default());
    assert_eq!(get_over(&mut again, "/api/again", Some(&token)).status, 200);
    assert!(
        tls_get(&gw, &ClientOptions::default(), "/api/x", Some(&token)).is_err(),
        "a third connection got in with max_connections = 2"
    );
    // The holders were never disturbed.
    assert_eq!(
        get_over(&mut holders[0], "/api/still", Some(&token)).status,
        200
    );
}

#[test]
fn a_tls_client_stalled_in_or_after_its_handshake_holds_a_slot_only_until_header_timeout_from_accept(
) {
    let up = Upstream::start("api");
    let (gw, token) = tls_gateway(
        GatewayBuilder::new()
            .gateway("header_timeout", "\"3s\"")
            .gateway("max_connections", "1"),
        &up,
    );
    let options = ClientOptions::default();
    // Half a ClientHello, then nothing: the one slot is held (another client is refused at once) until
    // header_timeout, then the connection is closed and the slot is free.
    let hello = common::tls::client_hello(&gw.tls_client(&options), "localhost");
    let started = Instant::now();
    let mut stalled = TcpStream::connect(gw.tls_addr()).unwrap();
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        tls_get(&gw, &options, "/api/x", Some(&token)).is_err(),
        "a second client got in while the only slot was held"
    );
    let held = closed_within(&mut stalled, started, Duration::from_secs(10))
        .expect("a stalled handshake was kept open");
    eprintln!("half a ClientHello: closed after {held:?} (header_timeout 3 s)");
    assert!(held < Duration::from_secs(5), "{held:?}");
    let mut freed = tls_conn_when_free(&gw, &options);
    assert_eq!(get_over(&mut freed, "/api/freed", Some(&token)).status, 200);
    drop(freed);

    // A handshake finished 2 s after accept, then silence: closed at header_timeout counted from accept
    // (3 s), not 3 s more after the handshake.
    let (tcp, started) = admitted_tcp(&gw);
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    let mut late = common::tls::handshake(tcp, &gw.tls_client(&options), "localhost")
        .expect("a late handshake within header_timeout succeeds");
    let mut b = [0u8; 1];
    let _ = late.read(&mut b); // the server closes (no request came)
    let held = started.elapsed();
    eprintln!("handshake at 2 s, no request: closed after {held:?} (header_timeout 3 s)");
    assert!(
        held < Duration::from_millis(4500),
        "a late handshake earned a second header_timeout: held {held:?}"
    );
    // A late handshake with a prompt request is served as usual.
    drop(late);
    let (tcp, _) = admitted_tcp(&gw);
    std::thread::sleep(Duration::from_secs(1));
    let stream = common::tls::handshake(tcp, &gw.tls_client(&options), "localhost").unwrap();
    let mut conn = Conn::over(Wired::tls(stream).unwrap());
    assert_eq!(get_over(&mut conn, "/api/late", Some(&token)).status, 200);
    let failures = metric_sum(&gw.metrics(), "tokengate_tls_handshake_failures_total", &[]);
    assert!(
        failures >= 1.0,
        "the stalled handshake is counted: {failures}"
    );
}

/// A gateway asking for device certificates signed by its own device CA, with a token bound to one
/// device's certificate.
struct Devices {
    gw: Gateway,
    up: Upstream,
    device: Leaf,
    other_device: Leaf,
    bound: String,
    bound_id: i64,
    unbound: String,
}

fn devices(client_auth: &str) -> Devices {
    let up = Upstream::start("api");
    let devices = Pki::new("device CA");
    let (device, other_device) = (devices.leaf(&["hive-7"]), devices.leaf(&["hive-8"]));
    let dir = tempfile::tempdir().unwrap();
    let ca = common::tls::write_pem(dir.path(), "devices-ca.pem", &devices.ca_pem);
    let device_pem = common::tls::write_pem(dir.path(), "hive-7.pem", &device.cert_pem);
    let mut gw = GatewayBuilder::new()
        .tls_key("client_ca", &format!("{:?}", ca.display().to_string()))
        .tls_key("client_auth", client_auth)
        .route("api", "/api", up.addr())
        .build();
    let device_pem = device_pem.display().to_string();
    let (bound_id, bound) =
        gw.create_token_with("beekeeper", "hive 7", &["--bind-cert", &device_pem]);
    let (_, unbound) = gw.create_token("beekeeper", "laptop");
    gw.start();
    std::mem::forget(dir); // the CA file must outlive the gateway (it is read again on reload)
    Devices {
        gw,
        up,
        device,
        other_device,
        bound,
        bound_id,
        unbound,
    }
}

fn with_identity(leaf: &Leaf) -> ClientOptions {
    ClientOptions {
        identity: Some(leaf.clone()),
        ..ClientOptions::default()
    }
}

#[test]
fn a_bound_token_works_only_with_its_certificate() {
    let d = devices("\"optional\"");
    let listed = d.gw.token_entry(d.bound_id);
    assert_eq!(
        listed["bound_cert_sha256"],
        d.device.sha256_hex(),
        "{listed}"
    );
    let r = tls_get(&d.gw, &with_identity(&d.device), "/api/ok", Some(&d.bound)).unwrap();
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(d.up.last().single_header("x-user-id"), "beekeeper");

    let refused = [
        (
            "TLS without a client certificate",
            tls_get(&d.gw, &ClientOptions::default(), "/api/no", Some(&d.bound)).unwrap(),
        ),
        (
            "TLS with another device's certificate",
            tls_get(
                &d.gw,
                &with_identity(&d.other_device),
                "/api/no",
                Some(&d.bound),
            )
            .unwrap(),
        ),
        (
            "the plain listener",
            d.gw.get_with_token("/api/no", &d.bound),
        ),
    ];
    for (how, r) in refused {
        assert_eq!(r.status, 401, "{how}: {r}");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{how}: {challenge}"
        );
        assert!(
            challenge.contains("bound to a client certificate"),
            "{how}: {challenge}"
        );
        assert_eq!(r.json_error(), "invalid_token");
    }
    assert!(d.up.requests().iter().all(|r| r.uri != "/api/no"));
    // Unbound tokens behave as before, with or without a certificate, on both listeners.
    assert_eq!(d.gw.get_with_token("/api/plain", &d.unbound).status, 200);
    let r = tls_get(
        &d.gw,
        &ClientOptions::default(),
        "/api/tls",
        Some(&d.unbound),
    )
    .unwrap();
    assert_eq!(r.status, 200);

    // Rotation keeps the binding; the hex form binds the same way.
    let id = d.bound_id.to_string();
    let rotated = d.gw.cli_json(&["token", "rotate", &id, "--json"]);
    assert_eq!(rotated["bound_cert_sha256"], d.device.sha256_hex());
    let fresh = rotated["token"].as_str().unwrap();
    let ok = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        tls_get(
            &d.gw,
            &with_identity(&d.device),
            "/api/rotated",
            Some(fresh),
        )
        .is_ok_and(|r| r.status == 200)
    });
    assert!(
        ok,
        "the rotated, still bound token never worked with its certificate"
    );
    assert_eq!(
        tls_get(
            &d.gw,
            &ClientOptions::default(),
            "/api/rotated",
            Some(fresh)
        )
        .unwrap()
        .status,
        401
    );
    let (_, by_hex) = d.gw.create_token_with(
        "beekeeper",
        "hive 8",
        &[
            "--bind-cert-sha256",
            &d.other_device.sha256_hex().to_uppercase(),
        ],
    );
    let ok = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        tls_get(
            &d.gw,
            &with_identity(&d.other_device),
            "/api/hex",
            Some(&by_hex),
        )
        .is_ok_and(|r| r.status == 200)
    });
    assert!(ok);
    assert_eq!(
        tls_get(&d.gw, &with_identity(&d.device), "/api/hex", Some(&by_hex))
            .unwrap()
            .status,
        401
    );
    let metrics = d.gw.metrics();
    assert!(
        metric_sum(
            &metrics,
            "tokengate_requests_total",
            &["auth=\"cert_mismatch\""]
        ) >= 4.0
    );
}

#[test]
fn client_certificates_from_another_ca_are_refused_and_required_means_required() {
    let d = devices("\"required\"");
    let stranger = Pki::new("stranger CA").leaf(&["hive-7"]);
    assert!(
        tls_get(&d.gw, &with_identity(&stranger), "/api/x", Some(&d.unbound)).is_err(),
        "a certificate from another CA was accepted"
    );
    assert!(
        tls_get(&d.gw, &ClientOptions::default(), "/api/x", Some(&d.unbound)).is_err(),
        "required: a client without a certificate was served"
    );
    let r = tls_get(&d.gw, &with_identity(&d.device), "/api/x", Some(&d.bound)).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn bad_binding_input_is_refused_and_changes_nothing() {
    let up = Upstream::start("api");
    let (gw, _) = tls_gateway(GatewayBuilder::new(), &up);
    let before = gw.token_list().len();
    let not_pem = gw.dir().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for args in [
        vec!["--bind-cert", not_pem.to_str().unwrap()],
        vec!["--bind-cert", "/nonexistent.pem"],
        vec!["--bind-cert-sha256", "abcd"],
        vec!["--bind-cert-sha256", &"zz".repeat(32)],
    ] {
        let mut all = vec!["token", "create", "--user", "u", "--label", "l"];
        all.extend(args.iter().copied());
        let out = gw.cli(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("bind-cert"),
            "{}",
            describe(&out)
        );
    }
    assert_eq!(gw.token_list().len(), before);
}

#[test]
fn tls_only_routes_refuse_the_plain_listener_before_reading_the_credential() {
    let up = Upstream::start("api");
    let mut gw = GatewayBuilder::new()
        .tls()
        .route_with("secure", "/secure", up.addr(), &[("tls_only", "true")])
        .build();
    let (id, token) = gw.create_token("alice", "tls only");
    gw.start();
    for auth in [None, Some(token.as_str()), Some("tg_garbage")] {
        let r = match auth {
            Some(t) => gw.get_with_token("/secure/x", t),
            None => gw.request("GET", "/secure/x", &[], b""),
        };
        assert_eq!(r.status, 403, "{r}");
        assert_eq!(r.json_error(), "tls_required");
        assert!(r.header("www-authenticate").is_none(), "{r}");
    }
    assert_eq!(up.hits(), 0, "the upstream was contacted");
    let r = tls_get(&gw, &ClientOptions::default(), "/secure/x", Some(&token)).unwrap();
    assert_eq!(r.status, 200, "{r}");
    // The refused plain requests were not uses of the token.
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(10));
    assert_eq!(gw.token_entry(id)["use_count"], 1);
}

#[test]
fn https_upstreams_are_verified_always() {
    let upstream_ca = Pki::new("upstream CA");
    let up = Upstream::start_tls("secure-api", &upstream_ca.leaf(&["localhost"]));
    let dir = tempfile::tempdir().unwrap();
    let ca = common::tls::write_pem(dir.path(), "upstream-ca.pem", &upstream_ca.ca_pem);
    let ca = format!("{:?}", ca.display().to_string());
    let https = format!("\"https://localhost:{}\"", up.addr().port());
    let mut gw = GatewayBuilder::new()
        .route_with("good", "/good", up.addr(), &[("upstream_ca", &ca)])
        .route_with("system", "/system", up.addr(), &[])
        .route_with(
            "wrong-name",
            "/wrong-name",
            up.addr(),
            &[
                ("upstream_ca", &ca),
                ("upstream_sni", "\"elsewhere.example\""),
            ],
        )
        .build();
    // route_with writes `upstream = "127.0.0.1:port"`; these routes speak https to the same server.
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    let plain = format!("upstream = \"{}\"", up.addr());
    std::fs::write(
        gw.config_path(),
        config.replace(&plain, &format!("upstream = {https}")),
    )
    .unwrap();
    let (_, token) = gw.create_token("alice", "https");
    gw.start();
    let r = gw.get_with_token("/good/x", &token);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["upstream"], "secure-api");
    for target in ["/system/x", "/wrong-name/x"] {
        let r = gw.get_with_token(target, &token);
        assert_eq!(r.status, 502, "{target}: {r}");
        assert_eq!(r.json_error(), "upstream_tls", "{target}");
    }
    assert_eq!(up.hits(), 1, "only the verified route reached the upstream");
    assert!(
        metric_sum(
            &gw.metrics(),
            "tokengate_upstream_errors_total",
            &["kind=\"tls\""]
        ) >= 2.0
    );
}

#[test]
fn check_config_names_tls_problems_by_key_and_never_shows_key_material() {
    let up = Upstream::start("api");
    let mut b = GatewayBuilder::new();
    let pki = b.pki();
    let good = pki.leaf(&["localhost"]);
    let gw = b.tls().route("api", "/api", up.addr()).build();
    let check = |gw: &Gateway| gw.cli(&["check-config"]);
    let out = check(&gw);
    assert!(out.status.success(), "{}", describe(&out));

    // A key that does not belong to the certificate.
    let other = pki.leaf(&["localhost"]);
    std::fs::write(gw.dir().join("server0.key"), &other.key_pem).unwrap();
    let out = check(&gw);
    let text = describe(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("tls.certificates[0].key"), "{text}");
    for line in other.key_pem.lines().skip(1).take(2) {
        assert!(!text.contains(line), "key material in: {text}");
    }
    // An unreadable certificate.
    good.write(gw.dir(), "server0");
    std::fs::remove_file(gw.dir().join("server0.crt")).unwrap();
    let out = check(&gw);
    assert!(!out.status.success());
    assert!(
        describe(&out).contains("tls.certificates[0].cert"),
        "{}",
        describe(&out)
    );

    // Warnings: an expired certificate, a key others can read; still exit 0.
    let expired = pki.leaf_with(&["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (_, key) = expired.write(gw.dir(), "server0");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&gw);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr.contains("warning") && stderr.contains("expired"),
        "{stderr}"
    );
    assert!(stderr.contains("tls.certificates[0].key"), "{stderr}");

    // Section errors name their key.
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        config.replace("[tls]\n", "[tls]\nmin_version = \"1.1\"\n"),
    )
    .unwrap();
    let out = check(&gw);
    assert!(
        describe(&out).contains("tls.min_version"),
        "{}",
        describe(&out)
    );
}

#[test]
fn tls_only_gateway_without_a_plain_listener() {
    let up = Upstream::start("api");
    let mut gw = GatewayBuilder::new()
        .wire(Wire::Tls)
        .route("api", "/api", up.addr())
        .build();
    let (_, token) = gw.create_token("alice", "tls only");
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    let plain = format!("listen = \"{}\"", gw.addr());
    std::fs::write(
        gw.config_path(),
        config.replacen(&plain, "listen = \"\"", 1),
    )
    .unwrap();
    gw.start();
    assert_eq!(gw.get_with_token("/api/x", &token).status, 200);
    assert!(TcpStream::connect_timeout(&gw.addr(), Duration::from_millis(500)).is_err());
}

#[test]
fn pipelining_body_limits_and_header_timeout_hold_over_tls() {
    let up = Upstream::start("api");
    let mut gw = GatewayBuilder::new()
        .tls()
        .gateway("header_timeout", "\"300ms\"")
        .route("api", "/api", up.addr())
        .route_with("small", "/small", up.addr(), &[("max_body_bytes", "10")])
        .build();
    let (_, token) = gw.create_token("alice", "pipeline");
    gw.start();
    let auth = bearer(&token);
    // Three pipelined requests in one write: each is decided on its own credential.
    let mut c = gw.tls_conn(&ClientOptions::default());
    let mut pipeline = keepalive_request("GET", "/api/one", &[("Authorization", &auth)], b"");
    pipeline.extend(keepalive_request(
        "GET",
        "/api/two",
        &[("Authorization", &auth)],
        b"",
    ));
    pipeline.extend(keepalive_request("GET", "/api/three", &[], b""));
    c.send(&pipeline).unwrap();
    let statuses: Vec<u16> = (0..3).map(|_| c.read_response().unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 401]);
    let seen: Vec<String> = up.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(seen, ["/api/one", "/api/two"]);
    // A body over the route's limit: 413 before anything is forwarded.
    let mut c = gw.tls_conn(&ClientOptions::default());
    let r = c
        .roundtrip(&build_request(
            "POST",
            "/small/x",
            &[("Authorization", &auth)],
            b"0123456789A",
        ))
        .unwrap();
    assert_eq!(r.status, 413, "{r}");
    assert_eq!(up.requests().len(), 2);
    // Half a head over TLS: 408 at header_timeout.
    let mut c = gw.tls_conn(&ClientOptions::default());
    let t = Instant::now();
    c.send(b"GET /api/slow HTTP/1.1\r\nHost: x\r\n").unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408, "{r}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "408 after {:?}",
        t.elapsed()
    );
}
