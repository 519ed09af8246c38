//! WebSocket tunnels with real WebSocket peers (tokio-tungstenite client and server), revocation that
//! reaches open tunnels and streaming uploads, and request ids / trace headers — over real sockets.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server: answers every text message with `echo:<text>`, binaries as they are, and
/// records the handshake's headers.
struct WsServer {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Headers>>>,
}

/// One handshake's header fields.
type Headers = Vec<(String, String)>;

fn ws_server(rt: &tokio::runtime::Runtime) -> WsServer {
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(Mutex::new(Vec::new()));
    let seen = handshakes.clone();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)] // tungstenite's callback signature
                let record = |req: &Request, resp: Response| {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    seen.lock().unwrap().push(headers);
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::text(format!("echo:{t}")),
                        Message::Binary(b) => Message::Binary(b),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    WsServer { addr, handshakes }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a WebSocket through the gateway at `path` with `token` (if any).
async fn open(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
    ),
    String,
> {
    let addr = gw.addr();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", bearer(t).parse().unwrap());
    }
    req.headers_mut()
        .insert("X-User-Id", "mallory".parse().unwrap());
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                format!("HTTP {}", r.status().as_u16())
            }
            other => other.to_string(),
        })
}

/// The `camera` role as configured at start: it grants the scope the `scoped` route requires.
const CAMERA_ROLE: &str = r#"["video:live", "telemetry:write"]"#;

fn gateway(ws: &WsServer, plain: &Upstream, more: &[(&str, &str)]) -> Gateway {
    let mut keys = vec![("websocket", "true")];
    keys.extend_from_slice(more);
    GatewayBuilder::new()
        .gateway("sync_interval", "\"50ms\"")
        .section("log", "access", "\"plain\"")
        .section("log", "access_path", "\"access.log\"")
        .section("roles", "camera", CAMERA_ROLE)
        .route_with("ws", "/ws", ws.addr, &keys)
        .route_with(
            "scoped",
            "/scoped",
            ws.addr,
            &[("websocket", "true"), ("required_scope", "\"video:live\"")],
        )
        .route("plain", "/plain", plain.addr())
        .start()
}

#[test]
fn a_tunnel_carries_both_directions_with_the_identity_and_without_the_credential() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[]);
    let (_, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    rt.block_on(async {
        let (mut client, response) = open(&gw, "/ws/live", Some(&token)).await.unwrap();
        assert_eq!(response.status().as_u16(), 101);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 32);
        client.send(Message::text("hello")).await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::text("echo:hello")
        );
        let big = vec![7u8; 300_000];
        client.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::binary(big));
        let m = gw.metrics();
        assert_eq!(
            metric_sum(&m, "tokengate_websocket_tunnels_open", &["route=\"ws\""]),
            1.0,
            "{m}"
        );
        client.close(None).await.unwrap();
        while client.next().await.is_some() {}
        let handshake = ws.handshakes.lock().unwrap()[0].clone();
        assert_eq!(header(&handshake, "x-user-id"), ["alice"], "{handshake:?}");
        assert!(
            header(&handshake, "authorization").is_empty(),
            "{handshake:?}"
        );
        assert_eq!(header(&handshake, "x-request-id"), [id.as_str()]);
        assert_eq!(header(&handshake, "upgrade"), ["websocket"]);
    });
    assert!(poll_until(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || {
            metric_sum(
                &gw.metrics(),
                "tokengate_websocket_tunnels_open",
                &["route=\"ws\""],
            ) == 0.0
        }
    ));
    let m = gw.metrics();
    assert!(
        metric_sum(
            &m,
            "tokengate_websocket_bytes_total",
            &["direction=\"to_upstream\""]
        ) > 300_000.0
    );
    assert!(
        metric_sum(
            &m,
            "tokengate_websocket_bytes_total",
            &["direction=\"to_client\""]
        ) > 300_000.0
    );
    let mut log = String::new();
    let found = poll_until(Duration::from_secs(3), Duration::from_millis(20), || {
        log = std::fs::read_to_string(gw.dir().join("access.log")).unwrap_or_default();
        log.contains("\"GET /ws/live\"")
    });
    assert!(found, "no access log line for the tunnel:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("\"GET /ws/live\""))
        .unwrap();
    // When the tunnel closed: its status, the bytes each way and how long it was open.
    assert!(
        line.contains(" 101 ") && line.contains("route=ws"),
        "{line}"
    );
    let bytes = |key: &str| -> u64 {
        line.split(' ')
            .find_map(|f| f.strip_prefix(key))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(bytes("in=") > 300_000 && bytes("out=") > 300_000, "{line}");
}

