//! Moving bytes: the listeners' side of the gateway. Each client connection is served by an HTTP/1.1
//! loop that reads a head, asks the decision ([`crate::gateway::Gate::decide`]) what to do, and then
//! either writes the gateway's own answer or forwards the request and relays the upstream's answer.
//! The wire code never decides policy.
//!
//! - [`Engine`] (this file): the pingora `ServerApp` — per connection, the connection limit, then the loop.
//! - [`addresses`]: connections open per client address (`max_connections_per_address`).
//! - [`connection`]: the per-connection loop — heads, timeouts, the decision, refusals, metrics, log.
//! - [`failure`]: how talking to an upstream failed (502/504, metrics, retries).
//! - [`forward`]: sending an allowed request upstream, streaming bodies both ways, relaying the answer.
//! - [`relay`]: an upstream response relayed to the client, its state explicit (framing, keep-alive,
//!   how it ended, whether the upstream connection is reused).
//! - [`rewrite`]: the heads the gateway writes (the forwarded request, the relayed response, its own answers).
//! - [`tunnel`]: WebSocket tunnels after a 101 that completes the handshake, re-checked every tick
//!   ([`crate::gateway::Gate::recheck`]), relayed without a write ever holding the check up.
//! - [`door`]: one exact path answered by a handler from above (the secret-scanning endpoint), not routed.
//! - [`verify`]: the verify listener's mode — forward auth and MQTT answered, nothing forwarded.
//! - [`handshake`]: the WebSocket opening handshake check (`Sec-WebSocket-Accept` against the key).
//! - [`request_id`]: the `x-request-id` of every request.
//! - [`timed`]: time limits on socket I/O that arm a timer only when the I/O has to wait.
//! - [`http1`]: HTTP/1.x on the wire — heads, framing, the chunked coding.
//! - [`http2`]: HTTP/2 at the edge (ALPN `h2`, prior-knowledge h2c): each stream written into an
//!   HTTP/1.1 head and then decided, rewritten and forwarded like an HTTP/1.1 request.
//! - [`names`]: field names in every spelling frameworks read as one; hop-by-hop and proxy fields.
//! - [`pool`]: a route's servers and the choice among them (round robin, least requests, user hash).
//! - [`upstream`]: connections to one server, their idle queue, the server's health.
//! - [`health`]: active health checks and re-resolution of host names, on their own thread.
//! - [`tls`]: TLS at the edge (certificates by SNI, client certificates, the handshake under a deadline)
//!   and to upstreams.
//!
//! Why not pingora-proxy's `ProxyHttp`: its per-request machinery (a boxed state machine, header maps with
//! case maps, body tasks) cost about half of the CPU of a proxied request here, twice what nginx spends on
//! the same job. This engine keeps pingora's server, listeners, signals and socket hand-over, and does the
//! HTTP/1 work in place: heads are parsed by `httparse` into spans of the connection's buffer, the upstream
//! head is written field by field into one reused buffer, a small body travels in the same write as its
//! head, and upstream connections are shared by all client connections through each server's lock-free
//! idle queue (see [`upstream`]).

pub mod addresses;
pub mod body;
pub mod connection;
pub mod door;
pub mod failure;
pub mod forward;
pub mod handshake;
pub mod health;
pub mod http1;
pub mod http2;
pub mod names;
pub mod pool;
pub mod relay;
pub mod request_id;
pub mod rewrite;
pub mod timed;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod verify;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::gateway::routes::{Route, RouteTable};
use crate::gateway::throttle::Throttle;
use crate::gateway::{Gate, TlsPeer};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::connections::{Closed, ConnectionMetrics, Refused};
use crate::telemetry::metrics::{Metrics, RouteMetrics};
use crate::tokens::index::Index;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use connection::Client;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pool::Pool;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use upstream::{ServerTls, Timeouts, Upstream};

/// The bytes-moving side of one route: its servers (addresses, timeouts, idle connections, health) and
/// its metric collectors, next to the route's policy.
pub struct RouteIo {
    pub route: Arc<Route>,
    pub pool: Pool,
    /// The route's timeouts (every server has the same).
    pub timeouts: Timeouts,
    pub metrics: RouteMetrics,
}

