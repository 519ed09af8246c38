//! The validated configuration the rest of the crate sees: every value checked, defaults applied, paths
//! resolved against the config file's folder. Built only by [`Config::parse`](super::Config::parse).

use http::HeaderName;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use super::store_url::StoreUrl;

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from.
    pub file: PathBuf,
    pub gateway: GatewayConfig,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub throttle: ThrottleConfig,
    /// The TLS listener, when `[tls]` is present.
    pub tls: Option<TlsConfig>,
    /// The secret-scanning endpoint, when `[leaks]` is present.
    pub leaks: Option<LeaksConfig>,
    /// The verify listener, when `[verify]` is present.
    pub verify: Option<VerifyConfig>,
    /// `[mqtt]`: how the verify listener's MQTT endpoints read usernames, and the topic rules.
    pub mqtt: MqttConfig,
    /// `[roles]`: role name → the scopes it grants.
    pub roles: Roles,
    pub routes: Vec<RouteConfig>,
}

/// Role name → the scopes it grants (sorted, unique).
pub type Roles = std::collections::BTreeMap<String, Vec<String>>;

/// The lowest TLS version the listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// Whether clients must present a certificate signed by `client_ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Optional,
    Required,
}

/// One certificate chain and its private key (PEM files), as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[tls]`: the TLS listener for devices. Files are only named here; they are read (and checked) by
/// the transport's TLS set-up, so that `check-config` and reloads report them by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub listen: String,
    pub min_version: TlsVersion,
    /// The first is the default certificate; the others are chosen by SNI.
    pub certificates: Vec<CertFiles>,
    /// Ask clients for a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// Session resumption (TLS 1.2 tickets and session ids, TLS 1.3 tickets), with ticket keys shared
    /// through the store.
    pub session_tickets: bool,
    /// How long a ticket resumes; keys rotate every half of it and are deleted after two.
    pub ticket_lifetime: Duration,
    /// The largest record plaintext the gateway sends (`None`: the TLS maximum, 16 KiB).
    pub max_fragment_size: Option<usize>,
    /// `alpn`: the protocols offered in the TLS handshake, in the server's order of preference
    /// (`["h2", "http/1.1"]` by default; `["http/1.1"]` turns HTTP/2 off).
    pub alpn: Vec<Alpn>,
}

/// A protocol the TLS listener offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

impl Alpn {
    /// The protocol's ALPN identifier (RFC 7301).
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

/// The most a ticket may be valid (RFC 8446 section 4.6.1: seven days).
pub const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// TLS to a route's servers (`https://...`): always verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// `upstream_sni`: the name sent as SNI and checked against every server's certificate; `None`:
    /// each server's own host.
    pub server_name: Option<String>,
    /// A PEM bundle of CA certificates to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
}

/// One server of a route's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// As configured (`10.0.0.5:8700`, `https://video-3.internal:8700`): its name in metrics and the API.
    pub label: String,
    /// `host:port`: resolved again every `resolve_interval`, and the `Host` of requests that had none.
    pub authority: String,
    /// The host alone: the TLS server name unless `upstream_sni` says otherwise.
    pub host: String,
    /// The address it resolved to when the configuration loaded.
    pub addr: SocketAddr,
}

/// How a route picks a server for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each server in turn.
    RoundRobin,
    /// The server with the fewest requests in flight.
    LeastRequests,
    /// The same user to the same server while the set is stable (rendezvous hashing).
    UserHash,
}

/// `[routes.health_check]`: active checks of every server of the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// `GET path` expecting a 2xx; `None`: a TCP connect.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that take a server out of rotation.
    pub unhealthy_after: u32,
    /// Consecutive successes that bring it back.
    pub healthy_after: u32,
}

/// A route's servers and how they are chosen and watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub servers: Vec<ServerConfig>,
    /// Set when the servers speak `https://`.
    pub tls: Option<UpstreamTls>,
    pub balance: Balance,
    pub health_check: Option<HealthCheckConfig>,
    /// How often host names are resolved again (a failed resolution keeps the last address).
    pub resolve_interval: Duration,
}

