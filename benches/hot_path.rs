//! Criterion benches of the per-request hot path, in process (no sockets, no SQLite):
//!
//! - `token/*`: `token::check_format` (prefix, alphabet, CRC32 checksum) and `Digest::of` (SHA-256);
//! - `index_get/{1k,100k,1M}/*`: `Index::get` on an index filled through `Index::apply`, hits spread over
//!   the whole index (so at 1M most lookups miss the CPU caches, as in production) and misses;
//! - `decision/{1k,100k,1M}/*`: the whole allow/deny decision — `auth::bearer_token` on a `HeaderMap`
//!   plus `auth::authorize` (format, digest, lookup, constant-time compare, status/expiry/scope) — for an
//!   allowed token, an unknown one, and garbage rejected by the checksum before any lookup;
//! - `route/*`: `gateway::paths::check_path` + `RouteTable::find`, the part of `request_filter` before auth;
//! - `request_head/parse`: `http1::RequestHead::parse` of a typical device request (httparse + framing);
//! - `limits/*`: the whole decision (`Gate::decide`) for an allowed token on a route without limits, with
//!   a per-token and a per-user route rate limit set too high to trigger, and for a token with its own
//!   rate limit and quota (1024 tokens round-robin, as in the load bench); and the primitives alone
//!   (`Gcra::take`, `QuotaCount::take`);
//! - `header_rewrite/*`: `transport::rewrite::write_upstream_head`, the forwarded head written from the parsed one
//!   (credential, hop-by-hop and spoofed identity fields dropped; X-Forwarded-*, identity added);
//! - `access_log/format_{plain,json}`: one access log line formatted into a reused buffer, as the worker
//!   does for every request.
//!
//! Run: `cargo bench --bench hot_path` (about 1.5 minutes; building the 1M index takes a few seconds).
//! Filter: `cargo bench --bench hot_path -- decision/1M`. Results are summarised in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokengate::config::{Config, Rate};
use tokengate::gateway::auth::{self, Outcome};
use tokengate::gateway::paths::{check_path, origin_form};
use tokengate::gateway::routes::RouteTable;
use tokengate::gateway::throttle::Throttle;
use tokengate::gateway::{Forward, Gate, Request, Rewrite, Verdict};
use tokengate::limiter::{Gcra, QuotaCount};
use tokengate::tokens::fields::Quota;
use tokengate::tokens::format::{self as token, Digest, Token};
use tokengate::tokens::index::Index;
use tokengate::tokens::store::IndexRow;
use tokengate::transport::http1::RequestHead;
use tokengate::transport::rewrite::{write_upstream_head, HeadExtras};

/// Index sizes measured.
const SIZES: [(usize, &str); 3] = [(1_000, "1k"), (100_000, "100k"), (1_000_000, "1M")];
/// Real (plaintext-known) tokens per index; the rest are filler digests.
const REAL: usize = 1024;
/// Distinct lookup keys cycled through by the `index_get` hit bench.
const PROBES: usize = 1 << 16;
/// "Now" for expiry checks: tokens are permanent, any value works.
const NOW: u64 = 1_800_000_000;

/// A small deterministic PRNG (xorshift64*) so runs pick the same keys.
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
}

fn row(id: i64, digest: Digest) -> IndexRow {
    IndexRow {
        id,
        user: format!("user{}", id % 1000),
        digest,
        prev_digest: None,
        prev_valid_until: None,
        scopes: Vec::new(),
        expires_at: None,
        revoked: false,
        rev: id,
        bound_cert: None,
        rate_limit: None,
        quota: None,
        quota_used: 0,
        quota_period: None,
        leaked: false,
        access: Default::default(),
    }
}

/// An index of `size` digests, `REAL` of them (or all, if fewer) for tokens whose plaintext is returned.
struct Filled {
    index: Index,
    digests: Vec<Digest>,
    tokens: Vec<String>,
}

