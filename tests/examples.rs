//! Every example under `examples/` is built and run as a process, the way its own docs and the README
//! run it, against a real gateway and store; its output is checked against what those docs promise.
//! (`device_client` is run by `tests/quick_start.rs`, through the README's quick start as written.)

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn example(name: &str) -> PathBuf {
    let bin = examples_dir().join(name);
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

/// A long-running example, stopped (SIGINT, like Ctrl-C, then killed) when dropped.
struct Running(Child, String);

impl Running {
    fn spawn(name: &str, args: &[&str]) -> Running {
        let child = Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Running(child, String::new())
    }

    /// Waits for the example's first line, which it prints once it listens, and returns the address
    /// that line names. Started with `--listen 127.0.0.1:0`, the example holds its port from the
    /// moment the system gives it (a port picked by the test and handed over could be taken by another
    /// test's server meanwhile, and the test would talk to that one).
    fn listening(mut self) -> (Running, SocketAddr) {
        let mut stdout = self.0.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Byte by byte, so that nothing after the first line is read here.
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while let Ok(1) = stdout.read(&mut byte) {
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
            }
            let _ = tx.send((stdout, String::from_utf8_lossy(&line).into_owned()));
        });
        let (stdout, line) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the example printed no line within 20 s");
        self.0.stdout = Some(stdout);
        let addr = line
            .split_whitespace()
            .last()
            .map(|w| w.trim_start_matches("http://"))
            .and_then(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("the example's first line names no address: {line:?}"));
        self.1 = format!("{line}\n");
        (self, addr)
    }

    /// SIGINT (Ctrl-C), then the exit status and stdout.
    fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.0.id().to_string();
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill -INT");
        let ok = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        });
        assert!(ok, "the example did not exit after Ctrl-C");
        let status = self.0.wait().unwrap();
        let mut out = std::mem::take(&mut self.1);
        if let Some(stdout) = self.0.stdout.take() {
            for line in BufReader::new(stdout).lines() {
                out.push_str(&line.unwrap_or_default());
                out.push('\n');
            }
        }
        (status, out)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(name: &str, args: &[&str]) -> Output {
    let out = Command::new(example(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    assert!(out.status.success(), "{name} {args:?}:\n{}", describe(&out));
    out
}

/// FNV-1a 64 of `data`, as the echo upstream reports a body.
fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `echo_upstream`, as its docs run it: behind a gateway, it shows the request as it arrived — no
/// credential, the owner's `x-user-id` in place of a forged one, the body counted and hashed — prints a
/// line per request, and exits on Ctrl-C.
#[test]
fn echo_upstream_shows_what_the_gateway_forwarded() {
    let (echo, listen) = Running::spawn(
        "echo_upstream",
        &["--listen", "127.0.0.1:0", "--name", "telemetry"],
    )
    .listening();
    let gw = GatewayBuilder::new()
        .route("telemetry", "/iot", listen)
        .start();
    let (id, token) = gw.create_token("alice", "hive-7");
    gw.wait_ok("/iot/x", &token);
    let body = br#"{"hive":"hive-7","weight_kg":41.2}"#;
    let r = gw.request(
        "POST",
        "/iot/hives/hive-7/telemetry?x=1",
        &[
            ("Authorization", &bearer(&token)),
            ("x-user-id", "mallory"),
            ("Content-Type", "application/json"),
        ],
        body,
    );
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!(v["upstream"], "telemetry", "{v}");
    assert_eq!(v["method"], "POST", "{v}");
    assert_eq!(v["path"], "/iot/hives/hive-7/telemetry?x=1", "{v}");
    assert_eq!(v["user_id"], "alice", "{v}");
    assert_eq!(v["body_bytes"], body.len(), "{v}");
    assert_eq!(v["body_fnv1a64"], fnv1a64(body), "{v}");
    let headers: Vec<(String, String)> = serde_json::from_value(v["headers"].clone()).unwrap();
    assert!(
        !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("authorization")),
        "{v}"
    );
    let users: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-user-id"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(users, ["alice"], "{v}");
    assert!(
        headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("x-token-id") && *v == id.to_string()),
        "{v}"
    );
    // Without a token: 401, and the upstream never sees the request.
    assert_eq!(
        gw.request("GET", "/iot/hives/hive-7/telemetry", &[], b"")
            .status,
        401
    );

    let (status, stdout) = echo.interrupt();
    assert!(status.success(), "exit after Ctrl-C: {status:?}\n{stdout}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("/iot/hives/hive-7/telemetry"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per request:\n{stdout}");
    assert!(
        lines[0].contains("POST")
            && lines[0].contains("alice")
            && lines[0].contains(&body.len().to_string()),
        "{stdout}"
    );
}

