//! The token endpoints under `/api/tokens` (and `GET /api/whoami`): list, create, show, change, rotate
//! and revoke, for an admin caller on every user's tokens and for a self-service caller on its own
//! user's only (see [`super::access`]). Another user's token answers exactly as an id that does not
//! exist: 404, same body, same headers.
//!
//! Changes go to the store on a blocking thread and are applied to this process's index before the
//! answer is sent, so a revoked token is refused by this gateway once `DELETE` has returned.

use super::access::{Caller, GrantError};
use super::rule::{self, Grants, Write};
use super::{json, Admin, Reply, DRAIN_LIMIT, MAX_BODY};
use crate::tokens::index::Index;
use crate::tokens::input::{self, NewInput, PatchInput};
use crate::tokens::store::{self, Store, StoreError, TokenPatch, TokenRecord};
use http::{header, Method, StatusCode};
use pingora::protocols::http::ServerSession;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    /// Required from an admin; a self-service caller may leave it out (its own user).
    user: Option<String>,
    label: String,
    expires_in: Option<String>,
    expires_at: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    /// Role names from the configuration's `[roles]`.
    #[serde(default)]
    roles: Vec<String>,
    /// Bind the token to the certificate with this SHA-256 (hex of its DER).
    bound_cert_sha256: Option<String>,
    rate_limit: Option<String>,
    quota: Option<String>,
}

/// `PATCH /api/tokens/{id}`: the fields to change; a limit given as `null` is cleared.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PatchRequest {
    label: Option<String>,
    expires_in: Option<String>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    quota: Option<Option<String>>,
}

/// A field that is present (`Some`, possibly `null`) as opposed to absent (`None`, by `default`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    grace: Option<String>,
}

/// An API failure, turned into the JSON error shape.
pub(super) struct ApiError(
    pub(super) StatusCode,
    pub(super) &'static str,
    pub(super) String,
);

impl ApiError {
    pub(super) fn bad(detail: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, "invalid_request", detail.into())
    }
    pub(super) fn into_reply(self) -> Reply {
        super::json_error(self.0, self.1, &self.2)
    }
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> ApiError {
        match e {
            GrantError::Bad(m) => ApiError::bad(m),
            GrantError::Forbidden(m) => ApiError(StatusCode::FORBIDDEN, "forbidden", m),
            GrantError::Hidden { id } => StoreError::NotFound { id }.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => {
                ApiError(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            StoreError::Revoked { .. } => ApiError(StatusCode::CONFLICT, "conflict", e.to_string()),
            StoreError::NoGroup { .. }
            | StoreError::NoLicense { .. }
            | StoreError::NotMember { .. } => {
                ApiError(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            StoreError::Exists { .. } => ApiError(StatusCode::CONFLICT, "conflict", e.to_string()),
            StoreError::SeatsTaken { .. } => {
                ApiError(StatusCode::CONFLICT, "seats_taken", e.to_string())
            }
            StoreError::Busy { .. } => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_busy", e.to_string())
            }
            // The store cannot be reached: nothing was changed; the gateway keeps serving its index.
            other if other.is_unavailable() => {
                log::error!("admin API: {other}");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the token store cannot be reached; nothing was changed, retry later".into(),
                )
            }
            other => {
                log::error!("admin API: {other}");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the token database failed".into(),
                )
            }
        }
    }
}

/// Decodes `%XX` and `+` in a query component.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Decodes `%XX` in a path segment (`+` stays `+`).
pub(super) fn percent_decode_path(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    percent_decode(&s.replace('+', "%2B"))
}

pub(super) fn query_param(query: Option<&str>, key: &str) -> Result<Option<String>, ApiError> {
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return percent_decode(v)
                .map(Some)
                .ok_or_else(|| ApiError::bad(format!("query parameter {key} is not valid UTF-8")));
        }
    }
    Ok(None)
}

