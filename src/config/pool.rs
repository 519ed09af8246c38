//! A route's servers: `upstream` or `upstreams` (exactly one of the two), `balance`, the optional
//! `[routes.health_check]` table and `resolve_interval`, checked into [`PoolConfig`]. Keys in errors are
//! `routes[N].upstreams[M]`, `routes[N].health_check.interval`, ...

use super::context::Ctx;
use super::file::{FileHealthCheck, FileRoute};
use super::model::*;
use super::values::resolve_upstream;
use std::time::Duration;

/// Most servers in one route's pool (the servers a request tried are tracked in a 64-bit mask).
pub const MAX_SERVERS: usize = 64;

/// Checks route number `i`'s servers and how they are chosen and watched.
pub(super) fn pool(cx: &Ctx, i: usize, r: &FileRoute) -> Result<PoolConfig, ConfigError> {
    let k = |field: &str| format!("routes[{i}].{field}");
    let listed: Vec<(String, &str)> = match (&r.upstream, &r.upstreams) {
        (Some(_), Some(_)) => {
            return Err(cx.err(
                &k("upstreams"),
                "give either upstream or upstreams, not both",
            ))
        }
        (None, None) => {
            return Err(cx.err(
                &k("upstream"),
                "missing: give upstream = \"host:port\" or upstreams = [\"host:port\", ...]",
            ))
        }
        (Some(one), None) => vec![(k("upstream"), one.as_str())],
        (None, Some(many)) if many.is_empty() => {
            return Err(cx.err(&k("upstreams"), "needs at least one server"))
        }
        (None, Some(many)) if many.len() > MAX_SERVERS => {
            return Err(cx.err(
                &k("upstreams"),
                format!("at most {MAX_SERVERS} servers per route"),
            ))
        }
        (None, Some(many)) => many
            .iter()
            .enumerate()
            .map(|(j, s)| (k(&format!("upstreams[{j}]")), s.as_str()))
            .collect(),
    };
    let mut servers: Vec<ServerConfig> = Vec::with_capacity(listed.len());
    let mut https = None;
    for (key, written) in listed {
        let (is_https, server) = server(written).map_err(|p| cx.err(&key, p))?;
        match https {
            None => https = Some(is_https),
            Some(first) if first != is_https => {
                return Err(cx.err(
                    &key,
                    "all servers of a route speak the same scheme (http:// or https://)",
                ))
            }
            Some(_) => {}
        }
        if servers.iter().any(|s| s.authority == server.authority) {
            return Err(cx.err(&key, format!("{written:?} is listed twice")));
        }
        servers.push(server);
    }
    let https = https.unwrap_or(false);
    let tls = if https {
        if let Some(name) = &r.upstream_sni {
            check_server_name(name).map_err(|p| cx.err(&k("upstream_sni"), p))?;
        }
        for s in &servers {
            check_server_name(&s.host).map_err(|p| cx.err(&k("upstream_sni"), p))?;
        }
        Some(UpstreamTls {
            server_name: r.upstream_sni.clone(),
            ca: r.upstream_ca.as_deref().map(|p| cx.path(p)),
        })
    } else {
        for (key, set) in [
            ("upstream_ca", r.upstream_ca.is_some()),
            ("upstream_sni", r.upstream_sni.is_some()),
        ] {
            if set {
                return Err(cx.err(&k(key), "only applies to an https:// upstream"));
            }
        }
        None
    };
    let balance = r.balance.unwrap_or(Balance::RoundRobin);
    if balance == Balance::UserHash && r.auth == Some(AuthMode::None) {
        return Err(cx.err(
            &k("balance"),
            "\"user_hash\" needs a user: the route must have auth = \"bearer\"",
        ));
    }
    let health_check = match &r.health_check {
        None => None,
        Some(h) => Some(health_check(cx, i, h)?),
    };
    let resolve_interval = cx.duration_within(
        &k("resolve_interval"),
        &r.resolve_interval,
        Duration::from_secs(30),
        (Duration::from_secs(1), Duration::from_secs(86_400)),
        "between 1s and 1d",
    )?;
    Ok(PoolConfig {
        servers,
        tls,
        balance,
        health_check,
        resolve_interval,
    })
}

