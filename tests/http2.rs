//! HTTP/2 at the edge, against the real binary and real upstreams: ALPN `h2` on the TLS listener and
//! prior-knowledge h2c on the plain one, each stream through the same decision as an HTTP/1.1
//! request (credential rules, stripping, identity, path spelling, revocation of an open upload), and
//! hostile peers speaking raw frames (rapid reset, CONTINUATION flood, HPACK bomb, SETTINGS and PING
//! floods, too many streams, idle and silent connections).

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, StatusCode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------------
// A real HTTP/2 client (the h2 crate) over TLS with ALPN, or h2c.
// ------------------------------------------------------------------------------------------------

type Send2 = h2::client::SendRequest<Bytes>;

/// An HTTP/2 connection over TLS to the gateway's TLS listener, offering `h2` and `http/1.1`.
async fn h2_tls(gw: &Gateway) -> Send2 {
    h2_tls_as(gw, &tls::ClientOptions::default()).await
}

/// [`h2_tls`] presenting what `options` say (a device certificate).
async fn h2_tls_as(gw: &Gateway, options: &tls::ClientOptions) -> Send2 {
    let mut config = (*gw.tls_client(options)).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.tls_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "h2 negotiated"
    );
    handshake(stream).await
}

/// An h2c (prior knowledge) connection to `addr`.
async fn h2c(addr: SocketAddr) -> Send2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    handshake(tcp).await
}

async fn handshake<T>(io: T) -> Send2
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.expect("ready")
}

/// A response, its body read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

