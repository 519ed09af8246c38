//! WebSocket tunnels with real WebSocket peers (tokio-tungstenite client and server), revocation that
//! reaches open tunnels and streaming uploads, and request ids / trace headers — over real sockets.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::io::Write;
use std::net::SocketAddr;
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

fn gateway(ws: &WsServer, plain: &Upstream, more: &[(&str, &str)]) -> Gateway {
    let mut keys = vec![("websocket", "true")];
    keys.extend_from_slice(more);
    GatewayBuilder::new()
        .gateway("sync_interval", "\"50ms\"")
        .section("log", "access", "\"plain\"")
        .section("log", "access_path", "\"access.log\"")
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
    let up = Upstream::start("upload");
    let gw = GatewayBuilder::new()
        .gateway("sync_interval", "\"50ms\"")
        .route("video", "/video", up.addr())
        .start();
    let (id, token) = gw.create_token("cam", "entrance");
    gw.wait_status("/video/x", &token, 200);
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
    let out = gw.cli(&["token", "revoke", &id.to_string()]);
    assert!(out.status.success());
    // Keep sending until the gateway stops taking the body.
    let t = Instant::now();
    while conn.write_all(&chunk).is_ok() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut conn, &mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.starts_with("HTTP/1.1 2"),
        "the revoked upload got a success answer: {text}"
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
