//! HTTP/1.x on the wire (RFC 9112) for the forwarding engine in [`crate::transport`]: the read buffer, request
//! and response heads parsed by `httparse` into byte spans (no allocation per request), message framing,
//! and the chunked transfer coding. Which fields are hop-by-hop, and how names are compared in every
//! spelling, is [`super::names`].
//!
//! Strict by design: a head or body whose framing could be read two ways (Content-Length together with
//! Transfer-Encoding, differing Content-Lengths, a field name that reads as either without being spelled
//! so, a transfer coding other than `chunked`, a chunk line with stray bytes, bare LF inside chunked
//! framing) is an error, never a guess. Forwarded heads are rebuilt
//! field by field and chunked bodies are re-encoded, so what an upstream parses is exactly what was checked.

use std::ops::Range;

pub use super::names::{is_hop_by_hop, same_field};

/// Most header fields accepted in a request or response head (more: 431 / 502).
pub const MAX_HEADERS: usize = 128;
/// Largest request or response head, request line and fields included (larger: 431 / 502).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Size of a read buffer when bytes first arrive (a new or idle client connection holds none, see
/// [`Buffer::release`]); it grows only while a head larger than this is read, or to
/// [`BODY_READ_BYTES`] while a body streams through it.
pub const BUFFER_BYTES: usize = 2 * 1024;
/// A buffer larger than this (grown for a large head or a body) is given back between requests.
pub const KEPT_BYTES: usize = 4 * 1024;
/// Size of the read buffer while a request body streams through it (fewer, larger reads).
pub const BODY_READ_BYTES: usize = 16 * 1024;

/// A growable read buffer: `data[start..end]` holds bytes read and not yet consumed.
pub struct Buffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// The largest head it grows for ([`MAX_HEAD_BYTES`], or a client connection's `max_head_bytes`).
    limit: usize,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer::new()
    }
}

impl Buffer {
    pub fn new() -> Buffer {
        Buffer::with_limit(MAX_HEAD_BYTES)
    }

    /// A buffer that grows for heads of at most `limit` bytes (at most [`MAX_HEAD_BYTES`]); it holds
    /// no memory until the first [`Self::spare`].
    pub fn with_limit(limit: usize) -> Buffer {
        Buffer {
            data: Vec::new(),
            start: 0,
            end: 0,
            limit: limit.min(MAX_HEAD_BYTES),
        }
    }

    /// The largest head this buffer grows for.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The unconsumed bytes.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks `n` unconsumed bytes as used.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space to read into, after moving unconsumed bytes to the front (and growing up to its
    /// limit when a head does not fit). Never empty unless `len()` is at the limit.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = vec![0; BUFFER_BYTES];
        }
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < self.limit {
            self.data.resize((self.data.len() * 2).min(self.limit), 0);
        }
        &mut self.data[self.end..]
    }

    /// Records `n` bytes read into [`Self::spare`].
    pub fn filled_by(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.data.len());
    }

    /// Gives the memory back while the buffer is empty (an idle connection holds none); the next
    /// [`Self::spare`] allocates it again.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.data = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Whether [`Self::release`] gave the memory back (and nothing was read since).
    pub fn is_released(&self) -> bool {
        self.data.is_empty()
    }

    /// Grows the buffer to [`BODY_READ_BYTES`] for a body that streams through it (given back by
    /// [`Self::shrink_if_idle`] after the exchange).
    pub fn reserve_body(&mut self) {
        if self.data.len() < BODY_READ_BYTES {
            if self.data.is_empty() {
                self.data = vec![0; BODY_READ_BYTES];
                return;
            }
            self.data.resize(BODY_READ_BYTES, 0);
        }
    }

    /// Gives a buffer that grew for a large head or a body its normal size back once it is empty.
    pub fn shrink_if_idle(&mut self) {
        if self.is_empty() && self.data.len() > KEPT_BYTES {
            self.data.truncate(BUFFER_BYTES);
            self.data.shrink_to_fit();
        }
    }
}

