//! The access log: one line per request (plain or JSON) with route, status, duration, bytes, token id and
//! user id — never a credential, and never the query string (a legacy route may carry a token there).
//!
//! **Formatted where the request ends, written elsewhere** (nginx's model, without its blocking write):
//! the worker thread that finishes a request formats its line at once, with no allocation, into a
//! scratch buffer of its own and copies it into its own *lane* (single-producer, single-consumer byte
//! rings, `rtrb`: no lock, no syscall). The writer thread takes whole lines out of every lane and
//! writes them: when a ring holds [`WAKE_BYTES`] (the worker wakes it once as the ring crosses that
//! mark, like nginx's `buffer=64k`) and every [`FLUSH_EVERY`] otherwise (nginx's `flush=`), so a line is
//! on its way to the file within about 100 ms and at shutdown. So the cost of a line is spread evenly
//! over the requests, and no request waits behind a burst of formatting. (Before 2026-12 the writer
//! woke every 100 ms and formatted everything queued since — about 6,000 lines at 60k req/s — in one
//! burst on the worker's core: p99 2.41 ms against nginx's 1.00 ms.)
//!
//! **A lane is a hot ring and a spill ring.** Lines go to the small hot ring ([`HOT_BYTES`], a few times
//! the wake mark), which the writer keeps emptying, so the same memory is written again and again and
//! stays in the core's cache, as nginx's one 64 KiB buffer does. (One 4 MiB ring, as before 2026-12-07,
//! streamed 9 MB/s of fresh cache lines through a 2 MiB L2 at 60k req/s, pushing out the worker's own
//! data: callgrind's cache simulation, `benches/log_instructions.sh` with `CACHE_SIM=1`, counts 2.75
//! L2 write misses a request for the log with one ring, 0.83 with the lanes, 0.05 for nginx's log.) Only when the writer is behind by a hot ring do lines go to the spill ring (the rest of
//! [`RING_BYTES`]), until the writer has taken all of it: then back to the hot ring. Lines of one
//! thread reach the target in the order they were logged (the writer takes the hot ring, then the
//! spill ring's lines after whatever the hot ring held before them).
//!
//! **Bounded by bytes.** What a client controls is cut as the line is formatted: the path to [`MAX_PATH`]
//! bytes, marked `…(truncated, N bytes)` with its real length, an extension method to [`MAX_METHOD`]
//! bytes followed by `...` (the request id from a trusted proxy and the user id are at most 128 bytes by
//! construction). A lane holds at most [`RING_BYTES`] per worker thread; a line that does not fit is
//! dropped and counted in `tokengate_access_log_dropped_total`. So a log target that stalls (stdout to a
//! pipe nobody reads, a full disk, a stopped collector) costs at most one lane per worker thread, never
//! memory that grows with the requests, and never a stalled request.
//!
//! **What a line costs** (callgrind, `benches/log_instructions.sh`; issue 29 set nginx's buffered
//! `combined` log as the bar). Texts a client sends (path, user id, request id) are checked a word
//! (8 bytes) at a time and copied as they are when they are printable ASCII, which also makes them UTF-8
//! without a check: the path and the user id reach the formatter as bytes and are read as UTF-8 (lossily)
//! only when they are not. Texts safe by construction (address, method, route name, outcome, TLS marker:
//! [`put_known`]) are copied unchecked, their JSON quotes part of the literals around them.