async fn send(send: &mut Send2, req: Request<()>, body: Option<Vec<u8>>) -> Answer {
    let mut s = send.clone().ready().await.expect("ready");
    let end = body.is_none();
    let (resp, mut stream) = s.send_request(req, end).expect("send request");
    if let Some(b) = body {
        stream.send_data(b.into(), true).expect("send body");
    }
    let resp = resp.await.expect("response");
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        body.flow_control().release_capacity(chunk.len()).unwrap();
        out.extend_from_slice(&chunk);
    }
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: out,
    }
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// A TLS gateway with a bearer route `/iot` and a public route `/pub`, and a token for alice.
fn bed() -> (Gateway, Upstream, String) {
    let up = Upstream::start("iot");
    let mut gw = GatewayBuilder::new()
        .tls()
        .gateway("h2c", "true")
        .route("iot", "/iot", up.addr())
        .route_with("pub", "/pub", up.addr(), &[("auth", "\"none\"")])
        .build();
    let (_, token) = gw.create_token("alice", "device");
    gw.start();
    gw.wait_ok("/iot/warm", &token);
    (gw, up, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_stream_passes_with_the_identity_and_without_the_credential() {
    let (gw, up, token) = bed();
    let mut c = h2_tls(&gw).await;
    let a = send(
        &mut c,
        get(
            "https://localhost/iot/data?x=1",
            &[
                ("authorization", &bearer(&token)),
                ("x-user-id", "mallory"),
                ("x_user_id", "mallory"),
                ("x-token-scopes", "admin"),
            ],
        ),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
    let seen = up.last();
    assert_eq!(seen.uri, "/iot/data?x=1");
    assert_eq!(seen.single_header("x-user-id"), "alice");
    assert!(
        seen.header_values("authorization").is_empty(),
        "credential forwarded"
    );
    assert_eq!(seen.header_values("x-user-id"), vec!["alice"]);
    assert_eq!(seen.single_header("host"), "localhost");
    assert_eq!(seen.single_header("x-forwarded-proto"), "https");
    assert!(a.headers.get("x-request-id").is_some());
    assert!(a.headers.get("connection").is_none());
    // Many streams on one connection, at once.
    let mut all = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        let token = token.clone();
        all.push(tokio::spawn(async move {
            let a = send(
                &mut c,
                get(
                    &format!("https://localhost/iot/n{i}"),
                    &[("authorization", &bearer(&token))],
                ),
                None,
            )
            .await;
            a.status
        }));
    }
    for t in all {
        assert_eq!(t.await.unwrap(), 200);
    }
    let m = gw.metrics();
    assert!(
        metric_sum(
            &m,
            "tokengate_protocol_requests_total",
            &["protocol=\"h2\""]
        ) >= 21.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_refused_as_http1_requests_are() {
    let (gw, up, token) = bed();
    let before = up.hits();
    let mut c = h2_tls(&gw).await;
    // No credential, a bad one: 401 with the challenge.
    for headers in [
        vec![],
        vec![("authorization", "Bearer tg_not_a_real_token")],
    ] {
        let a = send(&mut c, get("https://localhost/iot/x", &headers), None).await;
        assert_eq!(a.status, 401, "{headers:?}");
        assert!(
            a.headers
                .get("www-authenticate")
                .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
            "{:?}",
            a.headers
        );
    }
    // Two authorization fields: 400, even when both are the valid token.
    let mut req = get("https://localhost/iot/x", &[]);
    for _ in 0..2 {
        req.headers_mut()
            .append("authorization", bearer(&token).parse().unwrap());
    }
    let a = send(&mut c, req, None).await;
    assert_eq!(a.status, 400);
    // A host that differs from :authority: 400.
    let a = send(
        &mut c,
        get(
            "https://localhost/iot/x",
            &[("authorization", &bearer(&token)), ("host", "elsewhere")],
        ),
        None,
    )
    .await;
    assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
    // A percent-encoded letter never crosses a route boundary (the HTTP/1.1 normalisation).
    for p in ["/%69ot/x", "/i%6Ft/x", "/pub%2F../iot/x"] {
        let a = send(&mut c, get(&format!("https://localhost{p}"), &[]), None).await;
        assert!(a.status == 400 || a.status == 404, "{p}: {}", a.status);
    }
    assert_eq!(up.hits(), before, "a refused stream reached the upstream");
    // The connection is still good after all of that.
    let a = send(
        &mut c,
        get(
            "https://localhost/iot/x",
            &[("authorization", &bearer(&token))],
        ),
        None,
    )
    .await;
    assert_eq!(a.status, 200);
}

/// curl, a real client: `--http2` negotiates h2 by ALPN on the TLS listener and `--http2-prior-knowledge`
/// speaks h2c on the plain one; both get the upstream's answer with the identity injected and the
/// credential gone, and a 401 with its challenge without a token.
#[test]
fn curl_speaks_http2_over_tls_and_h2c() {
    let (gw, up, token) = bed();
    let ca = gw.dir().join("curl-ca.pem");
    std::fs::write(&ca, &gw.pki().ca_pem).unwrap();
    let port = gw.tls_addr().port();
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-D",
                "-",
                "-w",
                "\n%{http_version} %{http_code}",
            ])
            .args(args)
            .output()
            .expect("run curl (apt-get install curl)");
        assert!(out.status.success(), "curl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tls_url = format!("https://localhost:{port}/iot/curl");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let tls_args = [
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
    ];
    let h2c_url = format!("http://{}/iot/curl-h2c", gw.addr());
    let auth = format!("Authorization: Bearer {token}");
    for (what, args) in [
        (
            "TLS + ALPN",
            [&tls_args[..], &["-H", &auth, &tls_url]].concat(),
        ),
        (
            "h2c",
            vec!["--http2-prior-knowledge", "-H", &auth, &h2c_url],
        ),
    ] {
        let before = up.hits();
        let text = curl(&args);
        assert!(text.ends_with("\n2 200"), "{what}: {text}");
        assert!(text.starts_with("HTTP/2 200"), "{what}: {text}");
        assert_eq!(up.hits(), before + 1, "{what}");
        let seen = up.last();
        assert_eq!(seen.single_header("x-user-id"), "alice", "{what}");
        assert!(seen.header_values("authorization").is_empty(), "{what}");
    }
    let text = curl(&[&tls_args[..], &[tls_url.as_str()]].concat());
    assert!(text.ends_with("\n2 401"), "{text}");
    assert!(
        text.contains("www-authenticate: Bearer realm=\"tokengate\""),
        "{text}"
    );
}

/// h2load (nghttp2), the load generator the benchmarks use: 20,000 requests on 4 TLS connections × 6
/// streams each (one token: 24 in flight, under `max_in_flight_per_token`'s 32), every one answered 2xx
/// by way of the upstream, none failed or errored.
#[test]
fn h2load_load_is_answered_without_an_error() {
    let (gw, up, token) = bed();
    let before = up.hits();
    let out = std::process::Command::new("h2load")
        .args(["-n", "20000", "-c", "4", "-m", "6", "-t", "1"])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .arg(format!(
            "https://127.0.0.1:{}/iot/load",
            gw.tls_addr().port()
        ))
        .output()
        .expect("run h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    assert!(out.status.success(), "h2load: {out:?}");
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(
        text.contains("20000 done, 20000 succeeded, 0 failed, 0 errored, 0 timeout"),
        "{text}"
    );
    assert!(text.contains("status codes: 20000 2xx"), "{text}");
    assert_eq!(
        up.hits() - before,
        20000,
        "every stream reached the upstream once"
    );
}

#[test]
fn an_http1_only_alpn_never_negotiates_h2() {
    let up = Upstream::start("iot");
    let mut gw = GatewayBuilder::new()
        .tls_key("alpn", "[\"http/1.1\"]")
        .route("iot", "/iot", up.addr())
        .build();
    gw.start();
    let mut config = (*gw.tls_client(&tls::ClientOptions::default())).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut s = tls::connect(gw.tls_addr(), &Arc::new(config.clone()), "localhost").unwrap();
    s.write_all(b"GET /iot/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(&buf, b"HTTP/1.1 401");
    // A client that offers only h2 gets no connection at all.
    config.alpn_protocols = vec![b"h2".to_vec()];
    assert!(tls::connect(gw.tls_addr(), &Arc::new(config), "localhost").is_err());
}

#[test]
fn bad_http2_settings_are_config_errors_naming_the_key() {
    let up = Upstream::start("iot");
    for (tls, key, value, says) in [
        (true, "alpn", "[\"h3\"]", "tls.alpn"),
        (true, "alpn", "[]", "tls.alpn"),
        (true, "alpn", "[\"h2\", \"h2\"]", "tls.alpn"),
        (
            false,
            "h2_max_concurrent_streams",
            "0",
            "gateway.h2_max_concurrent_streams",
        ),
        (
            false,
            "h2_max_concurrent_streams",
            "5000",
            "gateway.h2_max_concurrent_streams",
        ),
        (false, "send_timeout", "\"0s\"", "gateway.send_timeout"),
        (false, "send_timeout", "\"2h\"", "gateway.send_timeout"),
        (false, "send_timeout", "\"soon\"", "gateway.send_timeout"),
    ] {
        let b = GatewayBuilder::new().route("iot", "/iot", up.addr());
        let b = if tls {
            b.tls_key(key, value)
        } else {
            b.gateway(key, value)
        };
        let out = b.build().cli(&["check-config"]);
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{key} = {value} accepted: {text}");
        assert!(text.contains(says), "{key} = {value}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_prior_knowledge_only_and_off_by_default() {
    let (gw, up, token) = bed();
    let mut c = h2c(gw.addr()).await;
    let a = send(
        &mut c,
        get(
            "http://localhost/iot/x",
            &[("authorization", &bearer(&token))],
        ),
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(up.last().single_header("x-forwarded-proto"), "http");
    // HTTP/1.1 on the same listener still works (the sniffed bytes are handed back).
    assert_eq!(gw.get_with_token("/iot/x", &token).status, 200);
    // Off (the default): the preface is an HTTP/1.1 request the gateway refuses.
    let off = Upstream::start("off");
    let mut plain = GatewayBuilder::new()
        .route("iot", "/iot", off.addr())
        .build();
    plain.start();
    let mut tcp = TcpStream::connect(plain.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(PREFACE).unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    assert!(
        got.starts_with(b"HTTP/1.1 4") || got.starts_with(b"HTTP/1.1 5"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(off.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_upload_streams_beside_small_requests_in_bounded_memory() {
    let (gw, up, token) = bed();
    let c = h2_tls(&gw).await;
    const TOTAL: u64 = 1024 * 1024 * 1024;
    let upload = {
        let mut c = c.clone().ready().await.unwrap();
        let token = token.clone();
        tokio::spawn(async move {
            let req = Request::post("https://localhost/iot/upload")
                .header("authorization", bearer(&token))
                .body(())
                .unwrap();
            let (resp, mut stream) = c.send_request(req, false).unwrap();
            for chunk in pattern_chunks(TOTAL) {
                let mut chunk = chunk;
                while !chunk.is_empty() {
                    stream.reserve_capacity(chunk.len());
                    let cap = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                        .await
                        .unwrap()
                        .unwrap();
                    let piece = chunk.split_to(cap.min(chunk.len()));
                    stream.send_data(piece, false).unwrap();
                }
            }
            stream.send_data(Bytes::new(), true).unwrap();
            resp.await.unwrap().status()
        })
    };
    // Small requests on the same connection while the upload runs.
    let mut c2 = c.clone();
    for i in 0..20 {
        let a = send(
            &mut c2,
            get(
                &format!("https://localhost/iot/small{i}"),
                &[("authorization", &bearer(&token))],
            ),
            None,
        )
        .await;
        assert_eq!(a.status, 200);
    }
    assert_eq!(upload.await.unwrap(), 200);
    let seen = up
        .requests()
        .into_iter()
        .find(|r| r.uri == "/iot/upload")
        .expect("the upload reached the upstream");
    assert_eq!(seen.body_len, TOTAL);
    assert_eq!(seen.body_crc, pattern_crc(TOTAL));
    assert_eq!(seen.single_header("transfer-encoding"), "chunked");
    // The stream's window is 256 KiB and the connection's 1 MiB: what is buffered is bounded by them,
    // not by the body (the same 200 MiB bound as the HTTP/1.1 streaming tests, which a copy of the
    // body would pass five times over).
    let hwm = gw.vm_hwm_kib();
    eprintln!("1 GiB HTTP/2 upload: gateway VmHWM {} MiB", hwm / 1024);
    assert!(hwm < 200 * 1024, "gateway peak RSS {} MiB", hwm / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_cuts_its_open_upload() {
    let (gw, up, _) = bed();
    let (id, token) = gw.create_token("bob", "camera");
    gw.wait_ok("/iot/warm", &token);
    let mut c = h2_tls(&gw).await.ready().await.unwrap();
    let req = Request::post("https://localhost/iot/video")
        .header("authorization", bearer(&token))
        .header("content-length", "100000000")
        .body(())
        .unwrap();
    let (resp, mut stream) = c.send_request(req, false).unwrap();
    stream
        .send_data(Bytes::from(vec![7u8; 64 * 1024]), false)
        .unwrap();
    assert!(up.wait_hits(up.hits() + 1, Duration::from_secs(10)) || up.hits() > 0);
    gw.revoke(id);
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer within 10 s of the revoke");
    // The answer comes first, whole; the reset (NO_ERROR) follows it (an explicit reset sent at once
    // used to drop the queued answer, and the client saw only the reset).
    let r = resp.expect("the 401 before the reset");
    assert_eq!(r.status(), 401, "{r:?}");
    // The stream is cut: the client cannot go on sending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let more = stream.send_data(Bytes::from(vec![7u8; 1024]), false);
    let reset = std::future::poll_fn(|cx| stream.poll_reset(cx));
    let reset = tokio::time::timeout(Duration::from_secs(5), reset).await;
    assert!(
        more.is_err() || reset.is_ok(),
        "the upload stream is still open"
    );
    assert!(
        !up.requests().iter().any(|r| r.uri == "/iot/video"),
        "the upstream saw a complete request"
    );
}

// ------------------------------------------------------------------------------------------------
// Raw frames: what a hostile peer sends.
// ------------------------------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, the first byte's other bits `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal field without indexing, new name, no Huffman.
fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// The header block of `GET path` plus `extra` fields.
fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", method.as_bytes());
    literal(&mut b, ":scheme", b"http");
    literal(&mut b, ":path", path.as_bytes());
    literal(&mut b, ":authority", b"localhost");
    for (k, v) in extra {
        literal(&mut b, k, v.as_bytes());
    }
    b
}

struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A frame the gateway sent.
#[derive(Debug)]
struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Raw {
    /// An h2c connection: the preface and an empty SETTINGS sent.
    fn open(addr: SocketAddr) -> Raw {
        Self::open_with(addr, &[])
    }

    fn open_with(addr: SocketAddr, settings: &[(u16, u32)]) -> Raw {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let mut s = Vec::new();
        for (id, v) in settings {
            s.extend_from_slice(&id.to_be_bytes());
            s.extend_from_slice(&v.to_be_bytes());
        }
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &s));
        raw.send(&hello).unwrap();
        raw
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes)
    }

    /// The next frame; `None` when the connection closed (or nothing came in 10 s).
    fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (self.buf[0] as usize) << 16
                    | (self.buf[1] as usize) << 8
                    | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        ty: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    if f.ty == SETTINGS && f.flags & 1 == 0 {
                        let _ = self.send(&frame(SETTINGS, 1, 0, &[]));
                    }
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 16384];
            match self.tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Frames until one matches `want` (returned) or the connection ends (`None`).
    fn until(&mut self, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
        while let Some(f) = self.next() {
            if want(&f) {
                return Some(f);
            }
        }
        None
    }

    /// The status of the response HEADERS on `stream` (the block's first byte: an indexed `:status`
    /// of the static table, 8 = 200 ... 14 = 500), or the reset / GOAWAY that came instead.
    fn outcome(&mut self, stream: u32) -> Outcome {
        match self.until(|f| {
            (f.stream == stream && (f.ty == HEADERS || f.ty == RST_STREAM)) || f.ty == GOAWAY
        }) {
            None => Outcome::Closed,
            Some(f) if f.ty == RST_STREAM => {
                Outcome::Reset(u32::from_be_bytes(f.payload[..4].try_into().unwrap()))
            }
            Some(f) if f.ty == GOAWAY => {
                Outcome::GoAway(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()))
            }
            Some(f) => Outcome::Headers(status_of(&f.payload)),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Headers(u16),
    Reset(u32),
    GoAway(u32),
    Closed,
}

/// The `:status` of a response header block the gateway encoded (h2 sends `:status` first, indexed
/// for the static table's statuses, else as a literal with indexed name 8).
fn status_of(block: &[u8]) -> u16 {
    match block[0] {
        0x88 => 200,
        0x89 => 204,
        0x8a => 206,
        0x8b => 304,
        0x8c => 400,
        0x8d => 404,
        0x8e => 500,
        // Literal with name index 8 (:status), then the value: 3 ASCII digits, or Huffman-coded (the
        // length byte's high bit) when that is shorter.
        _ => {
            let len = block[1];
            let value = &block[2..2 + (len & 0x7f) as usize];
            if len & 0x80 == 0 {
                std::str::from_utf8(value).unwrap().parse().unwrap()
            } else {
                huffman_digits(value)
            }
        }
    }
}

/// Decodes a Huffman-coded (RFC 7541 Appendix B) string of decimal digits: '0'-'2' are 5-bit codes
/// 00000-00010, '3'-'9' 6-bit codes 011001-011111.
fn huffman_digits(bytes: &[u8]) -> u16 {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let (mut at, mut n) = (0, 0u16);
    while at + 5 <= bits.len() {
        let five = bits[at..at + 5].iter().fold(0, |v, b| v << 1 | b);
        if five <= 2 {
            n = n * 10 + five as u16;
            at += 5;
        } else if at + 6 <= bits.len() && (25..=31).contains(&(five << 1 | bits[at + 5])) {
            n = n * 10 + (five << 1 | bits[at + 5]) as u16 - 22;
            at += 6;
        } else {
            break; // the EOS padding (all ones)
        }
    }
    n
}

fn h2c_bed(extra: &[(&str, &str)]) -> (Gateway, Upstream, String) {
    let up = Upstream::start("iot");
    let mut b = GatewayBuilder::new()
        .gateway("h2c", "true")
        .route("iot", "/iot", up.addr())
        .route_with("pub", "/pub", up.addr(), &[("auth", "\"none\"")]);
    for (k, v) in extra {
        b = b.gateway(k, v);
    }
    let mut gw = b.build();
    let (_, token) = gw.create_token("alice", "device");
    gw.start();
    gw.wait_ok("/iot/warm", &token);
    (gw, up, token)
}

/// A client that holds a response stream's window at zero (SETTINGS_INITIAL_WINDOW_SIZE 0, never a
/// WINDOW_UPDATE) loses that stream after `send_timeout`, and only that stream: the connection answers on.
#[test]
fn a_response_stream_held_at_a_zero_window_is_reset_after_send_timeout() {
    let (gw, _up, token) = h2c_bed(&[("send_timeout", "\"2s\"")]);
    let auth = bearer(&token);
    let mut raw = Raw::open_with(gw.addr(), &[(4, 0)]);
    let block = request_block(
        "GET",
        "/iot/video.bin",
        &[("authorization", &auth), (DOWNLOAD_HEADER, "1048576")],
    );
    let started = Instant::now();
    raw.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        .unwrap();
    assert_eq!(raw.outcome(1), Outcome::Headers(200));
    let f = raw
        .until(|f| f.stream == 1 && (f.ty == RST_STREAM || f.ty == DATA))
        .expect("a reset within 10 s");
    let waited = started.elapsed();
    eprintln!("a zero window held: the stream was reset after {waited:?} (send_timeout 2s)");
    assert_eq!(f.ty, RST_STREAM, "no DATA may pass a zero window: {f:?}");
    assert_eq!(
        u32::from_be_bytes(f.payload[..4].try_into().unwrap()),
        8,
        "CANCEL"
    );
    assert!(
        waited >= Duration::from_millis(1900),
        "reset before send_timeout: {waited:?}"
    );
    // The connection carries on.
    raw.send(&frame(PING, 0, 0, b"stillup!")).unwrap();
    let ack = raw.until(|f| f.ty == PING).expect("a PING answer");
    assert_eq!(
        (ack.flags & 1, ack.payload.as_slice()),
        (1, &b"stillup!"[..])
    );
}

/// A refused stream (no token) whose client holds the window at zero and keeps its request open: the
/// answer's body cannot go, and the stream is not kept for it: after `send_timeout` it is reset, so a
/// client cannot pin refused streams (and their slots among `h2_max_concurrent_streams`) for ever.
#[test]
fn a_refused_stream_held_at_a_zero_window_is_reset_after_send_timeout() {
    let (gw, _up, _token) = h2c_bed(&[
        ("send_timeout", "\"2s\""),
        ("h2_max_concurrent_streams", "1"),
    ]);
    let mut raw = Raw::open_with(gw.addr(), &[(4, 0)]);
    let started = Instant::now();
    raw.send(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("POST", "/iot/upload", &[]),
    ))
    .unwrap();
    raw.send(&frame(DATA, 0, 1, b"some of the body")).unwrap();
    assert_eq!(raw.outcome(1), Outcome::Headers(401));
    let f = raw
        .until(|f| f.stream == 1 && f.ty == RST_STREAM)
        .expect("a reset within 10 s");
    let waited = started.elapsed();
    eprintln!("a refused stream at a zero window: reset after {waited:?} (send_timeout 2s)");
    assert_eq!(
        u32::from_be_bytes(f.payload[..4].try_into().unwrap()),
        8,
        "CANCEL"
    );
    assert!(waited >= Duration::from_millis(1900), "{waited:?}");
    // Its slot is free again: the one stream this connection may have is answered.
    raw.send(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        3,
        &request_block("GET", "/pub/next", &[]),
    ))
    .unwrap();
    assert_eq!(raw.outcome(3), Outcome::Headers(200));
}

#[test]
fn malformed_streams_are_refused_and_the_connection_carries_on() {
    let (gw, up, token) = h2c_bed(&[]);
    let auth = bearer(&token);
    let before = up.hits();
    let mut c = Raw::open(gw.addr());
    let mut id = 1;
    let mut ask = |c: &mut Raw, block: Vec<u8>, flags: u8| {
        let sid = id;
        id += 2;
        c.send(&frame(HEADERS, flags, sid, &block)).unwrap();
        c.outcome(sid)
    };
    for field in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    ] {
        let o = ask(
            &mut c,
            request_block("GET", "/iot/x", &[("authorization", &auth), (field, "x")]),
            END_STREAM | END_HEADERS,
        );
        assert!(
            matches!(o, Outcome::Reset(_) | Outcome::Headers(400)),
            "{field}: {o:?}"
        );
    }
    let o = ask(
        &mut c,
        request_block("GET", "/iot/x", &[("authorization", &auth), ("te", "gzip")]),
        END_STREAM | END_HEADERS,
    );
    assert!(
        matches!(o, Outcome::Reset(_) | Outcome::Headers(400)),
        "te: {o:?}"
    );
    let o = ask(
        &mut c,
        request_block("GET", "/iot/x", &[("Authorization", &auth)]),
        END_STREAM | END_HEADERS,
    );
    assert!(
        matches!(
            o,
            Outcome::Reset(_) | Outcome::Headers(400) | Outcome::GoAway(_) | Outcome::Closed
        ),
        "uppercase: {o:?}"
    );
    // A fresh connection for the rest (an uppercase name may cost the connection).
    let mut c = Raw::open(gw.addr());
    let mut id = 1;
    let mut ask = |c: &mut Raw, block: Vec<u8>, flags: u8| {
        let sid = id;
        id += 2;
        c.send(&frame(HEADERS, flags, sid, &block)).unwrap();
        (sid, c.outcome(sid))
    };
    let (_, o) = ask(
        &mut c,
        request_block(
            "GET",
            "/iot/x",
            &[("authorization", &auth), ("host", "other")],
        ),
        END_STREAM | END_HEADERS,
    );
    assert_eq!(o, Outcome::Headers(400), "host vs :authority");
    let (_, o) = ask(
        &mut c,
        request_block("GET", "iot/x", &[("authorization", &auth)]),
        END_STREAM | END_HEADERS,
    );
    assert!(
        matches!(o, Outcome::Headers(400) | Outcome::Reset(_)),
        "relative :path: {o:?}"
    );
    let (_, o) = ask(
        &mut c,
        request_block("GET", "http://evil/iot/x", &[("authorization", &auth)]),
        END_STREAM | END_HEADERS,
    );
    assert!(
        matches!(o, Outcome::Headers(400) | Outcome::Reset(_)),
        "absolute :path: {o:?}"
    );
    // A content-length the DATA does not match: the stream is reset, nothing complete goes upstream.
    let block = request_block(
        "POST",
        "/iot/cl",
        &[("authorization", &auth), ("content-length", "10")],
    );
    c.send(&frame(HEADERS, END_HEADERS, id, &block)).unwrap();
    c.send(&frame(DATA, END_STREAM, id, b"12345")).unwrap();
    let o = c.outcome(id);
    assert!(matches!(o, Outcome::Reset(_)), "short body: {o:?}");
    id += 2;
    // The connection still serves.
    let block = request_block("GET", "/iot/ok", &[("authorization", &auth)]);
    c.send(&frame(HEADERS, END_STREAM | END_HEADERS, id, &block))
        .unwrap();
    assert_eq!(c.outcome(id), Outcome::Headers(200));
    // The short body's head went upstream (bodies stream), its request never completed there; no
    // malformed stream reached it at all.
    assert!(!up.requests().iter().any(|r| r.uri == "/iot/cl"));
    assert_eq!(up.hits(), before + 2);
}

#[test]
fn rapid_reset_ends_in_goaway_enhance_your_calm() {
    let (gw, up, _) = h2c_bed(&[]);
    let mut c = Raw::open(gw.addr());
    let mut burst = Vec::new();
    let mut id = 1u32;
    for _ in 0..2000 {
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            id,
            &request_block("GET", "/pub/x", &[]),
        ));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        id += 2;
    }
    let _ = c.send(&burst);
    let goaway = c.until(|f| f.ty == GOAWAY);
    let f = goaway.expect("GOAWAY before the connection closed");
    assert_eq!(
        u32::from_be_bytes(f.payload[4..8].try_into().unwrap()),
        ENHANCE_YOUR_CALM
    );
    // Most of those streams never cost an upstream request.
    assert!(up.hits() < 1000, "{} upstream requests", up.hits());
    // The gateway is fine.
    assert_eq!(gw.request("GET", "/pub/after", &[], b"").status, 200);
}

#[test]
fn continuation_flood_and_hpack_bomb_are_refused_without_being_kept() {
    let (gw, up, _) = h2c_bed(&[]);
    let before = up.hits();
    // CONTINUATION flood: a header block that never ends, 16 KiB a frame.
    let mut c = Raw::open(gw.addr());
    let mut first = request_block("GET", "/pub/x", &[]);
    literal(&mut first, "x-a", &[b'a'; 8000]);
    c.send(&frame(HEADERS, 0, 1, &first)).unwrap();
    let mut piece = Vec::new();
    literal(&mut piece, "x-b", &[b'b'; 16000]);
    let mut sent = 0usize;
    let start = Instant::now();
    while sent < 64 * 1024 * 1024 && start.elapsed() < Duration::from_secs(20) {
        if c.send(&frame(CONTINUATION, 0, 1, &piece)).is_err() {
            break;
        }
        sent += piece.len();
    }
    assert!(
        sent < 64 * 1024 * 1024,
        "the gateway read 64 MiB of one header block"
    );
    let o = c.outcome(1);
    assert!(!matches!(o, Outcome::Headers(200)), "{o:?}");
    // HPACK bomb: one 4 KiB table entry referenced 1,000 times (4 MB decoded from a few KB).
    let mut c = Raw::open(gw.addr());
    let mut block = request_block("GET", "/pub/y", &[]);
    block.push(0x40); // literal with incremental indexing, new name
    hpack_int(&mut block, 0, 7, 3);
    block.extend_from_slice(b"x-z");
    hpack_int(&mut block, 0, 7, 4000);
    block.extend_from_slice(&[b'z'; 4000]);
    for _ in 0..1000 {
        block.push(0x80 | 62);
    }
    c.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        .unwrap();
    let o = c.outcome(1);
    assert!(
        matches!(
            o,
            Outcome::Reset(_) | Outcome::GoAway(_) | Outcome::Closed | Outcome::Headers(431)
        ),
        "{o:?}"
    );
    assert_eq!(
        up.hits(),
        before,
        "an oversized header list reached the upstream"
    );
    assert_eq!(gw.request("GET", "/pub/after", &[], b"").status, 200);
}

#[test]
fn settings_and_ping_floods_are_bounded() {
    let (gw, _up, _) = h2c_bed(&[]);
    let mut c = Raw::open(gw.addr());
    let mut flood = Vec::new();
    for i in 0..20_000u64 {
        flood.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 10]));
        flood.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    // Never reading: the gateway must stop reading too (or close), not queue 40,000 answers.
    c.tcp
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = c.tcp.write_all(&flood);
    // Other clients are served meanwhile.
    assert_eq!(gw.request("GET", "/pub/during", &[], b"").status, 200);
    let mut c2 = Raw::open(gw.addr());
    c2.send(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request_block("GET", "/pub/h2", &[]),
    ))
    .unwrap();
    assert_eq!(c2.outcome(1), Outcome::Headers(200));
}

#[test]
fn concurrent_streams_are_capped_and_the_cap_is_announced() {
    let (gw, _up, token) = h2c_bed(&[("h2_max_concurrent_streams", "2")]);
    let auth = bearer(&token);
    let mut c = Raw::open(gw.addr());
    let settings = c
        .until(|f| f.ty == SETTINGS && f.flags & 1 == 0)
        .expect("server SETTINGS");
    let announced = settings
        .payload
        .chunks(6)
        .find(|s| s[..2] == [0, 3])
        .map(|s| u32::from_be_bytes(s[2..6].try_into().unwrap()));
    assert_eq!(announced, Some(2));
    // Three uploads held open: the third is refused.
    for id in [1, 3, 5] {
        let block = request_block("POST", "/iot/hold", &[("authorization", &auth)]);
        c.send(&frame(HEADERS, END_HEADERS, id, &block)).unwrap();
    }
    let f = c
        .until(|f| f.ty == RST_STREAM || f.ty == GOAWAY)
        .expect("a refusal");
    assert!(f.ty == GOAWAY || f.stream == 5, "{f:?}");
}

/// `max_connections` counts HTTP/2 connections as connections, however many streams each carries: with
/// two h2c connections open, a third is refused at accept (503, closed), and is let in once one closes.
#[test]
fn max_connections_counts_http2_connections() {
    let (gw, _up, token) = h2c_bed(&[("max_connections", "2")]);
    let auth = bearer(&token);
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::open(gw.addr());
        let block = request_block("GET", "/iot/held", &[("authorization", &auth)]);
        c.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
            .unwrap();
        assert_eq!(c.outcome(1), Outcome::Headers(200));
        open.push(c);
    }
    let mut third = TcpStream::connect(gw.addr()).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = third.write_all(PREFACE);
    let mut answer = Vec::new();
    let _ = third.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 503"),
        "a third connection past max_connections = 2: {text:?}"
    );
    drop(open.pop());
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let mut c = Raw::open(gw.addr());
        let block = request_block("GET", "/iot/again", &[("authorization", &auth)]);
        c.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
            .is_ok()
            && c.outcome(1) == Outcome::Headers(200)
    });
    assert!(ok, "a connection's place was not given back when it closed");
}

