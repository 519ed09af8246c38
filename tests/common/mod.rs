//! Shared harness for the integration tests.
//!
//! - [`Upstream`]: a real HTTP/1.1 server (hyper) on `127.0.0.1:0` that records every request it receives
//!   (method, path+query, headers with duplicates, body length and CRC32; bodies are streamed, never kept)
//!   and answers 200 with a JSON echo. It can delay its answer and stream a large download.
//! - [`Gateway`]: a `tokengate serve` child process with its own config, store and log files in a temporary
//!   folder, on free loopback ports; helpers to run the CLI against it and to signal it.
//! - [`raw_http`]: a tiny HTTP/1.1 client over a plain `TcpStream`, for requests that client libraries
//!   refuse to send or would normalise (duplicate headers, control characters, `..` segments).
//!
//! - [`http2`]: the same requests as HTTP/2 streams (the `h2` crate), for [`Wire::H2`].
//!
//! Each test file uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod http2;
pub mod leaks;
pub mod peers;
pub mod pg;
pub mod pki;
pub mod tls;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tempfile::TempDir;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// Request header that makes [`Upstream`] answer with a streamed body of that many bytes (see
/// [`pattern_chunks`]) instead of the JSON echo.
pub const DOWNLOAD_HEADER: &str = "x-test-download";

/// Size of the chunks produced by [`pattern_chunks`].
pub const CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------------------------------------

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as received.
    pub uri: String,
    /// Every header line (names lower-cased by hyper), duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_crc: u32,
    /// Trailer fields after a chunked body (names lower-cased).
    pub trailers: Vec<(String, String)>,
}

impl Recorded {
    /// Values of every header whose name equals `name` ignoring case and treating `_` as `-`.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let wanted = normalise_header_name(name);
        self.headers
            .iter()
            .filter(|(k, _)| normalise_header_name(k) == wanted)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of `name` (same matching as [`Self::header_values`]); panics unless exactly one.
    pub fn single_header(&self, name: &str) -> &str {
        let values = self.header_values(name);
        assert_eq!(
            values.len(),
            1,
            "expected exactly one {name} header upstream, got {values:?}; all headers: {:?}",
            self.headers
        );
        values[0]
    }
}

/// Lower-cases a header name and maps `_` to `-`.
pub fn normalise_header_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

struct UpstreamState {
    name: String,
    delay: Duration,
    hits: AtomicUsize,
    log: Mutex<Vec<Recorded>>,
}

/// A recording HTTP/1.1 server on its own thread and tokio runtime (so it works from sync and async tests).
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

type ResBody = BoxBody<Bytes, Infallible>;

impl Upstream {
    /// Starts an upstream that answers at once. `name` is echoed back in the `upstream` JSON field.
    pub fn start(name: &str) -> Self {
        Self::with_delay(name, Duration::ZERO)
    }

    /// Starts an upstream that speaks HTTPS with `certificate` (a [`tls::Leaf`] for `localhost`).
    pub fn start_tls(name: &str, certificate: &tls::Leaf) -> Self {
        use rustls::pki_types::pem::PemObject;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(certificate.key_pem.as_bytes())
            .expect("upstream key");
        let chain = vec![rustls::pki_types::CertificateDer::from(
            certificate.der.clone(),
        )];
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("upstream certificate");
        Self::serve(
            name,
            Duration::ZERO,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
    }

    /// Starts an upstream that waits `delay` after reading the whole request body before answering.
    pub fn with_delay(name: &str, delay: Duration) -> Self {
        Self::serve(name, delay, None)
    }

    fn serve(name: &str, delay: Duration, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener
            .set_nonblocking(true)
            .expect("nonblocking upstream listener");
        let addr = listener.local_addr().expect("upstream addr");
        let state = Arc::new(UpstreamState {
            name: name.to_owned(),
            delay,
            hits: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name(format!("upstream-{name}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                runtime.block_on(serve_upstream(listener, thread_state, rx, tls));
            })
            .expect("spawn upstream thread");
        Upstream {
            addr,
            state,
            shutdown: Some(tx),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of requests whose head reached the upstream (counted before the body is read).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests whose body was read completely, in completion order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    /// The most recent completely read request; panics if there is none.
    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("upstream received no request")
    }

    /// Polls until at least `n` request heads arrived; false on timeout.
    pub fn wait_hits(&self, n: usize, timeout: Duration) -> bool {
        poll_until(timeout, Duration::from_millis(5), || self.hits() >= n)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn serve_upstream(
    listener: TcpListener,
    state: Arc<UpstreamState>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio upstream listener");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&state);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle_upstream(req, Arc::clone(&state)));
                    match tls {
                        None => {
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        }
    }
}

async fn handle_upstream(
    req: Request<Incoming>,
    state: Arc<UpstreamState>,
) -> Result<Response<ResBody>, hyper::Error> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = req.into_parts();
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_owned());
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let download: Option<u64> = parts
        .headers
        .get(DOWNLOAD_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());

    let mut body_len = 0u64;
    let mut crc = crc32fast::Hasher::new();
    let mut trailers = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                body_len += data.len() as u64;
                crc.update(&data);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.extend(t.iter().map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    }));
                }
            }
        }
    }
    let record = Recorded {
        method: parts.method.to_string(),
        uri,
        headers,
        body_len,
        body_crc: crc.finalize(),
        trailers,
    };
    state.log.lock().unwrap().push(record.clone());

    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }

    if let Some(total) = download {
        let frames = pattern_chunks(total).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let response = Response::builder()
            .header("content-type", "application/octet-stream")
            .body(BodyExt::boxed(body))
            .expect("download response");
        return Ok(response);
    }

    let echo = json!({
        "upstream": state.name,
        "method": record.method,
        "uri": record.uri,
        "headers": record.headers,
        "body_len": record.body_len,
        "body_crc": record.body_crc,
    });
    let response = Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(echo.to_string())).boxed())
        .expect("echo response");
    Ok(response)
}

