//! Who is calling the admin API, and what they may grant.
//!
//! - [`Caller::Admin`]: a token with the `admin` scope (or a role granting it) — every user's tokens.
//! - [`Caller::SelfToken`]: a token with `tokens:self` — its own user's tokens only.
//! - [`Caller::Account`]: the platform's account page, named by `[admin] trusted_user_header` on a
//!   request from `trusted_proxies` — that user's tokens only, with no token at all. From any other
//!   address the header counts for nothing.
//!
//! What each caller may change is the admin rule's ([`super::rule::permit`]): after a self-service
//! caller's write, nothing exists that it could not have created itself.

use crate::config::{AdminConfig, Roles};
use crate::gateway::auth::{self, Denial};
use crate::gateway::routes::granting;
use crate::tokens::fields::{check_user, ADMIN_SCOPE, SELF_SCOPE};
use crate::tokens::index::{Entry, Index};
use http::HeaderMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The caller of an admin API request.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin { token_id: i64 },
    SelfToken { entry: Arc<Entry> },
    Account { user: String },
}

impl Caller {
    /// Who the token events name: `admin:<id>`, `self:<id>`, `account:<user>`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin { token_id } => format!("admin:{token_id}"),
            Caller::SelfToken { entry } => format!("self:{}", entry.token_id),
            Caller::Account { user } => format!("account:{user}"),
        }
    }

    /// The one user whose tokens this caller manages (`None`: an admin, every user).
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::Admin { .. } => None,
            Caller::SelfToken { entry } => Some(entry.user()),
            Caller::Account { user } => Some(user),
        }
    }

    /// `admin`, `self` or `account`.
    pub fn mode(&self) -> &'static str {
        match self {
            Caller::Admin { .. } => "admin",
            Caller::SelfToken { .. } => "self",
            Caller::Account { .. } => "account",
        }
    }

    /// Whether the caller may see a token of `owner` (what it may change is [`super::rule::permit`]'s).
    pub fn may_manage(&self, owner: &str) -> bool {
        self.user().is_none_or(|u| u == owner)
    }

    /// The id of the caller's own token, for a self token.
    pub fn own_token_id(&self) -> Option<i64> {
        match self {
            Caller::SelfToken { entry } => Some(entry.token_id),
            _ => None,
        }
    }

    /// The user a new token is for: `requested`, or the caller's own when omitted. A self-service
    /// caller naming someone else is refused.
    pub fn owner_of_new(&self, requested: Option<&str>) -> Result<String, GrantError> {
        match (self.user(), requested) {
            (None, Some(u)) => Ok(u.to_owned()),
            (None, None) => Err(GrantError::Bad("user is required".into())),
            (Some(own), None) => Ok(own.to_owned()),
            (Some(own), Some(u)) if u == own => Ok(own.to_owned()),
            (Some(_), Some(_)) => Err(GrantError::Forbidden(
                "you can create tokens for your own user only".into(),
            )),
        }
    }
}

/// A refused create or change: 400 (bad input), 403 (`forbidden`: beyond what the caller holds) or,
/// for another user's token, 404 exactly as for an id that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    Bad(String),
    Forbidden(String),
    Hidden { id: i64 },
}

/// Identifies the caller of a request with `headers` from `peer`: the trusted account header from a
/// trusted proxy, else a bearer token holding `admin` or `tokens:self` (resolved through `roles`).
pub fn identify(
    index: &Index,
    config: &AdminConfig,
    roles: &Roles,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Caller, Denial> {
    if let Some(name) = &config.trusted_user_header {
        let trusted = peer.is_some_and(|ip| config.trusted_proxies.iter().any(|n| n.contains(ip)));
        if trusted {
            let mut values = headers.get_all(name).iter();
            if let (Some(v), None) = (values.next(), values.next()) {
                let user = v
                    .to_str()
                    .map_err(|_| Denial::Malformed("the account header is not a user id"))?;
                check_user(user)
                    .map_err(|_| Denial::Malformed("the account header is not a user id"))?;
                return Ok(Caller::Account {
                    user: user.to_owned(),
                });
            }
        }
    }
    let now = crate::clock::now();
    let token = auth::bearer_token(headers)?;
    let entry = auth::authorize(index, token, auth::Requirements::NONE, None, now)?;
    let caller = if entry.allows(ADMIN_SCOPE, &granting(roles, ADMIN_SCOPE)) {
        Caller::Admin {
            token_id: entry.token_id,
        }
    } else if entry.allows(SELF_SCOPE, &granting(roles, SELF_SCOPE)) {
        Caller::SelfToken {
            entry: entry.clone(),
        }
    } else {
        return Err(Denial::InsufficientScope(ADMIN_SCOPE.into()));
    };
    entry.record_use(now);
    Ok(caller)
}

/// Why an account-mode write was refused before it was read: 403 for a cross-site request, 415 for a
/// write that does not say it is JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrossSite {
    Forbidden(String),
    NotJson,
}

