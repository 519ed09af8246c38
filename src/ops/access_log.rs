//! The access log: one line per request (plain or JSON) with route, status, duration, bytes, token id and
//! user id — never a credential, and never the query string (a legacy route may carry a token there).
//!
//! Off the hot path: a request hands a small [`Record`] to a bounded channel without blocking
//! (`try_send`); a writer thread wakes every 100 ms, formats what is queued and writes it through a buffer.
//! When the writer falls behind, records are dropped and counted rather than slowing requests down.

use crate::config::{AccessLogFormat, LogConfig};
use http::{HeaderValue, Method};
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Records waiting to be written before new ones are dropped.
const QUEUE: usize = 64 * 1024;

/// What is logged about one request.
pub struct Record {
    pub at: SystemTime,
    pub client: Option<IpAddr>,
    pub method: Method,
    /// Path only, without query.
    pub path: String,
    pub route: Option<Arc<str>>,
    pub status: u16,
    pub auth: &'static str,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub token_id: Option<i64>,
    pub user: Option<HeaderValue>,
    /// The request's `x-request-id`.
    pub request_id: String,
}

/// The sending side, held by the proxy.
pub struct AccessLog {
    tx: Option<SyncSender<Record>>,
    /// Records dropped because the writer fell behind.
    pub dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// A log that records nothing.
    pub fn off() -> AccessLog {
        AccessLog {
            tx: None,
            dropped: Arc::default(),
        }
    }

    /// Starts the writer thread for this configuration. Returns the log and the thread (which ends once
    /// every sender is dropped and the queue is written).
    pub fn start(
        config: &LogConfig,
    ) -> std::io::Result<(AccessLog, Option<std::thread::JoinHandle<()>>)> {
        if config.access == AccessLogFormat::Off {
            return Ok((AccessLog::off(), None));
        }
        let out: Box<dyn Write + Send> = match &config.access_path {
            None => Box::new(std::io::stdout()),
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)?,
                )
            }
        };
        let (tx, rx) = sync_channel(QUEUE);
        let format = config.access;
        let handle = std::thread::Builder::new()
            .name("tokengate-access-log".into())
            .spawn(move || write_loop(rx, out, format))?;
        Ok((
            AccessLog {
                tx: Some(tx),
                dropped: Arc::default(),
            },
            Some(handle),
        ))
    }

    /// Whether records are wanted at all (lets the proxy skip building them).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record without blocking.
    pub fn log(&self, record: Record) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(record) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Drains the queue every 100 ms instead of blocking on it: a sender then never has to wake this thread
/// (no futex per request), and lines go out in batches.
fn write_loop(rx: Receiver<Record>, out: Box<dyn Write + Send>, format: AccessLogFormat) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        loop {
            match rx.try_recv() {
                Ok(r) => {
                    line.clear();
                    format_record(&r, format, &mut line);
                    let _ = out.write_all(line.as_bytes());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
    }
}

/// Replaces what could break a plain log line (quotes, backslashes, spaces, control characters).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => '_',
            c if c.is_control() || c == ' ' => '_',
            c => c,
        })
        .collect()
}

/// Formats one record as a line (with trailing newline).
pub fn format_record(r: &Record, format: AccessLogFormat, line: &mut String) {
    use std::fmt::Write as _;
    let at = humantime::format_rfc3339_millis(r.at);
    let user = r.user.as_ref().and_then(|u| u.to_str().ok());
    let route = r.route.as_deref();
    match format {
        AccessLogFormat::Json => {
            let v = serde_json::json!({
                "time": at.to_string(),
                "client": r.client.map(|c| c.to_string()),
                "method": r.method.as_str(),
                "path": r.path,
                "route": route,
                "status": r.status,
                "auth": r.auth,
                "duration_ms": (r.duration.as_secs_f64() * 1e6).round() / 1e3,
                "bytes_in": r.bytes_in,
                "bytes_out": r.bytes_out,
                "token_id": r.token_id,
                "user_id": user,
                "request_id": r.request_id,
            });
            let _ = writeln!(line, "{v}");
        }
        AccessLogFormat::Plain | AccessLogFormat::Off => {
            let _ = writeln!(
                line,
                "{at} {client} \"{method} {path}\" {status} route={route} auth={auth} token={token} user={user} \
                 in={bin} out={bout} ms={ms:.3} id={id}",
                client = r.client.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                method = r.method.as_str(),
                path = clean(&r.path),
                status = r.status,
                route = route.unwrap_or("-"),
                auth = r.auth,
                token = r.token_id.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                user = user.map(clean).unwrap_or_else(|| "-".into()),
                bin = r.bytes_in,
                bout = r.bytes_out,
                ms = r.duration.as_secs_f64() * 1e3,
                id = clean(&r.request_id),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_386_600),
            client: Some("127.0.0.1".parse().unwrap()),
            method: Method::POST,
            path: "/iot/a \"b\"".into(),
            route: Some("telemetry".into()),
            status: 200,
            auth: "ok",
            duration: Duration::from_micros(1234),
            bytes_in: 10,
            bytes_out: 20,
            token_id: Some(7),
            user: Some(HeaderValue::from_static("alice")),
            request_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        }
    }

    #[test]
    fn plain_line() {
        let mut l = String::new();
        format_record(&record(), AccessLogFormat::Plain, &mut l);
        assert_eq!(
            l,
            "2026-11-22T22:30:00.000Z 127.0.0.1 \"POST /iot/a__b_\" 200 route=telemetry auth=ok token=7 user=alice \
             in=10 out=20 ms=1.234 id=4bf92f3577b34da6a3ce929d0e0e4736\n"
        );
    }

    #[test]
    fn json_line() {
        let mut l = String::new();
        format_record(&record(), AccessLogFormat::Json, &mut l);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["route"], "telemetry");
        assert_eq!(v["user_id"], "alice");
        assert_eq!(v["token_id"], 7);
        assert_eq!(v["path"], "/iot/a \"b\"");
        assert_eq!(v["duration_ms"], 1.234);
        assert_eq!(v["request_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