fn fill(size: usize) -> Filled {
    let index = Index::new();
    let mut digests = Vec::with_capacity(size);
    let mut tokens = Vec::with_capacity(REAL.min(size));
    for i in 0..size {
        let digest = if i < REAL {
            let t = Token::generate();
            let d = t.digest();
            tokens.push(t.into_string());
            d
        } else {
            // Filler: any distinct SHA-256 output indexes the same way a real token's does.
            Digest::of(&format!("filler-{i}"))
        };
        index.apply(&row(i as i64 + 1, digest));
        digests.push(digest);
    }
    assert_eq!(index.len(), size);
    Filled {
        index,
        digests,
        tokens,
    }
}

fn token_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    let good = Token::generate().into_string();
    let mut bad = good.clone().into_bytes();
    bad[10] = if bad[10] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).unwrap();
    g.bench_function("check_format/valid", |b| {
        b.iter(|| token::check_format(black_box(&good)))
    });
    g.bench_function("check_format/bad_checksum", |b| {
        b.iter(|| token::check_format(black_box(&bad)))
    });
    g.bench_function("digest_sha256", |b| b.iter(|| Digest::of(black_box(&good))));
    g.finish();
}

fn index_and_decision_benches(c: &mut Criterion) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (size, name) in SIZES {
        let f = fill(size);

        let mut g = c.benchmark_group(format!("index_get/{name}"));
        g.throughput(Throughput::Elements(1));
        let probes: Vec<Digest> = (0..PROBES)
            .map(|_| f.digests[rng.below(f.digests.len())])
            .collect();
        let mut i = 0;
        g.bench_function("hit", |b| {
            b.iter(|| {
                i = (i + 1) & (PROBES - 1);
                f.index.get(black_box(&probes[i])).is_some()
            })
        });
        let missing: Vec<Digest> = (0..1024)
            .map(|i| Digest::of(&format!("absent-{i}")))
            .collect();
        let mut i = 0;
        g.bench_function("miss", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                f.index.get(black_box(&missing[i])).is_some()
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("decision/{name}"));
        g.throughput(Throughput::Elements(1));
        let bearer = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
            h
        };
        let allowed: Vec<HeaderMap> = f.tokens.iter().map(|t| bearer(t)).collect();
        let n = allowed.len();
        let mut i = 0;
        g.bench_function("allow", |b| {
            b.iter(|| {
                i = (i + 1) % n;
                let t = auth::bearer_token(black_box(&allowed[i])).unwrap();
                auth::authorize(&f.index, t, auth::Requirements::NONE, None, NOW).is_ok()
            })
        });
        if size == SIZES[SIZES.len() - 1].0 {
            let unknown = bearer(Token::generate().as_str());
            g.bench_function("deny_unknown", |b| {
                b.iter(|| {
                    let t = auth::bearer_token(black_box(&unknown)).unwrap();
                    auth::authorize(&f.index, t, auth::Requirements::NONE, None, NOW).is_ok()
                })
            });
            let garbage = bearer(&format!("tg_{}", "x".repeat(token::TOKEN_LEN - 3)));
            g.bench_function("deny_bad_checksum", |b| {
                b.iter(|| {
                    let t = auth::bearer_token(black_box(&garbage)).unwrap();
                    auth::authorize(&f.index, t, auth::Requirements::NONE, None, NOW).is_ok()
                })
            });
        }
        g.finish();
        // Dropping a 1M index takes a moment; it is outside every measurement.
        drop(f);
    }
}

/// The bench configuration: one bearer route and one public route, the shipped identity headers.
fn route_table() -> RouteTable {
    let text = r#"
        [gateway]
        listen = "127.0.0.1:0"
        [store]
        path = "unused.db"
        [[routes]]
        name = "telemetry"
        path_prefix = "/iot"
        upstream = "127.0.0.1:8600"
        [[routes]]
        name = "video"
        path_prefix = "/video"
        upstream = "127.0.0.1:8700"
        [[routes]]
        name = "public"
        path_prefix = "/public"
        upstream = "127.0.0.1:8600"
        auth = "none"
    "#;
    let config = Config::parse(text, Path::new("bench.toml")).expect("bench config");
    RouteTable::new(&config)
}

