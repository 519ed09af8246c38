//! Keep-alive and pipelining on the client side, and the upstream connection kept between exchanges.

use crate::telemetry::connections::Closed;
use crate::transport::testing::{ended, get, Rig};

/// An upstream answer of `body` with a length.
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(start_paused = true)]
async fn two_requests_ride_one_client_connection_and_one_upstream_connection() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();

    client.send(get("/one", &token)).await;
    let mut up = rig.accept().await;
    let r1 = up.request().await.expect("first request");
    assert_eq!(r1.start, "GET /one HTTP/1.1");
    assert_eq!(r1.field("x-user-id"), Some("user1"));
    assert_eq!(
        r1.field("authorization"),
        None,
        "the credential is stripped"
    );
    up.send(ok("first")).await;
    let a1 = client.response(false).await;
    assert_eq!((a1.status(), a1.body_text().as_str()), (200, "first"));
    assert_ne!(a1.field("connection"), Some("close"));

    // The second request arrives on the same upstream connection (a new one would never be answered
    // here, and the gateway would answer 504 when its read timeout passes).
    client.send(get("/two", &token)).await;
    let r2 = up
        .request()
        .await
        .expect("second request on the kept connection");
    assert_eq!(r2.start, "GET /two HTTP/1.1");
    up.send(ok("second")).await;
    let a2 = client.response(false).await;
    assert_eq!((a2.status(), a2.body_text().as_str()), (200, "second"));

    drop(client);
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_are_each_authorized_and_answered_in_order() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (_, other) = rig.token(&[]);
    let forged = crate::tokens::format::Token::generate();
    // Three requests in one write: the middle one's token is unknown to the index, the third is
    // another user's. Each is decided on its own head.
    client_pipeline(
        &rig,
        &[get("/a", &token), get("/b", &forged), get("/c", &other)],
    )
    .await;
}

async fn client_pipeline(rig: &Rig, requests: &[String]) {
    let (mut client, task) = rig.connect();
    client.send(requests.concat()).await;
    let mut up = rig.accept().await;
    let first = up.request().await.expect("first");
    assert_eq!(first.start, "GET /a HTTP/1.1");
    assert_eq!(first.field("x-user-id"), Some("user1"));
    up.send(ok("a")).await;
    let third = up.request().await.expect("third");
    assert_eq!(
        third.start, "GET /c HTTP/1.1",
        "the refused request never went upstream"
    );
    assert_eq!(third.field("x-user-id"), Some("user2"));
    up.send(ok("c")).await;

    let a = client.response(false).await;
    assert_eq!((a.status(), a.body_text().as_str()), (200, "a"));
    let b = client.response(false).await;
    assert_eq!(b.status(), 401);
    assert!(b.body_text().contains("invalid_token"), "{}", b.body_text());
    assert_ne!(
        b.field("connection"),
        Some("close"),
        "a bodiless refusal keeps the connection"
    );
    let c = client.response(false).await;
    assert_eq!((c.status(), c.body_text().as_str()), (200, "c"));
    drop(client);
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn connection_close_from_the_client_ends_the_connection_after_the_answer() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client
        .send(format!(
            "GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
            token.as_str()
        ))
        .await;
    let mut up = rig.accept().await;
    up.request().await.expect("request");
    up.send(ok("bye")).await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 200);
    assert_eq!(a.field("connection"), Some("close"));
    assert!(client.closed().await, "the gateway closes after the answer");
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_connection_close_is_not_reused_but_the_client_connection_is() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(get("/one", &token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("request");
    up.send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        .await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 200);
    assert_ne!(
        a.field("connection"),
        Some("close"),
        "the client's connection is its own"
    );
    // The next request needs a new upstream connection.
    client.send(get("/two", &token)).await;
    let mut up2 = rig.accept().await;
    let r = up2.request().await.expect("on a new connection");
    assert_eq!(r.start, "GET /two HTTP/1.1");
    up2.send(ok("new")).await;
    assert_eq!(client.response(false).await.body_text(), "new");
    assert!(
        up.closed().await,
        "the first upstream connection was closed, not kept"
    );
    drop(client);
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn a_draining_gateway_ends_the_exchange_with_connection_close() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(get("/one", &token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("request");
    rig.engine
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    up.send(ok("last")).await;
    let a = client.response(false).await;
    assert_eq!((a.status(), a.body_text().as_str()), (200, "last"));
    assert_eq!(a.field("connection"), Some("close"));
    assert!(client.closed().await);
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn a_connection_over_the_per_address_limit_gets_429_and_is_closed() {
    let rig = Rig::new("", "").await;
    let (near, far) = tokio::io::duplex(64 * 1024);
    let mut client = crate::transport::testing::Wire::new(near);
    client.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    crate::transport::connection::Client::new(&rig.engine, far, None, None)
        .refuse_connection(crate::telemetry::connections::Refused::PerAddress)
        .await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 429);
    assert!(
        a.body_text().contains("too_many_connections"),
        "{}",
        a.body_text()
    );
    assert_eq!(a.field("connection"), Some("close"));
    assert_eq!(a.field("retry-after"), Some("1"));
}
