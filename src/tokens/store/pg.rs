//! PostgreSQL, the source of truth for a fleet of gateways: the SQLite store's schema, operations and
//! semantics (see `store.rs`) for several nodes sharing one database.
//!
//! # Layout
//! - [`PgUrl`]: a `postgres://user:password@host:port/db?sslmode=...` URL (or libpq's key=value words), parsed
//!   once; it prints with the password replaced by `***`, and so does every [`StoreError`] made here.
//! - [`PgStore`]: one connection (sync `postgres` client). Migrations, create/list/show/revoke/rotate, the
//!   append-only event log, the change feed, the usage flush. Open one per thread that needs it.
//! - [`Listener`]: a connection of its own in `LISTEN tokengate_changes`, so that the sync thread sleeps until
//!   a change is committed or its poll interval passes.
//!
//! # Revisions
//! Every change to a token (create, revoke, rotate) takes its revision from the one-row table
//! `token_revision`, `UPDATE ... SET rev = rev + n`, inside the transaction that makes the change. The row
//! lock of that update is held until commit, so token writers are serialised on it and revisions become
//! visible in commit order: a reader that has seen rev 11 never later finds a rev 10 (what `BEGIN IMMEDIATE`
//! gives SQLite). A counter row rather than `MAX(rev) + 1` under `pg_advisory_xact_lock`: the same
//! serialisation in one statement instead of two, no advisory key shared with whatever else uses the
//! database, and a revision is never handed out twice. The same statement queues
//! `NOTIFY tokengate_changes` with the new revision as payload; PostgreSQL delivers it at commit, never for
//! a rolled-back change. Usage flushes touch neither `rev` nor the counter.
//!
//! # Locks
//! Revoke and rotate lock their token row (`SELECT ... FOR UPDATE`) before the counter, creates take only the
//! counter, and usage flushes lock their rows in id order and never the counter (their last statement takes
//! the quota feed's own counter, which nothing else takes): no two of them can wait for each other in a
//! cycle. Any lock wait is limited to [`BUSY_TIMEOUT`] (`lock_timeout`) and then fails with
//! [`StoreError::Busy`], as SQLite's busy timeout does; migrations wait as long as another node migrates.
//!
//! # TLS
//! Without `sslmode`, a server on another host must present a certificate valid for its name (`verify-full`);
//! on loopback or a Unix socket TLS is used when offered, unchecked. Written out, `sslmode` is libpq's:
//! `disable`; `prefer` and `require` encrypt without checking the server's certificate (the chain is checked
//! when `sslrootcert` is given, as libpq does); `verify-ca` checks the chain; `verify-full` the chain and the
//! host name. `sslrootcert=PATH` names a PEM file of roots; without it, or with `sslrootcert=system`, the
//! system's roots are used. rustls 0.23 with the ring provider. See `pg_url.rs`.

use super::pg_sql::*;
use super::pg_url::{to_err, PgUrl};
use super::{
    created_detail, parse_limit, rfc3339, split_scopes, unix_now, Event, Export, ExportedToken,
    IndexRow, NewToken, QuotaTotal, QuotaUse, StoreError, TokenPatch, TokenRecord, TokenStore,
    UsageBatch,
};
use crate::config::Rate;
use crate::tokens::fields::Quota;
use crate::tokens::format::{Digest, Token};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Row, Statement};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// One connection to the token database. Open one per thread that needs it; after an error, drop it and
/// connect again (the connection may be gone).
pub struct PgStore {
    pub(super) client: Client,
    pub(super) url: PgUrl,
    /// Statements prepared on this connection, by their SQL, each at its first use: a prepared statement
    /// costs one round trip per execution, an unprepared one two.
    prepared: HashMap<&'static str, Statement>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects without migrating (background loops: a database that was never set up is reported by the
    /// first query, not silently created).
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_to(&PgUrl::parse(url)?)
    }

    pub fn connect_to(url: &PgUrl) -> Result<PgStore, StoreError> {
        Ok(PgStore {
            client: url.connect()?,
            url: url.clone(),
            prepared: HashMap::new(),
        })
    }

    /// Connects and migrates (what `Store::open` does for SQLite).
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut store = PgStore::connect(url)?;
        store.migrate()?;
        Ok(store)
    }

    /// The URL connected to (prints redacted).
    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// Opens a [`Listener`] to the same database.
    pub fn listen(&self) -> Result<Listener, StoreError> {
        Listener::connect(&self.url)
    }

    pub(super) fn prepare(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).map_err(|e| to_err(&self.url, e))?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }

    /// The highest revision handed out: the cheap poll that catches a change whose notification was lost
    /// (PostgreSQL's counterpart of SQLite's `data_version`).
    pub fn current_rev(&mut self) -> Result<i64, StoreError> {
        let statement = self.prepare("SELECT rev FROM token_revision")?;
        let row = self
            .client
            .query_one(&statement, &[])
            .map_err(|e| to_err(&self.url, e))?;
        Ok(row.get(0))
    }
}