fn route_benches(c: &mut Criterion) {
    let table = route_table();
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    g.bench_function("check_path+find", |b| {
        b.iter(|| {
            let p = black_box("/iot/hives/hive-7/telemetry");
            check_path(p).is_ok() && table.find(p).is_some()
        })
    });
    g.finish();
}

fn header_benches(c: &mut Criterion) {
    let table = route_table();
    let route = table.find("/iot/hives/7").expect("telemetry route").clone();
    let index = Index::new();
    let t = Token::generate();
    index.apply(&row(42, t.digest()));
    let entry = index.get(&t.digest()).unwrap().entry;

    // A typical device request as it arrives on the wire.
    let device = format!(
        "POST /iot/hives/hive-7/telemetry HTTP/1.1\r\nHost: gateway.example:8080\r\nUser-Agent: hive-scale/1.4\r\n\
         Accept: */*\r\nContent-Type: application/json\r\nContent-Length: 61\r\nAuthorization: Bearer {}\r\n\r\n",
        t.as_str()
    );
    // The same with spoofed identity headers and a client X-Forwarded-For, all to be removed.
    let spoofed = device.replace(
        "\r\n\r\n",
        "\r\nX-User-Id: mallory\r\nx_user_id: mallory\r\nX-Token-Id: 1\r\nX-Forwarded-For: 10.9.8.7\r\n\r\n",
    );

    let mut g = c.benchmark_group("request_head");
    g.throughput(Throughput::Elements(1));
    let mut head = RequestHead::default();
    g.bench_function("parse", |b| {
        b.iter(|| head.parse(black_box(device.as_bytes())).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("header_rewrite");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(2048);
    for (name, raw) in [("device", &device), ("spoofed", &spoofed)] {
        let mut head = RequestHead::default();
        assert!(head.parse(raw.as_bytes()).unwrap());
        let (path, query) = origin_form(head.target.get(raw.as_bytes())).expect("origin form");
        let forward = Forward {
            route: &route,
            principal: Some(entry.clone()),
            digest: None,
            outcome: Outcome::Ok,
            rate_limit: None,
            rewrite: Rewrite {
                path,
                query,
                trusted_peer: false,
                https: false,
                at: 0,
            },
            in_flight: None,
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                write_upstream_head(
                    &mut out,
                    &head,
                    raw.as_bytes(),
                    &forward,
                    ("127.0.0.1:8600", "127.0.0.1"),
                    HeadExtras {
                        request_id: b"4bf92f3577b34da6a3ce929d0e0e4736",
                        upgrade: false,
                    },
                );
                out.len()
            })
        });
    }
    g.finish();
}