/// Adds this gateway's not-yet-flushed usage to a record, so the page shows uses as they happen.
fn with_pending(index: &Index, mut record: TokenRecord) -> TokenRecord {
    let (uses, last) = index.pending_usage(record.id);
    record.use_count += uses as i64;
    if last > 0 && record.last_used_at.is_none_or(|l| l < last) {
        record.last_used_at = Some(last);
    }
    let now = store::unix_now();
    if let (Some(q), Some(here)) = (record.quota, index.quota_used(record.id, now)) {
        // This node's view (the shared count of its last flush + its unflushed requests) or the store's,
        // whichever has counted more.
        record.quota_used = record.quota_used_now(now).max(here as i64);
        record.quota_period = Some(q.period.start_of(q.period.index(now)));
    }
    record
}

/// Checks a PATCH body into a store patch.
fn patch_from(req: PatchRequest) -> Result<TokenPatch, ApiError> {
    input::token_patch(PatchInput {
        label: req.label,
        expires_in: req.expires_in,
        expires_at: req.expires_at,
        rate_limit: req.rate_limit,
        quota: req.quota,
    })
    .map_err(|e| ApiError::bad(e.for_api()))
}

fn with_token(record: &TokenRecord, token: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(record.view(store::unix_now())).expect("json");
    v["token"] = token.into();
    v
}

