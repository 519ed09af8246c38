//! Loading the edge's certificates: each configured chain and key read ([`load_certificates`]), the
//! key checked against its leaf, the leaf's DNS names and validity read off it; and the `check-config`
//! findings that do not stop the gateway ([`warnings`]: validity, key file modes, shadowed names).
//! Errors name the entry (`tls.certificates[1].key`) and never quote key material.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use rustls_pki_types::CertificateDer;

use crate::config::CertFiles;
use crate::crypto::{provider, read_chain, read_key, TlsError};

/// One loaded certificate entry: rustls' signing half plus what we read off the leaf.
#[derive(Clone)]
pub struct LoadedCert {
    /// `tls.certificates[i]`, for messages.
    pub entry: String,
    /// DNS names of the leaf's subjectAltName, lower-case, without a trailing dot; may start with
    /// `*.`.
    pub dns_names: Vec<Box<str>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub(super) key: Arc<CertifiedKey>,
}

impl LoadedCert {
    /// The bytes of the certificate chain the server sends in a full handshake (the DER of each
    /// certificate; the handshake's own framing adds a few bytes per certificate).
    pub fn chain_bytes(&self) -> usize {
        self.key.cert.iter().map(|c| c.len()).sum()
    }

    /// How many certificates the chain has.
    pub fn chain_len(&self) -> usize {
        self.key.cert.len()
    }

    /// The private key's type: `ECDSA`, `RSA`, `Ed25519`, ...
    pub fn key_type(&self) -> String {
        match self.key.key.algorithm() {
            rustls::SignatureAlgorithm::ECDSA => "ECDSA".into(),
            rustls::SignatureAlgorithm::RSA => "RSA".into(),
            rustls::SignatureAlgorithm::ED25519 => "Ed25519".into(),
            other => format!("{other:?}"),
        }
    }

    /// What `check-config` prints about it.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} key, chain of {} certificate(s), {} bytes",
            self.entry,
            self.key_type(),
            self.chain_len(),
            self.chain_bytes()
        )
    }
}

/// The largest chain a listener for devices (one with `client_ca`) should send: a full handshake's
/// certificates are most of the bytes a battery device receives.
pub const DEVICE_CHAIN_BYTES: usize = 4096;

/// Warnings for a listener that serves devices (`client_ca` set): RSA keys (slow to verify and large on
/// an ESP32) and chains over [`DEVICE_CHAIN_BYTES`].
pub fn device_warnings(certs: &LoadedCerts) -> Vec<String> {
    let mut out = Vec::new();
    for cert in certs.iter() {
        if cert.key_type() == "RSA" {
            out.push(format!(
                "{}.key: an RSA key on a listener for devices (client_ca): a device verifies an ECDSA \
                 P-256 certificate faster and receives fewer bytes",
                cert.entry
            ));
        }
        if cert.chain_bytes() > DEVICE_CHAIN_BYTES {
            out.push(format!(
                "{}.cert: the chain is {} bytes, over {DEVICE_CHAIN_BYTES} for a listener for devices \
                 (client_ca): every full handshake sends it",
                cert.entry,
                cert.chain_bytes()
            ));
        }
    }
    out
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("entry", &self.entry)
            .field("dns_names", &self.dns_names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The loaded certificate entries, in config order; never empty (the first is the default).
#[derive(Clone, Debug)]
pub struct LoadedCerts(pub(super) Vec<LoadedCert>);

impl LoadedCerts {
    pub fn iter(&self) -> impl Iterator<Item = &LoadedCert> {
        self.0.iter()
    }
}

/// Reads and checks every entry; the first error (in config order) is returned.
pub fn load_certificates(pairs: &[CertFiles]) -> Result<LoadedCerts, TlsError> {
    if pairs.is_empty() {
        return Err(TlsError::Config {
            key: "tls.certificates".into(),
            problem: "at least one certificate is required".into(),
        });
    }
    let provider = provider();
    pairs
        .iter()
        .enumerate()
        .map(|(i, pair)| load_pair(i, pair, &provider))
        .collect::<Result<_, _>>()
        .map(LoadedCerts)
}

fn load_pair(
    i: usize,
    pair: &CertFiles,
    provider: &CryptoProvider,
) -> Result<LoadedCert, TlsError> {
    let entry = format!("tls.certificates[{i}]");
    let cert_key = format!("{entry}.cert");
    let key_key = format!("{entry}.key");

    let chain = read_chain(&cert_key, &pair.cert)?;
    let key_der = read_key(&key_key, &pair.key)?;
    let invalid_key = |problem: &str| TlsError::Invalid {
        key: key_key.clone(),
        path: pair.key.clone(),
        problem: problem.into(),
    };
    // The provider's parse errors are fixed strings, but we still say it in our own words.
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|_| {
            invalid_key(
                "malformed private key or unsupported type (RSA, ECDSA P-256/P-384, Ed25519)",
            )
        })?;

    let leaf = LeafInfo::parse(&chain[0]).map_err(|problem| TlsError::Invalid {
        key: cert_key.clone(),
        path: pair.cert.clone(),
        problem,
    })?;

    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(invalid_key(&format!(
                "private key does not match the certificate in {}",
                pair.cert.display()
            )))
        }
        // Both providers expose the public key, so "unknown" would be a surprise: refuse rather
        // than guess.
        Err(_) => {
            return Err(invalid_key(
                "cannot check that the private key matches the certificate",
            ))
        }
    }

    Ok(LoadedCert {
        entry,
        dns_names: leaf.dns_names,
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        key: Arc::new(certified),
    })
}

