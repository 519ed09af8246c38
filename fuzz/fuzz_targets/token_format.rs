//! Fuzzes token parsing: `tokengate::tokens::format::check_format` on arbitrary UTF-8 (invalid UTF-8 is converted
//! lossily). Asserts, besides "no panic": it gives exactly the answer of an independent reference (length,
//! `tg_` prefix, base62 alphabet, then a bit-by-bit CRC-32 over prefix and secret against the 6 base62
//! checksum digits, in that order); every accepted string is 52 ASCII alphanumerics after `tg_`; a token
//! built from the input's bytes with the reference checksum is accepted; and changing one character (position
//! and replacement taken from the input) of that token and of a fixed `Token::generate()` token is refused
//! with the expected error (Length, Prefix, Alphabet, else Checksum), unless the change left it unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tokengate::tokens::format::{check_format, FormatError, Token, CHECKSUM_LEN, PREFIX, SECRET_LEN, TOKEN_LEN};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// CRC-32 (IEEE 802.3, reflected, as zlib and crc32fast), bit by bit: independent of the library's code.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn base62(b: u8) -> Option<u64> {
    ALPHABET.iter().position(|&a| a == b).map(|i| i as u64)
}

/// The checksum digits for `tg_` + secret.
fn checksum(head: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut v = crc32(head) as u64;
    let mut out = [0u8; CHECKSUM_LEN];
    for d in out.iter_mut().rev() {
        *d = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    out
}

fn reference(s: &str) -> Result<(), FormatError> {
    let b = s.as_bytes();
    if b.len() != TOKEN_LEN {
        return Err(FormatError::Length);
    }
    if &b[..PREFIX.len()] != PREFIX.as_bytes() {
        return Err(FormatError::Prefix);
    }
    if b[PREFIX.len()..].iter().any(|&c| base62(c).is_none()) {
        return Err(FormatError::Alphabet);
    }
    let head = PREFIX.len() + SECRET_LEN;
    let sum = b[head..].iter().fold(0u64, |acc, &c| acc * 62 + base62(c).unwrap());
    if sum != crc32(&b[..head]) as u64 {
        return Err(FormatError::Checksum);
    }
    Ok(())
}

/// Replaces the character at `pos` of the ASCII `token` with `c` and checks the verdict.
fn check_one_change(token: &str, pos: usize, c: char) {
    assert!(token.is_ascii() && token.len() == TOKEN_LEN);
    let mut changed = String::with_capacity(TOKEN_LEN + 4);
    changed.push_str(&token[..pos]);
    changed.push(c);
    changed.push_str(&token[pos + 1..]);
    let got = check_format(&changed);
    let want = if changed == token {
        Ok(())
    } else if c.len_utf8() != 1 {
        Err(FormatError::Length)
    } else if pos < PREFIX.len() {
        Err(FormatError::Prefix)
    } else if base62(c as u8).is_none() {
        Err(FormatError::Alphabet)
    } else {
        Err(FormatError::Checksum)
    };
    assert_eq!(got, want, "one change at {pos} to {c:?}: {changed:?} (from {token:?})");
}

fn generated() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| {
        let t = Token::generate().into_string();
        assert_eq!(check_format(&t), Ok(()), "a generated token fails its own check: {t:?}");
        t
    })
}

fuzz_target!(|data: &[u8]| {
    // 1. Arbitrary strings: no panic, same verdict as the reference.
    let s = String::from_utf8_lossy(data);
    let got = check_format(&s);
    assert_eq!(got, reference(&s), "check_format disagrees with the reference on {s:?}");
    if got.is_ok() {
        assert!(s.len() == TOKEN_LEN && s.starts_with(PREFIX));
        assert!(s.as_bytes()[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric));
    }

    // 2. A token built from the input is accepted.
    let mut built = String::with_capacity(TOKEN_LEN);
    built.push_str(PREFIX);
    for i in 0..SECRET_LEN {
        let b = data.get(i + 2).copied().unwrap_or(i as u8);
        built.push(ALPHABET[b as usize % 62] as char);
    }
    let sum = checksum(built.as_bytes());
    built.extend(sum.iter().map(|&b| b as char));
    assert_eq!(check_format(&built), Ok(()), "a well-formed token was refused: {built:?}");

    // 3. One character changed: position from data[0], replacement from data[1..] (its first UTF-8
    //    character, else data[1] read as Latin-1).
    if data.len() < 2 {
        return;
    }
    let pos = data[0] as usize % TOKEN_LEN;
    let c = match std::str::from_utf8(&data[1..]) {
        Ok(rest) => rest.chars().next().unwrap(),
        Err(e) if e.valid_up_to() > 0 => {
            std::str::from_utf8(&data[1..1 + e.valid_up_to()]).unwrap().chars().next().unwrap()
        }
        Err(_) => data[1] as char,
    };
    check_one_change(generated(), pos, c);
    check_one_change(&built, pos, c);
});