/// Everything a configuration reload swaps at once: the routes' policy and their I/O, indexed alike
/// ([`Route::index`]).
pub struct Table {
    pub routes: RouteTable,
    pub io: Vec<RouteIo>,
}

impl Table {
    /// Builds the table from a validated configuration; collectors are resolved once, here. A server
    /// that `previous` (the table being replaced) already had, with the same settings, is carried over
    /// with its idle connections and health; the series of servers that are gone are dropped. Fails
    /// when an `https://` route's CA file cannot be used.
    pub fn new(
        config: &Config,
        metrics: &Metrics,
        previous: Option<&Table>,
    ) -> Result<Table, tls::TlsError> {
        let routes = RouteTable::new(config);
        let mut io: Vec<RouteIo> = Vec::with_capacity(config.routes.len());
        let mut by_index: Vec<Option<Arc<Route>>> = vec![None; config.routes.len()];
        for r in routes.routes() {
            by_index[r.index] = Some(r.clone());
        }
        for (i, (rc, route)) in config.routes.iter().zip(by_index).enumerate() {
            let route = route.expect("every route is in the table");
            let before = previous.and_then(|t| t.io.iter().find(|o| *o.route.name == *rc.name));
            let p = &rc.pool;
            let connector = match &p.tls {
                None => None,
                Some(t) => Some(tokio_rustls::TlsConnector::from(
                    tls::upstream_client_config(
                        t.ca.as_deref(),
                        &format!("routes[{i}].upstream_ca"),
                    )?,
                )),
            };
            let timeouts = Timeouts {
                connect: rc.connect_timeout,
                read: rc.read_timeout,
                write: rc.write_timeout,
                idle: rc.idle_timeout,
            };
            let mut servers = Vec::with_capacity(p.servers.len());
            for s in &p.servers {
                let tls_name = p
                    .tls
                    .as_ref()
                    .map(|t| t.server_name.clone().unwrap_or_else(|| s.host.clone()));
                let kept = before.and_then(|b| {
                    b.pool
                        .members
                        .iter()
                        .map(|m| &m.upstream)
                        .find(|u| u.same_as(&s.label, tls_name.as_deref(), &timeouts))
                        .cloned()
                });
                let upstream = match kept {
                    Some(u) => u,
                    None => {
                        let tls = match (&connector, tls_name) {
                            (Some(connector), Some(name)) => Some(ServerTls {
                                connector: connector.clone(),
                                server_name: tls::server_name(&name).map_err(|problem| {
                                    tls::TlsError::Config {
                                        key: format!("routes[{i}].upstream_sni"),
                                        problem,
                                    }
                                })?,
                                name,
                            }),
                            _ => None,
                        };
                        Arc::new(Upstream::new(
                            &s.label,
                            &s.authority,
                            s.addr,
                            tls,
                            &timeouts,
                        ))
                    }
                };
                servers.push((upstream, metrics.server(&rc.name, &s.label)));
            }
            io.push(RouteIo {
                pool: Pool::new(
                    &rc.name,
                    servers,
                    p.balance,
                    p.health_check.clone(),
                    p.resolve_interval,
                ),
                metrics: metrics.route(&rc.name),
                timeouts,
                route,
            });
        }
        if let Some(previous) = previous {
            forget_gone_servers(previous, &io, metrics);
        }
        Ok(Table { routes, io })
    }
}

/// Drops the series of the servers of `previous` that the new table's `io` no longer has.
fn forget_gone_servers(previous: &Table, io: &[RouteIo], metrics: &Metrics) {
    for old in &previous.io {
        for m in &old.pool.members {
            let still = io.iter().any(|n| {
                n.route.name == old.route.name
                    && n.pool
                        .members
                        .iter()
                        .any(|k| k.upstream.label == m.upstream.label)
            });
            if !still {
                metrics.forget_server(&old.route.name, &m.upstream.label);
            }
        }
    }
}

/// The TLS listener: which accepted connections are TLS, and how to shake hands with them.
pub struct TlsListener {
    /// The configured address (its IP may be unspecified: then any local IP on that port).
    pub addr: SocketAddr,
    /// Certificates, versions and client CA; a reload swaps it, new handshakes use the new one.
    pub config: Arc<ArcSwap<rustls::ServerConfig>>,
}

