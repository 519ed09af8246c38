//! Upstream pools against real server processes: `upstreams = [...]` with round robin, least requests
//! and user hash; servers killed with SIGKILL mid-load and started again on the same port; active
//! checks against a server whose `/healthz` turns 5xx; every server down; what may be sent twice; and a
//! reload that adds and removes servers.
//!
//! The servers are this test binary run again as a child process (`upstream_process`, see [`Server`]):
//! a small HTTP/1.1 server on a fixed port that logs every request to a file and takes its behaviour
//! (the status of `/healthz`, a delay, hanging up without an answer) from files the test writes.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "TOKENGATE_TEST_POOL_SERVER";

/// Not a test: the entry point of the server processes. Without its environment variable (a normal
/// test run) it returns at once.
#[test]
fn upstream_process() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let mut parts = spec.splitn(3, '|');
        let (addr, name, dir) = (
            parts.next().unwrap().parse().unwrap(),
            parts.next().unwrap().to_owned(),
            PathBuf::from(parts.next().unwrap()),
        );
        serve(addr, &name, &dir);
    }
}

fn serve(addr: SocketAddr, name: &str, dir: &Path) -> ! {
    // The port was this server's before it was killed: wait for the kernel to let it go.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{name}: bind {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{name}: bind {addr}: {e}"),
        }
    };
    for stream in listener.incoming().flatten() {
        let (name, dir) = (name.to_owned(), dir.to_owned());
        std::thread::spawn(move || {
            let _ = handle(stream, &name, &dir);
        });
    }
    unreachable!("the listener never ends")
}

/// Serves one connection: keep-alive, `Content-Length` bodies.
fn handle(stream: TcpStream, name: &str, dir: &Path) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?
        .write_all(b"CONN\n")?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or("").to_owned(),
            words.next().unwrap_or("").to_owned(),
        );
        let (mut length, mut auth, mut user, mut agent, mut close) =
            (0usize, false, None, None, false);
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
            match k.as_str() {
                "content-length" => length = v.parse().unwrap_or(0),
                "authorization" => auth = true,
                "x-user-id" => user = Some(v),
                "user-agent" => agent = Some(v),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let control = |what: &str| fs::read_to_string(dir.join(format!("{name}.{what}"))).ok();
        let record = |kind: &str| {
            let line = format!(
                "{kind} {method} {path} auth={auth} user={} agent={}\n",
                user.as_deref().unwrap_or("-"),
                agent.as_deref().unwrap_or("-").replace(' ', "_")
            );
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{name}.log")))
                .unwrap();
            f.write_all(line.as_bytes()).unwrap();
        };
        let status: u16 = if path == "/healthz" {
            record("CHECK");
            control("health")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(200)
        } else {
            record("REQ");
            if control("mode").is_some_and(|m| m.trim() == "hangup") {
                return Ok(()); // read the request, then close without a word
            }
            if let Some(ms) = control("delay").and_then(|s| s.trim().parse().ok()) {
                std::thread::sleep(Duration::from_millis(ms));
            }
            200
        };
        let body = format!(
            "{{\"server\":\"{name}\",\"path\":\"{path}\",\"user\":\"{}\"}}",
            user.as_deref().unwrap_or("")
        );
        // One write: a response in pieces would wait for delayed ACKs.
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        out.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

/// A server process of the pool, on a port it keeps across restarts.
struct Server {
    name: String,
    addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start(name: &str, dir: &Path) -> Server {
        let mut s = Server {
            name: name.to_owned(),
            addr: refused_addr(),
            dir: dir.to_owned(),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "upstream_process",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(
                CHILD_ENV,
                format!("{}|{}|{}", self.addr, self.name, self.dir.display()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a server process");
        self.child = Some(child);
        let addr = self.addr;
        assert!(
            poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
                TcpStream::connect(addr).is_ok()
            }),
            "server {} did not start on {addr}",
            self.name
        );
    }

    /// SIGKILL: the kernel resets its connections; the port refuses from now on.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn lines(&self, kind: &str) -> Vec<String> {
        fs::read_to_string(self.dir.join(format!("{}.log", self.name)))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(kind))
            .map(str::to_owned)
            .collect()
    }

    /// Requests (not health checks) it received.
    fn requests(&self) -> usize {
        self.lines("REQ ").len()
    }

    fn set(&self, what: &str, value: &str) {
        fs::write(self.dir.join(format!("{}.{what}", self.name)), value).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A route block for `servers` with more keys (raw TOML lines).
fn pool_route(name: &str, prefix: &str, servers: &[&Server], more: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    format!(
        "name = \"{name}\"\npath_prefix = \"{prefix}\"\nupstreams = [{}]\n{more}",
        list.join(", ")
    )
}

/// Which server answered (the `server` field of its JSON).
fn answered_by(r: &RawResponse) -> String {
    r.json()["server"].as_str().unwrap_or("?").to_owned()
}

/// GET `target` on a keep-alive connection, reconnecting when the gateway closed it.
struct Client {
    gw_conn: Option<Conn>,
    request: Vec<u8>,
}

impl Client {
    fn new(target: &str, token: &str) -> Client {
        let auth = bearer(token);
        Client {
            gw_conn: None,
            request: keepalive_request("GET", target, &[("Authorization", auth.as_str())], b""),
        }
    }

    fn get(&mut self, gw: &Gateway) -> Result<RawResponse, String> {
        let conn = self.gw_conn.get_or_insert_with(|| gw.connect());
        match conn.roundtrip(&self.request) {
            Ok(r) => {
                if r.header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                {
                    self.gw_conn = None;
                }
                Ok(r)
            }
            Err(e) => {
                self.gw_conn = None;
                Err(e.to_string())
            }
        }
    }
}

fn admin_token(gw: &Gateway) -> String {
    gw.create_token_with("ops", "console", &["--scope", "admin"])
        .1
}

fn api_routes(gw: &Gateway, admin: &str) -> Value {
    let auth = bearer(admin);
    let r = raw_http(
        gw.admin_addr(),
        &build_request(
            "GET",
            "/api/routes",
            &[("Authorization", auth.as_str())],
            b"",
        ),
    );
    assert_eq!(r.status, 200, "{r}");
    r.json()
}

/// The state of `server` on `route` in `/api/routes`.
fn state(gw: &Gateway, admin: &str, route: &str, server: &Server) -> String {
    let routes = api_routes(gw, admin);
    let r = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == route)
        .unwrap_or_else(|| panic!("no route {route} in {routes}"));
    let s = r["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"] == server.addr.to_string())
        .unwrap_or_else(|| panic!("no server {} in {r}", server.addr));
    s["state"].as_str().unwrap().to_owned()
}