/// One server as written: `host:port`, `http://host:port` or `https://host:port` (a trailing `/` is
/// allowed). Returns whether it is https, and the server with its address resolved now.
fn server(written: &str) -> Result<(bool, ServerConfig), String> {
    let (https, authority) = match written.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "{scheme:?} is not a scheme tokengate speaks (http:// or https://)"
            ))
        }
        None => (false, written),
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let addr = resolve_upstream(authority)?;
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    Ok((
        https,
        ServerConfig {
            label: written.to_owned(),
            authority: authority.to_owned(),
            host: host.to_owned(),
            addr,
        },
    ))
}

fn check_server_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!("{name:?} is not a host name or IP address"));
    }
    Ok(())
}

fn health_check(cx: &Ctx, i: usize, h: &FileHealthCheck) -> Result<HealthCheckConfig, ConfigError> {
    let k = |field: &str| format!("routes[{i}].health_check.{field}");
    if let Some(p) = &h.path {
        if !p.starts_with('/') || p.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(cx.err(
                &k("path"),
                format!("{p:?} must start with '/' and hold no spaces or control characters"),
            ));
        }
    }
    let interval = cx.duration_within(
        &k("interval"),
        &h.interval,
        Duration::from_secs(2),
        (Duration::from_millis(50), Duration::from_secs(3600)),
        "between 50ms and 1h",
    )?;
    let timeout = cx.duration_within(
        &k("timeout"),
        &h.timeout,
        Duration::from_secs(1).min(interval),
        (Duration::from_millis(10), Duration::from_secs(3600)),
        "between 10ms and 1h",
    )?;
    let count = |key: &str, v: Option<u32>| match v {
        None => Ok(2),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(_) => Err(cx.err(&k(key), "must be between 1 and 100")),
    };
    Ok(HealthCheckConfig {
        path: h.path.clone(),
        interval,
        timeout,
        unhealthy_after: count("unhealthy_after", h.unhealthy_after)?,
        healthy_after: count("healthy_after", h.healthy_after)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;
    use std::path::Path;

    fn parse(route: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[gateway]\nlisten = \"127.0.0.1:8080\"\n[[routes]]\nname = \"video\"\npath_prefix = \"/video\"\n{route}\n"
        );
        Config::parse(&text, Path::new("/etc/tg/gw.toml"))
    }

    fn err(route: &str) -> String {
        parse(route).unwrap_err().to_string()
    }

    #[test]
    fn one_upstream_is_a_pool_of_one_with_the_defaults() {
        let c = parse("upstream = \"http://127.0.0.1:8700/\"").unwrap();
        let p = &c.routes[0].pool;
        assert_eq!(p.servers.len(), 1);
        assert_eq!(p.servers[0].label, "http://127.0.0.1:8700/");
        assert_eq!(p.servers[0].authority, "127.0.0.1:8700");
        assert_eq!(p.servers[0].addr, "127.0.0.1:8700".parse().unwrap());
        assert_eq!(p.balance, Balance::RoundRobin);
        assert_eq!(p.health_check, None);
        assert_eq!(p.resolve_interval, Duration::from_secs(30));
        assert_eq!(p.tls, None);
    }

    #[test]
    fn a_pool_with_balance_and_health_check() {
        let c = parse(
            "upstreams = [\"127.0.0.1:8700\", \"localhost:8701\"]\nbalance = \"least_requests\"\n\
             resolve_interval = \"5s\"\n[routes.health_check]\npath = \"/healthz\"\ninterval = \"500ms\"\n\
             unhealthy_after = 3",
        )
        .unwrap();
        let p = &c.routes[0].pool;
        assert_eq!(
            p.servers
                .iter()
                .map(|s| s.label.as_str())
                .collect::<Vec<_>>(),
            ["127.0.0.1:8700", "localhost:8701"]
        );
        assert_eq!(p.servers[1].host, "localhost");
        assert_eq!(p.balance, Balance::LeastRequests);
        assert_eq!(p.resolve_interval, Duration::from_secs(5));
        let h = p.health_check.as_ref().unwrap();
        assert_eq!(h.path.as_deref(), Some("/healthz"));
        assert_eq!(h.interval, Duration::from_millis(500));
        assert_eq!(
            h.timeout,
            Duration::from_millis(500),
            "at most the interval"
        );
        assert_eq!((h.unhealthy_after, h.healthy_after), (3, 2));
        let c = parse("upstreams = [\"127.0.0.1:1\"]\n[routes.health_check]").unwrap();
        let h = c.routes[0].pool.health_check.clone().unwrap();
        assert_eq!(h.path, None, "no path: a TCP connect check");
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(2), Duration::from_secs(1))
        );
    }

    #[test]
    fn https_pools_share_one_scheme_and_verify_each_server_s_name() {
        let c =
            parse("upstreams = [\"https://localhost:8443\", \"https://127.0.0.1:8444\"]").unwrap();
        let p = &c.routes[0].pool;
        assert_eq!(p.tls.as_ref().unwrap().server_name, None);
        assert_eq!(p.servers[0].host, "localhost");
        assert_eq!(p.servers[1].host, "127.0.0.1");
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        for (route, key, problem) in [
            ("", "routes[0].upstream", "missing"),
            (
                "upstream = \"127.0.0.1:1\"\nupstreams = [\"127.0.0.1:2\"]",
                "routes[0].upstreams",
                "not both",
            ),
            ("upstreams = []", "routes[0].upstreams", "at least one"),
            (
                &format!(
                    "upstreams = [{}]",
                    (1..=65)
                        .map(|p| format!("\"127.0.0.1:{p}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "routes[0].upstreams",
                "at most 64",
            ),
            (
                "upstreams = [\"127.0.0.1:1\", \"nowhere\"]",
                "routes[0].upstreams[1]",
                "is not host:port",
            ),
            (
                "upstreams = [\"127.0.0.1:1\", \"http://127.0.0.1:1/\"]",
                "routes[0].upstreams[1]",
                "listed twice",
            ),
            (
                "upstreams = [\"127.0.0.1:1\", \"https://127.0.0.1:2\"]",
                "routes[0].upstreams[1]",
                "same scheme",
            ),
            (
                "upstreams = [\"ftp://127.0.0.1:1\"]",
                "routes[0].upstreams[0]",
                "not a scheme",
            ),
            (
                "upstream = \"127.0.0.1:1\"\nbalance = \"fastest\"",
                "routes[0].balance",
                "unknown variant",
            ),
            (
                "upstream = \"127.0.0.1:1\"\nauth = \"none\"\nbalance = \"user_hash\"",
                "routes[0].balance",
                "needs a user",
            ),
            (
                "upstream = \"127.0.0.1:1\"\nresolve_interval = \"10ms\"",
                "routes[0].resolve_interval",
                "between 1s",
            ),
            (
                "upstream = \"127.0.0.1:1\"\n[routes.health_check]\npath = \"healthz\"",
                "routes[0].health_check.path",
                "must start with '/'",
            ),
            (
                "upstream = \"127.0.0.1:1\"\n[routes.health_check]\ninterval = \"1ms\"",
                "routes[0].health_check.interval",
                "between 50ms",
            ),
            (
                "upstream = \"127.0.0.1:1\"\n[routes.health_check]\nhealthy_after = 0",
                "routes[0].health_check.healthy_after",
                "between 1 and 100",
            ),
            (
                "upstream = \"127.0.0.1:1\"\n[routes.health_check]\ncolour = 1",
                "routes[0]",
                "colour",
            ),
        ] {
            let e = err(route);
            assert!(
                e.starts_with(&format!("/etc/tg/gw.toml: {key}")) && e.contains(problem),
                "{route:?}: {e}"
            );
        }
    }
}
