//! The store, the source of truth for tokens: one interface ([`Store`]) over two backends —
//! [`sqlite`] (embedded, the default: one file, nothing to install) and [`pg`] (PostgreSQL: a fleet of gateways
//! sharing one database) — with the same operations, semantics, JSON shapes and errors. One contract test
//! suite (`tests/store_contract.rs`) runs unchanged against both.
//!
//! Semantics both keep: every change to a token (create, revoke, rotate) gets the next revision (`rev`),
//! and revisions become visible in commit order, so a reader may ask for `rev > last_seen` and never miss
//! one; usage is added as increments and never touches `rev`; `token_events` is append-only; a flush
//! that changes shared quota counts appends them to the quota feed ([`quota_feed`]), whose entries also
//! become visible in commit order.

pub mod access;
pub mod groups;
mod groups_pg;
mod groups_sqlite;
pub mod leaks;
pub mod pg;
mod pg_sql;
pub mod pg_url;
pub mod quota_feed;
pub mod sqlite;
pub mod ticket_keys;

use super::fields::Quota;
pub use super::fields::{parse_rfc3339, rfc3339, unix_now};
use super::format::{Digest, Token};
use crate::config::Rate;
pub use access::{Access, Member};
pub use groups::GroupStore;
pub use leaks::LeakStore;
pub use pg_url::PgUrl;
pub use quota_feed::QuotaFeedStore;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// The revoke reason of a token reported leaked (`tokens.revoked_reason`).
pub const LEAKED: &str = "leaked";

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
    /// The PostgreSQL server cannot be reached, refused the connection (a failed login too), or the
    /// connection broke: retry later. `url` never shows a password; the message includes the causes.
    #[error("database {url} is unavailable: {}", pg_url::pg_reason(.error))]
    Unavailable {
        url: String,
        error: ::postgres::Error,
    },
    /// The PostgreSQL server answered a statement with an error.
    #[error("database {url}: {}", pg_url::pg_reason(.error))]
    Postgres {
        url: String,
        error: ::postgres::Error,
    },
    /// `store copy` into a store that already holds tokens, without `--force`.
    #[error("{target} already holds {tokens} tokens; copy into an empty store, or pass --force to replace them")]
    NotEmpty { target: String, tokens: i64 },
    /// The store URL (shown with its password redacted) cannot be used.
    #[error("store URL {url}: {problem}")]
    BadUrl { url: String, problem: String },
    #[error("no group named {name:?}")]
    NoGroup { name: String },
    #[error("no license named {name:?}")]
    NoLicense { name: String },
    /// A group or license of that name exists already.
    #[error("{what} already exists")]
    Exists { what: String },
    /// Every seat of the license is taken.
    #[error("license {name:?}: all {seats} seats are taken; revoke a seat first")]
    SeatsTaken { name: String, seats: i64 },
    /// The member named is not in the group or does not hold the license.
    #[error("{what}")]
    NotMember { what: String },
}

impl StoreError {
    /// The store could not be reached (as opposed to a refused operation): admin writes answer 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
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
    /// The token's own rate limit (all routes together).
    pub rate_limit: Option<Rate>,
    /// Accepted requests allowed per calendar period.
    pub quota: Option<Quota>,
    /// Accepted requests counted in the period starting at `quota_period` (unix seconds), all nodes.
    pub quota_used: i64,
    pub quota_period: Option<i64>,
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
    /// The token's own scopes (empty with no roles: full access).
    pub scopes: Vec<String>,
    /// Role names (from `[roles]`).
    pub roles: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub rotated_at: Option<String>,
    pub last_used_at: Option<String>,
    pub use_count: i64,
    pub status: Status,
    /// Lower-case hex of the bound certificate's SHA-256; null when unbound.
    pub bound_cert_sha256: Option<String>,
    /// `5/s`-style, or null.
    pub rate_limit: Option<String>,
    /// `100000/day`-style, or null.
    pub quota: Option<String>,
    /// Accepted requests in the current quota period (0 without a quota).
    pub quota_used: i64,
    /// When the current quota period ends (null without a quota).
    pub quota_resets_at: Option<String>,
}

