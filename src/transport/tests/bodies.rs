//! Request bodies and heads against the clock and the re-check: `header_timeout`, `body_timeout`,
//! `min_body_rate` (408s on the paused clock), `max_body_bytes` on a chunked body (413), and an upload
//! cut when its token is revoked midway.

use crate::telemetry::connections::Closed;
use crate::transport::testing::{ended, Rig};
use std::time::Duration;
use tokio::time::Instant;

fn post_head(token: &crate::tokens::format::Token, length: usize) -> String {
    format!(
        "POST /up HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nContent-Length: {length}\r\n\r\n",
        token.as_str()
    )
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stalls_past_header_timeout_gets_408() {
    let rig = Rig::new("header_timeout = \"7s\"", "").await;
    let (mut client, task) = rig.connect();
    let started = Instant::now();
    client.send("GET /slow HTTP/1.1\r\nHost: h\r\n").await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 408);
    assert!(a.body_text().contains("request head"), "{}", a.body_text());
    assert!(
        started.elapsed() >= Duration::from_millis(6_990),
        "{:?}",
        started.elapsed()
    );
    assert!(client.closed().await);
    assert_eq!(ended(task).await, Closed::HeaderTimeout);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_past_body_timeout_gets_408_and_the_upstream_an_incomplete_request() {
    let rig = Rig::new("body_timeout = \"20s\"\nmin_body_rate = 0", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    let started = Instant::now();
    client
        .send(format!("{}0123456789", post_head(&token, 100_000)))
        .await;
    let mut up = rig.accept().await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 408);
    assert!(
        a.body_text().contains("not received in time"),
        "{}",
        a.body_text()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(19_990),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.field("connection"), Some("close"));
    assert_eq!(ended(task).await, Closed::BodyTimeout);
    // The upstream saw the head and ten bytes, then the connection went.
    let seen = up.drain().await;
    assert!(
        seen.ends_with(b"\r\n\r\n0123456789"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_slower_than_min_body_rate_gets_408_before_body_timeout() {
    let rig = Rig::new("body_timeout = \"60s\"\nmin_body_rate = 1000", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    let started = Instant::now();
    client
        .send(format!("{}0123456789", post_head(&token, 100_000)))
        .await;
    let _up = rig.accept().await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 408);
    assert!(
        a.body_text().contains("slower than 1000"),
        "{}",
        a.body_text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ended(task).await, Closed::BodyTimeout);
}

#[tokio::test(start_paused = true)]
async fn a_chunked_body_over_max_body_bytes_gets_413() {
    let rig = Rig::new("", "max_body_bytes = 8").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client
        .send(format!(
            "POST /up HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n",
            token.as_str()
        ))
        .await;
    let _up = rig.accept().await;
    client.send("5\r\nworld\r\n0\r\n\r\n").await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 413);
    assert!(
        a.body_text().contains("payload_too_large"),
        "{}",
        a.body_text()
    );
    assert_eq!(ended(task).await, Closed::Refused);
}

#[tokio::test(start_paused = true)]
async fn an_upload_is_cut_when_its_token_is_revoked_midway() {
    let rig = Rig::new("", "").await;
    let (id, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    let total = 1_000_000;
    client
        .send(format!("{}{}", post_head(&token, total), "a".repeat(1000)))
        .await;
    let mut up = rig.accept().await;
    let head_and_start = up.bytes(1000).await;
    assert!(!head_and_start.is_empty());
    client.send("b".repeat(1000)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    rig.revoke(id, &token);
    let a = client.response(false).await;
    assert_eq!(a.status(), 401);
    assert!(
        a.body_text().contains("while the request was being sent"),
        "{}",
        a.body_text()
    );
    assert_eq!(a.field("connection"), Some("close"));
    // The upstream never gets a complete request: its connection ends short of the body.
    let seen = 1000 + up.drain().await.len();
    assert!(seen < total, "the upstream got {seen} bytes of {total}");
    assert_eq!(ended(task).await, Closed::Refused);
}
