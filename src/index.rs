//! The in-memory index that answers every request (digest → entry), its sync loop from SQLite, and the
//! usage counters with their batched flush.
//!
//! The map is a `papaya::HashMap`: readers take an epoch guard and never lock, block or allocate; writers
//! insert or remove single entries (no whole-map copies, so a change costs the same at 1M tokens as at 1).
//! Only the sync loop and this process's admin API write, through [`Index::apply`], serialised by the
//! `writer` mutex that also holds the id → digests bookkeeping readers never need.

use crate::clock;
use crate::store::{IndexRow, Store, StoreError, UsageDelta};
use crate::token::Digest;
use http::HeaderValue;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The scope the admin API requires; never implied by full access.
pub const ADMIN_SCOPE: &str = "admin";

/// What the gateway knows about one digest.
#[derive(Debug)]
pub struct Entry {
    pub token_id: i64,
    /// The digest this entry is stored under, compared in constant time after the lookup.
    pub digest: Digest,
    /// The owner's user id, ready to be a header value.
    pub user: HeaderValue,
    /// The token id, ready to be a header value.
    pub token_id_value: HeaderValue,
    /// Granted scopes; empty means full access.
    pub scopes: Box<[Box<str>]>,
    /// Unix seconds after which the token is expired (`u64::MAX`: never).
    pub expires_at: u64,
    /// Unix seconds after which this digest stops working (`u64::MAX`: never). Set on a rotated-out
    /// secret whose grace period runs.
    pub valid_until: u64,
    pub revoked: bool,
    /// Shared by all digests of one token (a rotation grace period has two).
    pub usage: Arc<Usage>,
}

impl Entry {
    /// Whether this token may use a route that requires `scope`. A token without scopes has full
    /// access to every scope except [`ADMIN_SCOPE`], which is only ever granted explicitly: a device
    /// token must never be able to manage other people's tokens.
    pub fn allows(&self, scope: &str) -> bool {
        if self.scopes.is_empty() {
            return scope != ADMIN_SCOPE;
        }
        self.scopes.iter().any(|s| &**s == scope)
    }

    /// Records one use: two relaxed atomic writes, no I/O.
    #[inline]
    pub fn record_use(&self, now: u64) {
        self.usage.uses.fetch_add(1, Ordering::Relaxed);
        if self.usage.last_used.load(Ordering::Relaxed) != now as i64 {
            self.usage.last_used.store(now as i64, Ordering::Relaxed);
        }
    }
}

/// Usage counted in memory since the last flush.
#[derive(Debug, Default)]
pub struct Usage {
    /// Uses not yet flushed.
    pub uses: AtomicU64,
    /// Unix seconds of the latest use (0: none since start).
    pub last_used: AtomicI64,
}

