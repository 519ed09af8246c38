//! Soak test (issue 6): the real gateway under sustained mixed traffic and token churn, checking every
//! single decision and that memory stays flat.
//!
//! Ignored by default (it runs for minutes); run it with `benches/soak.sh`, or
//! `SOAK_SECONDS=60 cargo test --release --test soak -- --ignored --nocapture`.
//!
//! Set-up, all on loopback: one `tokengate serve` process (throttle off, access log to a file) with two
//! routes (`/iot`, `/video`) in front of one upstream that answers with the `x-user-id` it received.
//! For `SOAK_SECONDS` (default 120):
//!
//! - [`CLIENTS`] client tasks, each with its own keep-alive `reqwest` client, send back-to-back GETs and
//!   small POSTs with a mix of credentials: long-lived valid tokens, churned (newly created) tokens,
//!   revoked tokens, garbage, valid tokens with one character changed, and well-formed unknown tokens;
//! - a churn thread creates a token with `token create --json` every [`CHURN_PERIOD`] and revokes the
//!   oldest churned token with `token revoke ID` once more than [`ACTIVE_CHURN`] are active, recording
//!   when each CLI call returned;
//! - a sampler reads the gateway's `VmRSS` every second.
//!
//! Every response is judged (see [`judge`]); the test fails on any wrong decision: an invalid or unknown
//! token let through, a revoked token let through for a request sent more than [`SYNC_BOUND`] after its
//! revoke returned, a valid token refused (a new one: once [`SYNC_BOUND`] has passed since its create
//! returned), a wrong `x-user-id`, a credential reaching the upstream, any 429/503 or transport error.
//! At the end the resident memory must be flat (last quarter's average at most 1.2 × the second
//! quarter's) and `/healthz` must say `ok`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// The longest a revoke or create may take to reach the gateway (`sync_interval` is 100 ms).
const SYNC_BOUND: Duration = Duration::from_millis(250);
/// Concurrent client tasks.
const CLIENTS: usize = 8;
/// Valid tokens created before the load starts and never revoked.
const STABLE_TOKENS: usize = 16;
/// One create (and, past [`ACTIVE_CHURN`], one revoke) per period.
const CHURN_PERIOD: Duration = Duration::from_millis(200);
/// Churned tokens kept active; older ones are revoked.
const ACTIVE_CHURN: usize = 12;
/// Allowed RSS growth: last quarter's average over the second quarter's.
const RSS_GROWTH_LIMIT: f64 = 1.2;
/// Wrong decisions printed in full (all are counted).
const MAX_REPORTED: usize = 30;

// ---------------------------------------------------------------------------------------------------------
// Shared token state
// ---------------------------------------------------------------------------------------------------------

/// A token created by the churn thread.
struct Churned {
    id: i64,
    token: String,
    user: String,
    /// When `token create` returned.
    created: Instant,
    /// When `token revoke` was started (from then on a refusal is legitimate).
    revoke_started: Option<Instant>,
    /// When `token revoke` returned (from then on plus [`SYNC_BOUND`], a 200 is wrong).
    revoked: Option<Instant>,
}

#[derive(Default)]
struct Pool {
    /// Every churned token, by creation order; entries are never removed, so indices stay valid.
    all: Vec<Churned>,
    /// Indices into `all` of active (not yet being revoked) tokens, oldest first.
    active: Vec<usize>,
    /// Indices into `all` whose revoke returned.
    revoked: Vec<usize>,
}

/// What the churn thread did.
#[derive(Default, Debug)]
struct ChurnReport {
    creates: u64,
    revokes: u64,
    max_create: Duration,
    max_revoke: Duration,
}

// ---------------------------------------------------------------------------------------------------------
// Request kinds and verdicts
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A token created before the load, never revoked.
    Stable,
    /// An active churned token (it may be revoked while the request is in flight).
    New,
    /// A churned token whose revoke returned.
    Revoked,
    /// Random bytes in token68 characters, with and without the `tg_` prefix.
    Garbage,
    /// A valid token with one character changed.
    Mutated,
    /// A well-formed token (right prefix, length and checksum) that was never issued.
    Unknown,
}

