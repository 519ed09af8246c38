//! Request targets and the path check that runs before routing.
//!
//! Paths are checked, not normalised: rather than normalise `/iot/../video` (and risk matching one form
//! while an upstream interprets another), every spelling that some upstream could resolve across a route
//! boundary is refused with 400:
//! - dot segments (`.`, `..`), also with path parameters (`..;x`, the Tomcat/Jetty spelling);
//! - empty segments (`//`), backslashes;
//! - percent-encoded `.`, `/`, `\` and control bytes (`%00`), and malformed escapes;
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) and `;` (`%3B`): an
//!   upstream decodes `/api/%61dmin` to `/api/admin` (RFC 3986 §6.2.2.2 makes them the same path), so
//!   routing on the raw spelling would let a request onto another route than the one it was checked for;
//! - double encodings of those (`%252e`, `%2561`, `%25%32%65`: what a server that decodes twice reads as
//!   `.` or `a`).
//!
//! The path that matched is then byte for byte the path that is forwarded.

/// Why a path was refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path is not an origin-form path starting with `/`.
    NotAbsolute,
    /// A `.` or `..` segment, possibly percent-encoded or with path parameters.
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A backslash, or a percent-encoded `/` or `\`.
    EncodedSeparator,
    /// A percent-encoded control byte (`%00`...`%1f`, `%7f`) or a `%` not followed by two hex digits.
    BadEscape,
    /// An escape of an escape (`%25` followed by an encoded `.`, `/`, `\`, `%`, control byte,
    /// unreserved character or `;`).
    DoubleEncoded,
    /// A percent-encoded unreserved character (`%61` for `a`) or `;` (`%3B`): the same path as the
    /// decoded spelling to an upstream, but another path to routing.
    EncodedUnreserved,
}

impl PathError {
    pub fn describe(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with '/'",
            PathError::DotSegment => "the request path contains a '.' or '..' segment",
            PathError::EmptySegment => "the request path contains an empty segment ('//')",
            PathError::EncodedSeparator => {
                "the request path contains a backslash or an encoded '/', '\\' or '.'"
            }
            PathError::BadEscape => {
                "the request path contains an encoded control character or a malformed '%' escape"
            }
            PathError::DoubleEncoded => "the request path contains a double-encoded character",
            PathError::EncodedUnreserved => {
                "the request path contains a percent-encoded letter, digit, '-', '_', '~' or ';': send it unencoded"
            }
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The byte at `i` once percent-decoded, and how many raw bytes it took (1, or 3 for `%XX`).
fn decoded_at(b: &[u8], i: usize) -> Result<Option<(u8, usize, bool)>, PathError> {
    match b.get(i) {
        None => Ok(None),
        Some(b'%') => {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            Ok(Some((h << 4 | l, 3, true)))
        }
        Some(&c) => Ok(Some((c, 1, false))),
    }
}

/// Unreserved characters (RFC 3986 §2.3) and `;`: their encoded and plain spellings are the same path
/// to an upstream, so only the plain one is accepted.
fn unreserved_or_semicolon(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b';')
}

/// Bytes whose encoded form must never reach an upstream (it may decode and act on them).
fn dangerous(c: u8) -> bool {
    matches!(c, b'.' | b'/' | b'\\' | b'%') || c < 0x20 || c == 0x7f || unreserved_or_semicolon(c)
}

/// Checks a request path (without query) for the spellings that could cross a route boundary.
pub fn check_path(path: &str) -> Result<(), PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Most paths have neither escapes nor backslashes: one scan for both skips the decoding walk.
    if b.iter().any(|&c| c == b'%' || c == b'\\') {
        check_escapes(b)?;
    }
    // Segments between slashes; the first is the empty string before the leading '/'. A segment's path
    // parameters (`;...`) are ignored for the dot check: `..;x` is `..` to servers that strip them.
    let mut segments = b[1..].split(|&c| c == b'/').peekable();
    while let Some(seg) = segments.next() {
        let name = seg.split(|&c| c == b';').next().unwrap_or_default();
        match name {
            b"." | b".." => return Err(PathError::DotSegment),
            // A trailing slash ("/iot/") gives one empty last segment, which is fine.
            b"" if segments.peek().is_some() => return Err(PathError::EmptySegment),
            _ => {}
        }
    }
    Ok(())
}

/// The escape rules of [`check_path`]: backslashes, encoded separators, dots and control bytes, malformed
/// and double encodings.
fn check_escapes(b: &[u8]) -> Result<(), PathError> {
    let mut i = 0;
    while let Some((c, n, escaped)) = decoded_at(b, i)? {
        if c == b'\\' && !escaped {
            return Err(PathError::EncodedSeparator);
        }
        if escaped {
            match c {
                b'.' => return Err(PathError::DotSegment),
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                c if c < 0x20 || c == 0x7f => return Err(PathError::BadEscape),
                c if unreserved_or_semicolon(c) => return Err(PathError::EncodedUnreserved),
                b'%' => {
                    // What a second decoding would see: the next two (once-decoded) bytes as an escape.
                    let first = decoded_at(b, i + n)?;
                    let second =
                        first.and_then(|(_, n1, _)| decoded_at(b, i + n + n1).ok().flatten());
                    if let (Some((h, ..)), Some((l, ..))) = (first, second) {
                        if let (Some(h), Some(l)) = (hex(h), hex(l)) {
                            if dangerous(h << 4 | l) {
                                return Err(PathError::DoubleEncoded);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        i += n;
    }
    Ok(())
}

/// The authority of an absolute-form target (`http://HOST:PORT/...` gives `HOST:PORT`).
pub fn authority(target: &[u8]) -> Option<&[u8]> {
    let rest = strip_scheme(target)?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    if target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        Some(&target[7..])
    } else if target.len() >= 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        Some(&target[8..])
    } else {
        None
    }
}