/// Digests are SHA-256 output, already uniform: their first eight bytes are the hash.
#[derive(Clone, Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `Digest` hashes as one `[u8; 32]` write (plus a length prefix write of 32, ignored by taking
        // the longest write).
        if bytes.len() >= 8 {
            self.0 = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

#[derive(Clone, Default)]
pub struct BuildDigestHasher;

impl BuildHasher for BuildDigestHasher {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// Per token: the digests it is indexed under and its shared usage counters.
struct Known {
    digests: Vec<Digest>,
    /// Store revision of the state applied; older rows are ignored (two loaders may race).
    rev: i64,
    usage: Arc<Usage>,
}

#[derive(Default)]
struct Writer {
    by_id: HashMap<i64, Known>,
    /// Tokens with a rotated-out digest still in its grace period: id → (digest, deadline).
    graced: HashMap<i64, (Digest, u64)>,
}

/// How the index's sync is doing, for `/healthz` and metrics.
#[derive(Debug, Default)]
pub struct SyncHealth {
    /// Unix seconds of the last successful sync check (0: never).
    pub last_sync: AtomicI64,
    /// Unix seconds of the last successful usage flush (0: never).
    pub last_flush: AtomicI64,
    /// The last sync error, cleared on success.
    pub sync_error: Mutex<Option<String>>,
    /// The last flush error, cleared on success.
    pub flush_error: Mutex<Option<String>>,
}

/// The digest → entry map.
pub struct Index {
    map: papaya::HashMap<Digest, Arc<Entry>, BuildDigestHasher>,
    writer: Mutex<Writer>,
    /// Highest store revision applied.
    last_rev: AtomicI64,
    pub health: SyncHealth,
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

impl Index {
    pub fn new() -> Index {
        Index {
            map: papaya::HashMap::with_hasher(BuildDigestHasher),
            writer: Mutex::new(Writer::default()),
            last_rev: AtomicI64::new(0),
            health: SyncHealth::default(),
        }
    }

    /// Looks a digest up. Lock-free; clones one `Arc`.
    #[inline]
    pub fn get(&self, digest: &Digest) -> Option<Arc<Entry>> {
        self.map.pin().get(digest).cloned()
    }

    /// Number of digests indexed (a token in a rotation grace period counts twice).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Highest store revision applied so far.
    pub fn last_rev(&self) -> i64 {
        self.last_rev.load(Ordering::Acquire)
    }

    /// Loads every change after [`Index::last_rev`] from the store.
    pub fn sync_from(&self, store: &Store) -> Result<usize, StoreError> {
        let mut n = 0;
        let from = self.last_rev();
        store.for_each_change(from, |row| {
            self.apply(&row);
            n += 1;
        })?;
        Ok(n)
    }

    /// Applies one changed token row. Idempotent; rows older than what was applied are still applied
    /// (they carry the full state of the token).
    pub fn apply(&self, row: &IndexRow) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let guard = self.map.guard();
        let Ok(user) = HeaderValue::from_str(&row.user) else {
            // Cannot be sent as a header: fail closed by not indexing it at all.
            log::error!(
                "token {} has a user id that is not a valid header value; it is not accepted",
                row.id
            );
            if let Some(k) = w.by_id.remove(&row.id) {
                for d in &k.digests {
                    self.map.remove(d, &guard);
                }
            }
            return;
        };
        let now = clock::now();
        let known = w.by_id.entry(row.id).or_insert_with(|| Known {
            digests: Vec::new(),
            rev: 0,
            usage: Arc::default(),
        });
        if row.rev < known.rev {
            return;
        }
        known.rev = row.rev;
        let usage = known.usage.clone();
        let entry = |digest: Digest, valid_until: u64, revoked: bool| Entry {
            token_id: row.id,
            digest,
            user: user.clone(),
            token_id_value: HeaderValue::from(row.id),
            scopes: row.scopes.iter().map(|s| s.as_str().into()).collect(),
            expires_at: row.expires_at.map(|e| e.max(0) as u64).unwrap_or(u64::MAX),
            valid_until,
            revoked,
            usage: usage.clone(),
        };
        let mut digests = vec![row.digest];
        let grace = match (row.revoked, row.prev_digest, row.prev_valid_until) {
            (false, Some(prev), Some(until)) if until > now as i64 && prev != row.digest => {
                Some((prev, until as u64))
            }
            _ => None,
        };
        if let Some((prev, _)) = grace {
            digests.push(prev);
        }
        for old in known.digests.iter().filter(|d| !digests.contains(d)) {
            self.map.remove(old, &guard);
        }
        self.map.insert(
            row.digest,
            Arc::new(entry(row.digest, u64::MAX, row.revoked)),
            &guard,
        );
        match grace {
            Some((prev, until)) => {
                self.map
                    .insert(prev, Arc::new(entry(prev, until, false)), &guard);
                w.graced.insert(row.id, (prev, until));
            }
            None => {
                w.graced.remove(&row.id);
            }
        }
        if let Some(k) = w.by_id.get_mut(&row.id) {
            k.digests = digests;
        }
        self.last_rev.fetch_max(row.rev, Ordering::AcqRel);
    }

    /// Drops rotated-out digests whose grace period is over. Requests already refuse them; this frees
    /// the memory.
    pub fn purge_expired_grace(&self) {
        let now = clock::now();
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let done: Vec<(i64, Digest)> = w
            .graced
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(id, (d, _))| (*id, *d))
            .collect();
        let guard = self.map.guard();
        for (id, d) in done {
            self.map.remove(&d, &guard);
            w.graced.remove(&id);
            if let Some(k) = w.by_id.get_mut(&id) {
                k.digests.retain(|x| *x != d);
            }
        }
    }

    /// Takes the usage counted since the last call, resetting the counters.
    pub fn take_usage(&self) -> Vec<UsageDelta> {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.by_id
            .iter()
            .filter_map(|(&id, k)| {
                let uses = k.usage.uses.swap(0, Ordering::Relaxed);
                (uses > 0).then(|| UsageDelta {
                    id,
                    uses,
                    last_used_at: k.usage.last_used.load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// Usage counted in memory but not flushed yet for a token: (uses, last used unix seconds or 0).
    pub fn pending_usage(&self, id: i64) -> (u64, i64) {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.by_id.get(&id).map_or((0, 0), |k| {
            (
                k.usage.uses.load(Ordering::Relaxed),
                k.usage.last_used.load(Ordering::Relaxed),
            )
        })
    }

    /// Puts usage back after a failed flush, so that the next flush retries it.
    pub fn restore_usage(&self, deltas: &[UsageDelta]) {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        for d in deltas {
            if let Some(k) = w.by_id.get(&d.id) {
                k.usage.uses.fetch_add(d.uses, Ordering::Relaxed);
            }
        }
    }

    /// Flushes pending usage to the store; on failure the counts are kept for the next try.
    pub fn flush_usage(&self, store: &mut Store) -> Result<usize, StoreError> {
        let deltas = self.take_usage();
        match store.flush_usage(&deltas) {
            Ok(()) => {
                self.health
                    .last_flush
                    .store(clock::now() as i64, Ordering::Relaxed);
                *self
                    .health
                    .flush_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                Ok(deltas.len())
            }
            Err(e) => {
                self.restore_usage(&deltas);
                *self
                    .health
                    .flush_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// A stop signal that wakes sleeping background threads at once.
#[derive(Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
    flag: AtomicBool,
}

impl Stop {
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.flag.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Sleeps up to `d`; returns true if stopped.
    pub fn wait(&self, d: Duration) -> bool {
        let g = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }
}

/// Runs the sync loop until stopped: every `interval`, checks `PRAGMA data_version` (cheap) and, when
/// another connection committed, loads the changed rows. Store errors keep the last good index and are
/// retried with a fresh connection.
pub fn run_sync(index: Arc<Index>, path: PathBuf, interval: Duration, stop: Arc<Stop>) {
    use std::os::unix::fs::MetadataExt;
    let mut store: Option<(Store, u64)> = None;
    let mut seen_version: Option<i64> = None;
    let mut last_purge = Instant::now();
    let mut last_logged: Option<String> = None;
    let gone = |why: &str| StoreError::Create {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, why.to_string()),
    };
    while !stop.wait(interval) {
        let result = (|| -> Result<(), StoreError> {
            // A stat per tick notices a database deleted or replaced under the open handle, which would
            // otherwise keep answering from the unlinked file.
            let inode = std::fs::metadata(&path)
                .map_err(|_| gone("the database file is missing"))?
                .ino();
            if store.as_ref().is_some_and(|(_, ino)| *ino != inode) {
                log::warn!("sync: {} was replaced; reopening", path.display());
                store = None;
            }
            if store.is_none() {
                store = Some((Store::open_existing(&path)?, inode));
                seen_version = None;
            }
            let (s, _) = store.as_ref().expect("opened above");
            let v = s.data_version()?;
            if seen_version != Some(v) {
                let n = index.sync_from(s)?;
                if n > 0 {
                    log::debug!("sync: applied {n} token changes");
                }
                seen_version = Some(v);
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                index
                    .health
                    .last_sync
                    .store(clock::now() as i64, Ordering::Relaxed);
                let mut e = index
                    .health
                    .sync_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if e.take().is_some() {
                    log::warn!("sync: recovered; the index is current again");
                }
                last_logged = None;
            }
            Err(err) => {
                store = None;
                let msg = err.to_string();
                if last_logged.as_deref() != Some(msg.as_str()) {
                    log::error!("sync: {msg}; serving the last good index");
                    last_logged = Some(msg.clone());
                }
                *index
                    .health
                    .sync_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(msg);
            }
        }
        if last_purge.elapsed() >= Duration::from_secs(1) {
            index.purge_expired_grace();
            last_purge = Instant::now();
        }
    }
}

/// Runs the usage flush loop until stopped, then flushes once more. A database that is missing or was
/// replaced is reopened (never created) on the next try; the counts wait in memory meanwhile.
pub fn run_usage_flush(index: Arc<Index>, path: PathBuf, interval: Duration, stop: Arc<Stop>) {
    use std::os::unix::fs::MetadataExt;
    let mut store: Option<(Store, u64)> = None;
    loop {
        let stopped = stop.wait(interval);
        let result = (|| -> Result<usize, StoreError> {
            let inode = std::fs::metadata(&path).map(|m| m.ino()).ok();
            if store.as_ref().is_some_and(|(_, ino)| Some(*ino) != inode) {
                store = None;
            }
            if store.is_none() {
                store = Some((Store::open_existing(&path)?, inode.unwrap_or(0)));
            }
            index.flush_usage(&mut store.as_mut().expect("opened above").0)
        })();
        if let Err(e) = result {
            store = None;
            log::error!("usage flush: {e}; counts are kept and retried");
        }
        if stopped {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Token;

    fn row(id: i64, digest: Digest, rev: i64) -> IndexRow {
        IndexRow {
            id,
            user: format!("user{id}"),
            digest,
            prev_digest: None,
            prev_valid_until: None,
            scopes: vec![],
            expires_at: None,
            revoked: false,
            rev,
        }
    }

    #[test]
    fn apply_insert_rotate_revoke() {
        let idx = Index::new();
        let a = Token::generate().digest();
        idx.apply(&row(1, a, 1));
        let e = idx.get(&a).unwrap();
        assert_eq!(e.user, "user1");
        assert!(e.digest.ct_eq(&a) && !e.revoked && e.allows("anything") && !e.allows(ADMIN_SCOPE));

        // Rotation with grace keeps both, sharing usage.
        let b = Token::generate().digest();
        let mut r = row(1, b, 2);
        r.prev_digest = Some(a);
        r.prev_valid_until = Some(clock::now() as i64 + 60);
        idx.apply(&r);
        assert_eq!(idx.len(), 2);
        idx.get(&a).unwrap().record_use(5);
        idx.get(&b).unwrap().record_use(6);
        let u = idx.take_usage();
        assert_eq!(
            u,
            vec![UsageDelta {
                id: 1,
                uses: 2,
                last_used_at: 6
            }]
        );
        assert!(idx.take_usage().is_empty());

        // Rotation without grace drops the old digest.
        let c = Token::generate().digest();
        idx.apply(&row(1, c, 3));
        assert!(idx.get(&a).is_none() && idx.get(&b).is_none());
        let mut rv = row(1, c, 4);
        rv.revoked = true;
        idx.apply(&rv);
        assert!(idx.get(&c).unwrap().revoked);
        assert_eq!(idx.last_rev(), 4);
        // A stale row (a slower loader) does not undo the revocation.
        idx.apply(&row(1, c, 3));
        assert!(idx.get(&c).unwrap().revoked);
    }

    #[test]
    fn grace_ends_and_is_purged() {
        let idx = Index::new();
        let (a, b) = (Token::generate().digest(), Token::generate().digest());
        let mut r = row(7, b, 1);
        r.prev_digest = Some(a);
        r.prev_valid_until = Some(1); // long past
        idx.apply(&r);
        assert!(idx.get(&a).is_none());
        r.prev_valid_until = Some(clock::now() as i64 + 1000);
        idx.apply(&r);
        assert_eq!(idx.get(&a).unwrap().valid_until, clock::now() + 1000);
        idx.purge_expired_grace();
        assert!(idx.get(&a).is_some());
    }

    #[test]
    fn restore_usage_after_failure() {
        let idx = Index::new();
        let a = Token::generate().digest();
        idx.apply(&row(1, a, 1));
        idx.get(&a).unwrap().record_use(9);
        let u = idx.take_usage();
        idx.restore_usage(&u);
        assert_eq!(idx.take_usage()[0].uses, 1);
    }

    #[test]
    fn scopes_restrict() {
        let idx = Index::new();
        let a = Token::generate().digest();
        let mut r = row(1, a, 1);
        r.scopes = vec!["telemetry:write".into()];
        idx.apply(&r);
        let e = idx.get(&a).unwrap();
        assert!(e.allows("telemetry:write") && !e.allows("admin"));
    }
}