impl TlsListener {
    /// Whether a connection accepted on local address `local` came in on this listener.
    fn accepted(&self, local: Option<SocketAddr>) -> bool {
        local.is_some_and(|l| {
            l.port() == self.addr.port()
                && (self.addr.ip().is_unspecified() || self.addr.ip() == l.ip())
        })
    }
}

/// The forwarding engine, shared by all worker threads.
pub struct Engine {
    /// The decision and the state it reads.
    /// Shared with the verify listener's engine (one failure throttle for both doors).
    pub gate: Arc<Gate>,
    /// The current routes and their I/O; swapped whole on reload, loaded once per request.
    pub table: Arc<ArcSwap<Table>>,
    /// Collectors for requests that matched no route.
    pub unrouted: RouteMetrics,
    /// Where finished requests are logged (a non-blocking queue).
    pub access_log: AccessLog,
    /// Idle time allowed between requests on a client connection.
    pub keepalive_timeout: Duration,
    /// Time a client has to send a whole request head, from its first byte (or from the connection's
    /// start for the first request).
    pub header_timeout: Duration,
    /// `[gateway] max_head_bytes`: the largest request head (431 beyond); the read buffer grows to it
    /// only while such a head arrives.
    pub max_head_bytes: usize,
    /// `[gateway] body_timeout`: the longest wait for the next bytes of a request body.
    pub body_timeout: Duration,
    /// `[gateway] send_timeout`: the longest wait for a client to take a write (HTTP/2: to open its
    /// window).
    pub send_timeout: Duration,
    /// `[gateway] min_body_rate`: bytes a second a request body must keep up (0: none).
    pub min_body_rate: u64,
    /// Requests in flight, when `max_in_flight` is set (an atomic shared by all workers, so it is only
    /// counted when a limit is configured).
    pub in_flight: Option<(Arc<AtomicUsize>, usize)>,
    /// Open client connections and their limit (`max_connections`): one atomic shared by all workers,
    /// touched once per connection.
    pub connections: Arc<AtomicUsize>,
    pub max_connections: usize,
    /// The TLS listener, when `[tls]` is configured.
    pub tls: Option<TlsListener>,
    /// Connections open per client address and their limit (`max_connections_per_address`; trusted
    /// proxies are not counted).
    pub per_address: addresses::PerAddress,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: prometheus::IntCounter,
    /// Connections open, refused at accept and closed, by listener and reason.
    pub connection_metrics: ConnectionMetrics,
    /// Set when the server starts to shut down or hand over: exchanges end with `Connection: close` and
    /// idle connections close within a second. A plain flag read with a relaxed load: pingora's shutdown
    /// watch would cost a shared lock per idle wait.
    pub draining: Arc<AtomicBool>,
    /// The side door (`[leaks]`'s endpoint), answered before routing; `None` when not configured.
    pub door: Option<Arc<dyn door::Door>>,
    /// Set on the verify listener's engine (`[verify]`): requests are answered (forward auth, MQTT),
    /// never forwarded.
    pub verify: Option<Arc<verify::Verify>>,
    /// `[gateway] h2c`: HTTP/2 with prior knowledge on the plain listener.
    pub h2c: bool,
    /// `[gateway] h2_max_concurrent_streams`.
    pub h2_max_concurrent_streams: u32,
    /// Requests by protocol (`http/1.1`, `h2`).
    pub protocol_requests: [prometheus::IntCounter; 2],
}

