//! The optional signed identity: with a route's `sign_secret`, the gateway adds
//! `x-tokengate-signature: t=<unix seconds>,v2=<hex HMAC-SHA256>,v3=<hex HMAC-SHA256>` so an upstream can
//! prove a request came through the gateway and that none of the identity fields it carries was forged
//! or changed.
//!
//! The signed message of scheme `v3` is ten lines joined by `\n`, no trailing newline:
//!
//! ```text
//! v3
//! <user id header value>
//! <token id header value, or empty when token_id_header = "">
//! <x-token-scopes value, or empty when not forwarded>
//! <x-token-roles value, or empty when not forwarded or the token has no roles>
//! <x-token-groups value, or empty when not forwarded or the token is in no group>
//! <x-token-licenses value, or empty when not forwarded or the token holds no valid license>
//! <t>
//! <METHOD>
//! <path-and-query, exactly as forwarded>
//! ```
//!
//! `v2` is the same without the groups and licenses lines (and `v2` as the first): still sent beside
//! `v3` so that upstreams verifying `v2` keep working while they move over, but it does not cover
//! `x-token-groups` and `x-token-licenses` — an upstream that reads those must verify `v3`.
//!
//! Every identity field the gateway injects is a line, its value byte for byte as forwarded, so an
//! upstream rebuilds the message from the fields it received (an absent one is an empty line): a field
//! added, removed or changed on the way fails the check. No field value can hold `\n` (HTTP forbids it),
//! so the lines cannot be shifted. An upstream recomputes the HMAC with the shared secret, compares in
//! constant time and rejects timestamps more than a few minutes off. `examples/verify_signature.rs` is a
//! verifier.
//!
//! `v1` (until issue 23) signed only `user \n token id \n t \n METHOD \n path-and-query`: a scopes or
//! roles field changed after the gateway still verified. The gateway no longer sends it; a `v1`-only
//! verifier now refuses every request (it fails closed), and verifiers skip schemes they do not know, so
//! a future `v3` can be sent next to `v2` while upstreams move over. Client-sent copies of the header are
//! always removed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "x-tokengate-signature";

/// The newest signature scheme the gateway sends (the key of the HMAC in the header, the first line
/// signed): it covers every identity field.
pub const SCHEME: &str = "v3";

/// The previous scheme, still sent beside [`SCHEME`]: it does not cover groups and licenses.
pub const LEGACY_SCHEME: &str = "v2";

/// What a signature covers besides its timestamp: each identity field's value as forwarded (empty when
/// the field is not sent), the method and the path-and-query as forwarded.
#[derive(Clone, Copy, Debug, Default)]
pub struct Signed<'a> {
    pub user: &'a [u8],
    pub token_id: &'a [u8],
    pub scopes: &'a [u8],
    pub roles: &'a [u8],
    pub groups: &'a [u8],
    pub licenses: &'a [u8],
    pub method: &'a [u8],
    pub path_and_query: &'a [u8],
}

impl Signed<'_> {
    /// The message signed at time `t` (for verifiers and tests; signing feeds the parts to the HMAC
    /// without building it).
    pub fn message(&self, t: u64) -> Vec<u8> {
        self.message_of(SCHEME, t)
    }

    /// The message of scheme `scheme` (`v3` or `v2`).
    pub fn message_of(&self, scheme: &str, t: u64) -> Vec<u8> {
        let mut m = Vec::new();
        self.parts(scheme, t, |p| m.extend_from_slice(p));
        m
    }

    /// The message's pieces, in order (`v2`: without the groups and licenses lines).
    fn parts(&self, scheme: &str, t: u64, mut f: impl FnMut(&[u8])) {
        let mut digits = [0u8; 20];
        let t = decimal(t, &mut digits);
        let v3 = scheme == SCHEME;
        let lines = [
            Some(scheme.as_bytes()),
            Some(self.user),
            Some(self.token_id),
            Some(self.scopes),
            Some(self.roles),
            v3.then_some(self.groups),
            v3.then_some(self.licenses),
            Some(t),
            Some(self.method),
            Some(self.path_and_query),
        ];
        for (i, line) in lines.iter().flatten().enumerate() {
            if i > 0 {
                f(b"\n");
            }
            f(line);
        }
    }

    fn mac(&self, scheme: &str, secret: &[u8], t: u64) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        self.parts(scheme, t, |p| mac.update(p));
        mac.finalize().into_bytes().into()
    }
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// A signature header value, `t=<t>,v2=<64 hex digits>,v3=<64 hex digits>`, on the stack.
pub struct Value {
    buf: [u8; 160],
    len: usize,
}

