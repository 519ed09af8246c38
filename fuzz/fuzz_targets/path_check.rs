//! Fuzzes path checking and matching: `tokengate::routes::check_path` on arbitrary UTF-8 (invalid UTF-8 is
//! converted lossily), and `RouteTable::find` on the paths it accepts. Asserts, besides "no panic": on `Ok`
//! the path starts with '/', contains no "//", no '\', no segment "." or "..", and no "%2e", "%2f" or
//! "%5c" in any case; conversely every path with those properties is accepted, and `NotAbsolute` is
//! answered exactly when the path does not start with '/'; `find` picks the longest route prefix that the
//! path equals or continues with '/' (never `/iotx` for `/iot`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tokengate::config::Config;
use tokengate::metrics::Metrics;
use tokengate::routes::{check_path, PathError, RouteTable};

/// The safety properties an accepted path must have; also the definition of "acceptable".
fn violation(p: &str) -> Option<&'static str> {
    let lower = p.to_ascii_lowercase();
    if !p.starts_with('/') {
        Some("does not start with '/'")
    } else if p.contains("//") {
        Some("contains \"//\"")
    } else if p.contains('\\') {
        Some("contains a backslash")
    } else if p.split('/').any(|seg| seg == "." || seg == "..") {
        Some("has a '.' or '..' segment")
    } else if ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e)) {
        Some("contains an encoded '.', '/' or '\\'")
    } else {
        None
    }
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
        RouteTable::new(&config, &Metrics::new())
    })
}

/// Longest prefix on a segment boundary.
fn expected_route(path: &str) -> Option<&'static str> {
    PREFIXES
        .iter()
        .filter(|(_, prefix)| {
            path == *prefix || (path.starts_with(prefix) && path.as_bytes()[prefix.len()] == b'/')
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