impl TokenRecord {
    /// Accepted requests counted in the quota period that contains `now` (0 once a new period began).
    pub fn quota_used_now(&self, now: i64) -> i64 {
        match (self.quota, self.quota_period) {
            (Some(q), Some(p)) if q.period.index(p) == q.period.index(now) => self.quota_used,
            _ => 0,
        }
    }

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
        let (scopes, roles) = crate::tokens::fields::split_grants(&self.scopes);
        TokenView {
            id: self.id,
            user: self.user.clone(),
            label: self.label.clone(),
            scopes,
            roles,
            created_at: rfc3339(self.created_at),
            expires_at: self.expires_at.map(rfc3339),
            revoked_at: self.revoked_at.map(rfc3339),
            rotated_at: self.rotated_at.map(rfc3339),
            last_used_at: self.last_used_at.map(rfc3339),
            use_count: self.use_count,
            status: self.status(now),
            bound_cert_sha256: self.bound_cert.map(|d| hex(&d)),
            rate_limit: self.rate_limit.map(|r| r.to_string()),
            quota: self.quota.map(|q| q.to_string()),
            quota_used: self.quota_used_now(now),
            quota_resets_at: self
                .quota
                .map(|q| rfc3339(q.period.start_of(q.period.index(now) + 1))),
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
    pub rate_limit: Option<Rate>,
    pub quota: Option<Quota>,
    /// The shared quota count, in the period starting at `quota_period`.
    pub quota_used: i64,
    pub quota_period: Option<i64>,
    /// Revoked because it was reported leaked (the refusal says so).
    pub leaked: bool,
    /// Its groups (and their roles) and licenses, read with the row.
    pub access: Access,
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
    pub rate_limit: Option<Rate>,
    pub quota: Option<Quota>,
}

/// The detail of a token's `created` event: expiry, and binding and limits when set.
pub(crate) fn created_detail(new: &NewToken) -> String {
    let mut detail = match new.expires_at {
        Some(e) => format!("expires {}", rfc3339(e)),
        None => "permanent".to_string(),
    };
    if let Some(d) = &new.bound_cert {
        detail.push_str(&format!(", bound to certificate {}", hex(d)));
    }
    if let Some(r) = &new.rate_limit {
        detail.push_str(&format!(", rate limit {r}"));
    }
    if let Some(q) = &new.quota {
        detail.push_str(&format!(", quota {q}"));
    }
    detail
}

/// A stored rate or quota (`5/s`, `100/day`); one that does not parse any more is logged and dropped.
pub(crate) fn parse_limit<T>(
    text: Option<&str>,
    parse: fn(&str) -> Result<T, String>,
) -> Option<T> {
    let text = text?;
    parse(text)
        .map_err(|e| log::error!("store: a token's limit {text:?} does not parse ({e}); ignored"))
        .ok()
}

/// A change to a token's editable fields; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenPatch {
    pub label: Option<String>,
    pub expires_at: Option<Option<i64>>,
    pub rate_limit: Option<Option<Rate>>,
    pub quota: Option<Option<Quota>>,
}

impl TokenPatch {
    pub fn is_empty(&self) -> bool {
        *self == TokenPatch::default()
    }

    /// Applies the patch to `r`; returns the event detail describing what changed (`None`: nothing).
    pub fn apply(&self, r: &mut TokenRecord) -> Option<String> {
        let mut changes = Vec::new();
        if let Some(l) = &self.label {
            if *l != r.label {
                changes.push(format!("label {:?}", l));
                r.label = l.clone();
            }
        }
        if let Some(e) = self.expires_at {
            if e != r.expires_at {
                changes.push(match e {
                    Some(at) => format!("expires {}", rfc3339(at)),
                    None => "permanent".into(),
                });
                r.expires_at = e;
            }
        }
        if let Some(rl) = self.rate_limit {
            if rl != r.rate_limit {
                changes.push(format!(
                    "rate limit {}",
                    rl.map_or("none".into(), |x| x.to_string())
                ));
                r.rate_limit = rl;
            }
        }
        if let Some(q) = self.quota {
            if q != r.quota {
                changes.push(format!(
                    "quota {}",
                    q.map_or("none".into(), |x| x.to_string())
                ));
                r.quota = q;
            }
        }
        (!changes.is_empty()).then(|| changes.join(", "))
    }
}