fn limit_benches(c: &mut Criterion) {
    let text = r#"
        [gateway]
        listen = "127.0.0.1:0"
        [store]
        path = "unused.db"
        [[routes]]
        name = "plain"
        path_prefix = "/plain"
        upstream = "127.0.0.1:8600"
        [[routes]]
        name = "limited"
        path_prefix = "/limited"
        upstream = "127.0.0.1:8600"
        rate_limit = "1000000000/s"
        [[routes]]
        name = "user-limited"
        path_prefix = "/user-limited"
        upstream = "127.0.0.1:8600"
        rate_limit = "1000000000/s"
        user_rate_limit = "1000000000/s"
        [[routes]]
        name = "headers"
        path_prefix = "/headers"
        upstream = "127.0.0.1:8600"
        rate_limit = "1000000000/s"
        rate_limit_headers = true
    "#;
    let table =
        RouteTable::new(&Config::parse(text, Path::new("bench.toml")).expect("bench config"));
    let index = Arc::new(Index::new());
    let mut plain = Vec::new();
    let mut own = Vec::new();
    for i in 0..REAL {
        let t = Token::generate();
        index.apply(&row(i as i64 + 1, t.digest()));
        plain.push(format!("Bearer {}", t.as_str()));
        let t = Token::generate();
        let mut r = row((REAL + i) as i64 + 1, t.digest());
        r.rate_limit = Some(Rate::parse("1000000000/s").unwrap());
        r.quota = Some(Quota::parse("1000000000000/month").unwrap());
        index.apply(&r);
        own.push(format!("Bearer {}", t.as_str()));
    }
    let gate = Gate {
        index,
        throttle: Throttle::new(20, 60, 1000),
        max_in_flight_per_token: u32::MAX,
    };
    let request = |target: &'static str, auth: &'static str| Request {
        method: b"GET",
        target: target.as_bytes(),
        host: Some(b"gw"),
        authorization: Some(auth.as_bytes()),
        authorizations: 1,
        content_length: None,
        peer: Some("192.0.2.1".parse().unwrap()),
        tls: None,
    };
    let plain: Vec<&'static str> = plain.into_iter().map(|s| &*s.leak()).collect();
    let own: Vec<&'static str> = own.into_iter().map(|s| &*s.leak()).collect();
    let now = tokengate::clock::now();

    let mut g = c.benchmark_group("limits");
    g.throughput(Throughput::Elements(1));
    for (name, target, tokens) in [
        ("decide/no_limits", "/plain/hives/7", &plain),
        ("decide/route_rate", "/limited/hives/7", &plain),
        (
            "decide/route_rate+user_rate",
            "/user-limited/hives/7",
            &plain,
        ),
        ("decide/route_rate+headers", "/headers/hives/7", &plain),
        ("decide/own_rate+quota", "/plain/hives/7", &own),
    ] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                let req = request(target, tokens[i]);
                matches!(
                    gate.decide(&table, black_box(&req), now),
                    Verdict::Forward(_)
                )
            })
        });
    }
    let gcra = Gcra::new(Rate::parse("1000000000/s").unwrap(), 1000);
    let tat = AtomicU64::new(0);
    g.bench_function("gcra_take", |b| {
        b.iter(|| {
            gcra.take(black_box(&tat), tokengate::clock::mono_nanos())
                .is_ok()
        })
    });
    let quota = QuotaCount::new(Quota::parse("1000000000000/month").unwrap(), None, 0);
    g.bench_function("quota_take", |b| {
        b.iter(|| quota.take(black_box(now as i64)).is_ok())
    });
    g.finish();
}

fn access_log_benches(c: &mut Criterion) {
    use tokengate::config::AccessLogFormat;
    use tokengate::telemetry::access_log::{format_record, Record};
    let mut g = c.benchmark_group("access_log");
    g.throughput(Throughput::Elements(1));
    let record = Record {
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
        client: Some("192.0.2.44"),
        method: "POST",
        path: b"/bearer/hives/7/telemetry",
        route: Some("telemetry"),
        status: 200,
        auth: "ok",
        duration: Duration::from_micros(412),
        bytes_in: 180,
        bytes_out: 3,
        token_id: Some(48_213),
        user: Some(b"user417"),
        request_id: "4bf92f3577b34da6a3ce929d0e0e4736",
        tls: Some("1.3r"),
    };
    let mut line = Vec::with_capacity(512);
    for (name, format) in [
        ("format_plain", AccessLogFormat::Plain),
        ("format_json", AccessLogFormat::Json),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                line.clear();
                format_record(black_box(&record), format, &mut line);
                line.len()
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    // Short runs: the whole bench finishes in about 1.5 minutes (see BENCHMARKS.md for the numbers).
    Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40)
}

criterion_group! {
    name = benches;
    config = config();
    targets = token_benches, index_and_decision_benches, route_benches, limit_benches, header_benches,
        access_log_benches
}
criterion_main!(benches);
