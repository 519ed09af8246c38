//! Edge and upstream TLS: everything between a TCP byte stream and a decrypted one.
//!
//! This module owns
//! - **loading** the configured certificate chains and keys ([`load_certificates`]), checking each
//!   key matches its leaf, and reading each leaf's DNS names and validity; [`warnings`] adds the
//!   check-config findings;
//! - **choosing a certificate per handshake** ([`SniResolver`]) from the SNI, with a set that a
//!   reload swaps live (new handshakes see the new set, established connections are untouched);
//! - the edge **`rustls::ServerConfig`** ([`edge_config`], [`server_config`]): protocol versions,
//!   ALPN `http/1.1`, optional or required client certificates, session resumption (kept across a
//!   reload when that is safe);
//! - the **handshake under a deadline** ([`accept`]), run by the connection loop itself inside
//!   `ServerApp::process_new` on a plain TCP listener, so a client that never sends a ClientHello
//!   is dropped after the caller's timeout and is counted like any other connection; it returns the
//!   [`TlsFacts`] the decision needs (SNI, client certificate digest, version);
//! - the **upstream `rustls::ClientConfig`** ([`upstream_client_config`]), the upstream name check
//!   ([`server_name`]) and the upstream handshake ([`connect`]).
//!
//! It does not own the config schema (`crate::config`), the connection limit or the HTTP loop: it
//! takes a validated [`TlsConfig`] and a byte stream, and hands back a decrypted one that is
//! `AsyncRead + AsyncWrite + Unpin + Send`. Given pingora's boxed `Stream` it returns a
//! `TlsStream<Stream>`, which is not itself a pingora `Stream`: keep-alive stays inside the
//! caller's loop, and `process_new` returns `None`.
//!
//! Crypto: every config here is built with one explicit provider (ring), never rustls'
//! process-wide default, so a second provider compiled in by another crate cannot make rustls'
//! choice ambiguous. No error text of this module ever contains key material: PEM and key errors
//! are reported in our own words.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{CertFiles, ClientAuth, TlsConfig, TlsVersion};
pub use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

// The one provider: ring. Measured against aws-lc-rs on this machine, the handshake costs the same within
// noise (TLS 1.3 full, P-256: 132-150 against 142-164 µs of server CPU; both well under nginx's 254-329 µs),
// while ring builds in a third of the time (+7 s against +28 s cold) and adds 1 MB instead of 3 MB. The
// PostgreSQL client's TLS uses the same provider. aws-lc-rs would add X25519MLKEM768 and a FIPS path;
// switching is this line plus the rustls/tokio-rustls features in Cargo.toml.
use rustls::crypto::ring as crypto;

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

/// Why a handshake did not produce a stream. Either way the caller closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The peer did not finish the handshake in time (including: never sent a byte).
    #[error("TLS handshake not completed within {0:?}")]
    Timeout(Duration),
    /// The peer sent something that is not an acceptable handshake (plain HTTP, no common version
    /// or cipher, a refused client certificate, ...), or the socket failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
}

/// Why an upstream handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TLS handshake with upstream not completed within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake with upstream failed: {0}")]
    Handshake(#[source] io::Error),
}

/// What the decision may use about a TLS connection, computed once per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFacts {
    /// The SNI the client sent, as rustls validated it (a DNS name; rustls lower-cases it).
    pub sni: Option<Box<str>>,
    /// SHA-256 of the DER of the client's leaf certificate, when it presented one (it was verified
    /// against `client_ca`, or the handshake would have failed).
    pub client_cert_sha256: Option<[u8; 32]>,
    /// `"TLSv1.2"` or `"TLSv1.3"`.
    pub version: &'static str,
}

/// The provider every config of this module is built with (shared, built once).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(crypto::default_provider()))
        .clone()
}

// -------------------------------------------------------------------------------------------------
// Loading

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
    key: Arc<CertifiedKey>,
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
pub struct LoadedCerts(Vec<LoadedCert>);

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

fn read_chain(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
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

// -------------------------------------------------------------------------------------------------
// Certificate selection

/// Picks the certificate for each handshake from the SNI: an exact SAN name first, then a
/// `*.parent` wildcard (one label), else the first configured certificate. Names compare
/// case-insensitively.
///
/// The set sits behind an [`ArcSwap`]: a handshake loads it without a lock, and
/// [`SniResolver::replace`] publishes a new one atomically. A connection keeps the certificate it
/// was handshaken with, so a reload affects only new handshakes.
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

struct CertSet {
    default: Arc<CertifiedKey>,
    /// `api.example.com` → key.
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `example.com` → key, from a SAN `*.example.com`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// For `Debug` and logs: the names in each map.
    names: Vec<Box<str>>,
}

impl CertSet {
    fn new(certs: &LoadedCerts) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut names = Vec::new();
        // Config order: the first entry naming a host wins (`warnings` reports the shadowed ones).
        for cert in certs.iter() {
            for name in &cert.dns_names {
                let (map, host) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_ref()),
                };
                map.entry(host.into()).or_insert_with(|| cert.key.clone());
                names.push(name.clone());
            }
        }
        Self {
            default: certs.0[0].key.clone(),
            exact,
            wildcard,
            names,
        }
    }

    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(sni) = sni else { return &self.default };
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        // rustls hands us a lower-cased name already; only allocate if some client proves
        // otherwise.
        let lower;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        self.exact
            .get(sni)
            .or_else(|| {
                sni.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
            .unwrap_or(&self.default)
    }
}