/// Byte offsets into a head, relative to its first byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The span of `part` inside `base`; empty when `part` is empty or not inside `base` (httparse
    /// gives a static `""` reason phrase when the phrase is not UTF-8; found by fuzzing).
    fn of(base: &[u8], part: &[u8]) -> Span {
        let (b, p) = (base.as_ptr() as usize, part.as_ptr() as usize);
        if part.is_empty() || p < b || p + part.len() > b + base.len() {
            return Span::default();
        }
        let start = p - b;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// The bytes this span covers in `head`.
    pub fn get(self, head: &[u8]) -> &[u8] {
        &head[self.start as usize..self.end as usize]
    }
}

/// One header field of a parsed head.
#[derive(Clone, Copy, Debug, Default)]
pub struct Field {
    pub name: Span,
    pub value: Span,
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

impl Framing {
    /// Whether a message with this framing carries body bytes (`Content-Length: 0` does not).
    pub fn has_body(self) -> bool {
        !matches!(self, Framing::None | Framing::Length(0))
    }
}

/// Why a head was refused; each maps to one status and a description for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x syntax (bad request line, field name or value, obs-fold, control bytes).
    Syntax,
    /// The head is larger than [`MAX_HEAD_BYTES`] or has more than [`MAX_HEADERS`] fields.
    TooLarge,
    /// Content-Length is not a number, or differs between copies.
    BadContentLength,
    /// Transfer-Encoding together with Content-Length, or in an HTTP/1.0 request.
    AmbiguousFraming,
    /// A transfer coding other than exactly `chunked`.
    UnsupportedCoding,
    /// An HTTP/1.1 request without Host, or with more than one.
    BadHost,
    /// A field name that upstream frameworks read as `Content-Length` or `Transfer-Encoding`
    /// (`Content_Length`, `Content.Length`, `TransferEncoding`; see [`same_field`]) without being spelled
    /// so: a second, hidden framing.
    LookalikeFraming,
}

impl HeadError {
    /// The status a request with this error gets.
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::UnsupportedCoding => 501,
            _ => 400,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            HeadError::Syntax => "the request is not valid HTTP/1.1",
            HeadError::TooLarge => "the request head is too large",
            HeadError::BadContentLength => "the Content-Length header is invalid",
            HeadError::AmbiguousFraming => {
                "Transfer-Encoding cannot be combined with Content-Length or used in HTTP/1.0"
            }
            HeadError::UnsupportedCoding => "only the chunked transfer coding is supported",
            HeadError::BadHost => "an HTTP/1.1 request needs exactly one Host header",
            HeadError::LookalikeFraming => {
                "a header name that reads as Content-Length or Transfer-Encoding must be spelled exactly so"
            }
        }
    }
}

/// Fields the gateway recognises while parsing (compared case-insensitively).
fn is(name: &[u8], known: &str) -> bool {
    name.eq_ignore_ascii_case(known.as_bytes())
}

/// The comma-separated elements of a list-valued field, trimmed, empty ones skipped.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

/// What `Connection` and the version say about the connection, and which other fields it names.
#[derive(Clone, Copy, Debug, Default)]
struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
    /// `Connection: upgrade`.
    upgrade: bool,
    /// Some `Connection` field names another field (which is then hop-by-hop for this message).
    names_fields: bool,
}

impl ConnectionOptions {
    fn add(&mut self, value: &[u8]) {
        for token in list(value) {
            if is(token, "close") {
                self.close = true;
            } else if is(token, "keep-alive") {
                self.keep_alive = true;
            } else {
                self.upgrade |= is(token, "upgrade");
                self.names_fields = true;
            }
        }
    }

    fn persistent(self, minor: u8) -> bool {
        !self.close && (minor >= 1 || self.keep_alive)
    }
}

/// Parses one Content-Length value (a list of identical copies is allowed, RFC 9110 section 8.6).
fn content_length(value: &[u8], seen: &mut Option<u64>) -> Result<(), ()> {
    let mut any = false;
    for e in value.split(|&b| b == b',').map(|e| e.trim_ascii()) {
        if e.is_empty() || e.len() > 18 || !e.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = e.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        match *seen {
            Some(m) if m != n => return Err(()),
            _ => *seen = Some(n),
        }
        any = true;
    }
    if any {
        Ok(())
    } else {
        Err(())
    }
}

