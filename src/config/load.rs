//! Reading a configuration file: TOML syntax, then the file layer ([`super::file`]), then every value
//! checked and defaulted into the validated [`Config`]. Errors name the file, the key and the problem.

use super::context::Ctx;
use super::file::{default_threads, FileConfig};
use super::model::*;
use super::route::route;
use super::values::{check_listen, header_name, one_line};
use http::HeaderName;
use std::path::Path;
use std::time::Duration;

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
        let cx = Ctx {
            file: path.display().to_string(),
            base: path.parent().unwrap_or(Path::new(".")),
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| cx.err("(syntax)", one_line(e.message(), e.span(), text)))?;
        let raw: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." || p.is_empty() => "(top level)".to_string(),
                p => p,
            };
            cx.err(&key, e.inner().message().to_string())
        })?;
        let gateway = gateway(&cx, raw.gateway)?;
        let tls = raw.tls.map(|t| super::tls::tls(&cx, t)).transpose()?;
        if gateway.listen.is_none() && tls.is_none() {
            return Err(cx.err(
                "gateway.listen",
                "is \"\" (no plain listener) but there is no [tls] section: nothing would listen",
            ));
        }

        let access_path = match raw.log.access_path.as_deref() {
            None | Some("-") => None,
            Some("") => {
                return Err(cx.err(
                    "log.access_path",
                    "must not be empty (use \"-\" for stdout)",
                ))
            }
            Some(p) => Some(cx.path(p)),
        };
        let throttle = ThrottleConfig {
            max_failures: raw.throttle.max_failures.unwrap_or(20),
            window: cx.duration_within(
                "throttle.window",
                &raw.throttle.window,
                Duration::from_secs(60),
                (Duration::from_secs(1), Duration::MAX),
                "at least 1s",
            )?,
            max_clients: raw.throttle.max_clients.unwrap_or(100_000),
        };
        if throttle.max_clients < 64 {
            return Err(cx.err("throttle.max_clients", "must be at least 64"));
        }

        let store = store(&cx, raw.store)?;
        check_listen(&raw.admin.listen).map_err(|p| cx.err("admin.listen", p))?;
        let roles = super::access::roles(&cx, raw.roles)?;

        let mut routes: Vec<RouteConfig> = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            let r = route(&cx, i, r, &gateway, &routes)?;
            routes.push(r);
        }
        if routes.is_empty() {
            return Err(cx.err(
                "routes",
                "no [[routes]] defined: the gateway would answer 404 to everything",
            ));
        }

        let admin = super::access::admin(&cx, raw.admin)?;
        let verify = raw
            .verify
            .map(|v| super::verify::verify(&cx, v))
            .transpose()?;
        listeners_apart(
            &cx,
            &[
                ("gateway.listen", gateway.listen.as_deref()),
                ("tls.listen", tls.as_ref().map(|t| t.listen.as_str())),
                ("admin.listen", Some(&admin.listen)),
                ("verify.listen", verify.as_ref().map(|v| v.listen.as_str())),
            ],
        )?;

        Ok(Config {
            file: path.to_path_buf(),
            gateway,
            store,
            admin,
            roles,
            log: LogConfig {
                access: raw.log.access.unwrap_or(AccessLogFormat::Plain),
                access_path,
            },
            throttle,
            tls,
            leaks: raw.leaks.map(|l| super::leaks::leaks(&cx, l)).transpose()?,
            verify,
            mqtt: super::verify::mqtt(&cx, raw.mqtt)?,
            routes,
        })
    }
}

