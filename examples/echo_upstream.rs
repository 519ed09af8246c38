//! A stand-in upstream for trying tokengate locally: a plain HTTP/1.1 server (hyper) that answers every
//! request with `200` and a JSON description of what it received.
//!
//! In the README quick start you run two of these, one per upstream named in `config/tokengate.toml`
//! (the `telemetry`/`entrance` routes point at `127.0.0.1:8600`, the `video` route at `127.0.0.1:8700`),
//! then start the gateway in front of them. Because the echo shows every header exactly as it arrived, it
//! makes the gateway's work visible: the `Authorization` header is gone, and `x-user-id` / `x-token-id`
//! carry the token owner's identity instead of whatever the client sent.
//!
//! ```text
//! cargo run --example echo_upstream -- [--listen 127.0.0.1:8600] [--name telemetry]
//! ```
//!
//! Response body:
//!
//! ```json
//! {"upstream": "telemetry", "method": "POST", "path": "/iot/hives/hive-7/telemetry?x=1",
//!  "headers": [["host", "127.0.0.1:8600"], ["x-user-id", "alice"], ...],
//!  "body_bytes": 61, "body_fnv1a64": "8d2b6c1f0e4a7b93", "user_id": "alice"}
//! ```
//!
//! Request bodies are streamed: each frame is counted and hashed (FNV-1a 64, hex) and then dropped, so a
//! multi-GiB video upload goes through in constant memory. One line per request is printed to stdout
//! (method, path, x-user-id, body bytes). Ctrl-C stops accepting connections, lets open ones finish for up
//! to five seconds, and exits.
//!
//! Try it (each in its own terminal, from the repository root):
//!
//! ```text
//! cargo run --example echo_upstream -- --listen 127.0.0.1:8600 --name telemetry
//! cargo run --example echo_upstream -- --listen 127.0.0.1:8700 --name video
//! cargo run -- serve
//! TOKEN=$(cargo run -q -- token create --user alice --label hive-7)
//! curl -s http://127.0.0.1:8080/iot/hives/hive-7/telemetry -H "Authorization: Bearer $TOKEN" \
//!      -H 'content-type: application/json' -d '{"hive":"hive-7","weight_kg":41.2}'
//! curl -s http://127.0.0.1:8080/iot/hives/hive-7/telemetry -H "Authorization: Bearer $TOKEN" \
//!      -H 'x-user-id: mallory'                      # the echo shows x-user-id: alice
//! curl -si http://127.0.0.1:8080/iot/hives/hive-7/telemetry   # 401, upstream never contacted
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Parser, Debug)]
#[command(about = "HTTP/1.1 echo upstream for trying tokengate")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8600")]
    listen: SocketAddr,
    /// Name reported as "upstream" in every response (tells routes apart).
    #[arg(long, default_value = "telemetry")]
    name: String,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64(mut hash: u64, data: &[u8]) -> u64 {
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Header values are usually ASCII; anything else is shown lossily rather than dropped.
fn header_str(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    }
}

async fn echo(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    // `HeaderMap::iter` yields every value of a repeated header, in order received per name.
    let headers: Vec<[String; 2]> = parts
        .headers
        .iter()
        .map(|(k, v)| [k.as_str().to_owned(), header_str(v)])
        .collect();
    let user_id = parts.headers.get("x-user-id").map(header_str);

    // Stream the body: count and hash each frame, keep nothing.
    let mut body_bytes: u64 = 0;
    let mut hash = FNV_OFFSET;
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                    hash = fnv1a64(hash, data);
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }

    println!(
        "{} {} {} x-user-id={} body_bytes={}{}",
        name,
        parts.method,
        path,
        user_id.as_deref().unwrap_or("-"),
        body_bytes,
        body_error
            .as_deref()
            .map(|e| format!(" body_error={e:?}"))
            .unwrap_or_default(),
    );

    let mut json = serde_json::json!({
        "upstream": &*name,
        "method": parts.method.as_str(),
        "path": path,
        "headers": headers,
        "body_bytes": body_bytes,
        "body_fnv1a64": format!("{hash:016x}"),
        "user_id": user_id,
    });
    if let Some(e) = body_error {
        json["body_error"] = e.into();
    }
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string() + "\n")));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let name: Arc<str> = Arc::from(args.name.as_str());
    println!(
        "echo upstream {:?} listening on http://{}",
        args.name,
        listener.local_addr()?
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // e.g. EMFILE: back off briefly instead of spinning.
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let name = name.clone();
                let mut shutdown_rx = shutdown_rx.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| echo(name.clone(), req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        res = conn.as_mut() => {
                            if let Err(e) = res {
                                eprintln!("connection error: {e}");
                            }
                        }
                        _ = shutdown_rx.changed() => {
                            // Finish the request in flight (if any), then close.
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            // Reap finished connection tasks so the set does not grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }

    drop(listener);
    let open = conns.len();
    println!("shutting down ({open} open connection(s))");
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!("gave up waiting for {} connection(s)", conns.len());
        conns.abort_all();
    }
    Ok(())
}