/// httparse's verdict as the head's length (`None`: incomplete), with the size limits applied.
fn head_length(
    parsed: httparse::Result<usize>,
    available: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if available >= MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Syntax),
    }
}

/// True when `name` is listed in one of the `Connection` fields among `fields`.
fn named_by_connection(fields: &[Field], head: &[u8], name: &[u8]) -> bool {
    fields.iter().any(|f| {
        is(f.name.get(head), "connection")
            && list(f.value.get(head)).any(|t| t.eq_ignore_ascii_case(name))
    })
}

/// A parsed request head. The spans point into the bytes it was parsed from.
#[derive(Debug)]
pub struct RequestHead {
    /// Length of the head in bytes, final empty line included.
    pub len: usize,
    pub method: Span,
    pub target: Span,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor: u8,
    pub fields: Vec<Field>,
    pub framing: Framing,
    /// The client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (HTTP/1.1 only).
    pub expect_continue: bool,
    /// Some `Connection` field names other fields, which must then not be forwarded.
    pub connection_names_fields: bool,
    /// The `Host` field's value (there is at most one).
    pub host: Option<Span>,
    /// The first `Authorization` field's value, and how many `Authorization` fields there are.
    pub authorization: Option<Span>,
    pub authorizations: u8,
    /// A WebSocket opening handshake: HTTP/1.1 `GET` without a body, `Connection: upgrade` and an
    /// `Upgrade` field listing `websocket`.
    pub upgrade_websocket: bool,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            len: 0,
            method: Span::default(),
            target: Span::default(),
            minor: 1,
            fields: Vec::with_capacity(32),
            framing: Framing::None,
            keep_alive: true,
            expect_continue: false,
            connection_names_fields: false,
            host: None,
            authorization: None,
            authorizations: 0,
            upgrade_websocket: false,
        }
    }
}

impl RequestHead {
    /// Parses a request head from the start of `buf` into `self` (its field list is reused). `Ok(false)`:
    /// more bytes are needed.
    pub fn parse(&mut self, buf: &[u8]) -> Result<bool, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let Some(len) = head_length(req.parse(buf), buf.len())? else {
            return Ok(false);
        };
        let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(HeadError::Syntax);
        };
        self.len = len;
        self.method = Span::of(buf, method.as_bytes());
        self.target = Span::of(buf, target.as_bytes());
        self.minor = minor;
        self.fields.clear();
        let mut conn = ConnectionOptions::default();
        let (mut length, mut te, mut chunked, mut hosts) = (None, false, false, 0);
        self.expect_continue = false;
        self.host = None;
        self.authorization = None;
        self.authorizations = 0;
        let mut websocket = false;
        for h in req.headers.iter() {
            let (name, value) = (h.name.as_bytes(), h.value);
            self.fields.push(Field {
                name: Span::of(buf, name),
                value: Span::of(buf, value),
            });
            if is(name, "authorization") {
                self.authorizations = self.authorizations.saturating_add(1);
                self.authorization.get_or_insert(Span::of(buf, value));
            } else if is(name, "content-length") {
                content_length(value, &mut length).map_err(|_| HeadError::BadContentLength)?;
            } else if is(name, "transfer-encoding") {
                for coding in list(value) {
                    // `chunked` must be the only coding, once: anything else is not framing we forward.
                    if chunked || !is(coding, "chunked") {
                        return Err(HeadError::UnsupportedCoding);
                    }
                    chunked = true;
                }
                te = true;
            } else if is(name, "connection") {
                conn.add(value);
            } else if is(name, "upgrade") {
                websocket |= list(value).any(|p| is(p, "websocket"));
            } else if is(name, "host") {
                hosts += 1;
                self.host = Some(Span::of(buf, value));
            } else if is(name, "expect") && minor >= 1 {
                self.expect_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            } else if same_field(name, b"content-length") || same_field(name, b"transfer-encoding")
            {
                return Err(HeadError::LookalikeFraming);
            }
        }
        self.framing = match (te, length) {
            (true, Some(_)) => return Err(HeadError::AmbiguousFraming),
            (true, None) if minor == 0 => return Err(HeadError::AmbiguousFraming),
            (true, None) if !chunked => return Err(HeadError::UnsupportedCoding),
            (true, None) => Framing::Chunked,
            (false, None) => Framing::None,
            // `Content-Length: 0` is kept (and forwarded): some upstreams want it on a POST.
            (false, Some(n)) => Framing::Length(n),
        };
        if minor >= 1 && hosts != 1 || hosts > 1 {
            return Err(HeadError::BadHost);
        }
        self.keep_alive = conn.persistent(minor);
        self.connection_names_fields = conn.names_fields;
        self.upgrade_websocket = websocket
            && conn.upgrade
            && minor >= 1
            && self.framing == Framing::None
            && self.method.get(buf) == b"GET";
        Ok(true)
    }

    /// True when `name` is listed in one of this request's `Connection` fields.
    pub fn named_by_connection(&self, head: &[u8], name: &[u8]) -> bool {
        self.connection_names_fields && named_by_connection(&self.fields, head, name)
    }
}

