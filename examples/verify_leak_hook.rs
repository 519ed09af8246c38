//! A platform-side receiver for tokengate's owner notifications (`[leaks] notify_url`): verifies
//! `x-tokengate-signature` on every POST and prints the verified event as one JSON line on stdout, or
//! answers 401 when the signature is missing, stale or wrong.
//!
//! The verification is written out here so a hook in any language can follow it (the scheme Stripe's
//! webhooks use):
//!
//! 1. Read `x-tokengate-signature: t=<unix seconds>,v1=<hex>` (skip other `k=v` pairs).
//! 2. Reject if `|now - t| > 300` (a replayed old delivery).
//! 3. expected = hex(HMAC-SHA256(key, "<t>.<raw body>")); compare with `v1` in constant time.
//! 4. The body: `{"event":"token_leaked","token_id","user","label","source","url","action","at"}`.
//!    A notification can arrive twice (a gateway that died mid-delivery): deduplicate on `token_id`+`url`.
//!
//! ```text
//! head -c 32 /dev/urandom | base64 > /run/secrets/leak-hook      # [leaks] notify_secret_file
//! cargo run --example verify_leak_hook -- --listen 127.0.0.1:8700 --secret-file /run/secrets/leak-hook
//! # [leaks] notify_url = "http://127.0.0.1:8700/hooks/token-leaked"
//! ```

use clap::Parser;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(about = "Receives and verifies tokengate's leaked-token notifications")]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub listen: String,
    /// The file `[leaks] notify_secret_file` names.
    #[arg(long)]
    pub secret_file: std::path::PathBuf,
    /// Accepted clock difference in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_skew: u64,
}

/// Verifies one delivery; returns why it was refused.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    max_skew: u64,
) -> Result<(), &'static str> {
    let header = header.ok_or("no x-tokengate-signature header")?;
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v))
                if t.is_none() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                t = Some(v)
            }
            Some(("v1", v)) if v1.is_none() => v1 = Some(v),
            Some((k, _)) if !k.is_empty() && k != "t" && k != "v1" => {}
            _ => return Err("malformed signature header"),
        }
    }
    let (t, v1) = t.zip(v1).ok_or("malformed signature header")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(t.parse::<u64>().map_err(|_| "bad timestamp")?) > max_skew {
        return Err("signature timestamp out of range");
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad secret")?;
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if bool::from(subtle::ConstantTimeEq::ct_eq(
        expected.as_bytes(),
        v1.as_bytes(),
    )) {
        Ok(())
    } else {
        Err("signature does not match")
    }
}

fn handle(mut stream: TcpStream, secret: &[u8], max_skew: u64) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let (mut sig, mut length) = (None, 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "x-tokengate-signature" => sig = Some(value.trim().to_string()),
                "content-length" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length.min(64 * 1024)];
    reader.read_exact(&mut body)?;
    let (status, answer) = match verify(secret, sig.as_deref(), &body, max_skew) {
        Ok(()) => {
            println!("{}", String::from_utf8_lossy(&body));
            std::io::stdout().flush()?;
            ("200 OK", "{}".to_string())
        }
        Err(why) => {
            eprintln!("refused a delivery: {why}");
            ("401 Unauthorized", format!("{{\"error\":{why:?}}}"))
        }
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    )
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let secret = std::fs::read(&args.secret_file)?;
    let secret = secret.trim_ascii().to_vec();
    let listener = TcpListener::bind(&args.listen)?;
    eprintln!("verifying leak notifications on {}", args.listen);
    for stream in listener.incoming() {
        if let Err(e) = stream.and_then(|s| handle(s, &secret, args.max_skew)) {
            eprintln!("connection error: {e}");
        }
    }
    Ok(())
}
