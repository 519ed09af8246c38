//! TLS for the tests: the throw-away PKI of [`super::pki`] (re-exported here), rustls client
//! configurations (trusting that CA, optionally presenting a device certificate, optionally limited
//! to given versions and cipher suites), and a blocking TLS client stream.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use super::pki::{write_pem, Leaf, Pki};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// What a test client offers.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// The device certificate to present.
    pub identity: Option<Leaf>,
    /// Only these versions (default: 1.2 and 1.3).
    pub versions: Option<Vec<&'static rustls::SupportedProtocolVersion>>,
    /// Only these cipher suites (default: the provider's).
    pub suites: Option<Vec<rustls::SupportedCipherSuite>>,
    /// Accept whatever certificate the server presents (to look at which one it chose).
    pub any_server_certificate: bool,
}

/// A verifier that accepts every server certificate: only for tests that look at which one was sent.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client configuration trusting `ca_pem`.
pub fn client_config(ca_pem: &str, options: &ClientOptions) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = &options.suites {
        provider.cipher_suites = suites.clone();
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA pem")).expect("add root");
    }
    let versions = options
        .versions
        .clone()
        .unwrap_or_else(|| rustls::ALL_VERSIONS.to_vec());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .expect("versions")
        .with_root_certificates(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = match &options.identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(leaf.der.clone())],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    if options.any_server_certificate {
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(AcceptAny(provider)));
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A blocking TLS client stream.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `addr` and completes a handshake for `server_name` (SNI; an IP address sends none).
pub fn connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    server_name: &str,
) -> io::Result<TlsStream> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    handshake(tcp, config, server_name)
}

/// Completes a handshake for `server_name` over an already connected `tcp` (which may have waited).
pub fn handshake(
    tcp: TcpStream,
    config: &Arc<rustls::ClientConfig>,
    server_name: &str,
) -> io::Result<TlsStream> {
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let conn = rustls::ClientConnection::new(config.clone(), name)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The first flight of a client handshake for `server_name` (the ClientHello record), as bytes.
pub fn client_hello(config: &Arc<rustls::ClientConfig>, server_name: &str) -> Vec<u8> {
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let mut conn = rustls::ClientConnection::new(config.clone(), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// The certificate (DER) the server presented on an established stream.
pub fn peer_certificate(stream: &TlsStream) -> Vec<u8> {
    stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("the server presented a certificate")
}
