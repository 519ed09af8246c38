//! Many gateways on one PostgreSQL store, with real `tokengate serve` processes and a real server (the
//! cluster `.ci/postgres.sh` starts; each test has a database of its own): changes made through any node
//! reach every other node fast; usage adds up across nodes; a store outage (a proxy in front of the server
//! is cut) keeps every node serving from its index while admin writes answer 503, and when the store comes
//! back the nodes catch up and flush what they held, exactly once; a node that starts while the store is
//! down refuses to serve an empty index; the password never shows. Same host on SQLite: a CLI change is
//! honoured right after the CLI returns (inotify).

mod common;

use common::pg::{admin_url, fresh_database, password_of, server_addr, CutProxy, TestDb};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A PostgreSQL database for this test (None: no test cluster here, skipped).
fn database() -> Option<TestDb> {
    Some(fresh_database(&admin_url()?))
}

/// `n` gateways on the store at `url`, each with route `/api` to `up`; the first token (an admin one,
/// `ops`) is created before they start.
fn fleet(
    n: usize,
    url: &str,
    up: &Upstream,
    tweak: impl Fn(GatewayBuilder) -> GatewayBuilder,
) -> (Vec<Gateway>, String) {
    let mut nodes: Vec<Gateway> = (0..n)
        .map(|_| {
            tweak(GatewayBuilder::new().store_url(url))
                .gateway("sync_interval", "\"100ms\"")
                .route("api", "/api", up.addr())
                .build()
        })
        .collect();
    let (_, admin) = nodes[0].create_token_with("ops", "console", &["--scope", "admin"]);
    for node in &mut nodes {
        node.start();
    }
    (nodes, admin)
}

