//! Framing on both sides: request bodies by length and chunked (re-encoded for the upstream), and
//! responses by length, chunked (re-encoded, or decoded for an HTTP/1.0 client) and by close; HEAD.

use crate::telemetry::connections::Closed;
use crate::transport::testing::{ended, get, Rig};

#[tokio::test(start_paused = true)]
async fn a_length_body_split_across_writes_reaches_the_upstream_whole() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    let body = "x".repeat(40_000);
    client
        .send(format!(
            "POST /up HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{}",
            token.as_str(),
            body.len(),
            &body[..1000]
        ))
        .await;
    let mut up = rig.accept().await;
    client.send(&body[1000..]).await;
    let r = up.request().await.expect("request");
    assert_eq!(r.field("content-length"), Some("40000"));
    assert_eq!(r.body, body.as_bytes());
    up.send("HTTP/1.1 204 No Content\r\n\r\n").await;
    assert_eq!(client.response(false).await.status(), 204);
    // Both connections stay usable.
    client.send(get("/next", &token)).await;
    assert_eq!(
        up.request().await.expect("next").start,
        "GET /next HTTP/1.1"
    );
    up.send("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(client.response(false).await.status(), 200);
    drop(client);
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn a_chunked_request_body_is_re_encoded_without_extensions_or_trailers() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client
        .send(format!(
            "POST /c HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;name=value\r\nhello\r\n",
            token.as_str()
        ))
        .await;
    let mut up = rig.accept().await;
    // The rest arrives later, in two pieces that split a chunk.
    client.send("6\r\n wor").await;
    client.send("ld\r\n0\r\nX-Trailer: t\r\n\r\n").await;
    let r = up.request().await.expect("request");
    assert!(r.chunked, "sent on chunked");
    assert_eq!(r.field("content-length"), None);
    assert_eq!(r.body, b"hello world");
    let raw = String::from_utf8(r.raw_body.clone()).unwrap();
    assert!(
        !raw.contains("name=value"),
        "chunk extensions are dropped: {raw:?}"
    );
    assert!(!raw.contains("X-Trailer"), "trailers are dropped: {raw:?}");
    up.send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await;
    assert_eq!(client.response(false).await.body_text(), "ok");
    drop(client);
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn a_chunked_response_is_re_encoded_for_an_http11_client_and_the_connection_kept() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(get("/c", &token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("request");
    up.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n")
        .await;
    up.send("2\r\nde\r\n0\r\nX-T: 1\r\n\r\n").await;
    let a = client.response(false).await;
    assert!(a.chunked);
    assert_eq!(a.body, b"abcde");
    let raw = String::from_utf8(a.raw_body.clone()).unwrap();
    assert!(!raw.contains("ext=1"), "{raw:?}");
    assert_ne!(a.field("connection"), Some("close"));
    client.send(get("/again", &token)).await;
    up.request().await.expect("kept upstream connection");
    up.send("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")
        .await;
    assert_eq!(client.response(false).await.body_text(), "z");
    drop(client);
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn a_chunked_response_is_decoded_for_an_http10_client_whose_connection_ends_it() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client
        .send(format!(
            "GET /old HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\nAuthorization: Bearer {}\r\n\r\n",
            token.as_str()
        ))
        .await;
    let mut up = rig.accept().await;
    up.request().await.expect("request");
    up.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nold!\r\n0\r\n\r\n")
        .await;
    let a = client.response(false).await;
    assert!(!a.chunked, "HTTP/1.0 knows no chunked coding");
    assert_eq!(a.field("content-length"), None);
    assert_eq!(a.body, b"old!", "read up to the close");
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn a_close_delimited_response_is_relayed_to_its_end_and_closes_the_client() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(get("/stream", &token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("request");
    up.send("HTTP/1.1 200 OK\r\n\r\nfirst ").await;
    up.send("second").await;
    drop(up);
    let a = client.response(false).await;
    assert_eq!(a.body_text(), "first second");
    assert_eq!(a.field("connection"), Some("close"));
    assert_eq!(ended(task).await, Closed::Done);
}

#[tokio::test(start_paused = true)]
async fn a_head_answer_carries_no_body_and_keeps_the_connection() {
    let rig = Rig::new("", "").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client
        .send(format!(
            "HEAD /h HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\n\r\n",
            token.as_str()
        ))
        .await;
    let mut up = rig.accept().await;
    assert_eq!(
        up.request().await.expect("request").start,
        "HEAD /h HTTP/1.1"
    );
    up.send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        .await;
    let a = client.response(true).await;
    assert_eq!((a.status(), a.field("content-length")), (200, Some("5")));
    // Had the gateway waited for five body bytes, or relayed any, the next exchange would break.
    client.send(get("/after", &token)).await;
    assert_eq!(
        up.request().await.expect("next").start,
        "GET /after HTTP/1.1"
    );
    up.send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
        .await;
    assert_eq!(client.response(false).await.body_text(), "next");
    // A refused HEAD gets the head alone too.
    client.send("HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let refused = client.response(true).await;
    assert_eq!(refused.status(), 401);
    assert!(refused.field("content-length").is_some());
    client.send(get("/last", &token)).await;
    up.request().await.expect("last");
    up.send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast")
        .await;
    assert_eq!(client.response(false).await.body_text(), "last");
    drop(client);
    assert_eq!(ended(task).await, Closed::Done);
}