impl SniResolver {
    pub fn new(certs: &LoadedCerts) -> Self {
        Self {
            set: ArcSwap::from_pointee(CertSet::new(certs)),
        }
    }

    /// Publishes a new set (SIGHUP): handshakes that start after this call use it.
    pub fn replace(&self, certs: &LoadedCerts) {
        self.set.store(Arc::new(CertSet::new(certs)));
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.set.load().names)
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()).clone())
    }
}

// -------------------------------------------------------------------------------------------------
// Edge server config and handshake

/// How many TLS 1.2 session-ID resumptions the server remembers (TLS 1.3 and 1.2 ticket resumption
/// are stateless, with a rotating ticket key).
const SESSION_CACHE_SIZE: usize = 4096;

/// The whole edge set-up from the config: loads the certificates (first error wins), builds the
/// resolver and the [`server_config`]. On a reload, pass the running config as `previous`: its
/// ticket key and session cache are carried over, so devices resume instead of all doing a full
/// handshake at once, unless `client_ca` is set. Then they are not: a resumed session skips
/// client-certificate verification, so a session from before the reload would outlive a change of
/// the trusted CA.
pub fn edge_config(
    cfg: &TlsConfig,
    previous: Option<&ServerConfig>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certificates(&cfg.certificates)?;
    let mut config = build_server_config(cfg, Arc::new(SniResolver::new(&certs)))?;
    if let (Some(old), None) = (previous, &cfg.client_ca) {
        config.ticketer = old.ticketer.clone();
        config.session_storage = old.session_storage.clone();
    }
    Ok(Arc::new(config))
}

/// The edge `ServerConfig` around `resolver`. Swapping the resolver's set changes certificates
/// without a new config; a change of `min_version` or `client_ca` needs a new one (see
/// [`edge_config`]).
pub fn server_config(
    cfg: &TlsConfig,
    resolver: Arc<SniResolver>,
) -> Result<Arc<ServerConfig>, TlsError> {
    build_server_config(cfg, resolver).map(Arc::new)
}

fn build_server_config(
    cfg: &TlsConfig,
    resolver: Arc<SniResolver>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let versions: &[&'static SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let config_error = |key: &str, e: &dyn fmt::Display| TlsError::Config {
        key: key.into(),
        problem: e.to_string(),
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| config_error("tls.min_version", &e))?;

    let builder = match (&cfg.client_ca, cfg.client_auth) {
        (None, ClientAuth::Optional) => builder.with_no_client_auth(),
        (None, ClientAuth::Required) => {
            return Err(config_error(
                "tls.client_auth",
                &"\"required\" needs tls.client_ca",
            ))
        }
        (Some(ca), auth) => {
            let roots = read_roots("tls.client_ca", ca)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| config_error("tls.client_ca", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };

    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = crypto::Ticketer::new().map_err(|e| config_error("tls", &e))?;
    // 0-RTT stays off (the default): early data can be replayed, and every request here is a
    // decision.
    Ok(config)
}

/// Reads a PEM bundle of CA certificates into a root store; every certificate must parse.
fn read_roots(key: &str, path: &Path) -> Result<RootCertStore, TlsError> {
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

/// Runs the server handshake on `stream`, giving up after `timeout` (measured from the call, so it
/// bounds a client that sends nothing as well as one that trickles). Works on any byte stream,
/// pingora's boxed `Stream` included.
pub async fn accept<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    timeout: Duration,
) -> Result<(server::TlsStream<S>, TlsFacts), AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = tokio::time::timeout(timeout, acceptor.accept(stream))
        .await
        .map_err(|_| AcceptError::Timeout(timeout))?
        .map_err(AcceptError::Handshake)?;
    let (_, conn) = tls.get_ref();
    let facts = TlsFacts {
        sni: conn.server_name().map(Into::into),
        client_cert_sha256: conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| Sha256::digest(leaf).into()),
        version: version_name(conn.protocol_version()),
    };
    Ok((tls, facts))
}

fn version_name(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    }
}

// -------------------------------------------------------------------------------------------------
// Upstream

/// The upstream `ClientConfig`: certificates are always verified, against `ca` (a PEM bundle) when
/// given, else the system's roots (rustls-native-certs: `/etc/ssl/certs`, `SSL_CERT_FILE`,
/// `SSL_CERT_DIR`). Build it once at start-up: reading the system store parses every root.
/// `key` names the setting in errors (`routes[2].upstream_ca`).
pub fn upstream_client_config(ca: Option<&Path>, key: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(path) => read_roots(key, path)?,
        None => system_roots(key)?,
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            key: key.into(),
            problem: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
            problem: "no system root certificates found (install ca-certificates, or set \
                      SSL_CERT_FILE, or give this upstream a CA bundle)"
                .into(),
        });
    }
    Ok(roots)
}

/// Checks an upstream name (a DNS name or an IP address) once, at config time; the problem is
/// for a [`TlsError::Config`] naming the setting.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("{name:?} is not a valid DNS name or IP address"))
}

