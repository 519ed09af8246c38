//! Fuzzes path checking and matching: `tokengate::gateway::paths::check_path` on arbitrary UTF-8 (invalid UTF-8 is
//! converted lossily), and `RouteTable::find` on the paths it accepts. Asserts, besides "no panic": on `Ok`
//! the path starts with '/', contains no "//", no '\', no segment "." or ".." (also with `;` parameters),
//! no "%2e", "%2f" or "%5c" in any case, no malformed escape, encoded control byte or double encoding;
//! conversely every path with those properties is accepted, and `NotAbsolute` is
//! answered exactly when the path does not start with '/'; `find` picks the longest route prefix that the
//! path equals or continues with '/' (never `/iotx` for `/iot`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tokengate::config::Config;
use tokengate::gateway::paths::{check_path, PathError};
use tokengate::gateway::routes::RouteTable;

/// The safety properties an accepted path must have; also the definition of "acceptable".
fn violation(p: &str) -> Option<&'static str> {
    let lower = p.to_ascii_lowercase();
    if !p.starts_with('/') {
        Some("does not start with '/'")
    } else if p.contains("//") {
        Some("contains \"//\"")
    } else if p.contains('\\') {
        Some("contains a backslash")
    } else if p
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or(""))
        .any(|seg| seg == "." || seg == "..")
    {
        Some("has a '.' or '..' segment (path parameters ignored)")
    } else if ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e)) {
        Some("contains an encoded '.', '/' or '\\'")
    } else if bad_escape(p) {
        Some("has a malformed escape, an encoded control byte or a double encoding")
    } else if p
        .split('/')
        .rev()
        .skip(1)
        .any(|seg| seg.split(';').next() == Some("") && seg.contains(';'))
    {
        Some("has an empty segment with path parameters")
    } else {
        None
    }
}

/// One percent-decoding of `p` (malformed escapes: `None`).
fn decode_once(p: &str) -> Option<Vec<u8>> {
    let b = p.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok().filter(|_| h.bytes().all(|c| c.is_ascii_hexdigit()))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A malformed escape, an encoded control byte, or something a second decoding turns into `.`, `/`, `\\`,
/// `%` or a control byte.
fn bad_escape(p: &str) -> bool {
    let Some(once) = decode_once(p) else {
        return true;
    };
    let dangerous = |c: u8| matches!(c, b'.' | b'/' | b'\\' | b'%') || c < 0x20 || c == 0x7f;
    let escaped_controls = p.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && std::str::from_utf8(&w[1..])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .is_some_and(|c| c < 0x20 || c == 0x7f)
    });
    let twice = once.windows(3).any(|w| {
        w[0] == b'%'
            && (w[1] as char).is_ascii_hexdigit()
            && (w[2] as char).is_ascii_hexdigit()
            && dangerous(u8::from_str_radix(std::str::from_utf8(&w[1..]).unwrap(), 16).unwrap())
    });
    escaped_controls || twice
}

const PREFIXES: [(&str, &str); 5] = [
    ("api", "/api"),
    ("api2", "/api/v2"),
    ("iot", "/iot"),
    ("hive", "/iot/hive"),
    ("dots", "/a.b"),
];

fn table() -> &'static RouteTable {
    static T: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut text = String::from("[gateway]\nlisten = \"127.0.0.1:8080\"\n");
        for (i, (name, prefix)) in PREFIXES.iter().enumerate() {
            text.push_str(&format!(
                "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"127.0.0.1:{}\"\n",
                i + 1
            ));
        }
        let config = Config::parse(&text, Path::new("fuzz.toml")).expect("fuzz route config");
        RouteTable::new(&config)
    })
}

/// Longest prefix on a segment boundary.
fn expected_route(path: &str) -> Option<&'static str> {
    PREFIXES
        .iter()
        .filter(|(_, prefix)| {
            path == *prefix
                || (path.starts_with(prefix) && matches!(path.as_bytes()[prefix.len()], b'/' | b';'))
        })
        .max_by_key(|(_, prefix)| prefix.len())
        .map(|(name, _)| *name)
}

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    let got = check_path(&path);
    match (got, violation(&path)) {
        (Ok(()), Some(why)) => panic!("check_path accepted {path:?}, which {why}"),
        (Err(e), None) => panic!("check_path refused the harmless path {path:?} with {e:?}"),
        _ => {}
    }
    assert_eq!(
        got == Err(PathError::NotAbsolute),
        !path.starts_with('/'),
        "NotAbsolute answered wrongly for {path:?}: {got:?}"
    );
    if got.is_ok() {
        let found = table().find(&path).map(|r| &*r.name);
        assert_eq!(found, expected_route(&path), "route for {path:?}");
    }
});
