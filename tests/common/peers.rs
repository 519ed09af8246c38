//! Real proxies in front of the verify listener: nginx (`auth_request`) and Caddy (`forward_auth`), run
//! as the test's user in a temporary folder, with the configuration snippets the README shows (taken
//! from the README itself, so the documented snippet is the tested one).
//!
//! A peer that is not installed skips its test locally, but fails it when `CI=true` (CI installs both):
//! a test must not pass there without having run.

use super::{free_port, poll_until};
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub const NGINX: &str = "/usr/sbin/nginx";
pub const CADDY: &str = "/usr/bin/caddy";

/// Whether `bin` is installed; without it, `false` (the caller returns) or, under CI, a failure.
pub fn installed(bin: &str) -> bool {
    if Path::new(bin).is_file() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{bin} is not installed, and CI must run this test (.ci/setup installs it)");
    }
    eprintln!("skipping: {bin} is not installed");
    false
}

/// The fenced block that follows the line `<!-- tested: NAME -->` in the README.
pub fn readme_snippet(name: &str) -> String {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let marker = format!("<!-- tested: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        .1;
    let block = after
        .split_once("```")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .map(|(_, body)| body)
        .and_then(|body| body.split_once("```"))
        .map(|(body, _)| body)
        .unwrap_or_else(|| panic!("no fenced block after {marker}"));
    block.to_owned()
}

/// The addresses the README's snippets are written with, and what a test puts in their place.
pub struct Addresses {
    /// `127.0.0.1:8080` in the snippets: where the proxy listens.
    pub listen: SocketAddr,
    /// `127.0.0.1:9191`: the verify listener.
    pub verify: SocketAddr,
    /// `127.0.0.1:8600`: the application behind the proxy.
    pub upstream: SocketAddr,
}

impl Addresses {
    pub fn apply(&self, snippet: &str) -> String {
        snippet
            .replace("127.0.0.1:8080", &self.listen.to_string())
            .replace("127.0.0.1:9191", &self.verify.to_string())
            .replace("127.0.0.1:8600", &self.upstream.to_string())
    }
}

/// A proxy process, stopped when dropped; its log printed when the test panics.
pub struct Peer {
    child: Child,
    dir: TempDir,
    pub addr: SocketAddr,
    log: &'static str,
}

impl Peer {
    fn wait_listening(self) -> Peer {
        let up = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
            TcpStream::connect(self.addr).is_ok()
        });
        assert!(
            up,
            "the proxy never listened on {}:\n{}",
            self.addr,
            self.logs()
        );
        self
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join(self.log)).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log, self.logs());
        }
    }
}

/// A free loopback address for a proxy to listen on.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// nginx with `server` (a `server { ... }` block) inside a minimal `http { }`, in the foreground.
pub fn nginx(server: &str, listen: SocketAddr) -> Peer {
    let dir = tempfile::Builder::new()
        .prefix("tokengate-nginx-")
        .tempdir()
        .expect("tempdir");
    let d = dir.path().display();
    let conf = format!(
        "worker_processes 1;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{server}\n}}\n"
    );
    fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
    let child = Command::new(NGINX)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-g")
        .arg(format!(
            "daemon off; pid {d}/nginx.pid; error_log {d}/error.log info;"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    Peer {
        child,
        dir,
        addr: listen,
        log: "error.log",
    }
    .wait_listening()
}

/// Caddy with `site` (Caddyfile site blocks), its admin endpoint off, its state in a temporary folder.
pub fn caddy(site: &str, listen: SocketAddr) -> Peer {
    let dir = tempfile::Builder::new()
        .prefix("tokengate-caddy-")
        .tempdir()
        .expect("tempdir");
    let caddyfile = format!("{{\n\tadmin off\n\tauto_https off\n}}\n{site}\n");
    fs::write(dir.path().join("Caddyfile"), caddyfile).expect("write Caddyfile");
    let log = fs::File::create(dir.path().join("caddy.log")).expect("caddy.log");
    let child = Command::new(CADDY)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.path().join("Caddyfile"))
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start caddy");
    Peer {
        child,
        dir,
        addr: listen,
        log: "caddy.log",
    }
    .wait_listening()
}