impl Value {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("ASCII")
    }
}

/// The header value for one forwarded request, made without allocating.
pub fn value(secret: &[u8], signed: &Signed<'_>, t: u64) -> Value {
    let mut v = Value {
        buf: [0; 160],
        len: 0,
    };
    let mut digits = [0u8; 20];
    let tt = decimal(t, &mut digits);
    v.buf[..2].copy_from_slice(b"t=");
    v.buf[2..2 + tt.len()].copy_from_slice(tt);
    v.len = 2 + tt.len();
    for scheme in [LEGACY_SCHEME, SCHEME] {
        let mac = signed.mac(scheme, secret, t);
        for part in [&b","[..], scheme.as_bytes(), b"="] {
            v.buf[v.len..v.len + part.len()].copy_from_slice(part);
            v.len += part.len();
        }
        for b in mac {
            v.buf[v.len] = HEX[usize::from(b >> 4)];
            v.buf[v.len + 1] = HEX[usize::from(b & 15)];
            v.len += 2;
        }
    }
    v
}

/// The header value for one forwarded request, as a `String`.
pub fn sign(secret: &[u8], signed: &Signed<'_>, t: u64) -> String {
    value(secret, signed, t).as_str().to_owned()
}

/// Why a signature was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// Not `t=<digits>` and a value of the scheme verified, each once (other `k=v` schemes are skipped).
    Malformed,
    Stale,
    Mismatch,
}

/// Verifies a header value's `v3` as an upstream would. `max_skew` is the accepted clock difference in
/// seconds. Other schemes (`v1`, `v2`, a future `v4`) are skipped; without a `v3` the header is malformed.
pub fn verify(
    secret: &[u8],
    header: &str,
    signed: &Signed<'_>,
    now: u64,
    max_skew: u64,
) -> Result<(), VerifyError> {
    verify_scheme(SCHEME, secret, header, signed, now, max_skew)
}