fn admin_call(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> RawResponse {
    let auth = bearer(token);
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let mut headers = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    raw_http(
        gw.admin_addr(),
        &build_request(method, path, &headers, text.as_bytes()),
    )
}

/// Time until `gw` answers `want` for `token` on `/api/...`, polling as fast as it can.
fn time_until(gw: &Gateway, token: &str, want: u16, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if gw.get_with_token("/api/poll", token).status == want {
            return Some(start.elapsed());
        }
    }
    None
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn a_change_through_any_node_reaches_every_other_node_within_a_second() {
    let Some(db) = database() else { return };
    let up = Upstream::start("api");
    let (nodes, admin) = fleet(3, &db, &up, |b| b);
    let mut delays = Vec::new();
    for round in 0..12 {
        let writer = &nodes[round % 3];
        let created = admin_call(
            writer,
            "POST",
            "/api/tokens",
            &admin,
            Some(&json!({"user": format!("u{round}"), "label": "fleet"})),
        );
        assert_eq!(created.status, 201, "{created}");
        let (id, token) = (
            created.json()["id"].as_i64().unwrap(),
            created.json()["token"].as_str().unwrap().to_owned(),
        );
        // The writing node honours it before its API answered.
        assert_eq!(writer.get_with_token("/api/x", &token).status, 200);
        for (i, other) in nodes.iter().enumerate().filter(|(i, _)| *i != round % 3) {
            let d = time_until(other, &token, 200, Duration::from_secs(5)).unwrap_or_else(|| {
                panic!("node {i} never accepted a token made on node {}", round % 3)
            });
            delays.push(d);
        }
        let revoked = admin_call(
            &nodes[(round + 1) % 3],
            "DELETE",
            &format!("/api/tokens/{id}"),
            &admin,
            None,
        );
        assert_eq!(revoked.status, 200, "{revoked}");
        for (i, other) in nodes.iter().enumerate() {
            let d = time_until(other, &token, 401, Duration::from_secs(5))
                .unwrap_or_else(|| panic!("node {i} kept accepting a revoked token"));
            delays.push(d);
        }
    }
    let (p50, p99, max) = (
        percentile(delays.clone(), 0.5),
        percentile(delays.clone(), 0.99),
        *delays.iter().max().unwrap(),
    );
    eprintln!(
        "fleet propagation over {} observations: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        delays.len()
    );
    assert!(
        max < Duration::from_secs(1),
        "a change took {max:?} to reach a node (bound 1 s)"
    );
    // Nodes whose admin API holds a PostgreSQL connection shut down cleanly.
    for mut n in nodes {
        n.sigterm();
        let status = n.wait_exit(Duration::from_secs(10));
        assert!(
            status.success() && !n.logs().contains("panicked"),
            "{status}\n{}",
            n.logs()
        );
    }
}

#[test]
fn usage_adds_up_across_nodes_and_a_killed_node_loses_only_its_own_unflushed_counts() {
    let Some(db) = database() else { return };
    let up = Upstream::start("api");
    let mut a = GatewayBuilder::new()
        .store_url(&db)
        .gateway("usage_flush_interval", "\"100ms\"")
        .route("api", "/api", up.addr())
        .build();
    let mut b = GatewayBuilder::new()
        .store_url(&db)
        .gateway("usage_flush_interval", "\"1h\"")
        .route("api", "/api", up.addr())
        .build();
    let (id, token) = a.create_token("alice", "shared");
    a.start();
    b.start();
    for _ in 0..30 {
        assert_eq!(a.get_with_token("/api/a", &token).status, 200);
    }
    for _ in 0..20 {
        assert_eq!(b.get_with_token("/api/b", &token).status, 200);
    }
    // B never flushed (1 h interval): killed, its 20 uses are lost; A's 30 are all there.
    b.kill9();
    b.wait_exit(Duration::from_secs(5));
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || a.token_entry(id)["use_count"] == 30
    ));
    // Both restarted, both graceful: every count adds up, none overwritten.
    b.start();
    for _ in 0..7 {
        assert_eq!(b.get_with_token("/api/b", &token).status, 200);
        assert_eq!(a.get_with_token("/api/a", &token).status, 200);
    }
    for g in [&mut a, &mut b] {
        g.sigterm();
        let status = g.wait_exit(Duration::from_secs(10));
        assert!(
            status.success(),
            "a clean exit after SIGTERM: {status}\n{}",
            g.logs()
        );
        assert!(!g.logs().contains("panicked"), "{}", g.logs());
    }
    let entry = a.token_entry(id);
    assert_eq!(entry["use_count"], 44, "{entry}");
    assert!(entry["last_used_at"].is_string());
}