#[test]
fn upgrades_are_authorized_like_requests_and_refused_where_not_enabled() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[]);
    let (_, token) = gw.create_token_with("alice", "camera", &["--scope", "telemetry:write"]);
    gw.wait_status("/plain/x", &token, 200);
    rt.block_on(async {
        assert_eq!(open(&gw, "/ws/x", None).await.unwrap_err(), "HTTP 401");
        assert_eq!(
            open(&gw, "/ws/x", Some("tg_garbage")).await.unwrap_err(),
            "HTTP 401"
        );
        assert_eq!(
            open(&gw, "/scoped/x", Some(&token)).await.unwrap_err(),
            "HTTP 403"
        );
        // A route without websocket = true: answered as a plain request, Upgrade not sent on.
        assert_eq!(
            open(&gw, "/plain/x", Some(&token)).await.unwrap_err(),
            "HTTP 200"
        );
    });
    assert!(
        ws.handshakes.lock().unwrap().is_empty(),
        "a refused upgrade reached the server"
    );
    let seen = plain.last();
    assert!(
        seen.header_values("upgrade").is_empty(),
        "{:?}",
        seen.headers
    );
    assert!(seen.header_values("sec-websocket-key").len() == 1);
    // Another protocol on a websocket route: not upgraded either.
    let auth = bearer(&token);
    let r = gw.request(
        "GET",
        "/plain/h2c",
        &[
            ("Authorization", auth.as_str()),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{r}");
    let seen = plain.last();
    assert!(
        seen.header_values("upgrade").is_empty() && seen.header_values("http2-settings").is_empty()
    );
}

#[test]
fn revoking_a_token_closes_its_open_tunnels_within_the_sync_bound() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[]);
    let (id, token) = gw.create_token("alice", "camera");
    let (_, other) = gw.create_token("bob", "camera");
    gw.wait_status("/plain/x", &token, 200);
    rt.block_on(async {
        let (mut mine, _) = open(&gw, "/ws/live", Some(&token)).await.unwrap();
        let (mut theirs, _) = open(&gw, "/ws/live", Some(&other)).await.unwrap();
        mine.send(Message::text("a")).await.unwrap();
        assert_eq!(mine.next().await.unwrap().unwrap(), Message::text("echo:a"));
        let t = Instant::now();
        let out = gw.cli(&["token", "revoke", &id.to_string()]);
        assert!(out.status.success());
        // The tunnel ends: the stream closes (no more messages).
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match mine.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the tunnel of a revoked token stayed open");
        let took = t.elapsed();
        eprintln!(
            "tunnel closed {took:?} after the revoke (sync_interval 50 ms, check every 50 ms)"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        // Someone else's tunnel is untouched.
        theirs.send(Message::text("b")).await.unwrap();
        assert_eq!(
            theirs.next().await.unwrap().unwrap(),
            Message::text("echo:b")
        );
    });
}

#[test]
fn a_silent_tunnel_closes_after_its_idle_timeout() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[("websocket_idle_timeout", "\"400ms\"")]);
    let (_, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    rt.block_on(async {
        let (mut client, _) = open(&gw, "/ws/live", Some(&token)).await.unwrap();
        // Traffic keeps it open past the timeout.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.send(Message::text("ping")).await.unwrap();
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                Message::text("echo:ping")
            );
        }
        let t = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = client.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "a silent tunnel stayed open");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(350),
            "closed too early: {took:?}"
        );
        eprintln!("silent tunnel closed after {took:?} (websocket_idle_timeout 400 ms)");
    });
}

#[test]
fn an_upload_whose_token_is_revoked_midway_is_cut_and_never_succeeds() {
    let (up, gw) = upload_gateway();
    let (id, token) = gw.create_token("cam", "entrance");
    upload_is_cut_after(&gw, &up, &token, || gw.revoke(id));
}

/// An upstream for uploads behind a gateway that syncs every 50 ms.
fn upload_gateway() -> (Upstream, Gateway) {
    let up = Upstream::start("upload");
    let gw = GatewayBuilder::new()
        .gateway("sync_interval", "\"50ms\"")
        .route("video", "/video", up.addr())
        .start();
    (up, gw)
}

