//! TLS for battery devices (`[tls] session_tickets`, `ticket_lifetime`, `max_fragment_size`), through the
//! real binary and real TLS clients: a session ticket one gateway issued resumes on another gateway
//! sharing the store (`openssl s_client -sess_out` / `-sess_in`, TLS 1.2 and 1.3), still after a key
//! rotation, no longer after two lifetimes (a full handshake, no error); no 0-RTT; records no larger than
//! `max_fragment_size` (read raw off the socket).

mod common;

use common::tls::{ClientOptions, Pki};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Two gateways on one SQLite store, with the same certificate, each with `tls_keys`.
fn two_nodes(tls_keys: &[(&str, &str)]) -> (Gateway, Gateway, Arc<Pki>) {
    two_nodes_on(None, tls_keys)
}

/// [`two_nodes`] on the PostgreSQL database at `pg` (`None`: on the first one's SQLite file).
fn two_nodes_on(pg: Option<&str>, tls_keys: &[(&str, &str)]) -> (Gateway, Gateway, Arc<Pki>) {
    let store = |b: GatewayBuilder| match pg {
        Some(url) => b.store_url(url),
        None => b,
    };
    let mut a = store(GatewayBuilder::new())
        .route("iot", "/iot", refused_addr())
        .tls();
    let pki = a.pki();
    let leaf = pki.leaf(&["localhost", "127.0.0.1"]);
    a = a.tls_certificates(vec![leaf.clone()]);
    for (k, v) in tls_keys {
        a = a.tls_key(k, v);
    }
    let a = a.start();
    let b = match pg {
        Some(url) => GatewayBuilder::new().store_url(url),
        None => GatewayBuilder::new().store_path(&a.db_path()),
    };
    let mut b = b
        .route("iot", "/iot", refused_addr())
        .tls_certificates(vec![leaf]);
    for (k, v) in tls_keys {
        b = b.tls_key(k, v);
    }
    (a, b.start(), pki)
}

/// One `openssl s_client` connection to `gw`'s TLS listener sending one request; returns its output.
/// `sess_out`/`sess_in`: where to save the session, which one to resume.
fn s_client(
    gw: &Gateway,
    version: &str,
    sess_out: Option<&Path>,
    sess_in: Option<&Path>,
) -> String {
    let out = openssl(gw, version, sess_out, sess_in, &[], "GET /nowhere", None);
    assert!(
        out.contains("HTTP/1.1 404"),
        "the request was answered over TLS:\n{out}"
    );
    out
}

/// `openssl s_client` to `gw` with `extra` arguments (a client certificate), sending `request_line`
/// with `token`; returns what it printed.
fn openssl(
    gw: &Gateway,
    version: &str,
    sess_out: Option<&Path>,
    sess_in: Option<&Path>,
    extra: &[&str],
    request_line: &str,
    token: Option<&str>,
) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(gw.tls_addr().to_string())
        .args(["-servername", "localhost", version, "-ign_eof"])
        .args(extra);
    if let Some(p) = sess_out {
        cmd.arg("-sess_out").arg(p);
    }
    if let Some(p) = sess_in {
        cmd.arg("-sess_in").arg(p);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("{request_line} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("s_client output");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn reused(out: &str) -> bool {
    out.lines().any(|l| l.starts_with("Reused,"))
}

#[test]
fn a_ticket_from_one_node_resumes_on_another_sharing_the_store() {
    let (a, b, _pki) = two_nodes(&[]);
    let dir = tempfile::tempdir().unwrap();
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.path().join(format!("sess{version}.pem"));
        let first = s_client(&a, version, Some(&sess), None);
        assert!(!reused(&first), "the first handshake is full:\n{first}");
        let on_b = s_client(&b, version, None, Some(&sess));
        assert!(reused(&on_b), "{version}: A's ticket resumes on B:\n{on_b}");
        let on_a = s_client(&a, version, None, Some(&sess));
        assert!(reused(&on_a), "{version}: and on A:\n{on_a}");
        // 0-RTT is never accepted.
        assert!(!on_b.contains("Early data was accepted"), "{on_b}");
    }
    // A client that offers 0-RTT data with a resumed session: never accepted.
    let early = dir.path().join("early.txt");
    std::fs::write(&early, "GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let sess = dir.path().join("sess-tls1_3.pem");
    let offered = openssl(
        &b,
        "-tls1_3",
        None,
        Some(&sess),
        &["-early_data", early.to_str().unwrap()],
        "GET /nowhere",
        None,
    );
    assert!(
        !offered.contains("Early data was accepted")
            && (offered.contains("Early data was not sent")
                || offered.contains("Early data was rejected")),
        "{offered}"
    );
    // Operators see it: handshakes by kind and version, and the access log's marker.
    let metrics = b.metrics();
    for (kind, version, want) in [("resumed", "1.3", 2.0), ("resumed", "1.2", 1.0)] {
        let n = metric_sum(
            &metrics,
            "tokengate_tls_handshakes_total",
            &[
                &format!("kind=\"{kind}\""),
                &format!("version=\"{version}\""),
            ],
        );
        assert_eq!(n, want, "{kind} {version}: {metrics}");
    }
    let full = |gw: &Gateway| {
        metric_sum(
            &gw.metrics(),
            "tokengate_tls_handshakes_total",
            &["kind=\"full\""],
        )
    };
    assert_eq!(full(&b), 0.0, "B only ever resumed");
    assert_eq!(full(&a), 2.0, "A made the two sessions");
    assert!(
        poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
            let logs = b.logs();
            logs.contains("tls=1.3r") && logs.contains("tls=1.2r")
        }),
        "the access log marks resumed sessions: {}",
        b.logs()
    );
    // A gateway on another store has other keys: a full handshake, no error.
    let other = GatewayBuilder::new()
        .route("iot", "/iot", refused_addr())
        .tls()
        .start();
    let sess = dir.path().join("sess-other.pem");
    s_client(&a, "-tls1_3", Some(&sess), None);
    let elsewhere = s_client(&other, "-tls1_3", None, Some(&sess));
    assert!(!reused(&elsewhere), "{elsewhere}");
}

