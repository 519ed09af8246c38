//! The route table: which upstream (and which auth and header rules) a request path belongs to.
//!
//! Paths reach the table already checked ([`super::paths::check_path`]), so the path that matched is byte
//! for byte the path that is forwarded. Matching is the longest `path_prefix` on a segment boundary:
//! `/iot` matches `/iot`, `/iot/`, `/iot/a` and `/iot;p` (a path parameter, which servers such as Tomcat
//! strip), never `/iotx`.

use super::limits::{Gcra, Limiters, RouteLimits};
use crate::config::{AuthMode, Config, GatewayConfig, Roles, RouteConfig};
use http::HeaderName;
use std::sync::Arc;

/// One route's policy: who may use it and how its requests are rewritten. The bytes-moving side (upstream
/// pool, metric collectors) lives next to it in the transport's table, at the same [`Route::index`].
pub struct Route {
    /// Position in the configuration's `[[routes]]` list (and in the transport's per-route table).
    pub index: usize,
    pub name: Arc<str>,
    pub path_prefix: String,
    pub auth: AuthMode,
    pub required_scope: Option<String>,
    /// `required_group`, `required_license`: the group the token (or its user) must be in, the license
    /// it must hold valid.
    pub required_group: Option<Box<str>>,
    pub required_license: Option<Box<str>>,
    /// More client headers to remove from every forwarded request (configured).
    pub strip_request_headers: Vec<HeaderName>,
    /// The header carrying the token owner's user id.
    pub user_id_header: HeaderName,
    /// The header carrying the token id, if enabled.
    pub token_id_header: Option<HeaderName>,
    /// Every header name any route injects (identity, signature): client copies of all of them are
    /// removed on every route, compared ignoring case with `_` read as `-`.
    pub identity_headers: Vec<HeaderName>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: Option<u64>,
    /// Time the client has to send the whole request body (408 beyond).
    pub request_timeout: Option<std::time::Duration>,
    /// Legacy firmware: the query parameter that may carry the token.
    pub query_token_param: Option<String>,
    /// HMAC key for the signature header, if this route signs.
    pub sign_secret: Option<Arc<[u8]>>,
    /// Refuse requests that did not arrive over TLS (403).
    pub tls_only: bool,
    /// `rate_limit`, `rate_burst`, `user_rate_limit`, `rate_limit_headers`.
    pub limits: RouteLimits,
    /// The roles that grant `required_scope` (from `[roles]`, resolved when the table is built).
    pub scope_roles: Box<[Box<str>]>,
    /// `forward_scopes`: tell the upstream the token's scopes and roles.
    pub forward_scopes: bool,
    /// `websocket`: relay upgrades; and how long a silent tunnel stays open.
    pub websocket: bool,
    pub websocket_idle_timeout: std::time::Duration,
    /// The `[roles]` the table was built with (for the scopes forwarded).
    pub roles: Arc<Roles>,
}

impl Route {
    fn new(index: usize, rc: &RouteConfig, gateway: &GatewayConfig, roles: &Arc<Roles>) -> Route {
        Route {
            index,
            name: rc.name.as_str().into(),
            path_prefix: rc.path_prefix.clone(),
            auth: rc.auth,
            required_scope: rc.required_scope.clone(),
            required_group: rc.required_group.as_deref().map(Into::into),
            required_license: rc.required_license.as_deref().map(Into::into),
            strip_request_headers: rc.strip_request_headers.clone(),
            user_id_header: rc.user_id_header.clone(),
            token_id_header: gateway.token_id_header.clone(),
            identity_headers: Vec::new(),
            max_body_bytes: rc.max_body_bytes,
            request_timeout: rc.request_timeout,
            query_token_param: rc.query_token_param.clone(),
            sign_secret: rc.sign_secret.as_deref().map(Arc::from),
            tls_only: rc.tls_only,
            limits: RouteLimits {
                token_rate: rc.rate_limit.map(|(r, burst)| Gcra::new(r, burst)),
                user_rate: rc.user_rate_limit.map(|r| Gcra::new(r, r.one_second())),
                headers: rc.rate_limit_headers,
            },
            scope_roles: rc
                .required_scope
                .as_deref()
                .map(|s| granting(roles, s))
                .unwrap_or_default(),
            forward_scopes: rc.forward_scopes,
            websocket: rc.websocket,
            websocket_idle_timeout: rc.websocket_idle_timeout,
            roles: roles.clone(),
        }
    }
}