/// Runs the client handshake to an upstream; `name` (see [`server_name`]) is sent as SNI and
/// checked against its certificate. Gives up after `timeout`.
pub async fn connect<S>(
    connector: &TlsConnector,
    name: ServerName<'static>,
    stream: S,
    timeout: Duration,
) -> Result<client::TlsStream<S>, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, connector.connect(name, stream))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Handshake)
}

#[cfg(test)]
mod tests {
    //! Real sockets on 127.0.0.1:0, certificates made by rcgen per test.
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use std::net::SocketAddr;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// Throw-away keys in the two legacy encodings (openssl-made), to check SEC1 and PKCS#1
    /// loading.
    const EC_SEC1_KEY: &str = r"-----BEGIN EC PRIVATE KEY-----
MHcCAQEEINcCmSdhGTvkk0ZQ+5I/FmqYlywme3Jk96Y2dKamTrPCoAoGCCqGSM49
AwEHoUQDQgAEinO+pU0mKf4jIa/x4qUNYGdxC+7fUWF5X7Z/+CfPZsEE3DmfJBeC
2L43exgYGbWoQdJ+Kd9io/fHK6lVDJPexQ==
-----END EC PRIVATE KEY-----
";
    const RSA_PKCS1_KEY: &str = r"-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEArzG+vjaYn5LeJFH1ImX3ZhngpEVmPhP0R+QUQLFtGZ0Xl0P5
acdLpBkeBxCd4IWAlweXiDW4Ps8zqdWxdJ03dqo7y3Dueh3GkbvVWVd2H+bIAXn0
xANAOuuL9BEtyPg7fTpJbJ4TYXeLHs7QvRXW5by759cfZ0gu86tmmYKrH/UYIulE
95RMTH18r6NwRVL/JnmxM5sZWpV9/cxKuJniBg/gl1XEhymxSuRCJFDpAx3/7C8U
IpMQ/X1YhbBvCxuPxBXxc+S/AYlrSplK9XuLlAhor+2xMWdKq/VBWgd6e6uJP3Xg
3cbor/wnlmtsTKU02tnfq+MtsO5pDno52Z++ZwIDAQABAoIBAAjVETC1v+wLk3dx
SlJ5oYdcNp8RgJ4Qk3gsX3kDeOSZrt7JZoGWspGLUqA4jj0LffgfQdx0GN3RxGED
jPa8Fle9LVaMUvmFFsWyGoduiV4CXIL2iwh2wX428c9ULmK7YQRnM9xt+7wmMrVS
5+Mgfr0GTtLZXZPvZ66RLZL/q3Do7MrSlNPI+vQ7DHFTLAeXEfu8qmPIE8fa/Mz4
KtDjh+dQG1pAtHrtp1S4ayejdoEF15Dg2UBXdWZG922PGaTo9Ui3D578vixw/czb
tz5JKrjpq2Sktf6USDJUJU64G+wiGCOWXJcsQ8emsXy61b8co33bCyRego14gZYX
HxCT4UECgYEA8i2ywElDaS2Jzz1rMpNLx9SOs8eciXhXqOdL1N/F2ieTj6HL6C7Q
+Yb5ThtVTA2U6xS2SXw5B83n5PLwJPO3gbYt6tV8s4IX/raOPKXdgC0o7liMDvEA
WFLmYIihlo5MwzhBluWIBRbTGVGKKrd0kypAJ4c5Xb42gZmeN6HQY1UCgYEAuTFj
LMnCaxXPDc388J6Sj73gmPiCoAFUZ/8up/kwU+QQQUeqMPvSp3cTQOSEvrQdLlrZ
Uuz1y2A2yp9DI/gyS+j/jeX4sOhDYZZnt2BSWBpKYQ7ZrmTME+18nuQxniy/wn0X
wwhLrV4VIdbUqs6m0ncRRiKs/r+nPbmbw6LREssCgYBfsX74S/q/DKdvpC0/hsRi
6bKZhz5rc4nvy7VDIEjlss2z65LO4/DfKF5KZrKForg9S6nbz6IZW1tONFB/yW2x
a3MpX8IujDE/DJOXk1K62x1ZUNPG86PXQqqVamevPftHCGuiXIAqwqIXVwjpaCRA
ImnHNL+OMyMGgtTp1p6pIQKBgGflNC1pV4A6MPoeqRvY6oJn1Pwc1zOq606Y0/T6
kMlPtmrZKLroXCsFW7DZQzu10nUyFKA4PkEFzldoeANS9+ysX8qczSN6emriNXek
Oy4gOcAv06HJ/M/lOTfu74M8uawD//Oz0LkHgjWEz7Sv0NlcYT2GsKUOomW3npJn
4oF3AoGAFeJ3B49+WZfAy8M6LxATblT0j/Yr3vxG/DXG0VqhTZbZN3XSvlkv2x8G
6GNFu9Jv0cb4q+1SHeChi3u2HWPbgmZmqbLsqpt7ExBUEnI2vlI7CZsWAdpsdDMZ
hl0DknVi+gYLJn4AtH32jxxuVk7BIPkv86POU3HxYXyyv1K+qTw=
-----END RSA PRIVATE KEY-----
";