#[test]
fn a_ticket_from_one_node_resumes_on_another_on_postgresql() {
    let Some(db) = common::pg::admin_url().map(|u| common::pg::fresh_database(&u)) else {
        return;
    };
    let (a, b, _pki) = two_nodes_on(Some(db.url()), &[]);
    let dir = tempfile::tempdir().unwrap();
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.path().join(format!("sess{version}.pem"));
        s_client(&a, version, Some(&sess), None);
        let on_b = s_client(&b, version, None, Some(&sess));
        assert!(reused(&on_b), "{version}: A's ticket resumes on B:\n{on_b}");
    }
}

#[test]
fn a_ticket_survives_a_key_rotation_and_dies_after_two_lifetimes() {
    // A 4 s lifetime: a new key every 2 s, keys deleted after 8 s.
    let (a, b, _pki) = two_nodes(&[("ticket_lifetime", "\"4s\"")]);
    let dir = tempfile::tempdir().unwrap();
    let sess = dir.path().join("sess.pem");
    let issued = Instant::now();
    s_client(&a, "-tls1_3", Some(&sess), None);
    // Past a rotation: B holds a newer key, and still the one the ticket was sealed with.
    std::thread::sleep(Duration::from_millis(3_000));
    let rotated = s_client(&b, "-tls1_3", None, Some(&sess));
    assert!(
        issued.elapsed() < Duration::from_secs(4) && reused(&rotated),
        "resumed after a rotation ({:?}):\n{rotated}",
        issued.elapsed()
    );
    // Two lifetimes after the ticket's key was made: no longer resumed, and no error either.
    std::thread::sleep(Duration::from_secs(9).saturating_sub(issued.elapsed()));
    let expired = s_client(&b, "-tls1_3", None, Some(&sess));
    assert!(
        !reused(&expired),
        "an old ticket is not resumed:\n{expired}"
    );
}

#[test]
fn without_session_tickets_nothing_resumes() {
    let (a, _b, _pki) = two_nodes(&[("session_tickets", "false")]);
    let dir = tempfile::tempdir().unwrap();
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.path().join(format!("sess{version}.pem"));
        let first = s_client(&a, version, Some(&sess), None);
        if !sess.exists() {
            // No ticket and no session id at all: s_client has nothing to save.
            assert!(!first.contains("TLS session ticket:"), "{first}");
            continue;
        }
        let again = s_client(&a, version, None, Some(&sess));
        assert!(!reused(&again), "{version}:\n{again}");
    }
}

