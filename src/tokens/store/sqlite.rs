//! The SQLite backend (the default store): schema migrations, token create/list/show/revoke/rotate, the
//! append-only lifecycle event log, the change feed the index syncs from, and the batched usage flush.
//!
//! Every change to a token (create, revoke, rotate) sets its `rev` to one more than the highest `rev` in
//! the table, inside one `BEGIN IMMEDIATE` transaction, so revisions grow in commit order and a reader can
//! ask for `rev > last_seen`. Usage counters are not changes: they never touch `rev`.
//! The database runs in WAL mode with `synchronous = FULL`: a committed token survives `kill -9` and power
//! loss. The file is created with mode 0600.

use super::{
    created_detail, parse_limit, rfc3339, split_scopes, unix_now, Access, Event, Export,
    ExportedToken, IndexRow, NewToken, QuotaTotal, StoreError, TokenPatch, TokenRecord, TokenStore,
    UsageBatch, BUSY_TIMEOUT, LEAKED,
};
use crate::config::Rate;
use crate::tokens::fields::Quota;
use crate::tokens::format::{Digest, Token};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Numbered schema migrations; `PRAGMA user_version` holds how many have been applied.
/// Never edit a released entry: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the core token table.
    "CREATE TABLE tokens (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id      TEXT    NOT NULL,
        label        TEXT    NOT NULL,
        digest       BLOB    NOT NULL UNIQUE,
        created_at   INTEGER NOT NULL,
        revoked_at   INTEGER,
        last_used_at INTEGER,
        use_count    INTEGER NOT NULL DEFAULT 0,
        rev          INTEGER NOT NULL
    );
    CREATE INDEX tokens_rev ON tokens (rev);
    CREATE INDEX tokens_user ON tokens (user_id);",
    // 2: lifecycle — expiry, scopes, rotation with grace, and the append-only event log.
    "ALTER TABLE tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
    ALTER TABLE tokens ADD COLUMN expires_at INTEGER;
    ALTER TABLE tokens ADD COLUMN prev_digest BLOB;
    ALTER TABLE tokens ADD COLUMN prev_valid_until INTEGER;
    ALTER TABLE tokens ADD COLUMN rotated_at INTEGER;
    CREATE TABLE token_events (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        token_id INTEGER NOT NULL REFERENCES tokens (id),
        at       INTEGER NOT NULL,
        event    TEXT    NOT NULL,
        actor    TEXT    NOT NULL,
        detail   TEXT
    );
    CREATE INDEX token_events_token ON token_events (token_id, id);
    CREATE TRIGGER token_events_no_update BEFORE UPDATE ON token_events
        BEGIN SELECT RAISE(ABORT, 'token_events is append-only'); END;
    CREATE TRIGGER token_events_no_delete BEFORE DELETE ON token_events
        BEGIN SELECT RAISE(ABORT, 'token_events is append-only'); END;
    INSERT INTO token_events (token_id, at, event, actor, detail)
        SELECT id, created_at, 'created', 'unknown', 'recorded by migration 2' FROM tokens;
    INSERT INTO token_events (token_id, at, event, actor, detail)
        SELECT id, revoked_at, 'revoked', 'unknown', 'recorded by migration 2' FROM tokens
        WHERE revoked_at IS NOT NULL;",
    // 3: certificate-bound tokens (the SHA-256 of the device certificate's DER).
    "ALTER TABLE tokens ADD COLUMN bound_cert_sha256 BLOB;",
    // 4: rate limits and quotas per token; the quota count of the period starting at quota_period.
    "ALTER TABLE tokens ADD COLUMN rate_limit TEXT;
    ALTER TABLE tokens ADD COLUMN quota TEXT;
    ALTER TABLE tokens ADD COLUMN quota_used INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tokens ADD COLUMN quota_period INTEGER;",
    // 5: the quota feed (see quota_feed.rs).
    QUOTA_FEED_MIGRATION,
    // 6: leaked tokens: why a token was revoked (`leaked`: reported leaked), the reports of leaks, and
    // the owner notifications waiting to be delivered (see ops/leaks).
    LEAKS_MIGRATION,
    // 7: the TLS session ticket keys every gateway on this store shares (see ticket_keys.rs).
    "CREATE TABLE tls_ticket_keys (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        secret     BLOB    NOT NULL,
        created_at INTEGER NOT NULL
    );",
    // 8: groups, their members, licenses with seats, their holders, and their audit log (groups.rs).
    super::access::SQLITE_MIGRATION,
];

