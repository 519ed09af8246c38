//! The access log: one line per request (plain or JSON) with route, status, duration, bytes, token id and
//! user id — never a credential, and never the query string (a legacy route may carry a token there).
//!
//! Off the hot path: a request hands a small [`Record`] to a bounded channel without blocking
//! (`try_send`); a writer thread wakes every 100 ms, formats what is queued and writes it through a buffer.
//! When the writer falls behind, records are dropped and counted rather than slowing requests down.
//!
//! **Bounded by bytes, not by count.** What a client controls is cut before it is queued: the path to
//! [`MAX_PATH`] bytes, marked `…(truncated, N bytes)` with its real length, an extension method to
//! [`MAX_METHOD`] bytes followed by `...` (the request id from a trusted proxy and the user id are at most
//! 128 bytes by construction). The queue then holds at most [`QUEUE_BYTES`] (8 MiB, records and what they
//! point to); a record that would go over is dropped and counted in `tokengate_access_log_dropped_total`.
//! So a log target that stalls (stdout to a pipe nobody reads, a full disk, a stopped collector) costs at
//! most 8 MiB plus the writer's buffers, never memory that grows with the requests. (Before 2026-12 the
//! queue was bounded by count only: 63 KB paths with stdout stalled left 1.59 GB resident after 24k
//! requests.)

use crate::config::{AccessLogFormat, LogConfig};
use http::{HeaderValue, Method};
use prometheus::IntCounter;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The most the queue holds, in bytes (records and what they point to), before new records are dropped.
pub const QUEUE_BYTES: usize = 8 << 20;
/// The most of a path that is logged, in bytes; a longer one is cut and marked with its length.
pub const MAX_PATH: usize = 1024;
/// The most of an extension method that is logged, in bytes.
pub const MAX_METHOD: usize = 32;
/// How often at most the writer warns that lines were dropped.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What is logged about one request.
pub struct Record {
    pub at: SystemTime,
    pub client: Option<IpAddr>,
    pub method: Method,
    /// Path only, without query (cut to [`MAX_PATH`] when queued).
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

impl Record {
    /// The memory this record holds while queued: itself and the heap it owns. The sender adds it to the
    /// queue's count and the writer takes it off; both compute it from the same unchanged record.
    fn cost(&self) -> usize {
        let method = match self.method.as_str().len() {
            // Standard methods and short extensions are inline.
            n if n > 15 => n,
            _ => 0,
        };
        std::mem::size_of::<Record>()
            + self.path.capacity()
            + method
            + self.request_id.capacity()
            + self.user.as_ref().map_or(0, |u| u.len())
    }

    /// Cuts what the client controls to its bound.
    fn bound(&mut self) {
        if self.path.len() > MAX_PATH {
            let real = self.path.len();
            let mut end = MAX_PATH;
            while !self.path.is_char_boundary(end) {
                end -= 1;
            }
            self.path.truncate(end);
            use std::fmt::Write as _;
            let _ = write!(self.path, "…(truncated, {real} bytes)");
            self.path.shrink_to_fit();
        }
        let method = self.method.as_str();
        if method.len() > MAX_METHOD {
            // A method is a token (ASCII), and `.` is a token character.
            let cut = format!("{}...", &method[..MAX_METHOD]);
            self.method = Method::from_bytes(cut.as_bytes()).unwrap_or(Method::GET);
        }
    }
}

/// The sending side, held by the proxy (and the verify listener).
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Record>>,
    /// Bytes queued now (see [`Record::cost`]).
    queued: Arc<AtomicUsize>,
    /// Records dropped because the writer fell behind (`tokengate_access_log_dropped_total`).
    dropped: IntCounter,
}

impl AccessLog {
    /// A log that records nothing.
    pub fn off() -> AccessLog {
        AccessLog {
            tx: None,
            queued: Arc::default(),
            dropped: IntCounter::new("unused", "unused").expect("counter"),
        }
    }