/// The `[gateway]` table.
fn gateway(cx: &Ctx, g: super::file::FileGateway) -> Result<GatewayConfig, ConfigError> {
    let listen = match g.listen.as_str() {
        "" => None,
        l => {
            check_listen(l).map_err(|p| cx.err("gateway.listen", p))?;
            Some(g.listen.clone())
        }
    };
    let user_id_header = header_name(g.user_id_header.as_deref().unwrap_or("x-user-id"))
        .map_err(|p| cx.err("gateway.user_id_header", p))?;
    let token_id_header = token_id_header(cx, &g)?;
    let threads = threads(cx, &g)?;
    let grace_period = cx.duration(
        "gateway.grace_period",
        &g.grace_period,
        Duration::from_secs(3),
    )?;
    let revoked_retention = revoked_retention(cx, &g)?;
    let sync_interval = cx.duration_within(
        "gateway.sync_interval",
        &g.sync_interval,
        Duration::from_millis(100),
        (Duration::from_millis(5), Duration::from_secs(60)),
        "between 5ms and 60s",
    )?;
    let usage_flush_interval = cx.duration_within(
        "gateway.usage_flush_interval",
        &g.usage_flush_interval,
        Duration::from_secs(5),
        (Duration::from_millis(10), Duration::MAX),
        "at least 10ms",
    )?;
    let trusted_proxies = trusted_proxies(cx, &g)?;
    let keepalive_timeout = cx.duration_within(
        "gateway.keepalive_timeout",
        &g.keepalive_timeout,
        Duration::from_secs(60),
        (Duration::from_secs(1), Duration::MAX),
        "at least 1s",
    )?;
    let send_timeout = cx.duration_within(
        "gateway.send_timeout",
        &g.send_timeout,
        Duration::from_secs(60),
        (Duration::from_secs(1), Duration::from_secs(3600)),
        "between 1s and 1h",
    )?;
    let header_timeout = cx.duration_within(
        "gateway.header_timeout",
        &g.header_timeout,
        Duration::from_secs(10),
        (Duration::from_millis(100), Duration::from_secs(300)),
        "between 100ms and 300s",
    )?;
    let max_connections = at_least_one(
        cx,
        "gateway.max_connections",
        g.max_connections.unwrap_or(10_000),
    )?;
    let upgrade_sock = upgrade_sock(cx, &g)?;
    let max_in_flight = max_in_flight(cx, &g)?;
    let max_in_flight_per_token = at_least_one(
        cx,
        "gateway.max_in_flight_per_token",
        g.max_in_flight_per_token
            .unwrap_or(super::model::DEFAULT_MAX_IN_FLIGHT_PER_TOKEN),
    )?;
    let max_connections_per_address = at_least_one(
        cx,
        "gateway.max_connections_per_address",
        g.max_connections_per_address
            .unwrap_or(super::model::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS),
    )?;
    let max_head_bytes = max_head_bytes(cx, &g)?;
    let body_timeout = cx.duration_within(
        "gateway.body_timeout",
        &g.body_timeout,
        super::model::DEFAULT_BODY_TIMEOUT,
        (Duration::from_secs(1), Duration::from_secs(3600)),
        "between 1s and 1h",
    )?;
    let h2_max_concurrent_streams = g
        .h2_max_concurrent_streams
        .unwrap_or(super::model::DEFAULT_H2_MAX_CONCURRENT_STREAMS);
    if !(1..=1000).contains(&h2_max_concurrent_streams) {
        return Err(cx.err(
            "gateway.h2_max_concurrent_streams",
            format!("{h2_max_concurrent_streams} is not between 1 and 1000"),
        ));
    }
    Ok(GatewayConfig {
        listen,
        user_id_header,
        token_id_header,
        threads,
        work_stealing: g.work_stealing.unwrap_or(false),
        grace_period,
        revoked_retention,
        sync_interval,
        usage_flush_interval,
        trusted_proxies,
        keepalive_timeout,
        upgrade_sock,
        max_in_flight,
        header_timeout,
        max_connections,
        max_in_flight_per_token,
        max_connections_per_address,
        max_head_bytes,
        body_timeout,
        send_timeout,
        min_body_rate: g
            .min_body_rate
            .unwrap_or(super::model::DEFAULT_MIN_BODY_RATE),
        h2c: g.h2c.unwrap_or(false),
        h2_max_concurrent_streams,
    })
}

/// `gateway.token_id_header`: `x-token-id` by default, none when empty.
fn token_id_header(
    cx: &Ctx,
    g: &super::file::FileGateway,
) -> Result<Option<HeaderName>, ConfigError> {
    Ok(match g.token_id_header.as_deref() {
        None => Some(HeaderName::from_static("x-token-id")),
        Some("") => None,
        Some(s) => Some(header_name(s).map_err(|p| cx.err("gateway.token_id_header", p))?),
    })
}

/// `gateway.threads`: 1 to 1024, the machine's cores by default.
fn threads(cx: &Ctx, g: &super::file::FileGateway) -> Result<usize, ConfigError> {
    let threads = g.threads.unwrap_or_else(default_threads);
    if threads == 0 || threads > 1024 {
        return Err(cx.err(
            "gateway.threads",
            format!("{threads} is not between 1 and 1024"),
        ));
    }
    Ok(threads)
}

/// `gateway.revoked_retention`: at least a second.
fn revoked_retention(cx: &Ctx, g: &super::file::FileGateway) -> Result<Duration, ConfigError> {
    let revoked_retention = cx.duration(
        "gateway.revoked_retention",
        &g.revoked_retention,
        super::DEFAULT_REVOKED_RETENTION,
    )?;
    if revoked_retention < Duration::from_secs(1) {
        return Err(cx.err(
            "gateway.revoked_retention",
            "must be at least 1s (a revoked token must be seen revoked before it is forgotten)",
        ));
    }
    Ok(revoked_retention)
}

/// `gateway.trusted_proxies`: addresses or CIDR blocks.
fn trusted_proxies(cx: &Ctx, g: &super::file::FileGateway) -> Result<Vec<IpNet>, ConfigError> {
    let mut trusted_proxies = Vec::new();
    for (i, p) in g.trusted_proxies.iter().enumerate() {
        let net = IpNet::parse(p).ok_or_else(|| {
            cx.err(
                &format!("gateway.trusted_proxies[{i}]"),
                format!("{p:?} is not an IP address or CIDR"),
            )
        })?;
        trusted_proxies.push(net);
    }
    Ok(trusted_proxies)
}

