//! Connection strings: parsing both of libpq's forms (a `postgres://` URL or `key=value` words, see
//! [`crate::config::store_url`]) with libpq's `sslmode` values and `sslrootcert` on top of what tokio-postgres
//! reads, the password redacted from every message, the rustls set-up each `sslmode` asks for, and the
//! warning `check-config` gives when the store is reached without a verified certificate.
//!
//! Without `sslmode`, a server on another host must offer TLS with a certificate valid for its name
//! (`verify-full`: the chain to `sslrootcert` or the system's roots, and the host name); on loopback or a
//! Unix socket TLS is used when offered, unchecked (`prefer`), unless `sslrootcert` is given (`verify-full`).
//! `prefer` and `require` written out keep libpq's meaning: encryption without a certificate check (the
//! chain is checked when `sslrootcert` is given).

use super::{StoreError, BUSY_TIMEOUT};
use crate::config::redact_url;
use crate::config::store_url::{conninfo_pairs, form, hide_secrets_of, percent_decode, Form};
use crate::crypto::{self, Roots};
use postgres::config::{Host, SslMode};
use postgres::error::SqlState;
use postgres::{Client, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
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

impl SslPolicy {
    fn name(self) -> &'static str {
        match self {
            SslPolicy::Disable => "disable",
            SslPolicy::Prefer => "prefer",
            SslPolicy::Require => "require",
            SslPolicy::VerifyCa => "verify-ca",
            SslPolicy::VerifyFull => "verify-full",
        }
    }
}