use crate::config::{AccessLogFormat, LogConfig};
use prometheus::IntCounter;
use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What each worker thread's lane holds at most, in bytes (hot and spill ring). A line that does not fit
/// (the writer is behind by this much: a stalled target) is dropped and counted.
pub const RING_BYTES: usize = 4 << 20;
/// The hot ring lines go to while the writer keeps up: small enough to stay in the core's cache.
pub const HOT_BYTES: usize = 256 << 10;
/// The spill ring: the rest of [`RING_BYTES`], touched only while the writer is behind.
const SPILL_BYTES: usize = RING_BYTES - HOT_BYTES;
/// How full a ring gets before its worker wakes the writer (nginx's `buffer=64k`).
pub const WAKE_BYTES: usize = 64 << 10;
/// How often the writer looks at every ring without being woken (nginx's `flush=`).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The most of a path that is logged, in bytes; a longer one is cut and marked with its length.
pub const MAX_PATH: usize = 1024;
/// The most of an extension method that is logged, in bytes.
pub const MAX_METHOD: usize = 32;
/// How often at most the writer warns that lines were dropped.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What is logged about one request; borrowed from the request's state, formatted at once.
pub struct Record<'a> {
    /// The time of day, as time since the Unix epoch (from [`wall_clock`]).
    pub at: Duration,
    /// The peer's address as text (formatted once per connection).
    pub client: Option<&'a str>,
    pub method: &'a str,
    /// Path only, without query (cut to [`MAX_PATH`] as it is formatted). Bytes as they came: the
    /// formatter turns what is not printable ASCII into `_` (plain) or an escape (JSON), and only then
    /// reads them as UTF-8 (lossily), so the common line validates nothing.
    pub path: &'a [u8],
    pub route: Option<&'a str>,
    pub status: u16,
    pub auth: &'static str,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub token_id: Option<i64>,
    /// The owner's user id (bytes of a valid header value, as the index keeps it).
    pub user: Option<&'a [u8]>,
    /// The request's `x-request-id`.
    pub request_id: &'a str,
    /// The TLS version, `r` when the session was resumed (`1.3r`); `None` on the plain listener.
    pub tls: Option<&'a str>,
}

/// The sending side, held by the transport's engines (clones share one writer; it finishes once the
/// last clone is dropped).
#[derive(Clone)]
pub struct AccessLog {
    shared: Option<Arc<Open>>,
}

/// The log while any [`AccessLog`] holds it: dropping the last one closes it (the writer writes what
/// every lane holds and ends).
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.writer.unpark();
    }
}

/// What the workers and the writer share.
struct Shared {
    /// This log's identity, to tell its lanes from another log's in a thread (tests run several).
    id: u64,
    format: AccessLogFormat,
    /// Lanes made since the writer last looked (a worker registers its lane once).
    new_lanes: Mutex<Vec<Drain>>,
    /// The writer, to wake.
    writer: std::thread::Thread,
    /// Set when the log is dropped: the writer drains every lane and ends.
    closed: AtomicBool,
    /// Lines dropped because a lane was full (`tokengate_access_log_dropped_total`).
    dropped: IntCounter,
}

/// Per worker thread: the lane of the log it last wrote to, and the scratch a line is formatted in.
struct Local {
    log: u64,
    lane: Option<Lane>,
    line: Vec<u8>,
}

/// A worker thread's side of its lane.
struct Lane {
    hot: rtrb::Producer<u8>,
    spill: rtrb::Producer<u8>,
}

/// The writer's side of a lane.
struct Drain {
    hot: rtrb::Consumer<u8>,
    spill: rtrb::Consumer<u8>,
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local { log: 0, lane: None, line: Vec::new() })
    };
}

/// Gives each log its identity.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl AccessLog {
    /// A log that records nothing.
    pub fn off() -> AccessLog {
        AccessLog { shared: None }
    }

    /// Starts the writer thread for this configuration; `dropped` counts the lines it could not keep.
    /// Returns the log and the thread (which ends once the log is dropped and every ring written).
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
        let (log, handle) = AccessLog::with_writer(config.access, dropped, out)?;
        Ok((log, Some(handle)))
    }

    /// A log in `format` whose writer thread writes to `out`.
    fn with_writer(
        format: AccessLogFormat,
        dropped: IntCounter,
        out: Box<dyn Write + Send>,
    ) -> std::io::Result<(AccessLog, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Shared>>();
        let handle = std::thread::Builder::new()
            .name("tokengate-access-log".into())
            .spawn(move || {
                batch_priority();
                if let Ok(shared) = rx.recv() {
                    Writer::new(shared).run(out);
                }
            })?;
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            format,
            new_lanes: Mutex::default(),
            writer: handle.thread().clone(),
            closed: AtomicBool::new(false),
            dropped,
        });
        let _ = tx.send(shared.clone());
        Ok((
            AccessLog {
                shared: Some(Arc::new(Open(shared))),
            },
            handle,
        ))
    }

    /// Whether records are wanted at all (lets the transport skip building them).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Formats the record into this thread's lane without blocking, or drops and counts it when the
    /// lane is full.
    pub fn log(&self, record: &Record) {
        let Some(Open(shared)) = self.shared.as_deref() else {
            return;
        };
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let local = &mut *local;
            if local.log != shared.id || local.lane.is_none() {
                // This thread's first line for this log: a lane of its own, handed to the writer.
                let (hot, hot_drain) = rtrb::RingBuffer::new(HOT_BYTES);
                let (spill, spill_drain) = rtrb::RingBuffer::new(SPILL_BYTES);
                if let Ok(mut lanes) = shared.new_lanes.lock() {
                    lanes.push(Drain {
                        hot: hot_drain,
                        spill: spill_drain,
                    });
                }
                local.log = shared.id;
                local.lane = Some(Lane { hot, spill });
                local.line = Vec::with_capacity(512);
            }
            let Some(lane) = local.lane.as_mut() else {
                return;
            };
            local.line.clear();
            format_record(record, shared.format, &mut local.line);
            let len = local.line.len();
            // The hot ring while the writer keeps up; once it is behind by a hot ring, the spill ring
            // until the writer has taken every spilled line (so the order stays).
            let (ring, size) = if lane.spill.slots() == SPILL_BYTES && lane.hot.slots() >= len {
                (&mut lane.hot, HOT_BYTES)
            } else {
                (&mut lane.spill, SPILL_BYTES)
            };
            let before = size - ring.slots();
            if ring.push_entire_slice(&local.line).is_err() {
                shared.dropped.inc();
                return;
            }
            let spilling = size == SPILL_BYTES;
            if (before < WAKE_BYTES && before + len >= WAKE_BYTES) || (spilling && before == 0) {
                shared.writer.unpark();
            }
            if local.line.capacity() > 4 * MAX_PATH {
                local.line = Vec::with_capacity(512);
            }
        });
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.0.dropped.get())
    }
}

