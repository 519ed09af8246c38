//! Operational features of the real `tokengate serve` binary over real sockets (issue 7):
//!
//! - SIGHUP reload while four keep-alive clients hammer a route: routes and header rules change for new
//!   requests, no request fails, and an invalid file is refused (old table kept, error logged and counted,
//!   `check-config` names the bad key);
//! - every Prometheus family on the admin `/metrics`, with label values only from fixed sets (never a
//!   token, user id or path);
//! - the access log in `json`, `plain` and `off` formats: one line per request, never a credential, never
//!   the query string;
//! - `max_body_bytes` (413 on a declared or streamed oversize body, upstream never gets the whole body),
//!   `query_token_param` (legacy firmware, token removed before forwarding), `request_timeout` (408 for a
//!   stalled body) and `[gateway] keepalive_timeout` (idle client connections closed).
//!
//! The machine may be loaded (two cores, other test binaries running): everything that happens
//! asynchronously in the gateway (reloads, metrics after the response, the 100 ms access-log writer) is
//! polled with generous deadlines.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------------------------

/// Generous deadline for anything the gateway does asynchronously.
const SLOW: Duration = Duration::from_secs(15);

/// `kill -HUP <gateway pid>`.
fn sighup(gw: &Gateway) {
    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(gw.pid().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP failed");
}

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format (comments skipped, label values unescaped).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metric line without value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("metric value is not a number: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unterminated labels: {line:?}"));
                (name.to_owned(), parse_labels(rest, line))
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(mut rest: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    if let Some((_, c)) = chars.next() {
                        value.push(if c == 'n' { '\n' } else { c });
                    }
                }
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// Sum of the samples named `name` whose labels include every pair of `labels`; `None` if none matches.
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// A corrupted copy of a real token (checksum no longer matches): refused as `invalid_token`.
fn corrupt(token: &str) -> String {
    let mut t = token.to_owned();
    let last = t.pop().expect("token");
    t.push(if last == 'A' { 'B' } else { 'A' });
    t
}