/// Starts a 64 MiB upload with `token`, does `act` once the upstream sees it streaming, and asserts
/// that the upload is cut: no success answer (a 401 if any), the upstream never gets the whole body.
fn upload_is_cut_after(gw: &Gateway, up: &Upstream, token: &str, act: impl FnOnce()) {
    gw.wait_status("/video/x", token, 200);
    let before = up.requests().len();
    let mut conn = std::net::TcpStream::connect(gw.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let total = 64 * 1024 * 1024;
    write!(
        conn,
        "POST /video/clip HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'v'; 64 * 1024];
    for _ in 0..16 {
        conn.write_all(&chunk).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        up.wait_hits(before + 1, Duration::from_secs(5)),
        "the upload never reached the upstream"
    );
    act();
    // Keep sending until the gateway stops taking the body.
    conn.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t = Instant::now();
    let mut cut = false;
    while t.elapsed() < Duration::from_secs(8) {
        if conn.write_all(&chunk).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "the gateway stopped taking the upload {:?} after the change",
        t.elapsed()
    );
    assert!(
        cut,
        "the gateway kept taking the upload for 8 s after the change"
    );
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut conn, &mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.starts_with("HTTP/1.1 2"),
        "the upload got a success answer: {text}"
    );
    if !text.is_empty() {
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
        assert!(text.contains("invalid_token"), "{text}");
    }
    assert_eq!(
        up.requests().len(),
        before,
        "the upstream received the whole upload"
    );
}

#[test]
fn request_ids_are_ours_unless_a_trusted_proxy_sent_a_sane_one_and_trace_headers_pass() {
    let up = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .gateway("trusted_proxies", "[\"127.0.0.1\"]")
        .route("api", "/api", up.addr())
        .start();
    let untrusted = GatewayBuilder::new()
        .route("api", "/api", up.addr())
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    let (_, token2) = untrusted.create_token("alice", "scale");
    gw.wait_ok("/api/x", &token);
    untrusted.wait_ok("/api/x", &token2);
    let send = |gw: &Gateway, token: &str, extra: &[(&str, &str)]| {
        let auth = bearer(token);
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(extra);
        gw.request("GET", "/api/x", &h, b"")
    };
    let trace = [
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ];
    // Fresh, the same on the response and upstream; trace headers unchanged.
    let r = send(&untrusted, &token2, &trace);
    let id = r.header("x-request-id").unwrap().to_owned();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let seen = up.last();
    assert_eq!(seen.header_values("x-request-id"), [id.as_str()]);
    assert_eq!(seen.header_values("traceparent"), [trace[0].1]);
    assert_eq!(seen.header_values("tracestate"), [trace[1].1]);
    // A client's id from an untrusted peer is replaced (and every copy of it removed).
    let r = send(
        &untrusted,
        &token2,
        &[("X-Request-Id", "client-chosen"), ("x_request_id", "again")],
    );
    let seen = up.last();
    assert_ne!(r.header("x-request-id"), Some("client-chosen"));
    assert_eq!(
        seen.header_values("x-request-id"),
        [r.header("x-request-id").unwrap()]
    );
    // From a trusted proxy: kept when sane, replaced when not.
    let r = send(&gw, &token, &[("X-Request-Id", "edge-42")]);
    assert_eq!(r.header("x-request-id"), Some("edge-42"));
    assert_eq!(up.last().header_values("x-request-id"), ["edge-42"]);
    let long = "x".repeat(129);
    let r = send(&gw, &token, &[("X-Request-Id", long.as_str())]);
    assert_eq!(r.header("x-request-id").unwrap().len(), 32);
    // Every JSON error names its request id.
    for (target, auth) in [
        ("/api/x", None),
        ("/nowhere", Some(token.as_str())),
        ("/api/x", Some("tg_bad")),
    ] {
        let a = auth.map(bearer);
        let h: Vec<(&str, &str)> = a.iter().map(|a| ("Authorization", a.as_str())).collect();
        let r = gw.request("GET", target, &h, b"");
        assert!(r.status >= 400, "{r}");
        assert_eq!(
            r.json()["request_id"],
            r.header("x-request-id").unwrap(),
            "{r}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Open tunnels and uploads re-checked against the token and the routes as they are now
// ---------------------------------------------------------------------------------------------------------

/// Reads until the WebSocket ends (a close frame, an error, or the end of the stream); `Err` if it
/// is still open after `within`.
async fn ended_within(ws: &mut Ws, within: Duration) -> Result<(), String> {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .map_err(|_| format!("the tunnel was still open {within:?} later"))
}

/// One echo round trip: the tunnel is open and relaying.
async fn echoes(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text(format!("echo:{text}"))
    );
}

/// Opens a tunnel on `path` with `token`, does `act`, and returns how long the tunnel took to close
/// after it (panicking past 5 s: it stayed open).
async fn tunnel_closes_after(
    gw: &Gateway,
    path: &str,
    token: &str,
    act: impl FnOnce(),
) -> Duration {
    let (mut ws, _) = open(gw, path, Some(token)).await.unwrap();
    echoes(&mut ws, "before").await;
    act();
    let t = Instant::now();
    if let Err(e) = ended_within(&mut ws, Duration::from_secs(5)).await {
        panic!("{e}");
    }
    t.elapsed()
}

/// The bound these tests allow for a change to close a tunnel: the sync bound (50 ms here) plus one
/// check tick (50 ms), with room for a loaded machine.
const CLOSE_BOUND: Duration = Duration::from_secs(3);

#[test]
fn a_revoke_that_follows_an_edit_still_closes_the_tunnel() {
    // An edit of a limit or expiry replaces the token's index entry; the tunnel and upload used to
    // watch the entry they started with, so a token could pin its tunnel open by editing itself first.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[]);
    let (id, token) = gw.create_token("alice", "camera");
    let (_, other) = gw.create_token("bob", "camera");
    gw.wait_status("/plain/x", &token, 200);
    let id = id.to_string();
    rt.block_on(async {
        let (mut theirs, _) = open(&gw, "/ws/live", Some(&other)).await.unwrap();
        let took = tunnel_closes_after(&gw, "/ws/live", &token, || {
            assert_success(
                &gw.cli(&["token", "set", &id, "--rate-limit", "100/s"]),
                &["token", "set"],
            );
            // Let the gateway apply the edit on its own before the revoke.
            std::thread::sleep(Duration::from_millis(400));
            gw.revoke(id.parse().unwrap());
        })
        .await;
        eprintln!("edited then revoked: tunnel closed {took:?} after the revoke");
        assert!(took < CLOSE_BOUND, "{took:?}");
        echoes(&mut theirs, "untouched").await;
    });
}

#[test]
fn a_revoke_that_follows_an_edit_still_cuts_the_upload() {
    let (up, gw) = upload_gateway();
    let (id, token) = gw.create_token("cam", "entrance");
    let id = id.to_string();
    upload_is_cut_after(&gw, &up, &token, || {
        assert_success(
            &gw.cli(&["token", "set", &id, "--expires-in", "1h"]),
            &["token", "set"],
        );
        std::thread::sleep(Duration::from_millis(400));
        gw.revoke(id.parse().unwrap());
    });
}

#[test]
fn an_expiry_closes_the_tunnel_also_one_set_by_an_edit() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[]);
    // Expiring on its own: closed once its second is over.
    let (_, token) = gw.create_token_with("alice", "camera", &["--expires-in", "3s"]);
    gw.wait_status("/plain/x", &token, 200);
    let took = rt.block_on(tunnel_closes_after(&gw, "/ws/live", &token, || {}));
    eprintln!("a token created with 3 s to live: its tunnel closed after {took:?}");
    // Given an expiry by an edit while its tunnel is open.
    let (id, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    let id = id.to_string();
    let took = rt.block_on(tunnel_closes_after(&gw, "/ws/live", &token, || {
        assert_success(
            &gw.cli(&["token", "set", &id, "--expires-in", "1s"]),
            &["token", "set"],
        );
    }));
    eprintln!("given 1 s to live by an edit: its tunnel closed {took:?} after the edit");
    assert!(took < CLOSE_BOUND + Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_rotation_without_grace_closes_the_tunnels_of_the_old_secret() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[]);
    let (id, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    let id = id.to_string();
    let mut fresh = String::new();
    let took = rt.block_on(tunnel_closes_after(&gw, "/ws/live", &token, || {
        let rotated = gw.cli_json(&["token", "rotate", &id, "--json"]);
        fresh = rotated["token"].as_str().unwrap().to_owned();
    }));
    eprintln!("rotated without grace: the old secret's tunnel closed {took:?} after");
    assert!(took < CLOSE_BOUND, "{took:?}");
    // The new secret opens tunnels as before.
    gw.wait_status("/plain/x", &fresh, 200);
    rt.block_on(async {
        let (mut ws, _) = open(&gw, "/ws/live", Some(&fresh)).await.unwrap();
        echoes(&mut ws, "new secret").await;
    });
}

#[test]
fn a_rotation_without_grace_cuts_the_uploads_of_the_old_secret() {
    let (up, gw) = upload_gateway();
    let (id, token) = gw.create_token("cam", "entrance");
    let id = id.to_string();
    upload_is_cut_after(&gw, &up, &token, || {
        gw.cli_json(&["token", "rotate", &id, "--json"]);
    });
}

#[test]
fn the_end_of_a_grace_period_closes_the_tunnels_of_the_old_secret() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[]);
    let (id, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    let id = id.to_string();
    rt.block_on(async {
        let (mut old, _) = open(&gw, "/ws/live", Some(&token)).await.unwrap();
        echoes(&mut old, "before").await;
        let rotated = gw.cli_json(&["token", "rotate", &id, "--grace", "2s", "--json"]);
        let fresh = rotated["token"].as_str().unwrap().to_owned();
        let t = Instant::now();
        // During the grace period the old secret's tunnel works, and so does the new secret's.
        tokio::time::sleep(Duration::from_millis(500)).await;
        echoes(&mut old, "in grace").await;
        let (mut new, _) = open(&gw, "/ws/live", Some(&fresh)).await.unwrap();
        if let Err(e) = ended_within(&mut old, Duration::from_secs(6)).await {
            panic!("the grace period ended and the old secret's {e}");
        }
        let took = t.elapsed();
        eprintln!("rotated with a 2 s grace: the old secret's tunnel closed {took:?} after");
        // The grace ends 2 s after the rotation, counted in whole unix seconds: 1 to 2 s from now.
        assert!(
            took >= Duration::from_millis(500),
            "closed too early: {took:?}"
        );
        assert!(took < Duration::from_secs(3) + CLOSE_BOUND, "{took:?}");
        echoes(&mut new, "new secret").await;
    });
}

#[test]
fn a_role_that_loses_the_routes_scope_under_sighup_closes_the_tunnel() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[]);
    let (_, token) = gw.create_token_with("alice", "camera", &["--role", "camera"]);
    let (_, direct) = gw.create_token_with("bob", "camera", &["--scope", "video:live"]);
    gw.wait_status("/plain/x", &token, 200);
    gw.wait_status("/plain/x", &direct, 200);
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    assert!(config.contains(CAMERA_ROLE), "{config}");
    rt.block_on(async {
        let (mut theirs, _) = open(&gw, "/scoped/live", Some(&direct)).await.unwrap();
        let took = tunnel_closes_after(&gw, "/scoped/live", &token, || {
            std::fs::write(
                gw.config_path(),
                config.replace(CAMERA_ROLE, r#"["telemetry:write"]"#),
            )
            .unwrap();
            gw.sighup();
        })
        .await;
        eprintln!("role edited under SIGHUP: the tunnel closed {took:?} after the signal");
        assert!(took < CLOSE_BOUND, "{took:?}");
        // A token holding the scope itself keeps its tunnel; the role's token is refused anew.
        echoes(&mut theirs, "still mine").await;
        assert_eq!(
            open(&gw, "/scoped/live", Some(&token)).await.unwrap_err(),
            "HTTP 403"
        );
    });
}

/// Groups (issue 30): a tunnel let through by the role of a group the token's user is in closes when
/// the user leaves the group (and another member's tunnel stays); one let through by a group's role
/// closes when the group is deleted.
#[test]
fn leaving_or_deleting_the_group_that_grants_the_scope_closes_the_tunnel() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[]);
    let (_, token) = gw.create_token_with("alice", "camera", &["--scope", "other"]);
    let (bob_id, bob) = gw.create_token_with("bob", "camera", &["--scope", "other"]);
    gw.wait_status("/plain/x", &token, 200);
    let run = |args: &[&str]| {
        let out = gw.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    run(&["group", "create", "apiary-42", "--role", "camera"]);
    run(&["group", "add", "apiary-42", "--user", "alice"]);
    run(&["group", "add", "apiary-42", "--token", &bob_id.to_string()]);
    rt.block_on(async {
        let (mut theirs, _) = open(&gw, "/scoped/live", Some(&bob)).await.unwrap();
        let took = tunnel_closes_after(&gw, "/scoped/live", &token, || {
            run(&["group", "remove", "apiary-42", "--user", "alice"]);
        })
        .await;
        eprintln!("left the group: the tunnel closed {took:?} after the CLI returned");
        assert!(took < CLOSE_BOUND, "{took:?}");
        echoes(&mut theirs, "still a member").await;
        assert_eq!(
            open(&gw, "/scoped/live", Some(&token)).await.unwrap_err(),
            "HTTP 403"
        );
        let took = tunnel_closes_after(&gw, "/scoped/live", &bob, || {
            run(&["group", "delete", "apiary-42"]);
        })
        .await;
        assert!(took < CLOSE_BOUND, "{took:?}");
    });
}

