//! The quota feed: how the shared quota counts one node's usage flush leaves reach every other node
//! within the sync bound, whether or not those nodes have seen the token yet.
//!
//! Each flush that adds to quota counts appends one entry — the totals its `UPDATE ... RETURNING` gave,
//! packed as (token id, period start, total), 24 bytes a token — in the flush's own transaction. Entries
//! are numbered by a one-row counter (`quota_feed_head`) updated as the transaction's last statement, so
//! that, as with token revisions, numbers become visible in commit order and without gaps: a reader at
//! position `n` that finds `n + 1` has missed nothing. On PostgreSQL the same statement queues a
//! `NOTIFY tokengate_changes` (payload `quota:<n>`), which wakes every node's sync loop; on SQLite the commit
//! itself wakes them (inotify, `data_version`). Each node reads the entries after its position, skipping
//! its own (settled from its flush's answer), and raises its shared counts (they only grow within a
//! period, so entries may be applied in any order and more than once).
//!
//! Entries older than [`KEEP`] seconds are pruned by the flushes that append (never the newest, so a
//! reader always finds where the feed is). A reader whose next entry is gone (it was away longer, or the
//! store was replaced) reads every token's count instead — correct, and rare.
//!
//! Why not bump the token's revision instead: every flush would then send each changed token's whole row
//! to every node (and through the index's writer path), move the `tokens_rev` index on every usage update
//! (no more heap-only updates), and serialise flushes with admin writes on the revision counter. An entry
//! costs 24 bytes a changed token, written once and read once by each other node.

use super::pg::PgStore;
use super::pg_url::to_err as pg_err;
use super::sqlite::{to_err as sqlite_err, SqliteStore};
use super::{QuotaChanges, QuotaTotal, StoreError};
use rusqlite::params;

/// Seconds an entry is kept: far longer than any running node takes to read it (its sync loop looks every
/// `sync_interval`, and at once on a notification).
pub const KEEP: i64 = 60;

/// The bytes of one packed total.
const RECORD: usize = 24;

/// The first [`PER_READ`] entries after `$1` (their totals left out when node `$2` wrote them), with the
/// feed's head, in one statement (one snapshot). At least one row: the head, with no entry when none
/// follows. (Each statement is spelled twice: PostgreSQL numbers parameters `$n`, SQLite `?n`.)
const SINCE: &str = "SELECT h.seq, f.seq, CASE WHEN f.node = $2 THEN NULL ELSE f.totals END
    FROM quota_feed_head h
    LEFT JOIN (SELECT * FROM quota_feed WHERE seq > $1 ORDER BY seq LIMIT $3) f ON TRUE ORDER BY f.seq";
const SQLITE_SINCE: &str = "SELECT h.seq, f.seq, CASE WHEN f.node = ?2 THEN NULL ELSE f.totals END
    FROM quota_feed_head h
    LEFT JOIN (SELECT * FROM quota_feed WHERE seq > ?1 ORDER BY seq LIMIT ?3) f ON TRUE ORDER BY f.seq";

/// Entries read at a time (each up to 24 bytes a token a node counted in one flush), so that a reader
/// that is behind holds a few in memory, not a minute's worth.
pub const PER_READ: i64 = 4;

/// Every token's shared count (a reader that lost its place).
const WHOLE: &str =
    "SELECT id, quota_period, quota_used FROM tokens WHERE quota IS NOT NULL AND quota_period IS NOT NULL";

const HEAD: &str = "SELECT seq FROM quota_feed_head";

/// PostgreSQL: takes the next entry number (the counter row stays locked until commit) and queues the
/// notification.
const PG_NEXT: &str = "WITH h AS (UPDATE quota_feed_head SET seq = seq + 1 RETURNING seq)
    SELECT h.seq FROM h, pg_notify('tokengate_changes', 'quota:' || h.seq::text)";
const SQLITE_NEXT: &str = "UPDATE quota_feed_head SET seq = seq + 1 RETURNING seq";
const INSERT: &str = "INSERT INTO quota_feed (seq, node, at, totals) VALUES ($1, $2, $3, $4)";
const SQLITE_INSERT: &str =
    "INSERT INTO quota_feed (seq, node, at, totals) VALUES (?1, ?2, ?3, ?4)";
const PRUNE: &str = "DELETE FROM quota_feed WHERE at < $1 AND seq < $2";
const SQLITE_PRUNE: &str = "DELETE FROM quota_feed WHERE at < ?1 AND seq < ?2";

/// The statements a PostgreSQL flush appends with, prepared before its transaction begins.
pub(super) struct PgAppend {
    next: postgres::Statement,
    insert: postgres::Statement,
    prune: postgres::Statement,
}

