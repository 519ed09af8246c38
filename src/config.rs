//! Configuration: the TOML file schema (serde, unknown keys rejected), its defaults, and the conversion into
//! the validated [`Config`] that the rest of the crate sees. Every error names the file, the key and the
//! problem, e.g. `config/tokengate.toml: routes[1].upstream: "nowhere" is not host:port`.

use http::HeaderName;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub routes: Vec<RouteConfig>,
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
    pub listen: String,
    pub user_id_header: HeaderName,
    pub token_id_header: Option<HeaderName>,
    pub threads: usize,
    pub grace_period: Duration,
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
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Absolute (or config-relative, resolved) path of the SQLite database.
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: String,
}

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
    /// The upstream as written (`host:port`), for messages.
    pub upstream: String,
    /// The upstream address, resolved once when the configuration loads.
    pub upstream_addr: SocketAddr,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub auth: AuthMode,
    pub required_scope: Option<String>,
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

// ---- the file layer -------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    gateway: FileGateway,
    #[serde(default)]
    store: FileStore,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    throttle: FileThrottle,
    #[serde(default)]
    routes: Vec<FileRoute>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileThrottle {
    max_failures: Option<u32>,
    window: Option<String>,
    max_clients: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLog {
    access: Option<AccessLogFormat>,
    access_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGateway {
    listen: String,
    user_id_header: Option<String>,
    token_id_header: Option<String>,
    threads: Option<usize>,
    grace_period: Option<String>,
    sync_interval: Option<String>,
    usage_flush_interval: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    keepalive_timeout: Option<String>,
    upgrade_sock: Option<String>,
    max_in_flight: Option<usize>,
    header_timeout: Option<String>,
    max_connections: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStore {
    path: String,
}

impl Default for FileStore {
    fn default() -> Self {
        FileStore {
            path: "data/tokengate.db".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: String,
}

impl Default for FileAdmin {
    fn default() -> Self {
        FileAdmin {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: String,
    path_prefix: String,
    upstream: String,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
    write_timeout: Option<String>,
    idle_timeout: Option<String>,
    auth: Option<AuthMode>,
    required_scope: Option<String>,
    #[serde(default)]
    strip_request_headers: Vec<String>,
    user_id_header: Option<String>,
    max_body_bytes: Option<u64>,
    request_timeout: Option<String>,
    query_token_param: Option<String>,
    sign_secret: Option<String>,
}

/// The default number of proxy worker threads: the number of cores.
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: "(file)".into(),
            problem: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text that came from `path` (used for messages and for resolving
    /// relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |key: &str, problem: String| ConfigError {
            file: file.clone(),
            key: key.to_string(),
            problem,
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| err("(syntax)", one_line(e.message(), e.span(), text)))?;
        let raw: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." || p.is_empty() => "(top level)".to_string(),
                p => p,
            };
            err(&key, e.inner().message().to_string())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));

        let g = raw.gateway;
        check_listen(&g.listen).map_err(|p| err("gateway.listen", p))?;
        let user_id_header = header_name(g.user_id_header.as_deref().unwrap_or("x-user-id"))
            .map_err(|p| err("gateway.user_id_header", p))?;
        let token_id_header = match g.token_id_header.as_deref() {
            None => Some(HeaderName::from_static("x-token-id")),
            Some("") => None,
            Some(s) => Some(header_name(s).map_err(|p| err("gateway.token_id_header", p))?),
        };
        let threads = g.threads.unwrap_or_else(default_threads);
        if threads == 0 || threads > 1024 {
            return Err(err(
                "gateway.threads",
                format!("{threads} is not between 1 and 1024"),
            ));
        }
        let dur =
            |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(s) => parse_duration(s).map_err(|p| err(key, p)),
                }
            };
        let grace_period = dur(
            "gateway.grace_period",
            &g.grace_period,
            Duration::from_secs(3),
        )?;
        let sync_interval = dur(
            "gateway.sync_interval",
            &g.sync_interval,
            Duration::from_millis(100),
        )?;
        if sync_interval < Duration::from_millis(5) || sync_interval > Duration::from_secs(60) {
            return Err(err(
                "gateway.sync_interval",
                "must be between 5ms and 60s".into(),
            ));
        }
        let usage_flush_interval = dur(
            "gateway.usage_flush_interval",
            &g.usage_flush_interval,
            Duration::from_secs(5),
        )?;
        if usage_flush_interval < Duration::from_millis(10) {
            return Err(err(
                "gateway.usage_flush_interval",
                "must be at least 10ms".into(),
            ));
        }
        let mut trusted_proxies = Vec::new();
        for (i, p) in g.trusted_proxies.iter().enumerate() {
            let net = IpNet::parse(p).ok_or_else(|| {
                err(
                    &format!("gateway.trusted_proxies[{i}]"),
                    format!("{p:?} is not an IP address or CIDR"),
                )
            })?;
            trusted_proxies.push(net);
        }

        let keepalive_timeout = dur(
            "gateway.keepalive_timeout",
            &g.keepalive_timeout,
            Duration::from_secs(60),
        )?;
        if keepalive_timeout < Duration::from_secs(1) {
            return Err(err(
                "gateway.keepalive_timeout",
                "must be at least 1s".into(),
            ));
        }
        let header_timeout = dur(
            "gateway.header_timeout",
            &g.header_timeout,
            Duration::from_secs(10),
        )?;
        if header_timeout < Duration::from_millis(100) || header_timeout > Duration::from_secs(300)
        {
            return Err(err(
                "gateway.header_timeout",
                "must be between 100ms and 300s".into(),
            ));
        }
        let max_connections = g.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            return Err(err("gateway.max_connections", "must be at least 1".into()));
        }
        let resolve = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let upgrade_sock = match g.upgrade_sock.as_deref() {
            Some("") => return Err(err("gateway.upgrade_sock", "must not be empty".into())),
            Some(p) => resolve(p),
            None => std::env::temp_dir().join("tokengate-upgrade.sock"),
        };
        let access_path = match raw.log.access_path.as_deref() {
            None | Some("-") => None,
            Some("") => {
                return Err(err(
                    "log.access_path",
                    "must not be empty (use \"-\" for stdout)".into(),
                ))
            }
            Some(p) => Some(resolve(p)),
        };

        if g.max_in_flight == Some(0) {
            return Err(err(
                "gateway.max_in_flight",
                "must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        let throttle = ThrottleConfig {
            max_failures: raw.throttle.max_failures.unwrap_or(20),
            window: dur(
                "throttle.window",
                &raw.throttle.window,
                Duration::from_secs(60),
            )?,
            max_clients: raw.throttle.max_clients.unwrap_or(100_000),
        };
        if throttle.window < Duration::from_secs(1) {
            return Err(err("throttle.window", "must be at least 1s".into()));
        }
        if throttle.max_clients < 64 {
            return Err(err("throttle.max_clients", "must be at least 64".into()));
        }

        let store_path = PathBuf::from(&raw.store.path);
        if raw.store.path.trim().is_empty() {
            return Err(err("store.path", "must not be empty".into()));
        }
        let store_path = if store_path.is_absolute() {
            store_path
        } else {
            base.join(store_path)
        };

        check_listen(&raw.admin.listen).map_err(|p| err("admin.listen", p))?;

        let mut routes: Vec<RouteConfig> = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            let k = |field: &str| format!("routes[{i}].{field}");
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(err(
                    &k("name"),
                    format!("{:?} must be non-empty letters, digits, '-' or '_'", r.name),
                ));
            }
            if let Some(other) = routes.iter().position(|o| o.name == r.name) {
                return Err(err(
                    &k("name"),
                    format!("{:?} is already used by routes[{other}]", r.name),
                ));
            }
            check_prefix(&r.path_prefix).map_err(|p| err(&k("path_prefix"), p))?;
            let prefix = normalize_prefix(&r.path_prefix);
            if let Some(other) = routes.iter().position(|o| o.path_prefix == prefix) {
                return Err(err(
                    &k("path_prefix"),
                    format!("{:?} is already used by routes[{other}]", r.path_prefix),
                ));
            }
            let upstream_addr =
                resolve_upstream(&r.upstream).map_err(|p| err(&k("upstream"), p))?;
            let auth = r.auth.unwrap_or(AuthMode::Bearer);
            let required_scope = match r.required_scope {
                Some(s) if auth == AuthMode::None => {
                    return Err(err(
                        &k("required_scope"),
                        format!("{s:?} cannot be required on a route with auth = \"none\""),
                    ))
                }
                Some(s) => Some(
                    check_scope(&s)
                        .map(|_| s)
                        .map_err(|p| err(&k("required_scope"), p))?,
                ),
                None => None,
            };
            let mut strip = Vec::new();
            for (j, h) in r.strip_request_headers.iter().enumerate() {
                strip.push(
                    header_name(h)
                        .map_err(|p| err(&format!("routes[{i}].strip_request_headers[{j}]"), p))?,
                );
            }
            if r.max_body_bytes == Some(0) {
                return Err(err(
                    &k("max_body_bytes"),
                    "must be at least 1 (leave it out for no limit)".into(),
                ));
            }
            let request_timeout = match &r.request_timeout {
                Some(_) => Some(dur(
                    &k("request_timeout"),
                    &r.request_timeout,
                    Duration::ZERO,
                )?),
                None => None,
            };
            if request_timeout.is_some_and(|t| t < Duration::from_millis(10)) {
                return Err(err(&k("request_timeout"), "must be at least 10ms".into()));
            }
            if let Some(q) = &r.query_token_param {
                if auth == AuthMode::None {
                    return Err(err(
                        &k("query_token_param"),
                        "makes no sense on a route with auth = \"none\"".into(),
                    ));
                }
                if q.is_empty()
                    || !q
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(err(
                        &k("query_token_param"),
                        format!("{q:?} must be letters, digits, '_' or '-'"),
                    ));
                }
            }
            let sign_secret = match r.sign_secret {
                Some(_) if auth == AuthMode::None => {
                    return Err(err(
                        &k("sign_secret"),
                        "needs auth = \"bearer\": there is no identity to sign".into(),
                    ))
                }
                Some(s) if s.len() < 32 => {
                    return Err(err(
                        &k("sign_secret"),
                        "must be at least 32 characters (the value is not shown)".into(),
                    ))
                }
                Some(s) => Some(s.into_bytes()),
                None => None,
            };
            let route_user_header = match r.user_id_header {
                Some(h) => header_name(&h).map_err(|p| err(&k("user_id_header"), p))?,
                None => user_id_header.clone(),
            };
            routes.push(RouteConfig {
                name: r.name,
                path_prefix: prefix,
                upstream: r.upstream,
                upstream_addr,
                connect_timeout: dur(
                    &k("connect_timeout"),
                    &r.connect_timeout,
                    Duration::from_secs(2),
                )?,
                read_timeout: dur(&k("read_timeout"), &r.read_timeout, Duration::from_secs(60))?,
                write_timeout: dur(
                    &k("write_timeout"),
                    &r.write_timeout,
                    Duration::from_secs(60),
                )?,
                idle_timeout: dur(&k("idle_timeout"), &r.idle_timeout, Duration::from_secs(60))?,
                auth,
                required_scope,
                strip_request_headers: strip,
                user_id_header: route_user_header,
                max_body_bytes: r.max_body_bytes,
                request_timeout,
                query_token_param: r.query_token_param,
                sign_secret,
            });
        }
        if routes.is_empty() {
            return Err(err(
                "routes",
                "no [[routes]] defined: the gateway would answer 404 to everything".into(),
            ));
        }

        Ok(Config {
            file: path.to_path_buf(),
            gateway: GatewayConfig {
                listen: g.listen,
                user_id_header,
                token_id_header,
                threads,
                grace_period,
                sync_interval,
                usage_flush_interval,
                trusted_proxies,
                keepalive_timeout,
                upgrade_sock,
                max_in_flight: g.max_in_flight,
                header_timeout,
                max_connections,
            },
            store: StoreConfig { path: store_path },
            admin: AdminConfig {
                listen: raw.admin.listen,
            },
            log: LogConfig {
                access: raw.log.access.unwrap_or(AccessLogFormat::Plain),
                access_path,
            },
            throttle,
            routes,
        })
    }
}