impl TokenStore for PgStore {
    /// Applies the migrations this database lacks, each in its own transaction under an advisory lock, so
    /// that nodes starting together apply each exactly once (the others wait, then find it applied).
    fn migrate(&mut self) -> Result<(), StoreError> {
        let err = |e| to_err(&self.url, e);
        let known = MIGRATIONS.len() as i64;
        loop {
            let mut tx = self.client.transaction().map_err(err)?;
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = 0;
                SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
                CREATE TABLE IF NOT EXISTS tokengate_migrations (
                    version    BIGINT PRIMARY KEY,
                    applied_at BIGINT NOT NULL
                );"
            ))
            .map_err(err)?;
            let version: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM tokengate_migrations",
                    &[],
                )
                .map_err(err)?
                .get(0);
            if version > known {
                return Err(StoreError::SchemaTooNew {
                    path: self.url.redacted.clone(),
                    found: version,
                    known,
                });
            }
            if version == known {
                return tx.commit().map_err(err);
            }
            tx.batch_execute(MIGRATIONS[version as usize])
                .map_err(err)?;
            tx.execute(
                "INSERT INTO tokengate_migrations (version, applied_at) VALUES ($1, $2)",
                &[&(version + 1), &unix_now()],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            log::info!(
                "database {}: applied schema migration {}",
                self.url,
                version + 1
            );
        }
    }

    /// The schema version applied and the newest this build knows.
    fn schema_version(&mut self) -> Result<(i64, i64), StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM tokengate_migrations",
                &[],
            )
            .map_err(|e| to_err(&self.url, e))?;
        Ok((row.get(0), MIGRATIONS.len() as i64))
    }

    /// Every token row and event, for `store copy` (one read-only snapshot).
    fn export(&mut self) -> Result<Export, StoreError> {
        let err = |e| to_err(&self.url, e);
        let mut tx = self
            .client
            .build_transaction()
            .read_only(true)
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .start()
            .map_err(err)?;
        let rows = tx.query(EXPORT_TOKENS, &[]).map_err(err)?;
        let mut tokens = Vec::with_capacity(rows.len());
        for r in &rows {
            let record = record(r).map_err(err)?;
            let digest: &[u8] = r.try_get(15).map_err(err)?;
            let prev: Option<&[u8]> = r.try_get(16).map_err(err)?;
            tokens.push(ExportedToken {
                digest: Digest::from_slice(digest).ok_or_else(|| StoreError::BadUrl {
                    url: self.url.redacted.clone(),
                    problem: format!("token {} has a malformed digest", record.id),
                })?,
                prev_digest: prev.and_then(Digest::from_slice),
                prev_valid_until: r.try_get(17).map_err(err)?,
                rev: r.try_get(18).map_err(err)?,
                record,
            });
        }
        let events = tx
            .query(
                "SELECT token_id, at, event, actor, detail FROM token_events ORDER BY id",
                &[],
            )
            .map_err(err)?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Event {
                        at: r.try_get(1)?,
                        event: r.try_get(2)?,
                        actor: r.try_get(3)?,
                        detail: r.try_get(4)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, postgres::Error>>()
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Export { tokens, events })
    }

    /// Replaces this database's tokens and events with `data` (ids, digests, revisions and usage kept), in
    /// one transaction; the id sequence and the revision counter continue after the copied ones. Refused
    /// when the database holds tokens, unless `force`.
    fn import(&mut self, data: &Export, force: bool) -> Result<(), StoreError> {
        let err = |e| to_err(&self.url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let existing: i64 = tx
            .query_one("SELECT COUNT(*) FROM tokens", &[])
            .map_err(err)?
            .get(0);
        if existing > 0 && !force {
            return Err(StoreError::NotEmpty {
                target: self.url.redacted.clone(),
                tokens: existing,
            });
        }
        // The append-only trigger guards the event log against edits, not against a forced copy. The
        // target's groups and licenses go too: their members name tokens and users that are replaced
        // (`store copy` does not carry groups and licenses yet).
        tx.batch_execute(
            "DELETE FROM group_members; DELETE FROM groups; DELETE FROM license_holders; DELETE FROM licenses;
             ALTER TABLE token_events DISABLE TRIGGER token_events_no_change;
             DELETE FROM token_events; DELETE FROM tokens;
             ALTER TABLE token_events ENABLE TRIGGER token_events_no_change;",
        )
        .map_err(err)?;
        let insert = tx
            .prepare(
                "INSERT INTO tokens (id, user_id, label, digest, created_at, revoked_at, last_used_at,
                    use_count, rev, scopes, expires_at, prev_digest, prev_valid_until, rotated_at,
                    bound_cert_sha256, rate_limit, quota, quota_used, quota_period)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                         $19)",
            )
            .map_err(err)?;
        for t in &data.tokens {
            let r = &t.record;
            let scopes = r.scopes.join(" ");
            let prev = t.prev_digest.as_ref().map(|d| &d.0[..]);
            let bound = r.bound_cert.as_ref().map(|d| &d[..]);
            let (rate, quota) = (
                r.rate_limit.map(|x| x.to_string()),
                r.quota.map(|x| x.to_string()),
            );
            tx.execute(
                &insert,
                &[
                    &r.id,
                    &r.user,
                    &r.label,
                    &&t.digest.0[..],
                    &r.created_at,
                    &r.revoked_at,
                    &r.last_used_at,
                    &r.use_count,
                    &t.rev,
                    &scopes,
                    &r.expires_at,
                    &prev,
                    &t.prev_valid_until,
                    &r.rotated_at,
                    &bound,
                    &rate,
                    &quota,
                    &r.quota_used,
                    &r.quota_period,
                ],
            )
            .map_err(err)?;
        }
        let insert = tx
            .prepare(
                "INSERT INTO token_events (token_id, at, event, actor, detail) VALUES ($1, $2, $3, $4, $5)",
            )
            .map_err(err)?;
        for (id, e) in &data.events {
            tx.execute(&insert, &[id, &e.at, &e.event, &e.actor, &e.detail])
                .map_err(err)?;
        }
        let max_rev = data.tokens.iter().map(|t| t.rev).max().unwrap_or(0);
        tx.execute(
            "UPDATE token_revision SET rev = GREATEST(rev, $1)",
            &[&max_rev],
        )
        .map_err(err)?;
        tx.batch_execute(
            "SELECT setval(pg_get_serial_sequence('tokens', 'id'), GREATEST(COALESCE(MAX(id), 0), 1),
                          MAX(id) IS NOT NULL) FROM tokens;
             SELECT pg_notify('tokengate_changes', (SELECT rev::text FROM token_revision));",
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Creates tokens in one transaction and one statement (one, or many for seeding and imports). Returns
    /// each id with its plaintext, in the order of `news`.
    fn create_many(
        &mut self,
        news: &[NewToken],
        actor: &str,
    ) -> Result<Vec<(i64, Token)>, StoreError> {
        if news.is_empty() {
            return Ok(Vec::new());
        }
        let now = unix_now();
        let tokens: Vec<Token> = news.iter().map(|_| Token::generate()).collect();
        let digests: Vec<Digest> = tokens.iter().map(Token::digest).collect();
        let digests: Vec<&[u8]> = digests.iter().map(|d| &d.0[..]).collect();
        let users: Vec<&str> = news.iter().map(|n| n.user.as_str()).collect();
        let labels: Vec<&str> = news.iter().map(|n| n.label.as_str()).collect();
        let scopes: Vec<String> = news.iter().map(|n| n.scopes.join(" ")).collect();
        let expires: Vec<Option<i64>> = news.iter().map(|n| n.expires_at).collect();
        let bound: Vec<Option<&[u8]>> = news
            .iter()
            .map(|n| n.bound_cert.as_ref().map(|d| &d[..]))
            .collect();
        let details: Vec<String> = news.iter().map(created_detail).collect();
        let rates: Vec<Option<String>> = news
            .iter()
            .map(|n| n.rate_limit.map(|r| r.to_string()))
            .collect();
        let quotas: Vec<Option<String>> = news
            .iter()
            .map(|n| n.quota.map(|q| q.to_string()))
            .collect();
        let (take_revs, insert) = (self.prepare(TAKE_REVS)?, self.prepare(INSERT_TOKENS)?);
        let err = |e| to_err(&self.url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let first: i64 = tx
            .query_one(&take_revs, &[&(news.len() as i64)])
            .map_err(err)?
            .get(0);
        let params: [&(dyn postgres::types::ToSql + Sync); 12] = [
            &users, &labels, &digests, &now, &first, &scopes, &expires, &actor, &details, &bound,
            &rates, &quotas,
        ];
        let mut rows = tx.query(&insert, &params).map_err(err)?;
        tx.commit().map_err(err)?;
        // Revisions were handed out in the order of `news`.
        rows.sort_by_key(|r| r.get::<_, i64>(1));
        Ok(rows.iter().map(|r| r.get(0)).zip(tokens).collect())
    }

    /// One token's metadata.
    fn get(&mut self, id: i64) -> Result<TokenRecord, StoreError> {
        let statement = self.prepare(GET)?;
        let row = self
            .client
            .query_opt(&statement, &[&id])
            .map_err(|e| to_err(&self.url, e))?
            .ok_or(StoreError::NotFound { id })?;
        record(&row).map_err(|e| to_err(&self.url, e))
    }

    /// All tokens, optionally of one user, oldest first.
    fn list(&mut self, user: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = match user {
            Some(u) => {
                let statement = self.prepare(LIST_USER)?;
                self.client.query(&statement, &[&u])
            }
            None => {
                let statement = self.prepare(LIST)?;
                self.client.query(&statement, &[])
            }
        };
        let err = |e| to_err(&self.url, e);
        rows.map_err(err)?
            .iter()
            .map(|r| record(r).map_err(err))
            .collect()
    }

    /// A token's lifecycle events, oldest first.
    fn events(&mut self, id: i64) -> Result<Vec<Event>, StoreError> {
        let statement = self.prepare(EVENTS)?;
        let err = |e| to_err(&self.url, e);
        let rows = self.client.query(&statement, &[&id]).map_err(err)?;
        let event = |r: &Row| -> Result<Event, postgres::Error> {
            Ok(Event {
                at: r.try_get(0)?,
                event: r.try_get(1)?,
                actor: r.try_get(2)?,
                detail: r.try_get(3)?,
            })
        };
        rows.iter().map(|r| event(r).map_err(err)).collect()
    }

    /// [`Self::revoke`], with a detail on the `revoked` event (a leak report's source and URL) and a
    /// reason the index keeps (`leaked`).
    fn revoke_with(
        &mut self,
        id: i64,
        actor: &str,
        detail: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(TokenRecord, bool), StoreError> {
        let now = unix_now();
        let (lock, take_revs, revoke) = (
            self.prepare(LOCK)?,
            self.prepare(TAKE_REVS)?,
            self.prepare(REVOKE)?,
        );
        let err = |e| to_err(&self.url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let row = tx
            .query_opt(&lock, &[&id])
            .map_err(err)?
            .ok_or(StoreError::NotFound { id })?;
        let current = record(&row).map_err(err)?;
        if current.revoked_at.is_some() {
            tx.commit().map_err(err)?;
            return Ok((current, false));
        }
        let rev: i64 = tx.query_one(&take_revs, &[&1i64]).map_err(err)?.get(0);
        let row = tx
            .query_one(&revoke, &[&id, &now, &rev, &actor, &detail, &reason])
            .map_err(err)?;
        let revoked = record(&row).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok((revoked, true))
    }

    /// Gives a token a new secret, keeping id, user, label, scopes, expiry and usage. With a grace period
    /// (whole seconds; less than one is none) the old secret keeps working until it ends; without, it stops
    /// at once. Refused for a revoked token.
    fn rotate(
        &mut self,
        id: i64,
        grace: Option<Duration>,
        actor: &str,
    ) -> Result<(TokenRecord, Token), StoreError> {
        let token = Token::generate();
        let now = unix_now();
        let (lock, take_revs, rotate) = (
            self.prepare(LOCK_DIGEST)?,
            self.prepare(TAKE_REVS)?,
            self.prepare(ROTATE)?,
        );
        let err = |e| to_err(&self.url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let row = tx
            .query_opt(&lock, &[&id])
            .map_err(err)?
            .ok_or(StoreError::NotFound { id })?;
        if row.try_get::<_, Option<i64>>(1).map_err(err)?.is_some() {
            return Err(StoreError::Revoked { id });
        }
        let old_digest: Vec<u8> = row.try_get(0).map_err(err)?;
        // Checked by the callers (`fields::grace_until`); saturated here, never wrapped.
        let until = grace
            .filter(|g| g.as_secs() > 0)
            .map(|g| crate::tokens::fields::grace_until_saturating(now, g));
        let prev = until.map(|_| old_digest);
        let detail = match until {
            Some(u) => format!(
                "old secret valid for {}s more, until {}",
                u - now,
                rfc3339(u)
            ),
            None => "old secret stopped at once".to_string(),
        };
        let rev: i64 = tx.query_one(&take_revs, &[&1i64]).map_err(err)?.get(0);
        let digest = &token.digest().0[..];
        let row = tx
            .query_one(
                &rotate,
                &[&id, &digest, &prev, &until, &now, &rev, &actor, &detail],
            )
            .map_err(err)?;
        let rotated = record(&row).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok((rotated, token))
    }

    /// Number of tokens and the highest id, to size the index before loading it.
    fn token_counts(&mut self) -> Result<(usize, i64), StoreError> {
        let row = self
            .client
            .query_one("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM tokens", &[])
            .map_err(|e| to_err(&self.url, e))?;
        Ok((row.get::<_, i64>(0) as usize, row.get(1)))
    }

    /// Streams changed rows to `f` without collecting them (the full load at start-up): a portal in a
    /// read-only transaction, 10 000 rows per round trip, so memory stays flat at any table size
    /// and all rows come from one snapshot.
    fn for_each_change(&mut self, rev: i64, f: &mut dyn FnMut(IndexRow)) -> Result<(), StoreError> {
        let statement = self.prepare(CHANGES)?;
        let err = |e| to_err(&self.url, e);
        let mut tx = self
            .client
            .build_transaction()
            .read_only(true)
            .start()
            .map_err(err)?;
        let portal = tx.bind(&statement, &[&rev]).map_err(err)?;
        loop {
            let rows = tx.query_portal(&portal, CHANGE_BATCH).map_err(err)?;
            for r in &rows {
                // Digests and scopes are read in place from the row's buffer.
                let Some(digest) = Digest::from_slice(r.try_get(2).map_err(err)?) else {
                    log::error!(
                        "database {}: token row has a malformed digest; skipped",
                        self.url
                    );
                    continue;
                };
                let prev: Option<&[u8]> = r.try_get(3).map_err(err)?;
                f(IndexRow {
                    id: r.try_get(0).map_err(err)?,
                    user: r.try_get(1).map_err(err)?,
                    digest,
                    prev_digest: prev.and_then(Digest::from_slice),
                    prev_valid_until: r.try_get(4).map_err(err)?,
                    scopes: split_scopes(r.try_get(5).map_err(err)?),
                    expires_at: r.try_get(6).map_err(err)?,
                    revoked: r.try_get(7).map_err(err)?,
                    rev: r.try_get(8).map_err(err)?,
                    bound_cert: r
                        .try_get::<_, Option<&[u8]>>(9)
                        .map_err(err)?
                        .and_then(|b| b.try_into().ok()),
                    rate_limit: parse_limit(r.try_get(10).map_err(err)?, Rate::parse),
                    quota: parse_limit(r.try_get(11).map_err(err)?, Quota::parse),
                    quota_used: r.try_get(12).map_err(err)?,
                    quota_period: r.try_get(13).map_err(err)?,
                    leaked: r
                        .try_get::<_, Option<bool>>(14)
                        .map_err(err)?
                        .unwrap_or(false),
                    access: super::Access::parse(
                        r.try_get(15).map_err(err)?,
                        r.try_get(16).map_err(err)?,
                    ),
                });
            }
            if rows.len() < CHANGE_BATCH as usize {
                break;
            }
        }
        tx.commit().map_err(err)
    }

    /// Adds usage counted in memory, in one statement (one round trip). Counts add up, so several gateways
    /// can share a database; `last_used_at` only moves forward; unknown ids are ignored. The quota totals
    /// the batch left are returned and appended to the quota feed in the same transaction.
    ///
    /// Each batch is recorded by its id (`node`, `seq`) in the same transaction: a batch sent again
    /// because its answer was lost (the commit went through, the connection broke) changes nothing.
    fn flush_usage(&mut self, batch: &UsageBatch) -> Result<Vec<QuotaTotal>, StoreError> {
        let deltas = &batch.deltas;
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = deltas.iter().map(|d| d.id).collect();
        let uses: Vec<i64> = deltas
            .iter()
            .map(|d| d.uses.min(i64::MAX as u64) as i64)
            .collect();
        let last: Vec<i64> = deltas.iter().map(|d| d.last_used_at).collect();
        // One count per token (an UPDATE ... FROM applies one source row per target row): counts of one
        // period add up; of two periods, the later one is what the earlier would be overwritten by.
        let mut quota: Vec<(i64, QuotaUse)> = deltas
            .iter()
            .filter_map(|d| Some((d.id, d.quota?)))
            .filter(|(_, q)| q.count > 0)
            .collect();
        quota.sort_by_key(|(id, q)| (*id, q.start));
        quota.dedup_by(|later, kept| {
            if later.0 != kept.0 {
                return false;
            }
            if later.1.start == kept.1.start {
                kept.1.count += later.1.count;
            } else {
                kept.1 = later.1;
            }
            true
        });
        let q_ids: Vec<i64> = quota.iter().map(|q| q.0).collect();
        let q_starts: Vec<i64> = quota.iter().map(|q| q.1.start).collect();
        let q_ends: Vec<i64> = quota.iter().map(|q| q.1.end).collect();
        let q_counts: Vec<i64> = quota
            .iter()
            .map(|q| q.1.count.min(i64::MAX as u64) as i64)
            .collect();
        let (record, statement, add_quota, read_quota) = (
            self.prepare(RECORD_BATCH)?,
            self.prepare(FLUSH_USAGE)?,
            self.prepare(FLUSH_QUOTA)?,
            self.prepare(READ_QUOTA)?,
        );
        let feed = self.quota_feed_statements()?;
        let err = |e| to_err(&self.url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let seq = batch.seq as i64;
        let now = unix_now();
        let fresh = tx
            .execute(&record, &[&batch.node, &seq, &now])
            .map_err(err)?;
        let rows = if fresh == 1 {
            tx.execute(&statement, &[&ids, &uses, &last]).map_err(err)?;
            tx.query(&add_quota, &[&q_ids, &q_starts, &q_counts, &q_ends])
                .map_err(err)?
        } else {
            tx.query(&read_quota, &[&q_ids]).map_err(err)?
        };
        let totals: Vec<QuotaTotal> = rows
            .iter()
            .map(|r| QuotaTotal {
                id: r.get(0),
                period_start: r.get(1),
                total: r.get::<_, i64>(2).max(0) as u64,
            })
            .collect();
        if fresh == 1 {
            Self::append_quota_feed(&mut tx, &feed, &batch.node, &totals, now).map_err(err)?;
        } else {
            log::info!(
                "usage flush: batch {}/{} was already written (its answer was lost); not added again",
                batch.node,
                batch.seq
            );
        }
        tx.commit().map_err(err)?;
        Ok(totals)
    }

    /// Changes a token's label, expiry or limits (a new revision and one `updated` event).
    fn update(
        &mut self,
        id: i64,
        patch: &TokenPatch,
        actor: &str,
    ) -> Result<(TokenRecord, bool), StoreError> {
        let now = unix_now();
        let (lock, take_revs) = (self.prepare(LOCK)?, self.prepare(TAKE_REVS)?);
        let err = |e| to_err(&self.url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let row = tx
            .query_opt(&lock, &[&id])
            .map_err(err)?
            .ok_or(StoreError::NotFound { id })?;
        let mut current = record(&row).map_err(err)?;
        if current.revoked_at.is_some() {
            return Err(StoreError::Revoked { id });
        }
        let Some(detail) = patch.apply(&mut current) else {
            tx.commit().map_err(err)?;
            return Ok((current, false));
        };
        let rev: i64 = tx.query_one(&take_revs, &[&1i64]).map_err(err)?.get(0);
        let (rate, quota) = (
            current.rate_limit.map(|x| x.to_string()),
            current.quota.map(|x| x.to_string()),
        );
        tx.execute(
            "UPDATE tokens SET label = $2, expires_at = $3, rate_limit = $4, quota = $5, rev = $6
             WHERE id = $1",
            &[
                &id,
                &current.label,
                &current.expires_at,
                &rate,
                &quota,
                &rev,
            ],
        )
        .map_err(err)?;
        tx.execute(
            "INSERT INTO token_events (token_id, at, event, actor, detail) VALUES ($1, $2, 'updated', $3, $4)",
            &[&id, &now, &actor, &detail],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok((current, true))
    }

    /// Runs a health query: is the server reachable and the schema there?
    fn check(&mut self) -> Result<(), StoreError> {
        let statement = self.prepare("SELECT COUNT(*) FROM tokengate_migrations")?;
        self.client
            .query_one(&statement, &[])
            .map_err(|e| to_err(&self.url, e))?;
        Ok(())
    }
}

fn record(r: &Row) -> Result<TokenRecord, postgres::Error> {
    Ok(TokenRecord {
        id: r.try_get(0)?,
        user: r.try_get(1)?,
        label: r.try_get(2)?,
        scopes: split_scopes(r.try_get(3)?),
        created_at: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
        rotated_at: r.try_get(7)?,
        last_used_at: r.try_get(8)?,
        use_count: r.try_get(9)?,
        bound_cert: r
            .try_get::<_, Option<&[u8]>>(10)?
            .and_then(|b| b.try_into().ok()),
        rate_limit: parse_limit(r.try_get(11)?, Rate::parse),
        quota: parse_limit(r.try_get(12)?, Quota::parse),
        quota_used: r.try_get(13)?,
        quota_period: r.try_get(14)?,
    })
}

/// A connection that listens on [`CHANNEL`]. Notifications sent while it is disconnected are lost: after
/// an error, reconnect and catch up by revision (`rev > last_rev`), which is the truth either way.
pub struct Listener {
    client: Client,
    url: PgUrl,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Listener {
    pub fn connect(url: &PgUrl) -> Result<Listener, StoreError> {
        let mut client = url.connect()?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|e| to_err(url, e))?;
        Ok(Listener {
            client,
            url: url.clone(),
        })
    }

    /// Sleeps until a change is committed (true) or `timeout` passes (false). Notifications that arrived
    /// meanwhile are all taken: one wake-up covers a burst. An error means the connection is gone.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        let err = |e| to_err(&self.url, e);
        let mut notifications = self.client.notifications();
        if notifications
            .timeout_iter(timeout)
            .next()
            .map_err(err)?
            .is_some()
        {
            while notifications.iter().next().map_err(err)?.is_some() {}
            return Ok(true);
        }
        drop(notifications);
        // Quiet or gone? The iterator also ends, without an error, when the connection has closed; and a
        // peer that vanished without closing shows nothing at all. One round trip tells.
        self.client
            .is_valid(PROBE_TIMEOUT.min(timeout.max(Duration::from_secs(1))))
            .map_err(|error| StoreError::Unavailable {
                url: self.url.redacted.clone(),
                error,
            })?;
        Ok(false)
    }
}
