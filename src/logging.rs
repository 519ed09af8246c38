//! The process's logger: env_logger as `RUST_LOG` asks, with the libraries that log secrets held to `info`
//! whatever `RUST_LOG` says. At `debug` and `trace`, tokio-postgres and postgres print every statement's
//! parameters (token digests on create, rotate and copy; the SQL of a batch), and pingora prints request
//! heads (`Authorization: Bearer ...` on the admin listener) and body bytes (a created token's plaintext in
//! the admin API's answer). An `env_logger` directive cannot hold them: a longer one in `RUST_LOG`
//! (`tokio_postgres::query=trace`) would win over ours, so the filter wraps the logger instead.
//!
//! Pingora's own lines are also held to [`BURST`] a second: its accept loop logs every failed `accept()`
//! and retries at once, so an error that repeats without blocking (a listener whose runtime is already
//! shut down during a fast shutdown, `ENFILE`, `ENOBUFS`) wrote millions of identical lines a second. The
//! lines over the budget are counted and reported once the second is over.
//!
//! rustls, also verbose at `trace`, logs handshake messages (public) and session tickets (encrypted, or
//! random ids useless without the session's secret), not key material: it keeps whatever level is asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Log targets (crate names, as prefixes) held to [`QUIET_LEVEL`].
const QUIET_TARGETS: [&str; 3] = ["tokio_postgres", "postgres", "pingora"];

/// The most these targets may log: their `info` lines (server notices, start-up) carry no parameters.
const QUIET_LEVEL: Level = Level::Info;

/// Whether a record of `target` at `level` may be written (before `RUST_LOG`'s own filter).
pub fn allowed(target: &str, level: Level) -> bool {
    level <= QUIET_LEVEL || !QUIET_TARGETS.iter().any(|t| target.starts_with(t))
}

/// The most lines pingora may write in one second; the rest are counted and reported.
const BURST: u64 = 20;

/// A budget of [`BURST`] lines a second, without a lock (the logger is called from every thread).
#[derive(Default)]
struct Budget {
    /// The second (since [`Budget::start`]) the count belongs to.
    second: AtomicU64,
    /// Lines asked for in that second.
    count: AtomicU64,
    /// Lines refused since the last report.
    suppressed: AtomicU64,
    start: OnceLock<Instant>,
}

/// What the budget says of one line.
#[derive(Debug, PartialEq, Eq)]
struct Spend {
    /// Whether the line may be written.
    write: bool,
    /// Lines refused in the seconds before this one, to report first (0: nothing to report).
    report: u64,
}

impl Budget {
    fn spend(&self, now: Instant) -> Spend {
        let start = *self.start.get_or_init(|| now);
        let second = now.saturating_duration_since(start).as_secs();
        let mut report = 0;
        let seen = self.second.load(Ordering::Relaxed);
        if second != seen
            && self
                .second
                .compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
            report = self.suppressed.swap(0, Ordering::Relaxed);
        }
        let write = self.count.fetch_add(1, Ordering::Relaxed) < BURST;
        if !write {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        Spend { write, report }
    }
}

/// env_logger with [`allowed`] in front, and pingora held to [`BURST`] lines a second.
struct Filtered(env_logger::Logger, Budget);

impl Log for Filtered {
    fn enabled(&self, metadata: &Metadata) -> bool {
        allowed(metadata.target(), metadata.level()) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !allowed(record.target(), record.level()) {
            return;
        }
        if record.target().starts_with("pingora") {
            let spend = self.1.spend(Instant::now());
            if spend.report > 0 {
                self.0.log(
                    &Record::builder()
                        .args(format_args!(
                            "{} more pingora log lines in the last second(s) were not written (over {BURST} a second)",
                            spend.report
                        ))
                        .level(Level::Warn)
                        .target("tokengate::logging")
                        .build(),
                );
            }
            if !spend.write {
                return;
            }
        }
        self.0.log(record);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Installs the logger: `RUST_LOG` if set, else `default_level` (`info` for `serve`, `warn` for the rest),
/// with millisecond timestamps.
pub fn init(default_level: &str) {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
            .format_timestamp_millis()
            .build();
    let max: LevelFilter = logger.filter();
    if log::set_boxed_logger(Box::new(Filtered(logger, Budget::default()))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bearing_targets_stop_at_info() {
        for target in [
            "tokio_postgres::query",
            "tokio_postgres",
            "postgres::config",
            "pingora_core::apps::http_app",
            "pingora_core::protocols::http::v1::body",
        ] {
            assert!(!allowed(target, Level::Debug), "{target}");
            assert!(!allowed(target, Level::Trace), "{target}");
            assert!(allowed(target, Level::Info), "{target}");
            assert!(allowed(target, Level::Warn), "{target}");
        }
        for target in ["tokengate::tokens::sync", "rustls::client::hs", "notify"] {
            assert!(allowed(target, Level::Trace), "{target}");
        }
    }

    #[test]
    fn a_repeating_line_is_held_to_the_burst_and_the_rest_reported_the_next_second() {
        let budget = Budget::default();
        let t0 = Instant::now();
        let written = (0..1000).filter(|_| budget.spend(t0).write).count() as u64;
        assert_eq!(written, BURST);
        // The next second: the refused lines are reported once, and the budget is whole again.
        let t1 = t0 + std::time::Duration::from_millis(1500);
        assert_eq!(
            budget.spend(t1),
            Spend {
                write: true,
                report: 1000 - BURST
            }
        );
        assert_eq!(budget.spend(t1).report, 0);
        let written = 2 + (0..100).filter(|_| budget.spend(t1).write).count() as u64;
        assert_eq!(written, BURST);
        // A quiet second after that reports what the last one refused, then nothing more.
        let t3 = t0 + std::time::Duration::from_secs(3);
        assert_eq!(budget.spend(t3).report, 102 - BURST);
        assert_eq!(
            budget.spend(t3 + std::time::Duration::from_secs(1)).report,
            0
        );
    }
}
