//! Bulk-creates tokens in a tokengate database, for benchmarks and capacity tests.
//!
//! Tokens are created with [`Store::create_many`] in batches (one transaction each, `--batch` tokens,
//! default 10 000), spread over `--users` user ids (`user0`, `user1`, ...). The creation rate is printed
//! per batch and at the end. With `--write-tokens FILE --keep K` the first K plaintext tokens are written
//! to FILE, one per line (mode 0600), for load generators; every other plaintext is dropped, so only the
//! digests of those tokens exist anywhere.
//!
//! ```text
//! cargo run --release --example seed_tokens -- --db /tmp/tg-bench/tokens.db --count 1000000 \
//!     --users 1000 --write-tokens /tmp/tg-bench/tokens.txt --keep 64
//! ```
//!
//! Then point a gateway's `[store] path` (or `url`, for `--db postgres://...`) at the store; it loads
//! every token at start.

use anyhow::Context;
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use tokengate::tokens::store::{Location, NewToken, Store};

#[derive(Parser, Debug)]
#[command(about = "Bulk-create tokens in a tokengate store (SQLite or PostgreSQL)")]
struct Args {
    /// The SQLite database (created with mode 0600 and migrated when missing), or a PostgreSQL URL
    /// (`postgres://...`, migrated when needed).
    #[arg(long)]
    db: String,
    /// How many tokens to create.
    #[arg(long)]
    count: u64,
    /// How many distinct user ids to spread the tokens over.
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Tokens per transaction.
    #[arg(long, default_value_t = 10_000)]
    batch: u64,
    /// Write the first `--keep` plaintext tokens to this file, one per line.
    #[arg(long)]
    write_tokens: Option<PathBuf>,
    /// How many plaintext tokens to write to `--write-tokens`.
    #[arg(long, default_value_t = 100)]
    keep: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let mut store = Store::open(&Location::parse_target(&args.db)?)?;
    let mut out = match &args.write_tokens {
        Some(path) => Some(std::io::BufWriter::new(private_file(path)?)),
        None => None,
    };

    let start = Instant::now();
    let mut created: u64 = 0;
    let mut kept: u64 = 0;
    let mut batch = Vec::with_capacity(args.batch.min(args.count) as usize);
    while created < args.count {
        let n = args.batch.min(args.count - created);
        batch.clear();
        batch.extend((created..created + n).map(|i| NewToken {
            user: format!("user{}", i % args.users),
            label: format!("seed {i}"),
            scopes: Vec::new(),
            expires_at: None,
            bound_cert: None,
            rate_limit: None,
            quota: None,
        }));
        let t = Instant::now();
        let tokens = store.create_many(&batch, "seed")?;
        created += n;
        if let Some(w) = out.as_mut() {
            for (_, token) in tokens.iter().take((args.keep - kept) as usize) {
                writeln!(w, "{}", token.as_str())?;
                kept += 1;
            }
        }
        eprintln!(
            "seed: {created}/{} tokens ({:.0} tokens/s in this batch)",
            args.count,
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
    if let Some(mut w) = out {
        w.flush()?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "created {created} tokens in {secs:.2} s ({:.0} tokens/s){}",
        created as f64 / secs.max(1e-9),
        match &args.write_tokens {
            Some(p) => format!("; {kept} plaintext tokens written to {}", p.display()),
            None => String::new(),
        }
    );
    Ok(())
}

/// Creates (truncating) a file only its owner can read: it holds live credentials.
fn private_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}