impl Admin {
    /// Runs a store operation on a blocking thread, then brings the index up to date.
    pub(super) async fn with_store<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (store, location, index) = (
            self.store.clone(),
            self.location.clone(),
            self.index.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(Store::open_existing(&location)?);
            }
            let s = guard.as_mut().expect("opened above");
            let result = op(s);
            if matches!(
                result,
                Err(StoreError::Sqlite { .. }
                    | StoreError::Unavailable { .. }
                    | StoreError::Postgres { .. })
            ) {
                *guard = None; // reopen next time
                return result;
            }
            let out = result?;
            index.sync_from(guard.as_mut().expect("still open").backend())?;
            Ok(out)
        })
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                e.to_string(),
            )
        })?
        .map_err(ApiError::from)
    }

    /// Reads token `id`, asks the admin rule about `write` (built from the record as stored now), and
    /// only if it is allowed runs `op` — on the API's one store connection, so nothing this process
    /// does changes the target between the check and the write. A refused write changes nothing and
    /// writes no event.
    async fn guarded<T: Send + 'static>(
        &self,
        caller: &Caller,
        id: i64,
        write: impl FnOnce(&TokenRecord, &Caller, &crate::config::Roles) -> Result<(), GrantError>
            + Send
            + 'static,
        op: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (caller, roles) = (caller.clone(), self.roles());
        self.with_store(move |s| {
            let target = s.get(id)?;
            if let Err(e) = write(&target, &caller, &roles) {
                return Ok(Err(e));
            }
            op(s).map(Ok)
        })
        .await?
        .map_err(ApiError::from)
    }

    pub(super) async fn read_json<T: serde::de::DeserializeOwned + Default>(
        session: &mut ServerSession,
        empty_ok: bool,
    ) -> Result<T, ApiError> {
        if let Some(ct) = session.req_header().headers.get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            if !ct.starts_with("application/json") {
                return Err(ApiError(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send application/json".into(),
                ));
            }
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        session.set_keepalive(None);
                        // Read (and drop) a bounded rest of the body first: closing with unread bytes makes
                        // the kernel send a reset, which can destroy the 413 before the client reads it.
                        let mut drained = 0usize;
                        while drained < DRAIN_LIMIT {
                            match session.read_request_body().await {
                                Ok(Some(more)) => drained += more.len(),
                                _ => break,
                            }
                        }
                        return Err(ApiError(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            format!("the body is larger than {MAX_BODY} bytes"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(ApiError::bad(format!("could not read the body: {e}"))),
            }
        }
        if body.iter().all(u8::is_ascii_whitespace) && empty_ok {
            return Ok(T::default());
        }
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))
    }

    /// Answers a request under `/api/tokens` from `caller`.
    pub(super) async fn api(
        &self,
        session: &mut ServerSession,
        caller: Caller,
        method: &Method,
        path: &str,
    ) -> Result<Reply, ApiError> {
        let rest = path.strip_prefix("/api/tokens").unwrap_or("");
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let id = match segments.first() {
            Some(s) => Some(s.parse::<i64>().map_err(|_| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("{s:?} is not a token id"),
                )
            })?),
            None => None,
        };
        // Another user's token is, to a self-service caller, a token that does not exist.
        if let (Some(id), Some(_)) = (id, caller.user()) {
            let owner = self.with_store(move |s| s.get(id).map(|r| r.user)).await?;
            if !caller.may_manage(&owner) {
                return Err(StoreError::NotFound { id }.into());
            }
        }
        match (
            method.as_str(),
            id,
            segments.get(1).copied(),
            segments.len(),
        ) {
            ("GET", None, _, 0) => self.list(session, &caller).await,
            ("POST", None, _, 0) => self.create(session, &caller).await,
            ("GET", Some(id), None, 1) => self.show(id).await,
            ("DELETE", Some(id), None, 1) => self.revoke(&caller, id).await,
            ("PATCH", Some(id), None, 1) => self.patch(session, &caller, id).await,
            ("POST", Some(id), Some("rotate"), 2) => self.rotate(session, &caller, id).await,
            (_, None, _, 0) | (_, Some(_), None, 1) | (_, Some(_), Some("rotate"), 2) => {
                Err(ApiError(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} is not allowed here"),
                ))
            }
            _ => Err(ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API endpoint".into(),
            )),
        }
    }

    /// `GET /api/tokens[?user=U]`: the tokens a caller may see (a self-service caller: its own user's).
    async fn list(&self, session: &mut ServerSession, caller: &Caller) -> Result<Reply, ApiError> {
        let now = store::unix_now();
        // A self-service caller sees its own user's tokens, whatever it asks for.
        let user = match caller.user() {
            Some(own) => Some(own.to_owned()),
            None => query_param(session.req_header().uri.query(), "user")?,
        };
        let records = self.with_store(move |s| s.list(user.as_deref())).await?;
        let views: Vec<_> = records
            .into_iter()
            .map(|r| with_pending(&self.index, r).view(now))
            .collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::to_value(views).expect("json"),
        ))
    }

    /// `POST /api/tokens`: a new token within the caller's rights (and, for self-service, its user's cap).
    async fn create(
        &self,
        session: &mut ServerSession,
        caller: &Caller,
    ) -> Result<Reply, ApiError> {
        let actor = caller.actor();
        let req: CreateRequest =
            Self::read_json(session, false)
                .await
                .and_then(|r: Option<CreateRequest>| {
                    r.ok_or_else(|| ApiError::bad("a JSON object with a label is required"))
                })?;
        let user = caller.owner_of_new(req.user.as_deref())?;
        let new = input::new_token(
            NewInput {
                user,
                label: req.label,
                expires_in: req.expires_in,
                expires_at: req.expires_at,
                scopes: req.scopes,
                roles: req.roles,
                bound_cert_sha256: req.bound_cert_sha256,
                rate_limit: req.rate_limit,
                quota: req.quota,
            },
            &self.roles(),
        )
        .map_err(|e| ApiError::bad(e.for_api()))?;
        let grants = Grants {
            grants: &new.scopes,
            expires_at: new.expires_at,
            rate_limit: new.rate_limit,
            quota: new.quota,
        };
        rule::permit(caller, &Write::Create(grants), &self.roles())?;
        // A self-service caller's user holds at most `max_tokens_per_user` active tokens; counted
        // and created on the one store connection.
        let cap = caller
            .user()
            .map(|_| self.access.max_tokens_per_user as usize);
        let (record, token) = self
            .with_store(move |s| {
                if let Some(cap) = cap {
                    let now = store::unix_now();
                    let active = s
                        .list(Some(&new.user))?
                        .iter()
                        .filter(|r| r.status(now) == store::Status::Active)
                        .count();
                    if active >= cap {
                        return Ok(Err(ApiError(
                            StatusCode::FORBIDDEN,
                            "forbidden",
                            format!(
                                "{} already holds {active} active tokens, the most a self-service caller may \
                                 hold (admin.max_tokens_per_user): revoke some first",
                                new.user
                            ),
                        )));
                    }
                }
                s.create(&new, &actor).map(Ok)
            })
            .await??;
        Ok(json(
            StatusCode::CREATED,
            &with_token(&record, token.as_str()),
        ))
    }

    /// `GET /api/tokens/{id}`: one token with its events.
    async fn show(&self, id: i64) -> Result<Reply, ApiError> {
        let now = store::unix_now();
        let (record, events) = self
            .with_store(move |s| Ok((s.get(id)?, s.events(id)?)))
            .await?;
        let mut v =
            serde_json::to_value(with_pending(&self.index, record).view(now)).expect("json");
        v["events"] = serde_json::to_value(events).expect("json");
        Ok(json(StatusCode::OK, &v))
    }

    /// `DELETE /api/tokens/{id}`.
    async fn revoke(&self, caller: &Caller, id: i64) -> Result<Reply, ApiError> {
        let actor = caller.actor();
        let now = store::unix_now();
        let (record, _changed) = self
            .guarded(
                caller,
                id,
                |target, caller, roles| rule::permit(caller, &Write::Revoke { target }, roles),
                move |s| s.revoke(id, &actor),
            )
            .await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::to_value(record.view(now)).expect("json"),
        ))
    }

    /// `PATCH /api/tokens/{id}`: label, expiry and limits, only ever within the caller's rights.
    async fn patch(
        &self,
        session: &mut ServerSession,
        caller: &Caller,
        id: i64,
    ) -> Result<Reply, ApiError> {
        let actor = caller.actor();
        let now = store::unix_now();
        let req: PatchRequest = Self::read_json::<Option<PatchRequest>>(session, false)
            .await?
            .unwrap_or_default();
        let patch = patch_from(req)?;
        if patch.is_empty() {
            return Err(ApiError::bad(
                "give at least one of label, expires_in, expires_at, rate_limit, quota",
            ));
        }
        let check = patch.clone();
        let (record, _) = self
            .guarded(
                caller,
                id,
                move |target, caller, roles| {
                    let patch = &check;
                    rule::permit(caller, &Write::Patch { target, patch }, roles)
                },
                move |s| s.update(id, &patch, &actor),
            )
            .await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::to_value(with_pending(&self.index, record).view(now)).expect("json"),
        ))
    }

    /// `POST /api/tokens/{id}/rotate`: a new secret, the old one kept for `grace`.
    async fn rotate(
        &self,
        session: &mut ServerSession,
        caller: &Caller,
        id: i64,
    ) -> Result<Reply, ApiError> {
        let actor = caller.actor();
        let req: RotateRequest = Self::read_json::<Option<RotateRequest>>(session, true)
            .await?
            .unwrap_or_default();
        let grace = req
            .grace
            .as_deref()
            .map(crate::tokens::fields::parse_grace)
            .transpose()
            .map_err(ApiError::bad)?;
        let (record, token) = self
            .guarded(
                caller,
                id,
                move |target, caller, roles| {
                    // Counted from a second on: the store stamps the grace with its own clock
                    // right after this check.
                    let grace_until = grace
                        .map(|g| {
                            i64::try_from(g.as_secs())
                                .ok()
                                .and_then(|g| store::unix_now().checked_add(g)?.checked_add(1))
                                .ok_or_else(|| GrantError::Bad("the grace is too long".into()))
                        })
                        .transpose()?;
                    rule::permit(
                        caller,
                        &Write::Rotate {
                            target,
                            grace_until,
                        },
                        roles,
                    )
                },
                move |s| s.rotate(id, grace, &actor),
            )
            .await?;
        Ok(json(StatusCode::OK, &with_token(&record, token.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_decode() {
        assert_eq!(
            query_param(Some("user=al%20ice&x=1"), "user")
                .ok()
                .flatten()
                .as_deref(),
            Some("al ice")
        );
        assert_eq!(query_param(Some("x=1"), "user").ok().flatten(), None);
        assert!(query_param(Some("user=%ff"), "user").is_err());
    }
}
