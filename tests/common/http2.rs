//! A real HTTP/2 client (the `h2` crate) for the harness: connections over TLS with ALPN `h2` or h2c with
//! prior knowledge, and [`exchange`], which sends an HTTP/1.1 request written as bytes (what the suites'
//! `request`/`raw` helpers build) as one HTTP/2 stream, so the gateway suite runs over HTTP/2 unchanged.
//!
//! The translation is what a browser or an HTTP/2 proxy would send for the same request: the request line
//! becomes `:method`, `:scheme` and `:path`; `Host` becomes `:authority`; the connection-specific fields
//! HTTP/2 forbids (`connection`, `keep-alive`, `proxy-connection`, `transfer-encoding`, `upgrade`) are left
//! out, and a chunked body is sent decoded. Every other field goes as written, lower-cased (HTTP/2 names are
//! lower case), in order, repeated fields repeated, and values byte for byte, even those a well-behaved
//! client would refuse to send (the tests of control characters need them on the wire).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};

use super::{tls, Gateway, RawResponse};

pub type Send2 = h2::client::SendRequest<Bytes>;

/// An HTTP/2 connection over TLS to the gateway's TLS listener, offering `h2` and `http/1.1`; panics
/// unless `h2` is negotiated.
pub async fn tls_connect(gw: &Gateway, options: &tls::ClientOptions) -> io::Result<Send2> {
    let mut config = (*gw.tls_client(options)).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.tls_addr()).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "h2 negotiated"
    );
    handshake(stream).await
}

/// An h2c (prior knowledge) connection to `addr`.
pub async fn h2c(addr: SocketAddr) -> io::Result<Send2> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    handshake(tcp).await
}

/// The client side of the HTTP/2 handshake over `io`; the connection is driven by a spawned task.
pub async fn handshake<T>(io: T) -> io::Result<Send2>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.map_err(to_io)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.map_err(to_io)
}

fn to_io(e: h2::Error) -> io::Error {
    io::Error::other(format!("h2: {e}"))
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2): a translating client leaves them out.
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Sends the HTTP/1.1 request in `request` as one stream on a new HTTP/2 connection over TLS and reads
/// the answer. A stream or connection the gateway resets is an `Err` naming the reason.
pub fn exchange(gw: &Gateway, request: &[u8]) -> io::Result<RawResponse> {
    let (head, body) = translate(request)?;
    // On a thread of its own: the suites call this from async tests too, where a runtime cannot block.
    std::thread::scope(|scope| {
        scope
            .spawn(|| exchange_on_own_runtime(gw, head, body))
            .join()
            .expect("the HTTP/2 exchange panicked")
    })
}

fn exchange_on_own_runtime(
    gw: &Gateway,
    head: Request<()>,
    body: Vec<u8>,
) -> io::Result<RawResponse> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut send = tls_connect(gw, &tls::ClientOptions::default()).await?;
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            send_one(&mut send, head, body),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 answer within 60 s"))?;
        answer
    })
}

/// Sends one request with `body` (none when empty) and reads the whole answer.
pub async fn send_one(
    send: &mut Send2,
    head: Request<()>,
    body: Vec<u8>,
) -> io::Result<RawResponse> {
    let mut ready = send.clone().ready().await.map_err(to_io)?;
    let (response, mut stream) = ready.send_request(head, body.is_empty()).map_err(to_io)?;
    if !body.is_empty() {
        stream.send_data(body.into(), true).map_err(to_io)?;
    }
    let response = response
        .await
        .map_err(|e| io::Error::other(format!("h2, waiting for the response head: {e}")))?;
    let (parts, mut body) = response.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| io::Error::other(format!("h2, reading the body: {e}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(RawResponse {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: out,
    })
}

/// The HTTP/2 request (head and decoded body) that stands for the HTTP/1.1 request in `bytes`.
pub fn translate(bytes: &[u8]) -> io::Result<(Request<()>, Vec<u8>)> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Request::new(&mut fields);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => return Err(invalid(format!("not a whole HTTP/1.1 head: {other:?}"))),
    };
    let method = parsed.method.unwrap_or("GET");
    let target = parsed.path.unwrap_or("/");
    let mut authority = "localhost".to_owned();
    let mut chunked = false;
    let mut builder = Request::builder().method(method);
    for field in parsed.headers.iter() {
        let name = field.name.to_ascii_lowercase();
        if name == "host" {
            authority = String::from_utf8_lossy(field.value).into_owned();
            continue;
        }
        if name == "transfer-encoding" {
            chunked = field.value.eq_ignore_ascii_case(b"chunked");
        }
        if CONNECTION_SPECIFIC.contains(&name.as_str()) {
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| invalid(format!("field name {name:?}: {e}")))?;
        // Byte for byte: the tests of control characters need the bytes a careful client would refuse.
        let value = HeaderValue::from_bytes(field.value).unwrap_or_else(|_| {
            // SAFETY: a HeaderValue is bytes; `from_maybe_shared_unchecked` only skips the check that
            // would refuse them, which is what the test wants to put on the wire.
            unsafe { HeaderValue::from_maybe_shared_unchecked(Bytes::copy_from_slice(field.value)) }
        });
        builder = builder.header(name, value);
    }
    let uri = format!("https://{authority}{target}");
    let head = builder
        .uri(uri.as_str())
        .body(())
        .map_err(|e| invalid(format!("request {method} {uri}: {e}")))?;
    let rest = &bytes[head_len..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok((head, body))
}

/// The payload of a chunked body (extensions and trailers dropped).
fn dechunk(mut rest: &[u8]) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "bad chunked body");
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).ok_or_else(bad)?);
        rest = rest.get(size + 2..).ok_or_else(bad)?;
    }
}
