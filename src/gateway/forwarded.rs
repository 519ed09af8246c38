//! The original request behind a forward-auth question: nginx `auth_request`, Caddy `forward_auth`,
//! Traefik ForwardAuth and Envoy `ext_authz` describe the request they are holding in `X-Forwarded-*`
//! fields (or nginx's `X-Original-URI`, or Envoy's path after `path_prefix`). [`original`] turns those
//! fields into the same [`Request`] facts the gateway's own listener gathers, so that
//! [`super::Gate::decide`] answers both doors with one decision.
//!
//! Pure: no I/O. The transport believes these fields only from `[verify] trusted_proxies` (anyone else
//! is refused before this is called). Ambiguity is refused, never resolved: a field sent twice, two
//! different URIs, or a client certificate hash on a request said to be plain HTTP is a 400.

use super::decision::{Refusal, Request, TlsPeer};
use std::net::IpAddr;

/// The `X-Forwarded-*` fields of a verify request, as sent (trimmed); `repeated` names the first one that
/// came more than once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarded<'a> {
    pub method: Option<&'a [u8]>,
    pub uri: Option<&'a [u8]>,
    /// nginx's `X-Original-URI` (set by `proxy_set_header X-Original-URI $request_uri`).
    pub original_uri: Option<&'a [u8]>,
    pub host: Option<&'a [u8]>,
    pub proto: Option<&'a [u8]>,
    pub client: Option<&'a [u8]>,
    /// Envoy's `X-Forwarded-Client-Cert`.
    pub client_cert: Option<&'a [u8]>,
    pub repeated: Option<&'static str>,
}

/// The field names [`Forwarded`] reads, lower-case, in its order.
pub const FIELDS: [&str; 7] = [
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-original-uri",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-for",
    "x-forwarded-client-cert",
];

impl<'a> Forwarded<'a> {
    /// Sets the field `FIELDS[i]` (a second value marks it repeated).
    pub fn set(&mut self, i: usize, value: &'a [u8]) {
        let slot = match i {
            0 => &mut self.method,
            1 => &mut self.uri,
            2 => &mut self.original_uri,
            3 => &mut self.host,
            4 => &mut self.proto,
            5 => &mut self.client,
            6 => &mut self.client_cert,
            _ => return,
        };
        if slot.is_some() {
            self.repeated.get_or_insert(FIELDS[i]);
        }
        *slot = Some(value.trim_ascii());
    }
}

/// The verify request itself: its own method and target, its credential, and who sent it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub authorization: Option<&'a [u8]>,
    pub authorizations: usize,
    /// The asker (a trusted proxy).
    pub peer: Option<IpAddr>,
    pub forwarded: Forwarded<'a>,
}

/// The original request, as the fields describe it.
#[derive(Debug, Clone)]
pub struct Original<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub host: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
    pub authorizations: usize,
    /// The client's address (the last `X-Forwarded-For` entry), else the asker's.
    pub peer: Option<IpAddr>,
    /// Set when the original request came over TLS (`X-Forwarded-Proto: https`, or a client
    /// certificate hash in XFCC).
    pub tls: Option<TlsPeer>,
}

impl Original<'_> {
    /// The facts for [`super::Gate::decide`]. The body is not the verify door's to see: no length.
    pub fn request(&self) -> Request<'_> {
        Request {
            method: self.method,
            target: self.target,
            host: self.host,
            authorization: self.authorization,
            authorizations: self.authorizations,
            content_length: None,
            peer: self.peer,
            tls: self.tls.as_ref(),
        }
    }
}

/// Why the fields do not describe one request: answered 400 `invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unclear(pub std::borrow::Cow<'static, str>);

impl Unclear {
    /// The gateway's answer to it.
    pub fn refusal(self) -> Refusal {
        Refusal::new(crate::gateway::answer::Answer::InvalidRequest, self.0)
    }
}

fn bad(detail: &'static str) -> Unclear {
    Unclear(detail.into())
}

