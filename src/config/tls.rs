//! The `[tls]` table checked into a [`TlsConfig`]: the listener, the lowest version, the certificates
//! (paths resolved against the config file's folder) and client authentication. The files themselves are
//! read by the transport's TLS set-up (`transport::tls`), which names problems by the same keys. Also
//! resumption (`session_tickets`, `ticket_lifetime`), the record size (`max_fragment_size`) and the
//! refusal of `early_data` (0-RTT can be replayed).

use super::context::Ctx;
use super::file::FileTls;
use super::model::*;
use super::values::{check_listen, parse_duration};
use std::time::Duration;

/// `alpn`: `["h2", "http/1.1"]` by default on the gateway's listener, `["http/1.1"]` on the verify
/// listener (which serves HTTP/1.1 only); each protocol once, at least one.
fn alpn(cx: &Ctx, alpn: Option<&[String]>, at: &str) -> Result<Vec<Alpn>, ConfigError> {
    let key = format!("{at}.alpn");
    let verify = at != "tls";
    let Some(names) = alpn else {
        return Ok(if verify {
            vec![Alpn::Http11]
        } else {
            vec![Alpn::H2, Alpn::Http11]
        });
    };
    if names.is_empty() {
        return Err(cx.err(
            &key,
            "must name at least one protocol (\"h2\", \"http/1.1\")",
        ));
    }
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let p = match n.as_str() {
            "h2" if verify => {
                return Err(cx.err(&key, "\"h2\": the verify listener serves HTTP/1.1 only"))
            }
            "h2" => Alpn::H2,
            "http/1.1" => Alpn::Http11,
            other => return Err(cx.err(&key, format!("{other:?} is not \"h2\" or \"http/1.1\""))),
        };
        if out.contains(&p) {
            return Err(cx.err(&key, format!("{n:?} is listed twice")));
        }
        out.push(p);
    }
    Ok(out)
}

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
    let ticket_lifetime = match t.ticket_lifetime.as_deref() {
        None => Duration::from_secs(24 * 3600),
        Some(v) => {
            let d = parse_duration(v).map_err(|p| cx.err("tls.ticket_lifetime", p))?;
            if d < Duration::from_secs(1) || d > MAX_TICKET_LIFETIME {
                return Err(cx.err(
                    "tls.ticket_lifetime",
                    format!(
                        "{v:?} is not between 1s and 7d (RFC 8446 allows tickets at most 7 days)"
                    ),
                ));
            }
            d
        }
    };
    if let Some(n) = t.max_fragment_size {
        if !(512..=16384).contains(&n) {
            return Err(cx.err(
                "tls.max_fragment_size",
                format!("{n} is not between 512 and 16384 bytes (the TLS record maximum)"),
            ));
        }
    }
    if t.early_data == Some(true) {
        return Err(cx.err(
            "tls.early_data",
            "0-RTT is not offered: early data can be replayed by anyone who saw it, and a replayed \
             request (an upload, a command to a device) would be decided and forwarded twice",
        ));
    }
    let alpn = alpn(cx, t.alpn.as_deref(), at)?;
    Ok(TlsConfig {
        alpn,
        listen: t.listen,
        min_version,
        certificates,
        client_ca,
        client_auth: t.client_auth.unwrap_or(ClientAuth::Optional),
        session_tickets: t.session_tickets.unwrap_or(true),
        ticket_lifetime,
        max_fragment_size: t.max_fragment_size,
    })
}
