//! The relay's decisions: a retry on a reused upstream connection found closed (and none for a
//! request that is not safe to repeat), refusals that keep or close the client connection, an
//! upstream that sends more than it framed, and `max_in_flight_per_token`.

use crate::telemetry::connections::Closed;
use crate::transport::testing::{ended, get, Rig};

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(start_paused = true)]
async fn a_get_on_a_reused_connection_the_upstream_closed_is_retried_on_a_new_one() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(get("/one", &token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("first");
    up.send(ok("1")).await;
    assert_eq!(client.response(false).await.body_text(), "1");

    // The upstream takes the second request on the kept connection and closes without a byte of an
    // answer (as a server does whose idle timeout crossed the request).
    client.send(get("/two", &token)).await;
    assert_eq!(
        up.request().await.expect("second").start,
        "GET /two HTTP/1.1"
    );
    drop(up);
    let mut fresh = rig.accept().await;
    assert_eq!(
        fresh.request().await.expect("retried").start,
        "GET /two HTTP/1.1"
    );
    fresh.send(ok("2")).await;
    let a = client.response(false).await;
    assert_eq!((a.status(), a.body_text().as_str()), (200, "2"));
    drop(client);
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn a_post_on_a_reused_connection_the_upstream_closed_is_not_sent_twice() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(get("/one", &token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("first");
    up.send(ok("1")).await;
    client.response(false).await;

    client
        .send(format!(
            "POST /pay HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nContent-Length: 3\r\n\r\nabc",
            token.as_str()
        ))
        .await;
    assert_eq!(up.request().await.expect("post").body, b"abc");
    drop(up);
    let a = client.response(false).await;
    assert_eq!(a.status(), 502);
    assert!(a.body_text().contains("bad_gateway"), "{}", a.body_text());
    assert!(!rig.pending_connection(), "the POST was not sent again");
    assert_eq!(
        a.field("connection"),
        Some("close"),
        "a request with a body closes"
    );
    assert_eq!(ended(task).await, Closed::Upstream);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_sends_more_than_it_framed_is_not_reused() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(get("/one", &token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("first");
    // A smuggled second response after the framed one.
    up.send(format!("{}{}", ok("1"), ok("smuggled"))).await;
    assert_eq!(client.response(false).await.body_text(), "1");
    client.send(get("/two", &token)).await;
    let mut fresh = rig.accept().await;
    fresh.request().await.expect("on a new connection");
    fresh.send(ok("2")).await;
    assert_eq!(client.response(false).await.body_text(), "2");
    assert!(
        up.closed().await,
        "the connection with stray bytes was dropped"
    );
    drop(client);
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_with_a_body_still_unread_closes_the_connection() {
    let rig = Rig::new("", "").await;
    let (mut client, task) = rig.connect();
    // No credential, and only 10 of the 100,000 body bytes sent: the gateway never reads the rest.
    client
        .send("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 401);
    assert_eq!(a.field("connection"), Some("close"));
    // Lingering close: up to a second of reading and dropping, on the paused clock.
    assert!(client.closed().await);
    assert_eq!(ended(task).await, Closed::Refused);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_whose_body_is_already_read_keeps_the_connection() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client
        .send("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 401);
    assert_ne!(a.field("connection"), Some("close"));
    // The body was skipped, not read as the next head.
    client.send(get("/next", &token)).await;
    let mut up = rig.accept().await;
    assert_eq!(
        up.request().await.expect("next").start,
        "GET /next HTTP/1.1"
    );
    up.send(ok("n")).await;
    assert_eq!(client.response(false).await.body_text(), "n");
    drop(client);
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn a_token_over_max_in_flight_per_token_gets_429_until_its_request_ends() {
    let rig = Rig::new("max_in_flight_per_token = 1", "").await;
    let (_, token) = rig.token(&[]);
    let (_, other) = rig.token(&[]);
    let (mut first, first_task) = rig.connect();
    first.send(get("/slow", &token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("held");

    // While the first request is in flight, the same token on another connection is refused...
    let (mut second, second_task) = rig.connect();
    second.send(get("/again", &token)).await;
    let refused = second.response(false).await;
    assert_eq!(refused.status(), 429);
    assert!(
        refused.body_text().contains("concurrency_limited"),
        "{}",
        refused.body_text()
    );
    // ...and another token is not.
    let (mut third, third_task) = rig.connect();
    third.send(get("/other", &other)).await;
    let mut up3 = rig.accept().await;
    up3.request().await.expect("other token");
    up3.send(ok("other")).await;
    assert_eq!(third.response(false).await.status(), 200);
    // Its upstream connection goes (closed idle, so the next exchange takes the first one's).
    drop(up3);

    up.send(ok("slow")).await;
    assert_eq!(first.response(false).await.status(), 200);
    // The slot is given back with the exchange.
    second.send(get("/again", &token)).await;
    let r = if let Some(r) = up.request().await {
        up.send(ok("again")).await;
        r
    } else {
        panic!("the kept upstream connection was closed");
    };
    assert_eq!(r.start, "GET /again HTTP/1.1");
    assert_eq!(second.response(false).await.status(), 200);
    drop((first, second, third));
    for t in [first_task, second_task, third_task] {
        assert_eq!(ended(t).await, Closed::Done);
    }
}