/// Reads only `[store] path` from a configuration, for CLI commands that must work even when other parts
/// of the file (e.g. an upstream that does not resolve on this machine) are wrong.
pub fn load_store_path(path: &Path) -> Result<PathBuf, ConfigError> {
    Config::load(path).map(|c| c.store.path)
}

fn one_line(message: &str, span: Option<std::ops::Range<usize>>, text: &str) -> String {
    match span {
        Some(s) => {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", message.trim())
        }
        None => message.trim().to_string(),
    }
}

/// Parses durations such as `100ms`, `30s`, `15m`, `12h`, `90d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("{s:?} is not a duration like 100ms, 30s, 15m, 12h or 90d"))
}

fn check_listen(s: &str) -> Result<(), String> {
    s.parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:8080 or [::]:8080"))
}

fn resolve_upstream(s: &str) -> Result<SocketAddr, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(format!(
            "{s:?} is not host:port with a port from 1 to 65535"
        ));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.len() > 1 && crate::routes::check_path(p.trim_end_matches('/')).is_err() {
        return Err(format!(
            "{p:?} must be a plain path: no '//', '.', '..', '%' escapes or backslashes"
        ));
    }
    if p.contains(['?', '#', '%']) || p.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(format!(
            "{p:?} must be a plain path of visible ASCII without '?', '#' or '%'"
        ));
    }
    Ok(())
}

