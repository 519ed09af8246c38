//! `/api/groups` and `/api/licenses`: groups (their roles and members) and licenses (seats, end,
//! holders). Every write — any verb but GET and HEAD — is an admin's: a self-service or account caller
//! is refused with 403 before its body is read, whatever it names (itself included), so no such caller
//! can put itself in a group or take a seat. Such a caller reads only the groups and licenses its own
//! user is in (by the user or by one of its tokens), and sees only its own memberships in them; any other
//! name answers exactly as one that does not exist.

use super::access::{self, Caller};
use super::api::ApiError;
use super::{denial_reply, json, Admin, Reply};
use crate::tokens::fields::parse_rfc3339;
use crate::tokens::store::groups::{check_name, GroupView, LicenseView, Member, MemberView};
use crate::tokens::store::StoreError;
use http::{Method, StatusCode};
use pingora::protocols::http::ServerSession;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GroupRequest {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LicenseRequest {
    name: String,
    seats: i64,
    valid_until: Option<String>,
}

/// `{"user": ...}` or `{"token_id": ...}`, exactly one.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MemberRequest {
    user: Option<String>,
    token_id: Option<i64>,
}

impl MemberRequest {
    fn member(self) -> Result<Member, ApiError> {
        match (self.user, self.token_id) {
            (Some(u), None) => Member::user(&u).map_err(ApiError::bad),
            (None, Some(id)) if id > 0 => Ok(Member::Token(id)),
            _ => Err(ApiError::bad(
                "send {\"user\": \"...\"} or {\"token_id\": N}, exactly one",
            )),
        }
    }
}

/// Which of the two collections.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Group,
    License,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::License => "license",
        }
    }
    /// The sub-collection of members: `members` or `holders`.
    fn members(self) -> &'static str {
        match self {
            Kind::Group => "members",
            Kind::License => "holders",
        }
    }
}

fn not_found(kind: Kind, name: &str) -> ApiError {
    match kind {
        Kind::Group => StoreError::NoGroup {
            name: name.to_owned(),
        },
        Kind::License => StoreError::NoLicense {
            name: name.to_owned(),
        },
    }
    .into()
}

fn not_allowed(method: &Method) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed here"),
    )
}

/// What a self-service caller may see of members: its own user and its own tokens.
struct Own {
    user: String,
    tokens: Vec<i64>,
}

impl Own {
    fn is(&self, m: &MemberView) -> bool {
        m.user.as_deref() == Some(self.user.as_str())
            || m.token_id.is_some_and(|id| self.tokens.contains(&id))
    }
    /// Keeps only its own memberships; `None` when it has none (the caller may not see it at all).
    fn filter(&self, members: &mut Vec<MemberView>) -> Option<()> {
        members.retain(|m| self.is(m));
        (!members.is_empty()).then_some(())
    }
}

fn own_group(own: Option<&Own>, mut g: GroupView) -> Option<GroupView> {
    match own {
        None => Some(g),
        Some(o) => o.filter(&mut g.members).map(|()| g),
    }
}

fn own_license(own: Option<&Own>, mut l: LicenseView) -> Option<LicenseView> {
    match own {
        None => Some(l),
        Some(o) => o.filter(&mut l.holders).map(|()| l),
    }
}

impl Admin {
    /// Answers `/api/groups...` and `/api/licenses...` for `caller`.
    pub(super) async fn groups_api(
        &self,
        session: &mut ServerSession,
        caller: Caller,
        method: &Method,
        path: &str,
    ) -> Reply {
        let read = *method == Method::GET || *method == Method::HEAD;
        // Every write is an admin's, refused before anything is read or looked up.
        if !read {
            if let Err(d) = access::require_admin(&caller) {
                return denial_reply(&d);
            }
        }
        let (kind, rest) = match path.strip_prefix("/api/groups") {
            Some(rest) => (Kind::Group, rest),
            None => (
                Kind::License,
                path.strip_prefix("/api/licenses").unwrap_or(""),
            ),
        };
        self.groups_request(session, &caller, method, kind, rest)
            .await
            .unwrap_or_else(ApiError::into_reply)
    }