/// Packs totals for an entry.
pub fn encode(totals: &[QuotaTotal]) -> Vec<u8> {
    let mut out = Vec::with_capacity(totals.len() * RECORD);
    for t in totals {
        out.extend_from_slice(&t.id.to_le_bytes());
        out.extend_from_slice(&t.period_start.to_le_bytes());
        out.extend_from_slice(&t.total.to_le_bytes());
    }
    out
}

/// Unpacks an entry's totals into `out`. A length that is not a whole number of records (only a hand-
/// edited row has one) keeps the whole records and reports the rest.
pub fn decode(bytes: &[u8], out: &mut Vec<QuotaTotal>) -> bool {
    let word = |b: &[u8]| <[u8; 8]>::try_from(b).expect("8 bytes");
    out.extend(bytes.chunks_exact(RECORD).map(|r| QuotaTotal {
        id: i64::from_le_bytes(word(&r[..8])),
        period_start: i64::from_le_bytes(word(&r[8..16])),
        total: u64::from_le_bytes(word(&r[16..])),
    }));
    bytes.len().is_multiple_of(RECORD)
}

/// What a reader at `after` makes of the rows of [`SINCE`] (the feed's head; entry numbers and totals):
/// the changes, or `None` when it has to read every count instead (the next entry is gone).
fn assemble(
    after: i64,
    head: i64,
    entries: impl IntoIterator<Item = (i64, Option<Vec<u8>>)>,
) -> Option<QuotaChanges> {
    let mut totals = Vec::new();
    let mut position = after;
    for (seq, bytes) in entries {
        if seq != position + 1 {
            return None;
        }
        position = seq;
        if let Some(b) = bytes {
            if !decode(&b, &mut totals) {
                log::error!("quota feed: entry {seq} is malformed; its whole records are used");
            }
        }
    }
    // Nothing follows `after` although the feed is elsewhere: it was pruned past us, or reset.
    if position == after && head != after {
        return None;
    }
    Some(QuotaChanges {
        position,
        totals,
        whole: false,
        more: position < head,
    })
}

fn total(id: i64, period_start: i64, used: i64) -> QuotaTotal {
    QuotaTotal {
        id,
        period_start,
        total: used.max(0) as u64,
    }
}

/// The quota feed's part of the store's contract ([`super::TokenStore`]).
pub trait QuotaFeedStore {
    /// The quota feed's position: the number of the newest entry (0: none yet).
    fn quota_feed_head(&mut self) -> Result<i64, StoreError>;

    /// The shared quota counts changed by flushes after feed position `after`, except those of the node
    /// `own` (it settled them from its flush's answer).
    fn quota_changes_since(&mut self, after: i64, own: &str) -> Result<QuotaChanges, StoreError>;
}

impl SqliteStore {
    /// Appends a flush's totals to the feed, in the flush's transaction (whose write lock orders entries
    /// as commits).
    pub(super) fn append_quota_feed(
        tx: &rusqlite::Transaction<'_>,
        node: &str,
        totals: &[QuotaTotal],
        now: i64,
    ) -> rusqlite::Result<()> {
        if totals.is_empty() {
            return Ok(());
        }
        let seq: i64 = tx.query_row(SQLITE_NEXT, [], |r| r.get(0))?;
        tx.prepare_cached(SQLITE_INSERT)?
            .execute(params![seq, node, now, encode(totals)])?;
        tx.prepare_cached(SQLITE_PRUNE)?
            .execute(params![now - KEEP, seq])?;
        Ok(())
    }
}

impl QuotaFeedStore for SqliteStore {
    fn quota_feed_head(&mut self) -> Result<i64, StoreError> {
        self.conn
            .query_row(HEAD, [], |r| r.get(0))
            .map_err(|e| sqlite_err(&self.path, e))
    }

