//! The background loops that keep the index in step with the store, plus the [`Shutdown`] signal that wakes
//! them at once on shutdown:
//!
//! - the **sync loop** loads every change with `rev > last applied`, then the quota feed's entries after its
//!   position (the shared quota counts other nodes' flushes left). What wakes it: on SQLite, an inotify
//!   event on the database files (another process — the CLI, another gateway's flush — committed), on
//!   PostgreSQL a `NOTIFY` on `tokengate_changes` (token changes and quota feed entries); and in both cases
//!   a poll every `sync_interval` (SQLite's `data_version`; PostgreSQL's revision counter and the feed's
//!   position), which catches whatever a notification missed. The revision and the feed position, not the
//!   notification, are the truth. Store errors keep the last good index, mark `/healthz` degraded, log
//!   once per state change, and are retried with a fresh connection (with backoff on PostgreSQL).
//! - the **usage flush** writes the in-memory use counts as increments every `usage_flush_interval` and
//!   once more at shutdown. A batch that failed is retried as it was (same id) before new counts are
//!   taken: PostgreSQL records each batch id, so a batch whose commit succeeded but whose answer was lost
//!   is never added twice.

use super::index::Index;
use super::store::{Location, Store, StoreError, UsageBatch, UsageDelta};
use crate::clock;
pub use crate::shutdown::Shutdown;
use std::path::{Path, PathBuf};
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

/// Runs the sync loop until stopped.
pub fn run_sync(index: Arc<Index>, location: Location, interval: Duration, stop: Arc<Shutdown>) {
    match location {
        Location::Sqlite(path) => sync_sqlite(&index, &path, interval, &stop),
        Location::Postgres(_) => sync_postgres(&index, &location, interval, &stop),
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

/// Watches the database's folder for writes to the database or its WAL (another process committed) and
/// pokes `stop`. `None` when the watch cannot be set up: the poll still catches every change.
fn watch_sqlite(path: &Path, stop: &Arc<Shutdown>) -> Option<notify::INotifyWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())?
        .to_path_buf();
    let name = path.file_name()?.to_os_string();
    let stop = stop.clone();
    let mut watcher = notify::INotifyWatcher::new(
        move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let ours = event.paths.iter().any(|p| {
                p.file_name().is_some_and(|f| {
                    f == name.as_os_str()
                        || f.to_string_lossy() == format!("{}-wal", name.to_string_lossy())
                })
            });
            if ours && matches!(event.kind, EventKind::Modify(_) | EventKind::Create(_)) {
                stop.poke();
            }
        },
        notify::Config::default(),
    )
    .map_err(|e| log::warn!("sync: cannot watch {} ({e}); polling only", dir.display()))
    .ok()?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| log::warn!("sync: cannot watch {} ({e}); polling only", dir.display()))
        .ok()?;
    log::debug!(
        "sync: watching {} for commits by other processes",
        dir.display()
    );
    Some(watcher)
}

/// SQLite: woken by inotify or every `interval`, checks `PRAGMA data_version` (cheap) and, when another
/// connection committed, loads the changed rows.
fn sync_sqlite(index: &Index, path: &Path, interval: Duration, stop: &Arc<Shutdown>) {
    use std::os::unix::fs::MetadataExt;
    let _watcher = watch_sqlite(path, stop);
    // What this process has applied, for CLI changes on this host to wait for (see super::applied).
    let mut marker = super::applied::Marker::create(path);
    let mut store: Option<(Store, u64)> = None;
    let mut header: Option<(std::fs::File, u64)> = None;
    let mut seen_version: Option<i64> = None;
    let mut last_purge = Instant::now();
    let mut health = Reporter {
        index,
        last_logged: None,
    };
    let mut pokes = 0;
    // A file event may come before the commit it belongs to is visible (SQLite publishes a commit in
    // the -shm index after writing its WAL frames, and mmap writes raise no event): after an event,
    // the database is looked at every half millisecond for a moment, not only once.
    let mut fast_until: Option<Instant> = None;
    let gone = |why: &str| StoreError::Create {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, why.to_string()),
    };
    loop {
        let before = pokes;
        let wait = match fast_until {
            Some(until) if Instant::now() < until => Duration::from_micros(500),
            _ => interval,
        };
        if stop.wait_poke(wait, &mut pokes) {
            return;
        }
        if pokes != before {
            fast_until = Some(Instant::now() + SETTLE);
        }
        let result = (|| -> Result<(), StoreError> {
            // A stat per tick notices a database deleted or replaced under the open handle, which would
            // otherwise keep answering from the unlinked file.
            let inode = std::fs::metadata(path)
                .map_err(|_| gone("the database file is missing"))?
                .ino();
            // The open connection answers from its cache: read the file's header to notice corruption.
            // The handle stays open for the inode's lifetime: closing any descriptor of the database file
            // would drop every POSIX lock this process's SQLite connections hold on it.
            if header.as_ref().is_none_or(|(_, ino)| *ino != inode) {
                store = None;
                header = std::fs::File::open(path).ok().map(|f| (f, inode));
            }
            if !header.as_ref().is_some_and(|(f, _)| has_sqlite_header(f)) {
                return Err(gone("the database file is corrupt (no SQLite header)"));
            }
            if store.as_ref().is_some_and(|(_, ino)| *ino != inode) {
                log::warn!("sync: {} was replaced; reopening", path.display());
                store = None;
            }
            if store.is_none() {
                let location = Location::Sqlite(path.to_path_buf());
                store = Some((Store::open_existing(&location)?, inode));
                seen_version = None;
            }
            let (s, _) = store.as_mut().expect("opened above");
            let Store::Sqlite(sqlite) = s else {
                unreachable!("an SQLite location opens an SQLite store")
            };
            let v = sqlite.data_version()?;
            if seen_version != Some(v) {
                let n = index.sync_from(s)?;
                if n > 0 {
                    log::debug!("sync: applied {n} token changes");
                }
                index.sync_quotas_from(s)?;
                seen_version = Some(v);
            }
            if let Some(m) = marker.as_mut() {
                m.record(index.last_rev());
            }
            Ok(())
        })();
        match result {
            Ok(()) => health.ok(),
            Err(err) => {
                store = None;
                health.failed(&err);
            }
        }
        purge(index, &mut last_purge);
    }
}

