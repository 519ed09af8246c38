//! Leak reports and the owner-notification queue, on both backends (migration 6 on SQLite, 4 on
//! PostgreSQL). A report is one token of ours named by one reporter at one place (`source`, `url`):
//! recorded once (the same report again changes nothing), and when the gateway notifies owners, its
//! notification is queued in the same transaction. The queue is claimed with a lease, so that several
//! gateways sharing a store deliver each notification once, and one that dies mid-delivery leaves it to
//! be delivered by the next claim after the lease.

use super::pg::PgStore;
use super::pg_url::to_err as pg_err;
use super::sqlite::{to_err as sqlite_err, SqliteStore};
use super::{rfc3339, StoreError};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

/// One leak report of one of our tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakReport {
    pub at: i64,
    /// `github`, or the admin actor that posted it (`admin:<token id>`, `cli`).
    pub reporter: String,
    pub token_id: i64,
    /// `true_positive` (only ours are recorded).
    pub label: String,
    /// `revoked`, `reported` or `none` (already revoked, expired, rotated out).
    pub action: String,
    pub token_type: String,
    pub source: String,
    pub url: String,
}

/// A report as listed (`GET /api/leaks`): no token, no hash.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeakView {
    pub id: i64,
    pub at: String,
    pub reporter: String,
    pub token_id: i64,
    pub action: String,
    pub token_type: String,
    pub source: String,
    pub url: String,
}

/// A notification claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: i64,
    pub body: String,
    pub attempts: i64,
}

const PG_INSERT: &str =
    "INSERT INTO leak_reports (at, reporter, token_id, label, action, token_type, source, url)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING id";
const SQLITE_INSERT: &str =
    "INSERT INTO leak_reports (at, reporter, token_id, label, action, token_type, source, url)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING RETURNING id";
const PG_QUEUE: &str =
    "INSERT INTO leak_notifications (report_id, body, created_at, next_at) VALUES ($1, $2, $3, $3)";
const SQLITE_QUEUE: &str =
    "INSERT INTO leak_notifications (report_id, body, created_at, next_at) VALUES (?1, ?2, ?3, ?3)";
const PG_LIST: &str =
    "SELECT id, at, reporter, token_id, action, token_type, source, url FROM leak_reports
    WHERE ($1::int8 IS NULL OR token_id = $1) ORDER BY id DESC LIMIT $2";
const SQLITE_LIST: &str =
    "SELECT id, at, reporter, token_id, action, token_type, source, url FROM leak_reports
    WHERE (?1 IS NULL OR token_id = ?1) ORDER BY id DESC LIMIT ?2";
/// Claims up to `$3` due notifications: their `next_at` moves `$2` seconds on (the lease).
const PG_CLAIM: &str = "UPDATE leak_notifications SET next_at = $1 + $2 WHERE id IN (
        SELECT id FROM leak_notifications WHERE delivered_at IS NULL AND next_at <= $1
        ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED)
    RETURNING id, body, attempts";
const SQLITE_CLAIM: &str = "UPDATE leak_notifications SET next_at = ?1 + ?2 WHERE id IN (
        SELECT id FROM leak_notifications WHERE delivered_at IS NULL AND next_at <= ?1
        ORDER BY next_at LIMIT ?3)
    RETURNING id, body, attempts";
const PG_DONE: &str =
    "UPDATE leak_notifications SET delivered_at = $2, attempts = attempts + 1 WHERE id = $1";
const SQLITE_DONE: &str =
    "UPDATE leak_notifications SET delivered_at = ?2, attempts = attempts + 1 WHERE id = ?1";
const PG_RETRY: &str =
    "UPDATE leak_notifications SET next_at = $2, attempts = attempts + 1 WHERE id = $1 AND delivered_at IS NULL";
const SQLITE_RETRY: &str =
    "UPDATE leak_notifications SET next_at = ?2, attempts = attempts + 1 WHERE id = ?1 AND delivered_at IS NULL";