/// Polls until `server` is in `want` state; returns how long it took.
fn wait_state(
    gw: &Gateway,
    admin: &str,
    server: &Server,
    want: &str,
    within: Duration,
) -> Duration {
    let t = Instant::now();
    assert!(
        poll_until(within, Duration::from_millis(10), || state(
            gw, admin, "api", server
        ) == want),
        "{} not {want} within {within:?}",
        server.name
    );
    t.elapsed()
}

#[test]
fn round_robin_spreads_requests_evenly_and_one_upstream_is_a_pool_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|n| Server::start(n, dir.path()))
        .collect();
    let refs: Vec<&Server> = servers.iter().collect();
    let gw = GatewayBuilder::new()
        .route_toml(&pool_route("api", "/api", &refs, ""))
        .route("single", "/single", servers[0].addr)
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/api/x", &token);
    let before: Vec<usize> = servers.iter().map(Server::requests).collect();
    // 1,000 requests from 4 keep-alive connections at once.
    let done = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (gw, token, done) = (&gw, &token, done.clone());
            s.spawn(move || {
                let mut c = Client::new("/api/readings", token);
                while done.fetch_add(1, Ordering::SeqCst) < 1000 {
                    let r = c.get(gw).unwrap();
                    assert_eq!(r.status, 200, "{r}");
                }
            });
        }
    });
    let counts: Vec<usize> = servers
        .iter()
        .zip(&before)
        .map(|(s, b)| s.requests() - b)
        .collect();
    eprintln!("1000 requests over 3 servers: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 1000);
    for c in &counts {
        assert!(
            (317..=350).contains(c),
            "not within ±5 % of 333: {counts:?}"
        );
    }
    // `upstream = "..."` keeps working: everything on its one server.
    let before = servers[0].requests();
    for _ in 0..10 {
        assert_eq!(answered_by(&gw.get_with_token("/single/x", &token)), "a");
    }
    assert_eq!(servers[0].requests() - before, 10);
}