/// The deterministic body used for large transfers: `CHUNK`-sized pieces of pseudo-random bytes, each
/// stamped with its index so that reordered or repeated chunks change the checksum.
pub fn pattern_chunks(total: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    });
    let chunks = total.div_ceil(CHUNK as u64);
    (0..chunks).map(move |i| {
        let len = (total - i * CHUNK as u64).min(CHUNK as u64) as usize;
        let mut chunk = base[..len].to_vec();
        let stamp = i.to_le_bytes();
        let n = stamp.len().min(len);
        chunk[..n].copy_from_slice(&stamp[..n]);
        Bytes::from(chunk)
    })
}

/// CRC32 of the first `total` bytes of [`pattern_chunks`].
pub fn pattern_crc(total: u64) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    for chunk in pattern_chunks(total) {
        crc.update(&chunk);
    }
    crc.finalize()
}

/// A loopback address on which nothing listens (bound, then released): connections are refused.
pub fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// A loopback port that was free a moment ago, and never handed out before in this test process: the
/// system may offer a port it just gave us again, and two listeners of one gateway on one port share
/// one socket (the configuration now refuses that, but a test would fail to start).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = refused_addr().port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the response if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self}"))
    }

    /// The `error` field of the JSON body.
    pub fn json_error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("JSON body has no string `error`: {self}"))
            .to_owned()
    }
}

impl std::fmt::Display for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} {:?} body={:?}",
            self.status,
            self.headers,
            self.text()
        )
    }
}

/// `Bearer <token>`, the value of an `Authorization` field.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Builds a keep-alive request: like [`build_request`] without `Connection: close`.
pub fn keepalive_request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = build_request(method, target, headers, body);
    let close = b"Connection: close\r\n\r\n";
    let at = out.len() - body.len() - close.len();
    out.splice(at..at + close.len(), b"\r\n".iter().copied());
    out
}

/// Sum of every sample of `family` whose label set contains all of `labels` (`key="value"` strings).
pub fn metric_sum(text: &str, family: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Builds a request with `Host`, the given header lines (written exactly as given, any bytes),
/// `Content-Length` when there is a body, and `Connection: close`.
pub fn build_request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Sends `request` on a new connection and reads one response; panics on I/O errors.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> RawResponse {
    try_raw_http(addr, request).unwrap_or_else(|e| {
        panic!(
            "raw request to {addr} failed: {e}; request: {:?}",
            String::from_utf8_lossy(request)
        )
    })
}

/// Sends `request` on a new connection and reads one response.
pub fn try_raw_http(addr: SocketAddr, request: &[u8]) -> io::Result<RawResponse> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    try_exchange(Wired::plain(stream)?, request)
}

/// Sends `request` on `stream` and reads one response (`HEAD`: the head only).
fn try_exchange(mut stream: Wired, request: &[u8]) -> io::Result<RawResponse> {
    stream.set_timeouts(Duration::from_secs(60))?;
    stream.io.write_all(request)?;
    stream.io.flush()?;
    let head_only = request.starts_with(b"HEAD ");
    read_response(
        &mut BufReader {
            stream,
            buf: Vec::new(),
            pos: 0,
        },
        head_only,
    )
}