/// The original request behind `asked`. `path_prefix`: Envoy `ext_authz`'s prefix, stripped from the
/// verify request's own target when no field names the URI.
pub fn original<'a>(asked: &Asked<'a>, path_prefix: Option<&str>) -> Result<Original<'a>, Unclear> {
    let f = &asked.forwarded;
    if let Some(name) = f.repeated {
        return Err(Unclear(format!("{name} was sent more than once").into()));
    }
    let target =
        match (f.uri, f.original_uri) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(
                    "X-Forwarded-Uri and X-Original-URI name different requests",
                ))
            }
            (Some(u), _) | (None, Some(u)) => u,
            (None, None) => match path_prefix {
                Some(prefix) => strip_prefix(asked.target, prefix)
                    .ok_or_else(|| bad("the path does not start with the verify path_prefix"))?,
                None => return Err(bad(
                    "the original request is not described: send X-Forwarded-Uri or X-Original-URI",
                )),
            },
        };
    if target.is_empty() {
        return Err(bad("the original request's URI is empty"));
    }
    let method = f.method.unwrap_or(asked.method);
    if method.is_empty() || !method.iter().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad("X-Forwarded-Method is not a method"));
    }
    let cert = match f.client_cert {
        None => None,
        Some(v) => Some(client_cert_hash(v)?),
    };
    let is = |p: &[u8], names: [&[u8]; 2]| names.iter().any(|n| p.eq_ignore_ascii_case(n));
    let https = match f.proto {
        None => cert.is_some(),
        Some(p) if is(p, [b"https", b"wss"]) => true,
        Some(p) if is(p, [b"http", b"ws"]) => {
            if cert.is_some() {
                return Err(bad(
                    "a client certificate was forwarded for a request said to be plain HTTP",
                ));
            }
            false
        }
        Some(_) => return Err(bad("X-Forwarded-Proto is neither http nor https")),
    };
    let peer = f.client.and_then(last_address).or(asked.peer);
    Ok(Original {
        method,
        target,
        host: f.host.filter(|h| !h.is_empty()),
        authorization: asked.authorization,
        authorizations: asked.authorizations,
        peer,
        tls: https.then_some(TlsPeer {
            client_cert_sha256: cert.flatten(),
        }),
    })
}

/// `target` without `prefix` (on a segment boundary), keeping the leading `/`.
fn strip_prefix<'a>(target: &'a [u8], prefix: &str) -> Option<&'a [u8]> {
    let rest = target.strip_prefix(prefix.as_bytes())?;
    match rest.first() {
        Some(b'/') => Some(rest),
        _ => None,
    }
}

