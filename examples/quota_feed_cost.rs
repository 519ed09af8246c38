//! What the quota feed costs, at `--tokens` active tokens with a quota (default 100 000), on SQLite (a
//! fresh temporary file) and on PostgreSQL (`--pg URL`, or `TOKENGATE_TEST_PG_URL`; a database the
//! role may fill): one node's flush that adds to every token's count (and appends the feed entry), another
//! node reading that entry and applying it to its index, an idle poll of the feed, the whole read a node
//! that lost its place makes, and — for comparison — what the read-back the feed replaced cost (a read of
//! each recently used token's count on every flush) and the old quadratic settle.
//!
//! ```text
//! CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo run --example quota_feed_cost -- --tokens 100000
//! ```
//! (or `--release`). Prints one line per figure; BENCHMARKS.md has a run.

use anyhow::Context;
use clap::Parser;
use std::time::{Duration, Instant};
use tokengate::tokens::fields::Quota;
use tokengate::tokens::format::Token;
use tokengate::tokens::index::Index;
use tokengate::tokens::store::{
    unix_now, IndexRow, Location, NewToken, QuotaTotal, QuotaUse, Store, UsageBatch, UsageDelta,
};

#[derive(Parser, Debug)]
#[command(about = "Measure the quota feed's cost per flush")]
struct Args {
    /// Active tokens with a quota, each counted once per flush.
    #[arg(long, default_value_t = 100_000)]
    tokens: usize,
    /// A PostgreSQL database to measure on as well (its tables are created; use an empty database).
    #[arg(long, env = "TOKENGATE_TEST_PG_URL")]
    pg: Option<String>,
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.tokens;
    let dir = tempfile::tempdir()?;
    let mut stores = vec![("sqlite", Location::Sqlite(dir.path().join("tokens.db")))];
    if let Some(url) = args.pg.as_deref().filter(|u| !u.is_empty()) {
        stores.push(("postgres", Location::parse_target(url)?));
    }
    for (name, location) in stores {
        println!("== {name}, {n} tokens with a quota");
        measure_store(&location, args.pg.as_deref(), n).with_context(|| name.to_string())?;
    }
    measure_index(n);
    Ok(())
}

fn measure_store(location: &Location, pg_url: Option<&str>, n: usize) -> anyhow::Result<()> {
    let quota = Quota::parse("1000000/day").map_err(anyhow::Error::msg)?;
    let mut s = Store::open(location)?;
    let first = s.token_counts()?.1 + 1;
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let news: Vec<NewToken> = chunk
            .iter()
            .map(|i| NewToken {
                user: format!("user{}", i % 1000),
                label: "cost".into(),
                quota: Some(quota),
                ..Default::default()
            })
            .collect();
        s.create_many(&news, "bench")?;
    }
    let ids: Vec<i64> = (first..first + n as i64).collect();
    let now = unix_now();
    let period = quota.period.index(now);
    let (start, end) = (
        quota.period.start_of(period),
        quota.period.start_of(period + 1),
    );
    let batch = |node: &str, seq, with_quota: bool| UsageBatch {
        node: node.into(),
        seq,
        deltas: ids
            .iter()
            .map(|&id| UsageDelta {
                id,
                uses: 1,
                last_used_at: now,
                quota: with_quota.then_some(QuotaUse {
                    start,
                    end,
                    count: 1,
                }),
            })
            .collect(),
    };
    // Warm the rows once.
    s.flush_usage(&batch("W", 1, true))?;
    let (_, uses_only) = timed(|| s.flush_usage(&batch("A", 1, false)));
    let head_before = s.quota_feed_head()?;
    let (totals, with_quota) = timed(|| s.flush_usage(&batch("A", 2, true)));
    let totals = totals?;
    println!(
        "flush by node A, uses only: {}; uses + quota counts + feed entry: {} ({} totals, entry {} KiB)",
        ms(uses_only),
        ms(with_quota),
        totals.len(),
        totals.len() * 24 / 1024
    );
    let (read, took) = timed(|| s.quota_changes_since(head_before, "B"));
    let read = read?;
    println!(
        "node B reads the entry: {} ({} totals)",
        ms(took),
        read.totals.len()
    );
    // The entry alone: the counter, the insert and the prune, in a transaction of their own.
    let blob = tokengate::tokens::store::quota_feed::encode(&totals);
    let append = match &mut s {
        Store::Sqlite(sq) => {
            let mut conn = rusqlite::Connection::open(sq.path())?;
            timed(|| -> anyhow::Result<()> {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let seq: i64 = tx.query_row(
                    "UPDATE quota_feed_head SET seq = seq + 1 RETURNING seq",
                    [],
                    |r| r.get(0),
                )?;
                tx.execute(
                    "INSERT INTO quota_feed (seq, node, at, totals) VALUES (?1, 'X', ?2, ?3)",
                    rusqlite::params![seq, now, blob],
                )?;
                tx.execute(
                    "DELETE FROM quota_feed WHERE at < ?1 AND seq < ?2",
                    rusqlite::params![now - 60, seq],
                )?;
                Ok(tx.commit()?)
            })
        }
        Store::Postgres(_) => {
            let mut client = postgres::Client::connect(pg_url.unwrap_or(""), postgres::NoTls)?;
            timed(|| -> anyhow::Result<()> {
                let mut tx = client.transaction()?;
                let seq: i64 = tx
                    .query_one(
                        "WITH h AS (UPDATE quota_feed_head SET seq = seq + 1 RETURNING seq)
                         SELECT h.seq FROM h, pg_notify('tokengate_changes', 'quota:' || h.seq::text)",
                        &[],
                    )?
                    .get(0);
                tx.execute(
                    "INSERT INTO quota_feed (seq, node, at, totals) VALUES ($1, 'X', $2, $3)",
                    &[&seq, &now, &blob],
                )?;
                tx.execute(
                    "DELETE FROM quota_feed WHERE at < $1 AND seq < $2",
                    &[&(now - 60), &seq],
                )?;
                Ok(tx.commit()?)
            })
        }
    };
    append.0?;
    println!(
        "the feed entry alone (counter, insert, prune, commit): {}",
        ms(append.1)
    );
    let polls = 1000;
    let head = s.quota_feed_head()?;
    let (_, took) = timed(|| {
        for _ in 0..polls {
            s.quota_changes_since(head, "B").expect("poll");
        }
    });
    println!("idle poll (nothing new): {}", ms(took / polls));
    let (whole, took) = timed(|| s.quota_changes_since(head + 1_000_000, "B"));
    println!(
        "whole read by a node that lost its place: {} ({} counts)",
        ms(took),
        whole?.totals.len()
    );
    // What the feed replaced: every flush read back the count of each token used in the last minute.
    let took = match &mut s {
        Store::Sqlite(sq) => {
            let conn = rusqlite::Connection::open(sq.path())?;
            let mut stmt =
                conn.prepare("SELECT quota_period, quota_used FROM tokens WHERE id = ?1")?;
            timed(|| {
                for id in &ids {
                    let _: (Option<i64>, i64) = stmt
                        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .expect("read");
                }
            })
            .1
        }
        Store::Postgres(_) => {
            let mut client = postgres::Client::connect(pg_url.unwrap_or(""), postgres::NoTls)?;
            timed(|| {
                client
                    .query(
                        "SELECT id, quota_period, quota_used FROM tokens WHERE id = ANY($1::int8[])",
                        &[&ids],
                    )
                    .expect("read")
            })
            .1
        }
    };
    println!(
        "(before: the read-back of {n} recently used tokens' counts, per flush: {})",
        ms(took)
    );
    Ok(())
}