/// Puts the calling thread (the writer) in Linux's `SCHED_BATCH` class: it still gets its fair share of
/// the CPU (no line waits longer), but its wake-ups every 64 KiB never preempt a worker in the middle of
/// a request, which is what a writer woken 300 times a second on a busy worker's core did to the tail.
fn batch_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid, initialised parameter.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            log::debug!(
                "access log writer: SCHED_BATCH refused: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The writer thread's side: every lane it has been handed.
struct Writer {
    shared: Arc<Shared>,
    lanes: Vec<Drain>,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> Writer {
        Writer {
            shared,
            lanes: Vec::new(),
        }
    }

    /// Sleeps until a worker wakes it or [`FLUSH_EVERY`] passes, then writes what every lane holds;
    /// after the log is dropped, writes the rest and ends. The rings' bytes go to the target as they
    /// lie (whole lines, at most two slices a ring), not through another buffer.
    fn run(mut self, mut out: Box<dyn Write + Send>) {
        let mut warned: (Option<Instant>, u64) = (None, 0);
        loop {
            std::thread::park_timeout(FLUSH_EVERY);
            let closed = self.shared.closed.load(Ordering::Acquire);
            self.write_lanes(&mut out);
            let _ = out.flush();
            if closed {
                return;
            }
            let dropped = self.shared.dropped.get();
            if dropped > warned.1 && warned.0.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                log::warn!(
                    "access log: {} lines dropped: its target did not keep up ({} KiB buffered per worker \
                     thread)",
                    dropped - warned.1,
                    RING_BYTES >> 10
                );
                warned = (Some(Instant::now()), dropped);
            }
        }
    }

    /// Writes the whole lines every lane holds now and forgets the lanes of threads that ended.
    fn write_lanes(&mut self, out: &mut dyn Write) {
        if let Ok(mut new) = self.shared.new_lanes.lock() {
            self.lanes.append(&mut new);
        }
        for lane in &mut self.lanes {
            write_ring(&mut lane.hot, out);
            let n = lane.spill.slots();
            if n == 0 {
                continue;
            }
            // The spilled lines were logged after every line the hot ring holds now (the worker
            // spills once the hot ring is full, and goes back only when the spill ring is empty).
            write_ring(&mut lane.hot, out);
            if let Ok(chunk) = lane.spill.read_chunk(n) {
                let (a, b) = chunk.as_slices();
                let _ = out.write_all(a);
                let _ = out.write_all(b);
                chunk.commit_all();
            }
        }
        self.lanes
            .retain(|l| !(l.hot.is_abandoned() && l.hot.is_empty() && l.spill.is_empty()));
    }
}

/// Writes the whole lines `ring` holds now.
fn write_ring(ring: &mut rtrb::Consumer<u8>, out: &mut dyn Write) {
    let n = ring.slots();
    if n == 0 {
        return;
    }
    if let Ok(chunk) = ring.read_chunk(n) {
        let (a, b) = chunk.as_slices();
        let _ = out.write_all(a);
        let _ = out.write_all(b);
        chunk.commit_all();
    }
}

