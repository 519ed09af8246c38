//! The admin listener's connection handling, bounded like the gateway's: at most `[admin]
//! max_connections` open at once (503 beyond), a request head of at most [`MAX_HEAD`] bytes that must
//! arrive within `[gateway] header_timeout` (counted from the start of the wait, so an idle keep-alive
//! connection and a trickled head are cut alike), and the rest of the exchange (body read, answer
//! written) within the same time again. pingora's HTTP/1 server underneath would otherwise hold a head of
//! up to 1 MB and wait 60 s per read, so a trickle could hold a connection forever.

use super::Admin;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::server::ShutdownWatch;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The longest request head read, as on the gateway's listeners.
pub const MAX_HEAD: usize = 64 * 1024;

/// The admin application behind its bounds.
pub struct AdminListener {
    http: Arc<AdminHttp>,
    open: AtomicUsize,
    max_connections: usize,
}

impl AdminListener {
    pub fn new(admin: Admin, max_connections: usize, header_timeout: Duration) -> AdminListener {
        AdminListener {
            http: Arc::new(AdminHttp {
                admin,
                header_timeout,
            }),
            open: AtomicUsize::new(0),
            max_connections,
        }
    }
}

/// One open connection counted; given back when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer past `max_connections`.
fn busy() -> Vec<u8> {
    let body = crate::gateway::answer::error_body(
        "overloaded",
        "too many open admin connections; retry later",
    );
    let body = String::from_utf8(body).expect("JSON is UTF-8");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Retry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[async_trait]
impl ServerApp for AdminListener {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let _counted = Counted(&self.open);
        if before >= self.max_connections {
            // Answer at once, then read (and drop) what the client already sent before closing, so the
            // kernel does not reset the connection over the answer.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                stream.write_all(&busy()).await?;
                stream.flush().await?;
                let mut sink = [0u8; 4096];
                let mut drained = 0;
                while drained < MAX_HEAD {
                    match stream.read(&mut sink).await? {
                        0 => break,
                        n => drained += n,
                    }
                }
                io::Result::Ok(())
            })
            .await;
            return None;
        }
        let stream: Stream = Box::new(HeadLimited::new(stream));
        self.http.process_new(stream, shutdown).await
    }
}

/// The HTTP exchange with its time bounds (pingora's `ServeHttp` loop, with deadlines).
struct AdminHttp {
    admin: Admin,
    header_timeout: Duration,
}

#[async_trait]
impl HttpServerApp for AdminHttp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // The head (and, on a reused connection, the idle wait before it) within header_timeout.
        match tokio::time::timeout(self.header_timeout, http.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Ok(Err(_)) | Err(_) => return None,
        }
        let keepalive = if *shutdown.borrow() {
            None
        } else {
            Some(self.header_timeout.as_secs().max(1))
        };
        http.set_keepalive(keepalive);
        http.set_read_timeout(Some(self.header_timeout));
        http.set_write_timeout(Some(self.header_timeout));
        let exchange = async {
            let response = self.admin.response(&mut http).await;
            let (parts, body) = response.into_parts();
            let head: pingora::http::ResponseHeader = parts.into();
            http.write_response_header(Box::new(head)).await.ok()?;
            if !body.is_empty() {
                http.write_response_body(body.into(), true).await.ok()?;
            }
            Some(())
        };
        // The body read and the answer written within the same time again.
        tokio::time::timeout(self.header_timeout, exchange)
            .await
            .ok()
            .flatten()?;
        let settings = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}

/// Counts a request head's bytes up to its blank line, refusing more than [`MAX_HEAD`].
#[derive(Debug)]
struct HeadCounter {
    /// Bytes of the current head read so far; `None` once the head is complete.
    head: Option<usize>,
    /// The last bytes seen, to find `\r\n\r\n` across reads.
    tail: u32,
}

impl HeadCounter {
    fn new() -> HeadCounter {
        HeadCounter {
            head: Some(0),
            tail: 0,
        }
    }

    /// Accounts `bytes` just read; `Err` when the head grew past the limit.
    fn saw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(mut n) = self.head else {
            return Ok(());
        };
        for &b in bytes {
            n += 1;
            self.tail = (self.tail << 8) | u32::from(b);
            if self.tail == u32::from_be_bytes(*b"\r\n\r\n") {
                self.head = None;
                return Ok(());
            }
            if n > MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request head too long",
                ));
            }
        }
        self.head = Some(n);
        Ok(())
    }
}

/// A stream that refuses a request head longer than [`MAX_HEAD`]: from each write (an answer) on, it
/// counts the bytes read until the blank line that ends the next head, and fails the read past the
/// limit (pingora then drops the connection). Body bytes are not counted here (the API bounds them).
#[derive(Debug)]
struct HeadLimited {
    inner: Stream,
    counter: HeadCounter,
}

impl HeadLimited {
    fn new(inner: Stream) -> HeadLimited {
        HeadLimited {
            inner,
            counter: HeadCounter::new(),
        }
    }
}

impl AsyncRead for HeadLimited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if let Err(e) = this.counter.saw(&buf.filled()[before..]) {
                return Poll::Ready(Err(e));
            }
        }
        polled
    }
}

impl AsyncWrite for HeadLimited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // An answer is going out: what is read next is the next request's head.
        self.counter = HeadCounter::new();
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadLimited {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for HeadLimited {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadLimited {}

impl GetTimingDigest for HeadLimited {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for HeadLimited {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeadLimited {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HeadLimited {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_counted_up_to_their_blank_line() {
        let mut c = HeadCounter::new();
        assert!(c.saw(b"GET / HTTP/1.1\r\nHost: x\r").is_ok());
        assert!(c.saw(b"\n\r\n").is_ok());
        assert_eq!(c.head, None);
        // Body bytes after the head are not counted.
        assert!(c.saw(&vec![b'x'; 2 * MAX_HEAD]).is_ok());
        let mut c = HeadCounter::new();
        assert!(c.saw(&vec![b'a'; MAX_HEAD]).is_ok());
        assert!(c.saw(b"a").is_err());
        let mut c = HeadCounter::new();
        assert!(c.saw(&vec![b'a'; MAX_HEAD - 4]).is_ok());
        assert!(c.saw(b"\r\n\r\n").is_ok());
        assert_eq!(c.head, None);
    }
}