const LEAKS_MIGRATION: &str = "ALTER TABLE tokens ADD COLUMN revoked_reason TEXT;
    CREATE TABLE leak_reports (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        reporter   TEXT NOT NULL,
        token_id   INTEGER NOT NULL,
        label      TEXT NOT NULL,
        action     TEXT NOT NULL,
        token_type TEXT NOT NULL,
        source     TEXT NOT NULL,
        url        TEXT NOT NULL
    );
    CREATE UNIQUE INDEX leak_reports_once ON leak_reports (token_id, reporter, source, url);
    CREATE TABLE leak_notifications (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        report_id    INTEGER NOT NULL UNIQUE,
        body         TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL,
        delivered_at INTEGER
    );
    CREATE INDEX leak_notifications_due ON leak_notifications (next_at) WHERE delivered_at IS NULL;";

/// The change feed: every token changed after a revision, with its groups and licenses (one statement,
/// one snapshot).
const CHANGES: &str = concat!(
    "SELECT id, user_id, digest, prev_digest, prev_valid_until, scopes, expires_at, revoked_at, rev,
        bound_cert_sha256, rate_limit, quota, quota_used, quota_period, revoked_reason",
    super::access::sqlite_access_columns!(),
    " FROM tokens WHERE rev > ?1 ORDER BY rev"
);

/// One connection to the token database. Open one per thread that needs it.
pub struct SqliteStore {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    /// The file's inode when it was opened (0: unknown), to notice it deleted or replaced.
    ino: u64,
}

impl SqliteStore {
    /// Opens an existing database, never creating one: background loops use this so that a database
    /// deleted under a running gateway is reported, not silently replaced by an empty one.
    pub fn open_existing(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Create {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the database file is missing",
                ),
            });
        }
        SqliteStore::open(path)
    }

    /// Opens (creating with mode 0600 if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let create_err = |source| StoreError::Create {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(create_err)?;
        }
        create_private_file(path).map_err(create_err)?;
        let conn = Connection::open(path).map_err(|source| StoreError::Sqlite {
            path: path.display().to_string(),
            source,
        })?;
        let mut store = SqliteStore {
            conn,
            path: path.to_path_buf(),
            ino: inode(path).unwrap_or(0),
        };
        store.init()?;
        Ok(store)
    }

    fn init(&mut self) -> Result<(), StoreError> {
        let err = |e| to_err(&self.path, e);
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // journal_mode answers with a row, so it is queried rather than executed. Two processes opening a
        // brand-new file at once can deadlock on the switch to WAL (one holds a read lock the other needs
        // gone), and SQLite then answers BUSY at once instead of waiting, so the switch is retried here.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match self
                .conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            {
                Ok(_) => break,
                Err(e) => match err(e) {
                    StoreError::Busy { .. } if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    other => return Err(other),
                },
            }
        }
        self.conn
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(err)?;
        self.migrate()
    }
}

/// The inode of the file at `path` (`None`: there is none).
fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).ok()
}

/// Maps a SQLite error to a [`StoreError`], recognising a database locked by another writer.
pub(super) fn to_err(path: &Path, source: rusqlite::Error) -> StoreError {
    {
        let busy = matches!(
            &source,
            rusqlite::Error::SqliteFailure(e, _)
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        if busy {
            StoreError::Busy {
                path: path.display().to_string(),
                waited: BUSY_TIMEOUT,
            }
        } else {
            StoreError::Sqlite {
                path: path.display().to_string(),
                source,
            }
        }
    }
}

impl SqliteStore {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest revision of any token: every committed change is at or below it.
    pub fn head_rev(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(rev), 0) FROM tokens", [], |r| r.get(0))
            .map_err(|e| to_err(&self.path, e))
    }

    /// SQLite's `data_version`: changes whenever another connection commits.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        let err = |e| to_err(&self.path, e);
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(err)
    }
}

