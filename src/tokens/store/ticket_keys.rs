//! The TLS session ticket keys every gateway on one store shares (SQLite migration 7, PostgreSQL 5), so
//! that a ticket one node issued resumes on every node. The store only keeps them and rotates them
//! ([`TicketKeyStore::rotate_ticket_keys`]: one transaction that other gateways doing the same wait for); what a
//! key encrypts, and when a new one starts to be used, is the TLS edge's business
//! (`transport::tls::tickets`). Keys are secrets: [`TicketKey`]'s `Debug` never shows one.

use super::pg::PgStore;
use super::pg_url::to_err as pg_err;
use super::sqlite::{to_err as sqlite_err, SqliteStore};
use super::StoreError;
use rusqlite::{params, OptionalExtension};
use std::fmt;

/// One ticket key as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    pub id: i64,
    /// The AES-256-GCM key.
    pub secret: [u8; 32],
    /// Unix seconds.
    pub created_at: i64,
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// Which keys to keep and whether to add one, at `now` with tickets valid `lifetime` seconds: keys older
/// than two lifetimes go (no ticket they encrypted is still valid), and a new key is due when the newest
/// is half a lifetime old (or there is none).
fn plan(now: i64, lifetime: i64, newest: Option<i64>) -> (i64, bool) {
    let delete_before = now - 2 * lifetime;
    let due = newest.is_none_or(|at| at <= now - lifetime / 2);
    (delete_before, due)
}

/// The ticket keys' part of the store contract (see [`super::TokenStore`]).
pub trait TicketKeyStore {
    /// Brings the ticket keys up to date at `now` (Unix seconds) for tickets valid `lifetime` seconds:
    /// deletes the keys older than two lifetimes and adds `fresh` when a new key is due (see [`plan`]).
    /// Several gateways may call this at once: the transaction serializes them, so one key is added per
    /// rotation. Returns the keys left, newest first.
    fn rotate_ticket_keys(
        &mut self,
        now: i64,
        lifetime: i64,
        fresh: &[u8; 32],
    ) -> Result<Vec<TicketKey>, StoreError>;

    /// Every key, oldest first (`store copy`).
    fn ticket_keys(&mut self) -> Result<Vec<TicketKey>, StoreError>;

    /// Replaces every key with `keys`, in one transaction (`store copy`: devices keep resuming after a
    /// move to another store).
    fn replace_ticket_keys(&mut self, keys: &[TicketKey]) -> Result<(), StoreError>;
}

/// A stored row as a key (`None`: a secret of the wrong length, which no build of ours writes).
fn key(id: i64, secret: Vec<u8>, created_at: i64) -> Option<TicketKey> {
    Some(TicketKey {
        id,
        secret: secret.try_into().ok()?,
        created_at,
    })
}

