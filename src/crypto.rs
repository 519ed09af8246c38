//! The rustls set-up every TLS speaker of the crate shares: the one crypto provider, reading PEM
//! certificates and keys in our own words, trust roots (a PEM bundle or the system's), and the
//! builder of every client config — the https upstreams' (`transport::tls::upstream`) and
//! PostgreSQL's (`tokens::store::pg_url`). The edge's server config (`transport::tls::edge`) is
//! built with the same provider.
//!
//! A room of its own below `config`, because both `tokens` (the PostgreSQL client) and `transport`
//! (the edge and the upstreams) need it and `tokens` sits below `transport`. It owns no policy:
//! which roots, which verifier and which names are the callers' choice.
//!
//! Every config is built with [`provider`], never rustls' process-wide default, so a second provider
//! compiled in by another crate cannot make rustls' choice ambiguous. No error text of this module
//! ever contains key material: PEM and key errors are reported in our own words.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::{ConfigBuilder, RootCertStore, WantsVerifier};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

// The one provider: ring. Measured against aws-lc-rs on this machine, the handshake costs the same within
// noise (TLS 1.3 full, P-256: 132-150 against 142-164 µs of server CPU; both well under nginx's 254-329 µs),
// while ring builds in a third of the time (+7 s against +28 s cold) and adds 1 MB instead of 3 MB. The
// PostgreSQL client's TLS uses the same provider. aws-lc-rs would add X25519MLKEM768 and a FIPS path;
// switching is this line plus the rustls/tokio-rustls features in Cargo.toml.
pub use rustls::crypto::ring as backend;

/// A set-up error: which config key, which file, what is wrong. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        key: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{key}: {problem} ({})", path.display())]
    Invalid {
        key: String,
        path: PathBuf,
        problem: String,
    },
    #[error("{key}: {problem}")]
    Config { key: String, problem: String },
}

/// The provider every config of the crate is built with (shared, built once).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(backend::default_provider()))
        .clone()
}

// -------------------------------------------------------------------------------------------------
// PEM files

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: key.into(),
        path: path.into(),
        source,
    })
}

/// A PEM error in our words: rustls-pki-types' texts may quote lines of the file, which for a key
/// file would be key material.
fn pem_problem(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no {what} found"),
        pem::Error::SectionTooLarge => "a PEM section is too large".into(),
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        _ => "not a valid PEM file".into(),
    }
}

/// Every certificate of a PEM file, in order; at least one. `key` names the setting in errors.
pub fn read_chain(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(key, path)?;
    let invalid = |problem: String| TlsError::Invalid {
        key: key.into(),
        path: path.into(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(pem_problem(&e, "CERTIFICATE block")))?;
    if chain.is_empty() {
        return Err(invalid("no CERTIFICATE block found".into()));
    }
    Ok(chain)
}

/// The first private key of a PEM file (PKCS#8, RSA PKCS#1 or EC SEC1; not encrypted).
pub fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let encrypted = bytes
            .windows(30)
            .any(|w| w == b"-----BEGIN ENCRYPTED PRIVATE K");
        let problem = if encrypted {
            "encrypted private keys are not supported (decrypt it, keep the file mode 0600)".into()
        } else {
            pem_problem(&e, "PRIVATE KEY block (PKCS#8, RSA PKCS#1 or EC SEC1)")
        };
        TlsError::Invalid {
            key: key.into(),
            path: path.into(),
            problem,
        }
    })
}

// -------------------------------------------------------------------------------------------------
// Trust roots

/// Where a verifier's trusted roots come from.
#[derive(Clone, Copy, Debug)]
pub enum Roots<'a> {
    /// A PEM bundle of CA certificates; every certificate in it must parse.
    File(&'a Path),
    /// The system's roots (rustls-native-certs: `/etc/ssl/certs`, `SSL_CERT_FILE`, `SSL_CERT_DIR`).
    /// Reading them parses every root: do it once, at start-up.
    System,
}

/// The root store for `roots`; never empty. `key` names the setting in errors (the one that would
/// name a bundle, e.g. `routes[2].upstream_ca` or `sslrootcert`).
pub fn root_store(key: &str, roots: Roots<'_>) -> Result<RootCertStore, TlsError> {
    match roots {
        Roots::File(path) => file_roots(key, path),
        Roots::System => system_roots(key),
    }
}

fn file_roots(key: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in read_chain(key, path)? {
        roots.add(der).map_err(|e| TlsError::Invalid {
            key: key.into(),
            path: path.into(),
            problem: format!("a CA certificate is not usable: {e}"),
        })?;
    }
    Ok(roots)
}

fn system_roots(key: &str) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        log::warn!("system root certificates: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        log::warn!("system root certificates: {ignored} could not be parsed and are ignored");
    }
    if added == 0 {
        return Err(TlsError::Config {
            key: key.into(),
            problem:
                "no system root certificates found (install ca-certificates, set SSL_CERT_FILE, \
                      or name a CA bundle in this setting)"
                    .into(),
        });
    }
    Ok(roots)
}

// -------------------------------------------------------------------------------------------------
// Client configs

/// A client config builder on [`provider`] with rustls' safe protocol versions (TLS 1.2 and 1.3),
/// waiting for its verifier: for callers that need their own (PostgreSQL's `verify-ca`).
pub fn client_builder(key: &str) -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            key: key.into(),
            problem: e.to_string(),
        })
}

/// A client config that verifies the server's chain against `roots` and its name against the name
/// the caller connects to (rustls' WebPKI verifier), presenting no client certificate.
pub fn verifying_client(key: &str, roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    Ok(client_builder(key)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
