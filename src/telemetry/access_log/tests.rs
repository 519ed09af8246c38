//! The access log's formats, bounds and writer.

use super::*;
use std::sync::mpsc;

fn record() -> Record<'static> {
    Record {
        at: Duration::from_secs(1_795_386_600),
        client: Some("127.0.0.1"),
        method: "POST",
        path: b"/iot/a \"b\"",
        route: Some("telemetry"),
        status: 200,
        auth: "ok",
        duration: Duration::from_micros(1234),
        bytes_in: 10,
        bytes_out: 20,
        token_id: Some(7),
        user: Some(b"alice"),
        request_id: "4bf92f3577b34da6a3ce929d0e0e4736",
        tls: Some("1.3r"),
    }
}

fn line(r: &Record, format: AccessLogFormat) -> String {
    let mut l = Vec::new();
    format_record(r, format, &mut l);
    String::from_utf8(l).expect("a line is UTF-8")
}

#[test]
fn plain_line() {
    assert_eq!(
        line(&record(), AccessLogFormat::Plain),
        "2026-11-22T22:30:00.000Z 127.0.0.1 \"POST /iot/a__b_\" 200 route=telemetry auth=ok token=7 user=alice \
         in=10 out=20 ms=1.234 id=4bf92f3577b34da6a3ce929d0e0e4736 tls=1.3r\n"
    );
    let mut r = record();
    (r.client, r.route, r.token_id, r.user, r.tls) = (None, None, None, None, None);
    r.path = "/a\tb\u{85}é".as_bytes();
    assert_eq!(
        line(&r, AccessLogFormat::Plain),
        "2026-11-22T22:30:00.000Z - \"POST /a_b_é\" 200 route=- auth=ok token=- user=- in=10 out=20 ms=1.234 \
         id=4bf92f3577b34da6a3ce929d0e0e4736 tls=-\n"
    );
}

#[test]
fn json_line() {
    let l = line(&record(), AccessLogFormat::Json);
    assert!(l.ends_with("}\n") && l.lines().count() == 1, "{l}");
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["time"], "2026-11-22T22:30:00.000Z");
    assert_eq!(v["client"], "127.0.0.1");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["route"], "telemetry");
    assert_eq!(v["status"], 200);
    assert_eq!(v["auth"], "ok");
    assert_eq!(v["user_id"], "alice");
    assert_eq!(v["token_id"], 7);
    assert_eq!(v["bytes_in"], 10);
    assert_eq!(v["bytes_out"], 20);
    assert_eq!(v["path"], "/iot/a \"b\"");
    assert_eq!(v["duration_ms"], 1.234);
    assert_eq!(v["request_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(v["tls"], "1.3r");
    let mut r = record();
    (r.client, r.route, r.token_id, r.user, r.tls) = (None, None, None, None, None);
    r.path = b"/a\x01\\\n";
    let v: serde_json::Value = serde_json::from_str(&line(&r, AccessLogFormat::Json)).unwrap();
    assert_eq!(v["path"], "/a\u{1}\\\n");
    for k in ["client", "route", "token_id", "user_id", "tls"] {
        assert!(v[k].is_null(), "{k}: {v}");
    }
}

#[test]
fn a_long_path_is_cut_and_names_its_length() {
    let long = format!("/{}", "é".repeat(30_000)); // 60,001 bytes, 2-byte characters
    let mut r = record();
    r.path = long.as_bytes();
    let json = line(&r, AccessLogFormat::Json);
    assert!(json.len() < 2048, "{}", json.len());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let path = v["path"].as_str().unwrap();
    assert!(path.starts_with("/éé"));
    assert!(path.ends_with("…(truncated, 60001 bytes)"), "{path}");
    assert!(path.len() <= MAX_PATH + 40, "{}", path.len());
    let plain = line(&r, AccessLogFormat::Plain);
    assert!(plain.contains("…(truncated,_60001_bytes)\""), "{plain}");
    // A path at the bound is kept whole.
    let at_bound = "a".repeat(MAX_PATH);
    r.path = at_bound.as_bytes();
    let v: serde_json::Value = serde_json::from_str(&line(&r, AccessLogFormat::Json)).unwrap();
    assert_eq!(v["path"], at_bound);
}

#[test]
fn a_path_that_is_not_utf8_is_logged_lossily_and_cut_before_a_split_character() {
    // The path comes as the client sent it (bytes): what is not UTF-8 is logged as U+FFFD, in both
    // formats, and the line stays one valid line.
    let mut r = record();
    r.path = b"/a\xff\xfeb/\xc3";
    let plain = line(&r, AccessLogFormat::Plain);
    assert!(
        plain.contains("\"POST /a\u{fffd}\u{fffd}b/\u{fffd}\" 200"),
        "{plain}"
    );
    let v: serde_json::Value = serde_json::from_str(&line(&r, AccessLogFormat::Json)).unwrap();
    assert_eq!(v["path"], "/a\u{fffd}\u{fffd}b/\u{fffd}");
    // A cut at the bound that would split a character is made before it; a path that is not UTF-8
    // is cut where the bound is (at most three bytes back).
    assert_eq!(cut_bytes("aé".as_bytes(), 2), (&b"a"[..], true));
    assert_eq!(cut_bytes("a日".as_bytes(), 3), (&b"a"[..], true));
    assert_eq!(cut_bytes(b"ab", 2), (&b"ab"[..], false));
    assert_eq!(cut_bytes(&[0x80; 10], 8), (&[0x80; 5][..], true));
    let mut long = b"/".to_vec();
    long.extend(std::iter::repeat_n(0xffu8, 5_000));
    r.path = &long;
    let v: serde_json::Value = serde_json::from_str(&line(&r, AccessLogFormat::Json)).unwrap();
    let path = v["path"].as_str().unwrap();
    assert!(path.ends_with("…(truncated, 5001 bytes)"), "{path}");
    assert_eq!(path.matches('\u{fffd}').count(), MAX_PATH - 1);
}

#[test]
fn a_long_method_is_cut() {
    let long = "X".repeat(50_000);
    let mut r = record();
    r.method = &long;
    let v: serde_json::Value = serde_json::from_str(&line(&r, AccessLogFormat::Json)).unwrap();
    assert_eq!(v["method"], format!("{}...", "X".repeat(MAX_METHOD)));
    assert!(
        line(&r, AccessLogFormat::Plain).contains(&format!("\"{}... /iot", "X".repeat(MAX_METHOD)))
    );
    r.method = "PROPFIND";
    assert!(line(&r, AccessLogFormat::Plain).contains("\"PROPFIND /iot"));
}

/// A log target that takes what it is given and lets the test read it.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn lines(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// The request ids of the JSON lines written, in the order written.
    fn ordered_ids(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                v["request_id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// The request ids of the JSON lines written, each parsed whole (and once).
    fn ids(&self) -> std::collections::HashSet<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        let mut ids = std::collections::HashSet::new();
        for l in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(
                ids.insert(v["request_id"].as_str().unwrap().to_owned()),
                "twice: {l}"
            );
        }
        ids
    }
}

