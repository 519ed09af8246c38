//! An upstream that trusts only what tokengate signed: it verifies `x-tokengate-signature` on every
//! request and answers 200 with the verified identity, or 401 when the signature is missing, stale or
//! wrong (for example a request that reached it without going through the gateway, or whose scopes were
//! changed on the way).
//!
//! The verification is written out here (HMAC-SHA256, constant-time comparison, timestamp window) rather
//! than calling tokengate's library, so an upstream in any language can follow it (scheme `v2`):
//!
//! 1. Read `x-tokengate-signature: t=<unix seconds>,v2=<hex>` (skip other `k=v` pairs such as `v1=`),
//!    and the identity fields `x-user-id`, `x-token-id`, `x-token-scopes`, `x-token-roles` (an absent
//!    field is the empty string; a field sent twice is refused).
//! 2. Reject if `|now - t| > 300`.
//! 3. message = "v2" \n user id \n token id \n scopes \n roles \n t \n METHOD \n path-and-query (as
//!    received), joined by "\n" with no trailing newline.
//! 4. expected = hex(HMAC-SHA256(sign_secret, message)); compare with `v2` in constant time.
//!
//! ```text
//! # config: on the route, sign_secret = "<the same 32+ character secret>" (and forward_scopes = true
//! # for scopes and roles)
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
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:8600")]
    pub listen: String,
    /// The route's `sign_secret`.
    #[arg(long, env = "SIGN_SECRET")]
    pub secret: String,
    /// Accepted clock difference in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_skew: u64,
}

/// The identity fields of one request, as received (empty when absent).
#[derive(Default, Debug)]
pub struct Identity {
    pub user: String,
    pub token_id: String,
    pub scopes: String,
    pub roles: String,
}

/// Verifies one request's identity; returns why it was refused.
pub fn verify(
    secret: &[u8],
    sig: Option<&str>,
    id: &Identity,
    (method, target): (&str, &str),
    max_skew: u64,
) -> Result<(), &'static str> {
    let sig = sig.ok_or("no x-tokengate-signature header")?;
    let (mut t, mut v2) = (None, None);
    for part in sig.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v))
                if t.is_none() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                t = v.parse::<u64>().ok()
            }
            Some(("v2", v)) if v2.is_none() => v2 = Some(v),
            Some((k, _)) if !k.is_empty() && k != "t" && k != "v2" => {} // another scheme
            _ => return Err("malformed signature header"),
        }
    }
    let (t, v2) = t.zip(v2).ok_or("malformed signature header")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(t) > max_skew {
        return Err("signature timestamp out of range");
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad secret")?;
    let message = format!(
        "v2\n{}\n{}\n{}\n{}\n{t}\n{method}\n{target}",
        id.user, id.token_id, id.scopes, id.roles
    );
    mac.update(message.as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if bool::from(subtle::ConstantTimeEq::ct_eq(
        expected.as_bytes(),
        v2.as_bytes(),
    )) {
        Ok(())
    } else {
        Err("signature does not match")
    }
}

/// Serves one request on `stream`: 200 with the verified identity, or 401 and why.
pub fn handle(mut stream: TcpStream, args: &Args) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut sig, mut id, mut length) = (None, Identity::default(), 0usize);
    let mut twice = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim().to_string();
            let slot = match name.trim().to_ascii_lowercase().as_str() {
                "x-tokengate-signature" => {
                    twice |= sig.replace(value).is_some();
                    continue;
                }
                "x-user-id" => &mut id.user,
                "x-token-id" => &mut id.token_id,
                "x-token-scopes" => &mut id.scopes,
                "x-token-roles" => &mut id.roles,
                "content-length" => {
                    length = value.parse().unwrap_or(0);
                    continue;
                }
                _ => continue,
            };
            twice |= !slot.is_empty();
            *slot = value;
        }
    }
    // Drain a (small) body; a real upstream would stream it.
    std::io::copy(
        &mut reader.by_ref().take(length as u64),
        &mut std::io::sink(),
    )?;
    let verdict = if twice {
        Err("an identity field was sent twice")
    } else {
        verify(
            args.secret.as_bytes(),
            sig.as_deref(),
            &id,
            (&method, &target),
            args.max_skew,
        )
    };
    let (status, body) = match verdict {
        Ok(()) => (
            "200 OK",
            format!(
                "{{\"verified_user\":{:?},\"token_id\":{:?},\"scopes\":{:?},\"roles\":{:?}}}",
                id.user, id.token_id, id.scopes, id.roles
            ),
        ),
        Err(why) => ("401 Unauthorized", format!("{{\"error\":{why:?}}}")),
    };
    println!("{method} {target} -> {status} ({})", id.user);
    write!(stream, "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    if args.secret.len() < 32 {
        eprintln!("the secret must be at least 32 characters, as in the gateway's sign_secret");
        std::process::exit(2);
    }
    let listener = TcpListener::bind(&args.listen)?;
    println!("verifying upstream on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        if let Err(e) = stream.and_then(|s| handle(s, &args)) {
            eprintln!("connection error: {e}");
        }
    }
    Ok(())
}