/// A license past its `valid_until` closes a tunnel on a route that requires it, with no write to the
/// store: the re-check asks the clock.
#[test]
fn a_license_that_ends_closes_the_tunnel_without_any_write() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[("required_license", "\"live-video\"")]);
    let (_, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let end =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(now + 3))
            .to_string();
    for args in [
        &[
            "license",
            "create",
            "live-video",
            "--seats",
            "1",
            "--valid-until",
            &end,
        ][..],
        &["license", "assign", "live-video", "--user", "alice"][..],
    ] {
        let out = gw.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    rt.block_on(async {
        let (mut tunnel, _) = open(&gw, "/ws/live", Some(&token)).await.unwrap();
        echoes(&mut tunnel, "licensed").await;
        // Nothing is written from here on.
        if let Err(e) = ended_within(&mut tunnel, Duration::from_secs(8)).await {
            panic!("{e}");
        }
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(after >= now + 3, "closed before the license ended");
        assert_eq!(
            open(&gw, "/ws/live", Some(&token)).await.unwrap_err(),
            "HTTP 403"
        );
    });
}

#[test]
fn a_route_removed_under_sighup_closes_its_tunnels() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = gateway(&ws, &plain, &[]);
    let (_, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    let start = config
        .find("[[routes]]\nname = \"ws\"")
        .expect("the ws route");
    let end = config[start + 1..]
        .find("[[routes]]")
        .map_or(config.len(), |i| start + 1 + i);
    let without = format!("{}{}", &config[..start], &config[end..]);
    rt.block_on(async {
        let (mut other, _) = open(&gw, "/scoped/live", Some(&token)).await.unwrap();
        let took = tunnel_closes_after(&gw, "/ws/live", &token, || {
            std::fs::write(gw.config_path(), &without).unwrap();
            gw.sighup();
        })
        .await;
        eprintln!("route removed under SIGHUP: its tunnel closed {took:?} after the signal");
        assert!(took < CLOSE_BOUND, "{took:?}");
        echoes(&mut other, "other route").await;
        assert_eq!(
            open(&gw, "/ws/live", Some(&token)).await.unwrap_err(),
            "HTTP 404"
        );
    });
}

