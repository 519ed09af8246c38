//! Helpers for this module's unit tests that need nothing of it: the shared certificate helper
//! (`tests/common/pki.rs`, the integration tests' own), the fixture keys of `tests/fixtures/tls/`,
//! writing PEM files with a mode, and a config of two certificates. The handshake harness (an edge on
//! loopback, a client) is in `edge.rs`'s tests, next to what it drives.

use std::path::{Path, PathBuf};

use crate::config::{CertFiles, ClientAuth, TlsConfig, TlsVersion};

#[path = "../../../tests/common/pki.rs"]
mod pki;
pub use pki::{Leaf, Pki};

/// Throw-away keys in the two legacy encodings (openssl-made), to check SEC1 and PKCS#1 loading.
pub const EC_SEC1_KEY: &str = include_str!("../../../tests/fixtures/tls/ec-p256-sec1.key");
pub const RSA_PKCS1_KEY: &str = include_str!("../../../tests/fixtures/tls/rsa-2048-pkcs1.key");
/// The same two keys as PKCS#8, for rcgen to sign the test certificates with (rcgen on ring reads
/// PKCS#8 only; the module under test is given the legacy encodings).
pub const EC_SEC1_KEY_PKCS8: &str = include_str!("../../../tests/fixtures/tls/ec-p256-pkcs8.key");
pub const RSA_PKCS1_KEY_PKCS8: &str =
    include_str!("../../../tests/fixtures/tls/rsa-2048-pkcs8.key");

pub fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

pub fn pair(dir: &Path, name: &str, leaf: &Leaf) -> CertFiles {
    CertFiles {
        cert: write(dir, &format!("{name}.crt"), &leaf.cert_pem, 0o644),
        key: write(dir, &format!("{name}.key"), &leaf.key_pem, 0o600),
    }
}

pub fn tls_config(certificates: Vec<CertFiles>) -> TlsConfig {
    TlsConfig {
        listen: "127.0.0.1:0".into(),
        min_version: TlsVersion::V1_2,
        certificates,
        client_ca: None,
        client_auth: ClientAuth::Optional,
        session_tickets: true,
        ticket_lifetime: std::time::Duration::from_secs(24 * 3600),
        max_fragment_size: None,
        alpn: vec![crate::config::Alpn::Http11],
    }
}

/// The base64 lines of a PEM text (what must never show up in an error).
pub fn key_lines(pem: &str) -> Vec<&str> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 8)
        .collect()
}

/// One CA, certificates for `a.example.com` (default) and `*.b.example.com`, written to files.
pub struct Files {
    pub _dir: tempfile::TempDir,
    pub ca: Pki,
    pub cfg: TlsConfig,
    pub a: Leaf,
    pub b: Leaf,
}

pub fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("edge test CA");
    let a = ca.leaf(&["a.example.com"]);
    let b = ca.leaf(&["*.b.example.com"]);
    let cfg = tls_config(vec![pair(dir.path(), "a", &a), pair(dir.path(), "b", &b)]);
    Files {
        _dir: dir,
        ca,
        cfg,
        a,
        b,
    }
}
