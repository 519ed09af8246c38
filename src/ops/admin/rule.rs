//! The admin rule: who may change which token. One function, [`permit`], over the caller, the write and
//! its target, answering allowed or why not; the admin API calls it for every write (create, change,
//! rotate, revoke) before anything is written. The CLI is the operator's own tool and is not bound by it.
//!
//! An admin caller may do anything. For a self-service caller (a `tokens:self` token, or the platform's
//! account) the rule is: **after the write, nothing exists that the caller could not have created
//! itself.** What a caller could create ([`creatable`]):
//! - no `admin` or `tokens:self` scope, directly or through a role;
//! - scopes and roles' scopes within the caller's own (a caller with full access, such as the account,
//!   holds every scope but those two; a caller with scopes cannot make a full-access token);
//! - an expiry no later than the caller's own (a permanent caller: any);
//! - a rate limit and a quota no looser than the caller's own (an unlimited caller: any).
//!
//! So creating is checked against that; rotating hands back a new secret for the target's grants, so it
//! is a create of them, and any grace ends no later than the caller; revoking and changing need the same
//! right over the target; a change may move a limit only tighter (never loosen or lift one an admin
//! set). The caller's own token is the one exception to "never `tokens:self`": it may relabel itself,
//! tighten its own limits or expiry, rotate itself (any grace within its own expiry) and revoke itself —
//! none of that widens anything.

use super::access::{Caller, GrantError};
use crate::config::{Rate, Roles};
use crate::tokens::fields::{check_roles, is_privileged, rfc3339, split_grants, Period, Quota};
use crate::tokens::store::{TokenPatch, TokenRecord};
use std::collections::BTreeSet;

/// What a token grants, as far as the rule is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Grants<'a> {
    /// Scopes and roles (`@name`) as stored; none at all is full access.
    pub grants: &'a [String],
    /// Unix seconds; `None`: never.
    pub expires_at: Option<i64>,
    pub rate_limit: Option<Rate>,
    pub quota: Option<Quota>,
}

