//! The in-memory index that answers every request (digest → entry) and the usage counters its entries
//! carry (the loops that feed and flush it are in [`super::sync`]).
//!
//! A token's quota count on this node is the shared count as last reported plus this node's unflushed
//! requests. Reports come from this node's own flushes (their answer) and from every other node's flushes
//! through the store's quota feed ([`super::store::quota_feed`]), which the sync loop reads after each
//! token change check: so a node knows the others' flushed counts within the sync bound, including for
//! tokens it has not seen a request for yet.
//!
//! The map is a `papaya::HashMap`: readers take an epoch guard and never lock, block or allocate; writers
//! insert or remove single entries (no whole-map copies, so a change costs the same at 1M tokens as at 1).
//! Only the sync loop and this process's admin API write, through [`Index::apply`], serialised by the
//! `writer` mutex that also holds the id → digests bookkeeping readers never need.

use super::fields::{is_privileged, ROLE_MARK};
use super::format::Digest;
use super::grants::Grants;
use super::store::{
    IndexRow, Location, QuotaTotal, QuotaUse, Store, StoreError, TokenStore, UsageDelta,
};
use crate::clock;
use crate::config::Rate;
use crate::limiter::QuotaCount;
use bytes::Bytes;
use http::HeaderValue;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the gateway knows about one token, shared by all digests it is indexed under (two during a
/// rotation grace period). Its identity (user, scopes, expiry) never changes for a token id; revocation
/// and usage are atomics changed in place, so a revoke or a use allocates nothing.
///
/// Kept small on purpose (about 250 bytes a token all told, see BENCHMARKS.md): the user id and token
/// id share one buffer from which the header values are sliced without copying.
#[derive(Debug)]
pub struct Entry {
    pub token_id: i64,
    /// `user id` followed by the decimal token id, both valid header values.
    ident: Bytes,
    user_len: u32,
    /// Granted scopes and roles (a role written `@name`, see [`ROLE_MARK`]); empty means full access
    /// (every scope except `admin` and `tokens:self`).
    pub scopes: Box<[Box<str>]>,
    /// Unix seconds after which the token is expired (`u64::MAX`: never).
    pub expires_at: u64,
    /// The SHA-256 of the client certificate this token is bound to (boxed: most tokens have none).
    pub bound_cert: Option<Box<[u8; 32]>>,
    /// The token's own rate limit and quota (boxed: most tokens have none; about 64 bytes when set).
    pub limits: Option<Box<TokenLimits>>,
    /// What its groups and licenses give it (boxed: most tokens have none).
    pub grants: Option<Box<Grants>>,
    revoked: AtomicBool,
    /// Revoked because it was reported leaked (read only when `revoked` is set).
    leaked: AtomicBool,
    /// Store revision of the state applied; older rows are ignored (two loaders may race).
    rev: AtomicI64,
    /// Uses not yet flushed (32 bits: a flush every few seconds empties it long before it could wrap).
    uses: AtomicU32,
    /// Unix seconds of the latest use (0: none since start; 32 bits last until 2106).
    last_used: AtomicU32,
    /// Requests and tunnels of this token in flight on this node (see [`Entry::enter`]): made at the
    /// token's first request, and handed to the entry that replaces this one when the token is edited,
    /// so an edit never gives a token fresh slots while its old requests are still open.
    in_flight: std::sync::OnceLock<Arc<AtomicU32>>,
}

impl Entry {
    fn new(row: &IndexRow) -> Option<Entry> {
        // The user id becomes a header value: refuse (fail closed) anything that is not one.
        HeaderValue::from_str(&row.user).ok()?;
        let mut ident = Vec::with_capacity(row.user.len() + 20);
        ident.extend_from_slice(row.user.as_bytes());
        ident.extend_from_slice(row.id.to_string().as_bytes());
        Some(Entry {
            token_id: row.id,
            // Exact size: a vector's spare capacity would stay allocated for the token's lifetime.
            ident: Bytes::from(ident.into_boxed_slice()),
            user_len: row.user.len() as u32,
            scopes: row.scopes.iter().map(|s| s.as_str().into()).collect(),
            expires_at: row.expires_at.map(|e| e.max(0) as u64).unwrap_or(u64::MAX),
            bound_cert: row.bound_cert.map(Box::new),
            limits: TokenLimits::new(row).map(Box::new),
            grants: Grants::new(&row.access).map(Box::new),
            revoked: AtomicBool::new(row.revoked),
            leaked: AtomicBool::new(row.leaked),
            rev: AtomicI64::new(row.rev),
            uses: AtomicU32::new(0),
            last_used: AtomicU32::new(0),
            in_flight: std::sync::OnceLock::new(),
        })
    }

    /// Whether `row` describes the same identity (user, scopes, expiry, binding) as this entry.
    fn same_identity(&self, row: &IndexRow) -> bool {
        self.user() == row.user
            && self.expires_at == row.expires_at.map(|e| e.max(0) as u64).unwrap_or(u64::MAX)
            && self.bound_cert.as_deref() == row.bound_cert.as_ref()
            && self.limits.as_ref().and_then(|l| l.rate) == row.rate_limit
            && self
                .limits
                .as_ref()
                .and_then(|l| l.quota.as_ref().map(|q| q.quota))
                == row.quota
            && self.scopes.len() == row.scopes.len()
            && self.scopes.iter().zip(&row.scopes).all(|(a, b)| **a == **b)
            && Grants::same(self.grants.as_deref(), &row.access)
    }

    /// The store revision of the state applied (a revocation's revision, once revoked).
    pub fn rev(&self) -> i64 {
        self.rev.load(Ordering::Acquire)
    }

    /// The owner's user id.
    pub fn user(&self) -> &str {
        std::str::from_utf8(self.user_bytes()).unwrap_or("")
    }

    /// The owner's user id as bytes (for the access log, which reads them without validating them
    /// again: [`Entry::user`] checks UTF-8 at every call).
    pub fn user_bytes(&self) -> &[u8] {
        &self.ident[..self.user_len as usize]
    }

    /// The user id as a header value (shares the entry's buffer; no copy).
    pub fn user_value(&self) -> HeaderValue {
        HeaderValue::from_maybe_shared(self.ident.slice(..self.user_len as usize))
            .expect("checked when indexed")
    }

    /// The token id in decimal, as forwarded in the token id header.
    pub fn token_id_text(&self) -> &[u8] {
        &self.ident[self.user_len as usize..]
    }

    /// The token id as a header value (shares the entry's buffer; no copy).
    pub fn token_id_value(&self) -> HeaderValue {
        HeaderValue::from_maybe_shared(self.ident.slice(self.user_len as usize..)).expect("digits")
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Whether it was revoked because it was reported leaked.
    pub fn is_leaked(&self) -> bool {
        self.leaked.load(Ordering::Acquire)
    }

    /// Whether this token may use a route that requires `scope`, given the roles that grant it
    /// (`granting`, resolved from the current `[roles]`). A token without scopes or roles has full
    /// access to every scope except `admin` and `tokens:self`, which are only ever granted
    /// explicitly: a device token must never be able to manage tokens. The roles of the token's
    /// groups count too, except for those two (see [`Grants::grants`]).
    pub fn allows(&self, scope: &str, granting: &[Box<str>]) -> bool {
        if self.scopes.is_empty() {
            return !is_privileged(scope);
        }
        self.scopes.iter().any(|s| match s.strip_prefix(ROLE_MARK) {
            Some(role) => granting.iter().any(|g| **g == *role),
            None => **s == *scope,
        }) || self
            .grants
            .as_ref()
            .is_some_and(|g| g.grants(scope, granting))
    }

    /// Whether the token is in group `name` (itself or through its user).
    #[inline]
    pub fn in_group(&self, name: &str) -> bool {
        self.grants.as_ref().is_some_and(|g| g.in_group(name))
    }

    /// Whether it holds license `name` (itself or through its user), valid at unix time `now`.
    #[inline]
    pub fn holds_license(&self, name: &str, now: u64) -> bool {
        self.grants.as_ref().is_some_and(|g| g.holds(name, now))
    }

    /// Its roles and its groups' roles, sorted, once each.
    pub fn effective_roles(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.roles().collect();
        if !self.is_full_access() {
            all.extend(self.grants.iter().flat_map(|g| g.group_roles()));
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether the token has full access (no scopes, no roles).
    pub fn is_full_access(&self) -> bool {
        self.scopes.is_empty()
    }

    /// The token's own scopes (without its roles).
    pub fn own_scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes
            .iter()
            .map(|s| &**s)
            .filter(|s| !s.starts_with(ROLE_MARK))
    }

    /// The token's role names.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().filter_map(|s| s.strip_prefix(ROLE_MARK))
    }

    /// Every scope the token holds, its roles and its groups' roles resolved in `roles` (a role no
    /// longer defined grants nothing; a group's role never `admin` or `tokens:self`); `None`: full
    /// access.
    pub fn effective_scopes<'a>(
        &'a self,
        roles: &'a crate::config::Roles,
    ) -> Option<std::collections::BTreeSet<&'a str>> {
        let mut all = self.own_effective_scopes(roles)?;
        for r in self.grants.iter().flat_map(|g| g.group_roles()) {
            all.extend(
                roles
                    .get(r)
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .filter(|s| !is_privileged(s)),
            );
        }
        Some(all)
    }

    /// The scopes granted on the token itself (its own scopes and roles, not its groups'): what the
    /// admin rule lets a self-service caller hand on, so that nothing it creates keeps a group's grant
    /// after the caller leaves the group. `None`: full access.
    pub fn own_effective_scopes<'a>(
        &'a self,
        roles: &'a crate::config::Roles,
    ) -> Option<std::collections::BTreeSet<&'a str>> {
        if self.is_full_access() {
            return None;
        }
        let mut all: std::collections::BTreeSet<&str> = self.own_scopes().collect();
        for r in self.roles() {
            all.extend(roles.get(r).into_iter().flatten().map(String::as_str));
        }
        Some(all)
    }

    /// Takes one of the token's `max` slots for a request or tunnel in flight; `None` when all are
    /// taken. The slot is given back when the returned guard drops, whatever way the exchange ends.
    #[inline]
    pub fn enter(&self, max: u32) -> Option<InFlight> {
        let counter = self.in_flight_counter();
        let taken = counter.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(counter.clone());
        (taken < max).then_some(guard)
    }

    /// Requests and tunnels of this token in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
            .get()
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn in_flight_counter(&self) -> &Arc<AtomicU32> {
        self.in_flight.get_or_init(Default::default)
    }

    /// Records one use: relaxed atomic writes, no I/O.
    #[inline]
    pub fn record_use(&self, now: u64) {
        self.uses.fetch_add(1, Ordering::Relaxed);
        let now = now as u32;
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }
}