impl TokenStore for SqliteStore {
    /// Applies the migrations this database lacks, each in its own transaction.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let err = |e| to_err(&self.path, e);
        let known = MIGRATIONS.len() as i64;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let version: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(err)?;
            if version > known {
                return Err(StoreError::SchemaTooNew {
                    path: self.path.display().to_string(),
                    found: version,
                    known,
                });
            }
            if version == known {
                return Ok(());
            }
            tx.execute_batch(MIGRATIONS[version as usize])
                .map_err(err)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))
                .map_err(err)?;
            tx.commit().map_err(err)?;
            log::info!(
                "database {}: applied schema migration {}",
                self.path.display(),
                version + 1
            );
        }
    }

    /// The schema version applied and the newest this build knows.
    fn schema_version(&mut self) -> Result<(i64, i64), StoreError> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| to_err(&self.path, e))?;
        Ok((v, MIGRATIONS.len() as i64))
    }

    /// Every token row and event, for `store copy`.
    fn export(&mut self) -> Result<Export, StoreError> {
        let err = |e| to_err(&self.path, e);
        let mut tokens = Vec::new();
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {RECORD_COLUMNS}, digest, prev_digest, prev_valid_until, rev FROM tokens ORDER BY id"
            ))
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let record = record_from_row(r).map_err(err)?;
            let digest: Vec<u8> = r.get(15).map_err(err)?;
            let prev: Option<Vec<u8>> = r.get(16).map_err(err)?;
            tokens.push(ExportedToken {
                digest: Digest::from_slice(&digest).ok_or_else(|| StoreError::Create {
                    path: self.path.display().to_string(),
                    source: std::io::Error::other(format!(
                        "token {} has a malformed digest",
                        record.id
                    )),
                })?,
                prev_digest: prev.as_deref().and_then(Digest::from_slice),
                prev_valid_until: r.get(17).map_err(err)?,
                rev: r.get(18).map_err(err)?,
                record,
            });
        }
        let mut events = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT token_id, at, event, actor, detail FROM token_events ORDER BY id")
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            events.push((
                r.get(0).map_err(err)?,
                Event {
                    at: r.get(1).map_err(err)?,
                    event: r.get(2).map_err(err)?,
                    actor: r.get(3).map_err(err)?,
                    detail: r.get(4).map_err(err)?,
                },
            ));
        }
        Ok(Export { tokens, events })
    }

    /// Replaces this database's tokens and events with `data` (ids, digests, revisions and usage kept), in
    /// one transaction. Refused when the database holds tokens, unless `force`.
    fn import(&mut self, data: &Export, force: bool) -> Result<(), StoreError> {
        let err = |e| to_err(&self.path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let existing: i64 = tx
            .query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))
            .map_err(err)?;
        if existing > 0 && !force {
            return Err(StoreError::NotEmpty {
                target: self.path.display().to_string(),
                tokens: existing,
            });
        }
        // The append-only triggers guard the event log against edits, not against a forced copy. The
        // target's groups and licenses go too: their members name tokens and users that are replaced
        // (`store copy` does not carry groups and licenses yet).
        tx.execute_batch(
            "DELETE FROM group_members; DELETE FROM groups; DELETE FROM license_holders; DELETE FROM licenses;
             DROP TRIGGER token_events_no_delete; DELETE FROM token_events; DELETE FROM tokens;
             CREATE TRIGGER token_events_no_delete BEFORE DELETE ON token_events
                BEGIN SELECT RAISE(ABORT, 'token_events is append-only'); END;",
        )
        .map_err(err)?;
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO tokens (id, user_id, label, digest, created_at, revoked_at, last_used_at,
                        use_count, rev, scopes, expires_at, prev_digest, prev_valid_until, rotated_at,
                        bound_cert_sha256, rate_limit, quota, quota_used, quota_period)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                             ?18, ?19)",
                )
                .map_err(err)?;
            for t in &data.tokens {
                let r = &t.record;
                insert
                    .execute(params![
                        r.id,
                        r.user,
                        r.label,
                        &t.digest.0[..],
                        r.created_at,
                        r.revoked_at,
                        r.last_used_at,
                        r.use_count,
                        t.rev,
                        r.scopes.join(" "),
                        r.expires_at,
                        t.prev_digest.as_ref().map(|d| &d.0[..]),
                        t.prev_valid_until,
                        r.rotated_at,
                        r.bound_cert.as_ref().map(|d| &d[..]),
                        r.rate_limit.map(|x| x.to_string()),
                        r.quota.map(|x| x.to_string()),
                        r.quota_used,
                        r.quota_period,
                    ])
                    .map_err(err)?;
            }
            let mut insert = tx
                .prepare(
                    "INSERT INTO token_events (token_id, at, event, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            for (id, e) in &data.events {
                insert
                    .execute(params![id, e.at, e.event, e.actor, e.detail])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Creates tokens in one transaction (one, or many for seeding and imports). Returns each id with its
    /// plaintext.
    fn create_many(
        &mut self,
        news: &[NewToken],
        actor: &str,
    ) -> Result<Vec<(i64, Token)>, StoreError> {
        let err = |e| to_err(&self.path, e);
        let now = unix_now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut out = Vec::with_capacity(news.len());
        {
            let first_rev = next_rev(&tx).map_err(err)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO tokens (user_id, label, digest, created_at, rev, scopes, expires_at,
                                         bound_cert_sha256, rate_limit, quota)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(err)?;
            for (rev, new) in (first_rev..).zip(news) {
                let token = Token::generate();
                insert
                    .execute(params![
                        new.user,
                        new.label,
                        &token.digest().0[..],
                        now,
                        rev,
                        new.scopes.join(" "),
                        new.expires_at,
                        new.bound_cert.as_ref().map(|d| &d[..]),
                        new.rate_limit.map(|r| r.to_string()),
                        new.quota.map(|q| q.to_string()),
                    ])
                    .map_err(err)?;
                let id = tx.last_insert_rowid();
                let detail = created_detail(new);
                add_event(&tx, id, now, "created", actor, Some(&detail)).map_err(err)?;
                out.push((id, token));
            }
        }
        tx.commit().map_err(err)?;
        Ok(out)
    }

    /// One token's metadata.
    fn get(&mut self, id: i64) -> Result<TokenRecord, StoreError> {
        let err = |e| to_err(&self.path, e);
        self.conn
            .query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM tokens WHERE id = ?1"),
                [id],
                record_from_row,
            )
            .optional()
            .map_err(err)?
            .ok_or(StoreError::NotFound { id })
    }

    /// All tokens, optionally of one user, oldest first.
    fn list(&mut self, user: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        let err = |e| to_err(&self.path, e);
        let sql = match user {
            Some(_) => {
                format!("SELECT {RECORD_COLUMNS} FROM tokens WHERE user_id = ?1 ORDER BY id")
            }
            None => format!("SELECT {RECORD_COLUMNS} FROM tokens ORDER BY id"),
        };
        let mut stmt = self.conn.prepare(&sql).map_err(err)?;
        let rows = match user {
            Some(u) => stmt.query_map([u], record_from_row),
            None => stmt.query_map([], record_from_row),
        }
        .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// A token's lifecycle events, oldest first.
    fn events(&mut self, id: i64) -> Result<Vec<Event>, StoreError> {
        let err = |e| to_err(&self.path, e);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at, event, actor, detail FROM token_events WHERE token_id = ?1 ORDER BY id",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(Event {
                    at: r.get(0)?,
                    event: r.get(1)?,
                    actor: r.get(2)?,
                    detail: r.get(3)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
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
        let err = |e| to_err(&self.path, e);
        let now = unix_now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let revoked_at: Option<Option<i64>> = tx
            .query_row("SELECT revoked_at FROM tokens WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        let changed = match revoked_at {
            None => return Err(StoreError::NotFound { id }),
            Some(Some(_)) => false,
            Some(None) => {
                let rev = next_rev(&tx).map_err(err)?;
                tx.execute(
                    "UPDATE tokens SET revoked_at = ?1, rev = ?2, prev_digest = NULL, prev_valid_until = NULL,
                     revoked_reason = ?4 WHERE id = ?3",
                    params![now, rev, id, reason],
                )
                .map_err(err)?;
                add_event(&tx, id, now, "revoked", actor, detail).map_err(err)?;
                true
            }
        };
        tx.commit().map_err(err)?;
        Ok((self.get(id)?, changed))
    }

    /// Gives a token a new secret, keeping id, user, label, scopes, expiry and usage. With a grace period
    /// the old secret keeps working until it ends; without, it stops at once.
    fn rotate(
        &mut self,
        id: i64,
        grace: Option<Duration>,
        actor: &str,
    ) -> Result<(TokenRecord, Token), StoreError> {
        let err = |e| to_err(&self.path, e);
        let token = Token::generate();
        let now = unix_now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let row: Option<(Vec<u8>, Option<i64>)> = tx
            .query_row(
                "SELECT digest, revoked_at FROM tokens WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err)?;
        let old_digest = match row {
            None => return Err(StoreError::NotFound { id }),
            Some((_, Some(_))) => return Err(StoreError::Revoked { id }),
            Some((d, None)) => d,
        };
        // Checked by the callers (`fields::grace_until`); saturated here, never wrapped.
        let until = grace
            .filter(|g| g.as_secs() > 0)
            .map(|g| crate::tokens::fields::grace_until_saturating(now, g));
        let prev = until.map(|_| old_digest);
        let rev = next_rev(&tx).map_err(err)?;
        tx.execute(
            "UPDATE tokens SET digest = ?1, prev_digest = ?2, prev_valid_until = ?3, rotated_at = ?4, rev = ?5
             WHERE id = ?6",
            params![&token.digest().0[..], prev, until, now, rev, id],
        )
        .map_err(err)?;
        let detail = match until {
            Some(u) => format!(
                "old secret valid for {}s more, until {}",
                u - now,
                rfc3339(u)
            ),
            None => "old secret stopped at once".to_string(),
        };
        add_event(&tx, id, now, "rotated", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok((self.get(id)?, token))
    }

    /// Number of tokens and the highest id, to size the index before loading it.
    fn token_counts(&mut self) -> Result<(usize, i64), StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM tokens",
                [],
                |r| Ok((r.get::<_, i64>(0)? as usize, r.get(1)?)),
            )
            .map_err(|e| to_err(&self.path, e))
    }

    /// Streams changed rows to `f` without collecting them (the full load at start-up).
    fn for_each_change(&mut self, rev: i64, f: &mut dyn FnMut(IndexRow)) -> Result<(), StoreError> {
        let err = |e| to_err(&self.path, e);
        let mut stmt = self.conn.prepare_cached(CHANGES).map_err(err)?;
        let mut rows = stmt.query([rev]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            // Blobs and text are read in place (no copy per row: the start-up load reads a million).
            let blob = |i: usize| -> Result<Option<&[u8]>, StoreError> {
                match r.get_ref(i).map_err(err)? {
                    rusqlite::types::ValueRef::Blob(b) => Ok(Some(b)),
                    _ => Ok(None),
                }
            };
            let digest = blob(2)?.unwrap_or(&[]);
            let prev = blob(3)?;
            let scopes = match r.get_ref(5).map_err(err)? {
                rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t).unwrap_or(""),
                _ => "",
            };
            let revoked_at: Option<i64> = r.get(7).map_err(err)?;
            let Some(digest) = Digest::from_slice(digest) else {
                log::error!(
                    "database {}: token row has a malformed digest; skipped",
                    self.path.display()
                );
                continue;
            };
            f(IndexRow {
                id: r.get(0).map_err(err)?,
                user: r.get(1).map_err(err)?,
                digest,
                prev_digest: prev.and_then(Digest::from_slice),
                prev_valid_until: r.get(4).map_err(err)?,
                scopes: split_scopes(scopes),
                expires_at: r.get(6).map_err(err)?,
                revoked: revoked_at.is_some(),
                rev: r.get(8).map_err(err)?,
                bound_cert: blob(9)?.and_then(|b| b.try_into().ok()),
                rate_limit: parse_limit(
                    r.get::<_, Option<String>>(10).map_err(err)?.as_deref(),
                    Rate::parse,
                ),
                quota: parse_limit(
                    r.get::<_, Option<String>>(11).map_err(err)?.as_deref(),
                    Quota::parse,
                ),
                quota_used: r.get(12).map_err(err)?,
                quota_period: r.get(13).map_err(err)?,
                leaked: revoked_at.is_some()
                    && r.get::<_, Option<String>>(14).map_err(err)?.as_deref() == Some(LEAKED),
                access: Access::parse(
                    r.get::<_, Option<String>>(15).map_err(err)?.as_deref(),
                    r.get::<_, Option<String>>(16).map_err(err)?.as_deref(),
                ),
            });
        }
        Ok(())
    }

    /// Adds usage counted in memory, in one transaction. Counts add up, so several gateways can share a
    /// database; `last_used_at` only moves forward. The quota totals the batch left are returned and
    /// appended to the quota feed in the same transaction.
    ///
    /// The batch id is not recorded: a local transaction either commits or reports the failure, so a
    /// retried batch was never written.
    fn flush_usage(&mut self, batch: &UsageBatch) -> Result<Vec<QuotaTotal>, StoreError> {
        let deltas = &batch.deltas;
        let err = |e| to_err(&self.path, e);
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut totals = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE tokens SET use_count = use_count + ?1,
                     last_used_at = MAX(COALESCE(last_used_at, 0), ?2) WHERE id = ?3",
                )
                .map_err(err)?;
            // See `QuotaUse`: added within the period (?1 to ?4), started over after an earlier one,
            // dropped when the stored period is later.
            let mut quota = tx
                .prepare_cached(
                    "UPDATE tokens SET
                        quota_used = CASE WHEN quota_period IS NULL OR quota_period < ?1 THEN ?2
                                          WHEN quota_period < ?4 THEN quota_used + ?2
                                          ELSE quota_used END,
                        quota_period = CASE WHEN quota_period IS NULL OR quota_period < ?4 THEN ?1
                                            ELSE quota_period END
                     WHERE id = ?3 RETURNING quota_period, quota_used",
                )
                .map_err(err)?;
            for d in deltas {
                if d.uses > 0 {
                    stmt.execute(params![d.uses as i64, d.last_used_at, d.id])
                        .map_err(err)?;
                }
                if let Some(q) = d.quota.filter(|q| q.count > 0) {
                    let row = quota
                        .query_row(params![q.start, q.count as i64, d.id, q.end], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                        })
                        .optional()
                        .map_err(err)?;
                    if let Some((p, used)) = row {
                        totals.push(QuotaTotal {
                            id: d.id,
                            period_start: p,
                            total: used.max(0) as u64,
                        });
                    }
                }
            }
        }
        SqliteStore::append_quota_feed(&tx, &batch.node, &totals, unix_now()).map_err(err)?;
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
        let err = |e| to_err(&self.path, e);
        let now = unix_now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut record = tx
            .query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM tokens WHERE id = ?1"),
                [id],
                record_from_row,
            )
            .optional()
            .map_err(err)?
            .ok_or(StoreError::NotFound { id })?;
        if record.revoked_at.is_some() {
            return Err(StoreError::Revoked { id });
        }
        let Some(detail) = patch.apply(&mut record) else {
            return Ok((record, false));
        };
        let rev = next_rev(&tx).map_err(err)?;
        tx.execute(
            "UPDATE tokens SET label = ?1, expires_at = ?2, rate_limit = ?3, quota = ?4, rev = ?5
             WHERE id = ?6",
            params![
                record.label,
                record.expires_at,
                record.rate_limit.map(|x| x.to_string()),
                record.quota.map(|x| x.to_string()),
                rev,
                id
            ],
        )
        .map_err(err)?;
        add_event(&tx, id, now, "updated", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok((record, true))
    }

    /// The file at the path is gone or is another file than the one opened.
    fn replaced(&self) -> bool {
        inode(&self.path) != Some(self.ino)
    }

    /// Runs a health query: is the database file still there and readable?
    fn check(&mut self) -> Result<(), StoreError> {
        let err = |e| to_err(&self.path, e);
        self.conn
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(err)?;
        Ok(())
    }
}