/// Brute-force throttling of failed authentications per client address.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Failures allowed per address per window (0: off).
    pub max_failures: u32,
    pub window: Duration,
    /// Most addresses tracked at once (memory bound).
    pub max_clients: usize,
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    Off,
    Plain,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub access: AccessLogFormat,
    /// `None`: standard output.
    pub access_path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The plain listener; `None` (`listen = ""`) runs TLS only.
    pub listen: Option<String>,
    pub user_id_header: HeaderName,
    pub token_id_header: Option<HeaderName>,
    pub threads: usize,
    /// Let idle worker threads steal connections from busy ones (one shared tokio runtime) instead of
    /// one first-in-first-out runtime per thread (the default: fairer between connections, a shorter
    /// latency tail; see BENCHMARKS.md "Latency tail").
    pub work_stealing: bool,
    pub grace_period: Duration,
    /// `revoked_retention`: how long a revoked or expired token stays in the index (answering
    /// `revoked`/`expired`) before it answers as an unknown token.
    pub revoked_retention: Duration,
    pub sync_interval: Duration,
    pub usage_flush_interval: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// Idle time allowed between requests on a client connection.
    pub keepalive_timeout: Duration,
    /// Unix socket used to hand listening sockets to a new process (`serve --upgrade`).
    pub upgrade_sock: PathBuf,
    /// Most requests handled at once; beyond, 503 with `Retry-After` (None: no limit).
    pub max_in_flight: Option<usize>,
    /// Time a client has to send a request head (from its first byte; for a new connection, from accept).
    pub header_timeout: Duration,
    /// Client connections open at once at most; more get 503 and are closed.
    pub max_connections: usize,
    /// `max_in_flight_per_token`: requests and tunnels one token may have open at once (429 beyond).
    pub max_in_flight_per_token: u32,
    /// `max_connections_per_address`: client connections open at once from one address (an IPv6 /64);
    /// addresses in `trusted_proxies` are not limited.
    pub max_connections_per_address: usize,
    /// `max_head_bytes`: the largest request head, request line and fields (431 beyond).
    pub max_head_bytes: usize,
    /// `body_timeout`: the longest wait for the next bytes of a request body (408 beyond).
    pub body_timeout: Duration,
    /// `send_timeout`: how long a client may take to accept one write of an answer (on HTTP/2: to open
    /// its flow-control window); beyond, the connection (HTTP/2: the stream) is closed.
    pub send_timeout: Duration,
    /// `min_body_rate`: bytes per second a request body must keep up, on average, once its first
    /// [`BODY_RATE_GRACE`] are over (408 beyond; 0: no minimum).
    pub min_body_rate: u64,
    /// `h2c`: HTTP/2 with prior knowledge on the plain listener (a connection that opens with the
    /// HTTP/2 preface); off by default.
    pub h2c: bool,
    /// `h2_max_concurrent_streams`: streams one HTTP/2 connection may have open at once.
    pub h2_max_concurrent_streams: u32,
}

/// `[gateway] h2_max_concurrent_streams` by default (nginx's `http2_max_concurrent_streams`).
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// `[gateway]` bounds by default (see README "Hardening").
pub const DEFAULT_MAX_IN_FLIGHT_PER_TOKEN: u32 = 32;
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// 32 KiB, what nginx accepts by default (`large_client_header_buffers 4 8k`): a connection stalled
/// mid-head holds no more than nginx's would. Up to 64 KiB when configured.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 32 * 1024;
/// 240 bytes a second after a 5 s grace: Kestrel's `MinRequestBodyDataRate`, which cuts a trickle and
/// leaves any real link (a 2G modem sends ~5 KB/s) alone.
pub const DEFAULT_MIN_BODY_RATE: u64 = 240;
/// The start of a body that is not held to `min_body_rate` (a device's radio may need to wake up).
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(5);

/// `[store]`: where the tokens live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite: the database file (config-relative paths resolved).
    Sqlite { path: PathBuf },
    /// PostgreSQL: the connection URL, and which key (or variable) gave it, for messages.
    Postgres { url: StoreUrl, from: &'static str },
}

impl StoreConfig {
    /// Where the store is, for messages (a URL without its password).
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Sqlite { path } => path.display().to_string(),
            StoreConfig::Postgres { url, .. } => url.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: String,
    /// `trusted_user_header`: from a `trusted_proxies` address, this header names the user a request acts
    /// for in self-service mode (the platform's account page behind its own login). Both unset: off.
    pub trusted_user_header: Option<HeaderName>,
    pub trusted_proxies: Vec<IpNet>,
    /// `max_tokens_per_user`: a self-service caller cannot create a token for a user who already holds
    /// this many active (not revoked, not expired) tokens.
    pub max_tokens_per_user: u64,
    /// `max_connections`: open admin connections at once (503 beyond).
    pub max_connections: usize,
    /// `self_service_rate`: writes per user by self-service callers (token or account), with a burst
    /// of one period's worth (at most 60).
    pub self_service_rate: super::Rate,
}

impl AdminConfig {
    /// The defaults: `max_tokens_per_user = 1000`, `max_connections = 256`, `self_service_rate = "60/m"`.
    pub const DEFAULT_MAX_TOKENS_PER_USER: u64 = 1000;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
    pub const DEFAULT_SELF_SERVICE_RATE: super::Rate = super::Rate {
        count: 60,
        per_secs: 60,
    };

    /// An admin listener on `listen` with no trusted header and the default bounds.
    pub fn on(listen: &str) -> AdminConfig {
        AdminConfig {
            listen: listen.to_owned(),
            trusted_user_header: None,
            trusted_proxies: Vec::new(),
            max_tokens_per_user: Self::DEFAULT_MAX_TOKENS_PER_USER,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            self_service_rate: Self::DEFAULT_SELF_SERVICE_RATE,
        }
    }
}

/// `[gateway] revoked_retention` by default: revoked and expired tokens stay indexed 10 minutes.
pub const DEFAULT_REVOKED_RETENTION: Duration = Duration::from_secs(600);

