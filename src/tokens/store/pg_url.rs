//! Connection URLs: parsing (libpq's `sslmode` values and `sslrootcert` on top of what tokio-postgres
//! reads), redaction of the password for every message, and the rustls set-up each `sslmode` asks for.

use super::{StoreError, BUSY_TIMEOUT};
use postgres::config::SslMode;
use postgres::error::SqlState;
use postgres::{Client, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How `sslmode` asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslPolicy {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A parsed connection URL. [`fmt::Display`] and [`fmt::Debug`] show it with the password as `***`.
#[derive(Clone)]
pub struct PgUrl {
    config: postgres::Config,
    /// `None` for `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
    pub(super) redacted: String,
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({:?})", self.redacted)
    }
}

impl PgUrl {
    /// Parses `postgres://` (or `postgresql://`) URLs with the options tokio-postgres knows plus libpq's
    /// `sslmode` values and `sslrootcert`. Unless the URL says otherwise: a 10 s connect timeout and
    /// `application_name=tokengate`. Lock waits are limited to [`BUSY_TIMEOUT`].
    pub fn parse(url: &str) -> Result<PgUrl, StoreError> {
        let (redacted, secret) = redact(url);
        let bad = |problem: String| StoreError::BadUrl {
            problem: match secret {
                Some(s) if !s.is_empty() => problem.replace(s, "***"),
                _ => problem,
            },
            url: redacted.clone(),
        };
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        if !base.starts_with("postgres://") && !base.starts_with("postgresql://") {
            return Err(bad(
                "expected postgres://user:password@host:port/database".into()
            ));
        }
        let (mut policy, mut root, mut passed) = (SslPolicy::Prefer, None, Vec::new());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", mode)) => {
                    policy = match mode {
                        "disable" => SslPolicy::Disable,
                        "prefer" => SslPolicy::Prefer,
                        "require" => SslPolicy::Require,
                        "verify-ca" => SslPolicy::VerifyCa,
                        "verify-full" => SslPolicy::VerifyFull,
                        other => {
                            return Err(bad(format!(
                                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                            )))
                        }
                    }
                }
                Some(("sslrootcert", path)) => root = Some(percent_decode(path)),
                _ => passed.push(pair),
            }
        }
        let rest = match passed.is_empty() {
            true => base.to_string(),
            false => format!("{base}?{}", passed.join("&")),
        };
        let mut config: postgres::Config = rest.parse().map_err(|e| bad(pg_reason(&e)))?;
        config.ssl_mode(match policy {
            SslPolicy::Disable => SslMode::Disable,
            SslPolicy::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("tokengate");
        }
        let options = format!(
            "{} -c lock_timeout={}",
            config.get_options().unwrap_or(""),
            BUSY_TIMEOUT.as_millis()
        );
        config.options(options.trim_start());
        let tls = match policy {
            SslPolicy::Disable => None,
            _ => Some(tls_connector(policy, root.as_deref()).map_err(bad)?),
        };
        Ok(PgUrl {
            config,
            tls,
            redacted,
        })
    }

    /// Opens a connection; every failure is [`StoreError::Unavailable`].
    pub(super) fn connect(&self) -> Result<Client, StoreError> {
        match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
        .map_err(|error| StoreError::Unavailable {
            url: self.redacted.clone(),
            error,
        })
    }
}

/// The URL with its password (user info and `password=` option) replaced by `***`, and the password.
fn redact(url: &str) -> (String, Option<&str>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return ("(not a postgres:// URL)".to_string(), None);
    };
    let (mut shown, mut secret, mut tail) = (format!("{scheme}://"), None, rest);
    // User info ends at the last `@` before the query, or else at the last `@` at all: a password with an
    // unescaped `/`, `@` or `?` is still hidden whole.
    let query_at = rest.find('?').unwrap_or(rest.len());
    if let Some(at) = rest[..query_at].rfind('@').or_else(|| rest.rfind('@')) {
        let userinfo = &rest[..at];
        match userinfo.split_once(':') {
            Some((user, password)) => {
                secret = Some(password);
                shown = format!("{shown}{user}:***");
            }
            None => shown.push_str(userinfo),
        }
        tail = &rest[at..];
    }
    let (hosts, query) = tail.split_once('?').unwrap_or((tail, ""));
    shown.push_str(hosts);
    if !query.is_empty() {
        let pairs: Vec<&str> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("password", value)) => {
                    secret = secret.or(Some(value));
                    "password=***"
                }
                _ => pair,
            })
            .collect();
        shown = format!("{shown}?{}", pairs.join("&"));
    }
    // Wherever else it appears (say, pasted into the query by mistake), it is hidden too.
    if let Some(s) = secret.filter(|s| !s.is_empty()) {
        shown = shown.replace(s, "***");
    }
    (shown, secret)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls connector for an `sslmode` other than `disable` (ring provider, TLS 1.2 and 1.3).