const RECORD_COLUMNS: &str =
    "id, user_id, label, scopes, created_at, expires_at, revoked_at, rotated_at, \
                              last_used_at, use_count, bound_cert_sha256, rate_limit, quota, quota_used, quota_period";

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let scopes: String = r.get(3)?;
    Ok(TokenRecord {
        id: r.get(0)?,
        user: r.get(1)?,
        label: r.get(2)?,
        scopes: split_scopes(&scopes),
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        revoked_at: r.get(6)?,
        rotated_at: r.get(7)?,
        last_used_at: r.get(8)?,
        use_count: r.get(9)?,
        bound_cert: r
            .get::<_, Option<Vec<u8>>>(10)?
            .and_then(|b| b.try_into().ok()),
        rate_limit: parse_limit(r.get::<_, Option<String>>(11)?.as_deref(), Rate::parse),
        quota: parse_limit(r.get::<_, Option<String>>(12)?.as_deref(), Quota::parse),
        quota_used: r.get(13)?,
        quota_period: r.get(14)?,
    })
}

fn next_rev(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
    tx.query_row("SELECT COALESCE(MAX(rev), 0) + 1 FROM tokens", [], |r| {
        r.get(0)
    })
}

fn add_event(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    at: i64,
    event: &str,
    actor: &str,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO token_events (token_id, at, event, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, at, event, actor, detail],
    )?;
    Ok(())
}

