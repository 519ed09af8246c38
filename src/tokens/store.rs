//! SQLite, the source of truth: schema migrations, token create/list/show/revoke/rotate, the append-only
//! lifecycle event log, the change feed the index syncs from, and the batched usage flush.
//!
//! Every change to a token (create, revoke, rotate) sets its `rev` to one more than the highest `rev` in
//! the table, inside one `BEGIN IMMEDIATE` transaction, so revisions grow in commit order and a reader can
//! ask for `rev > last_seen`. Usage counters are not changes: they never touch `rev`.
//! The database runs in WAL mode with `synchronous = FULL`: a committed token survives `kill -9` and power
//! loss. The file is created with mode 0600.

pub use super::fields::{parse_rfc3339, rfc3339, unix_now};
use super::format::{Digest, Token};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
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
];

/// How long a command waits for another writer before giving up with [`StoreError::Busy`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no token with id {id}")]
    NotFound { id: i64 },
    #[error("token {id} is revoked")]
    Revoked { id: i64 },
    #[error("the database {path} is locked by another writer; gave up after {waited:?}")]
    Busy { path: String, waited: Duration },
    #[error("the database {path} has schema version {found}, newer than this tokengate knows ({known}); upgrade tokengate")]
    SchemaTooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
}

/// A token's metadata as stored (never the secret; the digest stays inside this module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub user: String,
    pub label: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub rotated_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub use_count: i64,
    /// The SHA-256 of the certificate (DER) this token is bound to.
    pub bound_cert: Option<[u8; 32]>,
}

/// A token's status at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Revoked,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Revoked => "revoked",
            Status::Expired => "expired",
        }
    }
}

/// The public JSON shape of a token (CLI `--json` and the admin API).
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: i64,
    pub user: String,
    pub label: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub rotated_at: Option<String>,
    pub last_used_at: Option<String>,
    pub use_count: i64,
    pub status: Status,
    /// Lower-case hex of the bound certificate's SHA-256; null when unbound.
    pub bound_cert_sha256: Option<String>,
}

impl TokenRecord {
    pub fn status(&self, now: i64) -> Status {
        if self.revoked_at.is_some() {
            Status::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            Status::Expired
        } else {
            Status::Active
        }
    }

    pub fn view(&self, now: i64) -> TokenView {
        TokenView {
            id: self.id,
            user: self.user.clone(),
            label: self.label.clone(),
            scopes: self.scopes.clone(),
            created_at: rfc3339(self.created_at),
            expires_at: self.expires_at.map(rfc3339),
            revoked_at: self.revoked_at.map(rfc3339),
            rotated_at: self.rotated_at.map(rfc3339),
            last_used_at: self.last_used_at.map(rfc3339),
            use_count: self.use_count,
            status: self.status(now),
            bound_cert_sha256: self.bound_cert.map(|d| hex(&d)),
        }
    }
}

/// One entry of a token's lifecycle log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    #[serde(serialize_with = "ser_time")]
    pub at: i64,
    pub event: String,
    pub actor: String,
    pub detail: Option<String>,
}

fn ser_time<S: serde::Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// What the index needs of a changed token.
#[derive(Debug, Clone)]
pub struct IndexRow {
    pub id: i64,
    pub user: String,
    pub digest: Digest,
    pub prev_digest: Option<Digest>,
    pub prev_valid_until: Option<i64>,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    pub revoked: bool,
    pub rev: i64,
    pub bound_cert: Option<[u8; 32]>,
}

/// What a new token is made of.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub user: String,
    pub label: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    /// Bind the token to the certificate with this SHA-256 (of its DER).
    pub bound_cert: Option<[u8; 32]>,
}

/// Pending usage for one token, as flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageDelta {
    pub id: i64,
    pub uses: u64,
    pub last_used_at: i64,
}

/// One connection to the token database. Open one per thread that needs it.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens an existing database, never creating one: background loops use this so that a database
    /// deleted under a running gateway is reported, not silently replaced by an empty one.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Create {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the database file is missing",
                ),
            });
        }
        Store::open(path)
    }

    /// Opens (creating with mode 0600 if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
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
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.init()?;
        Ok(store)
    }

    fn init(&mut self) -> Result<(), StoreError> {
        let err = |e| to_err(&self.path, e);
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // journal_mode answers with a row, so it is queried rather than executed.
        let _: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        self.conn
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(err)?;
        self.migrate()
    }

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
}