#[test]
fn a_store_outage_keeps_nodes_serving_refuses_writes_and_recovers_exactly() {
    let Some(db) = database() else { return };
    let up = Upstream::start("api");
    let proxy = CutProxy::start(server_addr(&db));
    let via_proxy = proxy.url(&db);
    let (nodes, admin) = fleet(2, &via_proxy, &up, |b| {
        b.gateway("usage_flush_interval", "\"200ms\"")
            .env("RUST_LOG", "info")
    });
    let (id, token) = nodes[0].create_token("alice", "outage");
    for n in &nodes {
        n.wait_ok("/api/warm", &token);
    }
    // One accepted warm-up request per node, flushed before the outage.
    let counted = || nodes[0].token_entry(id)["use_count"].as_i64().unwrap();
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || counted() == 2
    ));

    proxy.cut();
    for n in &nodes {
        n.wait_health("degraded", Duration::from_secs(10));
        assert_eq!(
            metric_sum(&n.metrics(), "tokengate_store_healthy", &[]),
            0.0
        );
    }
    // Every node keeps serving the tokens it knows, and counts their uses.
    for n in &nodes {
        for _ in 0..10 {
            assert_eq!(n.get_with_token("/api/during", &token).status, 200);
        }
    }
    // Admin writes answer 503 and change nothing.
    let r = admin_call(
        &nodes[1],
        "POST",
        "/api/tokens",
        &admin,
        Some(&json!({"user": "bob", "label": "during"})),
    );
    assert_eq!(r.status, 503, "{r}");
    assert_eq!(r.json_error(), "store_unavailable");
    let r = admin_call(
        &nodes[1],
        "DELETE",
        &format!("/api/tokens/{id}"),
        &admin,
        None,
    );
    assert_eq!(r.status, 503, "{r}");
    assert_eq!(
        nodes[1].get_with_token("/api/still", &token).status,
        200,
        "the failed revoke changed nothing"
    );
    // A change made meanwhile straight on the server (another region's node, the CLI there).
    let direct = GatewayBuilder::new()
        .store_url(&db)
        .route("api", "/api", up.addr())
        .build();
    let (_, made_during) = direct.create_token("carol", "made during the outage");
    std::thread::sleep(Duration::from_millis(1200));
    for n in &nodes {
        let logs = n.logs();
        let sync_lines = logs
            .lines()
            .filter(|l| l.contains("sync:") && l.contains("serving the last good index"))
            .count();
        assert!(
            (1..=3).contains(&sync_lines),
            "one line per state change, not per attempt: {sync_lines}\n{logs}"
        );
        assert_eq!(
            n.get_with_token("/api/x", &made_during).status,
            401,
            "not known yet"
        );
    }

    proxy.restore();
    for n in &nodes {
        n.wait_health("ok", Duration::from_secs(15));
        n.wait_ok("/api/caught-up", &made_during);
        assert!(n.logs().contains("recovered"), "{}", n.logs());
    }
    // Held usage is flushed exactly once: the 2 warm-ups, 10 uses per node during the outage, and the
    // request after the refused revoke.
    let expected = 2 + 2 * 10 + 1;
    assert!(poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || counted() >= expected
    ));
    for n in &nodes {
        n.sigterm();
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(counted(), expected, "every use counted once");
    // The password of the URL never shows: not in logs, /healthz (while degraded) or metrics.
    let pw = password_of(&db);
    for n in &nodes {
        assert!(!n.logs().contains(&pw), "password in the logs");
    }
}

#[test]
fn a_node_that_starts_while_the_store_is_down_exits_clearly() {
    let Some(db) = database() else { return };
    let up = Upstream::start("api");
    let proxy = CutProxy::start(server_addr(&db));
    proxy.cut();
    let mut gw = GatewayBuilder::new()
        .store_url(&proxy.url(&db))
        .route("api", "/api", up.addr())
        .build();
    gw.spawn();
    let status = gw.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let logs = gw.logs();
    assert!(
        logs.contains("cannot open the token store") && logs.contains("unavailable"),
        "{logs}"
    );
    assert!(logs.contains("postgres://tokengate:***@"), "{logs}");
    assert!(!logs.contains(&password_of(&db)), "{logs}");
}

#[test]
fn health_metrics_and_errors_never_show_the_store_password() {
    let Some(db) = database() else { return };
    let up = Upstream::start("api");
    let proxy = CutProxy::start(server_addr(&db));
    let (nodes, admin) = fleet(1, &proxy.url(&db), &up, |b| b.env("RUST_LOG", "debug"));
    let n = &nodes[0];
    proxy.cut();
    n.wait_health("degraded", Duration::from_secs(10));
    let pw = password_of(&db);
    let health = n.admin_get("/healthz").text();
    assert!(
        health.contains("unavailable") && !health.contains(&pw),
        "{health}"
    );
    assert!(!n.metrics().contains(&pw));
    let r = admin_call(n, "GET", "/api/tokens", &admin, None);
    assert_eq!(r.status, 503, "{r}");
    assert!(!r.text().contains(&pw));
    let out = n.cli(&["token", "list"]);
    assert!(!out.status.success());
    assert!(!describe(&out).contains(&pw), "{}", describe(&out));
    proxy.restore();
    n.wait_health("ok", Duration::from_secs(15));
    assert!(!n.logs().contains(&pw));
}