/// The leak log's part of the store's contract ([`super::TokenStore`]).
pub trait LeakStore {
    /// Records a report unless the same one (token, reporter, source, url) was recorded before, and then
    /// queues `notification` (a webhook body) with it. Returns whether it was new.
    fn record_leak(
        &mut self,
        r: &LeakReport,
        notification: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Reports, newest first, at most `limit`, optionally of one token.
    fn leak_reports(
        &mut self,
        token_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<LeakView>, StoreError>;

    /// Claims up to `max` notifications due at `now` for `lease` seconds.
    fn claim_notifications(
        &mut self,
        now: i64,
        lease: i64,
        max: i64,
    ) -> Result<Vec<Notification>, StoreError>;

    /// A claimed notification was delivered (`Ok`) or is to be tried again at `retry_at`.
    fn notification_result(&mut self, id: i64, result: Result<i64, i64>) -> Result<(), StoreError>;
}

/// Splits a notification's result into (delivered, the time to record).
fn outcome(result: Result<i64, i64>) -> (bool, i64) {
    match result {
        Ok(at) => (true, at),
        Err(retry_at) => (false, retry_at),
    }
}

impl LeakStore for SqliteStore {
    fn record_leak(&mut self, r: &LeakReport, note: Option<&str>) -> Result<bool, StoreError> {
        let err = |e| sqlite_err(&self.path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let id: Option<i64> = tx
            .query_row(
                SQLITE_INSERT,
                params![
                    r.at,
                    r.reporter,
                    r.token_id,
                    r.label,
                    r.action,
                    r.token_type,
                    r.source,
                    r.url
                ],
                |row| row.get(0),
            )
            .optional()
            .map_err(err)?;
        if let (Some(id), Some(body)) = (id, note) {
            tx.execute(SQLITE_QUEUE, params![id, body, r.at])
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(id.is_some())
    }

    fn leak_reports(
        &mut self,
        token_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<LeakView>, StoreError> {
        let err = |e| sqlite_err(&self.path, e);
        let mut stmt = self.conn.prepare_cached(SQLITE_LIST).map_err(err)?;
        let rows = stmt
            .query_map(params![token_id, limit], |r| {
                Ok(LeakView {
                    id: r.get(0)?,
                    at: rfc3339(r.get(1)?),
                    reporter: r.get(2)?,
                    token_id: r.get(3)?,
                    action: r.get(4)?,
                    token_type: r.get(5)?,
                    source: r.get(6)?,
                    url: r.get(7)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }
    fn claim_notifications(
        &mut self,
        now: i64,
        lease: i64,
        max: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let err = |e| sqlite_err(&self.path, e);
        let mut stmt = self.conn.prepare_cached(SQLITE_CLAIM).map_err(err)?;
        let rows = stmt
            .query_map(params![now, lease, max], |r| {
                Ok(Notification {
                    id: r.get(0)?,
                    body: r.get(1)?,
                    attempts: r.get::<_, i64>(2)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn notification_result(&mut self, id: i64, result: Result<i64, i64>) -> Result<(), StoreError> {
        let (done, at) = outcome(result);
        let sql = if done { SQLITE_DONE } else { SQLITE_RETRY };
        self.conn
            .execute(sql, params![id, at])
            .map_err(|e| sqlite_err(&self.path, e))?;
        Ok(())
    }
}

impl LeakStore for PgStore {
    fn record_leak(&mut self, r: &LeakReport, note: Option<&str>) -> Result<bool, StoreError> {
        let (insert, queue) = (self.prepare(PG_INSERT)?, self.prepare(PG_QUEUE)?);
        let err = |e| pg_err(&self.url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let row = tx
            .query_opt(
                &insert,
                &[
                    &r.at,
                    &r.reporter,
                    &r.token_id,
                    &r.label,
                    &r.action,
                    &r.token_type,
                    &r.source,
                    &r.url,
                ],
            )
            .map_err(err)?;
        let id: Option<i64> = row.map(|row| row.get(0));
        if let (Some(id), Some(body)) = (id, note) {
            tx.execute(&queue, &[&id, &body, &r.at]).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(id.is_some())
    }

    fn leak_reports(
        &mut self,
        token_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<LeakView>, StoreError> {
        let stmt = self.prepare(PG_LIST)?;
        let rows = self
            .client
            .query(&stmt, &[&token_id, &limit])
            .map_err(|e| pg_err(&self.url, e))?;
        Ok(rows
            .iter()
            .map(|r| LeakView {
                id: r.get(0),
                at: rfc3339(r.get(1)),
                reporter: r.get(2),
                token_id: r.get(3),
                action: r.get(4),
                token_type: r.get(5),
                source: r.get(6),
                url: r.get(7),
            })
            .collect())
    }

    fn claim_notifications(
        &mut self,
        now: i64,
        lease: i64,
        max: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let stmt = self.prepare(PG_CLAIM)?;
        let rows = self
            .client
            .query(&stmt, &[&now, &lease, &max])
            .map_err(|e| pg_err(&self.url, e))?;
        Ok(rows
            .iter()
            .map(|r| Notification {
                id: r.get(0),
                body: r.get(1),
                attempts: i64::from(r.get::<_, i32>(2)),
            })
            .collect())
    }

    fn notification_result(&mut self, id: i64, result: Result<i64, i64>) -> Result<(), StoreError> {
        let (done, at) = outcome(result);
        let stmt = self.prepare(if done { PG_DONE } else { PG_RETRY })?;
        self.client
            .execute(&stmt, &[&id, &at])
            .map_err(|e| pg_err(&self.url, e))?;
        Ok(())
    }
}