// ---------------------------------------------------------------------------------------------------------
// Peers that stop reading
// ---------------------------------------------------------------------------------------------------------

/// A WebSocket server that floods every client with 64 KiB binary messages until sending fails;
/// `ended` counts the floods that ended (the gateway closed the tunnel).
fn flood_server(rt: &tokio::runtime::Runtime) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let ended = Arc::new(AtomicUsize::new(0));
    let count = ended.clone();
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await {
                    let chunk = vec![5u8; 64 * 1024];
                    while ws.send(Message::binary(chunk.clone())).await.is_ok() {}
                }
                count.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, ended)
}

fn tunnels_open(gw: &Gateway) -> f64 {
    metric_sum(
        &gw.metrics(),
        "tokengate_websocket_tunnels_open",
        &["route=\"flood\""],
    )
}

/// Opens a tunnel to the flood server and never reads from it; returns the client (kept open) once
/// the flood has stalled (every buffer on the way full).
async fn stalled_tunnel(gw: &Gateway, token: &str) -> Ws {
    let (ws, _) = open(gw, "/flood/x", Some(token)).await.unwrap();
    // The gateway's writes to this client block as soon as the socket buffers are full.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws
}

/// A gateway with the `flood` route (idle timeout 2 s) and a plain route to wait for tokens on.
fn flood_gateway(flood: SocketAddr, plain: &Upstream) -> Gateway {
    GatewayBuilder::new()
        .gateway("sync_interval", "\"50ms\"")
        .route_with(
            "flood",
            "/flood",
            flood,
            &[("websocket", "true"), ("websocket_idle_timeout", "\"2s\"")],
        )
        .route("plain", "/plain", plain.addr())
        .start()
}