#[test]
fn a_server_killed_under_load_costs_no_request_and_comes_back_after_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start("a", dir.path());
    let mut b = Server::start("b", dir.path());
    let gw = GatewayBuilder::new()
        .route_toml(&pool_route("api", "/api", &[&a, &b], ""))
        .start();
    let (_, token) = gw.create_token("alice", "camera");
    gw.wait_ok("/api/x", &token);

    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (gw, token, stop, sent, failures) =
                (&gw, &token, stop.clone(), sent.clone(), failures.clone());
            s.spawn(move || {
                let mut c = Client::new("/api/readings", token);
                while !stop.load(Ordering::SeqCst) {
                    match c.get(gw) {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failures.lock().unwrap().push(format!("{r}")),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        assert!(poll_until(
            Duration::from_secs(10),
            Duration::from_millis(5),
            || { b.requests() >= 100 }
        ));
        b.kill();
        let at_kill = sent.load(Ordering::SeqCst);
        let b_at_kill = b.requests();
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::SeqCst);
        let after = sent.load(Ordering::SeqCst) - at_kill;
        eprintln!("{after} requests after the kill; b had {b_at_kill}");
        assert!(after > 100, "the load stalled after the kill: {after}");
    });
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let metrics = gw.metrics();
    let b_label = format!("server=\"{}\"", b.addr);
    assert_eq!(
        metric_sum(&metrics, "tokengate_upstream_server_up", &[&b_label]),
        0.0,
        "b is out of rotation"
    );
    assert!(
        metric_sum(
            &metrics,
            "tokengate_upstream_server_failures_total",
            &[&b_label]
        ) >= 1.0
    );

    // Back on the same port: without active checks one request per interval (2 s) tries it again.
    let b_before = b.requests();
    b.spawn();
    let t = Instant::now();
    let mut c = Client::new("/api/readings", &token);
    assert!(
        poll_until(Duration::from_secs(6), Duration::from_millis(20), || {
            assert_eq!(c.get(&gw).unwrap().status, 200);
            b.requests() > b_before
        }),
        "b never got requests again"
    );
    eprintln!("b back in rotation {:?} after its restart", t.elapsed());
    for _ in 0..20 {
        assert_eq!(c.get(&gw).unwrap().status, 200);
    }
    assert!(b.requests() >= b_before + 5, "b is not in rotation again");
}

#[test]
fn active_checks_take_out_a_failing_server_and_bring_it_back_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start("a", dir.path());
    let b = Server::start("b", dir.path());
    let check =
        "[routes.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n\
                 unhealthy_after = 2\nhealthy_after = 2\n";
    let gw = GatewayBuilder::new()
        .route_toml(&pool_route("api", "/api", &[&a, &b], check))
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    let admin = admin_token(&gw);
    gw.wait_ok("/api/x", &token);
    assert_eq!(state(&gw, &admin, "api", &b), "up");

    b.set("health", "503");
    let out = wait_state(&gw, &admin, &b, "down", Duration::from_secs(3));
    eprintln!("b out of rotation {out:?} after /healthz turned 503 (bound: 2 × 200 ms + 100 ms + one tick)");
    assert!(out <= Duration::from_millis(1500), "{out:?}");
    let before = b.requests();
    let mut c = Client::new("/api/readings", &token);
    for _ in 0..40 {
        assert_eq!(answered_by(&c.get(&gw).unwrap()), "a");
    }
    assert_eq!(b.requests(), before, "b got requests while out of rotation");
    let metrics = gw.metrics();
    let b_label = format!("server=\"{}\"", b.addr);
    assert!(
        metric_sum(
            &metrics,
            "tokengate_upstream_health_checks_total",
            &[&b_label, "result=\"failed\""]
        ) >= 2.0
    );
    assert_eq!(
        gw.health()["status"],
        "ok",
        "a is still up: the route is healthy"
    );
    let routes = api_routes(&gw, &admin);
    assert_eq!(routes[0]["health_check"]["path"], "/healthz", "{routes}");
    assert_eq!(routes[0]["balance"], "round_robin");

    b.set("health", "200");
    let back = wait_state(&gw, &admin, &b, "up", Duration::from_secs(3));
    eprintln!(
        "b back in rotation {back:?} after /healthz turned 200 (bound: 2 × 200 ms + one tick)"
    );
    assert!(back <= Duration::from_millis(1200), "{back:?}");
    let seen: Vec<String> = (0..10).map(|_| answered_by(&c.get(&gw).unwrap())).collect();
    assert!(seen.iter().any(|s| s == "b"), "{seen:?}");

    // The checks carried no credential and no identity, and said who they are.
    let checks = b.lines("CHECK ");
    assert!(checks.len() >= 4, "{checks:?}");
    for line in &checks {
        assert!(
            line.contains("auth=false user=- agent=tokengate-health-check"),
            "{line}"
        );
    }
}

