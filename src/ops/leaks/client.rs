//! A small blocking HTTP/1.0 client for the leaks room's two outbound calls (the key document, the owner
//! webhook): one request per connection, the answer ends at the close (no chunked coding to undo),
//! `https://` verified against the system's roots, bounded in time and size.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Connect, read and write limit of one request.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// As written (for `Host`).
    pub authority: String,
    /// Without brackets.
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => return Err(format!("{url:?} is not an http(s) URL")),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?} has no host (or has user info)"));
        }
        let default = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, rest) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            let port = match rest.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("bad port in {url:?}"))?,
                None => default,
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("bad port in {url:?}"))?,
                ),
                None => (authority.to_owned(), default),
            }
        };
        Ok(Url {
            tls,
            authority: authority.to_owned(),
            host,
            port,
            path,
        })
    }

    /// Whether the host is a loopback name or address.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// Sends one request; returns the status and at most `max` bytes of body (more is an error).
pub fn send(
    url: &Url,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    max: usize,
) -> Result<(u16, Vec<u8>), String> {
    let addr: SocketAddr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", url.host))?;
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("cannot connect to {}: {e}", url.authority))?;
    tcp.set_read_timeout(Some(TIMEOUT)).ok();
    tcp.set_write_timeout(Some(TIMEOUT)).ok();
    let mut request = format!(
        "{method} {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: tokengate\r\n",
        url.path, url.authority
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut raw = Vec::new();
    let io = |e: std::io::Error| format!("{method} {}: {e}", url.authority);
    if url.tls {
        let name = rustls_pki_types::ServerName::try_from(url.host.clone())
            .map_err(|_| format!("{:?} is not a valid TLS server name", url.host))?;
        let conn =
            rustls::ClientConnection::new(client_config()?, name).map_err(|e| e.to_string())?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(request.as_bytes()).map_err(io)?;
        s.write_all(body).map_err(io)?;
        read_capped(&mut s, &mut raw, max).map_err(io)?;
    } else {
        let mut s = tcp;
        s.write_all(request.as_bytes()).map_err(io)?;
        s.write_all(body).map_err(io)?;
        read_capped(&mut s, &mut raw, max).map_err(io)?;
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no complete head")?;
    let status_line = raw[..end].split(|&b| b == b'\n').next().unwrap_or(&[]);
    let status = status_line
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
        .ok_or("the answer has no status")?;
    Ok((status, raw[end + 4..].to_vec()))
}

fn read_capped(r: &mut impl Read, out: &mut Vec<u8>, max: usize) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                out.extend_from_slice(&chunk[..n]);
                if out.len() > max + 16 * 1024 {
                    return Err(std::io::Error::other("the answer is too large"));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The client configuration (system roots), built once.
fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("no system root certificates found (install ca-certificates)".into());
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://api.github.com/meta/public_keys/secret_scanning").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (
                true,
                "api.github.com",
                443,
                "/meta/public_keys/secret_scanning"
            )
        );
        let u = Url::parse("http://[::1]:9000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/")
        );
        assert!(u.is_loopback());
        assert!(Url::parse("http://127.0.0.1@evil.com/").is_err());
        assert!(!Url::parse("http://127.0.0.1.evil.com/")
            .unwrap()
            .is_loopback());
    }
}