fn counter() -> IntCounter {
    IntCounter::new("d", "d").unwrap()
}

#[test]
fn every_line_from_every_thread_is_written_whole_by_shutdown() {
    let sink = Sink::default();
    let (log, writer) =
        AccessLog::with_writer(AccessLogFormat::Json, counter(), Box::new(sink.clone())).unwrap();
    let log = Arc::new(log);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                // 3,000 lines of about 260 bytes fit in one ring, however late the writer runs.
                for i in 0..3_000 {
                    let id = format!("{t}-{i}");
                    let mut r = record();
                    r.request_id = &id;
                    log.log(&r);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.dropped(), 0);
    drop(Arc::into_inner(log).expect("the last holder"));
    writer.join().unwrap();
    assert_eq!(sink.ids().len(), 12_000, "every line, once, whole");
}

#[test]
fn lines_that_wrap_around_the_ring_stay_whole() {
    let sink = Sink::default();
    let (log, writer) =
        AccessLog::with_writer(AccessLogFormat::Json, counter(), Box::new(sink.clone())).unwrap();
    // Four rounds of 6,000 lines (about 1.6 MB each) on one thread: its hot ring (256 KiB) wraps again
    // and again.
    for round in 0..4 {
        for i in 0..6_000 {
            let id = format!("{round}-{i}");
            let mut r = record();
            r.request_id = &id;
            log.log(&r);
        }
        let started = Instant::now();
        while sink.lines() < (round + 1) * 6_000 && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(log.dropped(), 0);
    drop(log);
    writer.join().unwrap();
    assert_eq!(sink.ids().len(), 24_000, "every line, once, whole");
}

#[test]
fn a_line_reaches_the_target_without_shutdown_within_a_second() {
    let sink = Sink::default();
    let (log, _writer) =
        AccessLog::with_writer(AccessLogFormat::Plain, counter(), Box::new(sink.clone())).unwrap();
    log.log(&record());
    let started = Instant::now();
    while sink.lines() == 0 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The writer looks every 100 ms; a second is ten of those.
    assert_eq!(sink.lines(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// A target whose writes block until the test lets them go: a full disk, a pipe nobody reads.
struct Stalled(Mutex<mpsc::Receiver<()>>);

impl Write for Stalled {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.lock().unwrap().recv();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_stalled_target_drops_and_counts_lines_and_never_blocks_the_logger() {
    let (release, stalled) = mpsc::channel();
    let (log, writer) = AccessLog::with_writer(
        AccessLogFormat::Plain,
        counter(),
        Box::new(Stalled(Mutex::new(stalled))),
    )
    .unwrap();
    let long = format!("/{}", "p".repeat(60_000));
    let mut r = record();
    r.path = long.as_bytes();
    let one = line(&r, AccessLogFormat::Plain).len();
    let n = 20_000;
    // Returns although the target takes nothing (a blocking logger would hang here).
    for _ in 0..n {
        log.log(&r);
    }
    let dropped = log.dropped() as usize;
    // At most a ring of this thread's lines, plus what the writer holds in its buffer, was kept.
    let kept_most = (RING_BYTES + 2 * WAKE_BYTES) / one + 1;
    assert!(
        dropped > 0 && n - dropped <= kept_most,
        "dropped {dropped} of {n}"
    );
    drop(release);
    drop(log);
    writer.join().unwrap();
}

#[test]
fn the_log_closes_when_its_last_clone_is_dropped() {
    let sink = Sink::default();
    let (log, writer) =
        AccessLog::with_writer(AccessLogFormat::Plain, counter(), Box::new(sink.clone())).unwrap();
    let other = log.clone();
    drop(log);
    // The clone still logs, and the writer still runs.
    other.log(&record());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!writer.is_finished());
    drop(other);
    writer.join().unwrap();
    assert_eq!(sink.lines(), 1);
}

#[test]
fn an_ended_thread_s_lines_are_still_written() {
    let sink = Sink::default();
    let (log, writer) =
        AccessLog::with_writer(AccessLogFormat::Plain, counter(), Box::new(sink.clone())).unwrap();
    let log = Arc::new(log);
    for _ in 0..3 {
        let log = log.clone();
        std::thread::spawn(move || log.log(&record()))
            .join()
            .unwrap();
    }
    let started = Instant::now();
    while sink.lines() < 3 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sink.lines(), 3);
    drop(Arc::into_inner(log).expect("the last holder"));
    writer.join().unwrap();
}

#[test]
fn times_and_durations_are_written_as_before() {
    let mut out = Vec::new();
    // Past the year 9999 (no RFC 3339 time): seconds since the epoch, so the line keeps a time.
    put_time(&mut out, Duration::from_millis(253_402_300_800_042));
    assert_eq!(out, b"253402300800.042");
    for at in [
        SystemTime::UNIX_EPOCH,
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_386_600_007),
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_386_600_999),
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_386_601_000),
        SystemTime::now(),
    ] {
        out.clear();
        put_time(&mut out, at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            humantime::format_rfc3339_millis(at).to_string()
        );
    }
    for (d, want) in [
        (Duration::ZERO, "0.000"),
        (Duration::from_nanos(499), "0.000"),
        (Duration::from_nanos(500), "0.001"),
        (Duration::from_micros(1234), "1.234"),
        (Duration::from_nanos(1_234_567), "1.235"),
        (Duration::from_secs(61), "61000.000"),
        // Rounding carries into the next second, and the millisecond digits stay three.
        (Duration::new(1, 999_999_500), "2000.000"),
        (Duration::new(0, 999_999_499), "999.999"),
        (Duration::new(0, 5_000), "0.005"),
        // Past what u64 microseconds hold (half a million years), the count saturates.
        (Duration::MAX, "18446744073709551.615"),
    ] {
        out.clear();
        put_ms(&mut out, d);
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want, "{d:?}");
    }
}