/// The index's side: applying an entry of `n` totals, settling a flush of `n` counts, and the settle it
/// replaced (a scan of the sent counts per total), timed on a tenth and scaled.
fn measure_index(n: usize) {
    println!("== index, {n} tokens with a quota");
    let quota = Quota::parse("1000000/day").unwrap();
    let now = unix_now();
    let start = quota.period.start_of(quota.period.index(now));
    let index = Index::new();
    for id in 1..=n as i64 {
        index.apply(&IndexRow {
            id,
            user: format!("user{id}"),
            digest: Token::generate().digest(),
            prev_digest: None,
            prev_valid_until: None,
            scopes: vec![],
            expires_at: None,
            revoked: false,
            rev: id,
            bound_cert: None,
            rate_limit: None,
            quota: Some(quota),
            quota_used: 0,
            quota_period: Some(start),
            leaked: false,
            access: Default::default(),
        });
    }
    let totals: Vec<QuotaTotal> = (1..=n as i64)
        .map(|id| QuotaTotal {
            id,
            period_start: start,
            total: 7,
        })
        .collect();
    let (_, took) = timed(|| index.observe_quotas(&totals));
    println!("observe {n} feed totals: {}", ms(took));
    let sent: Vec<UsageDelta> = (1..=n as i64)
        .map(|id| UsageDelta {
            id,
            uses: 1,
            last_used_at: now,
            quota: Some(QuotaUse {
                start,
                end: start + 86_400,
                count: 1,
            }),
        })
        .collect();
    let (_, took) = timed(|| index.settle_quota(&sent, &totals));
    println!("settle a flush of {n}: {}", ms(took));
    let tenth = &totals[..n / 10];
    let (sum, took) = timed(|| {
        tenth
            .iter()
            .map(|t| {
                sent.iter()
                    .filter(|d| d.id == t.id)
                    .filter_map(|d| d.quota)
                    .filter(|q| q.start == t.period_start)
                    .map(|q| q.count)
                    .sum::<u64>()
            })
            .sum::<u64>()
    });
    std::hint::black_box(sum);
    println!(
        "(before: the settle's scan per total, {n} × {n}: about {})",
        ms(took * 10)
    );
}