/// The classic word-at-a-time byte tests (eight bytes an operation; each is exact about whether *some*
/// byte of the word matches, which is all [`all_plain`] asks). They run over every text of every line
/// on the worker: byte at a time they were over a quarter of the log's instructions (callgrind: 810 of
/// 2,852 a request).
mod word {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;

    /// Some byte below `n` (`n` at most 0x80).
    #[inline]
    pub fn less(w: u64, n: u8) -> u64 {
        w.wrapping_sub(ONES * n as u64) & !w & HIGH
    }

    /// Some byte above `n` (`n` below 0x80).
    #[inline]
    pub fn more(w: u64, n: u8) -> u64 {
        (w.wrapping_add(ONES * (127 - n) as u64) | w) & HIGH
    }

    /// Some byte equal to `b`.
    #[inline]
    pub fn has(w: u64, b: u8) -> u64 {
        less(w ^ (ONES * b as u64), 1)
    }

    /// Whether `bad` finds nothing in any word of `s`. The bytes past the last whole word are read
    /// with loads that overlap bytes already tested, so every byte of a tested word is one of `s`'s and
    /// nothing is copied (filling a padded word took a `memcpy` call: 15 to 20 instructions a text).
    #[inline]
    pub fn none(s: &[u8], bad: impl Fn(u64) -> u64) -> bool {
        let mut words = s.chunks_exact(8);
        let mut found = 0;
        for w in &mut words {
            found |= bad(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
        }
        let n = s.len();
        if !n.is_multiple_of(8) {
            let tail = if n >= 8 {
                u64::from_le_bytes(s[n - 8..].try_into().unwrap_or([0; 8]))
            } else if n >= 4 {
                let first = u32::from_le_bytes(s[..4].try_into().unwrap_or([0; 4]));
                let last = u32::from_le_bytes(s[n - 4..].try_into().unwrap_or([0; 4]));
                u64::from(first) | u64::from(last) << 32
            } else if n >= 2 {
                let first = u16::from_le_bytes(s[..2].try_into().unwrap_or([0; 2]));
                let last = u16::from_le_bytes(s[n - 2..].try_into().unwrap_or([0; 2]));
                (u64::from(first) | u64::from(last) << 16) * (1 | 1 << 32)
            } else {
                ONES * u64::from(s[0])
            };
            found |= bad(tail);
        }
        found == 0
    }
}

/// Whether every byte of `s` is one a plain log line carries as it is: visible ASCII but the quote and
/// the backslash.
fn all_plain(s: &[u8]) -> bool {
    word::none(s, |w| {
        word::less(w, 0x21) | word::more(w, 0x7e) | word::has(w, b'"') | word::has(w, b'\\')
    })
}

/// Whether every byte of `s` is one a JSON string carries unescaped and is ASCII: all but control
/// characters, the quote, the backslash (what serde_json escapes) and bytes past 0x7e (so a text that
/// passes is UTF-8 without being validated).
fn all_json(s: &[u8]) -> bool {
    word::none(s, |w| {
        word::less(w, 0x20) | word::more(w, 0x7e) | word::has(w, b'"') | word::has(w, b'\\')
    })
}

/// Writes `s` with what could break a plain log line (quotes, backslashes, spaces, control characters)
/// replaced by `_`; bytes that are not UTF-8 as U+FFFD.
#[inline]
fn put_clean(out: &mut Vec<u8>, s: &[u8]) {
    if all_plain(s) {
        out.extend_from_slice(s);
    } else {
        put_replaced(out, s);
    }
}

/// [`put_clean`]'s rare case, kept out of line so the common one stays small where it is inlined.
#[cold]
#[inline(never)]
fn put_replaced(out: &mut Vec<u8>, s: &[u8]) {
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' | '\\' | ' ' => out.push(b'_'),
            c if c.is_control() => out.push(b'_'),
            c => {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

/// Bytes cut to `max`, before a UTF-8 character that the cut would split (at most three bytes back: a
/// text that is not UTF-8 is cut where it is), and whether they were cut.
fn cut_bytes(s: &[u8], max: usize) -> (&[u8], bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while end > 0 && max - end < 3 && s[end] & 0xc0 == 0x80 {
        end -= 1;
    }
    (&s[..end], true)
}

/// Writes a JSON string (quoted and escaped; bytes that are not UTF-8 as U+FFFD). Most values (routes,
/// request ids, addresses, paths) are ASCII and need no escape: they are copied between quotes, and
/// only the rest goes through serde_json's escaper.
#[inline]
fn put_json(out: &mut Vec<u8>, s: &[u8]) {
    if all_json(s) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        put_escaped(out, s);
    }
}

/// [`put_json`]'s rare case (serde_json's escaper), out of line like [`put_replaced`].
#[cold]
#[inline(never)]
fn put_escaped(out: &mut Vec<u8>, s: &[u8]) {
    let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(s));
}

/// Writes a text that is safe in both formats by construction, as it is: the client's address
/// (`IpAddr`'s text), the method (`http::Method`: RFC 9110 token characters), the route's name (letters,
/// digits, `-`, `_`: checked in `config::route`), the outcome and the TLS marker (our own constants).
/// Checked in test builds, where every line of every test goes through here.
#[inline]
fn put_known(out: &mut Vec<u8>, s: impl AsRef<[u8]>) {
    let s = s.as_ref();
    debug_assert!(
        all_plain(s) && all_json(s),
        "{:?} is not a text the access log writes as it is",
        String::from_utf8_lossy(s)
    );
    out.extend_from_slice(s);
}

thread_local! {
    /// A moment on the monotonic clock and the time of day then (since the Unix epoch), taken at most
    /// a second ago.
    static ANCHOR: std::cell::Cell<Option<(Instant, Duration)>> = const { std::cell::Cell::new(None) };
}

/// The time of day at `now` (a monotonic reading the caller already has) as time since the Unix
/// epoch, without reading the system clock again: from this thread's anchor, taken anew once it is a
/// second old (or `now` is before it). Within that second the two clocks drift apart by at most NTP's
/// slew (0.5 ms/s), below the log's millisecond; a step of the system clock shows within a second.
/// (A `Duration`, not a `SystemTime`: the formatter would turn it back, at the cost of a subtraction
/// with normalisation for every line.)
pub fn wall_clock(now: impl Into<Instant>) -> Duration {
    let now = now.into();
    ANCHOR.with(|anchor| {
        if let Some((at, wall)) = anchor.get() {
            match now.checked_duration_since(at) {
                Some(d) if d < Duration::from_secs(1) => return wall + d,
                _ => {}
            }
        }
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        anchor.set(Some((now, wall)));
        wall
    })
}

thread_local! {
    /// The last second this thread formatted a time in, and that time up to its millisecond digits
    /// (`2026-11-22T22:30:00.`): lines of the same second reuse it.
    static SECOND: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
}

/// 10000-01-01T00:00:00Z, in seconds since the Unix epoch: the first time RFC 3339 cannot write.
const YEAR_10000: u64 = 253_402_300_800;

/// Writes the time `since` the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-11-22T22:30:00.000Z`).
fn put_time(out: &mut Vec<u8>, since: Duration) {
    let secs = since.as_secs();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            // `2026-11-22T22:30:00Z`: kept up to the seconds, then the decimal point.
            let mut prefix = Vec::with_capacity(32);
            if secs < YEAR_10000 {
                let _ = write!(
                    prefix,
                    "{}",
                    humantime::format_rfc3339_seconds(
                        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
                    )
                );
            }
            if prefix.len() != 20 {
                // RFC 3339 ends with the year 9999 (and humantime's `Display` fails past it: a
                // panic inside `write!`): seconds since the epoch, so the line keeps a time.
                let _ = write!(out, "{secs}.{:03}", since.subsec_millis());
                return;
            }
            second.1[..19].copy_from_slice(&prefix[..19]);
            second.1[19] = b'.';
            second.0 = secs;
        }
        out.extend_from_slice(&second.1);
        put_three(out, since.subsec_millis());
        out.push(b'Z');
    });
}

