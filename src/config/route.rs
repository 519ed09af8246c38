//! One `[[routes]]` entry checked into a [`RouteConfig`]: name, prefix, auth and header rules, limits and
//! timeouts (its servers: [`super::pool`]). Keys in errors are `routes[N].key`.

use super::context::Ctx;
use super::file::FileRoute;
use super::model::*;
use super::values::{check_prefix, check_scope, header_name, normalize_prefix, Rate};
use std::time::Duration;

/// Checks route number `i` against the gateway settings and the routes before it.
pub(super) fn route(
    cx: &Ctx,
    i: usize,
    r: FileRoute,
    gateway: &GatewayConfig,
    before: &[RouteConfig],
) -> Result<RouteConfig, ConfigError> {
    let k = |field: &str| format!("routes[{i}].{field}");
    if r.name.is_empty()
        || !r
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(cx.err(
            &k("name"),
            format!("{:?} must be non-empty letters, digits, '-' or '_'", r.name),
        ));
    }
    if let Some(other) = before.iter().position(|o| o.name == r.name) {
        return Err(cx.err(
            &k("name"),
            format!("{:?} is already used by routes[{other}]", r.name),
        ));
    }
    check_prefix(&r.path_prefix).map_err(|p| cx.err(&k("path_prefix"), p))?;
    let prefix = normalize_prefix(&r.path_prefix);
    if let Some(other) = before.iter().position(|o| o.path_prefix == prefix) {
        return Err(cx.err(
            &k("path_prefix"),
            format!("{:?} is already used by routes[{other}]", r.path_prefix),
        ));
    }
    let pool = super::pool::pool(cx, i, &r)?;
    let auth = r.auth.unwrap_or(AuthMode::Bearer);
    let required_scope = match r.required_scope {
        Some(s) if auth == AuthMode::None => {
            return Err(cx.err(
                &k("required_scope"),
                format!("{s:?} cannot be required on a route with auth = \"none\""),
            ))
        }
        Some(s) => Some(
            check_scope(&s)
                .map(|_| s)
                .map_err(|p| cx.err(&k("required_scope"), p))?,
        ),
        None => None,
    };
    let mut strip = Vec::new();
    for (j, h) in r.strip_request_headers.iter().enumerate() {
        strip.push(
            header_name(h)
                .map_err(|p| cx.err(&format!("routes[{i}].strip_request_headers[{j}]"), p))?,
        );
    }
    if r.max_body_bytes == Some(0) {
        return Err(cx.err(
            &k("max_body_bytes"),
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    let request_timeout = match &r.request_timeout {
        Some(_) => Some(cx.duration_within(
            &k("request_timeout"),
            &r.request_timeout,
            Duration::ZERO,
            (Duration::from_millis(10), Duration::MAX),
            "at least 10ms",
        )?),
        None => None,
    };
    if let Some(q) = &r.query_token_param {
        if auth == AuthMode::None {
            return Err(cx.err(
                &k("query_token_param"),
                "makes no sense on a route with auth = \"none\"",
            ));
        }
        if q.is_empty()
            || !q
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(cx.err(
                &k("query_token_param"),
                format!("{q:?} must be letters, digits, '_' or '-'"),
            ));
        }
    }
    let sign_secret = match r.sign_secret {
        Some(_) if auth == AuthMode::None => {
            return Err(cx.err(
                &k("sign_secret"),
                "needs auth = \"bearer\": there is no identity to sign",
            ))
        }
        Some(s) if s.len() < 32 => {
            return Err(cx.err(
                &k("sign_secret"),
                "must be at least 32 characters (the value is not shown)",
            ))
        }
        Some(s) => Some(s.into_bytes()),
        None => None,
    };
    let user_id_header = match r.user_id_header {
        Some(h) => header_name(&h).map_err(|p| cx.err(&k("user_id_header"), p))?,
        None => gateway.user_id_header.clone(),
    };
    let rate = |key: &str, v: &Option<String>| -> Result<Option<Rate>, ConfigError> {
        v.as_deref()
            .map(|s| Rate::parse(s).map_err(|p| cx.err(&k(key), p)))
            .transpose()
    };
    let limits_need_tokens = r.rate_limit.is_some() || r.user_rate_limit.is_some();
    if limits_need_tokens && auth == AuthMode::None {
        return Err(cx.err(
            &k("rate_limit"),
            "limits per token or user need auth = \"bearer\"",
        ));
    }
    let rate_limit = match rate("rate_limit", &r.rate_limit)? {
        Some(rt) => {
            let burst = r.rate_burst.unwrap_or_else(|| rt.one_second());
            if burst == 0 || burst > 1_000_000_000 {
                return Err(cx.err(&k("rate_burst"), "must be between 1 and 1000000000"));
            }
            Some((rt, burst))
        }
        None if r.rate_burst.is_some() => {
            return Err(cx.err(&k("rate_burst"), "needs rate_limit on the same route"))
        }
        None => None,
    };
    let user_rate_limit = rate("user_rate_limit", &r.user_rate_limit)?;
    let websocket = r.websocket.unwrap_or(false);
    if r.websocket_idle_timeout.is_some() && !websocket {
        return Err(cx.err(
            &k("websocket_idle_timeout"),
            "only applies with websocket = true",
        ));
    }
    let websocket_idle_timeout = cx.duration_within(
        &k("websocket_idle_timeout"),
        &r.websocket_idle_timeout,
        Duration::from_secs(300),
        (Duration::from_millis(100), Duration::from_secs(7 * 86_400)),
        "between 100ms and 7d",
    )?;
    Ok(RouteConfig {
        name: r.name,
        path_prefix: prefix,
        pool,
        connect_timeout: cx.duration(
            &k("connect_timeout"),
            &r.connect_timeout,
            Duration::from_secs(2),
        )?,
        read_timeout: cx.duration(&k("read_timeout"), &r.read_timeout, Duration::from_secs(60))?,
        write_timeout: cx.duration(
            &k("write_timeout"),
            &r.write_timeout,
            Duration::from_secs(60),
        )?,
        idle_timeout: cx.duration(&k("idle_timeout"), &r.idle_timeout, Duration::from_secs(60))?,
        auth,
        required_scope,
        strip_request_headers: strip,
        user_id_header,
        max_body_bytes: r.max_body_bytes,
        request_timeout,
        query_token_param: r.query_token_param,
        sign_secret,
        tls_only: r.tls_only.unwrap_or(false),
        rate_limit,
        user_rate_limit,
        rate_limit_headers: r.rate_limit_headers.unwrap_or(false),
        forward_scopes: r.forward_scopes.unwrap_or(false),
        websocket,
        websocket_idle_timeout,
    })
}