#[test]
fn a_client_that_stops_reading_is_still_closed_by_a_revoke() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (flood, ended) = flood_server(&rt);
    let plain = Upstream::start("plain");
    let gw = flood_gateway(flood, &plain);
    let (id, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    rt.block_on(async {
        // A revoke: closed within the sync bound and a tick, whatever the client does.
        let _client = stalled_tunnel(&gw, &token).await;
        assert_eq!(tunnels_open(&gw), 1.0);
        let t = Instant::now();
        gw.revoke(id);
        let closed = poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
            tunnels_open(&gw) == 0.0
        });
        let took = t.elapsed();
        assert!(
            closed,
            "a tunnel whose client does not read stayed open after a revoke"
        );
        eprintln!("a client that stopped reading: its tunnel closed {took:?} after the revoke");
        assert!(took < CLOSE_BOUND, "{took:?}");
        assert!(poll_until(
            Duration::from_secs(5),
            Duration::from_millis(10),
            || ended.load(Ordering::SeqCst) == 1
        ));
    });
}

#[test]
fn a_tunnel_stuck_on_a_client_that_stops_reading_ends_at_its_idle_timeout() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (flood, _) = flood_server(&rt);
    let plain = Upstream::start("plain");
    let gw = flood_gateway(flood, &plain);
    let (_, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    rt.block_on(async {
        // Nothing moves once the writes are stuck: the tunnel ends at the idle timeout (2 s).
        let t = Instant::now();
        let _client = stalled_tunnel(&gw, &token).await;
        let closed = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
            tunnels_open(&gw) == 0.0
        });
        let took = t.elapsed();
        assert!(closed, "a stuck tunnel outlived its idle timeout");
        eprintln!("a stuck tunnel (websocket_idle_timeout 2 s) closed {took:?} after it opened");
        assert!(took >= Duration::from_secs(2), "{took:?}");
    });
}