    /// Starts the writer thread for this configuration; `dropped` counts the records it could not
    /// keep. Returns the log and the thread (which ends once every sender is dropped and the queue is
    /// written).
    pub fn start(
        config: &LogConfig,
        dropped: IntCounter,
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
        // The byte bound is the binding one; the slot count only has to be enough for it.
        let (tx, rx) = sync_channel(QUEUE_BYTES / std::mem::size_of::<Record>());
        let format = config.access;
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            rx,
            queued: queued.clone(),
            dropped: dropped.clone(),
            format,
        };
        let handle = std::thread::Builder::new()
            .name("tokengate-access-log".into())
            .spawn(move || writer.run(out))?;
        Ok((
            AccessLog {
                tx: Some(tx),
                queued,
                dropped,
            },
            Some(handle),
        ))
    }

    /// Whether records are wanted at all (lets the proxy skip building them).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record without blocking, or drops and counts it when the queue is full.
    pub fn log(&self, mut record: Record) {
        let Some(tx) = &self.tx else { return };
        record.bound();
        let cost = record.cost();
        if self.queued.fetch_add(cost, Ordering::Relaxed) + cost > QUEUE_BYTES {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(record) {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            self.dropped.inc();
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// The writer thread's side.
struct Writer {
    rx: Receiver<Record>,
    queued: Arc<AtomicUsize>,
    dropped: IntCounter,
    format: AccessLogFormat,
}

impl Writer {
    /// Drains the queue every 100 ms instead of blocking on it: a sender then never has to wake this
    /// thread (no futex per request), and lines go out in batches.
    fn run(self, out: Box<dyn Write + Send>) {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
        let mut line = String::with_capacity(512);
        let mut warned: (Option<Instant>, u64) = (None, 0);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            loop {
                match self.rx.try_recv() {
                    Ok(r) => {
                        line.clear();
                        format_record(&r, self.format, &mut line);
                        let cost = r.cost();
                        drop(r);
                        self.queued.fetch_sub(cost, Ordering::Relaxed);
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
            let dropped = self.dropped.get();
            if dropped > warned.1 && warned.0.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                log::warn!(
                    "access log: {} lines dropped: its target did not keep up (queue bound {} MiB)",
                    dropped - warned.1,
                    QUEUE_BYTES >> 20
                );
                warned = (Some(Instant::now()), dropped);
            }
        }
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

    #[test]
    fn a_long_path_is_cut_and_names_its_length() {
        let mut r = record();
        r.path = format!("/{}", "é".repeat(30_000)); // 60,001 bytes, 2-byte characters
        r.bound();
        assert!(r.path.starts_with("/éé"));
        assert!(
            r.path.ends_with("…(truncated, 60001 bytes)"),
            "{}",
            &r.path[1000..]
        );
        assert!(r.path.len() <= MAX_PATH + 40, "{}", r.path.len());
        assert!(
            r.path.capacity() < 2 * MAX_PATH,
            "the rest is freed, not kept"
        );
        let mut l = String::new();
        format_record(&r, AccessLogFormat::Json, &mut l);
        assert!(l.len() < 2048, "{}", l.len());
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert!(v["path"].as_str().unwrap().contains("60001 bytes"));
        l.clear();
        format_record(&r, AccessLogFormat::Plain, &mut l);
        assert!(l.contains("…(truncated,_60001_bytes)\""), "{l}");
        // A path at the bound is kept whole.
        let mut r = record();
        r.path = "a".repeat(MAX_PATH);
        r.bound();
        assert_eq!(r.path, "a".repeat(MAX_PATH));
    }

    #[test]
    fn a_long_method_is_cut() {
        let mut r = record();
        r.method = Method::from_bytes("X".repeat(50_000).as_bytes()).unwrap();
        r.bound();
        assert_eq!(r.method.as_str(), format!("{}...", "X".repeat(MAX_METHOD)));
        let mut r = record();
        r.method = Method::from_bytes(b"PROPFIND").unwrap();
        r.bound();
        assert_eq!(r.method.as_str(), "PROPFIND");
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_counts_what_it_drops() {
        // A writer that never drains: what a stalled log target amounts to.
        let (tx, rx) = sync_channel(1 << 20);
        let log = AccessLog {
            tx: Some(tx),
            queued: Arc::default(),
            dropped: IntCounter::new("d", "d").unwrap(),
        };
        let n = 20_000;
        for _ in 0..n {
            let mut r = record();
            r.path = "p".repeat(60_000);
            log.log(r);
        }
        let queued = log.queued.load(Ordering::Relaxed);
        assert!(queued <= QUEUE_BYTES, "{queued}");
        let held: usize = rx.try_iter().map(|r| r.cost()).sum();
        assert_eq!(held, queued, "the count is what the queue holds");
        assert!(log.dropped() > 0 && log.dropped() < n, "{}", log.dropped());
        assert_eq!(
            log.dropped() as usize + held / record_cost_cut(),
            n as usize,
            "every record is either queued or counted"
        );
    }

    /// The cost of a [`record`] whose path was a 60,000-byte one.
    fn record_cost_cut() -> usize {
        let mut r = record();
        r.path = "p".repeat(60_000);
        r.bound();
        r.cost()
    }

    #[test]
    fn the_writer_takes_off_what_it_wrote() {
        let (tx, rx) = sync_channel(16);
        let queued = Arc::new(AtomicUsize::new(0));
        let log = AccessLog {
            tx: Some(tx),
            queued: queued.clone(),
            dropped: IntCounter::new("d", "d").unwrap(),
        };
        let writer = Writer {
            rx,
            queued: queued.clone(),
            dropped: log.dropped.clone(),
            format: AccessLogFormat::Json,
        };
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Shared(out.clone());
        let handle = std::thread::spawn(move || writer.run(Box::new(sink)));
        for _ in 0..10 {
            log.log(record());
        }
        drop(log);
        handle.join().unwrap();
        assert_eq!(queued.load(Ordering::Relaxed), 0);
        assert_eq!(
            String::from_utf8(out.lock().unwrap().clone())
                .unwrap()
                .lines()
                .count(),
            10
        );
    }
}
