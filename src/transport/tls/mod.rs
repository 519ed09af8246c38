//! Edge and upstream TLS: everything between a TCP byte stream and a decrypted one, split by role
//! (as pingora splits `protocols/tls/rustls/`):
//! - [`certs`]: **loading** the configured certificate chains and keys ([`load_certificates`]),
//!   checking each key matches its leaf, reading each leaf's DNS names and validity; the
//!   check-config findings ([`warnings`]);
//! - [`sni`]: **choosing a certificate per handshake** ([`SniResolver`]) from the SNI, with a set that
//!   a reload swaps live;
//! - [`edge`]: the edge **`rustls::ServerConfig`** ([`edge_config`], [`server_config`]) and the
//!   **handshake under a deadline** ([`accept`]) that returns the [`TlsFacts`] the decision needs;
//! - [`upstream`]: the **upstream `rustls::ClientConfig`** ([`upstream_client_config`]), the upstream
//!   name check ([`server_name`]) and the upstream handshake ([`connect`]).
//!
//! The provider, PEM reading, trust roots and the client-config builder are [`crate::crypto`]'s,
//! shared with the PostgreSQL client. This module does not own the config schema (`crate::config`),
//! the connection limit or the HTTP loop: it takes a validated [`TlsConfig`](crate::config::TlsConfig)
//! and a byte stream, and hands back a decrypted one that is `AsyncRead + AsyncWrite + Unpin + Send`.
//! Given pingora's boxed `Stream` it returns a `TlsStream<Stream>`, which is not itself a pingora
//! `Stream`: keep-alive stays inside the caller's loop, and `process_new` returns `None`.

pub mod certs;
pub mod edge;
pub mod sni;
pub mod tickets;
pub mod upstream;

pub use crate::crypto::{provider, TlsError};
pub use certs::{device_warnings, load_certificates, warnings, LoadedCert, LoadedCerts};
pub use edge::{accept, edge_config, server_config, AcceptError, TlsFacts};
pub use sni::SniResolver;
pub use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};
pub use upstream::{connect, server_name, upstream_client_config, ConnectError};

#[cfg(test)]
mod testing;