/// A parsed connection string. [`fmt::Display`] and [`fmt::Debug`] show it with the password as `***`.
#[derive(Clone)]
pub struct PgUrl {
    config: postgres::Config,
    /// `None` for `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
    policy: SslPolicy,
    /// Whether `sslmode` was written (else the policy is the default for the host).
    explicit: bool,
    /// `sslrootcert` as written (`None`: the system's roots).
    root: Option<String>,
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
    /// Parses a `postgres://` (or `postgresql://`) URL or `key=value` words with the options tokio-postgres
    /// knows plus libpq's `sslmode` values and `sslrootcert`. Unless the text says otherwise: a 10 s connect
    /// timeout and `application_name=tokengate`. Lock waits are limited to [`BUSY_TIMEOUT`]. No error
    /// shows the password.
    pub fn parse(text: &str) -> Result<PgUrl, StoreError> {
        let text = text.trim();
        let redacted = redact_url(text);
        let bad = |problem: String| StoreError::BadUrl {
            problem: hide_secrets_of(text, &problem),
            url: redacted.clone(),
        };
        let (mut mode, mut root) = (None, None);
        let mut config: postgres::Config = match form(text) {
            Some(Form::Url) => {
                if text.matches('@').count() > 1 {
                    return Err(bad(
                        "`@` appears more than once: write it as %40 in the user name, \
                         password and options"
                            .into(),
                    ));
                }
                let (base, query) = text.split_once('?').unwrap_or((text, ""));
                let mut passed = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    match percent_decode(key).as_str() {
                        "sslmode" => mode = Some(percent_decode(value)),
                        "sslrootcert" => root = Some(percent_decode(value)),
                        _ => passed.push(pair),
                    }
                }
                match passed.is_empty() {
                    true => base.parse(),
                    false => format!("{base}?{}", passed.join("&")).parse(),
                }
            }
            Some(Form::KeyValue) => {
                let mut words = Vec::new();
                for (key, value) in conninfo_pairs(text).map_err(bad)? {
                    match key.as_str() {
                        "sslmode" => mode = Some(value),
                        "sslrootcert" => root = Some(value),
                        _ => words.push(format!(
                            "{key}='{}'",
                            value.replace('\\', "\\\\").replace('\'', "\\'")
                        )),
                    }
                }
                words.join(" ").parse()
            }
            None => {
                // Words with a `=` and no scheme were meant as key=value: say what is wrong with them.
                let words = text.contains('=') && !text.contains(":/");
                return Err(bad(match conninfo_pairs(text) {
                    Err(problem) if words => format!("key=value words: {problem}"),
                    _ => "expected a postgres://user:password@host:port/database URL or key=value \
                          words such as host=db user=tokengate dbname=tokengate"
                        .into(),
                }));
            }
        }
        .map_err(|e| bad(pg_reason(&e)))?;
        let policy = match mode.as_deref() {
            None if root.is_none() && is_local(&config) => SslPolicy::Prefer,
            None => SslPolicy::VerifyFull,
            Some("disable") => SslPolicy::Disable,
            Some("prefer") => SslPolicy::Prefer,
            Some("require") => SslPolicy::Require,
            Some("verify-ca") => SslPolicy::VerifyCa,
            Some("verify-full") => SslPolicy::VerifyFull,
            Some(other) => {
                return Err(bad(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                )))
            }
        };
        config.ssl_mode(match policy {
            SslPolicy::Disable => SslMode::Disable,
            SslPolicy::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        set_defaults(&mut config);
        let tls = match policy {
            SslPolicy::Disable => None,
            _ => Some(tls_connector(policy, root.as_deref()).map_err(bad)?),
        };
        Ok(PgUrl {
            config,
            tls,
            policy,
            explicit: mode.is_some(),
            root,
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

    /// Why the connection is open to whoever sits on the path, when it goes to another host without a
    /// verified certificate (`None` on loopback and Unix sockets, and with `verify-full`). For
    /// `check-config` and `serve`; no connection is made.
    pub fn transport_warning(&self) -> Option<String> {
        if is_local(&self.config) {
            return None;
        }
        let system = matches!(self.root.as_deref(), None | Some("system"));
        let problem = match self.policy {
            SslPolicy::VerifyFull => return None,
            SslPolicy::Disable => "without TLS: the password exchange, every token row and every \
                answer are open to anyone on the path, who can also answer the sync queries with token \
                rows of their choosing"
                .to_string(),
            SslPolicy::Prefer => format!(
                "with TLS only when offered ({}): anyone on the path can decline it, read the traffic \
                 and answer the sync queries with token rows of their choosing",
                match self.root {
                    None => "and then without a certificate check",
                    Some(_) => "the chain checked, not the host name",
                }
            ),
            SslPolicy::Require if self.root.is_none() => "with TLS but without a certificate check: \
                anyone on the path can present any certificate, read the traffic and answer the sync \
                queries with token rows of their choosing"
                .to_string(),
            SslPolicy::VerifyCa | SslPolicy::Require if system => "checking the certificate's chain \
                against the system's roots but not the host name: any certificate from a public \
                authority passes"
                .to_string(),
            SslPolicy::VerifyCa | SslPolicy::Require => return None,
        };
        Some(format!(
            "the store at {} is reached {problem} (sslmode={}{}); use sslmode=verify-full (with \
             sslrootcert=PATH for a private CA)",
            hosts(&self.config),
            self.policy.name(),
            if self.explicit {
                ""
            } else {
                ", the default here"
            },
        ))
    }
}

/// Whether every server the configuration names is on this machine: a Unix socket, `localhost`, or a
/// loopback address (`hostaddr` when given, which is where tokio-postgres connects).
fn is_local(config: &postgres::Config) -> bool {
    let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
    (0..hosts.len().max(addrs.len())).all(|i| match (addrs.get(i), hosts.get(i)) {
        (Some(addr), _) => is_loopback(*addr),
        (None, Some(Host::Unix(_))) => true,
        (None, Some(Host::Tcp(name))) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(is_loopback)
        }
        (None, None) => true,
    })
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        v4 => v4.is_loopback(),
    }
}

/// The servers a configuration names, for messages: `db:5432, /run/postgresql`.
fn hosts(config: &postgres::Config) -> String {
    let ports = config.get_ports();
    let named: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => path.display().to_string(),
            }
        })
        .collect();
    match named.is_empty() {
        true => config
            .get_hostaddrs()
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        false => named.join(", "),
    }
}