impl<'a> Grants<'a> {
    /// What the stored token `r` grants.
    pub fn of(r: &'a TokenRecord) -> Grants<'a> {
        Grants {
            grants: &r.scopes,
            expires_at: r.expires_at,
            rate_limit: r.rate_limit,
            quota: r.quota,
        }
    }
}

/// A write of the admin API.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// A new token for the caller's user with these grants.
    Create(Grants<'a>),
    /// `PATCH`: `patch` applied to `target`.
    Patch {
        target: &'a TokenRecord,
        patch: &'a TokenPatch,
    },
    /// A new secret for `target`; the old one keeps working until `grace_until` (unix seconds).
    Rotate {
        target: &'a TokenRecord,
        grace_until: Option<i64>,
    },
    Revoke {
        target: &'a TokenRecord,
    },
}

/// Whether `caller` may make `write`, with roles resolved in `roles` (the `[roles]` in force).
/// `Bad`: the input itself is wrong (400); `Forbidden`: beyond the caller's rights (403); `Hidden`:
/// another user's token, which answers like one that does not exist (404).
pub fn permit(caller: &Caller, write: &Write<'_>, roles: &Roles) -> Result<(), GrantError> {
    if let Write::Create(new) = write {
        let (_, role_names) = split_grants(new.grants);
        check_roles(&role_names, roles).map_err(GrantError::Bad)?;
    }
    let Some(ceiling) = Ceiling::of(caller, roles) else {
        return Ok(()); // an admin
    };
    let target = match write {
        Write::Create(new) => return ceiling.creatable(new, roles),
        Write::Patch { target, .. } | Write::Rotate { target, .. } | Write::Revoke { target } => {
            target
        }
    };
    if caller.user() != Some(target.user.as_str()) {
        return Err(GrantError::Hidden { id: target.id });
    }
    let own = caller.own_token_id() == Some(target.id);
    match *write {
        Write::Create(_) => unreachable!("answered above"),
        Write::Revoke { .. } if own => Ok(()),
        Write::Revoke { target } => ceiling.creatable(&Grants::of(target), roles),
        Write::Rotate {
            target,
            grace_until,
        } => {
            if !own {
                ceiling.creatable(&Grants::of(target), roles)?;
            }
            if let Some(g) = grace_until {
                if !within(Some(g), ceiling.expires_at, |a, b| a <= b) {
                    return forbid(format!(
                        "the old secret's grace would outlive your token, which expires at {}",
                        rfc3339(ceiling.expires_at.unwrap_or_default())
                    ));
                }
            }
            Ok(())
        }
        Write::Patch { target, patch } => {
            let mut after = target.clone();
            patch.apply(&mut after);
            let (now, next) = (Grants::of(target), Grants::of(&after));
            if !own {
                ceiling.creatable(&next, roles)?;
            } else if !within(next.expires_at, now.expires_at, |a, b| a <= b) {
                return forbid("your own token's expiry can only be moved earlier".into());
            }
            // Limits only tighten, whoever set them.
            if !within(next.rate_limit, now.rate_limit, rate_le) {
                return forbid(format!(
                    "the token's rate limit {} can only be tightened",
                    now.rate_limit.map(|r| r.to_string()).unwrap_or_default()
                ));
            }
            if !within(next.quota, now.quota, quota_le) {
                return forbid(format!(
                    "the token's quota {} can only be tightened",
                    now.quota.map(|q| q.to_string()).unwrap_or_default()
                ));
            }
            Ok(())
        }
    }
}

/// What a self-service caller holds: the most it can hand on.
struct Ceiling<'a> {
    /// Every scope it holds (roles resolved); `None`: full access (every scope but the privileged).
    held: Option<BTreeSet<&'a str>>,
    expires_at: Option<i64>,
    rate_limit: Option<Rate>,
    quota: Option<Quota>,
}

impl<'a> Ceiling<'a> {
    /// `None` for an admin, who is not bounded.
    fn of(caller: &'a Caller, roles: &'a Roles) -> Option<Ceiling<'a>> {
        match caller {
            Caller::Admin { .. } => None,
            // The account holds full access, without an expiry or limits.
            Caller::Account { .. } => Some(Ceiling {
                held: None,
                expires_at: None,
                rate_limit: None,
                quota: None,
            }),
            Caller::SelfToken { entry } => Some(Ceiling {
                held: entry.own_effective_scopes(roles),
                expires_at: (entry.expires_at != u64::MAX).then_some(entry.expires_at as i64),
                rate_limit: entry.limits.as_ref().and_then(|l| l.rate),
                quota: entry
                    .limits
                    .as_ref()
                    .and_then(|l| l.quota.as_ref().map(|q| q.quota)),
            }),
        }
    }

    /// Whether the caller could have created a token granting `g` (roles resolved in `roles`; a role
    /// no longer defined grants nothing).
    fn creatable(&self, g: &Grants<'_>, roles: &Roles) -> Result<(), GrantError> {
        let (scopes, role_names) = split_grants(g.grants);
        if let Some(p) = scopes.iter().find(|s| is_privileged(s)) {
            return forbid(format!(
                "{p:?} is granted only by an admin token or the CLI"
            ));
        }
        for r in &role_names {
            if let Some(p) = roles
                .get(r)
                .into_iter()
                .flatten()
                .find(|s| is_privileged(s))
            {
                return forbid(format!(
                    "role {r:?} carries {p:?}, granted only by an admin token or the CLI"
                ));
            }
        }
        if let Some(held) = &self.held {
            if g.grants.is_empty() {
                return forbid(
                    "a token without scopes has full access, which yours does not: name its scopes or roles"
                        .into(),
                );
            }
            let wanted =
                scopes
                    .iter()
                    .map(|s| (s.as_str(), None))
                    .chain(role_names.iter().flat_map(|r| {
                        roles
                            .get(r)
                            .into_iter()
                            .flatten()
                            .map(move |s| (s.as_str(), Some(r)))
                    }));
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
        if !within(g.expires_at, self.expires_at, |a, b| a <= b) {
            return forbid(format!(
                "your token expires at {}: a token you make or manage cannot outlive it",
                rfc3339(self.expires_at.unwrap_or_default())
            ));
        }
        if !within(g.rate_limit, self.rate_limit, rate_le) {
            return forbid(format!(
                "your token's rate limit is {}: a token you make or manage cannot have a looser one",
                self.rate_limit.map(|r| r.to_string()).unwrap_or_default()
            ));
        }
        if !within(g.quota, self.quota, quota_le) {
            return forbid(format!(
                "your token's quota is {}: a token you make or manage cannot have a looser one",
                self.quota.map(|q| q.to_string()).unwrap_or_default()
            ));
        }
        Ok(())
    }
}

