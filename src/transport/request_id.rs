//! Request ids: every request on the proxy listener gets one, carried as `x-request-id` to the upstream
//! and back on the response, written to the access log and put in every JSON error body as
//! `request_id`. A client's own `x-request-id` is kept only from a `trusted_proxies` peer, and only when
//! it is a sane token (1 to 128 visible ASCII characters); otherwise a fresh id replaces it.
//!
//! Fresh ids are 32 hex digits from a per-thread generator seeded once from the OS (no system call, no
//! lock and no allocation per request). They identify, they do not authenticate: nothing relies on
//! them being unguessable.

use std::cell::Cell;

/// The header name (client copies are removed before the gateway's is added).
pub const HEADER: &str = "x-request-id";

/// The longest id accepted from a trusted proxy.
const MAX_LEN: usize = 128;

/// One request's id, inline (no allocation).
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; MAX_LEN],
    len: u8,
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use rand_core::RngCore;
    rand_core::OsRng.next_u64() | 1
}

/// splitmix64: the next output of the thread's sequence.
fn next() -> u64 {
    STATE.with(|s| {
        let v = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(v);
        let mut z = v;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

impl RequestId {
    /// A new id: 32 lower-case hex digits.
    pub fn fresh() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = RequestId {
            buf: [0; MAX_LEN],
            len: 32,
        };
        for (half, word) in [next(), next()].into_iter().enumerate() {
            for i in 0..16 {
                id.buf[half * 16 + i] = HEX[((word >> (60 - 4 * i)) & 0xf) as usize];
            }
        }
        id
    }

    /// A client's id, if it is 1 to 128 visible ASCII characters.
    pub fn from_client(value: &[u8]) -> Option<RequestId> {
        let v = value.trim_ascii();
        if v.is_empty() || v.len() > MAX_LEN || !v.iter().all(|b| (0x21..0x7f).contains(b)) {
            return None;
        }
        let mut id = RequestId {
            buf: [0; MAX_LEN],
            len: v.len() as u8,
        };
        id.buf[..v.len()].copy_from_slice(v);
        Some(id)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    pub fn as_str(&self) -> &str {
        // Built from hex digits or checked visible ASCII only.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_hex_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| RequestId::fresh().as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids
            .iter()
            .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn client_ids_must_be_sane() {
        assert_eq!(
            RequestId::from_client(b" abc-123 ").unwrap().as_str(),
            "abc-123"
        );
        assert!(RequestId::from_client(b"").is_none());
        assert!(RequestId::from_client(b"has space").is_none());
        assert!(RequestId::from_client(&[b'a'; 129]).is_none());
        assert_eq!(
            RequestId::from_client(&[b'a'; 128])
                .unwrap()
                .as_bytes()
                .len(),
            128
        );
        assert!(RequestId::from_client("é".as_bytes()).is_none());
        assert!(RequestId::from_client(b"a\x01b").is_none());
    }
}