/// [`verify`] of scheme `scheme` (`v2` for an upstream that has not moved to `v3` yet).
pub fn verify_scheme(
    scheme: &str,
    secret: &[u8],
    header: &str,
    signed: &Signed<'_>,
    now: u64,
    max_skew: u64,
) -> Result<(), VerifyError> {
    let mut t = None;
    let mut v2 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v))
                if t.is_none() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                t = Some(v.parse::<u64>().map_err(|_| VerifyError::Malformed)?);
            }
            Some((k, v)) if k == scheme && v2.is_none() => v2 = Some(v),
            Some((k, _)) if k != "t" && k != scheme && !k.is_empty() => {}
            _ => return Err(VerifyError::Malformed),
        }
    }
    let (Some(t), Some(v2)) = (t, v2) else {
        return Err(VerifyError::Malformed);
    };
    if t.abs_diff(now) > max_skew {
        return Err(VerifyError::Stale);
    }
    let mut expected = Vec::with_capacity(64);
    push_hex(&mut expected, &signed.mac(scheme, secret, t));
    let ok: bool = subtle::ConstantTimeEq::ct_eq(expected.as_slice(), v2.as_bytes()).into();
    if ok {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Signed<'static> {
        Signed {
            user: b"alice",
            token_id: b"7",
            scopes: b"read write",
            roles: b"device",
            groups: b"apiary-42 association",
            licenses: b"video",
            method: b"POST",
            path_and_query: b"/iot/x?a=1",
        }
    }

    #[test]
    fn known_answer() {
        assert_eq!(
            alice().message(1_700_000_000),
            b"v3\nalice\n7\nread write\ndevice\napiary-42 association\nvideo\n1700000000\nPOST\n/iot/x?a=1"
        );
        assert_eq!(
            alice().message_of("v2", 1_700_000_000),
            b"v2\nalice\n7\nread write\ndevice\n1700000000\nPOST\n/iot/x?a=1"
        );
        // Computed independently: printf 'v2\nalice\n7\nread write\ndevice\n1700000000\nPOST\n/iot/x?a=1'
        //   | openssl dgst -sha256 -hmac key (and the v3 message likewise)
        assert_eq!(
            sign(b"key", &alice(), 1_700_000_000),
            "t=1700000000,v2=0c73af33088ee0a7684de17a5cca805f1cd846c567b80aacf2bc8e166b7fa8c6,\
             v3=d1b6eed4347bb2c4eaff6bd3a5f96504e8f4d32c1e0f6223baafe9f729642793"
        );
    }

    #[test]
    fn every_signed_field_is_bound() {
        let h = sign(b"secret", &alice(), 1000);
        assert_eq!(verify(b"secret", &h, &alice(), 1010, 300), Ok(()));
        let changed: [Signed; 10] = [
            Signed {
                groups: b"apiary-42",
                ..alice()
            },
            Signed {
                groups: b"apiary-42 association admins",
                ..alice()
            },
            Signed {
                licenses: b"",
                ..alice()
            },
            Signed {
                user: b"mallory",
                ..alice()
            },
            Signed {
                token_id: b"8",
                ..alice()
            },
            Signed {
                scopes: b"read write admin",
                ..alice()
            },
            Signed {
                scopes: b"*",
                ..alice()
            },
            Signed {
                roles: b"",
                ..alice()
            },
            Signed {
                method: b"DELETE",
                ..alice()
            },
            Signed {
                path_and_query: b"/iot/x?a=2",
                ..alice()
            },
        ];
        for s in &changed {
            assert_eq!(
                verify(b"secret", &h, s, 1010, 300),
                Err(VerifyError::Mismatch),
                "{s:?}"
            );
        }
        // A line moved into its neighbour does not verify either.
        let shifted = Signed {
            scopes: b"read write\ndevice",
            roles: b"",
            ..alice()
        };
        assert_eq!(
            verify(b"secret", &h, &shifted, 1010, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &h, &alice(), 1010, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", &h, &alice(), 2000, 300),
            Err(VerifyError::Stale)
        );
    }

    #[test]
    fn header_forms() {
        let h = sign(b"secret", &alice(), 1000);
        let v2 = h.split_once(",v2=").unwrap().1.split_once(',').unwrap().0;
        let v3 = h.split_once(",v3=").unwrap().1;
        assert_eq!(
            verify_scheme("v2", b"secret", &h, &alice(), 1000, 300),
            Ok(())
        );
        // v2 does not cover groups and licenses; v3 does.
        let other_groups = Signed {
            groups: b"admins",
            ..alice()
        };
        assert_eq!(
            verify_scheme("v2", b"secret", &h, &other_groups, 1000, 300),
            Ok(())
        );
        assert_eq!(
            verify(b"secret", &h, &other_groups, 1000, 300),
            Err(VerifyError::Mismatch)
        );
        // Unknown schemes are skipped, in any position.
        for ok in [
            format!("v1=00,t=1000,v3={v3}"),
            format!("t=1000, v3={v3} ,v4=ff"),
        ] {
            assert_eq!(verify(b"secret", &ok, &alice(), 1000, 300), Ok(()), "{ok}");
        }
        for bad in [
            "v3=abc".to_owned(),
            format!("t=1000,v2={v2}"),
            format!("t=1000,t=1000,v3={v3}"),
            format!("t=+1000,v3={v3}"),
            format!("t=1000,v3={v3},v3={v3}"),
            format!("t=1000;v3={v3}"),
            String::new(),
        ] {
            assert_eq!(
                verify(b"secret", &bad, &alice(), 1000, 300),
                Err(VerifyError::Malformed),
                "{bad}"
            );
        }
    }
}