fn forbid(why: String) -> Result<(), GrantError> {
    Err(GrantError::Forbidden(why))
}

/// Whether `value` is within `bound` by `le`, where `None` is the unbounded end (no expiry, no limit):
/// anything is within no bound, and nothing unbounded is within a bound.
fn within<T: Copy>(value: Option<T>, bound: Option<T>, le: fn(T, T) -> bool) -> bool {
    match (value, bound) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(v), Some(b)) => le(v, b),
    }
}

/// Whether rate `a` admits no more than rate `b` (its one-second burst follows from the rate).
fn rate_le(a: Rate, b: Rate) -> bool {
    u64::from(a.count) * u64::from(b.per_secs) <= u64::from(b.count) * u64::from(a.per_secs)
}

/// Whether quota `a` admits no more than quota `b` in any stretch of time: a daily quota against a
/// monthly one counts 31 days; a monthly one against a daily one could be spent in one day.
fn quota_le(a: Quota, b: Quota) -> bool {
    match (a.period, b.period) {
        (Period::Day, Period::Month) => a.count.saturating_mul(31) <= b.count,
        _ => a.count <= b.count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::format::Token;
    use crate::tokens::index::{Entry, Index};
    use crate::tokens::store::IndexRow;
    use std::sync::Arc;

    const EXP: i64 = 5_000_000_000;

    fn entry(
        id: i64,
        scopes: &[&str],
        expires_at: Option<i64>,
        limits: (&str, &str),
    ) -> Arc<Entry> {
        let index = Index::new();
        let t = Token::generate();
        index.apply(&IndexRow {
            id,
            user: "alice".into(),
            digest: t.digest(),
            prev_digest: None,
            prev_valid_until: None,
            scopes: v(scopes),
            expires_at,
            revoked: false,
            rev: 1,
            bound_cert: None,
            rate_limit: (!limits.0.is_empty()).then(|| Rate::parse(limits.0).unwrap()),
            quota: (!limits.1.is_empty()).then(|| Quota::parse(limits.1).unwrap()),
            quota_used: 0,
            quota_period: None,
            leaked: false,
            access: Default::default(),
        });
        index.get(&t.digest()).unwrap().entry
    }

    fn record(
        id: i64,
        scopes: &[&str],
        expires_at: Option<i64>,
        limits: (&str, &str),
    ) -> TokenRecord {
        TokenRecord {
            id,
            user: "alice".into(),
            label: "t".into(),
            scopes: v(scopes),
            created_at: 0,
            expires_at,
            revoked_at: None,
            rotated_at: None,
            last_used_at: None,
            use_count: 0,
            bound_cert: None,
            rate_limit: (!limits.0.is_empty()).then(|| Rate::parse(limits.0).unwrap()),
            quota: (!limits.1.is_empty()).then(|| Quota::parse(limits.1).unwrap()),
            quota_used: 0,
            quota_period: None,
        }
    }

    fn roles() -> Roles {
        let mut r = Roles::new();
        r.insert("device".into(), v(&["telemetry:write", "video:upload"]));
        r.insert("ops".into(), v(&["admin"]));
        r.insert("selfish".into(), v(&["tokens:self"]));
        r
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    /// A self token (id 1) with scopes `tokens:self telemetry:write video:upload`, expiring at EXP, with
    /// rate 10/s and quota 1000/day.
    fn me() -> Caller {
        Caller::SelfToken {
            entry: entry(
                1,
                &["tokens:self", "telemetry:write", "video:upload"],
                Some(EXP),
                ("10/s", "1000/day"),
            ),
        }
    }

    /// A sibling the caller could have made: within its scopes, expiry and limits.
    fn narrow() -> TokenRecord {
        record(2, &["telemetry:write"], Some(EXP - 10), ("5/s", "500/day"))
    }

    fn create(
        g: &[&str],
        exp: Option<i64>,
        limits: (&str, &str),
    ) -> (Vec<String>, Grants<'static>) {
        let grants = v(g);
        let leaked: &'static [String] = Box::leak(grants.clone().into_boxed_slice());
        (
            grants,
            Grants {
                grants: leaked,
                expires_at: exp,
                rate_limit: (!limits.0.is_empty()).then(|| Rate::parse(limits.0).unwrap()),
                quota: (!limits.1.is_empty()).then(|| Quota::parse(limits.1).unwrap()),
            },
        )
    }

    fn forbidden(r: Result<(), GrantError>, why: &str) {
        match r {
            Err(GrantError::Forbidden(m)) => assert!(m.contains(why), "{m:?} lacks {why:?}"),
            other => panic!("expected forbidden ({why}): {other:?}"),
        }
    }

    #[test]
    fn an_admin_may_do_anything_but_name_an_unknown_role() {
        let admin = Caller::Admin { token_id: 9 };
        let r = roles();
        let (_, g) = create(&["admin", "@ops"], None, ("", ""));
        assert_eq!(permit(&admin, &Write::Create(g), &r), Ok(()));
        let target = record(2, &["admin"], None, ("", ""));
        let patch = TokenPatch {
            rate_limit: Some(None),
            ..Default::default()
        };
        for w in [
            Write::Revoke { target: &target },
            Write::Rotate {
                target: &target,
                grace_until: Some(i64::MAX),
            },
            Write::Patch {
                target: &target,
                patch: &patch,
            },
        ] {
            assert_eq!(permit(&admin, &w, &r), Ok(()));
        }
        let (_, g) = create(&["@nope"], None, ("", ""));
        assert!(
            matches!(permit(&admin, &Write::Create(g), &r), Err(GrantError::Bad(m)) if m.contains("device, ops, selfish"))
        );
    }

    #[test]
    fn create_within_the_callers_grants_expiry_and_limits() {
        let r = roles();
        let me = me();
        let ok = |g: &[&str], exp, lim| {
            let (_, g) = create(g, exp, lim);
            permit(&me, &Write::Create(g), &r)
        };
        assert_eq!(
            ok(&["telemetry:write"], Some(EXP), ("10/s", "1000/day")),
            Ok(())
        );
        assert_eq!(
            ok(&["@device"], Some(EXP - 1), ("600/m", "30/month")),
            Ok(())
        );
        forbidden(
            ok(&["billing"], Some(EXP), ("1/s", "1/day")),
            "does not hold",
        );
        forbidden(
            ok(&["admin"], Some(EXP), ("1/s", "1/day")),
            "granted only by",
        );
        forbidden(
            ok(&["tokens:self"], Some(EXP), ("1/s", "1/day")),
            "granted only by",
        );
        forbidden(ok(&["@ops"], Some(EXP), ("1/s", "1/day")), "carries");
        forbidden(ok(&["@selfish"], Some(EXP), ("1/s", "1/day")), "carries");
        forbidden(ok(&[], Some(EXP), ("1/s", "1/day")), "full access");
        forbidden(
            ok(&["telemetry:write"], Some(EXP + 1), ("1/s", "1/day")),
            "outlive",
        );
        forbidden(ok(&["telemetry:write"], None, ("1/s", "1/day")), "outlive");
        forbidden(
            ok(&["telemetry:write"], Some(EXP), ("11/s", "1/day")),
            "rate limit",
        );
        forbidden(
            ok(&["telemetry:write"], Some(EXP), ("", "1/day")),
            "rate limit",
        );
        forbidden(
            ok(&["telemetry:write"], Some(EXP), ("1/s", "1001/day")),
            "quota",
        );
        forbidden(ok(&["telemetry:write"], Some(EXP), ("1/s", "")), "quota");
        forbidden(
            ok(&["telemetry:write"], Some(EXP), ("1/s", "1001/month")),
            "quota",
        );
        let (_, g) = create(&["@nope"], Some(EXP), ("1/s", "1/day"));
        assert!(matches!(
            permit(&me, &Write::Create(g), &r),
            Err(GrantError::Bad(_))
        ));
    }

    #[test]
    fn the_account_holds_everything_but_the_privileged_scopes() {
        let r = roles();
        let acct = Caller::Account {
            user: "alice".into(),
        };
        let (_, g) = create(&[], None, ("", ""));
        assert_eq!(permit(&acct, &Write::Create(g), &r), Ok(()));
        let (_, g) = create(&["anything", "@device"], None, ("", ""));
        assert_eq!(permit(&acct, &Write::Create(g), &r), Ok(()));
        let (_, g) = create(&["tokens:self"], None, ("", ""));
        forbidden(permit(&acct, &Write::Create(g), &r), "granted only by");
        let admin_token = record(3, &["admin"], None, ("", ""));
        forbidden(
            permit(
                &acct,
                &Write::Revoke {
                    target: &admin_token,
                },
                &r,
            ),
            "granted only by",
        );
        forbidden(
            permit(
                &acct,
                &Write::Rotate {
                    target: &admin_token,
                    grace_until: None,
                },
                &r,
            ),
            "granted only by",
        );
        let device = record(4, &[], None, ("5/s", ""));
        assert_eq!(
            permit(&acct, &Write::Revoke { target: &device }, &r),
            Ok(())
        );
        let lift = TokenPatch {
            rate_limit: Some(None),
            ..Default::default()
        };
        forbidden(
            permit(
                &acct,
                &Write::Patch {
                    target: &device,
                    patch: &lift,
                },
                &r,
            ),
            "only be tightened",
        );
    }

    #[test]
    fn another_users_token_is_hidden() {
        let r = roles();
        let mut theirs = narrow();
        theirs.user = "bob".into();
        for caller in [
            me(),
            Caller::Account {
                user: "alice".into(),
            },
        ] {
            assert_eq!(
                permit(&caller, &Write::Revoke { target: &theirs }, &r),
                Err(GrantError::Hidden { id: 2 })
            );
        }
    }

    #[test]
    fn every_verb_on_a_wider_sibling_is_forbidden_and_on_a_narrower_one_allowed() {
        let r = roles();
        let me = me();
        let wider = [
            (
                record(2, &["admin"], Some(EXP), ("1/s", "1/day")),
                "granted only by",
            ),
            (record(2, &["@ops"], Some(EXP), ("1/s", "1/day")), "carries"),
            (
                record(2, &["tokens:self"], Some(EXP), ("1/s", "1/day")),
                "granted only by",
            ),
            (record(2, &[], Some(EXP), ("1/s", "1/day")), "full access"),
            (
                record(2, &["billing"], Some(EXP), ("1/s", "1/day")),
                "does not hold",
            ),
            (
                record(2, &["telemetry:write"], Some(EXP + 1), ("1/s", "1/day")),
                "outlive",
            ),
            (
                record(2, &["telemetry:write"], None, ("1/s", "1/day")),
                "outlive",
            ),
            (
                record(2, &["telemetry:write"], Some(EXP), ("20/s", "1/day")),
                "rate limit",
            ),
            (
                record(2, &["telemetry:write"], Some(EXP), ("", "1/day")),
                "rate limit",
            ),
            (
                record(2, &["telemetry:write"], Some(EXP), ("1/s", "")),
                "quota",
            ),
        ];
        let relabel = TokenPatch {
            label: Some("x".into()),
            ..Default::default()
        };
        for (target, why) in &wider {
            forbidden(permit(&me, &Write::Revoke { target }, &r), why);
            forbidden(
                permit(
                    &me,
                    &Write::Rotate {
                        target,
                        grace_until: None,
                    },
                    &r,
                ),
                why,
            );
            forbidden(
                permit(
                    &me,
                    &Write::Patch {
                        target,
                        patch: &relabel,
                    },
                    &r,
                ),
                why,
            );
        }
        let target = &narrow();
        assert_eq!(permit(&me, &Write::Revoke { target }, &r), Ok(()));
        assert_eq!(
            permit(
                &me,
                &Write::Rotate {
                    target,
                    grace_until: Some(EXP)
                },
                &r
            ),
            Ok(())
        );
        assert_eq!(
            permit(
                &me,
                &Write::Patch {
                    target,
                    patch: &relabel
                },
                &r
            ),
            Ok(())
        );
    }

    #[test]
    fn a_change_may_narrow_a_sibling_into_reach_but_never_widen_it() {
        let r = roles();
        let me = me();
        let target = &narrow();
        let patch = |p: TokenPatch| permit(&me, &Write::Patch { target, patch: &p }, &r);
        // Expiry: anywhere up to the caller's own.
        assert_eq!(
            patch(TokenPatch {
                expires_at: Some(Some(EXP)),
                ..Default::default()
            }),
            Ok(())
        );
        forbidden(
            patch(TokenPatch {
                expires_at: Some(None),
                ..Default::default()
            }),
            "outlive",
        );
        forbidden(
            patch(TokenPatch {
                expires_at: Some(Some(EXP + 1)),
                ..Default::default()
            }),
            "outlive",
        );
        // Limits: tighter only, even within the caller's own.
        assert_eq!(
            patch(TokenPatch {
                rate_limit: Some(Some(Rate::parse("1/s").unwrap())),
                ..Default::default()
            }),
            Ok(())
        );
        forbidden(
            patch(TokenPatch {
                rate_limit: Some(Some(Rate::parse("6/s").unwrap())),
                ..Default::default()
            }),
            "only be tightened",
        );
        forbidden(
            patch(TokenPatch {
                quota: Some(None),
                ..Default::default()
            }),
            "quota",
        );
        // A wide sibling made narrow by the change itself: the result is what counts for expiry.
        let permanent = &record(2, &["telemetry:write"], None, ("5/s", "500/day"));
        let p = TokenPatch {
            expires_at: Some(Some(EXP - 1)),
            ..Default::default()
        };
        assert_eq!(
            permit(
                &me,
                &Write::Patch {
                    target: permanent,
                    patch: &p
                },
                &r
            ),
            Ok(())
        );
    }

    #[test]
    fn a_grace_never_outlives_the_caller() {
        let r = roles();
        let me = me();
        let target = &narrow();
        forbidden(
            permit(
                &me,
                &Write::Rotate {
                    target,
                    grace_until: Some(EXP + 1),
                },
                &r,
            ),
            "grace",
        );
        let own = &record(
            1,
            &["tokens:self", "telemetry:write"],
            Some(EXP),
            ("10/s", "1000/day"),
        );
        forbidden(
            permit(
                &me,
                &Write::Rotate {
                    target: own,
                    grace_until: Some(EXP + 1),
                },
                &r,
            ),
            "grace",
        );
        assert_eq!(
            permit(
                &me,
                &Write::Rotate {
                    target: own,
                    grace_until: Some(EXP)
                },
                &r
            ),
            Ok(())
        );
    }

    #[test]
    fn the_callers_own_token_may_narrow_rotate_and_revoke_itself() {
        let r = roles();
        let me = me();
        let own = &record(
            1,
            &["tokens:self", "telemetry:write"],
            Some(EXP),
            ("10/s", "1000/day"),
        );
        let patch = |p: TokenPatch| {
            permit(
                &me,
                &Write::Patch {
                    target: own,
                    patch: &p,
                },
                &r,
            )
        };
        assert_eq!(
            patch(TokenPatch {
                label: Some("x".into()),
                ..Default::default()
            }),
            Ok(())
        );
        assert_eq!(
            patch(TokenPatch {
                expires_at: Some(Some(EXP - 5)),
                ..Default::default()
            }),
            Ok(())
        );
        assert_eq!(
            patch(TokenPatch {
                quota: Some(Some(Quota::parse("10/day").unwrap())),
                ..Default::default()
            }),
            Ok(())
        );
        forbidden(
            patch(TokenPatch {
                expires_at: Some(Some(EXP + 5)),
                ..Default::default()
            }),
            "earlier",
        );
        forbidden(
            patch(TokenPatch {
                expires_at: Some(None),
                ..Default::default()
            }),
            "earlier",
        );
        forbidden(
            patch(TokenPatch {
                rate_limit: Some(None),
                ..Default::default()
            }),
            "rate limit",
        );
        forbidden(
            patch(TokenPatch {
                quota: Some(Some(Quota::parse("1001/day").unwrap())),
                ..Default::default()
            }),
            "quota",
        );
        assert_eq!(permit(&me, &Write::Revoke { target: own }, &r), Ok(()));
        assert_eq!(
            permit(
                &me,
                &Write::Rotate {
                    target: own,
                    grace_until: None
                },
                &r
            ),
            Ok(())
        );
        // A permanent, unlimited own token may set an expiry and limits (tightening).
        let free = Caller::SelfToken {
            entry: entry(1, &["tokens:self", "x"], None, ("", "")),
        };
        let own = &record(1, &["tokens:self", "x"], None, ("", ""));
        let p = TokenPatch {
            expires_at: Some(Some(EXP)),
            rate_limit: Some(Some(Rate::parse("1/s").unwrap())),
            ..Default::default()
        };
        assert_eq!(
            permit(
                &free,
                &Write::Patch {
                    target: own,
                    patch: &p
                },
                &r
            ),
            Ok(())
        );
    }

    #[test]
    fn limits_compare_across_units_and_periods() {
        let rate = |s| Rate::parse(s).unwrap();
        assert!(rate_le(rate("60/m"), rate("1/s")) && rate_le(rate("1/s"), rate("60/m")));
        assert!(!rate_le(rate("61/m"), rate("1/s")));
        assert!(rate_le(rate("3600/h"), rate("1/s")) && !rate_le(rate("2/s"), rate("3600/h")));
        let q = |s| Quota::parse(s).unwrap();
        assert!(quota_le(q("10/day"), q("310/month")) && !quota_le(q("11/day"), q("310/month")));
        assert!(quota_le(q("10/month"), q("10/day")) && !quota_le(q("11/month"), q("10/day")));
        assert!(quota_le(
            q(&format!("{}/day", (1u64 << 40) - 1)),
            q(&format!("{}/day", (1u64 << 40) - 1))
        ));
        assert!(within(None::<i64>, None, |a, b| a <= b));
        assert!(within(Some(1), None, |a, b| a <= b));
        assert!(!within(None, Some(1), |a, b| a <= b));
    }
}
