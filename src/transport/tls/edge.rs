//! The edge: the `rustls::ServerConfig` ([`edge_config`], [`server_config`]: protocol versions, ALPN
//! `http/1.1`, optional or required client certificates, session resumption kept across a reload when
//! that is safe) and the handshake under a deadline ([`accept`]), run by the connection loop itself
//! inside `ServerApp::process_new` on a plain TCP listener, so a client that never sends a ClientHello
//! is dropped after the caller's timeout and is counted like any other connection. It returns the
//! [`TlsFacts`] the decision needs (SNI, client certificate digest, version).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{
    NoServerSessionStorage, ServerConfig, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::SupportedProtocolVersion;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{server, TlsAcceptor};

use super::certs::load_certificates;
use super::sni::SniResolver;
use super::tickets::{NoTickets, TicketKeys};
use crate::config::{ClientAuth, TlsConfig, TlsVersion};
use crate::crypto::{backend, provider, root_store, Roots, TlsError};
use crate::telemetry::connections::HandshakeFailure;

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
    /// The session was resumed (a ticket or session id was accepted): no certificate was sent or
    /// verified in this handshake; the client certificate is the one the session was made with.
    pub resumed: bool,
}

impl TlsFacts {
    /// How the access log names this connection: `1.3`, `1.2`, with `r` when resumed.
    pub fn marker(&self) -> &'static str {
        match (self.version, self.resumed) {
            ("TLSv1.3", false) => "1.3",
            ("TLSv1.3", true) => "1.3r",
            ("TLSv1.2", false) => "1.2",
            ("TLSv1.2", true) => "1.2r",
            _ => "?",
        }
    }
}

impl AcceptError {
    /// The reason label of a failed handshake.
    pub fn reason(&self) -> HandshakeFailure {
        let e = match self {
            AcceptError::Timeout(_) => return HandshakeFailure::Timeout,
            AcceptError::Handshake(e) => e,
        };
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::PeerIncompatible(_)) => HandshakeFailure::Incompatible,
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
                HandshakeFailure::ClientCertificate
            }
            Some(
                rustls::Error::InvalidMessage(_)
                | rustls::Error::InappropriateHandshakeMessage { .. }
                | rustls::Error::InappropriateMessage { .. },
            ) => HandshakeFailure::Malformed,
            Some(rustls::Error::AlertReceived(_)) => HandshakeFailure::Alert,
            Some(_) => HandshakeFailure::Other,
            None => HandshakeFailure::Closed,
        }
    }
}

/// How many TLS 1.2 session-ID resumptions the server remembers (TLS 1.3 and 1.2 ticket resumption
/// are stateless, with a rotating ticket key).
const SESSION_CACHE_SIZE: usize = 4096;

/// The whole edge set-up from the config: loads the certificates (first error wins), builds the
/// resolver and the [`server_config`]. On a reload, pass the running config as `previous`: its
/// ticket key and session cache are carried over, so devices resume instead of all doing a full
/// handshake at once, unless `client_ca` is set. Then they are not: a resumed session skips
/// client-certificate verification, so a session from before the reload would outlive a change of
/// the trusted CA.
///
/// With `fleet` (the gateway's ticket keys, shared through the store), tickets are sealed with those
/// keys and bound to the `client_ca` file's bytes (see [`super::tickets`]): they resume on every node,
/// across reloads, and stop resuming when the CA set changes. `session_tickets = false` turns
/// resumption off (no tickets, no session cache); `max_fragment_size` caps the records sent.
pub fn edge_config(
    cfg: &TlsConfig,
    previous: Option<&ServerConfig>,
    fleet: Option<&Arc<TicketKeys>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certificates(&cfg.certificates)?;
    let mut config = build_server_config(cfg, Arc::new(SniResolver::new(&certs)))?;
    if let (Some(old), None, true) = (previous, &cfg.client_ca, cfg.session_tickets) {
        config.ticketer = old.ticketer.clone();
        config.session_storage = old.session_storage.clone();
    }
    if let (Some(keys), true) = (fleet, cfg.session_tickets) {
        let ca = match &cfg.client_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| TlsError::Config {
                key: "tls.client_ca".into(),
                problem: format!("{}: {e}", path.display()),
            })?),
            None => None,
        };
        config.ticketer = keys.ticketer(ca.as_deref());
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
            let roots = root_store("tls.client_ca", Roots::File(ca))?;
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
    config.alpn_protocols = cfg.alpn.iter().map(|p| p.id().to_vec()).collect();
    if cfg.session_tickets {
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        config.ticketer = backend::Ticketer::new().map_err(|e| config_error("tls", &e))?;
    } else {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.ticketer = Arc::new(NoTickets);
        config.send_tls13_tickets = 0;
    }
    config.max_fragment_size = cfg.max_fragment_size;
    // 0-RTT stays off (`max_early_data_size` 0, the default; `early_data = true` is refused by the
    // config): early data can be replayed, and every request here is a decision.
    config.max_early_data_size = 0;
    Ok(config)
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
        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
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

