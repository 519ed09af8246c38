//! The admin listener as an attacker meets it, over real sockets against the real binary: guessing
//! tokens is throttled per address as on the gateway's listeners (429 with `Retry-After`), while a valid
//! admin token from the same address keeps working.

mod common;

use common::*;

fn admin_call(gw: &Gateway, target: &str, token: Option<&str>) -> RawResponse {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    raw_http(
        gw.admin_addr(),
        &build_request("GET", target, &headers, b""),
    )
}

#[test]
fn guessing_admin_tokens_is_throttled_per_address_but_a_valid_token_never_is() {
    let up = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .section("throttle", "max_failures", "5")
        .section("throttle", "window", "\"60s\"")
        .route("api", "/api", up.addr())
        .start();
    let (_, admin) = gw.create_token_with("ops", "ops", &["--scope", "admin"]);
    let (_, device) = gw.create_token_with("alice", "scale", &[]);
    gw.wait_ok("/api/warm", &device);
    // Missing credentials and tokens without the scope are not guesses.
    for _ in 0..10 {
        assert_eq!(admin_call(&gw, "/api/tokens", None).status, 401);
        assert_eq!(admin_call(&gw, "/api/tokens", Some(&device)).status, 403);
    }
    for i in 0..5 {
        let guess = format!("tg_guess{i}");
        let r = admin_call(&gw, "/api/tokens", Some(&guess));
        assert_eq!(r.status, 401, "guess {}: {r}", i + 1);
    }
    for (i, target) in ["/api/tokens", "/api/whoami", "/api/routes", "/api/tokens/1"]
        .iter()
        .enumerate()
    {
        let guess = format!("tg_more{i}");
        let r = admin_call(&gw, target, Some(&guess));
        assert_eq!(r.status, 429, "{target}: {r}");
        assert_eq!(r.json_error(), "too_many_requests");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        // The operator's valid token from the same address is served meanwhile.
        let ok = admin_call(&gw, "/api/tokens", Some(&admin));
        assert_eq!(ok.status, 200, "valid admin token throttled: {ok}");
    }
    // Still no secret in any answer.
    let r = admin_call(&gw, "/api/tokens", Some("tg_more9"));
    assert!(!r.text().contains("tg_more9"), "{r}");
}

#[test]
fn self_service_writes_are_budgeted_per_user_and_tokens_capped_per_user() {
    let up = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .section("admin", "self_service_rate", "\"5/m\"")
        .section("admin", "max_tokens_per_user", "3")
        .route("api", "/api", up.addr())
        .start();
    let (_, admin) = gw.create_token_with("ops", "ops", &["--scope", "admin"]);
    let (_, alice) =
        gw.create_token_with("alice", "self", &["--scope", "tokens:self", "--scope", "x"]);
    let (_, bob) = gw.create_token_with("bob", "self", &["--scope", "tokens:self", "--scope", "x"]);
    gw.wait_status("/api/warm", &bob, 200);
    let create = |token: &str| {
        let auth = bearer(token);
        let body = br#"{"label": "scale", "scopes": ["x"]}"#;
        raw_http(
            gw.admin_addr(),
            &build_request(
                "POST",
                "/api/tokens",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                body,
            ),
        )
    };
    // alice holds one active token (her self token): two more, then the cap.
    assert_eq!(create(&alice).status, 201);
    assert_eq!(create(&alice).status, 201);
    let r = create(&alice);
    assert_eq!((r.status, r.json_error()), (403, "forbidden".into()), "{r}");
    assert!(r.text().contains("max_tokens_per_user"), "{r}");
    // Two more writes fit the burst of five; the sixth is 429 with Retry-After.
    assert_eq!(create(&alice).status, 403);
    assert_eq!(create(&alice).status, 403);
    let r = create(&alice);
    assert_eq!(
        (r.status, r.json_error()),
        (429, "too_many_requests".into()),
        "{r}"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Reads are not budgeted; another user has its own budget; an admin has none.
    let auth = bearer(&alice);
    let list = raw_http(
        gw.admin_addr(),
        &build_request("GET", "/api/tokens", &[("Authorization", &auth)], b""),
    );
    assert_eq!(list.status, 200);
    assert_eq!(list.json().as_array().unwrap().len(), 3);
    assert_eq!(create(&bob).status, 201);
    for _ in 0..8 {
        let auth = bearer(&admin);
        let body = br#"{"user": "alice", "label": "ops-made", "scopes": ["x"]}"#;
        let r = raw_http(
            gw.admin_addr(),
            &build_request(
                "POST",
                "/api/tokens",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                body,
            ),
        );
        assert_eq!(r.status, 201, "{r}");
    }
}

/// Reads until the peer closes (or errors); how long that took, or `None` if it stayed open `limit`.
fn closed_within(
    stream: &mut std::net::TcpStream,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    use std::io::Read;
    let start = std::time::Instant::now();
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn the_admin_listener_caps_connections_heads_and_their_time() {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let up = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .gateway("header_timeout", "\"2s\"")
        .section("admin", "max_connections", "2")
        .route("api", "/api", up.addr())
        .start();
    // Two silent connections fill the cap; a third is answered 503 at once.
    let mut a = TcpStream::connect(gw.admin_addr()).unwrap();
    let mut b = TcpStream::connect(gw.admin_addr()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let r = try_raw_http(gw.admin_addr(), &build_request("GET", "/healthz", &[], b""))
        .expect("an answer");
    assert_eq!(r.status, 503, "{r}");
    assert_eq!(r.json_error(), "overloaded");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The silent ones are closed at header_timeout (2 s), freeing their slots.
    let ca = closed_within(&mut a, Duration::from_secs(8)).expect("silent connection kept open");
    assert!(closed_within(&mut b, Duration::from_secs(8)).is_some());
    assert!(ca >= Duration::from_millis(1500), "{ca:?}");
    assert_eq!(gw.admin_get("/healthz").status, 200);

    // A head trickled a byte at a time is cut at header_timeout too, not 60 s per read.
    let mut slow = TcpStream::connect(gw.admin_addr()).unwrap();
    let trickle = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ";
    slow.write_all(head).unwrap();
    let mut cut = false;
    while trickle.elapsed() < Duration::from_secs(10) {
        if slow.write_all(b"a").is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(250)).is_some() {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickled head held its connection for 10 s");
    assert!(
        trickle.elapsed() < Duration::from_secs(5),
        "{:?}",
        trickle.elapsed()
    );

    // A head over 64 KiB is not read on: the connection closes without waiting for the rest.
    let mut big = TcpStream::connect(gw.admin_addr()).unwrap();
    let start = Instant::now();
    let mut sent = 0usize;
    let pad = vec![b'a'; 16 * 1024];
    let _ = big.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ");
    big.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    while sent < 1024 * 1024 && big.write_all(&pad).is_ok() {
        sent += pad.len();
    }
    assert!(
        sent < 1024 * 1024 || closed_within(&mut big, Duration::from_secs(5)).is_some(),
        "a 1 MB head was read"
    );
    assert!(start.elapsed() < Duration::from_secs(8));
    assert_eq!(gw.admin_get("/healthz").status, 200);
}