#[test]
fn idle_and_silent_connections_are_closed() {
    let (gw, _up, _) = h2c_bed(&[
        ("keepalive_timeout", "\"1s\""),
        ("header_timeout", "\"1s\""),
    ]);
    // Silent after the preface: closed at header_timeout.
    let mut c = Raw::open(gw.addr());
    let t = Instant::now();
    while c.next().is_some() {}
    assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
    // Idle after a request: GOAWAY, then closed.
    let mut c = Raw::open(gw.addr());
    c.send(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request_block("GET", "/pub/x", &[]),
    ))
    .unwrap();
    assert_eq!(c.outcome(1), Outcome::Headers(200));
    let t = Instant::now();
    assert!(c.until(|f| f.ty == GOAWAY).is_some(), "GOAWAY on idle");
    while c.next().is_some() {}
    assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
    // A TCP connection that never sends the preface: closed too.
    let mut tcp = TcpStream::connect(gw.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink);
    assert!(t.elapsed() < Duration::from_secs(9));
}

#[test]
fn shutdown_sends_goaway_and_lets_an_open_stream_finish() {
    goaway_and_the_open_stream_finishes(Gateway::sigterm);
}

/// SIGQUIT, the old process's half of a binary upgrade (`serve --upgrade`): it stops taking streams with
/// GOAWAY and finishes the open one, as on SIGTERM.
#[test]
fn a_binary_upgrade_sends_goaway_and_lets_an_open_stream_finish() {
    goaway_and_the_open_stream_finishes(Gateway::sigquit);
}