const KINDS: [Kind; 6] = [
    Kind::Stable,
    Kind::New,
    Kind::Revoked,
    Kind::Garbage,
    Kind::Mutated,
    Kind::Unknown,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stable => "valid",
            Kind::New => "new",
            Kind::Revoked => "revoked",
            Kind::Garbage => "garbage",
            Kind::Mutated => "one-char-changed",
            Kind::Unknown => "unknown",
        }
    }

    fn index(self) -> usize {
        KINDS.iter().position(|k| *k == self).expect("kind")
    }

    /// Weighted choice from a number in 0..100.
    fn pick(roll: u64) -> Kind {
        match roll {
            0..=34 => Kind::Stable,
            35..=54 => Kind::New,
            55..=69 => Kind::Revoked,
            70..=79 => Kind::Garbage,
            80..=89 => Kind::Mutated,
            _ => Kind::Unknown,
        }
    }
}

/// Per-kind counters of one client task.
#[derive(Default, Clone, Debug)]
struct KindStats {
    sent: u64,
    s200: u64,
    s401: u64,
    other: u64,
    errors: u64,
    /// 401 for a new token inside the sync bound after its create.
    early_401: u64,
    /// 401 for a new token whose revoke had started.
    revoking_401: u64,
    /// 200 for a revoked token inside the sync bound after its revoke returned.
    stale_200: u64,
}

#[derive(Default, Debug)]
struct Stats {
    kinds: [KindStats; 6],
    wrong: u64,
    wrong_examples: Vec<String>,
    /// Longest (request sent − revoke returned) that still got 200.
    max_stale_accept: Duration,
    /// Longest (request sent − create returned) that still got 401 (no revoke started).
    max_new_refusal: Duration,
    latencies_us: Vec<u32>,
}

impl Stats {
    fn wrong(&mut self, what: String) {
        self.wrong += 1;
        if self.wrong_examples.len() < MAX_REPORTED {
            self.wrong_examples.push(what);
        }
    }

    fn merge(&mut self, other: Stats) {
        for (mine, theirs) in self.kinds.iter_mut().zip(other.kinds.iter()) {
            mine.sent += theirs.sent;
            mine.s200 += theirs.s200;
            mine.s401 += theirs.s401;
            mine.other += theirs.other;
            mine.errors += theirs.errors;
            mine.early_401 += theirs.early_401;
            mine.revoking_401 += theirs.revoking_401;
            mine.stale_200 += theirs.stale_200;
        }
        self.wrong += other.wrong;
        for example in other.wrong_examples {
            if self.wrong_examples.len() < MAX_REPORTED {
                self.wrong_examples.push(example);
            }
        }
        self.max_stale_accept = self.max_stale_accept.max(other.max_stale_accept);
        self.max_new_refusal = self.max_new_refusal.max(other.max_new_refusal);
        self.latencies_us.extend(other.latencies_us);
    }
}

/// What a request was sent with, and what to expect.
struct Probe {
    kind: Kind,
    token: String,
    /// The owner whose id the upstream must see on a 200 (None: a 200 is wrong in any case).
    user: Option<String>,
    /// Index into [`Pool::all`] for churned tokens.
    churned: Option<usize>,
}

/// The state of a churned token, read after the response arrived.
#[derive(Clone, Copy)]
struct ChurnState {
    created: Instant,
    revoke_started: Option<Instant>,
    revoked: Option<Instant>,
}