/// Which listener a test talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// `[gateway] listen`, plain HTTP.
    Plain,
    /// `[tls] listen`, HTTP over TLS (the harness's CA, SNI `localhost`).
    Tls,
    /// `[tls] listen`, HTTP/2 over TLS (ALPN `h2`): each request one stream on a new connection.
    H2,
}

/// Anything a client connection can be: a TCP stream or TLS over one.
pub trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// A client byte stream and the TCP socket under it (for timeouts and shutdown).
pub struct Wired {
    io: Box<dyn ReadWrite>,
    tcp: TcpStream,
}

impl Wired {
    pub fn plain(tcp: TcpStream) -> io::Result<Wired> {
        Ok(Wired {
            io: Box::new(tcp.try_clone()?),
            tcp,
        })
    }

    pub fn tls(stream: tls::TlsStream) -> io::Result<Wired> {
        let tcp = stream.sock.try_clone()?;
        Ok(Wired {
            io: Box::new(stream),
            tcp,
        })
    }

    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.tcp.set_read_timeout(Some(t))?;
        self.tcp.set_write_timeout(Some(t))
    }
}

struct BufReader {
    stream: Wired,
    buf: Vec<u8>,
    pos: usize,
}

/// A client connection kept open across requests (keep-alive, partial sends, waiting for the close).
pub struct Conn(BufReader);

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
        Conn::over(Wired::plain(stream).expect("clone socket"))
    }

    /// A connection over an established stream (plain or TLS).
    pub fn over(stream: Wired) -> Conn {
        stream
            .set_timeouts(Duration::from_secs(30))
            .expect("timeouts");
        Conn(BufReader {
            stream,
            buf: Vec::new(),
            pos: 0,
        })
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.0
            .stream
            .tcp
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
    }

    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.stream.io.write_all(data)?;
        self.0.stream.io.flush()
    }

    /// Half-closes the connection for writing (the gateway sees the end of the request stream).
    pub fn shutdown_write(&self) {
        let _ = self.0.stream.tcp.shutdown(std::net::Shutdown::Write);
    }

    /// Reads one response (Content-Length, chunked, or until close).
    pub fn read_response(&mut self) -> io::Result<RawResponse> {
        read_response(&mut self.0, false)
    }

    /// Reads the response to a `HEAD` request: a head, and no body whatever its fields say.
    pub fn read_head_response(&mut self) -> io::Result<RawResponse> {
        read_response(&mut self.0, true)
    }

    /// Sends one request and reads its response (`HEAD` requests: the head only).
    pub fn roundtrip(&mut self, request: &[u8]) -> io::Result<RawResponse> {
        self.send(request)?;
        if request.starts_with(b"HEAD ") {
            self.read_head_response()
        } else {
            self.read_response()
        }
    }

    /// Reads whatever arrives until the peer closes or `timeout` passes without a byte.
    pub fn read_rest(&mut self) -> Vec<u8> {
        let mut out = self.0.buf[self.0.pos..].to_vec();
        self.0.pos = self.0.buf.len();
        let mut tmp = [0u8; 16 * 1024];
        while let Ok(n) = self.0.stream.io.read(&mut tmp) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&tmp[..n]);
        }
        out
    }

    /// Waits for the peer to close: `Ok(())` on end of stream or reset, `Err` on timeout or if data arrives.
    pub fn wait_closed(&mut self) -> Result<(), String> {
        let mut tmp = [0u8; 1024];
        match self.0.stream.io.read(&mut tmp) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!(
                "unexpected data: {:?}",
                String::from_utf8_lossy(&tmp[..n])
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("not closed: {e}")),
        }
    }
}

