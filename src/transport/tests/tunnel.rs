//! WebSocket tunnels: the 101 that completes the client's handshake opens one, bytes flow both ways,
//! and the re-check closes it when its token is revoked; a 101 with the wrong accept opens none.

use crate::telemetry::connections::Closed;
use crate::tokens::format::Token;
use crate::transport::testing::{ended, Rig};
use tokio::io::AsyncWriteExt;

/// RFC 6455's sample key and the accept derived from it.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn upgrade(token: &Token) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n",
        token.as_str()
    )
}

fn switching(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_relays_both_ways_and_closes_when_its_token_is_revoked() {
    let rig = Rig::new("", "websocket = true").await;
    let (id, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(upgrade(&token)).await;
    let mut up = rig.accept().await;
    let r = up.request().await.expect("upgrade request");
    assert_eq!(r.field("upgrade"), Some("websocket"));
    assert_eq!(r.field("authorization"), None);
    up.send(switching(ACCEPT)).await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 101);

    client.send("ping").await;
    assert_eq!(up.bytes(4).await, b"ping");
    up.send("pong").await;
    assert_eq!(client.bytes(4).await, b"pong");

    // Ticks pass on the paused clock while nothing moves; the tunnel stays open.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    client.send("still").await;
    assert_eq!(up.bytes(5).await, b"still");

    let revoked_at = tokio::time::Instant::now();
    rig.revoke(id, &token);
    assert!(
        client.closed().await,
        "the client's side of the tunnel is closed"
    );
    assert!(
        up.closed().await,
        "the upstream's side of the tunnel is closed"
    );
    assert!(
        revoked_at.elapsed() <= crate::transport::tunnel::CHECK * 2,
        "closed at the next re-check, not later: {:?}",
        revoked_at.elapsed()
    );
    assert_eq!(ended(task).await, Closed::Tunnel);
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_whose_upstream_stopped_reading_still_closes_on_revoke() {
    let rig = Rig::new("", "websocket = true").await;
    let (id, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(upgrade(&token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("upgrade request");
    up.send(switching(ACCEPT)).await;
    assert_eq!(client.response(false).await.status(), 101);
    // The client floods (16 MiB, more than loopback socket buffers hold) while the upstream reads
    // nothing: the gateway's write to it gets stuck, and the tick must still run.
    let flood = vec![b'x'; 16 << 20];
    let writer = tokio::spawn(async move {
        let _ = client.io.write_all(&flood).await;
        client
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    rig.revoke(id, &token);
    assert_eq!(ended(task).await, Closed::Tunnel);
    let _client = writer.await.unwrap();
    drop(up);
}

#[tokio::test(start_paused = true)]
async fn a_101_with_the_wrong_accept_opens_no_tunnel() {
    let rig = Rig::new("", "websocket = true").await;
    let (_, token) = rig.token(&[]);
    let (mut client, task) = rig.connect();
    client.send(upgrade(&token)).await;
    let mut up = rig.accept().await;
    up.request().await.expect("upgrade request");
    up.send(switching("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")).await;
    let a = client.response(false).await;
    assert_eq!(a.status(), 502);
    assert_eq!(a.field("connection"), Some("close"));
    assert!(client.closed().await);
    assert!(up.closed().await, "the upstream connection is dropped");
    assert_eq!(ended(task).await, Closed::Upstream);
}
