//! Revoked and expired tokens leave the index after `[gateway] revoked_retention`, over real sockets
//! against the real binary: the index (`/healthz` `tokens_indexed`) shrinks back, and such a token answers
//! as an unknown one — still 401, never let through.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn revoked_and_expired_tokens_leave_the_index_after_the_retention() {
    let up = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .gateway("revoked_retention", "\"2s\"")
        .route("api", "/api", up.addr())
        .start();
    let (_, keep) = gw.create_token("alice", "kept");
    let revoked: Vec<(i64, String)> = (0..20)
        .map(|i| gw.create_token("mallory", &format!("churn {i}")))
        .collect();
    let (_, short) = gw.create_token_with("bob", "short", &["--expires-in", "1s"]);
    gw.wait_ok("/api/x", &revoked[19].1);
    assert_eq!(gw.health()["tokens_indexed"], 22);
    for (id, _) in &revoked {
        gw.revoke(*id);
    }
    let r = gw.wait_status("/api/x", &revoked[19].1, 401);
    assert!(r.text().contains("revoked"), "{r}");
    // Within the retention, still known as revoked; after it, forgotten.
    let ok = poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
        gw.health()["tokens_indexed"] == 1
    });
    assert!(ok, "index never shrank: {}", gw.health());
    for (_, token) in &revoked {
        let r = gw.get_with_token("/api/x", token);
        assert_eq!(r.status, 401, "{r}");
        assert_eq!(r.json_error(), "invalid_token");
        assert!(r.text().contains("not valid"), "{r}");
    }
    let r = gw.get_with_token("/api/x", &short);
    assert_eq!(
        (r.status, r.json_error()),
        (401, "invalid_token".into()),
        "{r}"
    );
    assert_eq!(gw.get_with_token("/api/x", &keep).status, 200);
    // mallory got through once, before the revoke (the warm-up); never after, known or forgotten.
    let mallory = up
        .requests()
        .iter()
        .filter(|r| r.single_header("x-user-id") == "mallory")
        .count();
    assert_eq!(mallory, 1);
    // The store keeps them all: listings and events are unaffected.
    assert_eq!(gw.token_list().len(), 22);
}

#[test]
fn a_retention_under_one_second_is_a_config_error() {
    let out = GatewayBuilder::new()
        .gateway("revoked_retention", "\"0s\"")
        .route("api", "/api", refused_addr())
        .build()
        .cli(&["check-config"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.revoked_retention"), "{err}");
}
