//! The https upstreams' side: the `rustls::ClientConfig` ([`upstream_client_config`], built by
//! [`crate::crypto`] like every client config of the crate), the upstream name check at config time
//! ([`server_name`]) and the handshake under a deadline ([`connect`]).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{client, TlsConnector};

use crate::crypto::{root_store, verifying_client, Roots, TlsError};

/// Why an upstream handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TLS handshake with upstream not completed within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake with upstream failed: {0}")]
    Handshake(#[source] io::Error),
}

/// The upstream `ClientConfig`: certificates are always verified, against `ca` (a PEM bundle) when
/// given, else the system's roots (rustls-native-certs: `/etc/ssl/certs`, `SSL_CERT_FILE`,
/// `SSL_CERT_DIR`). Build it once at start-up: reading the system store parses every root.
/// `key` names the setting in errors (`routes[2].upstream_ca`).
pub fn upstream_client_config(ca: Option<&Path>, key: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(path) => Roots::File(path),
        None => Roots::System,
    };
    let mut config = verifying_client(key, root_store(key, roots)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
    use super::*;
    use crate::transport::tls::edge::tests::{setup, Edge, T};
    use crate::transport::tls::testing::write;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn upstream_verifies_against_the_bundle_or_the_system() {
        let s = setup();
        let dir = tempfile::tempdir().unwrap();
        let edge = Edge::start(&s.cfg, s.resolver.clone(), T).await;
        let bundle = write(dir.path(), "ca.pem", &s.ca.ca_pem, 0o644);
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
}
