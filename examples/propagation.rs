//! Measures how fast a token change reaches running gateways, for `benches/fleet.sh`.
//!
//! Fleet mode (`--node ADMIN,PROXY` two or more times, `--admin-token`): each round creates a token
//! through one node's admin API and measures, on every *other* node, the time from the API's answer to
//! the first 200 on `--path`; then revokes it through the next node and measures, on every node, the time
//! from the answer to the first 401. CLI mode (`--cli "tokengate -c FILE"`, one `--node`): the same with
//! `token create` / `token revoke` processes, timed from the CLI's exit. Polls run back to back on one
//! keep-alive connection per node. Prints p50/p99/max per measurement, and one `RESULT` line.
//!
//! ```text
//! cargo run --release --example propagation -- --node 127.0.0.1:9091,127.0.0.1:8081 \
//!     --node 127.0.0.1:9092,127.0.0.1:8082 --admin-token tg_... --rounds 200
//! ```

use clap::Parser;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// `ADMIN_ADDR,PROXY_ADDR` of a gateway (repeat for a fleet).
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// A token with the admin scope (fleet mode).
    #[arg(long)]
    admin_token: Option<String>,
    /// Run the CLI instead of the admin API: the command before `token ...`, e.g. "tokengate -c FILE".
    #[arg(long)]
    cli: Option<String>,
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// The path requested on the proxy listeners (a bearer route).
    #[arg(long, default_value = "/bearer/probe")]
    path: String,
    /// Give up on one observation after this long.
    #[arg(long, default_value = "5s")]
    limit: humantime::Duration,
}

/// A keep-alive HTTP/1.1 client connection (just enough for status codes and small bodies).
struct Client {
    addr: SocketAddr,
    conn: Option<TcpStream>,
}

impl Client {
    fn new(addr: &str) -> Client {
        Client {
            addr: addr.parse().expect("address"),
            conn: None,
        }
    }

    /// Sends one request and returns (status, body).
    fn call(&mut self, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
        for _ in 0..2 {
            if self.conn.is_none() {
                let c = TcpStream::connect(self.addr).expect("connect");
                c.set_nodelay(true).ok();
                c.set_read_timeout(Some(Duration::from_secs(10))).ok();
                self.conn = Some(c);
            }
            let c = self.conn.as_mut().expect("connected");
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if c.write_all(req.as_bytes()).is_err() {
                self.conn = None;
                continue;
            }
            match read_response(c) {
                Some((status, body, close)) => {
                    if close {
                        self.conn = None;
                    }
                    return (status, body);
                }
                None => self.conn = None,
            }
        }
        panic!("no answer from {}", self.addr);
    }
}

fn read_response(c: &mut TcpStream) -> Option<(u16, String, bool)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = c.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = c.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let close = head.contains("connection: close");
    Some((
        status,
        String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned(),
        close,
    ))
}

/// Polls `client` until `path` answers `want` for `token`; the time since `from`.
fn until(
    client: &mut Client,
    path: &str,
    token: &str,
    want: u16,
    from: Instant,
    limit: Duration,
) -> Duration {
    loop {
        if client.call("GET", path, token, "").0 == want {
            return from.elapsed();
        }
        if from.elapsed() > limit {
            panic!("{} never answered {want} within {limit:?}", client.addr);
        }
    }
}

fn cli(command: &str, args: &[&str]) -> String {
    let mut parts = command.split_whitespace();
    let out = std::process::Command::new(parts.next().expect("a command"))
        .args(parts)
        .args(args)
        .output()
        .expect("run the CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let at = json.find(&format!("\"{key}\":")).expect("field") + key.len() + 3;
    let rest = json[at..].trim_start().trim_start_matches('"');
    let end = rest.find(['"', ',', '}', '\n']).expect("end");
    &rest[..end]
}

fn summary(name: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    let line = format!(
        "{name}: n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        v.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    println!("{line}");
    format!(
        "{name}_p50_ms={:.3} {name}_p99_ms={:.3} {name}_max_ms={:.3}",
        q(0.5),
        q(0.99),
        q(1.0)
    )
}

fn main() {
    let args = Args::parse();
    let limit: Duration = args.limit.into();
    let nodes: Vec<(Client, Client)> = args
        .nodes
        .iter()
        .map(|n| {
            let (admin, proxy) = n.split_once(',').expect("ADMIN,PROXY");
            (Client::new(admin), Client::new(proxy))
        })
        .collect();
    let mut nodes = nodes;
    let (mut created, mut revoked) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        if let Some(command) = &args.cli {
            let out = cli(
                command,
                &[
                    "token", "create", "--user", "probe", "--label", "probe", "--json",
                ],
            );
            let t = Instant::now();
            let (id, token) = (
                field(&out, "id").to_string(),
                field(&out, "token").to_string(),
            );
            created.push(until(&mut nodes[0].1, &args.path, &token, 200, t, limit));
            cli(command, &["token", "revoke", &id]);
            let t = Instant::now();
            revoked.push(until(&mut nodes[0].1, &args.path, &token, 401, t, limit));
            continue;
        }
        let admin = args
            .admin_token
            .as_deref()
            .expect("--admin-token in fleet mode");
        let n = nodes.len();
        let writer = round % n;
        let body = format!(r#"{{"user":"probe{round}","label":"propagation"}}"#);
        let (status, out) = nodes[writer].0.call("POST", "/api/tokens", admin, &body);
        assert_eq!(status, 201, "create: {out}");
        let t = Instant::now();
        let (id, token) = (
            field(&out, "id").to_string(),
            field(&out, "token").to_string(),
        );
        for (i, node) in nodes.iter_mut().enumerate() {
            if i != writer {
                created.push(until(&mut node.1, &args.path, &token, 200, t, limit));
            }
        }
        let (status, out) =
            nodes[(round + 1) % n]
                .0
                .call("DELETE", &format!("/api/tokens/{id}"), admin, "");
        assert_eq!(status, 200, "revoke: {out}");
        let t = Instant::now();
        for (i, node) in nodes.iter_mut().enumerate() {
            if i != (round + 1) % n {
                revoked.push(until(&mut node.1, &args.path, &token, 401, t, limit));
            }
        }
    }
    let a = summary("create_to_200", created);
    let b = summary("revoke_to_401", revoked);
    println!("RESULT {a} {b}");
}