/// A request head without `Connection: close` (keep-alive), with the given header lines.
fn keepalive_head(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Polls until the file at `path` has at least `n` lines; returns its lines (possibly fewer on timeout).
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let read = || {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    poll_until(SLOW, Duration::from_millis(20), || read().len() >= n);
    // The writer batches every 100 ms: give any unexpected extra line the time to show up too.
    std::thread::sleep(Duration::from_millis(400));
    read()
}

/// Header names (lower case) that the echo upstream reports it received, from a 200 echo response.
fn echoed_header_names(r: &RawResponse) -> Vec<String> {
    r.json()["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no headers in echo: {r}"))
        .iter()
        .map(|pair| pair[0].as_str().unwrap_or_default().to_ascii_lowercase())
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// 1. Reload under load
// ---------------------------------------------------------------------------------------------------------

/// What the load clients saw.
#[derive(Default)]
struct LoadStats {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_under_keepalive_load_never_fails_a_request() {
    let up_a = Upstream::start("alpha");
    let up_b = Upstream::start("bravo");
    let gw = GatewayBuilder::new()
        .route_with(
            "alpha",
            "/alpha",
            up_a.addr(),
            &[("strip_request_headers", r#"["x-drop-one"]"#)],
        )
        .start();
    let (_, token) = gw.create_token("reload-user", "load");
    gw.wait_ok("/alpha/warm", &token);

    // State 0: what the gateway started with (no bravo, strips x-drop-one).
    // State 1: bravo added, alpha strips x-drop-two instead.
    let state0 = fs::read_to_string(gw.config_path()).expect("read config");
    assert!(state0.contains(r#"["x-drop-one"]"#), "{state0}");
    let state1 = format!(
        "{}\n[[routes]]\nname = \"bravo\"\npath_prefix = \"/bravo\"\nupstream = \"{}\"\n",
        state0.replace(r#"["x-drop-one"]"#, r#"["x-drop-two"]"#),
        up_b.addr()
    );

    // Four keep-alive clients on route alpha, until told to stop (15 s at most).
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(LoadStats::default());
    let url = gw.url("/alpha/load");
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (stop, stats, url, token) =
                (stop.clone(), stats.clone(), url.clone(), token.clone());
            tokio::spawn(async move {
                let client = client();
                let deadline = Instant::now() + Duration::from_secs(15);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let sent = client
                        .get(&url)
                        .bearer_auth(&token)
                        .header("x-drop-one", "1")
                        .header("x-drop-two", "2")
                        .send()
                        .await;
                    match sent {
                        Ok(r) => {
                            let status = r.status();
                            match r.bytes().await {
                                Ok(_) if status == 200 => {
                                    stats.ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(body) => stats.failures.lock().unwrap().push(format!(
                                    "client {i}: {status} {}",
                                    String::from_utf8_lossy(&body)
                                )),
                                Err(e) => stats
                                    .failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("client {i}: body: {e:?}")),
                            }
                        }
                        Err(e) => stats
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("client {i}: {e:?}")),
                    }
                    // Leave some CPU to the reload checks and to other tests on a small machine.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    assert!(
        poll_until(SLOW, Duration::from_millis(10), || stats
            .ok
            .load(Ordering::Relaxed)
            >= 20),
        "the load clients did not get going"
    );

    let reloads = |result: &str| {
        metric(
            &parse_metrics(&gw.metrics()),
            "tokengate_config_reloads_total",
            &[("result", result)],
        )
        .unwrap_or(-1.0)
    };
    assert_eq!(reloads("ok"), 0.0);
    assert_eq!(reloads("error"), 0.0);

    let probe = || {
        gw.request(
            "GET",
            "/alpha/probe",
            &[
                ("Authorization", &bearer(&token)),
                ("x-drop-one", "1"),
                ("x-drop-two", "2"),
            ],
            b"",
        )
    };
    // Which of x-drop-one / x-drop-two reached the upstream for a new request.
    let seen = || {
        let r = probe();
        assert_eq!(r.status, 200, "probe on alpha: {r}");
        let names = echoed_header_names(&r);
        (
            names.iter().any(|n| n == "x-drop-one"),
            names.iter().any(|n| n == "x-drop-two"),
        )
    };

    let mut expected_ok_reloads = 0.0;
    for (round, state) in [1, 0, 1, 0, 1].into_iter().enumerate() {
        let ok_before = stats.ok.load(Ordering::Relaxed);
        fs::write(gw.config_path(), if state == 1 { &state1 } else { &state0 })
            .expect("rewrite config");
        sighup(&gw);
        expected_ok_reloads += 1.0;
        assert!(
            poll_until(SLOW, Duration::from_millis(20), || reloads("ok")
                == expected_ok_reloads),
            "round {round}: reload #{expected_ok_reloads} not counted as ok; metric = {}\n{}",
            reloads("ok"),
            gw.logs()
        );
        // The new header rule applies to every new request from now on.
        let want = if state == 1 {
            (true, false)
        } else {
            (false, true)
        };
        for _ in 0..5 {
            assert_eq!(
                seen(),
                want,
                "round {round}: (x-drop-one seen, x-drop-two seen) upstream after reload to state {state}"
            );
        }
        if state == 1 {
            gw.wait_ok("/bravo/b", &token);
        } else {
            gw.wait_status("/bravo/b", &token, 404);
        }
        // The load kept running across the reload.
        assert!(
            poll_until(SLOW, Duration::from_millis(10), || stats
                .ok
                .load(Ordering::Relaxed)
                > ok_before + 50),
            "round {round}: the load stalled around the reload"
        );
    }
    assert!(up_b.requests().iter().all(|r| r.uri.starts_with("/bravo")));
    assert!(up_b.hits() >= 1, "bravo's upstream never saw a request");

    // An invalid file (unknown key in the last route) is refused as a whole.
    let invalid = format!("{state1}colour = \"blue\"\n");
    fs::write(gw.config_path(), &invalid).expect("write invalid config");
    let check = gw.cli(&["check-config"]);
    assert!(
        !check.status.success(),
        "check-config accepted an unknown key:\n{}",
        describe(&check)
    );
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("colour") && stderr.contains("routes[1]"),
        "check-config should name the key routes[1].colour:\n{}",
        describe(&check)
    );

    sighup(&gw);
    assert!(
        poll_until(SLOW, Duration::from_millis(20), || reloads("error") == 1.0),
        "the refused reload was not counted: error = {}\n{}",
        reloads("error"),
        gw.logs()
    );
    assert_eq!(reloads("ok"), expected_ok_reloads);
    assert!(
        poll_until(SLOW, Duration::from_millis(20), || gw
            .logs()
            .contains("refused")),
        "no 'refused' in the gateway logs:\n{}",
        gw.logs()
    );
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("refused") && l.contains("colour")),
        "the refusal should name the bad key:\n{logs}"
    );
    // The running configuration (state 1) is kept.
    assert_eq!(gw.get_with_token("/alpha/after", &token).status, 200);
    assert_eq!(gw.get_with_token("/bravo/after", &token).status, 200);
    assert_eq!(
        seen(),
        (true, false),
        "header rule after the refused reload"
    );

    let ok_before_stop = stats.ok.load(Ordering::Relaxed);
    assert!(
        poll_until(SLOW, Duration::from_millis(10), || stats
            .ok
            .load(Ordering::Relaxed)
            > ok_before_stop),
        "the load stalled after the refused reload"
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    let failures = stats.failures.lock().unwrap().clone();
    let ok = stats.ok.load(Ordering::Relaxed);
    eprintln!(
        "reload under load: {ok} requests OK, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests on alpha failed during reloads; first: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert!(
        up_a.hits() as u64 >= ok,
        "alpha's upstream saw fewer requests"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 2. Metrics
// ---------------------------------------------------------------------------------------------------------

/// A named condition on a `/metrics` snapshot.
type Check<'a> = (&'static str, Box<dyn Fn(&[Sample]) -> bool + 'a>);

#[test]
fn metrics_cover_every_family_and_never_label_with_secrets() {
    let up = Upstream::start("metrics");
    let dead = refused_addr();
    let gw = GatewayBuilder::new()
        .route("telemetry", "/iot", up.addr())
        .route_with(
            "secure",
            "/secure",
            up.addr(),
            &[("required_scope", "\"video:write\"")],
        )
        .route("dead", "/dead", dead)
        .start();
    let users = ["metrics-user-full", "metrics-user-scoped"];
    let (_, full) = gw.create_token(users[0], "full");
    let (_, scoped) = gw.create_token_with(users[1], "scoped", &["--scope", "telemetry:read"]);
    gw.wait_ok("/iot/warmup", &full);
    gw.wait_status("/secure/warmup", &scoped, 403);

    let (up_server, dead_server) = (up.addr().to_string(), dead.to_string());
    let before = parse_metrics(&gw.metrics());
    let counter =
        |s: &[Sample], name: &str, labels: &[(&str, &str)]| metric(s, name, labels).unwrap_or(0.0);

    // Traffic: three OK reads, one OK upload, one of each denial, one unrouted, one refused upstream.
    let paths = [
        "/iot/hive-7f3a/readings",
        "/iot/upload-9c2e",
        "/secure/vault-33",
        "/nowhere-5e1d/deep-8b0d",
        "/dead/gone-41",
    ];
    let mut ok_body_bytes = 0usize;
    for _ in 0..3 {
        let r = gw.get_with_token(paths[0], &full);
        assert_eq!(r.status, 200, "{r}");
        ok_body_bytes += r.body.len();
    }
    let upload = vec![b'u'; 3000];
    let r = gw.request(
        "POST",
        paths[1],
        &[("Authorization", &bearer(&full))],
        &upload,
    );
    assert_eq!(r.status, 200, "{r}");
    ok_body_bytes += r.body.len();
    assert_eq!(up.last().body_len, 3000);

    let r = gw.request("GET", paths[0], &[], b"");
    assert_eq!(r.status, 401, "missing: {r}");
    let bad = corrupt(&full);
    let r = gw.get_with_token(paths[0], &bad);
    assert_eq!(r.status, 401, "invalid: {r}");
    let r = gw.get_with_token(paths[2], &scoped);
    assert_eq!(r.status, 403, "insufficient scope: {r}");
    let r = gw.get_with_token(paths[3], &full);
    assert_eq!(r.status, 404, "unrouted: {r}");
    let r = gw.get_with_token(paths[4], &full);
    assert_eq!(r.status, 502, "refused upstream: {r}");

    let rt = "tokengate_requests_total";
    let grew = |after: &[Sample], name: &str, labels: &[(&str, &str)], by: f64| {
        counter(after, name, labels) - counter(&before, name, labels) >= by
    };
    let checks: Vec<Check> = vec![
        (
            "requests ok/2xx on telemetry +4",
            Box::new(|s: &[Sample]| {
                grew(
                    s,
                    rt,
                    &[
                        ("route", "telemetry"),
                        ("status_class", "2xx"),
                        ("auth", "ok"),
                    ],
                    4.0,
                )
            }),
        ),
        (
            "requests missing/4xx on telemetry",
            Box::new(|s: &[Sample]| {
                grew(
                    s,
                    rt,
                    &[
                        ("route", "telemetry"),
                        ("status_class", "4xx"),
                        ("auth", "missing"),
                    ],
                    1.0,
                )
            }),
        ),
        (
            "requests invalid/4xx on telemetry",
            Box::new(|s: &[Sample]| {
                grew(
                    s,
                    rt,
                    &[
                        ("route", "telemetry"),
                        ("status_class", "4xx"),
                        ("auth", "invalid"),
                    ],
                    1.0,
                )
            }),
        ),
        (
            "requests insufficient_scope/4xx on secure",
            Box::new(|s: &[Sample]| {
                grew(
                    s,
                    rt,
                    &[
                        ("route", "secure"),
                        ("status_class", "4xx"),
                        ("auth", "insufficient_scope"),
                    ],
                    1.0,
                )
            }),
        ),
        (
            "requests route=none 4xx",
            Box::new(|s: &[Sample]| {
                grew(s, rt, &[("route", "none"), ("status_class", "4xx")], 1.0)
            }),
        ),
        (
            "requests 5xx on dead",
            Box::new(|s: &[Sample]| {
                grew(s, rt, &[("route", "dead"), ("status_class", "5xx")], 1.0)
            }),
        ),
        (
            "upstream_errors connect_refused on dead",
            Box::new(|s: &[Sample]| {
                grew(
                    s,
                    "tokengate_upstream_errors_total",
                    &[("route", "dead"), ("kind", "connect_refused")],
                    1.0,
                )
            }),
        ),
        (
            "server requests on telemetry's server +4, failures on dead's",
            Box::new(move |s: &[Sample]| {
                grew(
                    s,
                    "tokengate_upstream_server_requests_total",
                    &[("route", "telemetry"), ("server", &up_server)],
                    4.0,
                ) && grew(
                    s,
                    "tokengate_upstream_server_failures_total",
                    &[("route", "dead"), ("server", &dead_server)],
                    1.0,
                ) && metric(
                    s,
                    "tokengate_upstream_server_up",
                    &[("route", "telemetry"), ("server", &up_server)],
                ) == Some(1.0)
            }),
        ),
        (
            "request body bytes on telemetry +3000",
            Box::new(|s: &[Sample]| {
                grew(
                    s,
                    "tokengate_request_body_bytes_total",
                    &[("route", "telemetry")],
                    3000.0,
                )
            }),
        ),
        (
            "response body bytes on telemetry + bytes received",
            Box::new(move |s: &[Sample]| {
                grew(
                    s,
                    "tokengate_response_body_bytes_total",
                    &[("route", "telemetry")],
                    ok_body_bytes as f64,
                )
            }),
        ),
        (
            "duration histogram count on telemetry",
            Box::new(|s: &[Sample]| {
                grew(
                    s,
                    "tokengate_request_duration_seconds_bucket",
                    &[("route", "telemetry"), ("le", "+Inf")],
                    6.0,
                )
            }),
        ),
    ];
    let mut text = String::new();
    let all_hold = poll_until(SLOW, Duration::from_millis(50), || {
        text = gw.metrics();
        let s = parse_metrics(&text);
        checks.iter().all(|(_, c)| c(&s))
    });
    let after = parse_metrics(&text);
    if !all_hold {
        let failed: Vec<&str> = checks
            .iter()
            .filter(|(_, c)| !c(&after))
            .map(|(n, _)| *n)
            .collect();
        panic!("metrics never satisfied {failed:?}:\n{text}");
    }

    // Families that need no traffic.
    assert!(
        after
            .iter()
            .any(|s| s.name == "tokengate_request_duration_seconds_bucket"
                && s.labels.get("route").map(String::as_str) == Some("telemetry")
                && s.labels.get("le").map(String::as_str) == Some("0.005")),
        "duration histogram buckets missing:\n{text}"
    );
    assert_eq!(
        metric(&after, "tokengate_index_tokens", &[]),
        Some(2.0),
        "index tokens:\n{text}"
    );
    let since_sync = metric(&after, "tokengate_seconds_since_last_sync", &[])
        .unwrap_or_else(|| panic!("no tokengate_seconds_since_last_sync:\n{text}"));
    assert!(
        (0.0..=5.0).contains(&since_sync),
        "seconds since last sync = {since_sync}"
    );
    assert_eq!(
        metric(
            &after,
            "tokengate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "build info:\n{text}"
    );
    for family in [
        "tokengate_seconds_since_last_usage_flush",
        "tokengate_store_healthy",
        "tokengate_config_reloads_total",
    ] {
        assert!(
            after.iter().any(|s| s.name == family),
            "{family} missing:\n{text}"
        );
    }

    // No secret, user or path anywhere in the text, and every label value from a fixed set.
    for secret in [full.as_str(), scoped.as_str(), bad.as_str()] {
        assert!(!text.contains(secret), "a token appears in /metrics");
        assert!(
            !text.contains(&secret[3..20]),
            "part of a token appears in /metrics"
        );
    }
    for user in users {
        assert!(!text.contains(user), "user {user} appears in /metrics");
    }
    for path in paths {
        assert!(!text.contains(path), "path {path} appears in /metrics");
        let last = path.rsplit('/').next().unwrap();
        assert!(
            !text.contains(last),
            "path segment {last} appears in /metrics"
        );
    }
    let (up_label, dead_label) = (up.addr().to_string(), dead.to_string());
    let allowed: BTreeMap<&str, BTreeSet<&str>> = [
        ("route", vec!["telemetry", "secure", "dead", "none"]),
        (
            "status_class",
            vec!["other", "1xx", "2xx", "3xx", "4xx", "5xx"],
        ),
        (
            "auth",
            vec![
                "ok",
                "missing",
                "invalid",
                "expired",
                "revoked",
                "insufficient_scope",
                "throttled",
                "cert_mismatch",
                "rate_limited",
                "quota_exceeded",
                "public",
                "none",
            ],
        ),
        (
            "kind",
            vec![
                "connect_refused",
                "connect_timeout",
                "read_timeout",
                "write_timeout",
                "tls",
                "reset",
                "other",
                "no_healthy_upstream",
                "rate",
                "user_rate",
                "quota",
                "in_flight",
                // TLS handshakes: full or resumed.
                "full",
                "resumed",
            ],
        ),
        // Connections: why they were refused at accept, why they closed.
        (
            "reason",
            vec![
                "max_connections",
                "per_address",
                "done",
                "idle_timeout",
                "header_timeout",
                "body_timeout",
                "bad_request",
                "refused",
                "upstream_error",
                "client_gone",
                "tunnel_closed",
                "shutdown",
                "tls_handshake",
                // TLS handshakes that failed.
                "timeout",
                "incompatible",
                "client_certificate",
                "malformed",
                "alert",
                "closed",
                "other",
            ],
        ),
        ("result", vec!["ok", "error", "failed"]),
        ("direction", vec!["to_upstream", "to_client"]),
        ("listener", vec!["plain", "tls"]),
        // Requests by protocol (HTTP/2 streams count as requests).
        ("protocol", vec!["http/1.1", "h2"]),
        // Leak reports (`[leaks]`): a match's label and what was done, never a token, hash or url.
        ("label", vec!["true_positive", "false_positive"]),
        ("action", vec!["revoked", "reported", "none"]),
        // Servers are named as configured: the routes' upstream addresses, nothing a client sent.
        ("server", vec![up_label.as_str(), dead_label.as_str()]),
        // The build's version, and TLS versions of handshakes.
        ("version", vec![env!("CARGO_PKG_VERSION"), "1.2", "1.3"]),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.into_iter().collect()))
    .collect();
    for s in after.iter().filter(|s| s.name.starts_with("tokengate_")) {
        for (k, v) in &s.labels {
            if k == "le" {
                assert!(
                    v == "+Inf" || v.parse::<f64>().is_ok(),
                    "odd bucket {v:?} on {}",
                    s.name
                );
                continue;
            }
            let set = allowed
                .get(k.as_str())
                .unwrap_or_else(|| panic!("unexpected label {k}={v:?} on {}", s.name));
            assert!(
                set.contains(v.as_str()),
                "label {k}={v:?} on {} is not from the fixed set {set:?}",
                s.name
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// 3. Access log
// ---------------------------------------------------------------------------------------------------------

/// One request of the access-log scenario and what it should be logged as.
struct Expected {
    path: &'static str,
    status: u16,
    route: Option<&'static str>,
    authorized: bool,
    bytes_in: u64,
    /// The body the client received.
    bytes_out: u64,
}

/// What an access-log scenario left behind.
struct LogRun {
    gw: Gateway,
    token_id: i64,
    secrets: Vec<String>,
    expected: Vec<Expected>,
    log_path: std::path::PathBuf,
    _up: Upstream,
}

/// Starts a gateway with `[log] access = <format>`, `access_path = "access.log"` (next to the config),
/// sends seven requests (3 allowed — one with a token in the query string too —, 3 refused, 1 unrouted).
fn access_log_run(format: &str) -> LogRun {
    let up = Upstream::start("logged");
    let mut gw = GatewayBuilder::new()
        .section("log", "access", &format!("\"{format}\""))
        .section("log", "access_path", "\"access.log\"")
        .route("telemetry", "/iot", up.addr())
        .build();
    // Created before the start: loaded with the index, so no warm-up request is needed (and logged).
    let (token_id, token) = gw.create_token("log-user", "logged");
    gw.start();
    let log_path = gw.dir().join("access.log");
    let bad = corrupt(&token);
    let auth = bearer(&token);
    let with_query = format!("/iot/c-3?api_token={token}");
    let query_only = format!("/iot/e-5?api_token={token}");

    let sends: Vec<(Expected, RawResponse)> = vec![
        (
            Expected {
                path: "/iot/a-1",
                status: 200,
                route: Some("telemetry"),
                authorized: true,
                bytes_in: 0,
                bytes_out: 0,
            },
            gw.request("GET", "/iot/a-1", &[("Authorization", &auth)], b""),
        ),
        (
            Expected {
                path: "/iot/b-2",
                status: 200,
                route: Some("telemetry"),
                authorized: true,
                bytes_in: 500,
                bytes_out: 0,
            },
            gw.request(
                "POST",
                "/iot/b-2",
                &[("Authorization", &auth)],
                &[b'x'; 500],
            ),
        ),
        (
            Expected {
                path: "/iot/c-3",
                status: 200,
                route: Some("telemetry"),
                authorized: true,
                bytes_in: 0,
                bytes_out: 0,
            },
            gw.request("GET", &with_query, &[("Authorization", &auth)], b""),
        ),
        (
            Expected {
                path: "/iot/d-4",
                status: 401,
                route: Some("telemetry"),
                authorized: false,
                bytes_in: 0,
                bytes_out: 0,
            },
            gw.request("GET", "/iot/d-4", &[], b""),
        ),
        (
            Expected {
                path: "/iot/e-5",
                status: 401,
                route: Some("telemetry"),
                authorized: false,
                bytes_in: 0,
                bytes_out: 0,
            },
            gw.request("GET", &query_only, &[], b""),
        ),
        (
            Expected {
                path: "/iot/f-6",
                status: 401,
                route: Some("telemetry"),
                authorized: false,
                bytes_in: 0,
                bytes_out: 0,
            },
            gw.get_with_token("/iot/f-6", &bad),
        ),
        (
            Expected {
                path: "/nowhere/g-7",
                status: 404,
                route: None,
                authorized: false,
                bytes_in: 0,
                bytes_out: 0,
            },
            gw.get_with_token("/nowhere/g-7", &token),
        ),
    ];
    let expected = sends
        .into_iter()
        .map(|(mut e, r)| {
            assert_eq!(r.status, e.status, "{}: {r}", e.path);
            e.bytes_out = r.body.len() as u64;
            e
        })
        .collect();
    LogRun {
        gw,
        token_id,
        secrets: vec![token, bad],
        expected,
        log_path,
        _up: up,
    }
}

fn assert_no_secrets(run: &LogRun, text: &str) {
    for s in &run.secrets {
        assert!(!text.contains(s.as_str()), "a token is in the access log");
        assert!(
            !text.contains(&s[3..20]),
            "part of a token is in the access log"
        );
    }
    assert!(
        !text.contains("api_token"),
        "the query string is in the access log:\n{text}"
    );
}

#[test]
fn json_access_log_has_one_line_per_request_and_no_secrets() {
    let run = access_log_run("json");
    let lines = wait_lines(&run.log_path, run.expected.len());
    let text = lines.join("\n");
    assert_eq!(
        lines.len(),
        run.expected.len(),
        "one line per request expected:\n{text}\n{}",
        run.gw.logs()
    );
    assert_no_secrets(&run, &text);
    let by_path: BTreeMap<String, Value> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"));
            (v["path"].as_str().unwrap_or_default().to_owned(), v)
        })
        .collect();
    for e in &run.expected {
        let v = by_path
            .get(e.path)
            .unwrap_or_else(|| panic!("no line for {}:\n{text}", e.path));
        assert_eq!(v["status"], e.status, "{v}");
        match e.route {
            Some(r) => assert_eq!(v["route"], r, "{v}"),
            None => assert!(v["route"].is_null(), "{v}"),
        }
        let ms = v["duration_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("duration_ms not a number: {v}"));
        assert!((0.0..60_000.0).contains(&ms), "{v}");
        assert_eq!(v["bytes_in"].as_u64(), Some(e.bytes_in), "bytes_in: {v}");
        assert_eq!(v["bytes_out"].as_u64(), Some(e.bytes_out), "bytes_out: {v}");
        assert!(
            v.get("token_id").is_some() && v.get("user_id").is_some(),
            "{v}"
        );
        if e.authorized {
            assert_eq!(v["token_id"].as_i64(), Some(run.token_id), "{v}");
            assert_eq!(v["user_id"], "log-user", "{v}");
        } else {
            assert!(
                v["token_id"].is_null(),
                "denied requests have no token id: {v}"
            );
            assert!(
                v["user_id"].is_null(),
                "denied requests have no user id: {v}"
            );
        }
    }
}

#[test]
fn plain_access_log_lines_have_the_documented_shape() {
    let run = access_log_run("plain");
    let lines = wait_lines(&run.log_path, run.expected.len());
    let text = lines.join("\n");
    assert_eq!(
        lines.len(),
        run.expected.len(),
        "one line per request expected:\n{text}\n{}",
        run.gw.logs()
    );
    assert_no_secrets(&run, &text);
    // <rfc3339> <client> "<METHOD> <path>" <status> route=<r> auth=<a> token=<id|-> user=<u|-> in=<n> out=<n> ms=<f>
    // id=<request id> tls=<1.3|1.3r|1.2|1.2r|->
    let mut by_path = BTreeMap::new();
    for line in &lines {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 14, "plain line has 14 fields: {line:?}");
        assert_eq!(f[13], "tls=-", "the plain listener: {line:?}");
        assert!(
            parse_rfc3339_utc(f[0]).is_some_and(|t| (t - unix_now()).abs() < 600),
            "time: {line:?}"
        );
        assert_eq!(f[1], "127.0.0.1", "client: {line:?}");
        assert!(
            ["\"GET", "\"POST"].contains(&f[2]) && f[3].starts_with('/') && f[3].ends_with('"'),
            "request: {line:?}"
        );
        let field = |i: usize, key: &str| -> String {
            f[i].strip_prefix(&format!("{key}="))
                .unwrap_or_else(|| panic!("field {i} is not {key}=: {line:?}"))
                .to_owned()
        };
        let ms: f64 = field(11, "ms").parse().expect("ms");
        assert!((0.0..60_000.0).contains(&ms), "{line:?}");
        let id = field(12, "id");
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "request id: {line:?}"
        );
        by_path.insert(
            f[3].trim_end_matches('"').to_owned(),
            (
                f[4].parse::<u16>().expect("status"),
                field(5, "route"),
                field(6, "auth"),
                field(7, "token"),
                field(8, "user"),
                field(9, "in").parse::<u64>().expect("in"),
                field(10, "out").parse::<u64>().expect("out"),
            ),
        );
    }
    for e in &run.expected {
        let (status, route, _auth, token, user, bytes_in, bytes_out) = by_path
            .get(e.path)
            .unwrap_or_else(|| panic!("no line for {}:\n{text}", e.path));
        assert_eq!(*status, e.status, "{}", e.path);
        assert_eq!(route, e.route.unwrap_or("-"), "{}", e.path);
        assert_eq!(*bytes_in, e.bytes_in, "{}", e.path);
        assert_eq!(*bytes_out, e.bytes_out, "{}", e.path);
        if e.authorized {
            assert_eq!(token, &run.token_id.to_string());
            assert_eq!(user, "log-user");
        } else {
            assert_eq!((token.as_str(), user.as_str()), ("-", "-"), "{}", e.path);
        }
    }
}

#[test]
fn access_log_off_writes_nothing() {
    let run = access_log_run("off");
    // Longer than the writer's 100 ms batch, with margin for a loaded machine.
    std::thread::sleep(Duration::from_millis(1500));
    let file = fs::read_to_string(&run.log_path).unwrap_or_default();
    assert!(
        file.is_empty(),
        "access = \"off\" still wrote to {}:\n{file}",
        run.log_path.display()
    );
    let logs = run.gw.logs();
    for e in &run.expected {
        assert!(
            !logs.contains(e.path),
            "access = \"off\" but {} is in the gateway output:\n{logs}",
            e.path
        );
    }
    for s in &run.secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a token is in the gateway output"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// 4. max_body_bytes
// ---------------------------------------------------------------------------------------------------------

#[test]
fn max_body_bytes_refuses_large_bodies_before_the_upstream_gets_them() {
    let up = Upstream::start("upload");
    let gw = GatewayBuilder::new()
        .route_with("upload", "/up", up.addr(), &[("max_body_bytes", "1000")])
        .start();
    let (_, token) = gw.create_token("upload-user", "cam");
    // Warm up with a body-less request; it reaches the upstream.
    gw.wait_ok("/up/warm", &token);
    let hits_before = up.hits();
    let auth = bearer(&token);

    // Declared too large: 413 from the head alone, nothing forwarded.
    let mut c = Conn::open(gw.addr());
    c.send(&keepalive_head(
        "POST",
        "/up/declared",
        &[("Authorization", &auth), ("Content-Length", "2000")],
    ))
    .unwrap();
    let r = c.read_response().expect("413 for Content-Length 2000");
    assert_eq!(r.status, 413, "{r}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r}");
    assert_eq!(r.json_error(), "payload_too_large", "{r}");
    // The client may still push its body; the gateway must not forward it.
    let _ = c.send(&[b'd'; 2000]);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        up.hits(),
        hits_before,
        "the upstream was contacted for a body declared too large"
    );

    // Chunked, 10 × 500 bytes, sent in pieces: cut off when it passes 1000.
    let mut c = Conn::open(gw.addr());
    c.send(&keepalive_head(
        "POST",
        "/up/chunked",
        &[("Authorization", &auth), ("Transfer-Encoding", "chunked")],
    ))
    .unwrap();
    let mut sent = 0;
    for _ in 0..10 {
        let mut chunk = format!("{:x}\r\n", 500).into_bytes();
        chunk.extend_from_slice(&[b'c'; 500]);
        chunk.extend_from_slice(b"\r\n");
        if c.send(&chunk).is_err() {
            break;
        }
        sent += 500;
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.send(b"0\r\n\r\n");
    let outcome = c.read_response();
    match &outcome {
        Ok(r) => {
            eprintln!(
                "chunked 5000 bytes over a 1000-byte limit: {} ({sent} bytes written)",
                r.status
            );
            assert_eq!(r.status, 413, "chunked body over the limit: {r}");
            assert_eq!(r.json_error(), "payload_too_large", "{r}");
        }
        Err(e) => {
            eprintln!("chunked 5000 bytes over a 1000-byte limit: connection closed without a response ({e}; {sent} bytes written)");
        }
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    let complete: Vec<u64> = up
        .requests()
        .iter()
        .filter(|r| r.uri == "/up/chunked")
        .map(|r| r.body_len)
        .collect();
    eprintln!(
        "upstream for /up/chunked: {} heads, complete bodies {complete:?}",
        up.hits() - hits_before
    );
    assert!(
        complete.iter().all(|&n| n < 5000),
        "the upstream received the whole oversize chunked body: {complete:?}"
    );

    // Under the limit: forwarded whole.
    let r = gw.request(
        "POST",
        "/up/small",
        &[("Authorization", &auth)],
        &[b's'; 900],
    );
    assert_eq!(r.status, 200, "{r}");
    let last = up.last();
    assert_eq!((last.uri.as_str(), last.body_len), ("/up/small", 900));
}

// ---------------------------------------------------------------------------------------------------------
// 5. query_token_param
// ---------------------------------------------------------------------------------------------------------

#[test]
fn query_token_works_only_where_enabled_and_is_removed_before_forwarding() {
    let legacy_up = Upstream::start("legacy");
    let modern_up = Upstream::start("modern");
    let mut gw = GatewayBuilder::new()
        .section("log", "access", "\"json\"")
        .section("log", "access_path", "\"access.log\"")
        .route_with(
            "legacy",
            "/legacy",
            legacy_up.addr(),
            &[("query_token_param", "\"api_token\"")],
        )
        .route("modern", "/modern", modern_up.addr())
        .build();
    let (token_id, token) = gw.create_token("firmware-user", "old scale");
    gw.start();

    let r = gw.request(
        "GET",
        &format!("/legacy/x?a=1&api_token={token}&b=2"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{r}");
    let seen = legacy_up.last();
    assert_eq!(
        seen.uri, "/legacy/x?a=1&b=2",
        "the token must leave the query"
    );
    assert_eq!(seen.single_header("x-user-id"), "firmware-user");
    assert_eq!(seen.single_header("x-token-id"), token_id.to_string());
    assert!(seen.header_values("authorization").is_empty());
    for (k, v) in &seen.headers {
        assert!(
            !v.contains(&token) && !k.contains(&token),
            "token in header {k}"
        );
    }

    let r = gw.request(
        "GET",
        &format!("/modern/x?a=1&api_token={token}&b=2"),
        &[],
        b"",
    );
    assert_eq!(
        r.status, 401,
        "a route without the option ignores the query: {r}"
    );
    assert_eq!(modern_up.hits(), 0);

    let bad = corrupt(&token);
    let hits = legacy_up.hits();
    let r = gw.request("GET", &format!("/legacy/x?api_token={bad}"), &[], b"");
    assert_eq!(r.status, 401, "bad query token: {r}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.contains("invalid_token")),
        "{r}"
    );
    assert_eq!(legacy_up.hits(), hits);

    let log_path = gw.dir().join("access.log");
    let lines = wait_lines(&log_path, 3);
    let text = lines.join("\n");
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        !text.contains(&token),
        "the query token is in the access log"
    );
    assert!(
        !text.contains(&bad),
        "the bad query token is in the access log"
    );
    assert!(
        !text.contains("api_token"),
        "the query is in the access log: {text}"
    );
    let ok: Value = serde_json::from_str(
        &lines
            .iter()
            .find(|l| l.contains("\"legacy\"") && l.contains("200"))
            .cloned()
            .unwrap_or_else(|| panic!("no 200 line for legacy:\n{text}")),
    )
    .unwrap();
    assert_eq!(ok["path"], "/legacy/x");
    assert_eq!(ok["user_id"], "firmware-user");
    let logs = gw.logs();
    assert!(
        !logs.contains(&token),
        "the query token is in the gateway output"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 6. request_timeout
// ---------------------------------------------------------------------------------------------------------

#[test]
fn stalled_request_body_gets_408_and_others_are_still_served() {
    let up = Upstream::start("slowbody");
    let gw = GatewayBuilder::new()
        .route_with("slow", "/slow", up.addr(), &[("request_timeout", "\"1s\"")])
        .start();
    let (_, token) = gw.create_token("slow-user", "stalling device");
    gw.wait_ok("/slow/warm", &token);

    let addr = gw.addr();
    let auth = bearer(&token);
    let staller = std::thread::spawn(move || {
        let mut c = Conn::open(addr);
        let mut req = keepalive_head(
            "POST",
            "/slow/stalled",
            &[("Authorization", &auth), ("Content-Length", "100")],
        );
        req.extend_from_slice(&[b'z'; 10]);
        let t = Instant::now();
        c.send(&req).unwrap();
        let r = c.read_response();
        (r, t.elapsed())
    });

    // While that client stalls, others are served.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = gw.get_with_token("/slow/other", &token);
    assert_eq!(r.status, 200, "{r}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    let (outcome, elapsed) = staller.join().expect("staller thread");
    match &outcome {
        Ok(r) => {
            eprintln!("stalled body: {} after {elapsed:?}", r.status);
            assert_eq!(r.status, 408, "stalled body: {r}");
            assert_eq!(r.json_error(), "request_timeout", "{r}");
        }
        Err(e) => {
            eprintln!("stalled body: connection closed without a response after {elapsed:?} ({e})")
        }
    }
    assert!(
        elapsed < Duration::from_secs(8),
        "the stalled request was ended only after {elapsed:?} (request_timeout = 1s)"
    );
    assert!(
        elapsed >= Duration::from_millis(800),
        "the stalled request was ended after {elapsed:?}, before request_timeout"
    );
    assert!(
        up.requests()
            .iter()
            .all(|r| r.uri != "/slow/stalled" || r.body_len < 100),
        "the upstream got a complete body that was never sent"
    );
    let r = gw.get_with_token("/slow/after", &token);
    assert_eq!(r.status, 200, "{r}");
}

// ---------------------------------------------------------------------------------------------------------
// 7. keepalive_timeout
// ---------------------------------------------------------------------------------------------------------

#[test]
fn idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let up = Upstream::start("idle");
    let gw = GatewayBuilder::new()
        .gateway("keepalive_timeout", "\"1s\"")
        .route("telemetry", "/iot", up.addr())
        .start();
    let (_, token) = gw.create_token("idle-user", "sleepy");
    gw.wait_ok("/iot/warm", &token);
    let auth = bearer(&token);

    let mut c = Conn::open(gw.addr());
    c.set_read_timeout(Duration::from_secs(5));
    // Two requests on one connection: keep-alive works.
    for i in 0..2 {
        c.send(&keepalive_head(
            "GET",
            &format!("/iot/ka-{i}"),
            &[("Authorization", &auth)],
        ))
        .unwrap();
        let r = c.read_response().expect("keep-alive response");
        assert_eq!(
            r.status, 200,
            "request {i} on the kept-alive connection: {r}"
        );
        assert!(
            !r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "the gateway closed the connection after request {i}: {r}"
        );
    }
    let idle = Instant::now();
    let closed = c.wait_closed();
    let elapsed = idle.elapsed();
    assert!(
        closed.is_ok(),
        "an idle connection was still open after {elapsed:?} (keepalive_timeout = 1s): {}",
        closed.unwrap_err()
    );
    assert!(
        elapsed >= Duration::from_millis(500),
        "closed after only {elapsed:?} of idleness"
    );
    eprintln!("idle keep-alive connection closed after {elapsed:?}");
}