/// One request or tunnel of a token in flight ([`Entry::enter`]): gives its slot back when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A token's own limits, in memory: its rate bucket (all routes together) and its quota count.
#[derive(Debug)]
pub struct TokenLimits {
    /// The token's rate (its bucket, with one second's worth of burst, is derived per request: two
    /// divisions cost less than keeping it, and 56 bytes fit one 64-byte allocation).
    pub rate: Option<Rate>,
    /// The bucket's state: the theoretical arrival time, see [`crate::limiter::Gcra`].
    pub tat: AtomicU64,
    pub quota: Option<QuotaCount>,
}

impl TokenLimits {
    fn new(row: &IndexRow) -> Option<TokenLimits> {
        if row.rate_limit.is_none() && row.quota.is_none() {
            return None;
        }
        Some(TokenLimits {
            rate: row.rate_limit,
            tat: AtomicU64::new(0),
            quota: row.quota.map(|q| {
                let period = row.quota_period.map(|p| q.period.index(p));
                QuotaCount::new(q, period, row.quota_used.max(0) as u64)
            }),
        })
    }
}

/// One digest's slot in the map: the token's entry and until when this digest works.
#[derive(Debug, Clone)]
pub struct Slot {
    pub entry: Arc<Entry>,
    /// Unix seconds after which this digest stops working (`u64::MAX`: never). Set on a rotated-out
    /// secret whose grace period runs.
    pub valid_until: u64,
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

/// The writer's bookkeeping for one token id: its entry and current digest.
struct Known {
    entry: Arc<Entry>,
    digest: Digest,
    /// Unix seconds at which this process first saw the token revoked (0: not revoked).
    revoked_seen: u64,
}

#[derive(Default)]
struct Writer {
    /// Indexed by token id (ids are dense SQLite rowids, so a vector beats a hash map by about 100
    /// bytes a token).
    by_id: Vec<Option<Known>>,
    /// Tokens with a rotated-out digest still in its grace period: (id, digest, deadline).
    graced: Vec<(i64, Digest, u64)>,
    /// Entries replaced because a token's identity changed, kept until their usage has been flushed.
    retired: Vec<Arc<Entry>>,
}

impl Writer {
    fn slot(&mut self, id: i64) -> Option<&mut Option<Known>> {
        let i = usize::try_from(id).ok()?;
        if i >= self.by_id.len() {
            // Grow by at least a quarter, never by doubling a huge table.
            let want = (i + 1).max(self.by_id.len() + self.by_id.len() / 4);
            self.by_id.resize_with(want, || None);
        }
        self.by_id.get_mut(i)
    }

