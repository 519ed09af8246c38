//! Who is calling the admin API, and what they may grant.
//!
//! - [`Caller::Admin`]: a token with the `admin` scope (or a role granting it) — every user's tokens.
//! - [`Caller::SelfToken`]: a token with `tokens:self` — its own user's tokens only.
//! - [`Caller::Account`]: the platform's account page, named by `[admin] trusted_user_header` on a
//!   request from `trusted_proxies` — that user's tokens only, with no token at all. From any other
//!   address the header counts for nothing.
//!
//! No escalation ([`Caller::check_grant`]): a self-service caller grants only what it holds — scopes it
//! has itself (full access counts as every scope but `admin` and `tokens:self`), roles whose scopes it
//! has, an expiry no later than its own. `admin` and `tokens:self` (and roles carrying them) are granted
//! only by an admin caller or the CLI.

use crate::config::{AdminConfig, Roles};
use crate::gateway::auth::{self, Denial};
use crate::gateway::routes::granting;
use crate::tokens::fields::{check_user, is_privileged, ADMIN_SCOPE, SELF_SCOPE};
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

    /// Whether the caller may see and change a token of `owner`.
    pub fn may_manage(&self, owner: &str) -> bool {
        self.user().is_none_or(|u| u == owner)
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

    /// Checks that the caller may grant `scopes`, `roles` (names) and an expiry of `expires_at` (unix
    /// seconds; `None`: never) to a new token.
    pub fn check_grant(
        &self,
        scopes: &[String],
        roles: &[String],
        expires_at: Option<i64>,
        defined: &Roles,
    ) -> Result<(), GrantError> {
        for r in roles {
            if !defined.contains_key(r) {
                return Err(GrantError::Bad(format!(
                    "unknown role {r:?} (the [roles] of the configuration define: {})",
                    names(defined)
                )));
            }
        }
        if matches!(self, Caller::Admin { .. }) {
            return Ok(());
        }
        let forbid = |why: String| Err(GrantError::Forbidden(why));
        if let Some(p) = scopes.iter().find(|s| is_privileged(s)) {
            return forbid(format!(
                "{p:?} is granted only by an admin token or the CLI"
            ));
        }
        for r in roles {
            if let Some(p) = defined[r].iter().find(|s| is_privileged(s)) {
                return forbid(format!(
                    "role {r:?} carries {p:?}, granted only by an admin token or the CLI"
                ));
            }
        }
        let Caller::SelfToken { entry } = self else {
            return Ok(()); // the account holds full access, without an expiry
        };
        if let Some(held) = entry.effective_scopes(defined) {
            if scopes.is_empty() && roles.is_empty() {
                return forbid(
                    "a token without scopes has full access, which yours does not: name its scopes or roles"
                        .into(),
                );
            }
            let wanted = scopes.iter().map(|s| (s.as_str(), None)).chain(
                roles
                    .iter()
                    .flat_map(|r| defined[r].iter().map(move |s| (s.as_str(), Some(r)))),
            );
            for (s, via) in wanted {
                if !held.contains(s) {
                    return forbid(match via {
                        None => format!("your token does not hold the scope {s:?}"),
                        Some(r) => {
                            format!("role {r:?} grants {s:?}, which your token does not hold")
                        }
                    });
                }
            }
        }
        self.check_expiry(expires_at)
    }

    /// A self token's grants end with it: an expiry no later than its own (when it has one).
    pub fn check_expiry(&self, expires_at: Option<i64>) -> Result<(), GrantError> {
        let Caller::SelfToken { entry } = self else {
            return Ok(());
        };
        if entry.expires_at == u64::MAX {
            return Ok(());
        }
        let own = entry.expires_at as i64;
        match expires_at {
            Some(e) if e <= own => Ok(()),
            _ => Err(GrantError::Forbidden(format!(
                "your token expires at {}: a token you make cannot outlive it",
                crate::tokens::fields::rfc3339(own)
            ))),
        }
    }
}

/// A refused create or change: 400 (bad input) or 403 (`forbidden`: beyond what the caller holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    Bad(String),
    Forbidden(String),
}