#[test]
fn a_tcp_check_notices_a_dead_server_and_its_return() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start("a", dir.path());
    let mut b = Server::start("b", dir.path());
    let check = "[routes.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n";
    let gw = GatewayBuilder::new()
        .route_toml(&pool_route("api", "/api", &[&a, &b], check))
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    let admin = admin_token(&gw);
    gw.wait_ok("/api/x", &token);
    b.kill();
    let out = wait_state(&gw, &admin, &b, "down", Duration::from_secs(3));
    b.spawn();
    let back = wait_state(&gw, &admin, &b, "up", Duration::from_secs(3));
    eprintln!("TCP check: b out {out:?} after its kill, back {back:?} after its restart");
    assert!(b.lines("CHECK ").is_empty(), "a TCP check sends no request");
}

#[test]
fn with_every_server_down_the_answer_is_at_once_and_the_route_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Server::start("a", dir.path());
    let mut b = Server::start("b", dir.path());
    let check =
        "[routes.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nhealthy_after = 1\n";
    let gw = GatewayBuilder::new()
        .route_toml(&pool_route("api", "/api", &[&a, &b], check))
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/api/x", &token);
    a.kill();
    b.kill();
    assert!(poll_until(
        Duration::from_secs(3),
        Duration::from_millis(10),
        || { gw.health()["routes_without_healthy_upstream"] == serde_json::json!(["api"]) }
    ));
    assert_eq!(gw.health()["status"], "degraded");
    let mut c = Client::new("/api/readings", &token);
    for _ in 0..20 {
        let t = Instant::now();
        let r = c.get(&gw).unwrap();
        assert_eq!(r.status, 502, "{r}");
        assert_eq!(r.json_error(), "no_healthy_upstream", "{r}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "not at once: {:?}",
            t.elapsed()
        );
    }
    a.spawn();
    assert!(
        poll_until(Duration::from_secs(3), Duration::from_millis(20), || {
            c.get(&gw).unwrap().status == 200
        }),
        "the route did not recover"
    );
    gw.wait_health("ok", Duration::from_secs(3));
}

#[test]
fn least_requests_sends_fewer_requests_to_a_slow_server() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Server::start("slow", dir.path());
    slow.set("delay", "100");
    let fast = Server::start("fast", dir.path());
    let gw = GatewayBuilder::new()
        .route_toml(&pool_route(
            "api",
            "/api",
            &[&slow, &fast],
            "balance = \"least_requests\"\n",
        ))
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/api/x", &token);
    let (s0, f0) = (slow.requests(), fast.requests());
    let deadline = Instant::now() + Duration::from_millis(1500);
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (gw, token) = (&gw, &token);
            s.spawn(move || {
                let mut c = Client::new("/api/readings", token);
                while Instant::now() < deadline {
                    assert_eq!(c.get(gw).unwrap().status, 200);
                }
            });
        }
    });
    let (s, f) = (slow.requests() - s0, fast.requests() - f0);
    eprintln!("least_requests over 1.5 s with 8 clients: slow {s}, fast {f}");
    assert!(s >= 1, "the slow server is still in rotation");
    assert!(f > 5 * s, "slow {s}, fast {f}");
}