impl Engine {
    /// The engine for a validated configuration: the decision over `index`, the `[gateway]` limits and
    /// timeouts, fresh connection and in-flight counters ([`Engine::load`] shares them with `/healthz`).
    /// `serve` and the in-process tests build it alike.
    pub fn new(
        config: &Config,
        index: Arc<Index>,
        table: Arc<ArcSwap<Table>>,
        metrics: &Metrics,
        access_log: AccessLog,
        tls: Option<TlsListener>,
        draining: Arc<AtomicBool>,
    ) -> Engine {
        let g = &config.gateway;
        let t = &config.throttle;
        Engine {
            gate: Arc::new(Gate {
                index,
                throttle: Throttle::new(t.max_failures, t.window.as_secs(), t.max_clients),
                max_in_flight_per_token: g.max_in_flight_per_token,
            }),
            table,
            unrouted: metrics.route("none"),
            access_log,
            keepalive_timeout: g.keepalive_timeout,
            header_timeout: g.header_timeout,
            max_head_bytes: g.max_head_bytes,
            body_timeout: g.body_timeout,
            send_timeout: g.send_timeout,
            min_body_rate: g.min_body_rate,
            in_flight: g
                .max_in_flight
                .map(|max| (Arc::new(AtomicUsize::new(0)), max)),
            connections: Arc::new(AtomicUsize::new(0)),
            max_connections: g.max_connections,
            tls,
            per_address: addresses::PerAddress::new(g.max_connections_per_address),
            tls_handshake_failures: metrics.tls_handshake_failures.clone(),
            connection_metrics: metrics.connections.clone(),
            draining,
            door: None,
            verify: None,
            h2c: g.h2c,
            h2_max_concurrent_streams: g.h2_max_concurrent_streams,
            protocol_requests: metrics.protocol_requests.clone(),
        }
    }

    /// Makes this the verify listener's engine: every request is answered, none forwarded, by `gate`
    /// (the gateway engine's: the same failure throttle counts both doors).
    pub fn with_verify(mut self, verify: Arc<verify::Verify>, gate: Arc<Gate>) -> Engine {
        self.verify = Some(verify);
        self.gate = gate;
        self
    }

    /// Answers `door`'s exact path on the listeners before routing (the `[leaks]` endpoint).
    pub fn with_door(mut self, door: Option<Arc<dyn door::Door>>) -> Engine {
        self.door = door;
        self
    }