/// What we need from a leaf certificate that rustls does not expose.
struct LeafInfo {
    dns_names: Vec<Box<str>>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl LeafInfo {
    fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the first certificate is not valid X.509: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("the first certificate has a malformed subjectAltName: {e}"))?;
        let dns_names = san
            .into_iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::DNSName(n) => Some(normalize_name(n).into()),
                _ => None,
            })
            .collect();
        let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        Ok(Self {
            dns_names,
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
        })
    }
}

/// Lower-case, without a trailing dot: the form both SAN names and SNI are compared in.
fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Findings for `check-config` that do not stop the gateway: validity, key file modes, unreachable
/// or shadowed names. `now` is a parameter so tests can move it.
pub fn warnings(pairs: &[CertFiles], certs: &LoadedCerts, now: SystemTime) -> Vec<String> {
    const SOON: Duration = Duration::from_secs(14 * 24 * 3600);
    let mut out = Vec::new();
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (i, cert) in certs.iter().enumerate() {
        let date = |t| humantime::format_rfc3339_seconds(t);
        if now > cert.not_after {
            out.push(format!(
                "{}.cert: certificate expired on {}",
                cert.entry,
                date(cert.not_after)
            ));
        } else if now < cert.not_before {
            out.push(format!(
                "{}.cert: certificate is not valid before {}",
                cert.entry,
                date(cert.not_before)
            ));
        } else if cert.not_after.duration_since(now).unwrap_or_default() < SOON {
            out.push(format!(
                "{}.cert: certificate expires on {}",
                cert.entry,
                date(cert.not_after)
            ));
        }
        if i > 0 && cert.dns_names.is_empty() {
            out.push(format!(
                "{}.cert: certificate has no DNS name in subjectAltName, so no SNI selects it",
                cert.entry
            ));
        }
        for name in &cert.dns_names {
            if let Some(first) = seen.get(name.as_ref()) {
                out.push(format!(
                    "{}.cert: {name} is also in {first}, which is used for it",
                    cert.entry
                ));
            } else {
                seen.insert(name.as_ref(), cert.entry.as_str());
            }
        }
    }
    for (i, pair) in pairs.iter().enumerate() {
        if let Some(mode) = loose_mode(&pair.key) {
            out.push(format!(
                "tls.certificates[{i}].key: {} is accessible by group or others (mode {mode:04o}); \
                 chmod 600 it",
                pair.key.display()
            ));
        }
    }
    out
}