fn names(roles: &Roles) -> String {
    if roles.is_empty() {
        "none".into()
    } else {
        roles.keys().cloned().collect::<Vec<_>>().join(", ")
    }
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
    let entry = auth::authorize(index, token, None, None, now)?;
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
        });
        index.get(&t.digest()).unwrap().entry
    }

    fn roles() -> Roles {
        let mut r = Roles::new();
        r.insert(
            "device".into(),
            vec!["telemetry:write".into(), "video:upload".into()],
        );
        r.insert("ops".into(), vec!["admin".into()]);
        r
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
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
        let acct = Caller::Account { user: "bob".into() };
        assert_eq!(
            (acct.actor().as_str(), acct.mode()),
            ("account:bob", "account")
        );
        let admin = Caller::Admin { token_id: 1 };
        assert!(admin.may_manage("anyone"));
        assert!(matches!(admin.owner_of_new(None), Err(GrantError::Bad(_))));
    }

    #[test]
    fn a_self_token_grants_only_what_it_holds() {
        let r = roles();
        let me = Caller::SelfToken {
            entry: entry(&["tokens:self", "@device"], None),
        };
        assert_eq!(
            me.check_grant(&v(&["telemetry:write"]), &[], None, &r),
            Ok(())
        );
        assert_eq!(me.check_grant(&[], &v(&["device"]), None, &r), Ok(()));
        for (scopes, roles_, why) in [
            (v(&["billing:read"]), vec![], "does not hold"),
            (v(&["admin"]), vec![], "granted only by"),
            (v(&["tokens:self"]), vec![], "granted only by"),
            (vec![], v(&["ops"]), "carries"),
            (vec![], vec![], "full access"),
        ] {
            match me.check_grant(&scopes, &roles_, None, &r) {
                Err(GrantError::Forbidden(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{scopes:?} {roles_:?}: {other:?}"),
            }
        }
        assert!(
            matches!(me.check_grant(&[], &v(&["nope"]), None, &r), Err(GrantError::Bad(m)) if m.contains("device, ops"))
        );
    }

    #[test]
    fn full_access_and_the_account_grant_everything_but_privileges() {
        let r = roles();
        let full = Caller::SelfToken {
            entry: entry(&[], None),
        };
        assert_eq!(full.check_grant(&[], &[], None, &r), Ok(()));
        assert_eq!(
            full.check_grant(&v(&["anything"]), &v(&["device"]), None, &r),
            Ok(())
        );
        assert!(full.check_grant(&v(&["admin"]), &[], None, &r).is_err());
        let acct = Caller::Account {
            user: "alice".into(),
        };
        assert_eq!(acct.check_grant(&[], &v(&["device"]), None, &r), Ok(()));
        assert!(acct
            .check_grant(&v(&["tokens:self"]), &[], None, &r)
            .is_err());
        assert!(acct.check_grant(&[], &v(&["ops"]), None, &r).is_err());
        let admin = Caller::Admin { token_id: 1 };
        assert_eq!(
            admin.check_grant(&v(&["admin", "tokens:self"]), &v(&["ops"]), None, &r),
            Ok(())
        );
    }

    #[test]
    fn a_token_made_by_an_expiring_self_token_cannot_outlive_it() {
        let r = roles();
        let me = Caller::SelfToken {
            entry: entry(&["tokens:self", "x"], Some(5_000)),
        };
        assert_eq!(me.check_grant(&v(&["x"]), &[], Some(4_000), &r), Ok(()));
        assert_eq!(me.check_grant(&v(&["x"]), &[], Some(5_000), &r), Ok(()));
        assert!(matches!(
            me.check_grant(&v(&["x"]), &[], Some(5_001), &r),
            Err(GrantError::Forbidden(_))
        ));
        assert!(matches!(
            me.check_grant(&v(&["x"]), &[], None, &r),
            Err(GrantError::Forbidden(_))
        ));
        assert_eq!(
            Caller::Account { user: "a".into() }.check_expiry(None),
            Ok(())
        );
    }
}