/// Everything a configuration reload swaps at once: all routes (longest prefix first) and the proxies
/// whose forwarding headers are believed.
#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Peers whose `X-Forwarded-*` headers are kept.
    pub trusted_proxies: Vec<crate::config::IpNet>,
    /// The routes' per-token and per-user buckets (a reload starts them afresh: route indices may
    /// mean other routes then).
    pub limiters: Limiters,
    /// `[roles]`: role name → scopes.
    pub roles: Arc<Roles>,
}

/// The roles (of `roles`) that grant `scope`.
pub fn granting(roles: &Roles, scope: &str) -> Box<[Box<str>]> {
    roles
        .iter()
        .filter(|(_, scopes)| scopes.iter().any(|s| s == scope))
        .map(|(name, _)| name.as_str().into())
        .collect()
}

/// The fields `forward_scopes` adds; client copies are removed on every route.
pub const SCOPES_HEADER: &str = "x-token-scopes";
pub const ROLES_HEADER: &str = "x-token-roles";
pub const GROUPS_HEADER: &str = "x-token-groups";
pub const LICENSES_HEADER: &str = "x-token-licenses";

impl RouteTable {
    /// Builds the table from a validated configuration.
    pub fn new(config: &Config) -> RouteTable {
        let roles = Arc::new(config.roles.clone());
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, rc)| Route::new(i, rc, &config.gateway, &roles))
            .collect();
        // Client copies of every identity header any route injects are stripped on every route.
        let mut injected: Vec<HeaderName> = vec![config.gateway.user_id_header.clone()];
        injected.extend(config.gateway.token_id_header.iter().cloned());
        injected.push(HeaderName::from_static(super::signing::SIGNATURE_HEADER));
        injected.push(HeaderName::from_static(SCOPES_HEADER));
        injected.push(HeaderName::from_static(ROLES_HEADER));
        injected.push(HeaderName::from_static(GROUPS_HEADER));
        injected.push(HeaderName::from_static(LICENSES_HEADER));
        for r in &routes {
            if !injected.contains(&r.user_id_header) {
                injected.push(r.user_id_header.clone());
            }
        }
        for r in &mut routes {
            r.identity_headers = injected.clone();
        }
        let mut routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        RouteTable {
            routes,
            trusted_proxies: config.gateway.trusted_proxies.clone(),
            limiters: Limiters::default(),
            roles,
        }
    }

    /// The route for an already checked path: the longest prefix on a segment boundary.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| prefix_matches(&r.path_prefix, path))
    }

    /// All routes, longest prefix first.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Whether `peer` is one of the trusted proxies.
    pub fn trusts(&self, peer: Option<std::net::IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted_proxies.iter().any(|n| n.contains(ip)))
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        // `;` too: `/iot;x/a` is `/iot/a` to servers that strip path parameters, so it must not escape
        // the route (and its auth) by falling through to a shorter prefix.
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with(';'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table() -> RouteTable {
        let text = r#"
[gateway]
listen = "127.0.0.1:8080"
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "127.0.0.1:1"
[[routes]]
name = "api2"
path_prefix = "/api/v2"
upstream = "127.0.0.1:2"
[[routes]]
name = "iot"
path_prefix = "/iot"
upstream = "127.0.0.1:3"
"#;
        RouteTable::new(&Config::parse(text, Path::new("t.toml")).unwrap())
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let t = table();
        let name = |p: &str| t.find(p).map(|r| &*r.name);
        assert_eq!(name("/iot"), Some("iot"));
        assert_eq!(name("/iot/"), Some("iot"));
        assert_eq!(name("/iot/hive/7"), Some("iot"));
        assert_eq!(name("/iotx"), None);
        assert_eq!(name("/api/v2/x"), Some("api2"));
        assert_eq!(name("/api/v2"), Some("api2"));
        assert_eq!(name("/api/v20"), Some("api"));
        assert_eq!(name("/"), None);
        assert_eq!(name("/iot;jsessionid=1/x"), Some("iot"));
    }
}
