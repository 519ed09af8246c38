//! The WebSocket opening handshake as the gateway checks it (RFC 6455 §4.1): the `Sec-WebSocket-Accept`
//! a `101` must carry for the client's key, and whether a `101` completes the handshake. A `101` that
//! does not opens no tunnel (502): otherwise an upstream that can be made to answer 101 would turn the
//! connection into a raw pipe in which the client writes its own identity headers.

use super::http1::{self, ResponseHead};
use base64::Engine as _;
use sha1::Digest as _;

/// RFC 6455 section 1.3: appended to the client's key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The length of a `Sec-WebSocket-Accept` value: base64 of a 20-byte SHA-1.
pub const ACCEPT_LEN: usize = 28;

/// The `Sec-WebSocket-Accept` a 101 must carry for the client key `key` (the field's value, as sent):
/// `None` when the key is not the base64 of 16 bytes (RFC 6455 section 4.1) — a request without a
/// valid key opens no tunnel.
pub fn expected_accept(key: &[u8]) -> Option<[u8; ACCEPT_LEN]> {
    let key = key.trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
    if decoded.len() != 16 {
        return None;
    }
    let mut sha = sha1::Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID);
    let mut out = [0u8; ACCEPT_LEN];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(sha.finalize(), &mut out)
        .ok()?;
    (n == ACCEPT_LEN).then_some(out)
}

/// Whether the 101 whose head `resp` was parsed from `head` completes the handshake: exactly one
/// `Sec-WebSocket-Accept`, equal to `expected`, and an `Upgrade` field naming `websocket`.
pub fn accepts(resp: &ResponseHead, head: &[u8], expected: Option<&[u8; ACCEPT_LEN]>) -> bool {
    let Some(expected) = expected else {
        return false;
    };
    let mut accept = resp.fields.iter().filter(|f| {
        f.name
            .get(head)
            .eq_ignore_ascii_case(b"sec-websocket-accept")
    });
    let (Some(only), None) = (accept.next(), accept.next()) else {
        return false;
    };
    let upgrade = resp.fields.iter().any(|f| {
        f.name.get(head).eq_ignore_ascii_case(b"upgrade")
            && http1::list(f.value.get(head)).any(|p| p.eq_ignore_ascii_case(b"websocket"))
    });
    upgrade && only.value.get(head).trim_ascii() == expected.as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_is_rfc_6455s() {
        // RFC 6455 section 1.3's example.
        let accept = expected_accept(b"dGhlIHNhbXBsZSBub25jZQ==").unwrap();
        assert_eq!(&accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(expected_accept(b" dGhlIHNhbXBsZSBub25jZQ== "), Some(accept));
        for bad in [
            &b""[..],
            b"not base64!",
            b"dGhlIHNhbXBsZSBub25jZQ",         // unpadded
            b"dGhlIHNhbXBsZSBub25jZXg=",       // 17 bytes
            b"dGhlIHNhbXBsZSBub25j",           // 15 bytes
            b"dGhlIHNhbXBsZSBub25jZQ==dGhlIA", // trailing garbage
        ] {
            assert_eq!(expected_accept(bad), None, "{bad:?}");
        }
    }

    fn parsed(head: &str) -> ResponseHead {
        let mut resp = ResponseHead::default();
        assert!(resp.parse(head.as_bytes(), false).unwrap());
        resp
    }

    #[test]
    fn a_101_must_carry_the_one_right_accept() {
        let want = expected_accept(b"dGhlIHNhbXBsZSBub25jZQ==").unwrap();
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(accepts(&parsed(ok), ok.as_bytes(), Some(&want)));
        let heads = [
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        ];
        for head in heads {
            assert!(
                !accepts(&parsed(head), head.as_bytes(), Some(&want)),
                "{head}"
            );
        }
        assert!(
            !accepts(&parsed(ok), ok.as_bytes(), None),
            "no valid key, no tunnel"
        );
    }
}