    /// The counters `/healthz` reads (shared with the engine, not copied) and their limits.
    pub fn load(&self) -> Load {
        Load {
            connections: self.connections.clone(),
            max_connections: self.max_connections,
            in_flight: self.in_flight.clone(),
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// How full the gateway's listeners are, for `/healthz`: the counters the engine keeps (shared, not
/// copied) and their limits.
#[derive(Clone)]
pub struct Load {
    pub connections: Arc<AtomicUsize>,
    pub max_connections: usize,
    pub in_flight: Option<(Arc<AtomicUsize>, usize)>,
}

impl Load {
    /// The limits that are reached now (`max_connections`, `max_in_flight`): new clients get 503.
    pub fn saturated(&self) -> Vec<&'static str> {
        let mut full = Vec::new();
        if self.connections.load(Ordering::Relaxed) >= self.max_connections {
            full.push("max_connections");
        }
        if let Some((n, max)) = &self.in_flight {
            if n.load(Ordering::Relaxed) >= *max {
                full.push("max_in_flight");
            }
        }
        full
    }

    /// `{"connections": {"open", "max"}, "in_flight": {"open", "max"} | null}`.
    pub fn to_json(&self) -> serde_json::Value {
        let open = |n: &AtomicUsize, max: usize| {
            // A refused connection holds its count for an instant: never show more than the limit.
            serde_json::json!({ "open": n.load(Ordering::Relaxed).min(max), "max": max })
        };
        serde_json::json!({
            "connections": open(&self.connections, self.max_connections),
            "in_flight": self.in_flight.as_ref().map(|(n, max)| open(n, *max)),
        })
    }
}

/// One unit of a counted limit (`max_connections`, `max_in_flight`), given back when dropped, whatever
/// path the request or connection ended on.
pub(crate) struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a permit of `count` unless `max` are taken.
pub(crate) fn take_permit(count: &Arc<AtomicUsize>, max: usize) -> Option<Permit> {
    let slot = Permit(count.clone());
    (count.fetch_add(1, Ordering::Relaxed) < max).then_some(slot)
}

#[async_trait]
impl ServerApp for Engine {
    /// Serves one client connection until it closes, idles out, or the server shuts down. The
    /// `max_connections` slot is taken first, before any TLS handshake. Over the limit, a plain
    /// connection gets a 503 and is closed; a TLS connection is closed at once, before its handshake
    /// (as nginx does when its connections run out): a 503 could only be sent after a full handshake,
    /// whose key exchange and signature are the most expensive work a connection costs, spent for the
    /// client that is over the limit and holding a slot-less socket open meanwhile. A TLS client sees the
    /// connection reset or closed and retries like after any failed connect.
    async fn process_new(
        self: &Arc<Self>,
        io: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = tokio::time::Instant::now();
        let digest = io.get_socket_digest();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let local = digest.and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let is_tls = self.tls.as_ref().is_some_and(|t| t.accepted(local));
        let slot = take_permit(&self.connections, self.max_connections);
        // One address may hold at most `max_connections_per_address` of the slots (trusted proxies
        // carry many clients and are not counted).
        let trusted = match &self.verify {
            Some(v) => v.trusts(peer),
            None => self.table.load().routes.trusts(peer),
        };
        let (address_slot, refused) = match (&slot, peer) {
            (None, _) => (None, Some(Refused::MaxConnections)),
            (Some(_), Some(ip)) if !trusted => match self.per_address.take(ip) {
                Some(a) => (Some(a), None),
                None => (None, Some(Refused::PerAddress)),
            },
            _ => (None, None),
        };
        if let Some(limit) = refused {
            self.connection_metrics.refused(is_tls, limit);
            drop(slot);
            if is_tls {
                log::debug!("TLS connection from {peer:?} closed: {}", limit.as_str());
                return None; // dropping the stream closes the socket
            }
            Client::new(self, io, peer, None)
                .refuse_connection(limit)
                .await;
            return None;
        }
        self.connection_metrics.opened(is_tls);
        let closed = match &self.tls {
            Some(tls) if is_tls => {
                // The handshake has `header_timeout` from accept; the first request head's wait counts
                // from accept too, so a slow handshake does not earn a slow request a second allowance.
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.load_full());
                match tls::accept(&acceptor, io, self.header_timeout).await {
                    Ok((stream, facts)) => {
                        self.connection_metrics
                            .handshake(facts.version == "TLSv1.3", facts.resumed);
                        let peer_facts = TlsPeer {
                            client_cert_sha256: facts.client_cert_sha256,
                        };
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        if h2 && self.verify.is_none() {
                            let conn =
                                http2::Peer::new(peer, Some(peer_facts), Some(facts.marker()));
                            return self.finish(
                                http2::serve(self, stream, conn, accepted).await,
                                is_tls,
                                (slot, address_slot),
                            );
                        }
                        Client::new(self, stream, peer, Some(peer_facts))
                            .accepted_at(accepted)
                            .tls_marker(facts.marker())
                            .run()
                            .await
                    }
                    Err(e) => {
                        self.tls_handshake_failures.inc();
                        self.connection_metrics.handshake_failed(e.reason());
                        log::debug!("TLS handshake from {peer:?} failed: {e}");
                        Closed::TlsHandshake
                    }
                }
            }
            _ if self.h2c && self.verify.is_none() => {
                // Prior-knowledge h2c: the connection opens with the HTTP/2 preface, or it is
                // HTTP/1.1 (its first bytes are handed back to the HTTP/1.1 loop).
                match http2::sniff(io, accepted + self.header_timeout).await {
                    http2::Sniffed::H2(io) => {
                        let conn = http2::Peer::new(peer, None, None);
                        http2::serve(self, io, conn, accepted).await
                    }
                    http2::Sniffed::Http1(io) => {
                        Client::new(self, io, peer, None)
                            .accepted_at(accepted)
                            .run()
                            .await
                    }
                    http2::Sniffed::Gone(why) => why,
                }
            }
            _ => {
                Client::new(self, io, peer, None)
                    .accepted_at(accepted)
                    .run()
                    .await
            }
        };
        self.finish(closed, is_tls, (slot, address_slot))
    }
}

impl Engine {
    /// A connection served by `process_new` ended for `why`: counted, and its slots given back.
    fn finish(
        &self,
        why: Closed,
        is_tls: bool,
        slots: (Option<Permit>, Option<addresses::AddressSlot<'_>>),
    ) -> Option<Stream> {
        self.connection_metrics.closed(is_tls, why);
        drop(slots);
        None
    }
}