fn goaway_and_the_open_stream_finishes(signal: fn(&Gateway)) {
    let up = Upstream::with_delay("slow", Duration::from_millis(600));
    let mut gw = GatewayBuilder::new()
        .gateway("h2c", "true")
        .route_with("pub", "/pub", up.addr(), &[("auth", "\"none\"")])
        .build();
    gw.start();
    let mut c = Raw::open(gw.addr());
    c.send(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request_block("GET", "/pub/slow", &[]),
    ))
    .unwrap();
    assert!(up.wait_hits(1, Duration::from_secs(10)));
    signal(&gw);
    let mut goaway = false;
    let mut answered = None;
    while let Some(f) = c.next() {
        if f.ty == GOAWAY {
            goaway = true;
        }
        if f.ty == HEADERS && f.stream == 1 {
            answered = Some(status_of(&f.payload));
        }
        if goaway && answered.is_some() {
            break;
        }
    }
    assert!(goaway, "no GOAWAY on shutdown");
    assert_eq!(answered, Some(200), "the open stream was not answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_token_needs_its_certificate_on_the_h2_connection() {
    let up = Upstream::start("api");
    let devices = tls::Pki::new("device CA");
    let (device, other) = (devices.leaf(&["hive-7"]), devices.leaf(&["hive-8"]));
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::write_pem(dir.path(), "devices-ca.pem", &devices.ca_pem);
    let device_pem = tls::write_pem(dir.path(), "hive-7.pem", &device.cert_pem);
    let mut gw = GatewayBuilder::new()
        .tls_key("client_ca", &format!("{:?}", ca.display().to_string()))
        .route("api", "/api", up.addr())
        .build();
    let device_pem = device_pem.display().to_string();
    let (_, bound) = gw.create_token_with("beekeeper", "hive 7", &["--bind-cert", &device_pem]);
    gw.start();
    let as_leaf = |leaf: &tls::Leaf| tls::ClientOptions {
        identity: Some(leaf.clone()),
        ..tls::ClientOptions::default()
    };
    let req = || {
        get(
            "https://localhost/api/x",
            &[("authorization", &bearer(&bound))],
        )
    };
    let mut none = h2_tls(&gw).await;
    assert_eq!(send(&mut none, req(), None).await.status, 401);
    let mut wrong = h2_tls_as(&gw, &as_leaf(&other)).await;
    assert_eq!(send(&mut wrong, req(), None).await.status, 401);
    assert_eq!(up.hits(), 0);
    let mut right = h2_tls_as(&gw, &as_leaf(&device)).await;
    assert_eq!(send(&mut right, req(), None).await.status, 200);
    assert_eq!(up.last().single_header("x-user-id"), "beekeeper");
}