#[test]
fn tls_to_postgres_and_the_cli_on_the_same_store() {
    let Some(db) = database() else { return };
    if std::env::var("TOKENGATE_TEST_PG_CA").is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the cluster with --tls"
        );
        return;
    }
    let ca = std::env::var("TOKENGATE_TEST_PG_CA").unwrap();
    let url = format!("{}?sslmode=verify-full&sslrootcert={ca}", db.url());
    let up = Upstream::start("api");
    let mut gw = GatewayBuilder::new()
        .store_url(&url)
        .route("api", "/api", up.addr())
        .build();
    let (id, token) = gw.create_token("alice", "tls");
    gw.start();
    assert_eq!(gw.get_with_token("/api/x", &token).status, 200);
    gw.revoke(id);
    gw.wait_status("/api/x", &token, 401);
    let out = gw.cli(&["store", "migrate"]);
    assert_success(&out, &["store", "migrate"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema version"));
}

#[test]
fn store_copy_moves_a_running_sqlite_gateway_to_postgres() {
    let Some(db) = database() else { return };
    let up = Upstream::start("api");
    let mut old = GatewayBuilder::new()
        .route("api", "/api", up.addr())
        .build();
    let (id, token) = old.create_token_with("alice", "move me", &["--scope", "telemetry:write"]);
    old.start();
    assert_eq!(old.get_with_token("/api/x", &token).status, 200);
    old.sigterm();
    old.wait_exit(Duration::from_secs(10));
    let copy = old.cli(&["store", "copy", "--to", &db]);
    assert_success(&copy, &["store", "copy"]);
    assert!(!describe(&copy).contains(&password_of(&db)));
    let again = old.cli(&["store", "copy", "--to", &db]);
    assert_success(&again, &["store", "copy (again)"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
    // New tokens in the target: a second copy is refused without --force.
    let mut new = GatewayBuilder::new()
        .store_url(&db)
        .route("api", "/api", up.addr())
        .build();
    new.create_token("bob", "only in postgres");
    let refused = old.cli(&["store", "copy", "--to", &db]);
    assert!(!refused.status.success());
    assert!(
        describe(&refused).contains("--force"),
        "{}",
        describe(&refused)
    );
    new.start();
    assert_eq!(
        new.get_with_token("/api/x", &token).status,
        200,
        "the copied token works"
    );
    let entry = new.token_entry(id);
    assert_eq!(entry["use_count"], 1);
    assert_eq!(entry["scopes"], json!(["telemetry:write"]));
    let shown = new.cli_json(&["token", "show", &id.to_string(), "--json"]);
    assert_eq!(shown["events"][0]["event"], "created");
}

#[test]
fn same_host_cli_changes_are_honoured_right_after_the_cli_returns() {
    let up = Upstream::start("api");
    // A long poll interval: only the change notification can make this fast.
    let mut gw = GatewayBuilder::new()
        .gateway("sync_interval", "\"5s\"")
        .route("api", "/api", up.addr())
        .build();
    gw.start();
    let mut first_try = 0;
    let mut delays = Vec::new();
    for _ in 0..20 {
        let (id, token) = gw.create_token("alice", "instant");
        if gw.get_with_token("/api/x", &token).status == 200 {
            first_try += 1;
        }
        delays.push(time_until(&gw, &token, 200, Duration::from_secs(3)).expect("never accepted"));
        gw.revoke(id);
        delays.push(time_until(&gw, &token, 401, Duration::from_secs(3)).expect("never refused"));
    }
    eprintln!(
        "same host: {first_try}/20 accepted on the first request after the CLI returned; p99 {:?}",
        percentile(delays.clone(), 0.99)
    );
    let max = *delays.iter().max().unwrap();
    assert!(
        max < Duration::from_secs(1),
        "a CLI change took {max:?} with a 5 s poll: the notification did not work"
    );
}