/// Creates the database file with mode 0600 if it does not exist yet (SQLite gives its -wal and -shm files
/// the same mode).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Migration 5: the quota feed (see quota_feed.rs).
const QUOTA_FEED_MIGRATION: &str =
    "CREATE TABLE quota_feed_head (one_row INTEGER PRIMARY KEY CHECK (one_row = 1), seq INTEGER NOT NULL);
    INSERT INTO quota_feed_head (one_row, seq) VALUES (1, 0);
    CREATE TABLE quota_feed (
        seq    INTEGER PRIMARY KEY,
        node   TEXT    NOT NULL,
        at     INTEGER NOT NULL,
        totals BLOB    NOT NULL
    );";

#[cfg(test)]
mod tests {
    //! SQLite-only behaviour; the operations themselves are checked on both backends by
    //! `tests/store_contract.rs`.
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("sub/t.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn file_is_private_and_migrated() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, mut s) = store();
        let mode = std::fs::metadata(dir.path().join("sub/t.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            s.schema_version().unwrap(),
            (MIGRATIONS.len() as i64, MIGRATIONS.len() as i64)
        );
    }

    #[test]
    fn the_event_log_refuses_edits() {
        let (_d, mut s) = store();
        let new = NewToken {
            user: "alice".into(),
            label: "hive".into(),
            ..Default::default()
        };
        s.create_many(&[new], "cli").unwrap();
        assert!(s.conn.execute("DELETE FROM token_events", []).is_err());
        assert!(s
            .conn
            .execute("UPDATE token_events SET actor = 'x'", [])
            .is_err());
    }

    #[test]
    fn v1_database_upgrades_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch("PRAGMA user_version = 1").unwrap();
            c.execute(
                "INSERT INTO tokens (user_id, label, digest, created_at, rev) VALUES ('u', 'l', ?1, 5, 1)",
                [&Digest::of("x").0[..]],
            )
            .unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let r = s.list(None).unwrap();
        assert_eq!(r[0].scopes, Vec::<String>::new());
        assert_eq!(r[0].bound_cert, None);
        assert_eq!(s.events(r[0].id).unwrap()[0].event, "created");
    }
}
