//! Request and response heads: parsed by `httparse` into byte spans (no allocation per request), the
//! fields that frame a message (Content-Length, Transfer-Encoding, Connection), and why a head is refused.

use super::{same_field, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::gateway::answer::Answer;

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
    /// The answer a request with this error gets.
    pub fn answer(self) -> Answer {
        match self {
            HeadError::TooLarge => Answer::HeadTooLarge,
            HeadError::UnsupportedCoding => Answer::NotImplemented,
            _ => Answer::InvalidRequest,
        }
    }

    /// The status a request with this error gets.
    pub fn status(self) -> u16 {
        self.answer().status()
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
}
