//! The transport's timeouts on the runtime's clock: the idle keep-alive timeout, a tunnel's idle
//! timeout, a route's `request_timeout` and `min_body_rate` are all reached on the paused clock (each
//! of these tests hangs, or lets bytes through, if a timeout reads the wall clock instead).

use crate::telemetry::connections::Closed;
use crate::tokens::format::Token;
use crate::transport::testing::{ended, get, Rig, Wire};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn post_head(token: &Token, length: usize) -> String {
    format!(
        "POST /up HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nContent-Length: {length}\r\n\r\n",
        token.as_str()
    )
}

/// Sends `n` body bytes one at a time, `every` apart on the test's clock (a closed pipe is ignored:
/// the gateway may have answered and gone).
async fn trickle(client: &mut Wire<DuplexStream>, n: usize, every: Duration) {
    for _ in 0..n {
        let _ = client.io.write_all(b"x").await;
        tokio::time::sleep(every).await;
    }
}

/// The body bytes the upstream received (what follows the forwarded head), to the end of its connection.
async fn body_seen(up: &mut Wire<tokio::net::TcpStream>) -> usize {
    let seen = up.drain().await;
    let head_end = seen
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a forwarded head")
        + 4;
    seen.len() - head_end
}

#[tokio::test(start_paused = true)]
async fn an_idle_kept_alive_connection_closes_at_keepalive_timeout() {
    let rig = Rig::new("keepalive_timeout = \"30s\"", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(get("/one", &token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("request");
    up.send(ok("x")).await;
    assert_eq!(client.response(false).await.status(), 200);
    let answered = Instant::now();
    assert!(
        client.closed().await,
        "the gateway closes the idle connection"
    );
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_secs(30) && idle <= Duration::from_secs(32),
        "closed after {idle:?} idle"
    );
    assert_eq!(ended(task).await, Closed::IdleTimeout);
}

#[tokio::test(start_paused = true)]
async fn a_silent_tunnel_closes_at_its_idle_timeout() {
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
    let rig = Rig::new("", "websocket = true\nwebsocket_idle_timeout = \"10s\"").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client
        .send(format!(
            "GET /ws HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n",
            token.as_str()
        ))
        .await;
    let mut up = rig.accept().await;
    up.request().await.expect("upgrade request");
    up.send(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    ))
    .await;
    assert_eq!(client.response(false).await.status(), 101);
    client.send("ping").await;
    assert_eq!(up.bytes(4).await, b"ping");
    let last_moved = Instant::now();
    assert!(client.closed().await, "the silent tunnel is closed");
    let idle = last_moved.elapsed();
    assert!(
        idle >= Duration::from_secs(10)
            && idle <= Duration::from_secs(10) + crate::transport::tunnel::CHECK * 2,
        "closed after {idle:?} of silence"
    );
    assert!(up.closed().await);
    assert_eq!(ended(task).await, Closed::Tunnel);
}

#[tokio::test(start_paused = true)]
async fn a_body_still_arriving_at_request_timeout_gets_408() {
    // Bytes keep coming (so neither body_timeout nor a rate applies): only the route's request_timeout
    // of 2s, counted from the request's start, ends it.
    let rig = Rig::new(
        "body_timeout = \"60s\"\nmin_body_rate = 0",
        "request_timeout = \"2s\"",
    )
    .await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(post_head(&token, 100)).await;
    let mut up = rig.accept().await;
    // 20 bytes over 10s; the deadline passes after about 4 of them.
    trickle(&mut client, 20, Duration::from_millis(500)).await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 408);
    assert!(
        a.body_text().contains("not received in time"),
        "{}",
        a.body_text()
    );
    let seen = body_seen(&mut up).await;
    assert!(
        seen <= 6,
        "the upstream got {seen} body bytes after the deadline"
    );
    assert_eq!(ended(task).await, Closed::BodyTimeout);
}

#[tokio::test(start_paused = true)]
async fn a_body_trickling_below_min_body_rate_is_cut_after_the_grace() {
    // 5 bytes a second against a minimum of 1000: the grace (5s) runs out, bytes or not.
    let rig = Rig::new("body_timeout = \"60s\"\nmin_body_rate = 1000", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(post_head(&token, 100_000)).await;
    let mut up = rig.accept().await;
    trickle(&mut client, 75, Duration::from_millis(200)).await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 408);
    assert!(
        a.body_text().contains("slower than 1000"),
        "{}",
        a.body_text()
    );
    let seen = body_seen(&mut up).await;
    assert!(seen <= 30, "the upstream got {seen} of 75 trickled bytes");
    assert_eq!(ended(task).await, Closed::BodyTimeout);
}