/// Writes a duration as milliseconds with three decimals (`1.234`), rounded to the microsecond.
fn put_ms(out: &mut Vec<u8>, d: Duration) {
    // In u64, not `as_nanos`' u128: its division is a call into compiler-builtins (about 35
    // instructions a line).
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from((d.subsec_nanos() + 500) / 1000));
    put_int(out, micros / 1000);
    out.push(b'.');
    put_three(out, (micros % 1000) as u32);
}

/// Writes an integer in decimal (without `fmt`'s machinery: it runs for every line on the worker).
fn put_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes `n` (below 1000) as three digits.
fn put_three(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// Formats one record as a line (with trailing newline), cutting the path and the method to their
/// bounds. Allocates nothing once `line` has room.
pub fn format_record(r: &Record, format: AccessLogFormat, line: &mut Vec<u8>) {
    let (path, path_cut) = cut_bytes(r.path, MAX_PATH);
    let (method, method_cut) = cut_bytes(r.method.as_bytes(), MAX_METHOD);
    match format {
        AccessLogFormat::Json => {
            // The quotes of the texts that need no escape are part of the literals around them.
            line.extend_from_slice(b"{\"time\":\"");
            put_time(line, r.at);
            match r.client {
                Some(c) => {
                    line.extend_from_slice(b"\",\"client\":\"");
                    put_known(line, c);
                    line.extend_from_slice(b"\",\"method\":\"");
                }
                None => line.extend_from_slice(b"\",\"client\":null,\"method\":\""),
            }
            put_known(line, method);
            if method_cut {
                line.extend_from_slice(b"...");
            }
            line.extend_from_slice(b"\",\"path\":");
            put_json(line, path);
            if path_cut {
                // The cut string plus its marker, as one JSON string.
                line.pop();
                let _ = write!(line, "…(truncated, {} bytes)\"", r.path.len());
            }
            match r.route {
                Some(route) => {
                    line.extend_from_slice(b",\"route\":\"");
                    put_known(line, route);
                    line.extend_from_slice(b"\",\"status\":");
                }
                None => line.extend_from_slice(b",\"route\":null,\"status\":"),
            }
            put_int(line, r.status);
            line.extend_from_slice(b",\"auth\":\"");
            put_known(line, r.auth);
            line.extend_from_slice(b"\",\"duration_ms\":");
            put_ms(line, r.duration);
            line.extend_from_slice(b",\"bytes_in\":");
            put_int(line, r.bytes_in);
            line.extend_from_slice(b",\"bytes_out\":");
            put_int(line, r.bytes_out);
            line.extend_from_slice(b",\"token_id\":");
            match r.token_id {
                Some(t) => put_int(line, t),
                None => line.extend_from_slice(b"null"),
            }
            line.extend_from_slice(b",\"user_id\":");
            match r.user {
                Some(u) => put_json(line, u),
                None => line.extend_from_slice(b"null"),
            }
            line.extend_from_slice(b",\"request_id\":");
            put_json(line, r.request_id.as_bytes());
            match r.tls {
                Some(t) => {
                    line.extend_from_slice(b",\"tls\":\"");
                    put_known(line, t);
                    line.extend_from_slice(b"\"}\n");
                }
                None => line.extend_from_slice(b",\"tls\":null}\n"),
            }
        }
        AccessLogFormat::Plain | AccessLogFormat::Off => {
            put_time(line, r.at);
            line.push(b' ');
            match r.client {
                Some(c) => put_known(line, c),
                None => line.push(b'-'),
            }
            line.extend_from_slice(b" \"");
            put_known(line, method);
            if method_cut {
                line.extend_from_slice(b"...");
            }
            line.push(b' ');
            put_clean(line, path);
            if path_cut {
                let _ = write!(line, "…(truncated,_{}_bytes)", r.path.len());
            }
            line.extend_from_slice(b"\" ");
            put_int(line, r.status);
            line.extend_from_slice(b" route=");
            put_known(line, r.route.unwrap_or("-"));
            line.extend_from_slice(b" auth=");
            put_known(line, r.auth);
            line.extend_from_slice(b" token=");
            match r.token_id {
                Some(t) => put_int(line, t),
                None => line.push(b'-'),
            }
            line.extend_from_slice(b" user=");
            match r.user {
                Some(u) => put_clean(line, u),
                None => line.push(b'-'),
            }
            line.extend_from_slice(b" in=");
            put_int(line, r.bytes_in);
            line.extend_from_slice(b" out=");
            put_int(line, r.bytes_out);
            line.extend_from_slice(b" ms=");
            put_ms(line, r.duration);
            line.extend_from_slice(b" id=");
            put_clean(line, r.request_id.as_bytes());
            line.extend_from_slice(b" tls=");
            match r.tls {
                Some(t) => put_known(line, t),
                None => line.push(b'-'),
            }
            line.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests;