#[test]
fn an_upload_to_an_upstream_that_stops_reading_is_still_cut_by_a_revoke() {
    // An upstream that accepts and never reads: the gateway's writes of the body get stuck.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let plain = Upstream::start("plain");
    let gw = GatewayBuilder::new()
        .gateway("sync_interval", "\"50ms\"")
        .route_with("video", "/video", addr, &[("write_timeout", "\"60s\"")])
        .route("plain", "/plain", plain.addr())
        .start();
    let (id, token) = gw.create_token("cam", "entrance");
    gw.wait_status("/plain/x", &token, 200);
    let mut conn = std::net::TcpStream::connect(gw.addr()).unwrap();
    conn.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "POST /video/clip HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        1u64 << 34
    )
    .unwrap();
    // Send until nothing more is taken: the upstream's buffers and the gateway's are full.
    let chunk = vec![b'v'; 64 * 1024];
    let t = Instant::now();
    while conn.write_all(&chunk).is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the upload never stalled"
        );
    }
    let t = Instant::now();
    gw.revoke(id);
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut conn, &mut answer);
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&answer);
    eprintln!("a stuck upload: answered {took:?} after the revoke");
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(took < CLOSE_BOUND + Duration::from_secs(1), "{took:?}");
}

// ---------------------------------------------------------------------------------------------------------
// The opening handshake
// ---------------------------------------------------------------------------------------------------------

/// How a raw upstream answers an upgrade.
#[derive(Clone, Copy, Debug)]
enum Accept {
    /// The accept value of the client's key.
    Right,
    /// Some other value.
    Wrong,
    /// No `Sec-WebSocket-Accept` at all.
    Missing,
}

/// A TCP upstream that answers any request head with a 101 (accept as `how`) and then records every
/// byte it receives.
fn raw_101_upstream(how: Accept) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let after = Arc::new(Mutex::new(Vec::new()));
    let seen = after.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match std::io::Read::read(&mut s, &mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let key = text.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| value.trim().to_owned())
                });
                let accept = match (how, key) {
                    (Accept::Right, Some(k)) => format!(
                        "Sec-WebSocket-Accept: {}\r\n",
                        tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes())
                    ),
                    (Accept::Right, None) | (Accept::Wrong, _) => {
                        "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n".to_owned()
                    }
                    (Accept::Missing, _) => String::new(),
                };
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}\r\n"
                );
                if s.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, after)
}

/// The status line of the response on `conn` (its head read to the end).
fn read_head(conn: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match std::io::Read::read(conn, &mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn a_101_without_the_right_accept_is_a_502_and_no_tunnel() {
    let plain = Upstream::start("plain");
    let upstreams = [
        ("right", raw_101_upstream(Accept::Right)),
        ("wrong", raw_101_upstream(Accept::Wrong)),
        ("missing", raw_101_upstream(Accept::Missing)),
    ];
    let mut builder = GatewayBuilder::new().route("plain", "/plain", plain.addr());
    for (name, (addr, _)) in &upstreams {
        builder = builder.route_with(name, &format!("/{name}"), *addr, &[("websocket", "true")]);
    }
    let gw = builder.start();
    let (_, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    let smuggled = b"GET /right/admin HTTP/1.1\r\nHost: gw\r\nX-User-Id: admin\r\n\r\n";
    let upgrade = |path: &str, key: Option<&str>| {
        let key = key.map_or(String::new(), |k| format!("Sec-WebSocket-Key: {k}\r\n"));
        format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"
        )
    };
    let attempt = |path: &str, key: Option<&str>| {
        let mut conn = std::net::TcpStream::connect(gw.addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(upgrade(path, key).as_bytes()).unwrap();
        let head = read_head(&mut conn);
        // Raw bytes after the answer: relayed as they are only in a tunnel.
        let _ = conn.write_all(smuggled);
        (conn, head)
    };
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    // The control: the right accept opens a tunnel, and bytes go through it raw.
    let (_conn, head) = attempt("/right/x", Some(key));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let relayed = &upstreams[0].1 .1;
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || relayed.lock().unwrap().ends_with(smuggled)
    ));
    // A wrong or missing accept, or a client without a (valid) key: 502, closed, nothing relayed.
    for (path, key, after) in [
        ("/wrong/x", Some(key), &upstreams[1].1 .1),
        ("/missing/x", Some(key), &upstreams[2].1 .1),
        ("/right/x", None, relayed),
        ("/right/x", Some("too-short"), relayed),
    ] {
        let before = after.lock().unwrap().len();
        let (mut conn, head) = attempt(path, key);
        assert!(head.starts_with("HTTP/1.1 502"), "{path} {key:?}: {head}");
        // The answer's body, then the end of the connection: no second answer, no tunnel.
        let mut rest = Vec::new();
        let end = std::io::Read::read_to_end(&mut conn, &mut rest);
        assert!(
            !matches!(&end, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "{path} {key:?}: the connection stayed open"
        );
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.starts_with("{\"") && !rest.contains("HTTP/1.1"),
            "{path} {key:?}: the connection carried on: {rest}"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            after.lock().unwrap().len(),
            before,
            "{path} {key:?}: bytes after the answer reached the upstream"
        );
    }
}

#[test]
fn a_tunnel_over_tls_relays_large_messages_and_closes_on_a_revoke() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = GatewayBuilder::new()
        .gateway("sync_interval", "\"50ms\"")
        .tls()
        .route_with("ws", "/ws", ws.addr, &[("websocket", "true")])
        .route("plain", "/plain", plain.addr())
        .start();
    let (id, token) = gw.create_token("alice", "camera");
    gw.wait_status("/plain/x", &token, 200);
    let config = gw.tls_client(&tls::ClientOptions::default());
    rt.block_on(async {
        let tcp = TcpStream::connect(gw.tls_addr()).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let mut req = format!("wss://localhost:{}/ws/live", gw.tls_addr().port())
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", bearer(&token).parse().unwrap());
        let (mut client, response) = tokio_tungstenite::client_async(req, stream).await.unwrap();
        assert_eq!(response.status().as_u16(), 101);
        // Large messages both ways: records split, flushed and reassembled across the relay.
        for size in [1, 70_000, 1_000_000] {
            let big = vec![(size % 251) as u8; size];
            client.send(Message::binary(big.clone())).await.unwrap();
            assert_eq!(client.next().await.unwrap().unwrap(), Message::binary(big));
        }
        let t = Instant::now();
        gw.revoke(id);
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match client.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "the TLS tunnel of a revoked token stayed open"
        );
        eprintln!("TLS tunnel closed {:?} after the revoke", t.elapsed());
    });
}