/// `seed_tokens`, as the README's benchmark section runs it (`--db` a SQLite file, `--count`), with the
/// options its docs give for load generators: the tokens exist in the store, the kept plaintexts (mode
/// 0600) authenticate at a gateway started on that store, and the others exist only as digests.
#[test]
fn seed_tokens_fills_a_store_a_gateway_serves() {
    use std::os::unix::fs::PermissionsExt;
    let up = Upstream::start("api");
    let mut gw = GatewayBuilder::new()
        .route("api", "/api", up.addr())
        .build();
    let db = gw.db_path();
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let kept = gw.dir().join("tokens.txt");
    let out = run(
        "seed_tokens",
        &[
            "--db",
            db.to_str().unwrap(),
            "--count",
            "2500",
            "--users",
            "10",
            "--batch",
            "1000",
            "--write-tokens",
            kept.to_str().unwrap(),
            "--keep",
            "5",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("created 2500 tokens in "), "{stdout}");
    assert!(
        stdout.contains("; 5 plaintext tokens written to"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("seed: 2500/2500 tokens"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let tokens: Vec<String> = std::fs::read_to_string(&kept)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(tokens.len(), 5);
    assert!(tokens.iter().all(|t| is_token_format(t)), "{tokens:?}");

    gw.start();
    let listed = gw.token_list();
    assert_eq!(listed.len(), 2500);
    assert_eq!(
        listed.iter().filter(|t| t["user"] == "user3").count(),
        250,
        "spread over --users"
    );
    assert!(!serde_json::to_string(&listed).unwrap().contains("tg_"));
    for t in &tokens {
        let r = gw.get_with_token("/api/x", t);
        assert_eq!(r.status, 200, "{r}");
    }
    assert_eq!(
        gw.get_with_token("/api/x", "tg_not_a_seeded_token").status,
        401
    );
}

/// `verify_signature`, as its docs run it (`--listen`, `--secret`): behind a route with `sign_secret`
/// and `forward_scopes`, a request through the gateway is verified (200 with the identity); one that
/// goes around the gateway with a forged identity is refused (401).
#[test]
fn verify_signature_accepts_the_gateway_and_refuses_a_bypass() {
    let secret = "example-sign-secret-0123456789abcdefghij";
    let (_verifier, listen) = Running::spawn(
        "verify_signature",
        &["--listen", "127.0.0.1:0", "--secret", secret],
    )
    .listening();
    let gw = GatewayBuilder::new()
        .route_with(
            "iot",
            "/iot",
            listen,
            &[
                ("sign_secret", &format!("\"{secret}\"")),
                ("forward_scopes", "true"),
            ],
        )
        .start();
    let (id, token) = gw.create_token_with("alice", "scale", &["--scope", "read"]);
    let r = gw.wait_ok("/iot/x", &token);
    let v = r.json();
    assert_eq!(v["verified_user"], "alice", "{r}");
    assert_eq!(v["token_id"], id.to_string(), "{r}");

    let direct = raw_http(
        listen,
        &build_request("GET", "/iot/x", &[("x-user-id", "mallory")], b""),
    );
    assert_eq!(direct.status, 401, "{direct}");
    assert!(!direct.text().contains("mallory\""), "{direct}");
}

/// `propagation`, both ways its docs run it: CLI mode on one gateway (`--cli "tokengate -c FILE"`), and
/// fleet mode over two gateways sharing one store (`--node` twice, `--admin-token`). Each prints a line
/// per measurement with the number of observations, and the `RESULT` line `benches/fleet.sh` reads.
#[test]
fn propagation_measures_a_gateway_and_a_fleet() {
    let up = Upstream::start("probe");
    let a = GatewayBuilder::new()
        .route("bearer", "/bearer", up.addr())
        .start();
    let node = |gw: &Gateway| format!("{},{}", gw.admin_addr(), gw.addr());
    let cli = format!(
        "{BIN} -c {}",
        a.config_path().to_str().expect("a UTF-8 path")
    );
    let out = run(
        "propagation",
        &["--node", &node(&a), "--cli", &cli, "--rounds", "3"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("create_to_200: n=3 p50="), "{stdout}");
    assert!(stdout.contains("revoke_to_401: n=3 p50="), "{stdout}");
    let result = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line: {stdout}"));
    for key in [
        "create_to_200_p50_ms=",
        "create_to_200_p99_ms=",
        "revoke_to_401_max_ms=",
    ] {
        assert!(result.contains(key), "{result}");
    }

    // The admin token is made before the second node starts, which loads it from the shared store.
    let (_, admin) = a.create_token_with("ops", "ops", &["--scope", "admin"]);
    let b = GatewayBuilder::new()
        .route("bearer", "/bearer", up.addr())
        .store_path(&a.db_path())
        .start();
    let out = run(
        "propagation",
        &[
            "--node",
            &node(&a),
            "--node",
            &node(&b),
            "--admin-token",
            &admin,
            "--rounds",
            "4",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Each round is measured on the node that did not write it: 4 rounds over 2 nodes, 4 observations.
    assert!(stdout.contains("create_to_200: n=4 "), "{stdout}");
    assert!(stdout.contains("revoke_to_401: n=4 "), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("RESULT ")), "{stdout}");
    // Every probe token was revoked again.
    let active = a
        .token_list()
        .into_iter()
        .filter(|t| t["user"].as_str().is_some_and(|u| u.starts_with("probe")))
        .filter(|t| t["status"] == json!("active"))
        .count();
    assert_eq!(active, 0);
}
