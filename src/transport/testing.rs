//! The in-process test rig of the transport (test builds only): an [`Engine`] built from a TOML
//! configuration over an in-memory token [`Index`], a client connection served by the real
//! [`Client`] loop over a `tokio::io::duplex` pipe, an upstream on a loopback listener inside the
//! test, and a small HTTP/1 reader ([`Wire`]) for both ends. Tests in `transport/tests/` use this file
//! and nothing of each other; with `#[tokio::test(start_paused = true)]` every timeout the transport
//! waits on passes without wall-clock waiting.

use super::connection::Client;
use super::{Engine, Table};
use crate::config::Config;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::connections::Closed;
use crate::telemetry::metrics::Metrics;
use crate::tokens::format::Token;
use crate::tokens::index::Index;
use crate::tokens::store::IndexRow;
use arc_swap::ArcSwap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The address every test client connects from.
pub const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

/// The longest a test waits for the gateway to do anything (on the paused clock this costs nothing).
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A gateway engine in this process, its token index, and its one upstream's listener.
pub struct Rig {
    pub engine: Arc<Engine>,
    pub index: Arc<Index>,
    pub upstream: TcpListener,
    next_id: AtomicI64,
}

impl Rig {
    /// An engine whose `[gateway]` section holds `gateway` (TOML lines) and whose one route `api`
    /// (prefix `/`) forwards to a listener bound here, with `route` (TOML lines) added to it.
    pub async fn new(gateway: &str, route: &str) -> Rig {
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = upstream.local_addr().expect("local address").port();
        let text = format!(
            "[gateway]\nlisten = \"127.0.0.1:8080\"\n{gateway}\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"127.0.0.1:{port}\"\n{route}\n"
        );
        let config = Config::parse(&text, Path::new("rig.toml")).expect("test configuration");
        let metrics = Metrics::new();
        let table = Table::new(&config, &metrics, None).expect("route table");
        let index = Arc::new(Index::new());
        let engine = Engine::new(
            &config,
            index.clone(),
            Arc::new(ArcSwap::from_pointee(table)),
            &metrics,
            AccessLog::off(),
            None,
            Arc::new(AtomicBool::new(false)),
        );
        Rig {
            engine: Arc::new(engine),
            index,
            upstream,
            next_id: AtomicI64::new(1),
        }
    }

    /// A new valid token with `scopes`, in the index; its id is the user (`user<id>`).
    pub fn token(&self, scopes: &[&str]) -> (i64, Token) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = Token::generate();
        self.index.apply(&row(id, &token, scopes, false, 1));
        (id, token)
    }

    /// Revokes token `id` in the index, as a sync of the store would.
    pub fn revoke(&self, id: i64, token: &Token) {
        self.index.apply(&row(id, token, &[], true, 2));
    }

    /// A client connection served by the engine's connection loop: the test's end of the pipe, and
    /// the task that says why the connection ended.
    pub fn connect(&self) -> (Wire<DuplexStream>, JoinHandle<Closed>) {
        let (near, far) = tokio::io::duplex(256 * 1024);
        let engine = self.engine.clone();
        let task =
            tokio::spawn(async move { Client::new(&engine, far, Some(PEER), None).run().await });
        (Wire::new(near), task)
    }

    /// The next connection the gateway opens to the upstream.
    pub async fn accept(&self) -> Wire<TcpStream> {
        let accepted = tokio::time::timeout(PATIENCE, self.upstream.accept()).await;
        let (s, _): (TcpStream, SocketAddr) = accepted
            .expect("the gateway opened no upstream connection within an hour of the test's clock")
            .expect("accept");
        Wire::new(s)
    }

    /// Whether the gateway opens another upstream connection (checked without waiting).
    pub fn pending_connection(&self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        self.upstream.poll_accept(&mut cx).is_ready()
    }
}

fn row(id: i64, token: &Token, scopes: &[&str], revoked: bool, rev: i64) -> IndexRow {
    IndexRow {
        id,
        user: format!("user{id}"),
        digest: token.digest(),
        prev_digest: None,
        prev_valid_until: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: None,
        revoked,
        rev: id * 100 + rev,
        bound_cert: None,
        rate_limit: None,
        quota: None,
        quota_used: 0,
        quota_period: None,
        leaked: false,
        access: Default::default(),
    }
}

/// `GET path` with the token, HTTP/1.1.
pub fn get(path: &str, token: &Token) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {}\r\n\r\n",
        token.as_str()
    )
}