/// Judges one answered request; records counters and wrong decisions in `stats`.
fn judge(
    stats: &mut Stats,
    probe: &Probe,
    sent: Instant,
    status: u16,
    body: &str,
    churn: Option<ChurnState>,
) {
    let k = &mut stats.kinds[probe.kind.index()];
    match status {
        200 => k.s200 += 1,
        401 => k.s401 += 1,
        _ => k.other += 1,
    }
    let describe = |why: &str| {
        let id = churn.map_or(String::new(), |c| {
            format!(
                " (created {:?} before send, revoke returned {:?} before send)",
                sent.saturating_duration_since(c.created),
                c.revoked.map(|r| sent.saturating_duration_since(r))
            )
        });
        format!(
            "{} token: HTTP {status} body {body:?}: {why}{id}",
            probe.kind.name()
        )
    };
    if status == 429 || status == 503 {
        stats.wrong(describe(
            "429/503 must not appear (throttle off, no max_in_flight)",
        ));
        return;
    }
    // A token whose revoke returned more than the sync bound before the request was sent must be refused,
    // whatever kind of request carried it.
    if status == 200 {
        if let Some(revoked) = churn.and_then(|c| c.revoked) {
            if sent > revoked {
                let after = sent - revoked;
                if after > SYNC_BOUND {
                    stats.wrong(describe("revoked token accepted after the sync bound"));
                    return;
                }
                stats.max_stale_accept = stats.max_stale_accept.max(after);
                if probe.kind == Kind::Revoked {
                    stats.kinds[probe.kind.index()].stale_200 += 1;
                }
            }
        }
    }
    match probe.kind {
        Kind::Garbage | Kind::Mutated | Kind::Unknown => {
            if status != 401 {
                stats.wrong(describe("an invalid token must get 401"));
            }
        }
        Kind::Stable => {
            if status != 200 {
                stats.wrong(describe("a valid, never revoked token must get 200"));
            }
        }
        Kind::Revoked => {
            if status != 200 && status != 401 {
                stats.wrong(describe("a revoked token must get 401"));
            }
        }
        Kind::New => {
            let c = churn.expect("new tokens are churned");
            if status == 401 {
                let since_create = sent.saturating_duration_since(c.created);
                if c.revoke_started.is_some() {
                    stats.kinds[probe.kind.index()].revoking_401 += 1;
                } else if since_create <= SYNC_BOUND {
                    stats.kinds[probe.kind.index()].early_401 += 1;
                    stats.max_new_refusal = stats.max_new_refusal.max(since_create);
                } else {
                    stats.wrong(describe(
                        "a new token must be accepted once the sync bound has passed",
                    ));
                }
            } else if status != 200 {
                stats.wrong(describe("a new token must get 200 (or 401 once revoked)"));
            }
        }
    }
    if status == 200 {
        match &probe.user {
            Some(user) if user == body => {}
            Some(user) => stats.wrong(describe(&format!(
                "upstream saw x-user-id {body:?}, expected {user:?}"
            ))),
            None => stats.wrong(describe("a token that never existed was let through")),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------------------------------------

/// A minimal upstream: drains the body and answers 200 with the `x-user-id` it received. (The shared
/// [`Upstream`] keeps a record of every request, which would grow without bound over a soak.)
async fn serve_upstream(listener: tokio::net::TcpListener, credentials_seen: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let seen = Arc::clone(&credentials_seen);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let seen = Arc::clone(&seen);
                async move {
                    if req.headers().contains_key("authorization") {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    let user = req
                        .headers()
                        .get("x-user-id")
                        .map(|v| Bytes::copy_from_slice(v.as_bytes()))
                        .unwrap_or_default();
                    let mut body = req.into_body();
                    while let Some(frame) = body.frame().await {
                        frame?;
                    }
                    Ok::<_, hyper::Error>(Response::new(Full::new(user)))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------------------

/// xorshift64*: cheap per-task randomness for choosing kinds, tokens and paths.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn alnum(&mut self) -> char {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        ALPHABET[self.below(ALPHABET.len())] as char
    }
}

/// Chooses what the next request carries.
fn next_probe(rng: &mut Rng, stable: &[(String, String)], pool: &Mutex<Pool>) -> Probe {
    let mut kind = Kind::pick(rng.next() % 100);
    let pool = pool.lock().unwrap();
    if (kind == Kind::New && pool.active.is_empty())
        || (kind == Kind::Revoked && pool.revoked.is_empty())
    {
        kind = Kind::Stable;
    }
    match kind {
        Kind::Stable => {
            let (user, token) = &stable[rng.below(stable.len())];
            Probe {
                kind,
                token: token.clone(),
                user: Some(user.clone()),
                churned: None,
            }
        }
        Kind::New | Kind::Revoked => {
            let list = if kind == Kind::New {
                &pool.active
            } else {
                &pool.revoked
            };
            let i = list[rng.below(list.len())];
            let t = &pool.all[i];
            Probe {
                kind,
                token: t.token.clone(),
                user: Some(t.user.clone()),
                churned: Some(i),
            }
        }
        Kind::Garbage => {
            let token: String = match rng.below(3) {
                0 => format!("tg_{}", (0..49).map(|_| rng.alnum()).collect::<String>()),
                1 => (0..1 + rng.below(80)).map(|_| rng.alnum()).collect(),
                _ => format!(
                    "tg_{}",
                    (0..rng.below(60)).map(|_| rng.alnum()).collect::<String>()
                ),
            };
            Probe {
                kind,
                token,
                user: None,
                churned: None,
            }
        }
        Kind::Mutated => {
            let source = if pool.active.is_empty() || rng.below(2) == 0 {
                stable[rng.below(stable.len())].1.clone()
            } else {
                pool.all[pool.active[rng.below(pool.active.len())]]
                    .token
                    .clone()
            };
            let mut bytes = source.into_bytes();
            let at = 3 + rng.below(bytes.len() - 3);
            let replacement = loop {
                let c = rng.alnum() as u8;
                if c != bytes[at] {
                    break c;
                }
            };
            bytes[at] = replacement;
            Probe {
                kind,
                token: String::from_utf8(bytes).expect("ascii"),
                user: None,
                churned: None,
            }
        }
        Kind::Unknown => Probe {
            kind,
            token: tokengate::tokens::format::Token::generate().into_string(),
            user: None,
            churned: None,
        },
    }
}

/// One client task: back-to-back requests on a keep-alive client until `deadline`.
async fn client_task(
    n: usize,
    base: String,
    stable: Arc<Vec<(String, String)>>,
    pool: Arc<Mutex<Pool>>,
    deadline: Instant,
) -> Stats {
    let http = client();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((n as u64 + 1) * 0x1234_5678_9ABC_DEF1));
    let upload = Bytes::from(vec![b'x'; 4096]);
    let mut stats = Stats::default();
    let mut seq = 0u64;
    while Instant::now() < deadline {
        seq += 1;
        let probe = next_probe(&mut rng, &stable, &pool);
        let request = if seq.is_multiple_of(4) {
            let len = 1 + rng.below(upload.len());
            http.post(format!("{base}/video/upload/{n}/{seq}"))
                .body(upload.slice(..len))
        } else {
            http.get(format!("{base}/iot/hives/{}?seq={seq}", rng.below(100)))
        };
        let request = request
            .bearer_auth(&probe.token)
            .timeout(Duration::from_secs(10));
        stats.kinds[probe.kind.index()].sent += 1;
        let sent = Instant::now();
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                response.text().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        let elapsed = sent.elapsed();
        match answer {
            Ok((status, body)) => {
                stats
                    .latencies_us
                    .push(elapsed.as_micros().min(u32::MAX as u128) as u32);
                let churn = probe.churned.map(|i| {
                    let pool = pool.lock().unwrap();
                    let t = &pool.all[i];
                    ChurnState {
                        created: t.created,
                        revoke_started: t.revoke_started,
                        revoked: t.revoked,
                    }
                });
                judge(&mut stats, &probe, sent, status, &body, churn);
            }
            Err(e) => {
                stats.kinds[probe.kind.index()].errors += 1;
                if stats.kinds.iter().map(|k| k.errors).sum::<u64>() <= 5 {
                    eprintln!("client {n}: {} request failed: {e}", probe.kind.name());
                }
            }
        }
    }
    stats
}

/// The churn thread: create every [`CHURN_PERIOD`], revoke the oldest beyond [`ACTIVE_CHURN`].
fn churn(gw: &Gateway, pool: &Mutex<Pool>, deadline: Instant) -> ChurnReport {
    let mut report = ChurnReport::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let tick = Instant::now();
        n += 1;
        let user = format!("churn-{n}");
        let (id, token) = gw.create_token(&user, "soak churn");
        let created = Instant::now();
        report.creates += 1;
        report.max_create = report.max_create.max(created - tick);
        let oldest = {
            let mut pool = pool.lock().unwrap();
            let i = pool.all.len();
            pool.all.push(Churned {
                id,
                token,
                user,
                created,
                revoke_started: None,
                revoked: None,
            });
            pool.active.push(i);
            if pool.active.len() > ACTIVE_CHURN {
                let oldest = pool.active.remove(0);
                pool.all[oldest].revoke_started = Some(Instant::now());
                Some((oldest, pool.all[oldest].id))
            } else {
                None
            }
        };
        if let Some((i, id)) = oldest {
            let started = Instant::now();
            gw.revoke(id);
            let returned = Instant::now();
            report.revokes += 1;
            report.max_revoke = report.max_revoke.max(returned - started);
            let mut pool = pool.lock().unwrap();
            pool.all[i].revoked = Some(returned);
            pool.revoked.push(i);
        }
        std::thread::sleep(CHURN_PERIOD.saturating_sub(tick.elapsed()));
    }
    report
}

/// `VmRSS` of `pid` in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// Samples the gateway's RSS every second until `deadline`.
fn sample_rss(pid: u32, deadline: Instant) -> Vec<u64> {
    let mut samples = Vec::new();
    let mut next = Instant::now();
    while next < deadline {
        samples.push(vm_rss_kib(pid));
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    samples
}

fn average(values: &[u64]) -> f64 {
    values.iter().sum::<u64>() as f64 / values.len().max(1) as f64
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}

// ---------------------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------------------

#[test]
#[ignore = "soak: run with benches/soak.sh"]
fn soak_mixed_traffic_with_token_churn() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .map(|s| s.parse().expect("SOAK_SECONDS must be a whole number"))
        .unwrap_or(120);
    assert!(seconds >= 8, "SOAK_SECONDS must be at least 8");
    let soak = Duration::from_secs(seconds);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    // The upstream, on the same runtime as the clients.
    let credentials_seen = Arc::new(AtomicU64::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    listener.set_nonblocking(true).expect("nonblocking");
    let upstream: SocketAddr = listener.local_addr().expect("upstream addr");
    {
        let seen = Arc::clone(&credentials_seen);
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            serve_upstream(listener, seen).await;
        });
    }

    let mut gw = GatewayBuilder::new()
        .gateway("sync_interval", "\"100ms\"")
        .route("telemetry", "/iot", upstream)
        .route("video", "/video", upstream)
        .section("throttle", "max_failures", "0")
        .section("log", "access", "\"plain\"")
        .section("log", "access_path", "\"access.log\"")
        .start();
    let pid = gw.pid();

    // Long-lived tokens, accepted before the load starts.
    let stable: Vec<(String, String)> = (0..STABLE_TOKENS)
        .map(|i| {
            let user = format!("stable-{i}");
            let (_, token) = gw.create_token(&user, "soak stable");
            (user, token)
        })
        .collect();
    for (user, token) in &stable {
        let mut last = None;
        let accepted = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            let response = gw.get_with_token("/iot/warmup", token);
            let ok = response.status == 200 && response.text() == *user;
            last = Some(response);
            ok
        });
        assert!(accepted, "stable token never accepted: {}", last.unwrap());
    }
    let stable = Arc::new(stable);
    let pool = Arc::new(Mutex::new(Pool::default()));
    let rss_start = vm_rss_kib(pid);

    println!(
        "soak: {seconds} s, {CLIENTS} clients, {STABLE_TOKENS} stable tokens, churn every {CHURN_PERIOD:?} \
         (≤ {ACTIVE_CHURN} active), sync bound {SYNC_BOUND:?}, gateway pid {pid}"
    );
    let started = Instant::now();
    let deadline = started + soak;
    let (stats, churn_report, rss) = std::thread::scope(|s| {
        let churner = s.spawn(|| churn(&gw, &pool, deadline));
        let sampler = s.spawn(|| sample_rss(pid, deadline));
        let stats = runtime.block_on(async {
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|n| {
                    tokio::spawn(client_task(
                        n,
                        gw.url(""),
                        Arc::clone(&stable),
                        Arc::clone(&pool),
                        deadline,
                    ))
                })
                .collect();
            let mut total = Stats::default();
            for task in tasks {
                total.merge(task.await.expect("client task"));
            }
            total
        });
        let churn_report = churner.join().expect("churn thread");
        let rss = sampler.join().expect("rss sampler");
        (stats, churn_report, rss)
    });
    let elapsed = started.elapsed();

    // Final state of the gateway.
    assert!(gw.is_running(), "gateway exited during the soak");
    let healthz = gw.admin_get("/healthz");
    let metrics = gw.admin_get("/metrics").text();
    let index_tokens = metrics
        .lines()
        .find(|l| l.starts_with("tokengate_index_tokens "))
        .unwrap_or("tokengate_index_tokens ?")
        .to_owned();
    let access_log_bytes = std::fs::metadata(gw.dir().join("access.log")).map_or(0, |m| m.len());

    // Report.
    let mut latencies = stats.latencies_us.clone();
    latencies.sort_unstable();
    let total: u64 = stats.kinds.iter().map(|k| k.sent).sum();
    let errors: u64 = stats.kinds.iter().map(|k| k.errors).sum();
    println!(
        "requests: {total} in {:.1} s ({:.0}/s), transport errors: {errors}, wrong decisions: {}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        stats.wrong
    );
    println!(
        "latency (client side): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile_ms(&latencies, 0.5),
        percentile_ms(&latencies, 0.99),
        percentile_ms(&latencies, 1.0)
    );
    for kind in KINDS {
        let k = &stats.kinds[kind.index()];
        println!(
            "  {:<17} sent {:>8}  200 {:>8}  401 {:>8}  other {:>4}  errors {:>3}  \
             new-401-in-bound {:>3}  401-while-revoking {:>3}  revoked-200-in-bound {:>3}",
            kind.name(),
            k.sent,
            k.s200,
            k.s401,
            k.other,
            k.errors,
            k.early_401,
            k.revoking_401,
            k.stale_200
        );
    }
    println!(
        "churn: {} creates (slowest {:?}), {} revokes (slowest {:?}); longest revoked-but-accepted {:?} \
         after revoke returned, longest new-but-refused {:?} after create returned",
        churn_report.creates,
        churn_report.max_create,
        churn_report.revokes,
        churn_report.max_revoke,
        stats.max_stale_accept,
        stats.max_new_refusal
    );
    let quarter = rss.len() / 4;
    let (second_quarter, last_quarter) = if quarter > 0 {
        (
            average(&rss[quarter..2 * quarter]),
            average(&rss[rss.len() - quarter..]),
        )
    } else {
        (0.0, 0.0)
    };
    println!(
        "RSS KiB: at start {rss_start}, {} samples min {} avg {:.0} max {}; second quarter avg {second_quarter:.0}, \
         last quarter avg {last_quarter:.0} (ratio {:.3}, limit {RSS_GROWTH_LIMIT}); VmHWM {}",
        rss.len(),
        rss.iter().min().copied().unwrap_or(0),
        average(&rss),
        rss.iter().max().copied().unwrap_or(0),
        last_quarter / second_quarter.max(1.0),
        gw.vm_hwm_kib()
    );
    let step = rss.len().div_ceil(30).max(1);
    let trend: Vec<u64> = rss.iter().step_by(step).copied().collect();
    println!("RSS KiB every {step} s: {trend:?}");
    println!(
        "{index_tokens}; access log {access_log_bytes} bytes; credentials seen by the upstream: {}; /healthz {}",
        credentials_seen.load(Ordering::Relaxed),
        healthz.text()
    );
    for example in &stats.wrong_examples {
        println!("WRONG: {example}");
    }

    // Verdicts.
    assert_eq!(
        stats.wrong,
        0,
        "wrong decisions (first {MAX_REPORTED}):\n{}",
        stats.wrong_examples.join("\n")
    );
    assert_eq!(errors, 0, "transport errors during the soak");
    assert_eq!(
        credentials_seen.load(Ordering::Relaxed),
        0,
        "the upstream received Authorization headers"
    );
    for kind in KINDS {
        assert!(
            stats.kinds[kind.index()].sent > 0,
            "no {} requests were sent",
            kind.name()
        );
    }
    assert!(
        churn_report.revokes > 0,
        "the soak was too short to revoke anything"
    );
    assert!(rss.len() >= 8, "too few RSS samples: {}", rss.len());
    assert!(
        last_quarter <= RSS_GROWTH_LIMIT * second_quarter,
        "RSS grew: last quarter avg {last_quarter:.0} KiB > {RSS_GROWTH_LIMIT} × second quarter avg \
         {second_quarter:.0} KiB; samples: {rss:?}"
    );
    assert_eq!(healthz.status, 200, "/healthz: {healthz}");
    assert_eq!(
        healthz.json()["status"],
        "ok",
        "/healthz not ok at the end: {healthz}"
    );
}
