//! The route table: which upstream (and which auth and header rules) a request path belongs to.
//!
//! Paths are checked, not normalised: a path with a `.` or `..` segment, an empty segment (`//`), a
//! backslash, or a percent-encoded `.`, `/` or `\` is rejected with 400 before matching. The path that
//! matched is therefore byte for byte the path that is forwarded, and no spelling can reach one route's
//! upstream under another route's prefix. Matching is the longest `path_prefix` on a segment boundary:
//! `/iot` matches `/iot`, `/iot/` and `/iot/a`, never `/iotx`.

use crate::config::{AuthMode, Config, GatewayConfig, RouteConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::upstream::Upstream;
use http::HeaderName;
use std::sync::Arc;

/// One route, ready for the request path: the upstream (address resolved, idle pool) is built once, here.
pub struct Route {
    pub name: Arc<str>,
    pub path_prefix: String,
    pub auth: AuthMode,
    pub required_scope: Option<String>,
    /// Headers removed from every forwarded request: the configured ones plus the injected identity headers.
    pub strip_request_headers: Vec<HeaderName>,
    /// The header carrying the token owner's user id.
    pub user_id_header: HeaderName,
    /// The header carrying the token id, if enabled.
    pub token_id_header: Option<HeaderName>,
    /// Identity header names in their `_`-for-`-`, lower-case form, for stripping client copies.
    pub identity_headers: Vec<HeaderName>,
    /// The upstream's address, timeouts and idle connections.
    pub upstream: Upstream,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: Option<u64>,
    /// Time the client has to send the whole request body (408 beyond).
    pub request_timeout: Option<std::time::Duration>,
    /// Legacy firmware: the query parameter that may carry the token.
    pub query_token_param: Option<String>,
    /// HMAC key for the signature header, if this route signs.
    pub sign_secret: Option<Arc<[u8]>>,
    /// This route's metric collectors.
    pub metrics: RouteMetrics,
}

impl Route {
    fn new(rc: &RouteConfig, gateway: &GatewayConfig, metrics: &Metrics) -> Route {
        let token_id_header = &gateway.token_id_header;
        let upstream = Upstream::new(
            rc.upstream_addr,
            rc.connect_timeout,
            rc.read_timeout,
            rc.write_timeout,
            rc.idle_timeout,
        );
        // Client copies of every identity header any route injects are stripped, not only this route's.
        let mut identity_headers = vec![rc.user_id_header.clone()];
        if gateway.user_id_header != rc.user_id_header {
            identity_headers.push(gateway.user_id_header.clone());
        }
        identity_headers.extend(token_id_header.iter().cloned());
        identity_headers.push(HeaderName::from_static(crate::signing::SIGNATURE_HEADER));
        Route {
            name: rc.name.as_str().into(),
            path_prefix: rc.path_prefix.clone(),
            auth: rc.auth,
            required_scope: rc.required_scope.clone(),
            strip_request_headers: rc.strip_request_headers.clone(),
            user_id_header: rc.user_id_header.clone(),
            token_id_header: token_id_header.clone(),
            identity_headers,
            upstream,
            max_body_bytes: rc.max_body_bytes,
            request_timeout: rc.request_timeout,
            query_token_param: rc.query_token_param.clone(),
            sign_secret: rc.sign_secret.as_deref().map(Arc::from),
            metrics: metrics.route(&rc.name),
        }
    }
}

/// Why a path was refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path is not an origin-form path starting with `/`.
    NotAbsolute,
    /// A `.` or `..` segment, possibly percent-encoded.
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A backslash, or a percent-encoded `/` or `\`.
    EncodedSeparator,
}

impl PathError {
    pub fn describe(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with '/'",
            PathError::DotSegment => "the request path contains a '.' or '..' segment",
            PathError::EmptySegment => "the request path contains an empty segment ('//')",
            PathError::EncodedSeparator => {
                "the request path contains a backslash or an encoded '/', '\\' or '.'"
            }
        }
    }
}

/// Checks a request path (without query) for the spellings that could cross a route boundary.
pub fn check_path(path: &str) -> Result<(), PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\\' => return Err(PathError::EncodedSeparator),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .map(|h| [h[0].to_ascii_lowercase(), h[1].to_ascii_lowercase()]);
                match hex {
                    Some([b'2', b'e']) => return Err(PathError::DotSegment),
                    Some([b'2', b'f']) | Some([b'5', b'c']) => {
                        return Err(PathError::EncodedSeparator)
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    // Segments between slashes; the first is the empty string before the leading '/'.
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        match seg {
            "." | ".." => return Err(PathError::DotSegment),
            // A trailing slash ("/iot/") gives one empty last segment, which is fine.
            "" if segments.peek().is_some() => return Err(PathError::EmptySegment),
            _ => {}
        }
    }
    Ok(())
}

/// Everything a configuration reload swaps at once: all routes (longest prefix first) and the proxies
/// whose forwarding headers are believed.
#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Peers whose `X-Forwarded-*` headers are kept.
    pub trusted_proxies: Vec<crate::config::IpNet>,
}

impl RouteTable {
    /// Builds the table from a validated configuration.
    pub fn new(config: &Config, metrics: &Metrics) -> RouteTable {
        let mut routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .map(|rc| Arc::new(Route::new(rc, &config.gateway, metrics)))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        RouteTable {
            routes,
            trusted_proxies: config.gateway.trusted_proxies.clone(),
        }
    }

    /// The route for an already checked path: the longest prefix on a segment boundary.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| prefix_matches(&r.path_prefix, path))
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
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
        RouteTable::new(
            &Config::parse(text, Path::new("t.toml")).unwrap(),
            &Metrics::new(),
        )
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
    }

    #[test]
    fn path_tricks_are_refused() {
        for p in [
            "/iot/../video",
            "/iot/./x",
            "/iot/%2e%2e/video",
            "/iot/%2E./video",
            "/iot%2fvideo",
            "/iot%2Fx",
            "/iot//x",
            "//iot",
            "/iot\\x",
            "/iot/%5cx",
            "/..",
            "/iot/..",
        ] {
            assert!(check_path(p).is_err(), "{p}");
        }
        assert_eq!(check_path("iot"), Err(PathError::NotAbsolute));
        for p in [
            "/",
            "/iot",
            "/iot/",
            "/iot/a.b",
            "/iot/..a",
            "/iot/%20x",
            "/iot/a%25",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }
}