/// A parsed response head. The spans point into the bytes it was parsed from.
#[derive(Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Span,
    pub minor: u8,
    pub fields: Vec<Field>,
    pub framing: Framing,
    /// The upstream allows the connection to be reused after this response.
    pub keep_alive: bool,
    pub connection_names_fields: bool,
}

impl Default for ResponseHead {
    fn default() -> Self {
        ResponseHead {
            len: 0,
            status: 0,
            reason: Span::default(),
            minor: 1,
            fields: Vec::with_capacity(32),
            framing: Framing::None,
            keep_alive: true,
            connection_names_fields: false,
        }
    }
}

impl ResponseHead {
    /// Parses a response head from the start of `buf`; `head_request` says the request was HEAD (no body
    /// follows whatever the fields say). `Ok(false)`: more bytes are needed.
    pub fn parse(&mut self, buf: &[u8], head_request: bool) -> Result<bool, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let Some(len) = head_length(res.parse(buf), buf.len())? else {
            return Ok(false);
        };
        let (Some(status), Some(minor)) = (res.code, res.version) else {
            return Err(HeadError::Syntax);
        };
        self.len = len;
        self.status = status;
        self.reason = Span::of(buf, res.reason.unwrap_or("").as_bytes());
        self.minor = minor;
        self.fields.clear();
        let mut conn = ConnectionOptions::default();
        let (mut length, mut te, mut codings) = (None, false, 0usize);
        let mut chunked = false;
        for h in res.headers.iter() {
            let (name, value) = (h.name.as_bytes(), h.value);
            self.fields.push(Field {
                name: Span::of(buf, name),
                value: Span::of(buf, value),
            });
            if is(name, "content-length") {
                content_length(value, &mut length).map_err(|_| HeadError::BadContentLength)?;
            } else if is(name, "transfer-encoding") {
                te = true;
                for coding in list(value) {
                    codings += 1;
                    chunked = is(coding, "chunked");
                }
            } else if is(name, "connection") {
                conn.add(value);
            }
        }
        // The gateway relays only the chunked coding: it drops Transfer-Encoding (hop-by-hop) and
        // re-frames, which would pass on other codings' bytes as if they were content (RFC 9112 6.1).
        if te && (codings != 1 || !chunked || minor == 0) {
            return Err(HeadError::UnsupportedCoding);
        }
        let bodiless = head_request || status < 200 || status == 204 || status == 304;
        self.framing = if bodiless {
            Framing::None
        } else if te {
            // Transfer-Encoding (exactly `chunked` here) overrides Content-Length (RFC 9112 section 6.3).
            Framing::Chunked
        } else {
            match length {
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        if self.framing == Framing::Length(0) {
            self.framing = Framing::None;
        }
        self.keep_alive = conn.persistent(minor) && self.framing != Framing::Close;
        self.connection_names_fields = conn.names_fields;
        Ok(true)
    }

    /// True when `name` is listed in one of this response's `Connection` fields.
    pub fn named_by_connection(&self, head: &[u8], name: &[u8]) -> bool {
        self.connection_names_fields && named_by_connection(&self.fields, head, name)
    }
}

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A byte that does not belong where it is (bad hex, bare LF, missing CRLF after data, control bytes).
    Syntax,
    /// A chunk size over 2^60, a chunk line or the trailer section too long.
    TooLarge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size (`digits` so far).
    Size,
    /// After `;`: extension bytes up to CR.
    Extension,
    /// After the CR that ends a size line.
    SizeLf,
    /// Chunk data: `remaining` bytes to go.
    Data,
    /// After the data: expecting CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// After the CR of a trailer line / of the final empty line.
    TrailerLf,
    FinalLf,
    Done,
}

