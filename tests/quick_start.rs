//! README's quick start, run as written: the `sh` block under "## Quick start" is taken from README.md
//! and run by bash in a copy of the repository's configuration, with `cargo run --release [--example X]`
//! standing for the binaries this test build made (the same code, in the test profile: a release build
//! here would cost CI ten minutes). Then what the comments promise is checked on the output. The ports are
//! the shipped configuration's (8080, 9090, 8600, 8700): no other test uses them.

mod common;

use common::examples_dir;
use std::path::Path;
use std::process::Command;

/// The `sh` block following `heading` in README.md.
fn readme_block(heading: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let after = &readme[readme
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in README"))..];
    let start = after.find("```sh\n").expect("an sh block") + "```sh\n".len();
    let end = after[start..].find("```").expect("the block's end");
    after[start..start + end].to_owned()
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let examples = examples_dir();
    let tokengate = env!("CARGO_BIN_EXE_tokengate");
    let script = readme_block("## Quick start");
    assert!(
        script.contains("cargo run --release -- serve &"),
        "{script}"
    );
    let script = script
        .replace("cargo build --release --examples", "true")
        .replace(
            "cargo run --release --example echo_upstream --",
            &format!("{}", examples.join("echo_upstream").display()),
        )
        .replace(
            "cargo run --release --example device_client --",
            &format!("{}", examples.join("device_client").display()),
        )
        .replace("cargo run --release -q --", tokengate)
        .replace("cargo run --release --", tokengate);
    assert!(
        !script.contains("cargo "),
        "a command left unmapped: {script}"
    );
    // A copy of the repository's configuration: `data/` is made next to it on first run.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokengate.toml"),
        dir.path().join("config/tokengate.toml"),
    )
    .unwrap();
    // bash -e: every command must succeed; the servers started with `&` are stopped on the way out, and
    // the gateway is given a moment to listen (the README's reader types the next line by hand).
    let wrapped = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{}",
        script.replace(
            &format!("{tokengate} serve &\n"),
            &format!(
                "{tokengate} serve &\nfor i in $(seq 100); do curl -sf localhost:9090/healthz >/dev/null && break; sleep 0.1; done\n"
            ),
        )
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&wrapped)
        .current_dir(dir.path())
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the quick start failed:\n{stdout}\n{stderr}"
    );
    // What the comments say: the upstream saw the owner and no credential; 401 twice, 404; the device's
    // telemetry and video went through; the list shows the token; health and metrics answer.
    assert!(stdout.contains(r#""user_id":"beekeeper-42""#), "{stdout}");
    assert!(
        !stdout.to_ascii_lowercase().contains("\"authorization\""),
        "{stdout}"
    );
    assert_eq!(stdout.matches("HTTP/1.1 401").count(), 2, "{stdout}");
    assert!(
        stdout.contains("WWW-Authenticate: Bearer realm=\"tokengate\"")
            || stdout
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer realm=\"tokengate\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("error=\\\"invalid_token\\\"")
            || stdout.contains("error=\"invalid_token\""),
        "{stdout}"
    );
    assert!(stdout.contains("HTTP/1.1 404"), "{stdout}");
    assert!(stdout.contains("hive scale 7"), "{stdout}");
    assert!(stdout.contains("\"status\":\"ok\""), "{stdout}");
    assert!(stdout.contains("tokengate_"), "{stdout}");
}