fn normalize_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else {
        t.to_string()
    }
}

/// Scopes are short words of visible ASCII without spaces, quotes or backslashes (RFC 6750 scope-token).
pub fn check_scope(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    {
        return Err(format!("{s:?} is not a scope: 1 to 64 visible ASCII characters, no spaces, quotes or backslashes"));
    }
    Ok(())
}

fn header_name(s: &str) -> Result<HeaderName, String> {
    let lower = s.to_ascii_lowercase();
    if lower == "authorization"
        || lower == "host"
        || lower == "content-length"
        || lower == "transfer-encoding"
    {
        return Err(format!("{s:?} cannot be used here"));
    }
    HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| format!("{s:?} is not a valid HTTP header name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[gateway]
listen = "127.0.0.1:8080"
[[routes]]
name = "telemetry"
path_prefix = "/iot/"
upstream = "127.0.0.1:8600"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/tg/gw.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.gateway.user_id_header.as_str(), "x-user-id");
        assert_eq!(
            c.gateway.token_id_header.as_ref().unwrap().as_str(),
            "x-token-id"
        );
        assert_eq!(c.gateway.sync_interval, Duration::from_millis(100));
        assert_eq!(c.store.path, PathBuf::from("/etc/tg/data/tokengate.db"));
        assert_eq!(c.admin.listen, "127.0.0.1:9090");
        assert_eq!(c.routes[0].path_prefix, "/iot");
        assert_eq!(c.routes[0].auth, AuthMode::Bearer);
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let bad = MINIMAL.replace("127.0.0.1:8600", "nowhere");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/tg/gw.toml: routes[0].upstream: \"nowhere\""),
            "{e}"
        );

        let e = parse(&format!("{MINIMAL}colour = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0]") && e.contains("colour"), "{e}");

        let e = parse(&MINIMAL.replace("[gateway]", "[gateway]\nthreads = \"two\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway.threads"), "{e}");

        let e = parse(&format!("{MINIMAL}[[routes]]\nname = \"telemetry\"\npath_prefix = \"/x\"\nupstream = \"127.0.0.1:1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("routes[1].name") && e.contains("already used"),
            "{e}"
        );

        let e = parse(&MINIMAL.replace("/iot/", "/a/../b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0].path_prefix"), "{e}");

        let e = parse(&MINIMAL.replace("[gateway]", "[gateway]\ngrace_period = \"soon\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gateway.grace_period") && e.contains("soon"),
            "{e}"
        );
    }

    #[test]
    fn ipnet_matching() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
    }

    #[test]
    fn example_production_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/production.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.store.path,
            PathBuf::from("/var/lib/tokengate/tokengate.db")
        );
        assert_eq!(c.admin.listen, "127.0.0.1:9090");
        assert!(c.routes.iter().any(|r| r.query_token_param.is_some()));
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokengate.toml");
        let c = Config::load(&path).unwrap();
        assert!(c.routes.iter().any(|r| r.path_prefix == "/video"));
    }
}
