//! The token format: generation from the OS CSPRNG, parsing with a checksum, and the SHA-256 digest.
//!
//! A token is `tg_` + 43 base62 characters of secret (256 bits of entropy from `OsRng`) + 6 base62
//! characters of CRC32 over the prefix and secret, 52 characters in all. Secret scanners can find leaked
//! tokens with `\btg_[0-9A-Za-z]{49}\b`. The checksum lets the gateway reject typos and garbage before any
//! lookup. Only the [`Digest`] (SHA-256 of the whole token string) is ever stored.

use rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// The fixed prefix every token starts with.
pub const PREFIX: &str = "tg_";
/// Number of base62 characters of secret: 62^43 > 2^256.
pub const SECRET_LEN: usize = 43;
/// Number of base62 characters of checksum: 62^6 > 2^32.
pub const CHECKSUM_LEN: usize = 6;
/// Total length of a token string.
pub const TOKEN_LEN: usize = PREFIX.len() + SECRET_LEN + CHECKSUM_LEN;
/// The regular expression secret scanners can use (documented in the README).
pub const SCAN_REGEX: &str = r"\btg_[0-9A-Za-z]{49}\b";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a token. Deliberately coarse: the reason goes into RFC 6750 error descriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("token has the wrong length")]
    Length,
    #[error("token does not start with the tg_ prefix")]
    Prefix,
    #[error("token contains a character outside base62")]
    Alphabet,
    #[error("token checksum does not match")]
    Checksum,
}

/// A freshly generated token: the plaintext, shown exactly once. Not `Debug` so it cannot leak into logs.
pub struct Token(String);

impl Token {
    /// Generates a new token from the OS CSPRNG.
    pub fn generate() -> Token {
        let mut s = String::with_capacity(TOKEN_LEN);
        s.push_str(PREFIX);
        let mut buf = [0u8; 64];
        while s.len() < PREFIX.len() + SECRET_LEN {
            OsRng.fill_bytes(&mut buf);
            for &b in &buf {
                // Rejection sampling keeps every character uniform: 248 = 4 * 62.
                if b < 248 && s.len() < PREFIX.len() + SECRET_LEN {
                    s.push(ALPHABET[(b % 62) as usize] as char);
                }
            }
        }
        let crc = crc32fast::hash(s.as_bytes());
        push_checksum(&mut s, crc);
        Token(s)
    }

    /// The plaintext token.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest stored for this token.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.0)
    }

    /// Consumes the token, returning the plaintext.
    pub fn into_string(self) -> String {
        self.0
    }
}

fn push_checksum(s: &mut String, crc: u32) {
    let mut digits = [0u8; CHECKSUM_LEN];
    let mut v = crc as u64;
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    s.extend(digits.iter().map(|&b| b as char));
}

fn base62_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u64),
        b'A'..=b'Z' => Some((b - b'A') as u64 + 10),
        b'a'..=b'z' => Some((b - b'a') as u64 + 36),
        _ => None,
    }
}

/// Checks that `s` is a well-formed token (length, prefix, alphabet, checksum). Allocation-free.
pub fn check_format(s: &str) -> Result<(), FormatError> {
    let b = s.as_bytes();
    if b.len() != TOKEN_LEN {
        return Err(FormatError::Length);
    }
    if !b.starts_with(PREFIX.as_bytes()) {
        return Err(FormatError::Prefix);
    }
    let body = &b[PREFIX.len()..PREFIX.len() + SECRET_LEN];
    if !body.iter().all(u8::is_ascii_alphanumeric) {
        return Err(FormatError::Alphabet);
    }
    let mut sum: u64 = 0;
    for &c in &b[PREFIX.len() + SECRET_LEN..] {
        sum = sum * 62 + base62_value(c).ok_or(FormatError::Alphabet)?;
    }
    let crc = crc32fast::hash(&b[..PREFIX.len() + SECRET_LEN]) as u64;
    if sum != crc {
        return Err(FormatError::Checksum);
    }
    Ok(())
}

/// SHA-256 of a token string: the only form in which tokens are stored or indexed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Digest of a token string.
    pub fn of(token: &str) -> Digest {
        Digest(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time equality, used after the index lookup so that the final comparison leaks nothing.
    pub fn ct_eq(&self, other: &Digest) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Builds a digest from stored bytes; `None` when the length is wrong.
    pub fn from_slice(b: &[u8]) -> Option<Digest> {
        <[u8; 32]>::try_from(b).ok().map(Digest)
    }
}

impl fmt::Debug for Digest {
    /// Never prints the digest itself: digests are treated as secrets in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let a = Token::generate();
        let b = Token::generate();
        assert_eq!(a.as_str().len(), TOKEN_LEN);
        assert!(a.as_str().starts_with("tg_"));
        assert_eq!(check_format(a.as_str()), Ok(()));
        assert_ne!(a.as_str(), b.as_str());
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn single_character_changes_are_caught() {
        let t = Token::generate().into_string();
        for i in PREFIX.len()..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            assert_eq!(
                check_format(&changed),
                Err(FormatError::Checksum),
                "position {i}"
            );
        }
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert_eq!(check_format(""), Err(FormatError::Length));
        assert_eq!(
            check_format(&"x".repeat(TOKEN_LEN)),
            Err(FormatError::Prefix)
        );
        let t = Token::generate().into_string();
        let mut bytes = t.clone().into_bytes();
        bytes[5] = b'-';
        assert_eq!(
            check_format(&String::from_utf8(bytes).unwrap()),
            Err(FormatError::Alphabet)
        );
        assert_eq!(check_format(&t[..TOKEN_LEN - 1]), Err(FormatError::Length));
    }

    #[test]
    fn characters_are_roughly_uniform() {
        let mut counts = [0u32; 62];
        for _ in 0..2000 {
            let t = Token::generate();
            for &c in &t.as_str().as_bytes()[3..3 + SECRET_LEN] {
                counts[base62_value(c).unwrap() as usize] += 1;
            }
        }
        // 86000 samples, 1387 expected per symbol; a biased generator would miss this band by far.
        assert!(
            counts.iter().all(|&n| (1150..1650).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn digest_debug_hides_bytes() {
        assert_eq!(format!("{:?}", Digest::of("x")), "Digest(..)");
        assert!(Digest::of("x").ct_eq(&Digest::of("x")));
        assert!(!Digest::of("x").ct_eq(&Digest::of("y")));
    }
}