/// The path and query of a request target in origin form; absolute-form targets give their path (the
/// path that matched is the path forwarded). `None` for `*` and authority-form.
pub fn origin_form(target: &[u8]) -> Option<(&str, Option<&str>)> {
    let pq = if target.first() == Some(&b'/') {
        target
    } else {
        let rest = strip_scheme(target)?;
        match rest.iter().position(|&b| b == b'/' || b == b'?') {
            Some(i) if rest[i] == b'/' => &rest[i..],
            _ => b"/",
        }
    };
    let pq = std::str::from_utf8(pq).ok()?;
    Some(match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tricks_are_refused() {
        for p in [
            "/iot/../video",
            "/iot/./x",
            "/iot/%2e%2e/video",
            "/iot/%2E./video",
            "/iot%2fvideo",
            "/iot%2Fx",
            "/iot//x",
            "//iot",
            "/iot\\x",
            "/iot/%5cx",
            "/..",
            "/iot/..",
        ] {
            assert!(check_path(p).is_err(), "{p}");
        }
        assert_eq!(check_path("iot"), Err(PathError::NotAbsolute));
        for p in [
            "/",
            "/iot",
            "/iot/",
            "/iot/a.b",
            "/iot/..a",
            "/iot/%20x",
            "/iot/a%25",
            "/iot/a%2520",
            "/iot/%E2%82%AC",
            "/iot/a%3Fb%23c%2Bd%40",
            "/iot;jsessionid=1/x",
            "/iot/a;b/c",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn smuggling_spellings_are_refused() {
        let cases = [
            ("/public/..;/secret", PathError::DotSegment),
            ("/public/..;a/secret", PathError::DotSegment),
            ("/public/.;/secret", PathError::DotSegment),
            ("/public/%252e%252e/secret", PathError::DoubleEncoded),
            ("/public/%252E./secret", PathError::DoubleEncoded),
            ("/public/%252fsecret", PathError::DoubleEncoded),
            ("/public/%255csecret", PathError::DoubleEncoded),
            ("/public/%25252e", PathError::DoubleEncoded),
            (
                "/public/%25%32%65%25%32%65/secret",
                PathError::DoubleEncoded,
            ),
            ("/public/..%00/secret", PathError::BadEscape),
            ("/public/%0a", PathError::BadEscape),
            ("/public/%7F", PathError::BadEscape),
            ("/public/%zz", PathError::BadEscape),
            ("/public/%2", PathError::BadEscape),
            ("/public/%", PathError::BadEscape),
            ("/public/%2561dmin", PathError::DoubleEncoded),
            ("/public/%253B", PathError::DoubleEncoded),
        ];
        for (p, want) in cases {
            assert_eq!(check_path(p), Err(want), "{p}");
        }
    }

    #[test]
    fn encoded_unreserved_characters_and_semicolons_are_refused() {
        // Every unreserved character, in both hex cases, and ';': refused wherever it stands.
        let unreserved = (b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain(b'0'..=b'9')
            .chain(*b"-_~;");
        for c in unreserved {
            for spelled in [format!("%{c:02X}"), format!("%{c:02x}")] {
                for p in [
                    format!("/api/{spelled}dmin"),
                    format!("/{spelled}"),
                    format!("/api{spelled}"),
                ] {
                    assert_eq!(check_path(&p), Err(PathError::EncodedUnreserved), "{p}");
                }
            }
        }
        assert_eq!(check_path("/api/%2E"), Err(PathError::DotSegment));
        assert_eq!(check_path("/api/%20"), Ok(()));
    }

    #[test]
    fn request_targets() {
        assert_eq!(origin_form(b"/a/b?c=d"), Some(("/a/b", Some("c=d"))));
        assert_eq!(origin_form(b"http://h:1/a?x"), Some(("/a", Some("x"))));
        assert_eq!(origin_form(b"HTTPS://h"), Some(("/", None)));
        assert_eq!(origin_form(b"http://h?q"), Some(("/", None)));
        assert_eq!(origin_form(b"*"), None);
        assert_eq!(origin_form(b"h:443"), None);
        assert_eq!(authority(b"http://h:1/a?x"), Some(&b"h:1"[..]));
        assert_eq!(authority(b"HTTP://h?x"), Some(&b"h"[..]));
        assert_eq!(authority(b"/a"), None);
    }
}
