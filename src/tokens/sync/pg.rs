//! How the sync loop follows a PostgreSQL store: a listening connection sleeps until `NOTIFY
//! tokengate_changes` or `sync_interval`; then the changed rows are loaded (`rev > last applied`), so a
//! notification lost while disconnected is caught up by the revision. Connection failures back off from
//! the interval to [`MAX_BACKOFF`].

use super::{Follow, Shutdown};
use crate::tokens::index::Index;
use crate::tokens::store::pg::{Listener, PgStore};
use crate::tokens::store::{PgUrl, StoreError};
use std::time::Duration;

/// Longest wait between reconnection attempts to PostgreSQL.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The PostgreSQL follower: a connection for queries and one that listens.
pub(super) struct Follower {
    url: PgUrl,
    interval: Duration,
    backoff: Duration,
    conn: Option<(PgStore, Listener)>,
}

impl Follower {
    pub(super) fn new(url: PgUrl, interval: Duration) -> Follower {
        Follower {
            url,
            interval,
            backoff: interval,
            conn: None,
        }
    }

    /// Connects, then loads whatever changed while this node was not listening.
    fn connect(&mut self, index: &Index) -> Result<(), StoreError> {
        let store = PgStore::connect_to(&self.url)?;
        let listener = Listener::connect(&self.url)?;
        let (store, _) = self.conn.insert((store, listener));
        let n = index.sync_from(store)?;
        if n > 0 {
            log::info!("sync: caught up {n} token changes after connecting");
        }
        index.sync_quotas_from(store)?;
        Ok(())
    }
}

impl Follow for Follower {
    fn round(&mut self, index: &Index, stop: &Shutdown) -> Result<bool, StoreError> {
        if stop.is_stopped() {
            return Ok(false);
        }
        match self.conn.as_mut() {
            None => self.connect(index)?,
            Some((store, listener)) => {
                let notified = listener.wait(self.interval)?;
                if notified || store.current_rev()? > index.last_rev() {
                    let n = index.sync_from(store)?;
                    if n > 0 {
                        log::debug!("sync: applied {n} token changes");
                    }
                }
                // One small query when nothing was flushed (the feed's position, no entry).
                index.sync_quotas_from(store)?;
            }
        }
        self.backoff = self.interval;
        Ok(true)
    }

    fn failed(&mut self, stop: &Shutdown) -> bool {
        self.conn = None;
        if stop.wait(self.backoff) {
            return true;
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        false
    }
}
