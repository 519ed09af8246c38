//! The token-management page in a real browser: starts `tokengate serve` on free loopback ports, makes an
//! admin token with the CLI, and runs `tests/browser/admin_page.mjs` (playwright-core driving the system
//! Chromium) against the admin listener. The script signs in, creates, copies, rotates, revokes and filters
//! tokens, and fails on console errors, CSP violations, or a label rendered as HTML; see its header.
//!
//! Needs Node.js, `/usr/bin/chromium` (or `CHROMIUM=...`) and the npm packages of `tests/browser`
//! (installed here with `npm ci` when missing; `.ci/setup` installs all three on a fresh machine).
//! Set `SCREENSHOT=docs/admin-page.png` (relative to the repository root) to save a screenshot.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{describe, refused_addr, GatewayBuilder};

/// Longer than the script's own 120 s watchdog, so the script normally reports first.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Runs `npm ci` in tests/browser when its packages are missing (a fresh clone); panics with the reason
/// when that fails. Never downloads a browser: playwright-core has no install step, and the variable
/// below makes sure of it.
fn ensure_npm_packages() {
    let dir = browser_dir();
    if dir.join("node_modules/playwright-core").is_dir() {
        return;
    }
    eprintln!("admin_page: tests/browser/node_modules is missing; running npm ci");
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run npm ({e}); install Node.js and npm (apt-get install nodejs npm)")
        });
    assert!(
        out.status.success(),
        "`npm ci --prefix tests/browser` failed; the browser test needs its npm packages:\n{}",
        describe(&out)
    );
}

#[test]
fn admin_page_works_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: apt-get install chromium (or set CHROMIUM to a Chromium binary)"
    );
    ensure_npm_packages();

    // One route is required by the config; the page never uses the proxy listener.
    let gw = GatewayBuilder::new()
        .route("telemetry", "/iot", refused_addr())
        // The browser's requests come from 127.0.0.1: the account step sends the header from there.
        .section("admin", "trusted_user_header", "\"x-forwarded-user\"")
        .section("admin", "trusted_proxies", "[\"127.0.0.1\"]")
        .start();
    let (_, admin_token) = gw.create_token_with("ops", "console", &["--scope", "admin"]);
    let (_, self_token) = gw.create_token_with(
        "dana",
        "account settings",
        &["--scope", "tokens:self", "--scope", "telemetry:write"],
    );

    // The script's output goes to files (not pipes), so a chatty browser can never block it.
    let stdout_path = gw.dir().join("browser-stdout.log");
    let stderr_path = gw.dir().join("browser-stderr.log");
    let mut child = Command::new("node")
        .arg(browser_dir().join("admin_page.mjs"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ADMIN_URL", gw.admin_url(""))
        .env("ADMIN_TOKEN", &admin_token)
        .env("SELF_TOKEN", &self_token)
        .env("SELF_USER", "dana")
        .env("ACCOUNT_USER", "erin")
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).expect("create stdout log"))
        .stderr(fs::File::create(&stderr_path).expect("create stderr log"))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run node ({e}); install Node.js (apt-get install nodejs)")
        });

    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    println!("{stdout}");
    eprintln!("{stderr}");

    match status {
        None => panic!("the browser test did not finish within {BROWSER_TIMEOUT:?}"),
        Some(status) => assert!(
            status.success(),
            "the browser test failed ({status}); its output is above (the gateway's logs follow)"
        ),
    }
}