impl BufReader {
    /// Reads more bytes; false at EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let mut tmp = [0u8; 16 * 1024];
        let n = match self.stream.io.read(&mut tmp) {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the end of a close-delimited body too.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n > 0)
    }

    fn read_until(&mut self, delimiter: &[u8]) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], delimiter) {
                let out = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + delimiter.len();
                return Ok(out);
            }
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed early; received {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    fn read_exact_n(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() - self.pos < n {
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body shorter than announced",
                ));
            }
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }

    fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        while self.fill()? {}
        let out = self.buf[self.pos..].to_vec();
        self.pos = self.buf.len();
        Ok(out)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read_response(reader: &mut BufReader, head_only: bool) -> io::Result<RawResponse> {
    let head = String::from_utf8_lossy(&reader.read_until(b"\r\n\r\n")?).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let find_header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if find_header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let size_line = String::from_utf8_lossy(&reader.read_until(b"\r\n")?).into_owned();
            let size_hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {size_line:?}"),
                )
            })?;
            if size == 0 {
                // Trailers (if any) end with an empty line.
                while !reader.read_until(b"\r\n")?.is_empty() {}
                break;
            }
            body.extend_from_slice(&reader.read_exact_n(size)?);
            reader.read_exact_n(2)?;
        }
        body
    } else if let Some(len) = find_header("content-length") {
        let len: usize = len.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad content-length {len:?}"),
            )
        })?;
        reader.read_exact_n(len)?
    } else {
        reader.read_to_end()?
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Gateway process
// ---------------------------------------------------------------------------------------------------------

/// Builds the TOML config of a [`Gateway`].
#[derive(Clone)]
pub struct GatewayBuilder {
    gateway: BTreeMap<String, String>,
    /// Other top-level tables (`log`, `throttle`, ...): name → key → raw TOML value.
    sections: BTreeMap<String, BTreeMap<String, String>>,
    /// Extra environment for the `serve` process (e.g. `RUST_LOG`).
    env: Vec<(String, String)>,
    routes: Vec<String>,
    /// The TLS listener, when enabled.
    tls: Option<TlsSetup>,
    /// Which listener `request`, `connect` and `url` use.
    wire: Wire,
    /// A PostgreSQL store instead of the SQLite file next to the config.
    store_url: Option<String>,
    /// An SQLite database file elsewhere than next to the config (another gateway's, to share it).
    store_path: Option<PathBuf>,
}

/// The harness's `[tls]` section: its keys, the certificates (written into the gateway's folder at
/// build), and the CA that signed them.
#[derive(Clone)]
pub struct TlsSetup {
    pub pki: Arc<tls::Pki>,
    /// More `[tls]` keys (raw TOML values).
    pub keys: BTreeMap<String, String>,
    /// `[[tls.certificates]]`, the first the default.
    pub certificates: Vec<tls::Leaf>,
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("gateway", &self.gateway)
            .field("routes", &self.routes)
            .field("wire", &self.wire)
            .finish_non_exhaustive()
    }
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayBuilder {
    /// Defaults for tests: 2 threads, a 1 s grace period, no throttling of failed authentications.
    pub fn new() -> Self {
        let mut gateway = BTreeMap::new();
        gateway.insert("threads".to_owned(), "2".to_owned());
        gateway.insert("grace_period".to_owned(), "\"1s\"".to_owned());
        // Tests poll freshly created tokens before the gateway has synced them; those 401s would count as
        // failed authentications. Throttling is off unless a test turns it on (tests/attacks.rs does).
        let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        sections
            .entry("throttle".to_owned())
            .or_default()
            .insert("max_failures".to_owned(), "0".to_owned());
        GatewayBuilder {
            gateway,
            sections,
            env: Vec::new(),
            routes: Vec::new(),
            tls: None,
            wire: Wire::Plain,
            store_url: None,
            store_path: None,
        }
    }

    /// Uses the PostgreSQL database at `url` as the store (`[store] url`).
    pub fn store_url(mut self, url: &str) -> Self {
        self.store_url = Some(url.to_owned());
        self
    }

    /// Uses the SQLite database at `path` (another gateway's [`Gateway::db_path`], to share it).
    pub fn store_path(mut self, path: &Path) -> Self {
        self.store_path = Some(path.to_owned());
        self
    }

    /// Turns the TLS listener on, with a certificate for `localhost` and 127.0.0.1 signed by a fresh CA.
    pub fn tls(mut self) -> Self {
        if self.tls.is_none() {
            let pki = Arc::new(tls::Pki::new("tokengate test CA"));
            let server = pki.leaf(&["localhost", "127.0.0.1"]);
            self.tls = Some(TlsSetup {
                pki,
                keys: BTreeMap::new(),
                certificates: vec![server],
            });
        }
        self
    }

    /// Sets a `[tls]` key (turning TLS on); `raw_value` is TOML.
    pub fn tls_key(mut self, key: &str, raw_value: &str) -> Self {
        self = self.tls();
        let t = self.tls.as_mut().expect("tls on");
        t.keys.insert(key.to_owned(), raw_value.to_owned());
        self
    }

    /// Replaces the TLS certificates (turning TLS on); the first is the default.
    pub fn tls_certificates(mut self, certificates: Vec<tls::Leaf>) -> Self {
        self = self.tls();
        self.tls.as_mut().expect("tls on").certificates = certificates;
        self
    }

    /// The CA of the TLS listener (turning TLS on).
    pub fn pki(&mut self) -> Arc<tls::Pki> {
        let this = std::mem::take(self).tls();
        *self = this;
        self.tls.as_ref().expect("tls on").pki.clone()
    }

    /// Which listener the gateway's request helpers use (TLS turns the TLS listener on).
    pub fn wire(mut self, wire: Wire) -> Self {
        if wire != Wire::Plain {
            self = self.tls();
        }
        self.wire = wire;
        self
    }

    /// Sets a `[gateway]` key; `raw_value` is TOML (strings need their quotes).
    pub fn gateway(mut self, key: &str, raw_value: &str) -> Self {
        self.gateway.insert(key.to_owned(), raw_value.to_owned());
        self
    }

    /// Sets a key of another top-level table, e.g. `.section("throttle", "max_failures", "0")`.
    pub fn section(mut self, table: &str, key: &str, raw_value: &str) -> Self {
        self.sections
            .entry(table.to_owned())
            .or_default()
            .insert(key.to_owned(), raw_value.to_owned());
        self
    }

    /// Sets an environment variable for the gateway process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a `[[routes]]` entry.
    pub fn route(self, name: &str, path_prefix: &str, upstream: SocketAddr) -> Self {
        self.route_with(name, path_prefix, upstream, &[])
    }

    /// Adds a `[[routes]]` entry with extra keys; values are raw TOML.
    pub fn route_with(
        mut self,
        name: &str,
        path_prefix: &str,
        upstream: SocketAddr,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut block = format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{path_prefix}\"\nupstream = \"{upstream}\"\n"
        );
        for (key, value) in extra {
            block.push_str(&format!("{key} = {value}\n"));
        }
        self.routes.push(block);
        self
    }

    /// Adds a `[[routes]]` entry written out in full (TOML after the `[[routes]]` line), for keys the
    /// other helpers do not write (`upstreams = [...]`, `[routes.health_check]`).
    pub fn route_toml(mut self, body: &str) -> Self {
        self.routes.push(format!("[[routes]]\n{body}\n"));
        self
    }

    /// Writes the config into a new temporary folder without starting the gateway.
    pub fn build(self) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("tokengate-test-")
            .tempdir()
            .expect("tempdir");
        // The child runs in a folder other than the config's, so a store path resolved against the
        // working directory instead of the config file's folder shows up as a missing database file.
        let cwd = dir.path().join("cwd");
        fs::create_dir_all(&cwd).expect("create cwd");
        if let Some(t) = &self.tls {
            for (i, leaf) in t.certificates.iter().enumerate() {
                leaf.write(dir.path(), &format!("server{i}"));
            }
        }
        let tls_listen = self.tls.as_ref().map(|_| free_loopback_addr());
        let gateway = Gateway {
            config_path: dir.path().join("tokengate.toml"),
            dir,
            cwd,
            builder: self,
            listen: free_loopback_addr(),
            tls_listen,
            admin: free_loopback_addr(),
            child: None,
            log_offset: 0,
        };
        gateway.write_config();
        gateway
    }

    /// Writes the config and starts the gateway.
    pub fn start(self) -> Gateway {
        let mut gateway = self.build();
        gateway.start();
        gateway
    }
}