#[cfg(unix)]
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tls::testing::*;
    use rcgen::KeyPair;

    #[test]
    fn mismatched_key_names_the_entry_and_hides_the_key() {
        let s = files();
        let dir = tempfile::tempdir().unwrap();
        let other = s.ca.leaf(&["c.example.com"]);
        let mut pairs = s.cfg.certificates.clone();
        pairs[1].key = write(dir.path(), "wrong.key", &other.key_pem, 0o600);
        let err = load_certificates(&pairs).unwrap_err();
        let (text, debug) = (err.to_string(), format!("{err:?}"));
        assert!(
            text.starts_with("tls.certificates[1].key: private key does not match"),
            "{text}"
        );
        for line in key_lines(&other.key_pem)
            .into_iter()
            .chain(key_lines(&s.b.key_pem))
        {
            assert!(!text.contains(line) && !debug.contains(line));
        }
    }

    #[test]
    fn bad_key_files_never_echo_their_content() {
        let s = files();
        let dir = tempfile::tempdir().unwrap();
        let body = key_lines(&s.a.key_pem).join("\n");
        let cases = [
            (format!("-----BEGIN PRIVATE KEY-----\n{body}\n"), "no END line"),
            (format!("-----BEGIN PRIVATE KEY-----\n{body}!!\n-----END PRIVATE KEY-----\n"), "base64"),
            (format!("-----BEGIN PRIVATE KEY-----\nAAAA{body}\n-----END PRIVATE KEY-----\n"), "malformed private key"),
            (format!("-----BEGIN ENCRYPTED PRIVATE KEY-----\n{body}\n-----END ENCRYPTED PRIVATE KEY-----\n"), "encrypted"),
            (s.a.cert_pem.clone(), "no PRIVATE KEY block"),
            ("".into(), "no PRIVATE KEY block"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let mut pairs = s.cfg.certificates.clone();
            pairs[0].key = write(dir.path(), &format!("k{i}"), text, 0o600);
            let err = load_certificates(&pairs).unwrap_err();
            let (shown, debug) = (err.to_string(), format!("{err:?}"));
            assert!(
                shown.starts_with("tls.certificates[0].key: ") && shown.contains(want),
                "case {i}: {shown}"
            );
            for line in key_lines(text) {
                assert!(
                    !shown.contains(line) && !debug.contains(line),
                    "case {i} leaks: {shown}"
                );
            }
        }
        let mut pairs = s.cfg.certificates.clone();
        pairs[1].cert = write(dir.path(), "empty.crt", "", 0o644);
        let shown = load_certificates(&pairs).unwrap_err().to_string();
        assert!(
            shown.starts_with("tls.certificates[1].cert: no CERTIFICATE block"),
            "{shown}"
        );
        pairs[1].cert = dir.path().join("missing.crt");
        let shown = load_certificates(&pairs).unwrap_err().to_string();
        assert!(
            shown.starts_with("tls.certificates[1].cert: cannot read"),
            "{shown}"
        );
        assert!(load_certificates(&[]).is_err());
    }

    #[test]
    fn legacy_key_encodings_load() {
        let ca = Pki::new("edge test CA");
        let dir = tempfile::tempdir().unwrap();
        let ec = KeyPair::from_pem_and_sign_algo(EC_SEC1_KEY_PKCS8, &rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap();
        let ec = Leaf {
            key_pem: EC_SEC1_KEY.into(),
            ..ca.leaf_with_key(&["ec.example.com"], ec, |_| {})
        };
        let rsa =
            KeyPair::from_pem_and_sign_algo(RSA_PKCS1_KEY_PKCS8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let rsa = Leaf {
            key_pem: RSA_PKCS1_KEY.into(),
            ..ca.leaf_with_key(&["RSA.example.com."], rsa, |_| {})
        };
        let certs =
            load_certificates(&[pair(dir.path(), "ec", &ec), pair(dir.path(), "rsa", &rsa)])
                .unwrap();
        let names: Vec<_> = certs.iter().map(|c| c.dns_names.clone()).collect();
        assert_eq!(
            names,
            [
                vec!["ec.example.com".into()],
                vec![Box::<str>::from("rsa.example.com")]
            ]
        );
    }

    #[test]
    fn warnings_for_validity_modes_and_names() {
        let ca = Pki::new("edge test CA");
        let dir = tempfile::tempdir().unwrap();
        let expired = ca.leaf_with(&["old.example.com"], |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
        let future = ca.leaf_with(&["new.example.com", "old.example.com"], |p| {
            p.not_before = rcgen::date_time_ymd(2090, 1, 1);
            p.not_after = rcgen::date_time_ymd(2091, 1, 1);
        });
        let no_name = ca.leaf(&[]);
        let mut pairs = vec![
            pair(dir.path(), "e", &expired),
            pair(dir.path(), "f", &future),
            pair(dir.path(), "n", &no_name),
        ];
        pairs[1].key = write(dir.path(), "f.key", &future.key_pem, 0o640);
        let certs = load_certificates(&pairs).unwrap();
        let w = warnings(&pairs, &certs, SystemTime::now());
        assert_eq!(w.len(), 5, "{w:#?}");
        assert!(
            w[0].starts_with(
                "tls.certificates[0].cert: certificate expired on 2021-01-01T00:00:00Z"
            ),
            "{w:#?}"
        );
        assert!(
            w[1].starts_with(
                "tls.certificates[1].cert: certificate is not valid before 2090-01-01"
            ),
            "{w:#?}"
        );
        assert!(
            w[2].contains("old.example.com is also in tls.certificates[0]"),
            "{w:#?}"
        );
        assert!(
            w[3].starts_with("tls.certificates[2].cert: certificate has no DNS name"),
            "{w:#?}"
        );
        assert!(
            w[4].starts_with("tls.certificates[1].key:") && w[4].contains("mode 0640"),
            "{w:#?}"
        );
        assert_eq!(
            certs.iter().next().unwrap().not_after,
            UNIX_EPOCH + Duration::from_secs(1_609_459_200)
        );
    }

    #[test]
    fn device_listeners_are_warned_about_rsa_keys_and_large_chains() {
        let ca = Pki::new("edge test CA");
        let dir = tempfile::tempdir().unwrap();
        let small = ca.leaf(&["ec.example.com"]);
        let rsa =
            KeyPair::from_pem_and_sign_algo(RSA_PKCS1_KEY_PKCS8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let rsa = ca.leaf_with_key(&["rsa.example.com"], rsa, |_| {});
        let names: Vec<String> = (0..300).map(|i| format!("host-{i}.example.com")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let large = ca.leaf(&names);
        let certs = load_certificates(&[
            pair(dir.path(), "s", &small),
            pair(dir.path(), "r", &rsa),
            pair(dir.path(), "l", &large),
        ])
        .unwrap();
        let all: Vec<&LoadedCert> = certs.iter().collect();
        assert_eq!(all[0].key_type(), "ECDSA");
        assert_eq!(all[1].key_type(), "RSA");
        assert_eq!(all[0].chain_bytes(), small.der.len());
        assert!(all[2].chain_bytes() > DEVICE_CHAIN_BYTES);
        assert!(
            all[0]
                .summary()
                .starts_with("tls.certificates[0]: ECDSA key, chain of 1 certificate(s), "),
            "{}",
            all[0].summary()
        );
        let w = device_warnings(&certs);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].starts_with("tls.certificates[1].key: an RSA key"),
            "{w:#?}"
        );
        assert!(
            w[1].starts_with("tls.certificates[2].cert: the chain is "),
            "{w:#?}"
        );
    }
}