/// Pending usage for one token, as flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageDelta {
    pub id: i64,
    pub uses: u64,
    pub last_used_at: i64,
    /// Accepted requests counted against the token's quota.
    pub quota: Option<QuotaUse>,
}

/// Accepted requests a node counted against a token's quota in one calendar period.
///
/// The store adds them to the stored count when that count is of the same period, or of a shorter one
/// inside it (the quota was changed from a day to a month: the day's count is the month's so far); starts
/// the count over when the stored period began earlier; and drops them when it began at `end` or later
/// (a node that was down across the change of period: too late to count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUse {
    /// The period's first second and the next period's (unix seconds).
    pub start: i64,
    pub end: i64,
    pub count: u64,
}

/// A token's shared quota count after a flush added to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaTotal {
    pub id: i64,
    pub period_start: i64,
    pub total: u64,
}

/// What the quota feed brings a reader at feed position `after` (see [`quota_feed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaChanges {
    /// The position the reader is at once it has applied `totals`.
    pub position: i64,
    /// The shared counts that other nodes' flushes left, in commit order (a token may appear more than
    /// once); or, when `whole`, every token's current count.
    pub totals: Vec<QuotaTotal>,
    /// The entries after `after` were no longer there (pruned while the reader was away, or the store
    /// was replaced): `totals` is every token's count instead, read after `position`.
    pub whole: bool,
    /// More entries follow `position` (a few are read at a time): ask again.
    pub more: bool,
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

pub(crate) fn split_scopes(s: &str) -> Vec<String> {
    s.split_ascii_whitespace().map(str::to_string).collect()
}

/// One flush of usage: its id (the node that counted it, a sequence number) and the increments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBatch {
    pub node: String,
    pub seq: u64,
    pub deltas: Vec<UsageDelta>,
}

impl UsageBatch {
    /// A batch without an id worth recording (tools and tests).
    pub fn once(deltas: Vec<UsageDelta>) -> UsageBatch {
        use rand_core::RngCore;
        let mut id = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut id);
        UsageBatch {
            node: hex(&id),
            seq: 1,
            deltas,
        }
    }
}

/// Where the tokens live.
#[derive(Debug, Clone)]
pub enum Location {
    /// An SQLite database file (created, mode 0600, on first use).
    Sqlite(PathBuf),
    /// A PostgreSQL database (the URL prints with its password as `***`).
    Postgres(Box<PgUrl>),
}

impl Location {
    /// The location a validated `[store]` section names (a URL is parsed here: TLS mode, CA file).
    pub fn from_config(config: &crate::config::StoreConfig) -> Result<Location, StoreError> {
        Ok(match config {
            crate::config::StoreConfig::Sqlite { path } => Location::Sqlite(path.clone()),
            crate::config::StoreConfig::Postgres { url, .. } => {
                Location::Postgres(Box::new(PgUrl::parse(url.expose())?))
            }
        })
    }

    /// Why the connection to the store is open to whoever is on the path, if it is (see
    /// [`PgUrl::transport_warning`]); never for SQLite.
    pub fn warning(&self) -> Option<String> {
        match self {
            Location::Sqlite(_) => None,
            Location::Postgres(u) => u.transport_warning(),
        }
    }

    /// The location for messages: the path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(u) => u.to_string(),
        }
    }

    /// Parses a `store copy --to` target: `sqlite:PATH`, a PostgreSQL connection string (`postgres://...`
    /// or `host=... dbname=...` words), or a plain path. Anything else with a `=`, an `@` or a `:/` (a
    /// misspelt URL, broken key=value words) is refused, its password redacted, rather than taken for a file
    /// name; such a file is written `sqlite:PATH`.
    pub fn parse_target(target: &str) -> Result<Location, StoreError> {
        if let Some(path) = target.strip_prefix("sqlite:") {
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        let url_like = target.contains(":/") || target.contains(['@', '=']);
        if crate::config::store_url::form(target).is_some() || url_like {
            return Ok(Location::Postgres(Box::new(PgUrl::parse(target)?)));
        }
        Ok(Location::Sqlite(PathBuf::from(target)))
    }
}