/// The secret-scanning door (`[leaks]`: a signed report revokes the tokens it names) is an HTTP/1.1
/// endpoint. Over HTTP/2 its path answers 404 even where a public route would take it, so a report is
/// never half-handled by a second transport, and never forwarded to an upstream. The same report over
/// HTTP/1.1 is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaks_door_is_not_served_over_http2() {
    use common::leaks;
    let up = Upstream::start("site");
    let signer = leaks::Signer::new("k1");
    let b = leaks::with_leaks(
        GatewayBuilder::new().gateway("h2c", "true").route_with(
            "site",
            "/",
            up.addr(),
            &[("auth", "\"none\"")],
        ),
        &[],
    );
    let gw = leaks::start_with_keys(b, &[&signer]);
    let (_, token) = gw.create_token("alice", "scale");
    let body = serde_json::to_vec(&serde_json::json!([leaks::report_match(&token)])).unwrap();
    let request = leaks::report_request(&body, Some(&signer.id), Some(&signer.sign(&body)));
    let (head, payload) = common::http2::translate(&request).unwrap();
    let before = up.hits();
    let mut c = common::http2::h2c(gw.addr()).await.expect("h2c");
    let r = common::http2::send_one(&mut c, head, payload)
        .await
        .expect("an answer");
    assert_eq!(r.status, 404, "{r}");
    assert!(r.text().contains("HTTP/1.1"), "{r}");
    assert_eq!(up.hits(), before, "the report went to the upstream");
    // The very same report over HTTP/1.1 is the door's.
    let r = leaks::send_signed(gw.addr(), &signer, &body);
    assert_eq!(r.status, 200, "{r}");
}

