//! Counters of client connections on the gateway's listeners: how many are open now, how many were
//! refused at accept (and by which limit), why each one closed, and the TLS listener's handshakes (full
//! or resumed, by version; failures by reason). Resolved once; the connection loop bumps them once per
//! connection, never per request.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The listeners, as the `listener` label.
pub const LISTENERS: [&str; 2] = ["plain", "tls"];

/// Which limit refused a connection at accept (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` were open.
    MaxConnections,
    /// `max_connections_per_address` were open from the client's address.
    PerAddress,
}

impl Refused {
    const ALL: [Refused; 2] = [Refused::MaxConnections, Refused::PerAddress];

    pub fn as_str(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::PerAddress => "per_address",
        }
    }
}

/// Why a connection closed (the `reason` label of `tokengate_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// An exchange ended without keep-alive (`Connection: close`, HTTP/1.0), or the client closed
    /// between requests.
    Done,
    /// Idle past `keepalive_timeout` between requests.
    IdleTimeout,
    /// The request head (or, for TLS, the handshake and the head) did not arrive within
    /// `header_timeout`.
    HeaderTimeout,
    /// The request body stalled past `body_timeout` or fell under `min_body_rate`.
    BodyTimeout,
    /// A head that could not be parsed or was too large (400, 431, 501).
    BadRequest,
    /// The gateway refused a request and closed (an unread body, a misbehaving client).
    Refused,
    /// The upstream failed midway (502, 504, or a cut response).
    Upstream,
    /// The client went away or stopped taking the answer midway.
    ClientGone,
    /// A WebSocket tunnel ended.
    Tunnel,
    /// The server shut down or handed its sockets over.
    Shutdown,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
}

impl Closed {
    pub const ALL: [Closed; 11] = [
        Closed::Done,
        Closed::IdleTimeout,
        Closed::HeaderTimeout,
        Closed::BodyTimeout,
        Closed::BadRequest,
        Closed::Refused,
        Closed::Upstream,
        Closed::ClientGone,
        Closed::Tunnel,
        Closed::Shutdown,
        Closed::TlsHandshake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Done => "done",
            Closed::IdleTimeout => "idle_timeout",
            Closed::HeaderTimeout => "header_timeout",
            Closed::BodyTimeout => "body_timeout",
            Closed::BadRequest => "bad_request",
            Closed::Refused => "refused",
            Closed::Upstream => "upstream_error",
            Closed::ClientGone => "client_gone",
            Closed::Tunnel => "tunnel_closed",
            Closed::Shutdown => "shutdown",
            Closed::TlsHandshake => "tls_handshake",
        }
    }
}

/// TLS versions, as the `version` label of `tokengate_tls_handshakes_total`.
pub const TLS_VERSIONS: [&str; 2] = ["1.2", "1.3"];

/// Why a TLS handshake failed (the `reason` label of `tokengate_tls_handshake_failed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within `header_timeout` (including: nothing sent).
    Timeout,
    /// No common version or cipher suite, or an extension the server refuses.
    Incompatible,
    /// A client certificate that did not verify against `client_ca`, or none where one is required.
    ClientCertificate,
    /// Not a TLS handshake (plain HTTP on the TLS port, garbage).
    Malformed,
    /// The client sent an alert (for instance: it does not trust our certificate).
    Alert,
    /// The client closed the connection, or the socket failed, mid-handshake.
    Closed,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 7] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Incompatible,
        HandshakeFailure::ClientCertificate,
        HandshakeFailure::Malformed,
        HandshakeFailure::Alert,
        HandshakeFailure::Closed,
        HandshakeFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::ClientCertificate => "client_certificate",
            HandshakeFailure::Malformed => "malformed",
            HandshakeFailure::Alert => "alert",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Other => "other",
        }
    }
}