#[test]
fn user_hash_keeps_each_user_on_one_server_and_moves_only_the_users_of_a_server_that_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|n| Server::start(n, dir.path()))
        .collect();
    let route = {
        let refs: Vec<&Server> = servers.iter().collect();
        pool_route("api", "/api", &refs, "balance = \"user_hash\"\n")
    };
    let gw = GatewayBuilder::new().route_toml(&route).start();
    let tokens: Vec<(String, String)> = (0..24)
        .map(|i| {
            let user = format!("user{i}");
            let (_, t) = gw.create_token(&user, "scale");
            (user, t)
        })
        .collect();
    gw.wait_ok("/api/x", &tokens[23].1);
    let home = |tokens: &[(String, String)]| -> Vec<String> {
        tokens
            .iter()
            .map(|(user, t)| {
                let seen: Vec<String> = (0..4)
                    .map(|_| {
                        let r = gw.get_with_token("/api/x", t);
                        assert_eq!(r.json()["user"], *user);
                        answered_by(&r)
                    })
                    .collect();
                assert!(
                    seen.iter().all(|s| *s == seen[0]),
                    "{user} moved around: {seen:?}"
                );
                seen[0].clone()
            })
            .collect()
    };
    let before = home(&tokens);
    for name in ["a", "b", "c"] {
        assert!(
            before.iter().any(|s| s == name),
            "no user on {name}: {before:?}"
        );
    }
    servers[2].kill();
    let after = home(&tokens);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if b == "c" {
            assert_ne!(a, "c", "user{i}");
        } else {
            assert_eq!(a, b, "user{i} moved although its server stayed");
        }
    }
    let moved = before.iter().filter(|s| *s == "c").count();
    eprintln!("user_hash: {moved} of 24 users moved when one of 3 servers left");
}

#[test]
fn only_a_request_that_is_safe_to_repeat_is_sent_twice_and_never_an_upload() {
    let dir = tempfile::tempdir().unwrap();
    let hang = Server::start("hang", dir.path());
    hang.set("mode", "hangup");
    let good = Server::start("good", dir.path());
    // Two routes over the same servers: each has its own round-robin cursor, so the first request of
    // each goes to `hang`.
    let gw = GatewayBuilder::new()
        .route_toml(&pool_route("post", "/post", &[&hang, &good], ""))
        .route_toml(&pool_route("get", "/get", &[&hang, &good], ""))
        .route_toml(&pool_route("probe", "/probe", &[&good], ""))
        .start();
    let (_, token) = gw.create_token("alice", "camera");
    // The token is made by another process: wait until this gateway knows it, through a route that
    // leaves the two round-robin cursors where they are.
    gw.wait_ok("/probe/ready", &token);
    let auth = bearer(&token);
    let upload = vec![b'v'; 4096];
    let r = gw.request(
        "POST",
        "/post/clip",
        &[("Authorization", auth.as_str())],
        &upload,
    );
    assert_eq!(r.status, 502, "{r}");
    assert_eq!(hang.lines("REQ POST").len(), 1);
    assert_eq!(good.lines("REQ POST").len(), 0, "the upload was sent twice");

    let r = gw.get_with_token("/get/reading", &token);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(answered_by(&r), "good");
    assert_eq!(hang.lines("REQ GET /get").len(), 1);
    assert_eq!(
        good.lines("REQ GET /get").len(),
        1,
        "sent exactly twice in all"
    );

    // Both hang up: a GET is sent at most twice, then 502.
    good.set("mode", "hangup");
    let (h0, g0) = (hang.requests(), good.requests());
    let r = gw.get_with_token("/get/reading", &token);
    assert_eq!(r.status, 502, "{r}");
    assert_eq!(hang.requests() + good.requests() - h0 - g0, 2);
}