/// Guards a write in account mode, which is authenticated by the platform's login (a cookie at its
/// proxy) that a browser also attaches to requests another site makes it send. Refused:
/// - `Sec-Fetch-Site` other than `same-origin` (or `none`: typed by the user);
/// - an `Origin` other than the request's own: its host and port must be the `Host` the browser sent (or
///   the `X-Forwarded-Host` the trusted proxy set); `Origin: null` never is;
/// - any write without `Content-Type: application/json`, bodiless ones included: a cross-site form can
///   only send it after a CORS preflight, which this API never grants.
///
/// Token callers are not checked: a bearer token is not ambient.
pub fn check_account_write(headers: &HeaderMap) -> Result<(), CrossSite> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    if let Some(site) = text("sec-fetch-site") {
        if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
            return Err(CrossSite::Forbidden(format!(
                "a {site} request cannot change tokens in account mode"
            )));
        }
    }
    if let Some(origin) = text("origin") {
        let own = [text("host"), text("x-forwarded-host")];
        let same = origin_authority(origin).is_some_and(|(scheme, authority)| {
            own.iter().flatten().any(|h| {
                let h = h.split(',').next().unwrap_or("").trim();
                same_authority(scheme, authority, h)
            })
        });
        if !same {
            return Err(CrossSite::Forbidden(
                "the request's Origin is not this page's: cross-site writes are refused in account mode"
                    .into(),
            ));
        }
    }
    let json = text("content-type").is_some_and(|ct| {
        let media = ct.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("application/json")
    });
    if !json {
        return Err(CrossSite::NotJson);
    }
    Ok(())
}

/// `https://host:port` → (`https`, `host:port`); `None` for `null` and anything that is not an origin.
fn origin_authority(origin: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme_ok = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    (scheme_ok && !rest.is_empty() && !rest.contains(['/', '?', '#', '@', ' ']))
        .then_some((scheme, rest))
}

/// Whether an origin's authority names the same host and port as a `Host` value (default ports
/// omitted or not, host names in any case).
fn same_authority(scheme: &str, origin: &str, host: &str) -> bool {
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    let strip = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        a.strip_suffix(default).map(str::to_owned).unwrap_or(a)
    };
    !host.is_empty() && strip(origin) == strip(host)
}

/// Checks an admin-only endpoint's caller.
pub fn require_admin(caller: &Caller) -> Result<(), Denial> {
    match caller {
        Caller::Admin { .. } => Ok(()),
        _ => Err(Denial::InsufficientScope(ADMIN_SCOPE.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::format::Token;
    use crate::tokens::store::IndexRow;

    fn entry(scopes: &[&str], expires_at: Option<i64>) -> Arc<Entry> {
        let index = Index::new();
        let t = Token::generate();
        index.apply(&IndexRow {
            id: 7,
            user: "alice".into(),
            digest: t.digest(),
            prev_digest: None,
            prev_valid_until: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at,
            revoked: false,
            rev: 1,
            bound_cert: None,
            rate_limit: None,
            quota: None,
            quota_used: 0,
            quota_period: None,
            leaked: false,
            access: Default::default(),
        });
        index.get(&t.digest()).unwrap().entry
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn account_writes_must_be_same_origin_json() {
        let json = ("content-type", "application/json");
        for ok in [
            vec![json],
            vec![("content-type", "Application/JSON; charset=utf-8")],
            vec![
                json,
                ("sec-fetch-site", "same-origin"),
                ("host", "tokens.example"),
                ("origin", "https://tokens.example"),
            ],
            vec![
                json,
                ("host", "tokens.example:443"),
                ("origin", "https://Tokens.example"),
            ],
            vec![
                json,
                ("host", "127.0.0.1:9090"),
                ("origin", "http://127.0.0.1:9090"),
            ],
            vec![
                json,
                ("host", "10.0.0.5:9090"),
                ("x-forwarded-host", "tokens.example"),
                ("origin", "https://tokens.example"),
            ],
            vec![json, ("sec-fetch-site", "none")],
        ] {
            assert_eq!(check_account_write(&headers(&ok)), Ok(()), "{ok:?}");
        }
        for bad in [
            vec![json, ("sec-fetch-site", "cross-site")],
            vec![json, ("sec-fetch-site", "same-site")],
            vec![
                json,
                ("host", "tokens.example"),
                ("origin", "https://evil.example"),
            ],
            vec![json, ("host", "tokens.example"), ("origin", "null")],
            vec![
                json,
                ("host", "tokens.example"),
                ("origin", "https://tokens.example.evil.example"),
            ],
            vec![
                json,
                ("host", "tokens.example:8443"),
                ("origin", "https://tokens.example"),
            ],
            vec![json, ("origin", "https://tokens.example")],
            vec![
                json,
                ("host", "tokens.example"),
                ("origin", "https://user@tokens.example"),
            ],
        ] {
            assert!(
                matches!(
                    check_account_write(&headers(&bad)),
                    Err(CrossSite::Forbidden(_))
                ),
                "{bad:?}"
            );
        }
        for bad in [
            vec![],
            vec![("content-type", "text/plain")],
            vec![("content-type", "application/x-www-form-urlencoded")],
            vec![("content-type", "application/jsonp")],
        ] {
            assert_eq!(
                check_account_write(&headers(&bad)),
                Err(CrossSite::NotJson),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn owners_and_actors() {
        let me = Caller::SelfToken {
            entry: entry(&["tokens:self"], None),
        };
        assert_eq!(me.actor(), "self:7");
        assert_eq!(me.owner_of_new(None).unwrap(), "alice");
        assert_eq!(me.owner_of_new(Some("alice")).unwrap(), "alice");
        assert!(matches!(
            me.owner_of_new(Some("bob")),
            Err(GrantError::Forbidden(_))
        ));
        assert!(me.may_manage("alice") && !me.may_manage("bob"));
        assert_eq!(me.own_token_id(), Some(7));
        let acct = Caller::Account { user: "bob".into() };
        assert_eq!(
            (acct.actor().as_str(), acct.mode()),
            ("account:bob", "account")
        );
        let admin = Caller::Admin { token_id: 1 };
        assert!(admin.may_manage("anyone"));
        assert_eq!((admin.own_token_id(), acct.own_token_id()), (None, None));
        assert!(matches!(admin.owner_of_new(None), Err(GrantError::Bad(_))));
    }
}