#[test]
fn open_tunnels_count_against_the_token_s_in_flight_slots() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let plain = Upstream::start("plain");
    let gw = GatewayBuilder::new()
        .gateway("max_in_flight_per_token", "2")
        .route_with("ws", "/ws", ws.addr, &[("websocket", "true")])
        .route("plain", "/plain", plain.addr())
        .start();
    let (_, token) = gw.create_token("alice", "camera");
    let (_, other) = gw.create_token("bob", "camera");
    gw.wait_status("/plain/x", &token, 200);
    rt.block_on(async {
        // Two tunnels hold both of the token's slots, for as long as they are open.
        let (mut first, _) = open(&gw, "/ws/a", Some(&token)).await.unwrap();
        let (second, _) = open(&gw, "/ws/b", Some(&token)).await.unwrap();
        assert_eq!(
            open(&gw, "/ws/c", Some(&token)).await.err().as_deref(),
            Some("HTTP 429"),
            "a third tunnel"
        );
        let r = gw.get_with_token("/plain/x", &token);
        assert_eq!(r.status, 429, "{r}");
        assert_eq!(r.json_error(), "concurrency_limited", "{r}");
        // Another token is not held up.
        assert_eq!(gw.get_with_token("/plain/x", &other).status, 200);
        first.send(Message::text("ping")).await.unwrap();
        assert_eq!(
            first.next().await.unwrap().unwrap(),
            Message::text("echo:ping")
        );
        // A tunnel that ends gives its slot back.
        drop(second);
        let mut status = 0;
        poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            status = gw.get_with_token("/plain/x", &token).status;
            status == 200
        });
        assert_eq!(status, 200);
    });
}

#[test]
fn a_token_reported_leaked_by_a_signed_report_closes_its_open_tunnel() {
    use common::leaks::{report_match, send_signed, start_with_keys, with_leaks, Signer};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_server(&rt);
    let github = Signer::new("key-1");
    let gw = start_with_keys(
        with_leaks(
            GatewayBuilder::new()
                .gateway("sync_interval", "\"50ms\"")
                .route_with("ws", "/ws", ws.addr, &[("websocket", "true")]),
            &[],
        ),
        &[&github],
    );
    let (_, token) = gw.create_token("alice", "camera");
    let (_, other) = gw.create_token("bob", "camera");
    rt.block_on(async {
        // Wait until the gateway knows both tokens.
        let deadline = Instant::now() + Duration::from_secs(10);
        while open(&gw, "/ws/live", Some(&other)).await.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (mut theirs, _) = open(&gw, "/ws/live", Some(&other)).await.unwrap();
        let body = serde_json::to_vec(&vec![report_match(&token)]).unwrap();
        let took = tunnel_closes_after(&gw, "/ws/live", &token, || {
            let r = send_signed(gw.addr(), &github, &body);
            assert_eq!(r.status, 200, "{r}");
        })
        .await;
        assert!(took < CLOSE_BOUND, "{took:?}");
        // A new tunnel is refused; someone else's is untouched.
        assert_eq!(
            open(&gw, "/ws/live", Some(&token)).await.err().as_deref(),
            Some("HTTP 401")
        );
        echoes(&mut theirs, "still here").await;
    });
}
