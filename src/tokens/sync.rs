//! The background loops that keep the index in step with the store: the sync loop (notices other
//! processes' commits and loads the changed rows) and the usage flush (writes the in-memory use counts
//! as increments), plus the [`Stop`] signal that wakes them at once on shutdown.

use super::index::Index;
use super::store::{Store, StoreError};
use crate::clock;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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
    let mut header: Option<(std::fs::File, u64)> = None;
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
            // The open connection answers from its cache: read the file's header to notice corruption.
            // The handle stays open for the inode's lifetime: closing any descriptor of the database file
            // would drop every POSIX lock this process's SQLite connections hold on it.
            if header.as_ref().is_none_or(|(_, ino)| *ino != inode) {
                store = None;
                header = std::fs::File::open(&path).ok().map(|f| (f, inode));
            }
            if !header.as_ref().is_some_and(|(f, _)| has_sqlite_header(f)) {
                return Err(gone("the database file is corrupt (no SQLite header)"));
            }
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

/// Whether the file starts with SQLite's magic string (16 bytes, one positioned read).
fn has_sqlite_header(file: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 16];
    file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"SQLite format 3\0"
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
