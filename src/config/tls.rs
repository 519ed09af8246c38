//! The `[tls]` table checked into a [`TlsConfig`]: the listener, the lowest version, the certificates
//! (paths resolved against the config file's folder) and client authentication. The files themselves are
//! read by the transport's TLS set-up (`transport::tls`), which names problems by the same keys.

use super::context::Ctx;
use super::file::FileTls;
use super::model::*;
use super::values::check_listen;

pub(super) fn tls(cx: &Ctx, t: FileTls) -> Result<TlsConfig, ConfigError> {
    tls_at(cx, t, "tls")
}

/// [`tls`] for a table at `at` (`tls`, or `verify.tls`, whose errors name their own keys).
pub(super) fn tls_at(cx: &Ctx, t: FileTls, at: &str) -> Result<TlsConfig, ConfigError> {
    let key = |k: &str| format!("{at}.{k}");
    check_listen(&t.listen).map_err(|p| cx.err(&key("listen"), p))?;
    let min_version = match t.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(v) => {
            return Err(cx.err(
                &key("min_version"),
                format!("{v:?} is not \"1.2\" or \"1.3\" (older versions are never offered)"),
            ))
        }
    };
    if t.certificates.is_empty() {
        return Err(cx.err(
            &key("certificates"),
            format!("at least one [[{at}.certificates]] entry (cert + key) is needed"),
        ));
    }
    let mut certificates = Vec::with_capacity(t.certificates.len());
    for (i, c) in t.certificates.iter().enumerate() {
        for (key, value) in [("cert", &c.cert), ("key", &c.key)] {
            if value.trim().is_empty() {
                return Err(cx.err(
                    &format!("{at}.certificates[{i}].{key}"),
                    "must not be empty",
                ));
            }
        }
        certificates.push(CertFiles {
            cert: cx.path(&c.cert),
            key: cx.path(&c.key),
        });
    }
    let client_ca = match t.client_ca.as_deref() {
        Some("") => return Err(cx.err(&key("client_ca"), "must not be empty")),
        Some(p) => Some(cx.path(p)),
        None => None,
    };
    if t.client_auth.is_some() && client_ca.is_none() {
        return Err(cx.err(
            &key("client_auth"),
            format!("needs {at}.client_ca: the CA that signs the client certificates"),
        ));
    }
    Ok(TlsConfig {
        listen: t.listen,
        min_version,
        certificates,
        client_ca,
        client_auth: t.client_auth.unwrap_or(ClientAuth::Optional),
    })
}