/// The client address an `X-Forwarded-For` names: its last entry (the one the asking proxy itself
/// saw; entries before it are the client's own word). `None` when it is not an address.
fn last_address(v: &[u8]) -> Option<IpAddr> {
    let last = v.rsplit(|&b| b == b',').next()?.trim_ascii();
    let text = std::str::from_utf8(last).ok()?;
    text.parse()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// The `Hash=` of an `X-Forwarded-Client-Cert` (Envoy): the SHA-256 of the client certificate's DER, as
/// hex. `Ok(None)`: the element has no hash (no verified certificate). More than one element (a chain
/// of proxies) is refused: which one is the device's is not ours to guess.
fn client_cert_hash(v: &[u8]) -> Result<Option<[u8; 32]>, Unclear> {
    let text = std::str::from_utf8(v).map_err(|_| bad("X-Forwarded-Client-Cert is not text"))?;
    let mut hash = None;
    let mut in_quotes = false;
    let mut start = 0;
    let mut pairs = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                return Err(bad("X-Forwarded-Client-Cert holds more than one element"))
            }
            ';' if !in_quotes => {
                pairs.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pairs.push(&text[start..]);
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("hash") {
            if hash.is_some() {
                return Err(bad("X-Forwarded-Client-Cert has two Hash values"));
            }
            let v = v.trim().trim_matches('"');
            let mut out = [0u8; 32];
            if v.len() != 64 {
                return Err(bad("X-Forwarded-Client-Cert Hash is not a SHA-256 in hex"));
            }
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(&v[2 * i..2 * i + 2], 16)
                    .map_err(|_| bad("X-Forwarded-Client-Cert Hash is not a SHA-256 in hex"))?;
            }
            hash = Some(out);
        }
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked<'a>(fields: &[(usize, &'a str)]) -> Asked<'a> {
        let mut forwarded = Forwarded::default();
        for (i, v) in fields {
            forwarded.set(*i, v.as_bytes());
        }
        Asked {
            method: b"GET",
            target: b"/auth",
            authorization: Some(b"Bearer x"),
            authorizations: 1,
            peer: Some("127.0.0.1".parse().unwrap()),
            forwarded,
        }
    }

    #[test]
    fn fields_describe_the_original_request() {
        let a = asked(&[
            (0, "POST"),
            (1, "/iot/a?b=1"),
            (3, "gw.example"),
            (4, "HTTPS"),
            (5, "203.0.113.9, 198.51.100.7"),
        ]);
        let o = original(&a, None).unwrap();
        assert_eq!(o.method, b"POST");
        assert_eq!(o.target, b"/iot/a?b=1");
        assert_eq!(o.host, Some(&b"gw.example"[..]));
        assert_eq!(
            o.peer,
            Some("198.51.100.7".parse().unwrap()),
            "the last entry"
        );
        assert_eq!(
            o.tls,
            Some(TlsPeer {
                client_cert_sha256: None
            })
        );
        let r = o.request();
        assert_eq!((r.authorizations, r.content_length), (1, None));
        // nginx's field; the asker's own method when none is forwarded; plain HTTP.
        let o = original(&asked(&[(2, "/iot/x"), (4, "http")]), None).unwrap();
        assert_eq!(
            (o.method, o.target, o.tls),
            (&b"GET"[..], &b"/iot/x"[..], None)
        );
        // An unparsable X-Forwarded-For: the asker's address.
        let o = original(&asked(&[(1, "/a"), (5, "unknown")]), None).unwrap();
        assert_eq!(o.peer, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn envoy_prefix_and_client_certificate() {
        let mut a = asked(&[]);
        a.target = b"/authz/iot/a?x";
        let o = original(&a, Some("/authz")).unwrap();
        assert_eq!(o.target, b"/iot/a?x");
        a.target = b"/authzzz/iot";
        assert!(original(&a, Some("/authz")).is_err());
        let hash = "ab".repeat(32);
        a.target = b"/authz/iot";
        let xfcc = format!("By=spiffe://x;Hash={hash};Subject=\"CN=a,O=b\";URI=");
        a.forwarded.set(6, xfcc.as_bytes());
        let o = original(&a, Some("/authz")).unwrap();
        assert_eq!(o.tls.unwrap().client_cert_sha256, Some([0xab; 32]));
    }

    #[test]
    fn ambiguity_is_refused() {
        for fields in [
            vec![(1, "/a"), (1, "/b")],
            vec![(1, "/a"), (2, "/b")],
            vec![],
            vec![(1, "")],
            vec![(1, "/a"), (0, "GE T")],
            vec![(1, "/a"), (4, "gopher")],
            vec![(1, "/a"), (4, "http"), (6, "Hash=0000000000000000000000000000000000000000000000000000000000000000")],
            vec![(1, "/a"), (6, "Hash=00")],
            vec![(1, "/a"), (6, "Hash=zz00000000000000000000000000000000000000000000000000000000000000")],
            vec![(1, "/a"), (6, "Hash=0000000000000000000000000000000000000000000000000000000000000000,Hash=1111111111111111111111111111111111111111111111111111111111111111")],
        ] {
            let r = original(&asked(&fields), None).unwrap_err().refusal();
            assert_eq!((r.status, r.error), (400, "invalid_request"), "{fields:?}");
        }
        // The same URI in both fields is one answer.
        assert!(original(&asked(&[(1, "/a"), (2, "/a")]), None).is_ok());
    }
}