/// The store's contract: what every backend does, with the same semantics, JSON shapes and errors (the
/// contract suite, `tests/store_contract.rs`, runs unchanged against both). One implementation per
/// backend: [`sqlite::SqliteStore`] and [`pg::PgStore`]; the quota feed's and the leak log's parts are
/// implemented beside their SQL ([`quota_feed::QuotaFeedStore`], [`leaks::LeakStore`],
/// [`ticket_keys::TicketKeyStore`], [`groups::GroupStore`]). How a backend
/// learns that another process changed the store (inotify, `LISTEN`) is its own: see `tokens::sync`.
///
/// Synchronous on purpose: the store is used from the CLI and from background threads, never from the
/// request path.
pub trait TokenStore:
    quota_feed::QuotaFeedStore
    + leaks::LeakStore
    + ticket_keys::TicketKeyStore
    + groups::GroupStore
    + Send
{
    /// Applies the migrations the store lacks (safe when several nodes start at once).
    fn migrate(&mut self) -> Result<(), StoreError>;

    /// The schema version applied and the newest this build knows.
    fn schema_version(&mut self) -> Result<(i64, i64), StoreError>;

    /// Creates a token; returns its record and the plaintext, which exists nowhere else.
    fn create(&mut self, new: &NewToken, actor: &str) -> Result<(TokenRecord, Token), StoreError> {
        let (id, token) = self
            .create_many(std::slice::from_ref(new), actor)?
            .pop()
            .expect("one token");
        Ok((self.get(id)?, token))
    }

    /// Creates tokens in one transaction. Returns each id with its plaintext, in order.
    fn create_many(
        &mut self,
        news: &[NewToken],
        actor: &str,
    ) -> Result<Vec<(i64, Token)>, StoreError>;

    /// One token's metadata.
    fn get(&mut self, id: i64) -> Result<TokenRecord, StoreError>;

    /// All tokens, optionally of one user, oldest first.
    fn list(&mut self, user: Option<&str>) -> Result<Vec<TokenRecord>, StoreError>;

    /// A token's lifecycle events, oldest first.
    fn events(&mut self, id: i64) -> Result<Vec<Event>, StoreError>;

    /// Revokes a token at once. Returns the record and whether this call changed it (false: already
    /// revoked; then no revision and no event).
    fn revoke(&mut self, id: i64, actor: &str) -> Result<(TokenRecord, bool), StoreError> {
        self.revoke_with(id, actor, None, None)
    }

    /// [`Self::revoke`] with a detail on the `revoked` event (a leak report's source and URL) and a
    /// reason the index keeps ([`LEAKED`]: the token answers "revoked: reported leaked").
    fn revoke_with(
        &mut self,
        id: i64,
        actor: &str,
        detail: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(TokenRecord, bool), StoreError>;

    /// Gives a token a new secret, keeping id, user, label, scopes, expiry and usage. With a grace period
    /// the old secret keeps working until it ends; without, it stops at once.
    fn rotate(
        &mut self,
        id: i64,
        grace: Option<Duration>,
        actor: &str,
    ) -> Result<(TokenRecord, Token), StoreError>;

    /// Number of tokens and the highest id, to size the index before loading it.
    fn token_counts(&mut self) -> Result<(usize, i64), StoreError>;

    /// Streams every token changed after revision `rev` to `f`, in revision order, without collecting
    /// them (the full load at start-up).
    fn for_each_change(&mut self, rev: i64, f: &mut dyn FnMut(IndexRow)) -> Result<(), StoreError>;

    /// Every token changed after revision `rev`, in revision order. `changes_since(0)` loads everything.
    fn changes_since(&mut self, rev: i64) -> Result<Vec<IndexRow>, StoreError> {
        let mut out = Vec::new();
        self.for_each_change(rev, &mut |row| out.push(row))?;
        Ok(out)
    }

    /// Adds usage counted in memory (increments; `last_used_at` only moves forward), at most once per
    /// batch id. Returns the shared quota counts of the tokens whose quota the batch added to, which the
    /// same transaction appends to the quota feed for the other nodes.
    fn flush_usage(&mut self, batch: &UsageBatch) -> Result<Vec<QuotaTotal>, StoreError>;

    /// Changes a token's label, expiry or limits (a change: new revision, one event). Returns the record
    /// and whether anything changed. Refused for a revoked token.
    fn update(
        &mut self,
        id: i64,
        patch: &TokenPatch,
        actor: &str,
    ) -> Result<(TokenRecord, bool), StoreError>;

    /// A health query: is the store there and readable?
    fn check(&mut self) -> Result<(), StoreError>;

    /// Everything a copy moves: every token row (digests included, never plaintexts), every event.
    fn export(&mut self) -> Result<Export, StoreError>;

    /// Loads an [`Export`] into this store, replacing what is there; `force` allows a non-empty target.
    fn import(&mut self, data: &Export, force: bool) -> Result<(), StoreError>;

    /// Whether what this connection opened was deleted or replaced since (SQLite: the file at its path is
    /// gone or another inode), so that a loop holding it opens the store again; a server never is.
    fn replaced(&self) -> bool {
        false
    }
}

/// One connection to the store, of whichever backend the location names. Open one per thread that needs
/// it; after an error that says the store is unavailable, drop it and open again later.
///
/// An enum (not a `Box<dyn TokenStore>`): the backends are two and known, and what only one of them has
/// (SQLite's `data_version` and head revision for the CLI's wait) stays reachable by a match instead of a
/// downcast. Every operation of the contract is reached through [`TokenStore`] (`Deref`): the only
/// `match`es on the backend are in opening and in dereferencing.
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(Box<pg::PgStore>),
}