/// What [`ChunkedDecoder::decode`] found in its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body data at this range of the input (framing before it consumed).
    Data(Range<usize>),
    /// All input was framing; more is needed.
    More,
    /// The message ended; bytes after `consumed` belong to the next message.
    End,
}

/// An incremental, strict decoder of the chunked transfer coding (RFC 9112 section 7.1). Extensions and
/// trailer fields are checked and dropped.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    remaining: u64,
    digits: u8,
    /// Bytes of the current size line (extensions) or of the trailer section so far.
    line: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            remaining: 0,
            digits: 0,
            line: 0,
        }
    }
}

const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Reads framing from `input` until body data, the end of the message, or the end of the input.
    /// Returns the bytes consumed (data included) and what was found.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Chunk), ChunkError> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(ChunkError::TooLarge);
                        }
                        let d = (b as char).to_digit(16).expect("hex") as u64;
                        self.remaining = self.remaining * 16 + d;
                        self.digits += 1;
                    }
                    b';' if self.digits > 0 => {
                        self.state = Extension;
                        self.line = 0;
                    }
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err(ChunkError::Syntax),
                },
                Extension => match b {
                    b'\r' => self.state = SizeLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {
                        self.line += 1;
                        if self.line > MAX_CHUNK_LINE {
                            return Err(ChunkError::TooLarge);
                        }
                    }
                    _ => return Err(ChunkError::Syntax),
                },
                SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Syntax);
                    }
                    self.digits = 0;
                    if self.remaining == 0 {
                        self.state = TrailerStart;
                        self.line = 0;
                    } else {
                        self.state = Data;
                    }
                }
                Data => {
                    let n = (input.len() - i)
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = DataCr;
                    }
                    return Ok((i + n, Chunk::Data(i..i + n)));
                }
                DataCr => self.state = expect(b, b'\r', DataLf)?,
                DataLf => self.state = expect(b, b'\n', Size)?,
                TrailerStart => match b {
                    b'\r' => self.state = FinalLf,
                    // A field line starts with a name character: no obs-fold, no stray whitespace.
                    b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'..=b'`' | b'|' | b'~' => {
                        self.state = Trailer
                    }
                    b if b.is_ascii_alphanumeric() => self.state = Trailer,
                    _ => return Err(ChunkError::Syntax),
                },
                Trailer => match b {
                    b'\r' => self.state = TrailerLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                    _ => return Err(ChunkError::Syntax),
                },
                TrailerLf => self.state = expect(b, b'\n', TrailerStart)?,
                FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Syntax);
                    }
                    self.state = Done;
                    return Ok((i + 1, Chunk::End));
                }
                Done => return Ok((i, Chunk::End)),
            }
            if matches!(self.state, TrailerStart | Trailer | TrailerLf | FinalLf) {
                self.line += 1;
                if self.line > MAX_TRAILERS {
                    return Err(ChunkError::TooLarge);
                }
            }
            i += 1;
        }
        if self.state == Done {
            return Ok((i, Chunk::End));
        }
        Ok((i, Chunk::More))
    }
}

/// The next state if `b` is the one byte allowed here.
fn expect(b: u8, want: u8, next: ChunkState) -> Result<ChunkState, ChunkError> {
    if b == want {
        Ok(next)
    } else {
        Err(ChunkError::Syntax)
    }
}

/// Appends `data` as one chunk of the chunked coding.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends a decimal number.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `name: value\r\n`.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> Result<RequestHead, HeadError> {
        let mut h = RequestHead::default();
        assert!(h.parse(raw.as_bytes())?, "incomplete: {raw:?}");
        Ok(h)
    }

    #[test]
    fn lookalike_framing_fields_are_refused() {
        for name in [
            "Transfer_Encoding",
            "transfer--encoding",
            "Transfer---Encoding",
            "TRANSFER_ENCODING",
            "Content_Length",
            "content__length",
            "Content-_Length",
            "Content.Length",
            "ContentLength",
            "content-length-",
            "Transfer~Encoding",
            "transfer.encoding",
            "TransferEncoding",
            "-Transfer-Encoding",
        ] {
            let raw =
                format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n{name}: 0\r\n\r\n");
            assert_eq!(
                request(&raw).unwrap_err(),
                HeadError::LookalikeFraming,
                "{name}"
            );
            assert_eq!(HeadError::LookalikeFraming.status(), 400);
        }
        let h = request("GET / HTTP/1.1\r\nHost: h\r\nX-Content-Length: 4\r\nauthorization: a\r\nAuthorization: b\r\n\r\n").unwrap();
        assert_eq!(h.authorizations, 2);
        assert_eq!(h.authorization.unwrap().get(b"GET / HTTP/1.1\r\nHost: h\r\nX-Content-Length: 4\r\nauthorization: a\r\nAuthorization: b\r\n\r\n"), b"a");
    }

    #[test]
    fn request_heads_and_framing() {
        let raw = "POST /iot/a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
        let h = request(raw).unwrap();
        assert_eq!(h.len, raw.len() - 5);
        assert_eq!(h.method.get(raw.as_bytes()), b"POST");
        assert_eq!(h.target.get(raw.as_bytes()), b"/iot/a?x=1");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.fields.len(), 3);

        let h =
            request("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = request("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 7, 7\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Length(7));
        let h = request("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        let h = request("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = request(
            "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
        )
        .unwrap();
        assert!(h.expect_continue);

        let mut partial = RequestHead::default();
        assert_eq!(partial.parse(b"GET / HTTP/1.1\r\nHost: h\r\n"), Ok(false));
    }

    #[test]
    fn ambiguous_or_unsupported_framing_is_refused() {
        for (raw, want) in [
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::AmbiguousFraming),
            ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", HeadError::AmbiguousFraming),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::AmbiguousFraming),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", HeadError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n", HeadError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n", HeadError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", HeadError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", HeadError::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", HeadError::UnsupportedCoding),
            ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HeadError::UnsupportedCoding),
            ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::UnsupportedCoding),
            ("GET / HTTP/1.1\r\n\r\n", HeadError::BadHost),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", HeadError::BadHost),
            ("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", HeadError::Syntax),
            ("GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n", HeadError::Syntax),
            ("GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n", HeadError::Syntax),
            ("GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n", HeadError::Syntax),
            ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", HeadError::Syntax),
        ] {
            assert_eq!(request(raw).unwrap_err(), want, "{raw:?}");
        }
        let mut big = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_HEAD_BYTES));
        assert_eq!(RequestHead::default().parse(&big), Err(HeadError::TooLarge));
    }

    #[test]
    fn connection_named_fields() {
        let raw = "GET / HTTP/1.1\r\nHost: h\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\r\n";
        let h = request(raw).unwrap();
        assert!(h.named_by_connection(raw.as_bytes(), b"x-secret"));
        assert!(!h.named_by_connection(raw.as_bytes(), b"host"));
    }

    #[test]
    fn response_framing() {
        let parse = |raw: &str, head: bool| {
            let mut r = ResponseHead::default();
            assert!(r.parse(raw.as_bytes(), head).unwrap());
            r
        };
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false);
        assert_eq!(
            (r.status, r.framing, r.keep_alive),
            (200, Framing::Length(3), true)
        );
        assert_eq!(r.reason.get(b"HTTP/1.1 200 OK\r\n"), b"OK");
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true);
        assert_eq!(r.framing, Framing::None);
        let r = parse("HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!((r.framing, r.keep_alive), (Framing::None, true));
        let r = parse("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((r.framing, r.keep_alive), (Framing::Close, false));
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!(r.framing, Framing::Chunked);
        let r = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!r.keep_alive);
        let r = parse("HTTP/1.1 100 Continue\r\n\r\n", false);
        assert_eq!(r.framing, Framing::None);
        // A reason phrase that is not UTF-8 (found by fuzzing): parsed, relayed without a phrase.
        let raw = b"HTTP/1.1 200 O\xff\xff\r\nContent-Length: 3\r\n\r\nabc";
        let mut r = ResponseHead::default();
        assert!(r.parse(raw, false).unwrap());
        assert_eq!(
            (r.reason.get(raw), r.framing),
            (&b""[..], Framing::Length(3))
        );
        let mut r = ResponseHead::default();
        assert_eq!(
            r.parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(HeadError::BadContentLength)
        );
        for coded in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                ResponseHead::default().parse(coded, false),
                Err(HeadError::UnsupportedCoding),
                "{}",
                String::from_utf8_lossy(coded)
            );
        }
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        // Feed one byte at a time: the decoder must not depend on how reads are split.
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let (n, c) = d.decode(&input[pos..pos + 1])?;
            if let Chunk::Data(r) = &c {
                out.extend_from_slice(&input[pos + r.start..pos + r.end]);
            }
            pos += n;
            if c == Chunk::End {
                return Ok((out, pos));
            }
        }
        Err(ChunkError::Syntax)
    }

    #[test]
    fn chunked_decoding() {
        let (data, used) =
            decode_all(b"5\r\nhello\r\n1;ext=\"v\"\r\n!\r\n0\r\nX-T: 1\r\n\r\nGET").unwrap();
        assert_eq!(data, b"hello!");
        assert_eq!(
            used,
            b"5\r\nhello\r\n1;ext=\"v\"\r\n!\r\n0\r\nX-T: 1\r\n\r\n".len()
        );
        let mut d = ChunkedDecoder::default();
        assert_eq!(
            d.decode(b"3\r\nabc\r\n0\r\n\r\nrest").unwrap(),
            (6, Chunk::Data(3..6))
        );
        assert_eq!(d.decode(b"\r\n0\r\n\r\nrest").unwrap(), (7, Chunk::End));
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"g\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"0\r\n\n",
            b"0\r\n X: folded\r\n\r\n",
            b"1;a\x00\r\nx\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode_all(b"1000000000000000\r\n"),
            Err(ChunkError::TooLarge)
        );
    }

    #[test]
    fn chunked_encoding_round_trips() {
        let mut out = Vec::new();
        encode_chunk(&mut out, &[7u8; 300]);
        encode_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert!(out.starts_with(b"12c\r\n"));
        let (data, used) = decode_all(&out).unwrap();
        assert_eq!((data.len(), used), (300, out.len()));
        let mut n = Vec::new();
        push_decimal(&mut n, 1234567890);
        assert_eq!(n, b"1234567890");
    }

    #[test]
    fn buffer_compacts_and_grows_only_for_heads() {
        let mut b = Buffer::new();
        let s = b.spare().len();
        b.filled_by(s);
        b.consume(10);
        assert_eq!(b.spare().len(), 10);
        b.filled_by(10);
        assert_eq!(b.len(), s);
        assert!(!b.spare().is_empty(), "grows while below the head limit");
        // Grown past what is kept between requests: given back once empty.
        while b.len() <= KEPT_BYTES {
            let n = b.spare().len();
            b.filled_by(n);
        }
        b.consume(b.len());
        b.shrink_if_idle();
        assert_eq!(b.spare().len(), BUFFER_BYTES);
        // An idle buffer holds nothing until bytes come again.
        b.release();
        assert!(b.is_released());
        assert_eq!(b.spare().len(), BUFFER_BYTES);
        assert!(
            Buffer::new().is_released(),
            "a new buffer holds no memory yet"
        );
    }
}