/// `h2c = true` is the gateway listener's: the verify listener (HTTP/1.1 only) never speaks HTTP/2, so
/// an HTTP/2 preface there gets no SETTINGS frame, only an HTTP/1.1 refusal or the close.
#[test]
fn the_verify_listener_never_speaks_h2c() {
    let up = Upstream::start("iot");
    let verify = format!("127.0.0.1:{}", free_port());
    let gw = GatewayBuilder::new()
        .gateway("h2c", "true")
        .section("verify", "listen", &format!("\"{verify}\""))
        .section("verify", "trusted_proxies", "[\"127.0.0.1/32\"]")
        .route("iot", "/iot", up.addr())
        .start();
    let mut tcp = TcpStream::connect(verify.as_str()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    let _ = tcp.write_all(&hello);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
        "the verify listener answered an HTTP/2 preface with {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    drop(gw);
}

/// The same query over the other door: an HTTP/2 `:path` that is not origin form (`iot/a?api_token=…`,
/// `*?api_token=…`) or is, with a token in its query, never puts the query in the access log, whatever
/// the stream's fate (answered or reset as malformed).
#[test]
fn a_query_in_an_http2_path_is_not_logged_whatever_its_form() {
    let up = Upstream::start("iot");
    let mut gw = GatewayBuilder::new()
        .gateway("h2c", "true")
        .section("log", "access", "\"plain\"")
        .section("log", "access_path", "\"access.log\"")
        .route("iot", "/iot", up.addr())
        .build();
    let (_, token) = gw.create_token("alice", "device");
    gw.start();
    let auth = bearer(&token);
    let mut raw = Raw::open(gw.addr());
    let paths = ["iot/a", "*", "http:/iot/b", "/iot/c"];
    for (i, p) in paths.iter().enumerate() {
        let block = request_block(
            "GET",
            &format!("{p}?api_token={token}"),
            &[("authorization", &auth)],
        );
        let stream = 2 * i as u32 + 1;
        raw.send(&frame(HEADERS, END_STREAM | END_HEADERS, stream, &block))
            .unwrap();
        eprintln!("{p}: {:?}", raw.outcome(stream));
    }
    let file = gw.dir().join("access.log");
    let mut text = String::new();
    poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        text.contains("/iot/c")
    });
    assert!(text.contains("/iot/c"), "logged:\n{text}");
    assert!(
        !text.contains("api_token"),
        "the query is in the log:\n{text}"
    );
    assert!(!text.contains(&token[3..20]), "the token is in the log");
}