    async fn groups_request(
        &self,
        session: &mut ServerSession,
        caller: &Caller,
        method: &Method,
        kind: Kind,
        rest: &str,
    ) -> Result<Reply, ApiError> {
        let segments: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| super::api::percent_decode_path(s).ok_or_else(|| ApiError::bad("bad path")))
            .collect::<Result<_, _>>()?;
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
        let verb = method.as_str();
        match (verb, seg.as_slice()) {
            ("GET" | "HEAD", []) => self.list_access(caller, kind).await,
            ("POST", []) => self.create_access(session, caller, kind).await,
            ("GET" | "HEAD", [name]) => self.show_access(caller, kind, name).await,
            ("DELETE", [name]) if kind == Kind::Group => {
                let (name, actor) = (name.to_string(), caller.actor());
                self.with_store(move |s| s.group_delete(&name, &actor))
                    .await?;
                Ok(json(StatusCode::OK, &serde_json::json!({"deleted": true})))
            }
            ("POST", [name, m]) if *m == kind.members() => {
                let req: Option<MemberRequest> = Self::read_json(session, false).await?;
                let member = req
                    .ok_or_else(|| ApiError::bad("a JSON object is required"))?
                    .member()?;
                let (name, actor) = (name.to_string(), caller.actor());
                let added = self
                    .with_store(move |s| match kind {
                        Kind::Group => s.group_add(&name, &member, &actor),
                        Kind::License => s.license_assign(&name, &member, &actor),
                    })
                    .await?;
                // `added` false: it was a member (held a seat) already; nothing changed.
                Ok(json(StatusCode::OK, &serde_json::json!({"added": added})))
            }
            ("DELETE", [name, m, who]) if *m == kind.members() => {
                let member = Member::from_path(who).map_err(ApiError::bad)?;
                let (name, actor) = (name.to_string(), caller.actor());
                self.with_store(move |s| match kind {
                    Kind::Group => s.group_remove(&name, &member, &actor),
                    Kind::License => s.license_revoke(&name, &member, &actor),
                })
                .await?;
                Ok(json(StatusCode::OK, &serde_json::json!({"removed": true})))
            }
            (_, []) | (_, [_]) => Err(not_allowed(method)),
            (_, [_, m]) | (_, [_, m, _]) if *m == kind.members() => Err(not_allowed(method)),
            _ => Err(ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API endpoint".into(),
            )),
        }
    }

    /// The caller's own user and tokens (`None` for an admin: it sees everything).
    async fn own(&self, caller: &Caller) -> Result<Option<Own>, ApiError> {
        let Some(user) = caller.user().map(str::to_owned) else {
            return Ok(None);
        };
        let u = user.clone();
        let tokens = self
            .with_store(move |s| s.list(Some(&u)))
            .await?
            .iter()
            .map(|r| r.id)
            .collect();
        Ok(Some(Own { user, tokens }))
    }

    async fn list_access(&self, caller: &Caller, kind: Kind) -> Result<Reply, ApiError> {
        let own = self.own(caller).await?;
        let v = match kind {
            Kind::Group => {
                let all = self.with_store(|s| s.groups()).await?;
                let seen: Vec<GroupView> = all
                    .into_iter()
                    .filter_map(|g| own_group(own.as_ref(), g))
                    .collect();
                serde_json::to_value(seen)
            }
            Kind::License => {
                let all = self.with_store(|s| s.licenses()).await?;
                let seen: Vec<LicenseView> = all
                    .into_iter()
                    .filter_map(|l| own_license(own.as_ref(), l))
                    .collect();
                serde_json::to_value(seen)
            }
        };
        Ok(json(StatusCode::OK, &v.expect("json")))
    }

    async fn show_access(
        &self,
        caller: &Caller,
        kind: Kind,
        name: &str,
    ) -> Result<Reply, ApiError> {
        let own = self.own(caller).await?;
        let n = name.to_owned();
        let v = match kind {
            Kind::Group => {
                let g = self.with_store(move |s| s.group(&n)).await?;
                let g = own_group(own.as_ref(), g).ok_or_else(|| not_found(kind, name))?;
                let mut v = serde_json::to_value(g).expect("json");
                if own.is_none() {
                    let n = name.to_owned();
                    let events = self
                        .with_store(move |s| s.access_events("group", &n))
                        .await?;
                    v["events"] = serde_json::to_value(events).expect("json");
                }
                v
            }
            Kind::License => {
                let l = self.with_store(move |s| s.license(&n)).await?;
                let l = own_license(own.as_ref(), l).ok_or_else(|| not_found(kind, name))?;
                let mut v = serde_json::to_value(l).expect("json");
                if own.is_none() {
                    let n = name.to_owned();
                    let events = self
                        .with_store(move |s| s.access_events("license", &n))
                        .await?;
                    v["events"] = serde_json::to_value(events).expect("json");
                }
                v
            }
        };
        Ok(json(StatusCode::OK, &v))
    }

    async fn create_access(
        &self,
        session: &mut ServerSession,
        caller: &Caller,
        kind: Kind,
    ) -> Result<Reply, ApiError> {
        let actor = caller.actor();
        let v = match kind {
            Kind::Group => {
                let req: Option<GroupRequest> = Self::read_json(session, false).await?;
                let req =
                    req.ok_or_else(|| ApiError::bad("a JSON object with a name is required"))?;
                check_name(kind.word(), &req.name).map_err(ApiError::bad)?;
                let mut roles = req.roles;
                crate::tokens::fields::check_roles(&roles, &self.roles()).map_err(ApiError::bad)?;
                roles.sort();
                roles.dedup();
                let g = self
                    .with_store(move |s| s.group_create(&req.name, &roles, &actor))
                    .await?;
                serde_json::to_value(g)
            }
            Kind::License => {
                let req: Option<LicenseRequest> = Self::read_json(session, false).await?;
                let req = req.ok_or_else(|| {
                    ApiError::bad("a JSON object with a name and seats is required")
                })?;
                check_name(kind.word(), &req.name).map_err(ApiError::bad)?;
                if !(0..=1_000_000_000).contains(&req.seats) {
                    return Err(ApiError::bad("seats: give 0 to 1000000000"));
                }
                let until = req
                    .valid_until
                    .as_deref()
                    .map(parse_rfc3339)
                    .transpose()
                    .map_err(|e| ApiError::bad(format!("valid_until: {e}")))?;
                let l = self
                    .with_store(move |s| s.license_create(&req.name, req.seats, until, &actor))
                    .await?;
                serde_json::to_value(l)
            }
        };
        Ok(json(StatusCode::CREATED, &v.expect("json")))
    }
}