    /// The same two keys as PKCS#8, for rcgen to sign the test certificates with (rcgen on ring reads
    /// PKCS#8 only; the module under test is given the legacy encodings).
    const EC_SEC1_KEY_PKCS8: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg1wKZJ2EZO+STRlD7
kj8WapiXLCZ7cmT3pjZ0pqZOs8KhRANCAASKc76lTSYp/iMhr/HipQ1gZ3EL7t9R
YXlftn/4J89mwQTcOZ8kF4LYvjd7GBgZtahB0n4p32Kj98crqVUMk97F
-----END PRIVATE KEY-----
";
    const RSA_PKCS1_KEY_PKCS8: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCvMb6+Npifkt4k
UfUiZfdmGeCkRWY+E/RH5BRAsW0ZnReXQ/lpx0ukGR4HEJ3ghYCXB5eINbg+zzOp
1bF0nTd2qjvLcO56HcaRu9VZV3Yf5sgBefTEA0A664v0ES3I+Dt9OklsnhNhd4se
ztC9FdblvLvn1x9nSC7zq2aZgqsf9Rgi6UT3lExMfXyvo3BFUv8mebEzmxlalX39
zEq4meIGD+CXVcSHKbFK5EIkUOkDHf/sLxQikxD9fViFsG8LG4/EFfFz5L8BiWtK
mUr1e4uUCGiv7bExZ0qr9UFaB3p7q4k/deDdxuiv/CeWa2xMpTTa2d+r4y2w7mkO
ejnZn75nAgMBAAECggEACNURMLW/7AuTd3FKUnmhh1w2nxGAnhCTeCxfeQN45Jmu
3slmgZaykYtSoDiOPQt9+B9B3HQY3dHEYQOM9rwWV70tVoxS+YUWxbIah26JXgJc
gvaLCHbBfjbxz1QuYrthBGcz3G37vCYytVLn4yB+vQZO0tldk+9nrpEtkv+rcOjs
ytKU08j69DsMcVMsB5cR+7yqY8gTx9r8zPgq0OOH51AbWkC0eu2nVLhrJ6N2gQXX
kODZQFd1Zkb3bY8ZpOj1SLcPnvy+LHD9zNu3PkkquOmrZKS1/pRIMlQlTrgb7CIY
I5ZclyxDx6axfLrVvxyjfdsLJF6CjXiBlhcfEJPhQQKBgQDyLbLASUNpLYnPPWsy
k0vH1I6zx5yJeFeo50vU38XaJ5OPocvoLtD5hvlOG1VMDZTrFLZJfDkHzefk8vAk
87eBti3q1Xyzghf+to48pd2ALSjuWIwO8QBYUuZgiKGWjkzDOEGW5YgFFtMZUYoq
t3STKkAnhzldvjaBmZ43odBjVQKBgQC5MWMsycJrFc8NzfzwnpKPveCY+IKgAVRn
/y6n+TBT5BBBR6ow+9KndxNA5IS+tB0uWtlS7PXLYDbKn0Mj+DJL6P+N5fiw6ENh
lme3YFJYGkphDtmuZMwT7Xye5DGeLL/CfRfDCEutXhUh1tSqzqbSdxFGIqz+v6c9
uZvDotESywKBgF+xfvhL+r8Mp2+kLT+GxGLpspmHPmtzie/LtUMgSOWyzbPrks7j
8N8oXkpmsoWiuD1LqdvPohlbW040UH/JbbFrcylfwi6MMT8Mk5eTUrrbHVlQ08bz
o9dCqpVqZ689+0cIa6JcgCrCohdXCOloJEAiacc0v44zIwaC1OnWnqkhAoGAZ+U0
LWlXgDow+h6pG9jqgmfU/BzXM6rrTpjT9PqQyU+2atkouuhcKwVbsNlDO7XSdTIU
oDg+QQXOV2h4A1L37KxfypzNI3p6auI1d6Q7LiA5wC/Tocn8z+U5N+7vgzy5rAP/
87PQuQeCNYTPtK/Q2VxhPYawpQ6iZbeekmfigXcCgYAV4ncHj35Zl8DLwzovEBNu
VPSP9ive/Eb8NcbRWqFNltk3ddK+WS/bHwboY0W70m/Rxvir7VId4KGLe7YdY9uC
Zmapsuyqm3sTEFQScja+UjsJmxYB2mx0MxmGXQOSdWL6BgsmfgC0ffaPHG5WTsEg
+S/zo85TcfFhfLK/Ur6pPA==
-----END PRIVATE KEY-----
";

    type Issuer = CertifiedIssuer<'static, KeyPair>;

