//! How the sync loop follows an SQLite store: woken by inotify on the database's folder (another process
//! committed) or every `sync_interval`, it checks `PRAGMA data_version` (cheap) and, when another
//! connection committed, loads the changed rows; a stat and a header read per round notice the file
//! deleted, replaced or corrupted under the open handle.

use super::{Follow, Shutdown};
use crate::tokens::applied::Marker;
use crate::tokens::index::Index;
use crate::tokens::store::sqlite::SqliteStore;
use crate::tokens::store::StoreError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after a file event the SQLite database is looked at every half millisecond.
const SETTLE: Duration = Duration::from_millis(50);

/// The SQLite follower: its connection, what it has seen, and the watch that pokes it.
pub(super) struct Follower {
    path: PathBuf,
    interval: Duration,
    /// Kept alive for as long as the loop runs; `None` when the watch could not be set up (polling only).
    _watcher: Option<notify::INotifyWatcher>,
    /// What this process has applied, for CLI changes on this host to wait for (see `tokens::applied`).
    marker: Option<Marker>,
    /// The connection, with the inode of the file it opened.
    store: Option<(SqliteStore, u64)>,
    /// A handle on the file, for its header (kept for the inode's lifetime, see [`Follower::catch_up`]).
    header: Option<(std::fs::File, u64)>,
    seen_version: Option<i64>,
    pokes: u64,
    /// A file event may come before the commit it belongs to is visible (SQLite publishes a commit in
    /// the -shm index after writing its WAL frames, and mmap writes raise no event): after an event,
    /// the database is looked at every half millisecond for a moment, not only once.
    fast_until: Option<Instant>,
}

impl Follower {
    pub(super) fn new(path: PathBuf, interval: Duration, stop: &Arc<Shutdown>) -> Follower {
        Follower {
            _watcher: watch(&path, stop),
            marker: Marker::create(&path),
            path,
            interval,
            store: None,
            header: None,
            seen_version: None,
            pokes: 0,
            fast_until: None,
        }
    }

    fn gone(&self, why: &str) -> StoreError {
        StoreError::Create {
            path: self.path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, why.to_string()),
        }
    }

    /// Checks the file is still the one opened and sound, then applies what other connections committed.
    fn catch_up(&mut self, index: &Index) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let path = &self.path;
        // A stat per tick notices a database deleted or replaced under the open handle, which would
        // otherwise keep answering from the unlinked file.
        let inode = std::fs::metadata(path)
            .map_err(|_| self.gone("the database file is missing"))?
            .ino();
        // The open connection answers from its cache: read the file's header to notice corruption.
        // The handle stays open for the inode's lifetime: closing any descriptor of the database file
        // would drop every POSIX lock this process's SQLite connections hold on it.
        if self.header.as_ref().is_none_or(|(_, ino)| *ino != inode) {
            self.store = None;
            self.header = std::fs::File::open(path).ok().map(|f| (f, inode));
        }
        if !self
            .header
            .as_ref()
            .is_some_and(|(f, _)| has_sqlite_header(f))
        {
            return Err(self.gone("the database file is corrupt (no SQLite header)"));
        }
        if self.store.as_ref().is_some_and(|(_, ino)| *ino != inode) {
            log::warn!("sync: {} was replaced; reopening", path.display());
            self.store = None;
        }
        if self.store.is_none() {
            self.store = Some((SqliteStore::open_existing(path)?, inode));
            self.seen_version = None;
        }
        let (store, _) = self.store.as_mut().expect("opened above");
        let v = store.data_version()?;
        if self.seen_version != Some(v) {
            let n = index.sync_from(store)?;
            if n > 0 {
                log::debug!("sync: applied {n} token changes");
            }
            index.sync_quotas_from(store)?;
            self.seen_version = Some(v);
        }
        if let Some(m) = self.marker.as_mut() {
            m.record(index.last_rev());
        }
        Ok(())
    }
}

impl Follow for Follower {
    fn round(&mut self, index: &Index, stop: &Shutdown) -> Result<bool, StoreError> {
        let before = self.pokes;
        let wait = match self.fast_until {
            Some(until) if Instant::now() < until => Duration::from_micros(500),
            _ => self.interval,
        };
        if stop.wait_poke(wait, &mut self.pokes) {
            return Ok(false);
        }
        if self.pokes != before {
            self.fast_until = Some(Instant::now() + SETTLE);
        }
        self.catch_up(index)?;
        Ok(true)
    }

    /// No backoff: the next round is an interval (or a file event) away.
    fn failed(&mut self, _stop: &Shutdown) -> bool {
        self.store = None;
        false
    }
}

/// Watches the database's folder for writes to the database or its WAL (another process committed) and
/// pokes `stop`. `None` when the watch cannot be set up: the poll still catches every change.
fn watch(path: &Path, stop: &Arc<Shutdown>) -> Option<notify::INotifyWatcher> {
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

/// Whether the file starts with SQLite's magic string (16 bytes, one positioned read).
fn has_sqlite_header(file: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 16];
    file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"SQLite format 3\0"
}