/// Maps a SQLite error to a [`StoreError`], recognising a database locked by another writer.
fn to_err(path: &Path, source: rusqlite::Error) -> StoreError {
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

impl Store {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a token; returns its record and the plaintext, which exists nowhere else.
    pub fn create(
        &mut self,
        new: &NewToken,
        actor: &str,
    ) -> Result<(TokenRecord, Token), StoreError> {
        let (id, token) = self
            .create_many(std::slice::from_ref(new), actor)?
            .pop()
            .expect("one token");
        Ok((self.get(id)?, token))
    }

    /// Creates tokens in one transaction (one, or many for seeding and imports). Returns each id with its
    /// plaintext.
    pub fn create_many(
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
                                         bound_cert_sha256)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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
                        new.bound_cert.as_ref().map(|d| &d[..])
                    ])
                    .map_err(err)?;
                let id = tx.last_insert_rowid();
                let mut detail = match new.expires_at {
                    Some(e) => format!("expires {}", rfc3339(e)),
                    None => "permanent".to_string(),
                };
                if let Some(d) = &new.bound_cert {
                    detail.push_str(&format!(", bound to certificate {}", hex(d)));
                }
                add_event(&tx, id, now, "created", actor, Some(&detail)).map_err(err)?;
                out.push((id, token));
            }
        }
        tx.commit().map_err(err)?;
        Ok(out)
    }

    /// One token's metadata.
    pub fn get(&self, id: i64) -> Result<TokenRecord, StoreError> {
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
    pub fn list(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
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
    pub fn events(&self, id: i64) -> Result<Vec<Event>, StoreError> {
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

    /// Revokes a token at once. Returns the record and whether this call changed it (false: already revoked).
    pub fn revoke(&mut self, id: i64, actor: &str) -> Result<(TokenRecord, bool), StoreError> {
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
                    "UPDATE tokens SET revoked_at = ?1, rev = ?2, prev_digest = NULL, prev_valid_until = NULL
                     WHERE id = ?3",
                    params![now, rev, id],
                )
                .map_err(err)?;
                add_event(&tx, id, now, "revoked", actor, None).map_err(err)?;
                true
            }
        };
        tx.commit().map_err(err)?;
        Ok((self.get(id)?, changed))
    }

    /// Gives a token a new secret, keeping id, user, label, scopes, expiry and usage. With a grace period
    /// the old secret keeps working until it ends; without, it stops at once.
    pub fn rotate(
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
        let grace_secs = grace.map(|g| g.as_secs() as i64).filter(|&g| g > 0);
        let (prev, until) = match grace_secs {
            Some(g) => (Some(old_digest), Some(now + g)),
            None => (None, None),
        };
        let rev = next_rev(&tx).map_err(err)?;
        tx.execute(
            "UPDATE tokens SET digest = ?1, prev_digest = ?2, prev_valid_until = ?3, rotated_at = ?4, rev = ?5
             WHERE id = ?6",
            params![&token.digest().0[..], prev, until, now, rev, id],
        )
        .map_err(err)?;
        let detail = match grace_secs {
            Some(g) => format!("old secret valid for {g}s more, until {}", rfc3339(now + g)),
            None => "old secret stopped at once".to_string(),
        };
        add_event(&tx, id, now, "rotated", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok((self.get(id)?, token))
    }

    /// Number of tokens and the highest id, to size the index before loading it.
    pub fn token_counts(&self) -> Result<(usize, i64), StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM tokens",
                [],
                |r| Ok((r.get::<_, i64>(0)? as usize, r.get(1)?)),
            )
            .map_err(|e| to_err(&self.path, e))
    }

    /// SQLite's `data_version`: changes whenever another connection commits.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        let err = |e| to_err(&self.path, e);
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(err)
    }

    /// Every token changed after revision `rev`, in revision order. `changes_since(0)` loads everything.
    pub fn changes_since(&self, rev: i64) -> Result<Vec<IndexRow>, StoreError> {
        let mut out = Vec::new();
        self.for_each_change(rev, |row| out.push(row))?;
        Ok(out)
    }

    /// Streams changed rows to `f` without collecting them (the full load at start-up).
    pub fn for_each_change(&self, rev: i64, mut f: impl FnMut(IndexRow)) -> Result<(), StoreError> {
        let err = |e| to_err(&self.path, e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, user_id, digest, prev_digest, prev_valid_until, scopes, expires_at, revoked_at, rev,
                        bound_cert_sha256
                 FROM tokens WHERE rev > ?1 ORDER BY rev",
            )
            .map_err(err)?;
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
            });
        }
        Ok(())
    }

    /// Adds usage counted in memory, in one transaction. Counts add up, so several gateways can share a
    /// database; `last_used_at` only moves forward.
    pub fn flush_usage(&mut self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        let err = |e| to_err(&self.path, e);
        if deltas.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE tokens SET use_count = use_count + ?1,
                     last_used_at = MAX(COALESCE(last_used_at, 0), ?2) WHERE id = ?3",
                )
                .map_err(err)?;
            for d in deltas {
                stmt.execute(params![d.uses as i64, d.last_used_at, d.id])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Runs a health query: is the database file still there and readable?
    pub fn check(&self) -> Result<(), StoreError> {
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
                              last_used_at, use_count, bound_cert_sha256";

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
    })
}