impl TicketKeyStore for SqliteStore {
    fn rotate_ticket_keys(
        &mut self,
        now: i64,
        lifetime: i64,
        fresh: &[u8; 32],
    ) -> Result<Vec<TicketKey>, StoreError> {
        let err = |e| sqlite_err(&self.path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let newest: Option<i64> = tx
            .query_row("SELECT MAX(created_at) FROM tls_ticket_keys", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?
            .flatten();
        let (delete_before, due) = plan(now, lifetime, newest);
        tx.execute(
            "DELETE FROM tls_ticket_keys WHERE created_at < ?1",
            params![delete_before],
        )
        .map_err(err)?;
        if due {
            tx.execute(
                "INSERT INTO tls_ticket_keys (secret, created_at) VALUES (?1, ?2)",
                params![&fresh[..], now],
            )
            .map_err(err)?;
        }
        let keys = {
            let mut stmt = tx
                .prepare("SELECT id, secret, created_at FROM tls_ticket_keys ORDER BY id DESC")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok(key(r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)?
        };
        tx.commit().map_err(err)?;
        Ok(keys.into_iter().flatten().collect())
    }

    fn ticket_keys(&mut self) -> Result<Vec<TicketKey>, StoreError> {
        let err = |e| sqlite_err(&self.path, e);
        let mut stmt = self
            .conn
            .prepare("SELECT id, secret, created_at FROM tls_ticket_keys ORDER BY id")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok(key(r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(err)?;
        Ok(rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?
            .into_iter()
            .flatten()
            .collect())
    }

    fn replace_ticket_keys(&mut self, keys: &[TicketKey]) -> Result<(), StoreError> {
        let err = |e| sqlite_err(&self.path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute("DELETE FROM tls_ticket_keys", []).map_err(err)?;
        {
            let mut insert = tx
                .prepare("INSERT INTO tls_ticket_keys (id, secret, created_at) VALUES (?1, ?2, ?3)")
                .map_err(err)?;
            for k in keys {
                insert
                    .execute(params![k.id, &k.secret[..], k.created_at])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

impl TicketKeyStore for PgStore {
    fn rotate_ticket_keys(
        &mut self,
        now: i64,
        lifetime: i64,
        fresh: &[u8; 32],
    ) -> Result<Vec<TicketKey>, StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        // Conflicts with itself: a second gateway rotating at the same moment waits, then sees the key
        // the first one added.
        tx.batch_execute("LOCK TABLE tls_ticket_keys IN SHARE ROW EXCLUSIVE MODE")
            .map_err(err)?;
        let newest: Option<i64> = tx
            .query_one("SELECT MAX(created_at) FROM tls_ticket_keys", &[])
            .map_err(err)?
            .get(0);
        let (delete_before, due) = plan(now, lifetime, newest);
        tx.execute(
            "DELETE FROM tls_ticket_keys WHERE created_at < $1",
            &[&delete_before],
        )
        .map_err(err)?;
        if due {
            tx.execute(
                "INSERT INTO tls_ticket_keys (secret, created_at) VALUES ($1, $2)",
                &[&&fresh[..], &now],
            )
            .map_err(err)?;
        }
        let rows = tx
            .query(
                "SELECT id, secret, created_at FROM tls_ticket_keys ORDER BY id DESC",
                &[],
            )
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(rows
            .iter()
            .filter_map(|r| key(r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn ticket_keys(&mut self) -> Result<Vec<TicketKey>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT id, secret, created_at FROM tls_ticket_keys ORDER BY id",
                &[],
            )
            .map_err(|e| pg_err(&self.url, e))?;
        Ok(rows
            .iter()
            .filter_map(|r| key(r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn replace_ticket_keys(&mut self, keys: &[TicketKey]) -> Result<(), StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        tx.batch_execute("DELETE FROM tls_ticket_keys")
            .map_err(err)?;
        for k in keys {
            tx.execute(
                "INSERT INTO tls_ticket_keys (id, secret, created_at) VALUES ($1, $2, $3)",
                &[&k.id, &&k.secret[..], &k.created_at],
            )
            .map_err(err)?;
        }
        // The id sequence continues after the copied ones.
        tx.batch_execute(
            "SELECT setval(pg_get_serial_sequence('tls_ticket_keys', 'id'),
                GREATEST(COALESCE(MAX(id), 0), 1), MAX(id) IS NOT NULL) FROM tls_ticket_keys",
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use crate::tokens::store::{Location, Store};

    #[test]
    fn keys_rotate_every_half_lifetime_and_go_after_two() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse_target(dir.path().join("t.db").to_str().unwrap()).unwrap();
        let mut store = Store::open(&location).unwrap();
        let day = 86_400;
        let t0 = 1_800_000_000;
        let keys = store.rotate_ticket_keys(t0, day, &[1; 32]).unwrap();
        assert_eq!(keys.len(), 1, "the first gateway that needs a key makes it");
        assert_eq!((keys[0].secret, keys[0].created_at), ([1; 32], t0));
        // Within half a lifetime: the same key, the fresh one unused.
        let keys = store
            .rotate_ticket_keys(t0 + day / 2 - 1, day, &[2; 32])
            .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].secret, [1; 32]);
        // Half a lifetime on: a second key, the first kept.
        let keys = store
            .rotate_ticket_keys(t0 + day / 2, day, &[3; 32])
            .unwrap();
        assert_eq!(
            keys.iter().map(|k| k.secret[0]).collect::<Vec<_>>(),
            [3, 1],
            "newest first"
        );
        // Two lifetimes after the first key: it is deleted.
        let keys = store
            .rotate_ticket_keys(t0 + 2 * day + 1, day, &[4; 32])
            .unwrap();
        assert!(keys.iter().all(|k| k.secret != [1; 32]), "{keys:?}");
        assert_eq!(keys[0].secret, [4; 32]);
        assert!(
            !format!("{keys:?}").contains("4, 4"),
            "Debug shows no secret"
        );
    }
}