/// The rustls connector for an `sslmode` other than `disable`, built by [`crate::crypto`] like every
/// client config of the crate (its provider, TLS 1.2 and 1.3, its roots: `sslrootcert`, or the system's
/// for none or `system`).
fn tls_connector(policy: SslPolicy, root: Option<&str>) -> Result<MakeRustlsConnect, String> {
    const KEY: &str = "sslrootcert";
    let algs = crypto::provider().signature_verification_algorithms;
    let checks_chain =
        matches!(policy, SslPolicy::VerifyCa | SslPolicy::VerifyFull) || root.is_some();
    let roots = || {
        let roots = match root {
            None | Some("system") => Roots::System,
            Some(path) => Roots::File(Path::new(path)),
        };
        crypto::root_store(KEY, roots).map_err(|e| e.to_string())
    };
    let config = if !checks_chain {
        let verifier = Verifier { chain: None, algs };
        crypto::client_builder(KEY)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    } else if policy == SslPolicy::VerifyFull {
        crypto::verifying_client(KEY, roots()?).map_err(|e| e.to_string())?
    } else {
        let chain =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots()?), crypto::provider())
                .build()
                .map_err(|e| e.to_string())?;
        let verifier = Verifier {
            chain: Some(chain),
            algs,
        };
        crypto::client_builder(KEY)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    };
    Ok(MakeRustlsConnect::new(config))
}

/// Checks the server's certificate for `prefer`, `require` and `verify-ca`: no check at all (`chain: None`,
/// encryption only, as libpq: `prefer` and `require` without `sslrootcert`), or the chain without the host
/// name. Handshake signatures are always checked.
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
    let mut certificate = false;
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        reason = format!("{reason}: {c}");
        certificate |= is_certificate_error(c);
        cause = c.source();
    }
    if certificate {
        reason.push_str(
            " (the server's certificate is not trusted for this host name: give the CA that signed it \
             with sslrootcert=PATH, or see sslmode in the README)",
        );
    }
    reason
}

/// Whether a cause is rustls refusing the server's certificate (as is, or inside the I/O error that
/// tokio-rustls wraps it in).
fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let inner = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .map(|i| i as &(dyn std::error::Error + 'static));
    [Some(e), inner].into_iter().flatten().any(|e| {
        matches!(
            e.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_))
        )
    })
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