/// A socket that keeps a copy of every byte read, to look at the TLS records themselves.
struct Recording {
    tcp: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Read for Recording {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.seen.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Write for Recording {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Downloads `bytes` through `gw` over TLS 1.3 and returns the largest application-data record's
/// payload length (ciphertext: plaintext + content type + 16-byte tag).
fn largest_record(gw: &Gateway, token: &str, bytes: u64) -> usize {
    let options = ClientOptions {
        versions: Some(vec![&rustls::version::TLS13]),
        ..Default::default()
    };
    let config = gw.tls_client(&options);
    let tcp = TcpStream::connect(gw.tls_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sock = Recording {
        tcp,
        seen: seen.clone(),
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let request = format!(
        "GET /big/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n{DOWNLOAD_HEADER}: {bytes}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).unwrap();
    let mut body = Vec::new();
    let _ = tls.read_to_end(&mut body);
    assert!(
        body.len() as u64 > bytes,
        "the whole download arrived: {} bytes",
        body.len()
    );
    let raw = seen.lock().unwrap().clone();
    let (mut at, mut largest) = (0, 0);
    while at + 5 <= raw.len() {
        let len = u16::from_be_bytes([raw[at + 3], raw[at + 4]]) as usize;
        if raw[at] == 23 {
            largest = largest.max(len);
        }
        at += 5 + len;
    }
    largest
}

#[test]
fn max_fragment_size_caps_every_record_the_gateway_sends() {
    let up = Upstream::start("big");
    let mut capped = GatewayBuilder::new()
        .tls_key("max_fragment_size", "4096")
        .route("big", "/big", up.addr())
        .build();
    let (_, token) = capped.create_token("alice", "d");
    capped.start();
    let largest = largest_record(&capped, &token, 1 << 20);
    assert!(
        largest <= 4096 + 17,
        "a record of {largest} bytes (at most 4096 plaintext + type + tag)"
    );
    // Without the cap the same download uses 16 KiB records: the test can tell.
    let mut full = GatewayBuilder::new()
        .tls()
        .route("big", "/big", up.addr())
        .build();
    let (_, token) = full.create_token("alice", "d");
    full.start();
    assert!(largest_record(&full, &token, 1 << 20) > 8192);
}

#[test]
fn early_data_and_out_of_range_settings_are_config_errors() {
    for (key, value, says) in [
        ("early_data", "true", "tls.early_data"),
        ("ticket_lifetime", "\"8d\"", "tls.ticket_lifetime"),
        ("max_fragment_size", "100", "tls.max_fragment_size"),
    ] {
        let gw = GatewayBuilder::new().tls_key(key, value).build();
        let out = gw.cli(&["check-config"]);
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{key} = {value} accepted: {text}");
        assert!(text.contains(says), "{text}");
    }
}

#[test]
fn a_resumed_session_keeps_its_certificate_binding_and_a_new_client_ca_ends_it() {
    let up = Upstream::start("api");
    let devices = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        common::tls::write_pem(dir.path(), name, pem)
            .display()
            .to_string()
    };
    let ca = write("devices-ca.pem", &devices.ca_pem);
    let other_ca = write("other-ca.pem", &Pki::new("another device CA").ca_pem);
    let (hive7, hive8) = (devices.leaf(&["hive-7"]), devices.leaf(&["hive-8"]));
    let (cert7, key7) = (
        write("7.crt", &hive7.cert_pem),
        write("7.key", &hive7.key_pem),
    );
    let (cert8, key8) = (
        write("8.crt", &hive8.cert_pem),
        write("8.key", &hive8.key_pem),
    );
    let node = |ca: &str, store: Option<&Path>| {
        let b = GatewayBuilder::new()
            .tls_key("client_ca", &format!("{ca:?}"))
            .route("api", "/api", up.addr());
        match store {
            Some(db) => b.store_path(db),
            None => b,
        }
    };
    let mut a = node(&ca, None).build();
    let (_, bound) = a.create_token_with("beekeeper", "hive 7", &["--bind-cert", &cert7]);
    a.start();
    let b = node(&ca, Some(&a.db_path())).start();
    let c = node(&other_ca, Some(&a.db_path())).start();
    // The response, wherever s_client's printing of tickets put it.
    let status = |out: &str| {
        out.find("HTTP/1.1 ")
            .map(|at| out[at + 9..at + 12].to_owned())
            .unwrap_or_else(|| format!("no response:\n{out}"))
    };
    for version in ["-tls1_3", "-tls1_2"] {
        let (s7, s8) = (
            dir.path().join(format!("7{version}")),
            dir.path().join(format!("8{version}")),
        );
        let with7 = ["-cert", cert7.as_str(), "-key", key7.as_str()];
        let full = openssl(
            &a,
            version,
            Some(&s7),
            None,
            &with7,
            "GET /api/x",
            Some(&bound),
        );
        assert_eq!(status(&full), "200", "{full}");
        // On B, resumed, with no certificate sent: the session's certificate still binds.
        let resumed = openssl(
            &b,
            version,
            None,
            Some(&s7),
            &[],
            "GET /api/x",
            Some(&bound),
        );
        assert!(reused(&resumed), "{resumed}");
        assert_eq!(status(&resumed), "200", "{version}: {resumed}");
        // Another device's session does not carry hive 7's binding.
        let with8 = ["-cert", cert8.as_str(), "-key", key8.as_str()];
        openssl(&a, version, Some(&s8), None, &with8, "GET /api/x", None);
        let other = openssl(
            &b,
            version,
            None,
            Some(&s8),
            &[],
            "GET /api/x",
            Some(&bound),
        );
        assert!(reused(&other), "{other}");
        assert_eq!(status(&other), "401", "{version}: {other}");
        // A node trusting another device CA (a changed client_ca) does not resume the session.
        let changed = openssl(
            &c,
            version,
            None,
            Some(&s7),
            &[],
            "GET /api/x",
            Some(&bound),
        );
        assert!(!reused(&changed), "{version}: {changed}");
        assert_ne!(status(&changed), "200", "{changed}");
    }
}

#[test]
fn handshake_failures_are_counted_by_reason() {
    let gw = GatewayBuilder::new()
        .tls()
        .route("iot", "/iot", refused_addr())
        .start();
    let mut plain = TcpStream::connect(gw.tls_addr()).unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest);
    let counted = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        metric_sum(
            &gw.metrics(),
            "tokengate_tls_handshake_failed_total",
            &["reason=\"malformed\""],
        ) == 1.0
    });
    assert!(counted, "{}", gw.metrics());
}

#[test]
fn check_config_prints_each_chain_s_size_and_key_type() {
    let gw = GatewayBuilder::new()
        .tls()
        .route("iot", "/iot", refused_addr())
        .build();
    let out = gw.cli(&["check-config"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("tls.certificates[0]: ECDSA key, chain of 1 certificate(s), "),
        "{text}"
    );
}

/// A Python `ssl` client: one connection to `first` (port), then one to `second` resuming its
/// `SSLSocket.session`; prints `reused`/`full` and the status line.
const PYTHON_RESUME: &str = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, sys.argv[3])
def once(port, session=None):
    t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost",
                        session=session)
    t.sendall(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = t.recv(4096)
        if not chunk:
            break
        data += chunk
    out = (t.session_reused, t.session, data.split(b"\r\n")[0].decode())
    t.close()
    return out
_, session, _ = once(int(sys.argv[1]))
reused, _, status = once(int(sys.argv[2]), session)
print("reused" if reused else "full", status)
"#;

#[test]
fn a_python_ssl_client_resumes_its_session_on_another_node() {
    let (a, b, _pki) = two_nodes(&[]);
    for version in ["TLSv1_3", "TLSv1_2"] {
        let out = Command::new("python3")
            .args(["-c", PYTHON_RESUME])
            .arg(a.tls_addr().port().to_string())
            .arg(b.tls_addr().port().to_string())
            .arg(version)
            .output()
            .expect("run python3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            text.trim(),
            "reused HTTP/1.1 404 Not Found",
            "{version}: {text}"
        );
    }
}

#[test]
fn store_copy_carries_the_ticket_keys() {
    let (a, _b, _pki) = two_nodes(&[]);
    let dir = tempfile::tempdir().unwrap();
    let sess = dir.path().join("sess.pem");
    s_client(&a, "-tls1_3", Some(&sess), None);
    let copy = dir.path().join("copy.db");
    let out = a.cli(&[
        "store",
        "copy",
        "--to",
        &format!("sqlite:{}", copy.display()),
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let moved = GatewayBuilder::new()
        .route("iot", "/iot", refused_addr())
        .store_path(&copy)
        .tls()
        .start();
    let resumed = s_client(&moved, "-tls1_3", None, Some(&sess));
    assert!(
        reused(&resumed),
        "a ticket from before the move resumes:\n{resumed}"
    );
}