fn free_loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A `tokengate serve` child process; killed on drop, its logs printed when the test panics.
pub struct Gateway {
    dir: TempDir,
    cwd: PathBuf,
    config_path: PathBuf,
    builder: GatewayBuilder,
    listen: SocketAddr,
    /// The TLS listener, when the builder turned TLS on.
    tls_listen: Option<SocketAddr>,
    admin: SocketAddr,
    child: Option<Child>,
    /// Length of `stderr.log` when the current run started.
    log_offset: usize,
}

/// How long `start` waits for `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Gateway {
    fn write_config(&self) {
        let mut toml = String::from("[gateway]\n");
        toml.push_str(&format!("listen = \"{}\"\n", self.listen));
        for (key, value) in &self.builder.gateway {
            toml.push_str(&format!("{key} = {value}\n"));
        }
        match (&self.builder.store_url, &self.builder.store_path) {
            (Some(url), _) => toml.push_str(&format!("\n[store]\nurl = {url:?}\n")),
            (None, Some(path)) => toml.push_str(&format!("\n[store]\npath = {path:?}\n")),
            (None, None) => toml.push_str("\n[store]\npath = \"tokengate.db\"\n"),
        }
        toml.push_str(&format!("\n[admin]\nlisten = \"{}\"\n", self.admin));
        for (key, value) in self.builder.sections.get("admin").into_iter().flatten() {
            toml.push_str(&format!("{key} = {value}\n"));
        }
        for (table, keys) in self.builder.sections.iter().filter(|(t, _)| *t != "admin") {
            toml.push_str(&format!("\n[{table}]\n"));
            for (key, value) in keys {
                toml.push_str(&format!("{key} = {value}\n"));
            }
        }
        if let (Some(t), Some(addr)) = (&self.builder.tls, self.tls_listen) {
            toml.push_str(&format!("\n[tls]\nlisten = \"{addr}\"\n"));
            for (key, value) in &t.keys {
                toml.push_str(&format!("{key} = {value}\n"));
            }
            for i in 0..t.certificates.len() {
                toml.push_str(&format!(
                    "[[tls.certificates]]\ncert = \"server{i}.crt\"\nkey = \"server{i}.key\"\n"
                ));
            }
        }
        for route in &self.builder.routes {
            toml.push('\n');
            toml.push_str(route);
        }
        fs::write(&self.config_path, toml).expect("write config");
    }

    /// Starts (or restarts) the gateway and waits until it serves; retries once on new ports when the
    /// chosen ones were taken meanwhile.
    pub fn start(&mut self) {
        assert!(!self.is_running(), "gateway already running");
        for attempt in 0..2 {
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                Err(problem) => {
                    let logs = self.logs();
                    let port_taken = self.port_taken();
                    self.kill_quietly();
                    if attempt == 0 && port_taken {
                        self.listen = free_loopback_addr();
                        self.admin = free_loopback_addr();
                        self.tls_listen = self.tls_listen.map(|_| free_loopback_addr());
                        self.write_config();
                        continue;
                    }
                    panic!(
                        "gateway did not start: {problem}\nconfig:\n{}\n{logs}",
                        fs::read_to_string(&self.config_path).unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Spawns `tokengate serve` without waiting until it serves (see [`Self::start`]).
    pub fn spawn(&mut self) {
        self.log_offset =
            fs::metadata(self.dir.path().join("stderr.log")).map_or(0, |m| m.len() as usize);
        let open_log = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .expect("open log file")
        };
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.cwd)
            .envs(self.builder.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(open_log("stdout.log"))
            .stderr(open_log("stderr.log"))
            .spawn()
            .expect("spawn tokengate serve");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let healthz = build_request("GET", "/healthz", &[], b"");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("exited early with {status}"));
            }
            // Pingora keeps retrying a taken port while the admin listener already answers.
            if self.port_taken() {
                return Err("a listen port is in use".to_owned());
            }
            let healthy = try_raw_http(self.admin, &healthz).is_ok_and(|r| r.status == 200);
            let listening =
                |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok();
            if healthy
                && (listening(&self.listen) || self.tls_listen.as_ref().is_some_and(listening))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no 200 from /healthz within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the current run logged that a listen port is taken (pingora retries such a bind for a
    /// while, and the admin listener may answer meanwhile).
    fn port_taken(&self) -> bool {
        let this_run = self.stderr_this_run();
        this_run.contains("is in use") || this_run.contains("already in use")
    }

    /// What the current (or last) run wrote to stderr.
    pub fn stderr_this_run(&self) -> String {
        let stderr = fs::read(self.dir.path().join("stderr.log")).unwrap_or_default();
        String::from_utf8_lossy(stderr.get(self.log_offset..).unwrap_or_default()).into_owned()
    }

    fn kill_quietly(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Whether the child process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Proxy listener address.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// TLS listener address; panics unless TLS is on.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_listen.expect("the builder did not turn TLS on")
    }

    /// Which listener the request helpers use.
    pub fn wire(&self) -> Wire {
        self.builder.wire
    }

    /// The CA that signed the TLS listener's certificates; panics unless TLS is on.
    pub fn pki(&self) -> &tls::Pki {
        &self.builder.tls.as_ref().expect("TLS is off").pki
    }

    /// A TLS client configuration trusting the harness's CA.
    pub fn tls_client(&self, options: &tls::ClientOptions) -> Arc<rustls::ClientConfig> {
        tls::client_config(&self.pki().ca_pem, options)
    }

    /// A TLS connection to the TLS listener with SNI `localhost` (or `server_name`).
    pub fn tls_connect(
        &self,
        options: &tls::ClientOptions,
        server_name: &str,
    ) -> io::Result<tls::TlsStream> {
        tls::connect(self.tls_addr(), &self.tls_client(options), server_name)
    }

    /// A keep-alive connection over TLS, as `options` say.
    pub fn tls_conn(&self, options: &tls::ClientOptions) -> Conn {
        let stream = self.tls_connect(options, "localhost").expect("TLS connect");
        Conn::over(Wired::tls(stream).expect("clone socket"))
    }

    /// Sends raw request bytes on a new connection on the test's wire and reads one response.
    pub fn raw(&self, request: &[u8]) -> RawResponse {
        self.try_raw(request).unwrap_or_else(|e| {
            panic!(
                "raw request over {:?} failed: {e}; request: {:?}",
                self.wire(),
                String::from_utf8_lossy(request)
            )
        })
    }

    /// [`Self::raw`], returning I/O errors.
    pub fn try_raw(&self, request: &[u8]) -> io::Result<RawResponse> {
        match self.wire() {
            Wire::Plain => try_raw_http(self.listen, request),
            Wire::Tls => {
                let stream = self.tls_connect(&tls::ClientOptions::default(), "localhost")?;
                try_exchange(Wired::tls(stream)?, request)
            }
            Wire::H2 => http2::exchange(self, request),
        }
    }

    /// Admin listener address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// A URL on the test's wire (`https://localhost:PORT` over TLS; see [`Self::http_client`]).
    pub fn url(&self, path: &str) -> String {
        match self.wire() {
            Wire::Plain => format!("http://{}{path}", self.listen),
            Wire::Tls | Wire::H2 => {
                format!("https://localhost:{}{path}", self.tls_addr().port())
            }
        }
    }

    /// An HTTP client for [`Self::url`]: plain, or TLS trusting the harness's CA (`localhost` resolved to
    /// the TLS listener).
    pub fn http_client(&self) -> reqwest::Client {
        match self.wire() {
            Wire::Plain => client(),
            Wire::Tls => reqwest::Client::builder()
                .no_proxy()
                .http1_only()
                .use_preconfigured_tls((*self.tls_client(&tls::ClientOptions::default())).clone())
                .resolve("localhost", self.tls_addr())
                .build()
                .expect("reqwest TLS client"),
            Wire::H2 => {
                let mut config = (*self.tls_client(&tls::ClientOptions::default())).clone();
                config.alpn_protocols = vec![b"h2".to_vec()];
                reqwest::Client::builder()
                    .no_proxy()
                    .http2_prior_knowledge()
                    .use_preconfigured_tls(config)
                    .resolve("localhost", self.tls_addr())
                    .build()
                    .expect("reqwest HTTP/2 client")
            }
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway not started").id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Where the store must be: `tokengate.db` next to the config file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("tokengate.db")
    }

    /// Runs `tokengate --config <this config> <args>` (works whether or not the gateway runs).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .output()
            .expect("run tokengate CLI")
    }

    /// Runs the CLI, asserts success and parses stdout as JSON.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert_success(&out, args);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stdout of {args:?} is not JSON ({e}):\n{}", describe(&out)))
    }

    /// `token create --user U --label L --json`, returning `(id, token)`.
    pub fn create_token(&self, user: &str, label: &str) -> (i64, String) {
        self.create_token_with(user, label, &[])
    }

    /// Like [`Self::create_token`] with extra CLI arguments (`--expires-in 2s`, `--scope s`, ...).
    pub fn create_token_with(&self, user: &str, label: &str, extra: &[&str]) -> (i64, String) {
        let mut args = vec![
            "token", "create", "--user", user, "--label", label, "--json",
        ];
        args.extend_from_slice(extra);
        let created = self.cli_json(&args);
        let id = created["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no integer id in {created}"));
        let token = created["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {created}"));
        (id, token.to_owned())
    }

    /// `token list --json`.
    pub fn token_list(&self) -> Vec<Value> {
        match self.cli_json(&["token", "list", "--json"]) {
            Value::Array(items) => items,
            other => panic!("token list --json is not an array: {other}"),
        }
    }

    /// The `token list --json` entry with this id.
    pub fn token_entry(&self, id: i64) -> Value {
        self.token_list()
            .into_iter()
            .find(|t| t["id"].as_i64() == Some(id))
            .unwrap_or_else(|| panic!("token {id} not in token list"))
    }

    /// `token revoke ID`, asserting success.
    pub fn revoke(&self, id: i64) {
        let id = id.to_string();
        let args = ["token", "revoke", id.as_str()];
        assert_success(&self.cli(&args), &args);
    }

    /// Sends one raw request to the proxy listener.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        self.raw(&build_request(method, target, headers, body))
    }

    /// `GET target` with `Authorization: Bearer <token>`.
    pub fn get_with_token(&self, target: &str, token: &str) -> RawResponse {
        self.request(
            "GET",
            target,
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
    }

    /// Polls `GET target` with `token` until it answers `want` (a token made by the CLI reaches a running
    /// gateway within its sync interval); panics with the last answer after 10 s.
    pub fn wait_status(&self, target: &str, token: &str, want: u16) -> RawResponse {
        let mut last = None;
        let ok = poll_until(Duration::from_secs(10), Duration::from_millis(5), || {
            let r = self.get_with_token(target, token);
            let hit = r.status == want;
            last = Some(r);
            hit
        });
        let last = last.expect("at least one request");
        assert!(ok, "{target} never answered {want}; last: {last}");
        last
    }

    /// [`Self::wait_status`] for 200.
    pub fn wait_ok(&self, target: &str, token: &str) -> RawResponse {
        self.wait_status(target, token, 200)
    }

    /// `GET target` on the admin listener.
    pub fn admin_get(&self, target: &str) -> RawResponse {
        raw_http(self.admin, &build_request("GET", target, &[], b""))
    }

    /// `GET /healthz` as JSON.
    pub fn health(&self) -> Value {
        self.admin_get("/healthz").json()
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        let r = self.admin_get("/metrics");
        assert_eq!(r.status, 200, "/metrics: {r}");
        r.text()
    }

    /// Polls `/healthz` until its status is `want`; returns how long that took, or panics with the last
    /// answer.
    pub fn wait_health(&self, want: &str, timeout: Duration) -> Duration {
        let t = Instant::now();
        let mut last = Value::Null;
        let ok = poll_until(timeout, Duration::from_millis(20), || {
            last = self.health();
            last["status"] == want
        });
        assert!(
            ok,
            "/healthz never said {want:?} within {timeout:?}; last: {last}"
        );
        t.elapsed()
    }

    /// A keep-alive connection on the test's wire.
    pub fn connect(&self) -> Conn {
        match self.wire() {
            Wire::Plain => Conn::open(self.listen),
            Wire::Tls => self.tls_conn(&tls::ClientOptions::default()),
            Wire::H2 => panic!("an HTTP/1.1 keep-alive connection on Wire::H2"),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGHUP: reload the configuration.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn sigint(&self) {
        self.signal("INT");
    }

    /// SIGQUIT: the old process's half of a binary upgrade (hand the listeners over, drain, exit).
    pub fn sigquit(&self) {
        self.signal("QUIT");
    }

    pub fn kill9(&self) {
        self.signal("KILL");
    }

    /// Waits for the child to exit; panics with the logs on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(timeout) {
            Some(status) => status,
            None => panic!("gateway still running after {timeout:?}\n{}", self.logs()),
        }
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("gateway not started");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Peak resident memory (`VmHWM`) of the gateway process in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }

    /// Captured stdout and stderr of every run so far.
    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- gateway stdout ---\n{}\n--- gateway stderr ---\n{}",
            read("stdout.log"),
            read("stderr.log")
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill_quietly();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------------------

/// An HTTP client that ignores proxy settings from the environment.
pub fn client() -> reqwest::Client {
    // reqwest builds a rustls configuration even for plain HTTP: give the process its provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// Polls `condition` every `interval` until it holds or `timeout` passes.
pub fn poll_until(
    timeout: Duration,
    interval: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// Exit status, stdout and stderr of a command, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "tokengate {args:?} failed:\n{}",
        describe(out)
    );
}

/// The examples' binaries: built by `cargo build --examples` into the target directory of this test.
pub fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/quick_start-<hash> → target/<profile>/examples
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--examples", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build --examples");
    assert!(status.success(), "cargo build --examples failed");
    dir
}

/// Whether `s` has the token format `tg_[0-9A-Za-z]{49}`.
pub fn is_token_format(s: &str) -> bool {
    s.len() == 52 && s.starts_with("tg_") && s[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Seconds since the epoch now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Parses an RFC 3339 UTC timestamp (`2026-11-22T22:30:00Z`, optional fraction, `Z` or `+00:00`)
/// into seconds since the epoch.
pub fn parse_rfc3339_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = &s[from..to];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61
        && (rest == "Z" || rest == "+00:00");
    if !valid {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// A connection from source address `from` (any 127.0.0.0/8 address works on Linux loopback).
pub fn connect_from(from: Ipv4Addr, gw: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tcp = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((from, 0)))?;
            socket.connect(gw).await
        })
        .unwrap_or_else(|e| panic!("connect from {from}: {e}"));
    let tcp = tcp.into_std().expect("std socket");
    tcp.set_nonblocking(false).expect("blocking");
    tcp
}
