//! `POST /api/leaks` and `GET /api/leaks` (admins): leaked tokens reported by an operator — plaintext
//! tokens found in logs, a support ticket, another scanner — taken exactly like GitHub's reports
//! ([`crate::ops::leaks::take`]: the same array in, the same feedback out, the same revoke), and the
//! list of leak reports (time, reporter, source, url, token id, action; never a token or a hash) for the
//! page and the token's history.

use super::access::{self, Caller};
use super::api::ApiError;
use super::{denial_reply, json, Admin, Reply};
use crate::ops::leaks::{Match, MAX_MATCHES};
use http::{Method, StatusCode};
use pingora::protocols::http::ServerSession;

/// The most reports one listing returns.
const LIST_LIMIT: i64 = 500;

impl Admin {
    /// Answers `/api/leaks` for `caller`.
    pub(super) async fn leaks_api(
        &self,
        session: &mut ServerSession,
        caller: Caller,
        method: &Method,
    ) -> Reply {
        if let Err(d) = access::require_admin(&caller) {
            return denial_reply(&d);
        }
        let result = match *method {
            Method::GET | Method::HEAD => self.list_leaks(session).await,
            Method::POST => self.post_leaks(session, &caller).await,
            _ => Err(ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET or POST".into(),
            )),
        };
        result.unwrap_or_else(ApiError::into_reply)
    }

    async fn list_leaks(&self, session: &ServerSession) -> Result<Reply, ApiError> {
        let token = match super::api::query_param(session.req_header().uri.query(), "token_id")? {
            None => None,
            Some(t) => Some(
                t.parse::<i64>()
                    .map_err(|_| ApiError::bad("token_id must be a token id (a number)"))?,
            ),
        };
        let reports = self
            .with_store(move |s| s.leak_reports(token, LIST_LIMIT))
            .await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::to_value(reports).expect("json"),
        ))
    }

    async fn post_leaks(
        &self,
        session: &mut ServerSession,
        caller: &Caller,
    ) -> Result<Reply, ApiError> {
        let Some(taker) = self.leaks.clone() else {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "leak reports are not taken by this process".into(),
            ));
        };
        // Parsed as any JSON first (a syntax error names a position, never a value), then as matches
        // with a message that quotes nothing: the body holds plaintext tokens.
        let value: Option<serde_json::Value> = Self::read_json(session, false).await?;
        let matches: Vec<Match> = value
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| ApiError::bad("send a JSON array of {token, type, url, source}"))?;
        if matches.len() > MAX_MATCHES {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("a report may carry at most {MAX_MATCHES} matches"),
            ));
        }
        let reporter = caller.actor();
        let feedback = tokio::task::spawn_blocking(move || taker.take(&reporter, &matches))
            .await
            .map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    e.to_string(),
                )
            })?
            .map_err(ApiError::from)?;
        Ok(json(
            StatusCode::OK,
            &serde_json::to_value(feedback).expect("json"),
        ))
    }
}