#[test]
fn json_strings_are_written_as_serde_json_writes_them() {
    for s in [
        "",
        "/api/x?a=1&b=%2F",
        "127.0.0.1:5000",
        "route-α/ü/日本",
        "with \"quotes\"",
        "back\\slash",
        "tab\there",
        "nul\0, bell\x07, esc\x1b, del\x7f",
        "line\nbreak\r",
        "…(truncated)",
        "ascii then é",
    ] {
        let mut ours = Vec::new();
        put_json(&mut ours, s.as_bytes());
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(s).unwrap(),
            "{s:?}"
        );
    }
}

#[test]
fn the_time_of_day_comes_from_the_anchor_and_follows_the_system_clock() {
    let now = Instant::now();
    let wall = wall_clock(now);
    let system = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
    };
    let off = |a: Duration, b: Duration| a.abs_diff(b);
    assert!(off(wall, system()) < Duration::from_millis(50));
    // Within the anchor's second, a later reading is later by exactly as much.
    let later = now + Duration::from_millis(250);
    assert_eq!(wall_clock(later), wall + Duration::from_millis(250));
    // A reading a second or more on, or before the anchor, takes the system clock anew (a step of the
    // system clock shows within a second).
    let far = now + Duration::from_secs(5);
    assert!(off(wall_clock(far), system()) < Duration::from_millis(50));
    assert!(off(wall_clock(now), system()) < Duration::from_millis(50));
}