/// How long after a file event the SQLite database is looked at every half millisecond.
const SETTLE: Duration = Duration::from_millis(50);

/// Whether the file starts with SQLite's magic string (16 bytes, one positioned read).
fn has_sqlite_header(file: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 16];
    file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"SQLite format 3\0"
}

/// Longest wait between reconnection attempts to PostgreSQL.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// PostgreSQL: a listening connection sleeps until `NOTIFY tokengate_changes` or `interval`; then the
/// changed rows are loaded (`rev > last applied`), so a notification lost while disconnected is caught up
/// by the revision. Connection failures back off from `interval` to [`MAX_BACKOFF`].
fn sync_postgres(index: &Index, location: &Location, interval: Duration, stop: &Arc<Shutdown>) {
    let Location::Postgres(url) = location else {
        unreachable!("called for PostgreSQL")
    };
    let mut conn: Option<(Store, super::store::pg::Listener)> = None;
    let mut health = Reporter {
        index,
        last_logged: None,
    };
    let mut backoff = interval;
    let mut last_purge = Instant::now();
    while !stop.is_stopped() {
        let result = (|| -> Result<(), StoreError> {
            if conn.is_none() {
                let store = Store::open_existing(location)?;
                let listener = super::store::pg::Listener::connect(url)?;
                conn = Some((store, listener));
                // Whatever changed while this node was not listening.
                let (store, _) = conn.as_mut().expect("connected above");
                let n = index.sync_from(store)?;
                if n > 0 {
                    log::info!("sync: caught up {n} token changes after connecting");
                }
                index.sync_quotas_from(store)?;
                return Ok(());
            }
            let (store, listener) = conn.as_mut().expect("connected");
            let notified = listener.wait(interval)?;
            let behind = notified || {
                let Store::Postgres(pg) = store else {
                    unreachable!("a PostgreSQL location opens a PostgreSQL store")
                };
                pg.current_rev()? > index.last_rev()
            };
            if behind {
                let n = index.sync_from(store)?;
                if n > 0 {
                    log::debug!("sync: applied {n} token changes");
                }
            }
            // One small query when nothing was flushed (the feed's position, no entry).
            index.sync_quotas_from(store)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                health.ok();
                backoff = interval;
            }
            Err(err) => {
                conn = None;
                health.failed(&err);
                if stop.wait(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        purge(index, &mut last_purge);
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
    use std::os::unix::fs::MetadataExt;
    let mut store: Option<(Store, u64)> = None;
    let mut flusher = Flusher::new(&index);
    let sqlite_path: Option<PathBuf> = match &location {
        Location::Sqlite(p) => Some(p.clone()),
        Location::Postgres(_) => None,
    };
    let mut failing = false;
    loop {
        let stopped = stop.wait(interval);
        let result = (|| -> Result<usize, StoreError> {
            let inode = sqlite_path
                .as_ref()
                .and_then(|p| std::fs::metadata(p).map(|m| m.ino()).ok());
            if sqlite_path.is_some() && store.as_ref().is_some_and(|(_, ino)| Some(*ino) != inode) {
                store = None;
            }
            if store.is_none() {
                store = Some((Store::open_existing(&location)?, inode.unwrap_or(0)));
            }
            flusher.flush(&index, &mut store.as_mut().expect("opened above").0)
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
