//! PostgreSQL for the tests: a database of its own per test, made on the throw-away cluster that
//! `.ci/postgres.sh start` runs and announces in `TOKENGATE_TEST_PG_URL`, so tests run in parallel; and a
//! TCP proxy in front of it that a test can cut and restore (a store outage without stopping the server
//! other tests share).
#![allow(dead_code)] // each test binary uses its own subset

use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The admin URL from `TOKENGATE_TEST_PG_URL`. When it is unset the test is skipped with a note on stderr,
/// except under CI (`CI` set), where a missing database fails the test rather than passing it unseen.
pub fn admin_url() -> Option<String> {
    match std::env::var("TOKENGATE_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "TOKENGATE_TEST_PG_URL is not set: run `eval \"$(.ci/postgres.sh start)\"` first"
            )
        }
        _ => {
            eprintln!(
                "skipped: TOKENGATE_TEST_PG_URL is not set (eval \"$(.ci/postgres.sh start)\")"
            );
            None
        }
    }
}

/// A fresh, empty database; dropped with its connections when this goes out of scope. Derefs to its URL.
pub struct TestDb {
    url: String,
    admin: String,
    name: String,
}

/// Creates `tg_<pid>_<n>_<time>` from `admin_url` (whose role needs CREATEDB) and returns its URL.
pub fn fresh_database(admin_url: &str) -> TestDb {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "tg_{}_{}_{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = Client::connect(admin_url, NoTls).expect("connect with the admin URL");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("CREATE DATABASE");
    TestDb {
        url: with_database(admin_url, &name),
        admin: admin_url.to_string(),
        name,
    }
}

impl TestDb {
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A plain client on this database, for what the store API does not do (seeding, checks, faults).
    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).expect("connect to the test database")
    }
}

impl std::ops::Deref for TestDb {
    type Target = str;
    fn deref(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let dropped = Client::connect(&self.admin, NoTls).and_then(|mut c| {
            c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// `url` with its database replaced by `name`, the query kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let hosts_start = base
        .rfind('@')
        .map_or(base.find("://").map_or(0, |i| i + 3), |i| i + 1);
    let hosts_end = base[hosts_start..]
        .find('/')
        .map_or(base.len(), |i| hosts_start + i);
    format!("{}/{name}{query}", &base[..hosts_end])
}

/// `url` with `option=value` added to its query.
pub fn with_option(url: &str, option: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{option}")
}

/// The password in `url`, to check that no message shows it.
pub fn password_of(url: &str) -> String {
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    let base = base.split_once("://").map_or(base, |(_, rest)| rest);
    let userinfo = base.rsplit_once('@').map_or("", |(u, _)| u);
    userinfo.split_once(':').map_or("", |(_, p)| p).to_string()
}

/// A TCP proxy on 127.0.0.1 in front of `target` (the PostgreSQL server): while cut, it resets every open
/// connection and refuses new ones; restored, it forwards again. A store outage as the gateway sees it.
pub struct CutProxy {
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CutProxy {
    pub fn start(target: std::net::SocketAddr) -> CutProxy {
        CutProxy::start_on([127, 0, 0, 1].into(), target)
    }

    /// A proxy listening on `ip` (a non-loopback address of this machine: see [`non_loopback_ip`]).
    pub fn start_on(ip: std::net::IpAddr, target: std::net::SocketAddr) -> CutProxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::Arc;
        let listener = TcpListener::bind((ip, 0)).expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let born = g.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (c, g) = (c.clone(), g.clone());
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(std::time::Duration::from_millis(50)));
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if c.load(Ordering::SeqCst) || g.load(Ordering::SeqCst) != born {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        CutProxy {
            addr,
            cut,
            generation,
        }
    }

    /// Resets every connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// `url` pointing at this proxy instead of the server.
    pub fn url(&self, url: &str) -> String {
        with_host(url, &self.addr.to_string())
    }
}

/// An address of this machine other than loopback (where the default route leaves; no packet is sent), for
/// reaching a local server as if it were on another host. `None` when there is none.
pub fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// `url` with its `host:port` replaced.
pub fn with_host(url: &str, host_port: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (auth, after) = match rest.rfind('@') {
        Some(i) => (&rest[..=i], &rest[i + 1..]),
        None => ("", rest),
    };
    let path = after.find(['/', '?']).map_or("", |i| &after[i..]);
    format!("{scheme}://{auth}{host_port}{path}")
}

/// The `host:port` of a URL, resolved.
pub fn server_addr(url: &str) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let after = rest.rfind('@').map_or(rest, |i| &rest[i + 1..]);
    let host = after.split(['/', '?']).next().unwrap_or(after);
    host.to_socket_addrs()
        .expect("resolve the test server")
        .next()
        .expect("an address")
}
