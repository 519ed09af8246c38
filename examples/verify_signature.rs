//! An upstream that trusts only what tokengate signed: it verifies `x-tokengate-signature` on every
//! request and answers 200 with the verified identity, or 401 when the signature is missing, stale or
//! wrong (for example a request that reached it without going through the gateway).
//!
//! The verification is written out here (HMAC-SHA256, constant-time comparison, timestamp window) rather
//! than calling tokengate's library, so an upstream in any language can follow it:
//!
//! 1. Read `x-tokengate-signature: t=<unix seconds>,v1=<hex>`, `x-user-id` and `x-token-id`.
//! 2. Reject if `|now - t| > 300`.
//! 3. message = user id + "\n" + token id + "\n" + t + "\n" + METHOD + "\n" + path-and-query (as received).
//! 4. expected = hex(HMAC-SHA256(sign_secret, message)); compare with `v1` in constant time.
//!
//! ```text
//! # config: on the route, sign_secret = "<the same 32+ character secret>"
//! cargo run --example verify_signature -- --listen 127.0.0.1:8600 --secret "$SIGN_SECRET"
//! curl -s localhost:8080/iot/x -H "Authorization: Bearer $TOKEN"   # 200 {"verified_user":"..."}
//! curl -s localhost:8600/iot/x -H "x-user-id: mallory"             # 401: not signed by the gateway
//! ```

use clap::Parser;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(about = "An upstream that verifies tokengate's signature header")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8600")]
    listen: String,
    /// The route's `sign_secret`.
    #[arg(long, env = "SIGN_SECRET")]
    secret: String,
    /// Accepted clock difference in seconds.
    #[arg(long, default_value_t = 300)]
    max_skew: u64,
}

/// Verifies one request's identity; returns the user id or why it was refused.
fn verify(
    secret: &[u8],
    sig: Option<&str>,
    user: &str,
    token_id: &str,
    method: &str,
    target: &str,
    max_skew: u64,
) -> Result<(), &'static str> {
    let sig = sig.ok_or("no x-tokengate-signature header")?;
    let (mut t, mut v1) = (None, None);
    for part in sig.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => return Err("malformed signature header"),
        }
    }
    let (t, v1) = t.zip(v1).ok_or("malformed signature header")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(t) > max_skew {
        return Err("signature timestamp out of range");
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad secret")?;
    mac.update(format!("{user}\n{token_id}\n{t}\n{method}\n{target}").as_bytes());
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

fn handle(mut stream: TcpStream, args: &Args) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut sig, mut user, mut token_id, mut length) =
        (None, String::new(), String::new(), 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim().to_string();
            match name.trim().to_ascii_lowercase().as_str() {
                "x-tokengate-signature" => sig = Some(value),
                "x-user-id" => user = value,
                "x-token-id" => token_id = value,
                "content-length" => length = value.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    // Drain a (small) body; a real upstream would stream it.
    std::io::copy(
        &mut reader.by_ref().take(length as u64),
        &mut std::io::sink(),
    )?;
    let (status, body) = match verify(
        args.secret.as_bytes(),
        sig.as_deref(),
        &user,
        &token_id,
        &method,
        &target,
        args.max_skew,
    ) {
        Ok(()) => (
            "200 OK",
            format!("{{\"verified_user\":{user:?},\"token_id\":{token_id:?}}}"),
        ),
        Err(why) => ("401 Unauthorized", format!("{{\"error\":{why:?}}}")),
    };
    println!("{method} {target} -> {status} ({user})");
    write!(stream, "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    if args.secret.len() < 32 {
        eprintln!("the secret must be at least 32 characters, as in the gateway's sign_secret");
        std::process::exit(2);
    }
    let listener = TcpListener::bind(&args.listen)?;
    println!("verifying upstream on {}", args.listen);
    for stream in listener.incoming() {
        if let Err(e) = stream.and_then(|s| handle(s, &args)) {
            eprintln!("connection error: {e}");
        }
    }
    Ok(())
}