/// Whether a route requires a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Bearer,
    None,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub path_prefix: String,
    /// `upstream` or `upstreams`, `balance`, `health_check`, `resolve_interval`.
    pub pool: PoolConfig,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub auth: AuthMode,
    pub required_scope: Option<String>,
    /// The group a token (or its user) must be in.
    pub required_group: Option<String>,
    /// The license a token (or its user) must hold, valid at the request's time.
    pub required_license: Option<String>,
    pub strip_request_headers: Vec<HeaderName>,
    pub user_id_header: HeaderName,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: Option<u64>,
    /// Time the client has to send the whole request body (408 beyond).
    pub request_timeout: Option<Duration>,
    /// Legacy firmware: accept the token from this query parameter (removed before forwarding).
    pub query_token_param: Option<String>,
    /// HMAC key for the `x-tokengate-signature` header (None: not signed).
    pub sign_secret: Option<Vec<u8>>,
    /// Refuse requests that did not arrive over TLS (403 `tls_required`).
    pub tls_only: bool,
    /// Per token on this route, with its burst (default: one second's worth).
    pub rate_limit: Option<(super::Rate, u64)>,
    /// All tokens of one user together on this route (burst: one second's worth).
    pub user_rate_limit: Option<super::Rate>,
    /// `RateLimit` on responses within the limits too (429s always carry it).
    pub rate_limit_headers: bool,
    /// Add `x-token-scopes` and `x-token-roles` to forwarded requests.
    pub forward_scopes: bool,
    /// Relay WebSocket upgrades (`Upgrade: websocket`) to the upstream.
    pub websocket: bool,
    /// A tunnel in which neither side sent anything for this long is closed.
    pub websocket_idle_timeout: Duration,
}

/// An IP network (`10.0.0.0/8`, `::1/128`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(IpNet { addr, prefix })
    }

    /// Whether this network is wider than any one organisation's: an IPv4 prefix shorter than /8 (the
    /// widest private range, 10.0.0.0/8, is a /8), or an IPv6 prefix shorter than /32 (what a registry
    /// gives a whole provider; a site gets a /48) outside unique-local fc00::/7 and link-local fe80::/10.
    pub fn spans_several_networks(&self) -> bool {
        match self.addr {
            IpAddr::V4(_) => self.prefix < 8,
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let unique_local = self.prefix >= 7 && bits >> 121 == 0xfc >> 1;
                let link_local = self.prefix >= 10 && bits >> 118 == 0xfe80 >> 6;
                self.prefix < 32 && !unique_local && !link_local
            }
        }
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `[leaks]`, validated in [`super::leaks`].
/// What a confirmed leak of an active token does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakAction {
    /// Revoke the token at once (the default).
    Revoke,
    /// Record and notify; the token keeps working.
    Report,
}

impl LeakAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LeakAction::Revoke => "revoke",
            LeakAction::Report => "report",
        }
    }
}

/// Where the partner's signature keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key document on disk (`public_keys_file`).
    File(PathBuf),
    /// A key document fetched over `https://` (or `http://` to a loopback address).
    Url(String),
}

/// The validated `[leaks]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaksConfig {
    /// Exact path of the endpoint on the gateway's listeners (no query, no fragment).
    pub listen_path: String,
    pub keys: KeySource,
    pub action: LeakAction,
    /// The owner-notification webhook and the file with its HMAC key.
    pub notify_url: Option<String>,
    pub notify_secret_file: Option<PathBuf>,
}

/// `[verify]` and `[mqtt]`, validated in [`super::verify`].
/// The validated `[verify]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    /// The verify listener's address (its own listener; TLS with `[verify.tls]`).
    pub listen: String,
    /// Who may ask (others get 403); their `X-Forwarded-*` fields are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// > 0: allowed answers carry `Cache-Control: private, max-age=N`.
    pub cache_seconds: u64,
    /// Envoy `ext_authz`'s `path_prefix`: the original path is the request's own path without it.
    pub path_prefix: Option<String>,
    /// `[verify.tls]`: the verify listener speaks TLS (its `listen` is the verify listener's).
    pub tls: Option<TlsConfig>,
}

/// How `[mqtt]` reads the MQTT username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttUsername {
    /// Anything (the token alone authenticates).
    #[default]
    Free,
    /// It must be the token's user id.
    UserId,
}

/// How the MQTT endpoints answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttMode {
    /// EMQX 5's HTTP authenticator/authorizer: 200 with `{"result": "allow"|"deny", ...}`.
    #[default]
    Json,
    /// mosquitto-go-auth's HTTP backend with `response_mode = status`: 200 allow, 403 deny.
    Status,
}

/// What a topic rule lets a client do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicAction {
    Publish,
    Subscribe,
    All,
}

/// One `[[mqtt.topics]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    /// An MQTT topic filter whose levels may hold `{user_id}`.
    pub pattern: String,
    pub action: TopicAction,
    pub required_scope: Option<String>,
    /// The group the client's token (or its user) must be in.
    pub required_group: Option<String>,
    /// The license the client's token (or its user) must hold, valid now.
    pub required_license: Option<String>,
}

/// The validated `[mqtt]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MqttConfig {
    pub username: MqttUsername,
    pub mode: MqttMode,
    pub topics: Vec<TopicRule>,
}