/// `gateway.upgrade_sock`: not empty; in the temporary folder by default.
fn upgrade_sock(cx: &Ctx, g: &super::file::FileGateway) -> Result<std::path::PathBuf, ConfigError> {
    Ok(match g.upgrade_sock.as_deref() {
        Some("") => return Err(cx.err("gateway.upgrade_sock", "must not be empty")),
        Some(p) => cx.path(p),
        None => std::env::temp_dir().join("tokengate-upgrade.sock"),
    })
}

/// `gateway.max_in_flight`: at least 1, or no limit.
fn max_in_flight(cx: &Ctx, g: &super::file::FileGateway) -> Result<Option<usize>, ConfigError> {
    if g.max_in_flight == Some(0) {
        return Err(cx.err(
            "gateway.max_in_flight",
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    Ok(g.max_in_flight)
}

/// `gateway.max_head_bytes`: 4 to 64 KiB.
fn max_head_bytes(cx: &Ctx, g: &super::file::FileGateway) -> Result<usize, ConfigError> {
    let max_head_bytes = g
        .max_head_bytes
        .unwrap_or(super::model::DEFAULT_MAX_HEAD_BYTES);
    if !(4096..=65536).contains(&max_head_bytes) {
        return Err(cx.err("gateway.max_head_bytes", "must be between 4096 and 65536"));
    }
    Ok(max_head_bytes)
}

/// A count that must be at least 1.
fn at_least_one<N: PartialEq + From<u8>>(cx: &Ctx, key: &str, n: N) -> Result<N, ConfigError> {
    if n == N::from(0) {
        return Err(cx.err(key, "must be at least 1"));
    }
    Ok(n)
}

/// Every listener on its own socket: two listeners on one port (and an address both would bind, the
/// same IP or a wildcard) would share one socket — pingora hands the second the first one's — and
/// connections would land on either at random (a device's request answered by the verify endpoint,
/// the admin API on the devices' port). Port 0 (the system picks) never collides.
fn listeners_apart(cx: &Ctx, listeners: &[(&str, Option<&str>)]) -> Result<(), ConfigError> {
    let parsed: Vec<(&str, &str, std::net::SocketAddr)> = listeners
        .iter()
        .filter_map(|(key, addr)| {
            let addr = (*addr)?;
            addr.parse().ok().map(|a| (*key, addr, a))
        })
        .collect();
    for (i, (key, text, a)) in parsed.iter().enumerate() {
        for (earlier, earlier_text, b) in &parsed[..i] {
            let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
            if a.port() != 0 && a.port() == b.port() && overlap {
                return Err(cx.err(
                    key,
                    format!("{text:?} uses the port of {earlier} ({earlier_text:?}): give each listener its own"),
                ));
            }
        }
    }
    Ok(())
}

/// The environment variable that gives the PostgreSQL URL instead of `[store] path`.
pub const STORE_URL_ENV: &str = "TOKENGATE_STORE_URL";

/// `[store]`: exactly one of `path` (SQLite, the default), `url` or `url_file` (PostgreSQL); the
/// environment variable `TOKENGATE_STORE_URL`, when set, stands for `url` (and replaces `path`).
fn store(cx: &Ctx, s: super::file::FileStore) -> Result<StoreConfig, ConfigError> {
    let env = std::env::var(STORE_URL_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let given = [s.url.is_some(), s.url_file.is_some(), env.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(cx.err(
            "store",
            format!("give one of url, url_file or {STORE_URL_ENV}, not several"),
        ));
    }
    if s.path.is_some() && (s.url.is_some() || s.url_file.is_some()) {
        return Err(cx.err(
            "store",
            "give path (SQLite) or url/url_file (PostgreSQL), not both",
        ));
    }
    let check = |key: &'static str, url: String| -> Result<StoreConfig, ConfigError> {
        let url = StoreUrl::new(url.trim().to_string());
        if super::store_url::form(url.expose()).is_none() {
            return Err(cx.err(
                key,
                format!(
                    "{url} is neither a postgres://user:password@host:port/database URL nor \
                     key=value words such as host=db user=tokengate dbname=tokengate"
                ),
            ));
        }
        Ok(StoreConfig::Postgres { url, from: key })
    };
    if let Some(url) = s.url {
        return check("store.url", url);
    }
    if let Some(file) = s.url_file {
        let path = cx.path(&file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            cx.err(
                "store.url_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        return check("store.url_file", text);
    }
    if let Some(url) = env {
        return check(STORE_URL_ENV, url);
    }
    let path = s.path.unwrap_or_else(|| "data/tokengate.db".into());
    if path.trim().is_empty() {
        return Err(cx.err("store.path", "must not be empty"));
    }
    Ok(StoreConfig::Sqlite {
        path: cx.path(&path),
    })
}

/// Reads only `[store]` from a configuration, for the `token` and `store` commands.
pub fn load_store(path: &Path) -> Result<StoreConfig, ConfigError> {
    Config::load(path).map(|c| c.store)
}