/// One HTTP/1 message as read off the wire.
#[derive(Debug, Default)]
pub struct Message {
    /// The start line (request line or status line).
    pub start: String,
    pub fields: Vec<(String, String)>,
    /// The body's data (chunked framing removed).
    pub body: Vec<u8>,
    /// The body as it travelled (with its chunked framing, if any).
    pub raw_body: Vec<u8>,
    pub chunked: bool,
}

impl Message {
    /// The value of field `name` (any case), the first one.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The status of a response.
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line")
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn length(&self) -> Option<usize> {
        self.field("content-length")
            .map(|v| v.parse().expect("a length"))
    }
}

/// One end of a connection with what was read past the last message.
pub struct Wire<S> {
    pub io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(io: S) -> Wire<S> {
        Wire {
            io,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.io.write_all(bytes.as_ref()).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// Reads more bytes; false at the end of the stream (or an error).
    /// Every read is bounded by [`PATIENCE`] on the test's clock: a test whose gateway never answers
    /// fails instead of hanging (on the paused clock, at once).
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(PATIENCE, self.io.read(&mut chunk)).await;
        match read.expect("nothing arrived within an hour of the test's clock") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// True when the peer closed (or reset) with nothing more unread.
    pub async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.more().await
    }

    /// Reads to the end of the stream; the bytes read past the last message.
    pub async fn drain(&mut self) -> Vec<u8> {
        while self.more().await {}
        std::mem::take(&mut self.buf)
    }

    /// Reads exactly `n` bytes.
    pub async fn bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.more().await, "closed before {n} bytes");
        }
        self.buf.drain(..n).collect()
    }

    /// A head, or `None` when the stream ends before one starts.
    async fn head(&mut self) -> Option<Message> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.more().await {
                assert!(self.buf.is_empty(), "closed inside a head: {:?}", self.buf);
                return None;
            }
        };
        let text = String::from_utf8(self.buf.drain(..end + 4).collect()).expect("text head");
        let mut lines = text.trim_end().split("\r\n");
        let start = lines.next().expect("start line").to_owned();
        let fields = lines
            .map(|l| {
                let (n, v) = l.split_once(':').expect("a field");
                (n.to_owned(), v.trim().to_owned())
            })
            .collect();
        Some(Message {
            start,
            fields,
            ..Message::default()
        })
    }

    /// The next request (body by its framing), `None` when the stream ends first.
    pub async fn request(&mut self) -> Option<Message> {
        let mut m = self.head().await?;
        self.body(&mut m, false).await;
        Some(m)
    }

    /// The next response; `head_request`: the answer to a HEAD (no body whatever its fields say).
    pub async fn response(&mut self, head_request: bool) -> Message {
        let mut m = self.head().await.expect("a response head");
        let status = m.status();
        if !(head_request || status == 101 || status == 204 || status == 304) {
            self.body(&mut m, true).await;
        }
        m
    }

    async fn body(&mut self, m: &mut Message, until_close: bool) {
        if m.field("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            m.chunked = true;
            self.chunked(m).await;
        } else if let Some(n) = m.length() {
            m.body = self.bytes(n).await;
            m.raw_body = m.body.clone();
        } else if until_close {
            while self.more().await {}
            m.body = std::mem::take(&mut self.buf);
            m.raw_body = m.body.clone();
        }
    }

    async fn chunked(&mut self, m: &mut Message) {
        loop {
            let line = self.line().await;
            m.raw_body.extend_from_slice(line.as_bytes());
            m.raw_body.extend_from_slice(b"\r\n");
            let size = line.split(';').next().expect("size").trim();
            let size = usize::from_str_radix(size, 16).expect("a chunk size");
            if size == 0 {
                loop {
                    let trailer = self.line().await;
                    m.raw_body.extend_from_slice(trailer.as_bytes());
                    m.raw_body.extend_from_slice(b"\r\n");
                    if trailer.is_empty() {
                        return;
                    }
                }
            }
            let data = self.bytes(size + 2).await;
            assert_eq!(&data[size..], b"\r\n", "chunk data ends with CRLF");
            m.body.extend_from_slice(&data[..size]);
            m.raw_body.extend_from_slice(&data);
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8(line[..i].to_vec()).expect("text line");
            }
            assert!(self.more().await, "closed inside a chunked body");
        }
    }
}

/// Why the connection served by `task` ended (waiting at most [`PATIENCE`] on the test's clock).
pub async fn ended(task: JoinHandle<Closed>) -> Closed {
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the connection did not end within an hour of the test's clock")
        .expect("the connection task panicked")
}