/// What a connection gets unless the text says otherwise: a 10 s connect timeout and
/// `application_name=tokengate`; and lock waits limited to [`BUSY_TIMEOUT`] whatever it says.
fn set_defaults(config: &mut postgres::Config) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(text: &str) -> String {
        match PgUrl::parse(text) {
            Err(e @ StoreError::BadUrl { .. }) => format!("{e} {e:?}"),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn urls_print_without_passwords() {
        for (text, shown) in [
            (
                "postgres://tg:s3cret@db:5432/tok?sslmode=require",
                "postgres://tg:***@db:5432/tok?sslmode=require",
            ),
            (
                "host=db user=tg password='s3 cret' dbname=tok sslmode=disable",
                "host=db user=tg password=*** dbname=tok sslmode=disable",
            ),
        ] {
            let url = PgUrl::parse(text).unwrap();
            assert_eq!(url.to_string(), shown);
            assert!(!format!("{url:?}").contains("s3"), "{url:?}");
        }
    }

    #[test]
    fn both_forms_give_the_same_connection() {
        let url =
            PgUrl::parse("postgres://tg:p%40ss%20w@db:5433/tok?sslmode=require&connect_timeout=3")
                .unwrap();
        let words = PgUrl::parse(
            " host = db port=5433 user=tg password='p@ss w' dbname=tok sslmode=require connect_timeout=3 ",
        )
        .unwrap();
        for u in [&url, &words] {
            assert_eq!(u.config.get_password(), Some(&b"p@ss w"[..]));
            assert_eq!(u.config.get_user(), Some("tg"));
            assert_eq!(u.config.get_dbname(), Some("tok"));
            assert_eq!(u.config.get_ports(), &[5433]);
            assert_eq!(u.config.get_hosts(), &[Host::Tcp("db".into())]);
            assert_eq!(
                u.config.get_connect_timeout(),
                Some(&Duration::from_secs(3))
            );
            assert_eq!(u.config.get_application_name(), Some("tokengate"));
            assert_eq!(u.policy, SslPolicy::Require);
        }
        let quoted = PgUrl::parse(r"host=/run/pg password=it\'s\ x sslmode=disable").unwrap();
        assert_eq!(quoted.config.get_password(), Some(&b"it's x"[..]));
    }

    #[test]
    fn bad_urls_are_refused_without_passwords() {
        for (text, problem) in [
            ("postgres://tg:s3cret@db/tok?sslmode=allow", "sslmode=allow"),
            ("postgres://tg:s3cret@db/tok?s3cret=1", "unknown option"),
            ("postgres://tg:s3cret@db:port/tok", "port"),
            (
                "postgres://tg:s3cret@db/tok?sslmode=verify-full&sslrootcert=/nonexistent.pem",
                "/nonexistent.pem",
            ),
            ("postgres://tg:s3c@ret@db/tok", "%40"),
            ("postgres:/tg:s3cret@db/tok", "expected a postgres://"),
            ("tg:s3cret@db/tok", "expected a postgres://"),
            ("host=db password='s3cret", "no closing quote"),
            ("host=db s3cret", "word 2 is not key=value"),
            ("host=db PASSWORD=s3cret", "unknown option"),
            ("host=db password=s3cret sslmode=s3cret", "sslmode=***"),
        ] {
            let e = bad(text);
            assert!(e.contains(problem), "{text}: {e}");
            assert!(!e.contains("s3cret") && !e.contains("ret@"), "{text}: {e}");
        }
    }

    #[test]
    fn the_default_checks_certificates_except_on_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["db".into()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let ca = ca.display();
        for (text, policy) in [
            ("postgres://tg@127.0.0.1/tok".to_string(), SslPolicy::Prefer),
            ("postgres://tg@localhost:5433/tok".into(), SslPolicy::Prefer),
            ("postgres://tg@[::1]/tok".into(), SslPolicy::Prefer),
            ("host=/run/postgresql dbname=tok".into(), SslPolicy::Prefer),
            (
                "host=db hostaddr=127.0.0.1 dbname=tok".into(),
                SslPolicy::Prefer,
            ),
            (
                format!("postgres://tg@db/tok?sslrootcert={ca}"),
                SslPolicy::VerifyFull,
            ),
            (
                format!("postgres://tg@127.0.0.1/tok?sslrootcert={ca}"),
                SslPolicy::VerifyFull,
            ),
            (
                format!("host=10.0.0.5 sslrootcert={ca}"),
                SslPolicy::VerifyFull,
            ),
            (
                format!("host=localhost,db sslrootcert={ca}"),
                SslPolicy::VerifyFull,
            ),
            (
                "postgres://tg@db/tok?sslmode=prefer".into(),
                SslPolicy::Prefer,
            ),
        ] {
            let url = PgUrl::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(url.policy, policy, "{text}");
        }
    }

    #[test]
    fn unverified_remote_stores_are_warned_about() {
        for text in [
            "postgres://tg:s3cret@db.internal/tok?sslmode=disable",
            "postgres://tg:s3cret@10.0.0.5/tok?sslmode=prefer",
            "host=db.internal password=s3cret sslmode=require",
            "host=localhost,db.internal sslmode=disable",
            "host=db hostaddr=10.1.1.1 sslmode=require",
            "postgres://tg@db/tok?sslmode=verify-ca",
        ] {
            let w = PgUrl::parse(text)
                .unwrap()
                .transport_warning()
                .unwrap_or_else(|| panic!("no warning for {text}"));
            assert!(
                w.contains("sslmode=verify-full") && !w.contains("s3cret"),
                "{w}"
            );
            assert!(w.contains("db") || w.contains("10."), "{w}");
        }
        for text in [
            "postgres://tg@127.0.0.1/tok?sslmode=disable",
            "host=/run/postgresql sslmode=disable",
            "postgres://tg@localhost/tok?sslmode=require",
            "postgres://tg@db/tok?sslmode=verify-full",
            "host=db hostaddr=127.0.0.1 sslmode=disable",
        ] {
            let url = PgUrl::parse(text).unwrap();
            assert_eq!(url.transport_warning(), None, "{text}");
        }
    }
}