/// A target whose first write waits until the test lets it go, then takes everything into a sink, each
/// write a few milliseconds late: a disk that stalls for a moment, then is slow.
struct Gate(mpsc::Receiver<()>, Sink);

impl Write for Gate {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0.recv().is_err() {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.1.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn lines_spilled_while_the_writer_is_behind_keep_their_order() {
    let (go, gate) = mpsc::channel();
    let sink = Sink::default();
    let (log, writer) = AccessLog::with_writer(
        AccessLogFormat::Json,
        counter(),
        Box::new(Gate(gate, sink.clone())),
    )
    .unwrap();
    let mut n = 0;
    let mut log_lines = |count: usize| {
        for _ in 0..count {
            let id = n.to_string();
            let mut r = record();
            r.request_id = &id;
            log.log(&r);
            n += 1;
        }
    };
    // The writer takes the first line and stalls in its write, holding it.
    log_lines(1);
    std::thread::sleep(FLUSH_EVERY * 3);
    // Four times the hot ring: the rest goes to the spill ring.
    let one = line(&record(), AccessLogFormat::Json).len();
    let behind = 4 * HOT_BYTES / one;
    assert!(behind * one < RING_BYTES - HOT_BYTES);
    log_lines(behind);
    // The target takes writes again, slowly; lines keep coming faster than it takes them, so the worker
    // goes from the hot ring to the spill ring and back again and again with the writer at work (all
    // of it fits in the lane: nothing is dropped).
    drop(go);
    for _ in 0..30 {
        log_lines(200);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(log.dropped(), 0);
    let logged = n;
    drop(log);
    writer.join().unwrap();
    let ids = sink.ordered_ids();
    assert_eq!(ids.len(), logged, "every line, once");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(id, &i.to_string(), "line {i} out of order");
    }
}

/// What `all_plain` checks, a byte at a time.
fn plain_byte(b: u8) -> bool {
    b > b' ' && b < 0x7f && b != b'"' && b != b'\\'
}

/// What `all_json` checks, a byte at a time.
fn json_byte(b: u8) -> bool {
    (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\'
}

#[test]
fn the_word_at_a_time_tests_agree_with_the_byte_at_a_time_ones() {
    // Every byte value at every place of texts up to 20 bytes long, among plain bytes and among
    // bytes that are not.
    for len in 0..20 {
        for at in 0..len.max(1) {
            for b in 0..=255u8 {
                for filler in [b'a', b'~', b'!', 0x80, b' '] {
                    let mut s = vec![filler; len];
                    if len > 0 {
                        s[at] = b;
                    }
                    assert_eq!(all_plain(&s), s.iter().all(|&b| plain_byte(b)), "{s:?}");
                    assert_eq!(all_json(&s), s.iter().all(|&b| json_byte(b)), "{s:?}");
                }
            }
        }
    }
}

#[test]
fn every_method_the_parsers_accept_is_written_as_it_is() {
    // The method is copied unchecked (`put_known`): whatever `http::Method` (which both engines parse
    // it with) accepts must be safe in both formats, every byte value in every place of a short one.
    for len in 1..4 {
        for at in 0..len {
            for b in 0..=255u8 {
                let mut m = vec![b'X'; len];
                m[at] = b;
                if let Ok(method) = http::Method::from_bytes(&m) {
                    let s = method.as_str().as_bytes();
                    assert!(all_plain(s) && all_json(s), "{m:?}");
                }
            }
        }
    }
}

#[test]
fn the_user_id_and_the_request_id_are_still_checked_in_both_formats() {
    // Unlike the texts `put_known` copies, these come from outside the process (an admin who names a
    // user, a trusted proxy's `x-request-id`): what could break a line is replaced or escaped.
    let mut r = record();
    r.user = Some(b"al\"ice\\ \t\xff");
    r.request_id = "id\" forged=1\nnext";
    let plain = line(&r, AccessLogFormat::Plain);
    assert_eq!(plain.lines().count(), 1, "{plain}");
    assert!(
        plain.contains(" user=al_ice___\u{fffd} ") && plain.contains(" id=id__forged=1_next "),
        "{plain}"
    );
    let v: serde_json::Value = serde_json::from_str(&line(&r, AccessLogFormat::Json)).unwrap();
    assert_eq!(v["user_id"], "al\"ice\\ \t\u{fffd}");
    assert_eq!(v["request_id"], "id\" forged=1\nnext");
}
