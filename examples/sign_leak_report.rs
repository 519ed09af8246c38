//! Plays GitHub's secret-scanning partner against your gateway: makes a local P-256 key and the key
//! document that goes into `[leaks] public_keys_file`, then signs a report naming tokens and POSTs it to
//! the endpoint exactly as GitHub does (`Github-Public-Key-Identifier`, `Github-Public-Key-Signature`:
//! base64 of the DER ECDSA P-256 / SHA-256 signature over the raw body), printing the feedback answer.
//!
//! ```text
//! # 1. a key pair and its document (the private key stays with you; the document goes to the gateway)
//! cargo run --example sign_leak_report -- keygen --key leak-test.p8 --document config/leak-test-keys.json
//! # 2. in the config:  [leaks]  public_keys_file = "leak-test-keys.json"   (then restart the gateway)
//! # 3. report a token as leaked (it is revoked unless action = "report")
//! cargo run --example sign_leak_report -- send --key leak-test.p8 \
//!     --url http://127.0.0.1:8080/.well-known/tokengate/secret-scanning "$TOKEN"
//! # [{"token_hash":"…","token_type":"tokengate_device_token","label":"true_positive"}]
//! ```
//!
//! Never point a real GitHub enrolment at this document: it is for testing the endpoint end to end.

use base64::Engine as _;
use clap::{Parser, Subcommand};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

/// DER prefix of a P-256 SubjectPublicKeyInfo; the 65-byte uncompressed point follows.
const SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Makes a key pair (PKCS#8, mode 0600) and the key document for `public_keys_file`.
    Keygen {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        document: PathBuf,
        #[arg(long, default_value = "local-test-key")]
        key_id: String,
    },
    /// Signs a report naming `tokens` and POSTs it to `url` (http:// only: a local test).
    Send {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "local-test-key")]
        key_id: String,
        #[arg(long, default_value = "https://github.com/example/repo/blob/main/.env")]
        leak_url: String,
        /// Print the request instead of sending it.
        #[arg(long)]
        dry_run: bool,
        tokens: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("sign_leak_report: {e}");
        std::process::exit(1);
    }
}

/// Runs one command; `send` succeeds only on a 200.
pub fn run(args: Args) -> Result<(), String> {
    match args.command {
        Command::Keygen {
            key,
            document,
            key_id,
        } => {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map_err(|_| "key generation failed")?;
            write_private(&key, pkcs8.as_ref())?;
            let pair = load(&key)?;
            let mut der = SPKI_PREFIX.to_vec();
            der.extend_from_slice(pair.public_key().as_ref());
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
            let doc = serde_json::json!({"public_keys": [
                {"key_identifier": key_id, "key": pem, "is_current": true}
            ]});
            std::fs::write(&document, serde_json::to_vec_pretty(&doc).expect("json"))
                .map_err(|e| format!("{}: {e}", document.display()))?;
            println!(
                "wrote {} (private) and {} (the key document for [leaks] public_keys_file)",
                key.display(),
                document.display()
            );
            Ok(())
        }
        Command::Send {
            key,
            url,
            key_id,
            leak_url,
            dry_run,
            tokens,
        } => {
            if tokens.is_empty() {
                return Err("name at least one token".into());
            }
            let pair = load(&key)?;
            let matches: Vec<serde_json::Value> = tokens
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "token": t, "type": "tokengate_device_token", "url": leak_url, "source": "content"
                    })
                })
                .collect();
            let body = serde_json::to_vec(&matches).expect("json");
            let sig = pair
                .sign(&SystemRandom::new(), &body)
                .map_err(|_| "signing failed")?;
            let sig = base64::engine::general_purpose::STANDARD.encode(sig.as_ref());
            let rest = url
                .strip_prefix("http://")
                .ok_or("--url must be http://host:port/path (a local test)")?;
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let path = if path.is_empty() { "/" } else { path };
            let mut request = format!(
                "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
                 Github-Public-Key-Identifier: {key_id}\r\nGithub-Public-Key-Signature: {sig}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(&body);
            if dry_run {
                std::io::stdout().write_all(&request).ok();
                return Ok(());
            }
            let mut s = TcpStream::connect(authority).map_err(|e| format!("{authority}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            s.write_all(&request).map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&answer);
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let status = head.lines().next().unwrap_or("");
            eprintln!("{status}");
            println!("{body}");
            if status.contains(" 200 ") {
                Ok(())
            } else {
                Err(format!("the endpoint answered {status}"))
            }
        }
    }
}

fn load(path: &PathBuf) -> Result<EcdsaKeyPair, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &bytes,
        &SystemRandom::new(),
    )
    .map_err(|_| format!("{} is not a PKCS#8 P-256 key", path.display()))
}

fn write_private(path: &PathBuf, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}