    fn quota_changes_since(&mut self, after: i64, own: &str) -> Result<QuotaChanges, StoreError> {
        let err = |e| sqlite_err(&self.path, e);
        // One read transaction: the position, the entries and (if needed) every count, one snapshot.
        let tx = self.conn.unchecked_transaction().map_err(err)?;
        let mut head = after;
        let mut entries = Vec::new();
        {
            let mut stmt = tx.prepare_cached(SQLITE_SINCE).map_err(err)?;
            let mut rows = stmt.query(params![after, own, PER_READ]).map_err(err)?;
            while let Some(r) = rows.next().map_err(err)? {
                head = r.get(0).map_err(err)?;
                if let Some(seq) = r.get::<_, Option<i64>>(1).map_err(err)? {
                    entries.push((seq, r.get::<_, Option<Vec<u8>>>(2).map_err(err)?));
                }
            }
        }
        let changes = match assemble(after, head, entries) {
            Some(changes) => changes,
            None => {
                let mut stmt = tx.prepare_cached(WHOLE).map_err(err)?;
                let totals = stmt
                    .query_map([], |r| Ok(total(r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                QuotaChanges {
                    position: head,
                    totals,
                    whole: true,
                    more: false,
                }
            }
        };
        tx.finish().map_err(err)?;
        Ok(changes)
    }
}

impl PgStore {
    /// Appends a flush's totals to the feed, as the last statements of the flush's transaction `tx`: the
    /// counter row's lock is then held only for the commit, and entries become visible in number order.
    /// (Flushes lock their token rows before the counter, in id order, and nothing else takes the counter:
    /// no two transactions can wait for each other in a cycle.)
    pub(super) fn append_quota_feed(
        tx: &mut postgres::Transaction<'_>,
        statements: &PgAppend,
        node: &str,
        totals: &[QuotaTotal],
        now: i64,
    ) -> Result<(), postgres::Error> {
        if totals.is_empty() {
            return Ok(());
        }
        let seq: i64 = tx.query_one(&statements.next, &[])?.get(0);
        tx.execute(&statements.insert, &[&seq, &node, &now, &encode(totals)])?;
        tx.execute(&statements.prune, &[&(now - KEEP), &seq])?;
        Ok(())
    }

    /// Prepares what [`PgStore::append_quota_feed`] runs (before the flush's transaction borrows the connection).
    pub(super) fn quota_feed_statements(&mut self) -> Result<PgAppend, StoreError> {
        Ok(PgAppend {
            next: self.prepare(PG_NEXT)?,
            insert: self.prepare(INSERT)?,
            prune: self.prepare(PRUNE)?,
        })
    }
}

impl QuotaFeedStore for PgStore {
    fn quota_feed_head(&mut self) -> Result<i64, StoreError> {
        let statement = self.prepare(HEAD)?;
        let row = self
            .client
            .query_one(&statement, &[])
            .map_err(|e| pg_err(&self.url, e))?;
        Ok(row.get(0))
    }

    /// Every count, when needed, is read after the position (a later snapshot: it holds at least what the
    /// entries up to it held).
    fn quota_changes_since(&mut self, after: i64, own: &str) -> Result<QuotaChanges, StoreError> {
        use postgres::fallible_iterator::FallibleIterator;
        let (since, whole) = (self.prepare(SINCE)?, self.prepare(WHOLE)?);
        let err = |e| pg_err(&self.url, e);
        let rows = self
            .client
            .query(&since, &[&after, &own, &PER_READ])
            .map_err(err)?;
        let head = rows.first().map_or(after, |r| r.get(0));
        let entries = rows
            .iter()
            .filter_map(|r| Some((r.get::<_, Option<i64>>(1)?, r.get(2))));
        if let Some(changes) = assemble(after, head, entries) {
            return Ok(changes);
        }
        drop(rows);
        // Streamed: a million rows are not held as rows at once.
        let mut totals = Vec::new();
        let mut it = self
            .client
            .query_raw(&whole, std::iter::empty::<i64>())
            .map_err(err)?;
        while let Some(r) = it.next().map_err(err)? {
            totals.push(total(r.get(0), r.get(1), r.get(2)));
        }
        Ok(QuotaChanges {
            position: head,
            totals,
            whole: true,
            more: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: i64, total: u64) -> QuotaTotal {
        QuotaTotal {
            id,
            period_start: 1_795_305_600,
            total,
        }
    }

    #[test]
    fn totals_round_trip_and_a_torn_entry_keeps_its_whole_records() {
        let totals = vec![t(1, 60), t(1 << 40, u64::MAX >> 24), t(-1, 0)];
        let bytes = encode(&totals);
        assert_eq!(bytes.len(), 72);
        let mut out = Vec::new();
        assert!(decode(&bytes, &mut out));
        assert_eq!(out, totals);
        out.clear();
        assert!(!decode(&bytes[..50], &mut out));
        assert_eq!(out, totals[..2]);
    }

    #[test]
    fn a_reader_applies_entries_only_when_none_is_missing() {
        let e = |seq: i64, ts: &[QuotaTotal]| (seq, Some(encode(ts)));
        let changes = |position, totals, more| {
            Some(QuotaChanges {
                position,
                totals,
                whole: false,
                more,
            })
        };
        // In order from the position: all applied; own entries (no totals) only move the position.
        assert_eq!(
            assemble(4, 7, [e(5, &[t(1, 3)]), (6, None), e(7, &[t(2, 9)])]),
            changes(7, vec![t(1, 3), t(2, 9)], false)
        );
        assert_eq!(
            assemble(4, 9, [e(5, &[t(1, 3)]), (6, None)]),
            changes(6, vec![t(1, 3)], true),
            "a few at a time"
        );
        assert_eq!(assemble(7, 7, []), changes(7, vec![], false), "nothing new");
        assert_eq!(assemble(4, 7, [e(6, &[]), e(7, &[])]), None, "5 was pruned");
        assert_eq!(assemble(4, 9, []), None, "pruned past the reader");
        assert_eq!(assemble(12, 3, [e(1, &[])]), None, "the feed was reset");
        assert_eq!(assemble(12, 0, []), None, "a new store");
    }
}