impl Store {
    /// Opens the store, creating it (SQLite) and applying the migrations it lacks (both).
    pub fn open(location: &Location) -> Result<Store, StoreError> {
        Ok(match location {
            Location::Sqlite(p) => Store::Sqlite(sqlite::SqliteStore::open(p)?),
            Location::Postgres(u) => {
                let mut s = pg::PgStore::connect_to(u)?;
                s.migrate()?;
                Store::Postgres(Box::new(s))
            }
        })
    }

    /// Opens an existing store without creating or migrating it (background loops: a database that
    /// disappeared is reported, not silently replaced by an empty one).
    pub fn open_existing(location: &Location) -> Result<Store, StoreError> {
        Ok(match location {
            Location::Sqlite(p) => Store::Sqlite(sqlite::SqliteStore::open_existing(p)?),
            Location::Postgres(u) => Store::Postgres(Box::new(pg::PgStore::connect_to(u)?)),
        })
    }

    /// The backend, as the contract.
    pub fn backend(&mut self) -> &mut (dyn TokenStore + 'static) {
        match self {
            Store::Sqlite(s) => s,
            Store::Postgres(s) => &mut **s,
        }
    }
}

impl std::ops::Deref for Store {
    type Target = dyn TokenStore;
    fn deref(&self) -> &(dyn TokenStore + 'static) {
        match self {
            Store::Sqlite(s) => s,
            Store::Postgres(s) => &**s,
        }
    }
}

impl std::ops::DerefMut for Store {
    fn deref_mut(&mut self) -> &mut (dyn TokenStore + 'static) {
        self.backend()
    }
}

/// A whole store's contents, for `tokengate store copy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Export {
    pub tokens: Vec<ExportedToken>,
    /// (token id, event), in the order they were appended.
    pub events: Vec<(i64, Event)>,
}

/// One token row as stored (the digest, never a plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedToken {
    pub record: TokenRecord,
    pub digest: Digest,
    pub prev_digest: Option<Digest>,
    pub prev_valid_until: Option<i64>,
    pub rev: i64,
}