#[cfg(test)]
pub(super) mod tests {
    //! Real sockets on 127.0.0.1:0, certificates made by rcgen per test. The harness (an edge that
    //! runs [`accept`], a configurable client) is also used by `upstream.rs`'s tests; the handshake
    //! tests of SNI selection live here as they drive the whole edge.
    use super::*;
    use crate::crypto::backend;
    use crate::transport::tls::testing::*;
    use arc_swap::ArcSwap;
    use rcgen::KeyPair;
    use rustls::client::ClientConfig;
    use rustls::crypto::CryptoProvider;
    use rustls::RootCertStore;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::net::SocketAddr;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_rustls::{client, TlsConnector};

    /// An edge on 127.0.0.1:0: every connection goes through [`accept`], its outcome is sent on
    /// `results`, then the stream echoes what it reads.
    pub(crate) struct Edge {
        pub(crate) addr: SocketAddr,
        results: mpsc::UnboundedReceiver<Result<TlsFacts, AcceptError>>,
    }

    impl Edge {
        pub(crate) async fn start(
            cfg: &TlsConfig,
            resolver: Arc<SniResolver>,
            timeout: Duration,
        ) -> Self {
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
        let mut p = backend::default_provider();
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
        fn new(roots: &[&Pki]) -> Self {
            Self {
                provider: client_provider(None, None),
                versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
                roots: roots.iter().map(|ca| ca.ca_der().into()).collect(),
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
                    b.with_client_auth_cert(vec![id.der.clone().into()], key)
                        .unwrap()
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
        ) -> io::Result<(client::TlsStream<TcpStream>, Vec<u8>)> {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from(name.to_owned()).unwrap();
            let mut tls = TlsConnector::from(self.config()).connect(name, tcp).await?;
            ping(&mut tls).await?;
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
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

    pub(crate) const T: Duration = Duration::from_secs(5);

    /// One CA, certificates for `a.example.com` (default) and `*.b.example.com`, and a resolver
    /// of the two.
    pub(crate) struct Setup {
        _dir: tempfile::TempDir,
        pub(crate) ca: Pki,
        pub(crate) cfg: TlsConfig,
        a: Leaf,
        b: Leaf,
        pub(crate) resolver: Arc<SniResolver>,
    }

    pub(crate) fn setup() -> Setup {
        let Files {
            _dir,
            ca,
            cfg,
            a,
            b,
        } = files();
        let resolver = Arc::new(SniResolver::new(
            &load_certificates(&cfg.certificates).unwrap(),
        ));
        Setup {
            _dir,
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
                    version: name,
                    resumed: false,
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
        use backend::{cipher_suite, kx_group};
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
            ..s.ca.leaf_with_key(&["rsa.example.com"], key, |_| {})
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

    #[tokio::test]
    async fn swapping_the_set_changes_new_handshakes_only() {
        let s = setup();
        let mut edge = Edge::start(&s.cfg, s.resolver.clone(), T).await;
        let client = Client::new(&[&s.ca]);
        let (mut old, seen) = client.talk(edge.addr, "a.example.com").await.unwrap();
        assert_eq!(seen, s.a.der);

        let dir = tempfile::tempdir().unwrap();
        let a2 = s.ca.leaf(&["a.example.com", "new.example.com"]);
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
        assert_eq!(
            old.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
            s.a.der
        );
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(50), edge.results.recv()).await
        {}
    }

    /// An edge with `client_ca` = `clients`, and a client leaf from it and one from a stranger CA.
    async fn mtls(auth: ClientAuth) -> (Setup, Edge, Leaf, Leaf, tempfile::TempDir) {
        let mut s = setup();
        let dir = tempfile::tempdir().unwrap();
        let clients = Pki::new("device CA");
        let stranger = Pki::new("stranger CA");
        s.cfg.client_ca = Some(write(dir.path(), "clients.pem", &clients.ca_pem, 0o644));
        s.cfg.client_auth = auth;
        let edge = Edge::start(&s.cfg, s.resolver.clone(), T).await;
        let good = clients.leaf(&["device-1"]);
        let bad = stranger.leaf(&["device-1"]);
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
        let current = Arc::new(ArcSwap::from(edge_config(&s.cfg, None, None).unwrap()));
        let addr = serve_swappable(current.clone()).await;
        let connector = TlsConnector::from(Client::new(&[&s.ca]).config());
        assert!(!resumes(&connector, addr).await);
        assert!(resumes(&connector, addr).await);

        // Reload without client_ca: tickets from before still work.
        current.store(edge_config(&s.cfg, Some(&current.load()), None).unwrap());
        assert!(resumes(&connector, addr).await, "resumed across the reload");
        // A fresh start (no previous) does not know them.
        current.store(edge_config(&s.cfg, None, None).unwrap());
        assert!(!resumes(&connector, addr).await);

        // With client_ca, a reload never carries sessions over.
        let dir = tempfile::tempdir().unwrap();
        s.cfg.client_ca = Some(write(
            dir.path(),
            "clients.pem",
            &Pki::new("device CA").ca_pem,
            0o644,
        ));
        current.store(edge_config(&s.cfg, Some(&current.load()), None).unwrap());
        assert!(!resumes(&connector, addr).await);
        assert!(resumes(&connector, addr).await);
        current.store(edge_config(&s.cfg, Some(&current.load()), None).unwrap());
        assert!(
            !resumes(&connector, addr).await,
            "no session outlives a client_ca reload"
        );

        s.cfg.certificates[1].key = s.cfg.certificates[0].key.clone();
        let err = edge_config(&s.cfg, Some(&current.load()), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("tls.certificates[1].key: private key does not match"),
            "{err}"
        );
    }
}
