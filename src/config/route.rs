//! One `[[routes]]` entry checked into a [`RouteConfig`]: name, prefix, auth and header rules, limits and
//! timeouts (its servers: [`super::pool`]). Keys in errors are `routes[N].key`.

use super::context::Ctx;
use super::file::FileRoute;
use super::model::*;
use super::values::{check_prefix, check_scope, header_name, normalize_prefix, Rate};
use std::time::Duration;

/// Checks route number `i` against the gateway settings and the routes before it, in this order (the first
/// problem found is the one reported): name and prefix, servers, who may use it, what is forwarded, limits,
/// WebSocket, timeouts.
pub(super) fn route(
    cx: &Ctx,
    i: usize,
    r: FileRoute,
    gateway: &GatewayConfig,
    before: &[RouteConfig],
) -> Result<RouteConfig, ConfigError> {
    let k = |field: &str| key(i, field);
    let path_prefix = name_and_prefix(cx, i, &r, before)?;
    let pool = super::pool::pool(cx, i, &r)?;
    let auth = r.auth.unwrap_or(AuthMode::Bearer);
    let required_scope = required_scope(cx, i, &r, auth)?;
    let required_group = required_name(cx, i, "required_group", &r.required_group, auth)?;
    let required_license = required_name(cx, i, "required_license", &r.required_license, auth)?;
    let strip_request_headers = strip_request_headers(cx, i, &r)?;
    let request_timeout = body_and_request_time(cx, i, &r)?;
    check_query_token_param(cx, i, &r, auth)?;
    let sign_secret = sign_secret(cx, i, &r, auth)?;
    let user_id_header = match &r.user_id_header {
        Some(h) => header_name(h).map_err(|p| cx.err(&k("user_id_header"), p))?,
        None => gateway.user_id_header.clone(),
    };
    let (rate_limit, user_rate_limit) = limits(cx, i, &r, auth)?;
    let (websocket, websocket_idle_timeout) = websocket(cx, i, &r)?;
    Ok(RouteConfig {
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
        name: r.name,
        path_prefix,
        pool,
        auth,
        required_scope,
        required_group,
        required_license,
        strip_request_headers,
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

/// The key `routes[i].field` in errors.
fn key(i: usize, field: &str) -> String {
    format!("routes[{i}].{field}")
}

/// The route's name (unique; letters, digits, '-', '_') and its prefix (unique), normalised.
fn name_and_prefix(
    cx: &Ctx,
    i: usize,
    r: &FileRoute,
    before: &[RouteConfig],
) -> Result<String, ConfigError> {
    let k = |field: &str| key(i, field);
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
    Ok(prefix)
}

/// `required_scope`: a valid scope, and only on a route with auth.
fn required_scope(
    cx: &Ctx,
    i: usize,
    r: &FileRoute,
    auth: AuthMode,
) -> Result<Option<String>, ConfigError> {
    match &r.required_scope {
        Some(s) if auth == AuthMode::None => Err(cx.err(
            &key(i, "required_scope"),
            format!("{s:?} cannot be required on a route with auth = \"none\""),
        )),
        Some(s) => Ok(Some(
            check_scope(s)
                .map(|_| s.clone())
                .map_err(|p| cx.err(&key(i, "required_scope"), p))?,
        )),
        None => Ok(None),
    }
}

/// `required_group` / `required_license`: a valid group or license name (lower case, `a-z0-9._-`), and
/// only on a route with auth.
fn required_name(
    cx: &Ctx,
    i: usize,
    field: &str,
    value: &Option<String>,
    auth: AuthMode,
) -> Result<Option<String>, ConfigError> {
    let kind = if field == "required_group" {
        "group"
    } else {
        "license"
    };
    match value {
        Some(s) if auth == AuthMode::None => Err(cx.err(
            &key(i, field),
            format!("{s:?} cannot be required on a route with auth = \"none\""),
        )),
        Some(s) => {
            super::values::check_access_name(kind, s).map_err(|p| cx.err(&key(i, field), p))?;
            Ok(Some(s.clone()))
        }
        None => Ok(None),
    }
}

/// `strip_request_headers`: header names.
fn strip_request_headers(
    cx: &Ctx,
    i: usize,
    r: &FileRoute,
) -> Result<Vec<http::HeaderName>, ConfigError> {
    let mut strip = Vec::new();
    for (j, h) in r.strip_request_headers.iter().enumerate() {
        strip.push(
            header_name(h)
                .map_err(|p| cx.err(&format!("routes[{i}].strip_request_headers[{j}]"), p))?,
        );
    }
    Ok(strip)
}

/// `max_body_bytes` (at least 1) and `request_timeout` (at least 10ms), the latter returned.
fn body_and_request_time(
    cx: &Ctx,
    i: usize,
    r: &FileRoute,
) -> Result<Option<Duration>, ConfigError> {
    if r.max_body_bytes == Some(0) {
        return Err(cx.err(
            &key(i, "max_body_bytes"),
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    Ok(match &r.request_timeout {
        Some(_) => Some(cx.duration_within(
            &key(i, "request_timeout"),
            &r.request_timeout,
            Duration::ZERO,
            (Duration::from_millis(10), Duration::MAX),
            "at least 10ms",
        )?),
        None => None,
    })
}

/// `query_token_param`: only on a route with auth, and a plain parameter name.
fn check_query_token_param(
    cx: &Ctx,
    i: usize,
    r: &FileRoute,
    auth: AuthMode,
) -> Result<(), ConfigError> {
    let Some(q) = &r.query_token_param else {
        return Ok(());
    };
    if auth == AuthMode::None {
        return Err(cx.err(
            &key(i, "query_token_param"),
            "makes no sense on a route with auth = \"none\"",
        ));
    }
    if q.is_empty()
        || !q
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(cx.err(
            &key(i, "query_token_param"),
            format!("{q:?} must be letters, digits, '_' or '-'"),
        ));
    }
    Ok(())
}

/// `sign_secret`: only on a route with auth (there is an identity to sign), at least 32 characters.
fn sign_secret(
    cx: &Ctx,
    i: usize,
    r: &FileRoute,
    auth: AuthMode,
) -> Result<Option<Vec<u8>>, ConfigError> {
    match &r.sign_secret {
        Some(_) if auth == AuthMode::None => Err(cx.err(
            &key(i, "sign_secret"),
            "needs auth = \"bearer\": there is no identity to sign",
        )),
        Some(s) if s.len() < 32 => Err(cx.err(
            &key(i, "sign_secret"),
            "must be at least 32 characters (the value is not shown)",
        )),
        Some(s) => Ok(Some(s.clone().into_bytes())),
        None => Ok(None),
    }
}

/// A route's `rate_limit` with its burst.
type RateLimit = Option<(Rate, u64)>;

/// `rate_limit` with `rate_burst`, and `user_rate_limit`: limits per token or user need auth.
fn limits(
    cx: &Ctx,
    i: usize,
    r: &FileRoute,
    auth: AuthMode,
) -> Result<(RateLimit, Option<Rate>), ConfigError> {
    let rate = |field: &str, v: &Option<String>| -> Result<Option<Rate>, ConfigError> {
        v.as_deref()
            .map(|s| Rate::parse(s).map_err(|p| cx.err(&key(i, field), p)))
            .transpose()
    };
    let limits_need_tokens = r.rate_limit.is_some() || r.user_rate_limit.is_some();
    if limits_need_tokens && auth == AuthMode::None {
        return Err(cx.err(
            &key(i, "rate_limit"),
            "limits per token or user need auth = \"bearer\"",
        ));
    }
    let rate_limit = match rate("rate_limit", &r.rate_limit)? {
        Some(rt) => {
            let burst = r.rate_burst.unwrap_or_else(|| rt.one_second());
            if burst == 0 || burst > 1_000_000_000 {
                return Err(cx.err(&key(i, "rate_burst"), "must be between 1 and 1000000000"));
            }
            Some((rt, burst))
        }
        None if r.rate_burst.is_some() => {
            return Err(cx.err(&key(i, "rate_burst"), "needs rate_limit on the same route"))
        }
        None => None,
    };
    let user_rate_limit = rate("user_rate_limit", &r.user_rate_limit)?;
    Ok((rate_limit, user_rate_limit))
}

/// `websocket` and its `websocket_idle_timeout` (100ms to 7d, default 5 minutes).
fn websocket(cx: &Ctx, i: usize, r: &FileRoute) -> Result<(bool, Duration), ConfigError> {
    let websocket = r.websocket.unwrap_or(false);
    if r.websocket_idle_timeout.is_some() && !websocket {
        return Err(cx.err(
            &key(i, "websocket_idle_timeout"),
            "only applies with websocket = true",
        ));
    }
    let idle = cx.duration_within(
        &key(i, "websocket_idle_timeout"),
        &r.websocket_idle_timeout,
        Duration::from_secs(300),
        (Duration::from_millis(100), Duration::from_secs(7 * 86_400)),
        "between 100ms and 7d",
    )?;
    Ok((websocket, idle))
}
