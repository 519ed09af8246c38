//! The background loops that keep the index in step with the store, plus the [`Shutdown`] signal that wakes
//! them at once on shutdown:
//!
//! - the **sync loop** loads every change with `rev > last applied`, then the quota feed's entries after its
//!   position (the shared quota counts other nodes' flushes left). What wakes it: on SQLite, an inotify
//!   event on the database files (another process — the CLI, another gateway's flush — committed), on
//!   PostgreSQL a `NOTIFY` on `tokengate_changes` (token changes and quota feed entries); and in both cases
//!   a poll every `sync_interval` (SQLite's `data_version`; PostgreSQL's revision counter and the feed's
//!   position), which catches whatever a notification missed. The revision and the feed position, not the
//!   notification, are the truth. Each backend owns how it follows the store: [`sqlite`] (inotify,
//!   `data_version`, the file's identity) and [`pg`] (`LISTEN`, backoff). Store errors keep the last good index, mark `/healthz` degraded, log
//!   once per state change, and are retried with a fresh connection (with backoff on PostgreSQL).
//! - the **usage flush** writes the in-memory use counts as increments every `usage_flush_interval` and
//!   once more at shutdown. A batch that failed is retried as it was (same id) before new counts are
//!   taken: PostgreSQL records each batch id, so a batch whose commit succeeded but whose answer was lost
//!   is never added twice.

mod pg;
mod sqlite;

use super::index::Index;
use super::store::{Location, Store, StoreError, UsageBatch, UsageDelta};
use crate::clock;
pub use crate::shutdown::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records the outcome of one sync attempt in the index's health, logging once per state change.
struct Reporter<'a> {
    index: &'a Index,
    last_logged: Option<String>,
}

impl Reporter<'_> {
    fn ok(&mut self) {
        self.index
            .health
            .last_sync
            .store(clock::now() as i64, Ordering::Relaxed);
        let mut e = self
            .index
            .health
            .sync_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if e.take().is_some() {
            log::warn!("sync: recovered; the index is current again");
        }
        self.last_logged = None;
    }

    fn failed(&mut self, err: &StoreError) {
        let msg = err.to_string();
        if self.last_logged.as_deref() != Some(msg.as_str()) {
            log::error!("sync: {msg}; serving the last good index");
            self.last_logged = Some(msg.clone());
        }
        *self
            .index
            .health
            .sync_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(msg);
    }
}

/// How a backend follows the store: waits for a sign that another process changed it (its own: inotify
/// on SQLite's files, `LISTEN` on PostgreSQL), then brings the index up to date from its own connection.
trait Follow {
    /// One round: wait (a sign of change, or the interval), then apply what changed. `Ok(false)`: stopped.
    fn round(&mut self, index: &Index, stop: &Shutdown) -> Result<bool, StoreError>;

    /// After a failed round: drop the connection (the next round opens a fresh one), and back off if the
    /// backend does. Returns whether the gateway stopped meanwhile.
    fn failed(&mut self, stop: &Shutdown) -> bool;
}

/// Runs the sync loop until stopped.
pub fn run_sync(index: Arc<Index>, location: Location, interval: Duration, stop: Arc<Shutdown>) {
    match location {
        Location::Sqlite(path) => {
            follow(sqlite::Follower::new(path, interval, &stop), &index, &stop)
        }
        Location::Postgres(url) => follow(pg::Follower::new(*url, interval), &index, &stop),
    }
}

/// The sync loop: rounds of the backend's follower, their outcome in the index's health, and the purge of
/// rotated-out digests.
fn follow(mut follower: impl Follow, index: &Index, stop: &Shutdown) {
    let mut health = Reporter {
        index,
        last_logged: None,
    };
    let mut last_purge = Instant::now();
    loop {
        match follower.round(index, stop) {
            Ok(false) => return,
            Ok(true) => health.ok(),
            Err(err) => {
                health.failed(&err);
                if follower.failed(stop) {
                    return;
                }
            }
        }
        purge(index, &mut last_purge);
    }
}

/// Drops rotated-out digests whose grace ended, at most once a second.
fn purge(index: &Index, last: &mut Instant) {
    if last.elapsed() >= Duration::from_secs(1) {
        index.purge_expired_grace();
        index.purge_retired();
        *last = Instant::now();
    }
}

/// The usage waiting to be written: a batch that failed (retried as it is, with its id) and the id of
/// the next one.
struct Flusher {
    node: String,
    next_seq: AtomicU64,
    pending: Option<UsageBatch>,
}

impl Flusher {
    /// A flusher whose batches (and quota feed entries) carry the index's node name.
    fn new(index: &Index) -> Flusher {
        Flusher {
            node: index.node().to_owned(),
            next_seq: AtomicU64::new(1),
            pending: None,
        }
    }

    /// Writes the pending batch, if any, then everything counted since. Counts are never lost: a failed
    /// batch stays pending (and is not merged with newer counts, so its id keeps meaning the same rows).
    fn flush(&mut self, index: &Index, store: &mut Store) -> Result<usize, StoreError> {
        let mut written = 0;
        for _ in 0..2 {
            let batch = match self.pending.take() {
                Some(b) => b,
                None => {
                    let deltas: Vec<UsageDelta> = index.take_usage();
                    if deltas.is_empty() {
                        break;
                    }
                    UsageBatch {
                        node: self.node.clone(),
                        seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
                        deltas,
                    }
                }
            };
            match store.flush_usage(&batch) {
                Ok(totals) => {
                    index.settle_quota(&batch.deltas, &totals);
                    written += batch.deltas.len();
                }
                Err(e) => {
                    self.pending = Some(batch);
                    return Err(e);
                }
            }
        }
        Ok(written)
    }
}

/// Runs the usage flush loop until stopped, then flushes once more. A store that is missing (SQLite
/// file deleted or replaced) or unreachable is reopened (never created) on the next try; the counts
/// wait in memory meanwhile.
pub fn run_usage_flush(
    index: Arc<Index>,
    location: Location,
    interval: Duration,
    stop: Arc<Shutdown>,
) {
    let mut store: Option<Store> = None;
    let mut flusher = Flusher::new(&index);
    let mut failing = false;
    loop {
        let stopped = stop.wait(interval);
        let result = (|| -> Result<usize, StoreError> {
            // A database file deleted or replaced under the open handle is opened again (never created).
            if store.as_ref().is_some_and(|s| s.replaced()) {
                store = None;
            }
            let s = match &mut store {
                Some(s) => s,
                None => store.insert(Store::open_existing(&location)?),
            };
            flusher.flush(&index, s)
        })();
        let h = &index.health;
        match result {
            Ok(_) => {
                h.last_flush.store(clock::now() as i64, Ordering::Relaxed);
                *h.flush_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if failing {
                    log::warn!("usage flush: recovered; held counts written");
                    failing = false;
                }
            }
            Err(e) => {
                store = None;
                if !failing {
                    log::error!("usage flush: {e}; counts are kept and retried");
                    failing = true;
                }
                *h.flush_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
        if stopped {
            return;
        }
    }
}