fn tls_connector(policy: SslPolicy, root: Option<&str>) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let checks_chain = matches!(policy, SslPolicy::VerifyCa | SslPolicy::VerifyFull)
        || (policy == SslPolicy::Require && root.is_some());
    let config = if !checks_chain {
        let verifier = Verifier { chain: None, algs };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    } else {
        let roots = Arc::new(root_store(root)?);
        if policy == SslPolicy::VerifyFull {
            builder.with_root_certificates(roots)
        } else {
            let chain = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| e.to_string())?;
            let verifier = Verifier {
                chain: Some(chain),
                algs,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    Ok(MakeRustlsConnect::new(config.with_no_client_auth()))
}

/// Roots from `sslrootcert` (a PEM file), or the system's for none or `system`.
fn root_store(root: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match root {
        None | Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
        }
    }
    match store.is_empty() {
        true => Err(format!(
            "no root certificates in {}",
            root.unwrap_or("the system store")
        )),
        false => Ok(store),
    }
}

/// Checks the server's certificate for `prefer`, `require` and `verify-ca`: no check at all (`chain: None`,
/// encryption only, as libpq), or the chain without the host name. Handshake signatures are always checked.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A PostgreSQL client error with its causes, on one line: the server's severity, message and SQLSTATE
/// (not its DETAIL, which can quote row values such as a digest), or the client's error chain.
pub fn pg_reason(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut reason = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        reason = format!("{reason}: {c}");
        cause = c.source();
    }
    reason
}

/// Maps a client error: a broken or refused connection is [`StoreError::Unavailable`], a lock wait that
/// timed out [`StoreError::Busy`], anything else the server said [`StoreError::Postgres`].
pub(super) fn to_err(url: &PgUrl, error: postgres::Error) -> StoreError {
    let code = error.code().map_or("", SqlState::code);
    let url = url.redacted.clone();
    if code == SqlState::LOCK_NOT_AVAILABLE.code() {
        return StoreError::Busy {
            path: url,
            waited: BUSY_TIMEOUT,
        };
    }
    let io = error.is_closed()
        || std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>());
    // Class 08: connection exception; 57P: the server shuts down or terminated this session.
    if io || code.starts_with("08") || code.starts_with("57P") {
        StoreError::Unavailable { url, error }
    } else {
        StoreError::Postgres { url, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_print_without_passwords() {
        let cases = [
            (
                "postgres://tg:s3cret@db:5432/tok",
                "postgres://tg:***@db:5432/tok",
            ),
            (
                "postgresql://tg:p%40ss@db/tok?sslmode=require",
                "postgresql://tg:***@db/tok?sslmode=require",
            ),
            (
                "postgres://tg:pa/ss@word@db/tok",
                "postgres://tg:***@db/tok",
            ),
            (
                "postgres://tg@db/tok?password=s3cret&x=1",
                "postgres://tg@db/tok?password=***&x=1",
            ),
            (
                "postgres://tg:pa?ss@db/tok?sslmode=require",
                "postgres://tg:***@db/tok?sslmode=require",
            ),
            (
                "postgres://tg:secret@db/tok?x=secret",
                "postgres://tg:***@db/tok?x=***",
            ),
            ("postgres://db/tok", "postgres://db/tok"),
            ("host=db password=s3cret", "(not a postgres:// URL)"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url).0, shown);
        }
        let url = PgUrl::parse("postgres://tg:s3cret@db:5432/tok").unwrap();
        assert_eq!(url.to_string(), "postgres://tg:***@db:5432/tok");
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn bad_urls_are_refused_without_passwords() {
        for url in [
            "host=db password=s3cret",
            "postgres://tg:s3cret@db/tok?sslmode=allow",
            "postgres://tg:s3cret@db/tok?s3cret=1",
            "postgres://tg:s3cret@db:port/tok",
            "postgres://tg:s3cret@db/tok?sslmode=verify-full&sslrootcert=/nonexistent.pem",
        ] {
            let e = PgUrl::parse(url).unwrap_err();
            assert!(matches!(e, StoreError::BadUrl { .. }), "{url}: {e}");
            assert!(
                !e.to_string().contains("s3cret") && !format!("{e:?}").contains("s3cret"),
                "{e}"
            );
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%20b/c.pem"), "/a b/c.pem");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
