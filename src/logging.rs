//! The process's logger: env_logger as `RUST_LOG` asks, with the libraries that log secrets held to `info`
//! whatever `RUST_LOG` says. At `debug` and `trace`, tokio-postgres and postgres print every statement's
//! parameters (token digests on create, rotate and copy; the SQL of a batch), and pingora prints request
//! heads (`Authorization: Bearer ...` on the admin listener) and body bytes (a created token's plaintext in
//! the admin API's answer). An `env_logger` directive cannot hold them: a longer one in `RUST_LOG`
//! (`tokio_postgres::query=trace`) would win over ours, so the filter wraps the logger instead.
//!
//! rustls, also verbose at `trace`, logs handshake messages (public) and session tickets (encrypted, or
//! random ids useless without the session's secret), not key material: it keeps whatever level is asked.

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Log targets (crate names, as prefixes) held to [`QUIET_LEVEL`].
const QUIET_TARGETS: [&str; 3] = ["tokio_postgres", "postgres", "pingora"];

/// The most these targets may log: their `info` lines (server notices, start-up) carry no parameters.
const QUIET_LEVEL: Level = Level::Info;

/// Whether a record of `target` at `level` may be written (before `RUST_LOG`'s own filter).
pub fn allowed(target: &str, level: Level) -> bool {
    level <= QUIET_LEVEL || !QUIET_TARGETS.iter().any(|t| target.starts_with(t))
}

/// env_logger with [`allowed`] in front.
struct Filtered(env_logger::Logger);

impl Log for Filtered {
    fn enabled(&self, metadata: &Metadata) -> bool {
        allowed(metadata.target(), metadata.level()) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if allowed(record.target(), record.level()) {
            self.0.log(record);
        }
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
    if log::set_boxed_logger(Box::new(Filtered(logger))).is_ok() {
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
}