#[test]
fn a_reload_adds_and_removes_servers_and_requests_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start("a", dir.path());
    let b = Server::start("b", dir.path());
    let gw = GatewayBuilder::new()
        .route_toml(&pool_route("api", "/api", &[&a], ""))
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/api/x", &token);
    let config = fs::read_to_string(gw.config_path()).unwrap();
    let with = |servers: &[&Server]| {
        let list: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect();
        config.replace(
            &format!("upstreams = [\"{}\"]", a.addr),
            &format!("upstreams = [{}]", list.join(", ")),
        )
    };
    fs::write(gw.config_path(), with(&[&a, &b])).unwrap();
    gw.sighup();
    assert!(
        poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
            answered_by(&gw.get_with_token("/api/x", &token)) == "b"
        }),
        "b never joined"
    );
    // A slow request to a, in flight while a is removed.
    a.set("delay", "800");
    let slow = std::thread::scope(|s| {
        let t = s.spawn(|| {
            let mut c = Client::new("/api/slow", &token);
            // Round robin: one of two consecutive requests goes to a.
            let first = c.get(&gw).unwrap();
            if answered_by(&first) == "a" {
                first
            } else {
                c.get(&gw).unwrap()
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        fs::write(gw.config_path(), with(&[&b])).unwrap();
        gw.sighup();
        t.join().unwrap()
    });
    assert_eq!(slow.status, 200, "{slow}");
    assert_eq!(
        answered_by(&slow),
        "a",
        "the request in flight to a finished"
    );
    std::thread::sleep(Duration::from_millis(200));
    let before = a.requests();
    for _ in 0..10 {
        assert_eq!(answered_by(&gw.get_with_token("/api/x", &token)), "b");
    }
    assert_eq!(a.requests(), before, "a removed server got requests");
    let a_label = a.addr.to_string();
    assert!(
        !gw.metrics().contains(&a_label),
        "the removed server's series are gone from /metrics"
    );
}

#[test]
fn a_client_connection_between_requests_holds_no_upstream_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("a", dir.path());
    let gw = GatewayBuilder::new()
        .route_toml(&pool_route("api", "/api", &[&server], ""))
        .start();
    let (_, token) = gw.create_token("alice", "scale");
    gw.wait_ok("/api/x", &token);
    let opened = server.lines("CONN").len();
    assert!(opened >= 1);
    // Eight keep-alive client connections taking turns, one request in flight at a time: each exchange
    // gives its upstream connection back, so the next client (whichever) reuses it — as nginx's
    // `keepalive` pool does — instead of each device pinning one upstream connection of its own.
    let mut clients: Vec<Client> = (0..8)
        .map(|_| Client::new("/api/readings", &token))
        .collect();
    for _ in 0..3 {
        for c in clients.iter_mut() {
            let r = c.get(&gw).expect("a response");
            assert_eq!(r.status, 200, "{r}");
        }
    }
    assert_eq!(server.requests(), 25);
    // A connection goes back to the queue just after its response reached the client, so the next
    // client's request may (on the other worker thread) come first and open one more; eight clients
    // each keeping their own would have opened seven.
    let more = server.lines("CONN").len() - opened;
    assert!(
        more <= 2,
        "client connections between requests kept upstream connections of their own: {more} opened"
    );
}

/// A server going away: it answers the first request of its first connection, then closes every
/// connection as soon as a request arrives, answering nothing.
fn fading_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fading server");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().flatten().enumerate() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let read_head = |r: &mut BufReader<TcpStream>| loop {
                    let mut line = String::new();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return false,
                        Ok(_) if line == "\r\n" => return true,
                        Ok(_) => {}
                    }
                };
                if i == 0 && read_head(&mut r) {
                    let _ = r
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
                read_head(&mut r);
            });
        }
    });
    addr
}

#[test]
fn a_request_safe_to_repeat_moves_on_when_the_same_server_fails_a_new_connection_too() {
    // Both servers fade; the user's hash keeps sending them to one. Its kept-alive connection fails,
    // then a new connection to the same server fails (a server killed a moment ago may still complete
    // a connection and close it): the GET goes on to the other server instead of answering 502.
    let (x, y) = (fading_server(), fading_server());
    let gw = GatewayBuilder::new()
        .route_toml(&format!(
            "name = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{x}\", \"{y}\"]\nbalance = \"user_hash\"\n"
        ))
        .start();
    let (_, token) = gw.create_token("alice", "camera");
    let first = gw.get_with_token("/api/x", &token);
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, &b"ok"[..]),
        "{first}"
    );
    let second = gw.get_with_token("/api/x", &token);
    assert_eq!(
        (second.status, second.body.as_slice()),
        (200, &b"ok"[..]),
        "{second}"
    );
    // A third time both servers have nothing left to give: 502, not a loop.
    let third = gw.get_with_token("/api/x", &token);
    assert_eq!(third.status, 502, "{third}");
}
