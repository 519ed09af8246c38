//! A CLI revoke on the gateway's host is honoured by the very next request after the CLI returns: the CLI
//! waits until every running gateway on the host has applied the change (`tokens::applied`). Measured here
//! over real processes: many revokes, each followed at once by a request with the revoked token on a
//! keep-alive connection — none may get through.

mod common;

use common::*;
use serde_json::json;

#[test]
fn the_first_request_after_a_cli_revoke_is_refused() {
    let up = Upstream::start("api");
    let gw = GatewayBuilder::new()
        .route("api", "/api", up.addr())
        .start();
    let (_, admin) = gw.create_token_with("ops", "ops", &["--scope", "admin"]);
    gw.wait_status("/api/x", &admin, 200);
    let auth = bearer(&admin);
    const N: usize = 300;
    let tokens: Vec<(i64, String)> = (0..N)
        .map(|i| {
            let body = json!({"user": "dev", "label": format!("d{i}")}).to_string();
            let r = raw_http(
                gw.admin_addr(),
                &build_request(
                    "POST",
                    "/api/tokens",
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                ),
            );
            assert_eq!(r.status, 201, "{r}");
            let v = r.json();
            (
                v["id"].as_i64().unwrap(),
                v["token"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut conn = gw.connect();
    let mut accepted = Vec::new();
    for (id, token) in &tokens {
        let r = conn
            .roundtrip(&keepalive_request(
                "GET",
                "/api/x",
                &[("Authorization", &bearer(token))],
                b"",
            ))
            .unwrap();
        assert_eq!(r.status, 200, "{r}");
        gw.revoke(*id);
        let r = conn
            .roundtrip(&keepalive_request(
                "GET",
                "/api/x",
                &[("Authorization", &bearer(token))],
                b"",
            ))
            .unwrap();
        if r.status != 401 {
            accepted.push(*id);
        }
    }
    assert!(
        accepted.is_empty(),
        "{} of {N} revoked tokens were still accepted: {accepted:?}",
        accepted.len()
    );
}