/// Lower-case hex of bytes (certificate thumbprints).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a SHA-256 thumbprint written as 64 hex digits (`:` separators, as `openssl x509 -fingerprint`
/// prints them, are allowed).
pub fn parse_sha256_hex(s: &str) -> Result<[u8; 32], String> {
    let digits: String = s.trim().chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not a SHA-256 thumbprint (64 hex digits)"));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).expect("hex");
    }
    Ok(out)
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split_ascii_whitespace().map(str::to_string).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("sub/t.db")).unwrap();
        (dir, s)
    }

    fn new(user: &str) -> NewToken {
        NewToken {
            user: user.into(),
            label: "hive scale".into(),
            ..Default::default()
        }
    }

    #[test]
    fn file_is_private_and_migrated() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, s) = store();
        let mode = std::fs::metadata(dir.path().join("sub/t.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let v: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    #[test]
    fn create_list_revoke_with_revisions_and_events() {
        let (_d, mut s) = store();
        let (a, ta) = s.create(&new("alice"), "cli").unwrap();
        let (b, _) = s.create(&new("bob"), "cli").unwrap();
        let many = s.create_many(&[new("carol"), new("dave")], "seed").unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(s.list(Some("dave")).unwrap()[0].id, many[1].0);
        let rev_b = s.changes_since(0).unwrap()[1].rev;
        assert!(s
            .changes_since(rev_b)
            .unwrap()
            .iter()
            .all(|r| r.rev > rev_b));
        assert_eq!(s.list(None).unwrap().len(), 4);
        assert_eq!(s.list(Some("alice")).unwrap(), vec![a.clone()]);
        let all = s.changes_since(0).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].digest, ta.digest());
        let last = all[3].rev;
        assert!(s.changes_since(last).unwrap().is_empty());

        let (r, changed) = s.revoke(b.id, "cli").unwrap();
        assert!(changed && r.status(unix_now()) == Status::Revoked);
        assert!(!s.revoke(b.id, "cli").unwrap().1);
        let ch = s.changes_since(last).unwrap();
        assert_eq!(ch.len(), 1);
        assert!(ch[0].revoked && ch[0].rev > last);
        let ev: Vec<_> = s
            .events(b.id)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(ev, ["created", "revoked"]);
        assert!(matches!(
            s.revoke(999, "cli"),
            Err(StoreError::NotFound { id: 999 })
        ));
        // The event log refuses edits.
        assert!(s.conn.execute("DELETE FROM token_events", []).is_err());
    }

    #[test]
    fn rotate_keeps_identity_and_grace() {
        let (_d, mut s) = store();
        let (a, old) = s.create(&new("alice"), "cli").unwrap();
        let (r, fresh) = s
            .rotate(a.id, Some(Duration::from_secs(60)), "cli")
            .unwrap();
        assert_eq!((r.id, &r.user, &r.label), (a.id, &a.user, &a.label));
        let row = s.changes_since(0).unwrap().pop().unwrap();
        assert_eq!(row.digest, fresh.digest());
        assert_eq!(row.prev_digest, Some(old.digest()));
        assert!(row.prev_valid_until.unwrap() >= unix_now() + 59);
        let (_, _) = s.rotate(a.id, None, "cli").unwrap();
        let row = s.changes_since(0).unwrap().pop().unwrap();
        assert_eq!(row.prev_digest, None);
        s.revoke(a.id, "cli").unwrap();
        assert!(matches!(
            s.rotate(a.id, None, "cli"),
            Err(StoreError::Revoked { .. })
        ));
    }

    #[test]
    fn usage_adds_up_and_moves_forward() {
        let (_d, mut s) = store();
        let (a, _) = s.create(&new("alice"), "cli").unwrap();
        s.flush_usage(&[UsageDelta {
            id: a.id,
            uses: 3,
            last_used_at: 100,
        }])
        .unwrap();
        s.flush_usage(&[UsageDelta {
            id: a.id,
            uses: 2,
            last_used_at: 50,
        }])
        .unwrap();
        let r = s.get(a.id).unwrap();
        assert_eq!((r.use_count, r.last_used_at), (5, Some(100)));
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
        let s = Store::open(&path).unwrap();
        let r = s.list(None).unwrap();
        assert_eq!(r[0].scopes, Vec::<String>::new());
        assert_eq!(s.events(r[0].id).unwrap()[0].event, "created");
    }
}