    fn get(&self, id: i64) -> Option<&Known> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.by_id.get(i))
            .and_then(Option::as_ref)
    }
}

/// Moves the usage counted by `from` (uses, last use, quota count) onto `to`, which replaces it.
fn carry_usage(from: &Entry, to: &Entry) {
    to.uses
        .fetch_add(from.uses.swap(0, Ordering::AcqRel), Ordering::AcqRel);
    to.last_used
        .fetch_max(from.last_used.load(Ordering::Acquire), Ordering::AcqRel);
    if let (Some(new), Some(old)) = (
        to.limits.as_ref().and_then(|l| l.quota.as_ref()),
        from.limits.as_ref().and_then(|l| l.quota.as_ref()),
    ) {
        new.absorb(old);
    }
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

/// How long a revoked or expired token stays indexed by default, in seconds.
const DEFAULT_RETENTION: u64 = crate::config::DEFAULT_REVOKED_RETENTION.as_secs();

/// The digest → slot map.
pub struct Index {
    map: papaya::HashMap<Digest, Slot, BuildDigestHasher>,
    writer: Mutex<Writer>,
    /// Highest store revision applied.
    last_rev: AtomicI64,
    /// Position in the store's quota feed: every entry up to it has been applied.
    quota_feed: AtomicI64,
    /// This process's name in the store (usage batch ids, quota feed entries): random, per start.
    node: String,
    /// Seconds a revoked or expired token stays indexed (answering `revoked`/`expired`) before it is
    /// dropped and answers as an unknown token (`[gateway] revoked_retention`).
    retention: AtomicU64,
    /// Unix seconds of the last sweep for such tokens.
    last_retire_sweep: AtomicU64,
    pub health: SyncHealth,
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

impl Index {
    pub fn new() -> Index {
        Index::with_capacity(0)
    }

    /// An index sized for `n` tokens, so that loading them does not resize the map on the way.
    pub fn with_capacity(n: usize) -> Index {
        Index {
            map: papaya::HashMap::builder()
                .capacity(n)
                .hasher(BuildDigestHasher)
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            writer: Mutex::new(Writer::default()),
            last_rev: AtomicI64::new(0),
            quota_feed: AtomicI64::new(0),
            node: {
                use rand_core::RngCore;
                let mut id = [0u8; 8];
                rand_core::OsRng.fill_bytes(&mut id);
                super::store::hex(&id)
            },
            retention: AtomicU64::new(DEFAULT_RETENTION),
            last_retire_sweep: AtomicU64::new(0),
            health: SyncHealth::default(),
        }
    }

    /// This process's name in the store: its usage batches and quota feed entries carry it.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Makes room for token ids up to `max_id` in the writer's bookkeeping (used before a full load).
    pub fn reserve_ids(&self, max_id: i64) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(n) = usize::try_from(max_id) {
            if n >= w.by_id.len() {
                w.by_id.resize_with(n + 1, || None);
            }
        }
    }

    /// Looks a digest up. Lock-free; clones one `Arc`. The stored key is compared with the probe in
    /// constant time before anything is returned.
    #[inline]
    pub fn get(&self, digest: &Digest) -> Option<Slot> {
        let map = self.map.pin();
        let (key, slot) = map.get_key_value(digest)?;
        key.ct_eq(digest).then(|| slot.clone())
    }

    /// Number of digests indexed (a token in a rotation grace period counts twice).
    /// The role names that tokens not revoked use (a reload must keep defining them).
    pub fn roles_in_use(&self) -> std::collections::BTreeSet<String> {
        let map = self.map.pin();
        let mut used = std::collections::BTreeSet::new();
        for (_, slot) in map.iter() {
            if !slot.entry.is_revoked() {
                used.extend(slot.entry.effective_roles().into_iter().map(str::to_owned));
            }
        }
        used
    }

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

    /// Position in the store's quota feed.
    pub fn quota_feed_position(&self) -> i64 {
        self.quota_feed.load(Ordering::Acquire)
    }

    /// Applies the quota feed's entries after [`Index::quota_feed_position`]: the shared counts other
    /// nodes' flushes left. Returns how many counts were applied.
    pub fn sync_quotas_from(&self, store: &mut dyn TokenStore) -> Result<usize, StoreError> {
        let mut applied = 0;
        loop {
            let after = self.quota_feed_position();
            let changes = store.quota_changes_since(after, &self.node)?;
            if changes.whole {
                log::info!(
                    "quota feed: entries after {after} are gone (this node was away, or the store \
                     was replaced); read every token's shared quota count instead ({} tokens)",
                    changes.totals.len()
                );
            }
            self.observe_quotas(&changes.totals);
            self.quota_feed.store(changes.position, Ordering::Release);
            applied += changes.totals.len();
            if !changes.more {
                return Ok(applied);
            }
        }
    }

    /// Raises the shared quota counts of the tokens named (unknown ids and tokens without a quota are
    /// skipped; a count lower than the one held, or of an earlier period, changes nothing).
    pub fn observe_quotas(&self, totals: &[QuotaTotal]) {
        // In slices, so that the writer lock is never held long (admin writes and flushes wait on it).
        let now = clock::now() as i64;
        for chunk in totals.chunks(16_384) {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            for t in chunk {
                if let Some(q) = w
                    .get(t.id)
                    .and_then(|k| k.entry.limits.as_ref())
                    .and_then(|l| l.quota.as_ref())
                {
                    q.observe(t.period_start, t.total, now);
                }
            }
        }
    }

    /// Loads every change after [`Index::last_rev`] from the store.
    pub fn sync_from(&self, store: &mut dyn TokenStore) -> Result<usize, StoreError> {
        let mut n = 0;
        let from = self.last_rev();
        store.for_each_change(from, &mut |row| {
            self.apply(&row);
            n += 1;
        })?;
        Ok(n)
    }

    /// The first, whole load at start-up: a reader thread streams rows from its own connection to the
    /// store in batches while this thread applies them, so that the store's work and the index's
    /// (hashing, allocation, page faults) overlap on two cores. Measured at 1M tokens: 2.0-2.1 s one after
    /// the other, see BENCHMARKS.md for the pipelined figure.
    ///
    /// The quota feed's position is read before the rows, so that the sync loop later applies every
    /// flush the rows may not hold yet.
    pub fn load_from(&self, location: &Location) -> Result<usize, StoreError> {
        const BATCH: usize = 4096;
        let from = self.last_rev();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<IndexRow>>(8);
        let location = location.clone();
        let reader = std::thread::Builder::new()
            .name("tokengate-load".into())
            .spawn(move || -> Result<i64, StoreError> {
                let mut store = Store::open_existing(&location)?;
                let feed = store.quota_feed_head()?;
                let mut batch = Vec::with_capacity(BATCH);
                store.for_each_change(from, &mut |row| {
                    batch.push(row);
                    if batch.len() == BATCH {
                        // A closed channel means the loader stopped; the rest is not needed.
                        let _ = tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                    }
                })?;
                let _ = tx.send(batch);
                Ok(feed)
            })
            .map_err(|e| StoreError::Create {
                path: "(index loader thread)".into(),
                source: e,
            })?;
        let mut n = 0;
        for batch in rx {
            for row in &batch {
                self.apply(row);
            }
            n += batch.len();
        }
        let feed = reader.join().unwrap_or_else(|_| {
            Err(StoreError::Create {
                path: "(index loader thread)".into(),
                source: std::io::Error::other("the loader thread panicked"),
            })
        })?;
        self.quota_feed.fetch_max(feed, Ordering::AcqRel);
        Ok(n)
    }

    /// Applies one changed token row. Idempotent; a row older than what was applied for its token is
    /// ignored (two loaders may race).
    pub fn apply(&self, row: &IndexRow) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let guard = self.map.guard();
        let now = clock::now();
        let Some(slot) = w.slot(row.id) else {
            log::error!("token id {} is out of range; it is not accepted", row.id);
            return;
        };
        if let Some(k) = slot.as_ref() {
            if row.rev < k.entry.rev.load(Ordering::Acquire) {
                return;
            }
        }
        let old = slot.take();
        let entry = match &old {
            Some(k) if k.entry.same_identity(row) => k.entry.clone(),
            _ => match Entry::new(row) {
                Some(e) => {
                    // An edit keeps the token's requests in flight counted against it.
                    if let Some(k) = &old {
                        let _ = e.in_flight.set(k.entry.in_flight_counter().clone());
                    }
                    Arc::new(e)
                }
                None => {
                    // Cannot be sent as a header: fail closed by not indexing it at all.
                    log::error!("token {} has a user id that is not a valid header value; it is not accepted", row.id);
                    if let Some(k) = &old {
                        self.map.remove(&k.digest, &guard);
                    }
                    w.graced
                        .retain(|(id, d, _)| *id != row.id || self.map.remove(d, &guard).is_none());
                    return;
                }
            },
        };
        entry.rev.store(row.rev, Ordering::Release);
        entry.leaked.store(row.leaked, Ordering::Release);
        entry.revoked.store(row.revoked, Ordering::Release);
        let revoked_seen = match (&old, row.revoked) {
            (_, false) => 0,
            (Some(k), true) if k.revoked_seen > 0 => k.revoked_seen,
            (_, true) => now.max(1),
        };
        if let Some(k) = &old {
            if !Arc::ptr_eq(&k.entry, &entry) {
                // Identity changed (a restored or hand-edited database): carry the pending usage over.
                carry_usage(&k.entry, &entry);
                w.retired.push(k.entry.clone());
            }
        }
        // Digests of this token that no longer work: the previous current one (unless it is still
        // current or now in grace), and a graced one that is not graced any more.
        let grace = match (row.revoked, row.prev_digest, row.prev_valid_until) {
            (false, Some(prev), Some(until)) if until > now as i64 && prev != row.digest => {
                Some((prev, until as u64))
            }
            _ => None,
        };
        let keep = |d: &Digest| *d == row.digest || grace.is_some_and(|(p, _)| p == *d);
        if let Some(k) = &old {
            if !keep(&k.digest) {
                self.map.remove(&k.digest, &guard);
            }
        }
        w.graced
            .retain(|(id, d, _)| *id != row.id || keep(d) || self.map.remove(d, &guard).is_none());
        self.map.insert(
            row.digest,
            Slot {
                entry: entry.clone(),
                valid_until: u64::MAX,
            },
            &guard,
        );
        if let Some((prev, until)) = grace {
            self.map.insert(
                prev,
                Slot {
                    entry: entry.clone(),
                    valid_until: until,
                },
                &guard,
            );
            w.graced.retain(|(id, _, _)| *id != row.id);
            w.graced.push((row.id, prev, until));
        }
        if let Some(slot) = w.slot(row.id) {
            *slot = Some(Known {
                entry,
                digest: row.digest,
                revoked_seen,
            });
        }
        self.last_rev.fetch_max(row.rev, Ordering::AcqRel);
    }

    /// Sets how long a revoked or expired token stays indexed (`[gateway] revoked_retention`).
    pub fn set_retention(&self, retention: std::time::Duration) {
        self.retention
            .store(retention.as_secs().max(1), Ordering::Relaxed);
    }

    /// Drops tokens revoked (as this process saw it) or expired more than the retention ago: they answer
    /// as unknown tokens from then on (still 401), and the index holds only what can still be used or
    /// was lately. Sweeps at most every tenth of the retention (1 s to 60 s): a scan of every token,
    /// off the request path.
    pub fn purge_retired(&self) {
        let now = clock::now();
        let retention = self.retention.load(Ordering::Relaxed);
        let every = (retention / 10).clamp(1, 60);
        let last = self.last_retire_sweep.load(Ordering::Relaxed);
        if now < last.saturating_add(every) {
            return;
        }
        self.last_retire_sweep.store(now, Ordering::Relaxed);
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let guard = self.map.guard();
        let mut dropped = Vec::new();
        for (id, slot) in w.by_id.iter_mut().enumerate() {
            let Some(k) = slot else { continue };
            let gone_at = if k.revoked_seen > 0 {
                k.revoked_seen
            } else if k.entry.expires_at != u64::MAX {
                k.entry.expires_at
            } else {
                continue;
            };
            if now >= gone_at.saturating_add(retention) {
                self.map.remove(&k.digest, &guard);
                dropped.push((id as i64, k.entry.clone()));
                *slot = None;
            }
        }
        for (id, entry) in dropped {
            w.graced
                .retain(|(g, d, _)| *g != id || self.map.remove(d, &guard).is_none());
            // Its last uses still go out with the next flush.
            w.retired.push(entry);
        }
    }

    /// Drops rotated-out digests whose grace period is over. Requests already refuse them; this frees
    /// the memory.
    pub fn purge_expired_grace(&self) {
        let now = clock::now();
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let guard = self.map.guard();
        w.graced.retain(|(_, d, until)| {
            if *until <= now {
                self.map.remove(d, &guard);
                false
            } else {
                true
            }
        });
    }

    /// Takes the usage counted since the last call, resetting the counters (a quota's unflushed count
    /// stays until [`Index::settle_quota`] takes the flushed part off).
    pub fn take_usage(&self) -> Vec<UsageDelta> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let retired = std::mem::take(&mut w.retired);
        let mut out: Vec<UsageDelta> = Vec::new();
        for e in w
            .by_id
            .iter()
            .flatten()
            .map(|k| &k.entry)
            .chain(retired.iter())
        {
            let uses = e.uses.swap(0, Ordering::Relaxed);
            // Other nodes' counts arrive through the quota feed: only this node's own are sent.
            let quota = e
                .limits
                .as_ref()
                .and_then(|l| l.quota.as_ref())
                .and_then(|q| q.pending())
                .map(|(start, end, count)| QuotaUse { start, end, count });
            if uses > 0 || quota.is_some() {
                let last_used_at = e.last_used.load(Ordering::Relaxed) as i64;
                out.push(UsageDelta {
                    id: e.token_id,
                    uses: uses as u64,
                    last_used_at,
                    quota,
                });
            }
        }
        out
    }

    /// After a flush: the shared quota counts the store reported, and the sent counts off the local ones.
    pub fn settle_quota(&self, sent: &[UsageDelta], totals: &[QuotaTotal]) {
        // What was sent, by token and period (a replaced entry's count may travel beside the current one's).
        let mut by_token: std::collections::HashMap<(i64, i64), u64> =
            std::collections::HashMap::with_capacity(totals.len());
        for d in sent {
            if let Some(q) = d.quota {
                *by_token.entry((d.id, q.start)).or_default() += q.count;
            }
        }
        let now = clock::now() as i64;
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        for t in totals {
            let Some(q) = w
                .get(t.id)
                .and_then(|k| k.entry.limits.as_ref())
                .and_then(|l| l.quota.as_ref())
            else {
                continue;
            };
            let sent_here = by_token.get(&(t.id, t.period_start)).copied().unwrap_or(0);
            q.settle(t.period_start, sent_here, t.total, now);
        }
    }

    /// This node's view of a token's quota: used in the current period (shared + unflushed).
    pub fn quota_used(&self, id: i64, now: i64) -> Option<u64> {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.get(id)
            .and_then(|k| k.entry.limits.as_ref())
            .and_then(|l| l.quota.as_ref())
            .map(|q| q.used(now).0)
    }

    /// Usage counted in memory but not flushed yet for a token: (uses, last used unix seconds or 0).
    pub fn pending_usage(&self, id: i64) -> (u64, i64) {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.get(id).map_or((0, 0), |k| {
            (
                k.entry.uses.load(Ordering::Relaxed) as u64,
                k.entry.last_used.load(Ordering::Relaxed) as i64,
            )
        })
    }

    /// Puts usage back after a failed flush, so that the next flush retries it.
    pub fn restore_usage(&self, deltas: &[UsageDelta]) {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        for d in deltas {
            if let Some(k) = w.get(d.id) {
                k.entry
                    .uses
                    .fetch_add(d.uses.min(u32::MAX as u64) as u32, Ordering::Relaxed);
                k.entry
                    .last_used
                    .fetch_max(d.last_used_at.max(0) as u32, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::format::Token;

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
            bound_cert: None,
            rate_limit: None,
            quota: None,
            quota_used: 0,
            quota_period: None,
            leaked: false,
            access: Default::default(),
        }
    }

    #[test]
    fn apply_insert_rotate_revoke() {
        let idx = Index::new();
        let a = Token::generate().digest();
        idx.apply(&row(1, a, 1));
        let s = idx.get(&a).unwrap();
        assert_eq!(s.entry.user(), "user1");
        assert_eq!(s.entry.user_value(), "user1");
        assert_eq!(s.entry.token_id_value(), "1");
        assert!(
            !s.entry.is_revoked()
                && s.entry.allows("anything", &[])
                && !s.entry.allows("admin", &[])
        );

        // Rotation with grace keeps both, sharing the entry and its usage.
        let b = Token::generate().digest();
        let mut r = row(1, b, 2);
        r.prev_digest = Some(a);
        r.prev_valid_until = Some(clock::now() as i64 + 60);
        idx.apply(&r);
        assert_eq!(idx.len(), 2);
        idx.get(&a).unwrap().entry.record_use(5);
        idx.get(&b).unwrap().entry.record_use(6);
        assert!(idx.get(&a).unwrap().valid_until < u64::MAX);
        let u = idx.take_usage();
        assert_eq!(
            u,
            vec![UsageDelta {
                id: 1,
                uses: 2,
                last_used_at: 6,
                quota: None
            }]
        );
        assert!(idx.take_usage().is_empty());

        // Rotation without grace drops the old digests.
        let c = Token::generate().digest();
        idx.apply(&row(1, c, 3));
        assert!(idx.get(&a).is_none() && idx.get(&b).is_none());
        assert_eq!(idx.len(), 1);
        let mut rv = row(1, c, 4);
        rv.revoked = true;
        idx.apply(&rv);
        assert!(idx.get(&c).unwrap().entry.is_revoked());
        assert_eq!(idx.last_rev(), 4);
        // A stale row (a slower loader) does not undo the revocation.
        idx.apply(&row(1, c, 3));
        assert!(idx.get(&c).unwrap().entry.is_revoked());
    }

    #[test]
    fn two_rotations_between_syncs_leave_no_old_secret() {
        let idx = Index::new();
        let (a, b, c) = (
            Token::generate().digest(),
            Token::generate().digest(),
            Token::generate().digest(),
        );
        idx.apply(&row(3, a, 1));
        // The gateway only ever sees the final state: digest c, graced b; a must be gone.
        let mut r = row(3, c, 3);
        r.prev_digest = Some(b);
        r.prev_valid_until = Some(clock::now() as i64 + 60);
        idx.apply(&r);
        assert!(idx.get(&a).is_none());
        assert!(idx.get(&b).is_some() && idx.get(&c).is_some());
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
        r.rev = 2;
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
        idx.get(&a).unwrap().entry.record_use(9);
        let u = idx.take_usage();
        idx.restore_usage(&u);
        assert_eq!(idx.take_usage()[0].uses, 1);
        assert_eq!(idx.pending_usage(1), (0, 9));
    }

    #[test]
    fn scopes_restrict() {
        let idx = Index::new();
        let a = Token::generate().digest();
        let mut r = row(1, a, 1);
        r.scopes = vec!["telemetry:write".into()];
        idx.apply(&r);
        let e = idx.get(&a).unwrap().entry;
        assert!(e.allows("telemetry:write", &[]) && !e.allows("admin", &[]));
    }

    #[test]
    fn roles_grant_what_the_current_table_says_and_full_access_is_never_privileged() {
        let idx = Index::new();
        let (a, b) = (Token::generate().digest(), Token::generate().digest());
        let mut r = row(1, a, 1);
        r.scopes = vec!["status:read".into(), "@device".into()];
        idx.apply(&r);
        idx.apply(&row(2, b, 1));
        let e = idx.get(&a).unwrap().entry;
        let granting: Vec<Box<str>> = vec!["device".into()];
        assert!(e.allows("telemetry:write", &granting), "through the role");
        assert!(!e.allows("telemetry:write", &[]), "no role grants it");
        assert!(e.allows("status:read", &[]), "its own scope");
        assert!(!e.is_full_access());
        assert_eq!(e.own_scopes().collect::<Vec<_>>(), ["status:read"]);
        assert_eq!(e.roles().collect::<Vec<_>>(), ["device"]);
        let mut roles = crate::config::Roles::new();
        roles.insert(
            "device".into(),
            vec!["telemetry:write".into(), "video:upload".into()],
        );
        let all: Vec<&str> = e.effective_scopes(&roles).unwrap().into_iter().collect();
        assert_eq!(all, ["status:read", "telemetry:write", "video:upload"]);
        assert_eq!(
            e.effective_scopes(&Default::default()).unwrap().len(),
            1,
            "an undefined role grants nothing"
        );
        let full = idx.get(&b).unwrap().entry;
        assert!(full.is_full_access() && full.effective_scopes(&roles).is_none());
        assert!(full.allows("anything", &[]));
        assert!(!full.allows("admin", &[]) && !full.allows("tokens:self", &[]));
    }

    #[test]
    fn invalid_user_is_not_indexed() {
        let idx = Index::new();
        let a = Token::generate().digest();
        let mut r = row(1, a, 1);
        r.user = "bad\nuser".into();
        idx.apply(&r);
        assert!(idx.get(&a).is_none());
    }

    #[test]
    fn a_token_s_own_limits_fit_one_small_allocation() {
        // 1M tokens with a limit: the box (plus malloc's 8-byte header) stays within one 64-byte chunk.
        assert!(std::mem::size_of::<TokenLimits>() <= 56);
        let mut r = row(1, Token::generate().digest(), 1);
        r.rate_limit = Some(Rate::parse("5/s").unwrap());
        let limits = TokenLimits::new(&r).unwrap();
        assert_eq!(limits.rate, r.rate_limit);
        assert!(limits.quota.is_none());
        r.rate_limit = None;
        assert!(TokenLimits::new(&r).is_none(), "no limits, no allocation");
    }

    /// Token `id`'s row with a quota of 100 a day, `used` of it counted today in the store.
    fn quota_row(id: i64, digest: Digest, rev: i64, used: i64) -> IndexRow {
        let quota = crate::tokens::fields::Quota::parse("100/day").unwrap();
        let now = clock::now() as i64;
        IndexRow {
            quota: Some(quota),
            quota_used: used,
            quota_period: Some(quota.period.start_of(quota.period.index(now))),
            leaked: false,
            ..row(id, digest, rev)
        }
    }

    fn today() -> i64 {
        clock::now() as i64 / 86_400 * 86_400
    }

    #[test]
    fn quota_feed_totals_raise_the_counts_of_indexed_tokens_with_a_quota_only() {
        let idx = Index::new();
        idx.apply(&quota_row(1, Token::generate().digest(), 1, 10));
        idx.apply(&row(2, Token::generate().digest(), 2));
        let now = clock::now() as i64;
        let t = |id, total| QuotaTotal {
            id,
            period_start: today(),
            total,
        };
        idx.observe_quotas(&[t(1, 60), t(2, 10), t(99, 5), t(-1, 5), t(1, 40)]);
        assert_eq!(idx.quota_used(1, now), Some(60));
        assert_eq!(idx.quota_used(2, now), None);
        // Nothing pending here: the flush sends nothing for it (other nodes' counts come by the feed).
        assert!(idx.take_usage().is_empty());
    }

    #[test]
    fn an_entry_replaced_with_counts_pending_keeps_them_and_the_newer_shared_count() {
        let idx = Index::new();
        let d = Token::generate().digest();
        idx.apply(&quota_row(1, d, 1, 10));
        let now = clock::now() as i64;
        let entry = idx.get(&d).unwrap().entry;
        let quota = entry.limits.as_ref().unwrap().quota.as_ref().unwrap();
        for _ in 0..7 {
            quota.take(now).unwrap();
            entry.record_use(now as u64);
        }
        idx.observe_quotas(&[QuotaTotal {
            id: 1,
            period_start: today(),
            total: 50,
        }]);
        // An edit (new expiry) read before the other node's flush reached the store row: 10, not 50.
        let mut edited = quota_row(1, d, 2, 10);
        edited.expires_at = Some(now + 3600);
        idx.apply(&edited);
        assert!(
            !Arc::ptr_eq(&idx.get(&d).unwrap().entry, &entry),
            "replaced"
        );
        assert_eq!(idx.quota_used(1, now), Some(57));
        let sent = idx.take_usage();
        let pending: u64 = sent.iter().filter_map(|u| u.quota).map(|q| q.count).sum();
        assert_eq!(pending, 7, "{sent:?}");
        // The flush's answer: 50 + 7.
        idx.settle_quota(
            &sent,
            &[QuotaTotal {
                id: 1,
                period_start: today(),
                total: 57,
            }],
        );
        assert_eq!(idx.quota_used(1, now), Some(57));
        assert!(idx.take_usage().iter().all(|u| u.quota.is_none()));
    }
}