/// The connection collectors, resolved once (indexes: [`LISTENERS`], [`Refused::ALL`], [`Closed::ALL`],
/// `[full, resumed]` × [`TLS_VERSIONS`], [`HandshakeFailure::ALL`]).
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: [IntGauge; 2],
    refused: [[IntCounter; 2]; 2],
    closed: Vec<IntCounter>,
    handshakes: [[IntCounter; 2]; 2],
    handshake_failed: Vec<IntCounter>,
}

impl ConnectionMetrics {
    /// Makes and registers the families in `registry`.
    pub fn register(registry: &Registry) -> ConnectionMetrics {
        let open = IntGaugeVec::new(
            Opts::new(
                "tokengate_connections_open",
                "Client connections open now, by listener.",
            ),
            &["listener"],
        )
        .expect("metric");
        let refused = IntCounterVec::new(
            Opts::new(
                "tokengate_connections_refused_total",
                "Client connections refused at accept, by listener and limit (reason max_connections or \
                 per_address; plain: answered 503 or 429; tls: closed before the handshake).",
            ),
            &["listener", "reason"],
        )
        .expect("metric");
        let closed = IntCounterVec::new(
            Opts::new(
                "tokengate_connections_closed_total",
                "Client connections closed, by reason.",
            ),
            &["reason"],
        )
        .expect("metric");
        let handshakes = IntCounterVec::new(
            Opts::new(
                "tokengate_tls_handshakes_total",
                "TLS handshakes completed on the TLS listener, by kind (full, resumed: a session ticket \
                 or id was accepted) and version (1.2, 1.3).",
            ),
            &["kind", "version"],
        )
        .expect("metric");
        let handshake_failed = IntCounterVec::new(
            Opts::new(
                "tokengate_tls_handshake_failed_total",
                "TLS handshakes on the TLS listener that failed, by reason (timeout, incompatible, \
                 client_certificate, malformed, alert, closed, other).",
            ),
            &["reason"],
        )
        .expect("metric");
        for c in [
            Box::new(open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refused.clone()),
            Box::new(closed.clone()),
            Box::new(handshakes.clone()),
            Box::new(handshake_failed.clone()),
        ] {
            registry.register(c).expect("register metric");
        }
        ConnectionMetrics {
            open: LISTENERS.map(|l| open.with_label_values(&[l])),
            refused: LISTENERS
                .map(|l| Refused::ALL.map(|r| refused.with_label_values(&[l, r.as_str()]))),
            closed: Closed::ALL
                .iter()
                .map(|c| closed.with_label_values(&[c.as_str()]))
                .collect(),
            handshakes: ["full", "resumed"]
                .map(|k| TLS_VERSIONS.map(|v| handshakes.with_label_values(&[k, v]))),
            handshake_failed: HandshakeFailure::ALL
                .iter()
                .map(|r| handshake_failed.with_label_values(&[r.as_str()]))
                .collect(),
        }
    }

    /// A TLS handshake completed: `tls13` (false: 1.2), `resumed` (false: full).
    pub fn handshake(&self, tls13: bool, resumed: bool) {
        self.handshakes[resumed as usize][tls13 as usize].inc();
    }

    /// A TLS handshake failed for `why`.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failed[why as usize].inc();
    }

    /// A connection was accepted on listener `tls` (false: plain) and is counted open until
    /// [`Self::closed`].
    pub fn opened(&self, tls: bool) {
        self.open[tls as usize].inc();
    }

    /// A connection counted by [`Self::opened`] closed for `why`.
    pub fn closed(&self, tls: bool, why: Closed) {
        self.open[tls as usize].dec();
        self.closed[why as usize].inc();
    }

    /// A connection was refused at accept by `limit`.
    pub fn refused(&self, tls: bool, limit: Refused) {
        self.refused[tls as usize][limit as usize].inc();
    }

    /// Connections open now on both listeners.
    pub fn open_now(&self) -> i64 {
        self.open.iter().map(IntGauge::get).sum()
    }
}