    fn ca(name: &str) -> Issuer {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A leaf for `names`, signed by `issuer`, with a fresh P-256 key (or the given one).
    #[derive(Clone)]
    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    fn leaf_with(
        issuer: &Issuer,
        names: &[&str],
        key: KeyPair,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        edit(&mut params);
        let cert = params.signed_by(&key, issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn leaf(issuer: &Issuer, names: &[&str]) -> Leaf {
        leaf_with(issuer, names, KeyPair::generate().unwrap(), |_| {})
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn pair(dir: &Path, name: &str, leaf: &Leaf) -> CertFiles {
        CertFiles {
            cert: write(dir, &format!("{name}.crt"), &leaf.cert_pem, 0o644),
            key: write(dir, &format!("{name}.key"), &leaf.key_pem, 0o600),
        }
    }

    fn tls_config(certificates: Vec<CertFiles>) -> TlsConfig {
        TlsConfig {
            listen: "127.0.0.1:0".into(),
            min_version: TlsVersion::V1_2,
            certificates,
            client_ca: None,
            client_auth: ClientAuth::Optional,
        }
    }

    /// An edge on 127.0.0.1:0: every connection goes through [`accept`], its outcome is sent on
    /// `results`, then the stream echoes what it reads.
    struct Edge {
        addr: SocketAddr,
        results: mpsc::UnboundedReceiver<Result<TlsFacts, AcceptError>>,
    }

    impl Edge {
        async fn start(cfg: &TlsConfig, resolver: Arc<SniResolver>, timeout: Duration) -> Self {
            let acceptor = TlsAcceptor::from(server_config(cfg, resolver).unwrap());
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, results) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        match accept(&acceptor, tcp, timeout).await {
                            Ok((mut tls, facts)) => {
                                let _ = tx.send(Ok(facts));
                                let mut buf = [0u8; 1024];
                                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                                    if tls.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e));
                            }
                        }
                    });
                }
            });
            Self { addr, results }
        }

        async fn next(&mut self) -> Result<TlsFacts, AcceptError> {
            tokio::time::timeout(Duration::from_secs(10), self.results.recv())
                .await
                .unwrap()
                .unwrap()
        }
    }

    fn client_provider(
        suites: Option<Vec<rustls::SupportedCipherSuite>>,
        kx: Option<Vec<&'static dyn rustls::crypto::SupportedKxGroup>>,
    ) -> Arc<CryptoProvider> {
        let mut p = crypto::default_provider();
        if let Some(s) = suites {
            p.cipher_suites = s;
        }
        if let Some(k) = kx {
            p.kx_groups = k;
        }
        Arc::new(p)
    }

    struct Client {
        provider: Arc<CryptoProvider>,
        versions: Vec<&'static SupportedProtocolVersion>,
        roots: Vec<CertificateDer<'static>>,
        identity: Option<Leaf>,
        sni: bool,
    }

    impl Client {
        fn new(roots: &[&Issuer]) -> Self {
            Self {
                provider: client_provider(None, None),
                versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
                roots: roots.iter().map(|ca| ca.der().clone()).collect(),
                identity: None,
                sni: true,
            }
        }

        fn config(&self) -> Arc<ClientConfig> {
            let mut store = RootCertStore::empty();
            for r in &self.roots {
                store.add(r.clone()).unwrap();
            }
            let b = ClientConfig::builder_with_provider(self.provider.clone())
                .with_protocol_versions(&self.versions)
                .unwrap()
                .with_root_certificates(store);
            let mut cfg = match &self.identity {
                None => b.with_no_client_auth(),
                Some(id) => {
                    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
                    b.with_client_auth_cert(vec![id.der.clone()], key).unwrap()
                }
            };
            cfg.enable_sni = self.sni;
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(cfg)
        }

        /// Handshakes and exchanges one echo, so failures that TLS 1.3 reports after the client's
        /// Finished (a refused client certificate) show up here too. Returns the server's leaf.
        async fn talk(
            &self,
            addr: SocketAddr,
            name: &str,
        ) -> io::Result<(client::TlsStream<TcpStream>, CertificateDer<'static>)> {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from(name.to_owned()).unwrap();
            let mut tls = TlsConnector::from(self.config()).connect(name, tcp).await?;
            ping(&mut tls).await?;
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            Ok((tls, leaf))
        }
    }

    async fn ping(tls: &mut client::TlsStream<TcpStream>) -> io::Result<()> {
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    const T: Duration = Duration::from_secs(5);

    /// One CA, certificates for `a.example.com` (default) and `*.b.example.com`.
    struct Setup {
        _dir: tempfile::TempDir,
        ca: Issuer,
        cfg: TlsConfig,
        a: Leaf,
        b: Leaf,
        resolver: Arc<SniResolver>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("edge test CA");
        let a = leaf(&ca, &["a.example.com"]);
        let b = leaf(&ca, &["*.b.example.com"]);
        let cfg = tls_config(vec![pair(dir.path(), "a", &a), pair(dir.path(), "b", &b)]);
        let resolver = Arc::new(SniResolver::new(
            &load_certificates(&cfg.certificates).unwrap(),
        ));
        Setup {
            _dir: dir,
            ca,
            cfg,
            a,
            b,
            resolver,
        }
    }

    #[tokio::test]
    async fn tls12_and_tls13_handshakes_report_facts() {
        let s = setup();
        let mut edge = Edge::start(&s.cfg, s.resolver.clone(), T).await;
        for (version, name) in [
            (&rustls::version::TLS13, "TLSv1.3"),
            (&rustls::version::TLS12, "TLSv1.2"),
        ] {
            let client = Client {
                versions: vec![version],
                ..Client::new(&[&s.ca])
            };
            client.talk(edge.addr, "a.example.com").await.unwrap();
            let facts = edge.next().await.unwrap();
            assert_eq!(
                facts,
                TlsFacts {
                    sni: Some("a.example.com".into()),
                    client_cert_sha256: None,
                    version: name
                }
            );
        }
    }

    #[tokio::test]
    async fn min_tls13_refuses_a_tls12_client() {
        let mut s = setup();
        s.cfg.min_version = TlsVersion::V1_3;
        let mut edge = Edge::start(&s.cfg, s.resolver.clone(), T).await;
        let client = Client {
            versions: vec![&rustls::version::TLS12],
            ..Client::new(&[&s.ca])
        };
        assert!(client.talk(edge.addr, "a.example.com").await.is_err());
        assert!(matches!(edge.next().await, Err(AcceptError::Handshake(_))));
        Client::new(&[&s.ca])
            .talk(edge.addr, "a.example.com")
            .await
            .unwrap();
        assert_eq!(edge.next().await.unwrap().version, "TLSv1.3");
    }

    #[tokio::test]
    async fn esp32_like_clients_connect() {
        use crypto::{cipher_suite, kx_group};
        let s = setup();
        let mut edge = Edge::start(&s.cfg, s.resolver.clone(), T).await;
        // mbedTLS defaults: TLS 1.2 only, ECDHE-ECDSA with AES-GCM, P-256.
        for suite in [
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ] {
            let client = Client {
                provider: client_provider(Some(vec![suite]), Some(vec![kx_group::SECP256R1])),
                versions: vec![&rustls::version::TLS12],
                ..Client::new(&[&s.ca])
            };
            client.talk(edge.addr, "a.example.com").await.unwrap();
            assert_eq!(edge.next().await.unwrap().version, "TLSv1.2");
        }

        // ECDHE-RSA with an RSA certificate whose key is PKCS#1.
        let dir = tempfile::tempdir().unwrap();
        let key =
            KeyPair::from_pem_and_sign_algo(RSA_PKCS1_KEY_PKCS8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let rsa = Leaf {
            key_pem: RSA_PKCS1_KEY.into(),
            ..leaf_with(&s.ca, &["rsa.example.com"], key, |_| {})
        };
        let cfg = tls_config(vec![pair(dir.path(), "rsa", &rsa)]);
        let resolver = Arc::new(SniResolver::new(
            &load_certificates(&cfg.certificates).unwrap(),
        ));
        let mut edge = Edge::start(&cfg, resolver, T).await;
        for suite in [
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ] {
            let client = Client {
                provider: client_provider(Some(vec![suite]), Some(vec![kx_group::SECP256R1])),
                versions: vec![&rustls::version::TLS12],
                ..Client::new(&[&s.ca])
            };
            client.talk(edge.addr, "rsa.example.com").await.unwrap();
            assert_eq!(edge.next().await.unwrap().version, "TLSv1.2");
        }
    }

    #[tokio::test]
    async fn sni_picks_each_certificate_and_defaults_to_the_first() {
        let s = setup();
        let mut edge = Edge::start(&s.cfg, s.resolver.clone(), T).await;
        let client = Client::new(&[&s.ca]);
        assert_eq!(
            client.talk(edge.addr, "a.example.com").await.unwrap().1,
            s.a.der
        );
        assert_eq!(
            client.talk(edge.addr, "x.b.example.com").await.unwrap().1,
            s.b.der
        );
        assert_eq!(
            client.talk(edge.addr, "X.B.Example.COM").await.unwrap().1,
            s.b.der
        );
        // Two labels below the wildcard, or an unknown name: the default (the client then refuses
        // the name).
        assert!(client.talk(edge.addr, "y.x.b.example.com").await.is_err());
        assert!(client.talk(edge.addr, "other.test").await.is_err());
        // No SNI at all: the first certificate.
        let no_sni = Client {
            sni: false,
            ..Client::new(&[&s.ca])
        };
        assert_eq!(
            no_sni.talk(edge.addr, "a.example.com").await.unwrap().1,
            s.a.der
        );
        let mut snis = Vec::new();
        for _ in 0..6 {
            if let Ok(f) = edge.next().await {
                snis.push(f.sni);
            }
        }
        let lower = snis
            .iter()
            .filter(|s| s.as_deref() == Some("x.b.example.com"));
        assert_eq!(lower.count(), 2, "SNI is reported lower-case: {snis:?}");
        assert!(snis.contains(&None));
    }

    #[test]
    fn resolver_matching_rules() {
        let s = setup();
        let set = s.resolver.set.load();
        let b = set.wildcard.get("b.example.com").unwrap();
        let picks = |sni, key: &Arc<CertifiedKey>| Arc::ptr_eq(set.pick(Some(sni)), key);
        for sni in ["q.b.example.com", "Q.B.Example.Com.", "q.b.example.com."] {
            assert!(picks(sni, b), "{sni}");
        }
        for sni in [
            "b.example.com",
            "q.q.b.example.com",
            "xb.example.com",
            "q.b.example.comx",
            "",
        ] {
            assert!(picks(sni, &set.default), "{sni}");
        }
        assert!(picks(
            "A.EXAMPLE.COM",
            set.exact.get("a.example.com").unwrap()
        ));
        assert!(Arc::ptr_eq(set.pick(None), &set.default));
    }

    #[tokio::test]
    async fn swapping_the_set_changes_new_handshakes_only() {
        let s = setup();
        let mut edge = Edge::start(&s.cfg, s.resolver.clone(), T).await;
        let client = Client::new(&[&s.ca]);
        let (mut old, seen) = client.talk(edge.addr, "a.example.com").await.unwrap();
        assert_eq!(seen, s.a.der);

        let dir = tempfile::tempdir().unwrap();
        let a2 = leaf(&s.ca, &["a.example.com", "new.example.com"]);
        s.resolver
            .replace(&load_certificates(&[pair(dir.path(), "a2", &a2)]).unwrap());

        assert_eq!(
            client.talk(edge.addr, "a.example.com").await.unwrap().1,
            a2.der
        );
        assert_eq!(
            client.talk(edge.addr, "new.example.com").await.unwrap().1,
            a2.der
        );
        assert!(
            client.talk(edge.addr, "x.b.example.com").await.is_err(),
            "b was removed"
        );
        ping(&mut old)
            .await
            .expect("the established connection still works");
        assert_eq!(old.get_ref().1.peer_certificates().unwrap()[0], s.a.der);
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(50), edge.results.recv()).await
        {}
    }

    /// An edge with `client_ca` = `clients`, and a client leaf from it and one from a stranger CA.
    async fn mtls(auth: ClientAuth) -> (Setup, Edge, Leaf, Leaf, tempfile::TempDir) {
        let mut s = setup();
        let dir = tempfile::tempdir().unwrap();
        let clients = ca("device CA");
        let stranger = ca("stranger CA");
        s.cfg.client_ca = Some(write(dir.path(), "clients.pem", &clients.pem(), 0o644));
        s.cfg.client_auth = auth;
        let edge = Edge::start(&s.cfg, s.resolver.clone(), T).await;
        let good = leaf(&clients, &["device-1"]);
        let bad = leaf(&stranger, &["device-1"]);
        (s, edge, good, bad, dir)
    }

    #[tokio::test]
    async fn optional_client_certificates() {
        let (s, mut edge, good, bad, _dir) = mtls(ClientAuth::Optional).await;
        Client::new(&[&s.ca])
            .talk(edge.addr, "a.example.com")
            .await
            .unwrap();
        assert_eq!(edge.next().await.unwrap().client_cert_sha256, None);

        let want: [u8; 32] = Sha256::digest(&good.der).into();
        let with_good = Client {
            identity: Some(good),
            ..Client::new(&[&s.ca])
        };
        with_good.talk(edge.addr, "a.example.com").await.unwrap();
        assert_eq!(edge.next().await.unwrap().client_cert_sha256, Some(want));

        let with_bad = Client {
            identity: Some(bad),
            ..Client::new(&[&s.ca])
        };
        assert!(with_bad.talk(edge.addr, "a.example.com").await.is_err());
        let err = edge.next().await.unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn required_client_certificates() {
        let (s, mut edge, good, _bad, _dir) = mtls(ClientAuth::Required).await;
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let client = Client {
                versions: vec![version],
                ..Client::new(&[&s.ca])
            };
            assert!(client.talk(edge.addr, "a.example.com").await.is_err());
            assert!(edge.next().await.is_err());
        }
        let with_good = Client {
            identity: Some(good),
            ..Client::new(&[&s.ca])
        };
        with_good.talk(edge.addr, "a.example.com").await.unwrap();
        assert!(edge.next().await.unwrap().client_cert_sha256.is_some());
    }

    #[test]
    fn required_without_a_ca_is_a_config_error() {
        let mut s = setup();
        s.cfg.client_auth = ClientAuth::Required;
        let err = server_config(&s.cfg, s.resolver.clone())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tls.client_auth:"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_at_the_timeout() {
        let s = setup();
        let mut edge = Edge::start(&s.cfg, s.resolver.clone(), Duration::from_millis(300)).await;
        let start = Instant::now();
        let mut tcp = TcpStream::connect(edge.addr).await.unwrap();
        assert!(matches!(edge.next().await, Err(AcceptError::Timeout(_))));
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(T, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "the server closed the connection");
    }

    #[tokio::test]
    async fn plain_http_fails_fast() {
        let s = setup();
        let mut edge = Edge::start(&s.cfg, s.resolver.clone(), Duration::from_secs(30)).await;
        let start = Instant::now();
        let mut tcp = TcpStream::connect(edge.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
            .await
            .unwrap();
        let err = edge.next().await.unwrap_err();
        assert!(matches!(err, AcceptError::Handshake(_)), "{err}");
        assert!(start.elapsed() < Duration::from_secs(1));
        // Not even a partial ClientHello: a trickle of garbage also ends at the deadline, not
        // later.
        let mut edge = Edge::start(&s.cfg, s.resolver.clone(), Duration::from_millis(300)).await;
        let mut tcp = TcpStream::connect(edge.addr).await.unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01])
            .await
            .unwrap();
        assert!(matches!(edge.next().await, Err(AcceptError::Timeout(_))));
    }

    fn key_lines(pem: &str) -> Vec<&str> {
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 8)
            .collect()
    }

    #[test]
    fn mismatched_key_names_the_entry_and_hides_the_key() {
        let s = setup();
        let dir = tempfile::tempdir().unwrap();
        let other = leaf(&s.ca, &["c.example.com"]);
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
        let s = setup();
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
        let ca = ca("edge test CA");
        let dir = tempfile::tempdir().unwrap();
        let ec = KeyPair::from_pem_and_sign_algo(EC_SEC1_KEY_PKCS8, &rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap();
        let ec = Leaf {
            key_pem: EC_SEC1_KEY.into(),
            ..leaf_with(&ca, &["ec.example.com"], ec, |_| {})
        };
        let rsa =
            KeyPair::from_pem_and_sign_algo(RSA_PKCS1_KEY_PKCS8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let rsa = Leaf {
            key_pem: RSA_PKCS1_KEY.into(),
            ..leaf_with(&ca, &["RSA.example.com."], rsa, |_| {})
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
        let ca = ca("edge test CA");
        let dir = tempfile::tempdir().unwrap();
        let expired = leaf_with(
            &ca,
            &["old.example.com"],
            KeyPair::generate().unwrap(),
            |p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            },
        );
        let future = leaf_with(
            &ca,
            &["new.example.com", "old.example.com"],
            KeyPair::generate().unwrap(),
            |p| {
                p.not_before = rcgen::date_time_ymd(2090, 1, 1);
                p.not_after = rcgen::date_time_ymd(2091, 1, 1);
            },
        );
        let no_name = leaf(&ca, &[]);
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

    #[tokio::test]
    async fn upstream_verifies_against_the_bundle_or_the_system() {
        let s = setup();
        let dir = tempfile::tempdir().unwrap();
        let edge = Edge::start(&s.cfg, s.resolver.clone(), T).await;
        let bundle = write(dir.path(), "ca.pem", &s.ca.pem(), 0o644);
        let key = "routes[0].upstream_ca";
        let ours = TlsConnector::from(upstream_client_config(Some(&bundle), key).unwrap());
        let name = |n: &str| server_name(n).unwrap();

        let tcp = TcpStream::connect(edge.addr).await.unwrap();
        let mut tls = connect(&ours, name("a.example.com"), tcp, T).await.unwrap();
        tls.write_all(b"hi").await.unwrap();

        let tcp = TcpStream::connect(edge.addr).await.unwrap();
        let err = connect(&ours, name("wrong.example.com"), tcp, T)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");

        let system = TlsConnector::from(upstream_client_config(None, key).unwrap());
        let tcp = TcpStream::connect(edge.addr).await.unwrap();
        let err = connect(&system, name("a.example.com"), tcp, T)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");

        assert!(server_name("not a name").is_err());
        assert!(server_name("10.0.0.1").is_ok());
        let not_pem = write(dir.path(), "x.pem", "hello", 0o644);
        let err = upstream_client_config(Some(&not_pem), key)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("routes[0].upstream_ca: no CERTIFICATE block"),
            "{err}"
        );
    }

    /// A client that keeps its session cache across connections; returns whether the n-th
    /// handshake was resumed.
    async fn resumes(client: &TlsConnector, addr: SocketAddr) -> bool {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("a.example.com").unwrap();
        let mut tls = client.connect(name, tcp).await.unwrap();
        ping(&mut tls).await.unwrap(); // also delivers the TLS 1.3 tickets
        tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    #[tokio::test]
    async fn resumed_sessions_keep_the_client_certificate_digest() {
        let (s, mut edge, good, _bad, _dir) = mtls(ClientAuth::Optional).await;
        let want: [u8; 32] = Sha256::digest(&good.der).into();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let client = Client {
                identity: Some(good.clone()),
                versions: vec![version],
                ..Client::new(&[&s.ca])
            };
            let connector = TlsConnector::from(client.config());
            assert!(!resumes(&connector, edge.addr).await);
            assert!(resumes(&connector, edge.addr).await, "{version:?} resumes");
            for _ in 0..2 {
                assert_eq!(edge.next().await.unwrap().client_cert_sha256, Some(want));
            }
        }
    }

    /// Serves with whatever config `current` holds at accept time, like the gateway's engine.
    async fn serve_swappable(current: Arc<ArcSwap<ServerConfig>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = TlsAcceptor::from(current.load_full());
                tokio::spawn(async move {
                    if let Ok((mut tls, _)) = accept(&acceptor, tcp, T).await {
                        let mut buf = [0u8; 64];
                        while let Ok(n @ 1..) = tls.read(&mut buf).await {
                            let _ = tls.write_all(&buf[..n]).await;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_reload_keeps_resumption_unless_client_certificates_are_checked() {
        let mut s = setup();
        let current = Arc::new(ArcSwap::from(edge_config(&s.cfg, None).unwrap()));
        let addr = serve_swappable(current.clone()).await;
        let connector = TlsConnector::from(Client::new(&[&s.ca]).config());
        assert!(!resumes(&connector, addr).await);
        assert!(resumes(&connector, addr).await);

        // Reload without client_ca: tickets from before still work.
        current.store(edge_config(&s.cfg, Some(&current.load())).unwrap());
        assert!(resumes(&connector, addr).await, "resumed across the reload");
        // A fresh start (no previous) does not know them.
        current.store(edge_config(&s.cfg, None).unwrap());
        assert!(!resumes(&connector, addr).await);

        // With client_ca, a reload never carries sessions over.
        let dir = tempfile::tempdir().unwrap();
        s.cfg.client_ca = Some(write(
            dir.path(),
            "clients.pem",
            &ca("device CA").pem(),
            0o644,
        ));
        current.store(edge_config(&s.cfg, Some(&current.load())).unwrap());
        assert!(!resumes(&connector, addr).await);
        assert!(resumes(&connector, addr).await);
        current.store(edge_config(&s.cfg, Some(&current.load())).unwrap());
        assert!(
            !resumes(&connector, addr).await,
            "no session outlives a client_ca reload"
        );

        s.cfg.certificates[1].key = s.cfg.certificates[0].key.clone();
        let err = edge_config(&s.cfg, Some(&current.load()))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("tls.certificates[1].key: private key does not match"),
            "{err}"
        );
    }
}
