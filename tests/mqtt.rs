//! MQTT brokers on the same tokens: the verify listener's `/mqtt/authn`, `/mqtt/authz` (EMQX 5's HTTP
//! authenticator and authorizer, mosquitto-go-auth's HTTP backend in status mode) and the revocation
//! feed, against the real binary over real sockets, asked the way the brokers ask.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Broker {
    gw: Gateway,
    verify: SocketAddr,
}

fn start(mqtt: &[(&str, &str)]) -> Broker {
    let verify = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut b = GatewayBuilder::new()
        .section("verify", "listen", &format!("\"{verify}\""))
        .section("verify", "trusted_proxies", "[\"127.0.0.1/32\"]")
        .section(
            "mqtt",
            "topics",
            r#"[
  { pattern = "hives/{user_id}/+/telemetry", action = "publish", required_scope = "telemetry:write" },
  { pattern = "commands/{user_id}/#", action = "subscribe" },
  { pattern = "status/{user_id}/+", action = "subscribe" },
]"#,
        )
        .route("iot", "/iot", refused_addr());
    for (k, v) in mqtt {
        b = b.section("mqtt", k, v);
    }
    Broker {
        gw: b.start(),
        verify,
    }
}

impl Broker {
    fn post(&self, path: &str, body: &Value) -> RawResponse {
        raw_http(
            self.verify,
            &build_request(
                "POST",
                path,
                &[("Content-Type", "application/json")],
                body.to_string().as_bytes(),
            ),
        )
    }

    fn authn(&self, username: &str, password: &str, clientid: &str) -> RawResponse {
        self.post(
            "/mqtt/authn",
            &json!({"username": username, "password": password, "clientid": clientid}),
        )
    }

    fn authz(&self, clientid: &str, topic: &str, action: &str) -> String {
        let r = self.post(
            "/mqtt/authz",
            &json!({"username": "whoever", "clientid": clientid, "topic": topic, "action": action}),
        );
        assert_eq!(r.status, 200, "{r}");
        r.json()["result"].as_str().unwrap().to_owned()
    }

    fn wait_allowed(&self, username: &str, token: &str, clientid: &str) -> Value {
        let mut last = None;
        let ok = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
            let r = self.authn(username, token, clientid);
            let allowed = r.status == 200 && r.json()["result"] == "allow";
            last = Some(r);
            allowed
        });
        let last = last.unwrap();
        assert!(ok, "never allowed: {last}");
        last.json()
    }
}

#[test]
fn authn_allows_valid_tokens_and_denies_revoked_expired_and_unknown_ones() {
    let b = start(&[]);
    let (id, token) = b.gw.create_token("alice", "hive-1");
    let v = b.wait_allowed("anything", &token, "hive-1");
    assert_eq!(v["is_superuser"], false);
    assert_eq!(
        v["client_attrs"],
        json!({"user_id": "alice", "token_id": id.to_string()})
    );
    assert!(v.get("expire_at").is_none(), "no expiry, no expire_at");
    // A token with an expiry says when; once expired it is denied.
    let (_, expiring) =
        b.gw.create_token_with("alice", "t", &["--expires-in", "2s"]);
    let v = b.wait_allowed("x", &expiring, "hive-2");
    let expire_at = v["expire_at"].as_u64().expect("expire_at");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expire_at > now && expire_at <= now + 3,
        "{expire_at} vs {now}"
    );
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        b.authn("x", &expiring, "hive-2").json()["result"] == "deny"
    });
    assert!(ok, "the expired token was still allowed");
    // Unknown, malformed, empty.
    for password in ["tg_nope", "", "Bearer x"] {
        let r = b.authn("x", password, "c");
        assert_eq!(
            (r.status, r.json()["result"].as_str()),
            (200, Some("deny")),
            "{password:?}"
        );
        assert!(r.json().get("client_attrs").is_none());
    }
    // Revoked: denied, and the client it let in is denied everything from then on.
    assert_eq!(b.authz("hive-1", "commands/alice/x", "subscribe"), "allow");
    b.gw.revoke(id);
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        b.authn("x", &token, "hive-1").json()["result"] == "deny"
    });
    assert!(ok, "the revoked token was still allowed");
    assert_eq!(b.authz("hive-1", "commands/alice/x", "subscribe"), "deny");
    let m = b.gw.metrics();
    assert!(
        metric_sum(
            &m,
            "tokengate_verify_answers_total",
            &["door=\"mqtt_authn\"", "outcome=\"allow\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "tokengate_verify_answers_total",
            &["door=\"mqtt_authn\"", "outcome=\"deny\""]
        ) >= 3.0
    );
    assert!(
        metric_sum(
            &m,
            "tokengate_verify_answers_total",
            &["door=\"mqtt_authz\"", "outcome=\"deny\""]
        ) >= 1.0
    );
}

#[test]
fn topic_rules_never_let_one_user_reach_anothers_topics() {
    let b = start(&[]);
    let (_, alice) =
        b.gw.create_token_with("alice", "t", &["--scope", "telemetry:write"]);
    let (_, bob) =
        b.gw.create_token_with("bob", "t", &["--scope", "telemetry:write"]);
    b.wait_allowed("alice", &alice, "a1");
    b.wait_allowed("bob", &bob, "b1");
    assert_eq!(
        b.authz("a1", "hives/alice/h1/telemetry", "publish"),
        "allow"
    );
    assert_eq!(b.authz("b1", "hives/bob/h1/telemetry", "publish"), "allow");
    for (topic, action) in [
        ("hives/bob/h1/telemetry", "publish"),
        ("hives/+/h1/telemetry", "publish"),
        ("hives/alice/+/telemetry", "publish"),
        ("hives/#", "subscribe"),
        ("hives/+/h1/telemetry", "subscribe"),
        ("commands/bob/x", "subscribe"),
        ("commands/+/x", "subscribe"),
        ("commands/#", "subscribe"),
        ("#", "subscribe"),
        ("+/alice/x", "subscribe"),
        ("commands/alice/x", "publish"),
        ("hives/alice/h1/telemetry", "subscribe"),
        ("hives/alice/h1/telemetry/extra", "publish"),
        ("hives/alice/h1/telemetry#", "publish"),
        ("commands/alice/#/x", "subscribe"),
        ("status/alice/#", "subscribe"),
        ("status/+", "subscribe"),
        ("status/bob/x", "subscribe"),
    ] {
        assert_eq!(b.authz("a1", topic, action), "deny", "{topic} {action}");
    }
    assert_eq!(b.authz("a1", "commands/alice/#", "subscribe"), "allow");
    assert_eq!(
        b.authz("a1", "commands/alice/+/reboot", "subscribe"),
        "allow"
    );
    assert_eq!(b.authz("a1", "status/alice/+", "subscribe"), "allow");
    assert_eq!(b.authz("a1", "status/alice/x", "subscribe"), "allow");
    // The client id and the username are never the user: names made of topic syntax change nothing.
    for clientid in ["bob", "a1/../b1", "+", "#", "b1/+"] {
        assert_eq!(
            b.authz(clientid, "commands/bob/x", "subscribe"),
            "deny",
            "{clientid}"
        );
    }
    let r = b.authn("bob/+/#", &alice, "alice/#");
    assert_eq!(r.json()["client_attrs"]["user_id"], "alice");
    assert_eq!(b.authz("alice/#", "commands/alice/x", "subscribe"), "allow");
    assert_eq!(b.authz("alice/#", "commands/bob/x", "subscribe"), "deny");
    // A broker attribute that disagrees with what this node authenticated: deny.
    let r = b.post(
        "/mqtt/authz",
        &json!({"clientid": "a1", "user_id": "bob", "topic": "commands/bob/x", "action": "subscribe"}),
    );
    assert_eq!(r.json()["result"], "deny");
    // A user id that holds topic syntax never fills {user_id}.
    let (_, odd) = b.gw.create_token("x/+", "t");
    b.wait_allowed("u", &odd, "odd");
    for topic in ["commands/x/+/y", "commands/x/#", "commands/x"] {
        assert_eq!(b.authz("odd", topic, "subscribe"), "deny", "{topic}");
    }
}

#[test]
fn username_must_be_the_user_and_status_mode_answers_by_status() {
    let b = start(&[
        ("mqtt_username", "\"user_id\""),
        ("mqtt_mode", "\"status\""),
    ]);
    let (_, token) =
        b.gw.create_token_with("carol", "t", &["--scope", "telemetry:write"]);
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        b.authn("carol", &token, "c1").status == 200
    });
    assert!(ok);
    assert_eq!(b.authn("dave", &token, "c2").status, 403, "wrong user");
    assert_eq!(b.authn("", &token, "c2").status, 403);
    assert_eq!(b.authn("carol", "tg_nope", "c2").status, 403);
    // mosquitto-go-auth's /acl: acc 1 read, 2 write, 3 both, 4 subscribe.
    let acl = |clientid: &str, username: &str, topic: &str, acc: u8| {
        b.post(
            "/mqtt/authz",
            &json!({"username": username, "clientid": clientid, "topic": topic, "acc": acc}),
        )
        .status
    };
    assert_eq!(acl("c1", "carol", "hives/carol/h/telemetry", 2), 200);
    assert_eq!(acl("c1", "carol", "hives/carol/h/telemetry", 4), 403);
    assert_eq!(acl("c1", "carol", "hives/carol/h/telemetry", 3), 403);
    assert_eq!(acl("c1", "carol", "commands/carol/x", 1), 200);
    assert_eq!(acl("c1", "carol", "commands/carol/x", 4), 200);
    assert_eq!(
        acl("c1", "dave", "commands/dave/x", 4),
        403,
        "a username that is not the session's user"
    );
    // Without a session here (another node authenticated it), the username is the user, and rules
    // that require a scope do not apply.
    assert_eq!(acl("elsewhere", "dave", "commands/dave/x", 4), 200);
    assert_eq!(acl("elsewhere", "dave", "commands/carol/x", 4), 403);
    assert_eq!(acl("elsewhere", "dave", "hives/dave/h/telemetry", 2), 403);
}

#[test]
fn bodies_over_16_kib_or_not_json_are_400() {
    let b = start(&[]);
    for path in ["/mqtt/authn", "/mqtt/authz"] {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            b"{\"password\": 5, \"topic\": 5}",
            b"",
        ] {
            let r = raw_http(b.verify, &build_request("POST", path, &[], body));
            assert_eq!(r.status, 400, "{path} {body:?}: {r}");
            assert_eq!(r.json_error(), "invalid_request");
        }
        let big = format!(
            r#"{{"username":"{}","password":"x"}}"#,
            "a".repeat(16 * 1024)
        );
        let r = raw_http(b.verify, &build_request("POST", path, &[], big.as_bytes()));
        assert_eq!(r.status, 400, "{r}");
        let r = raw_http(b.verify, &build_request("GET", path, &[], b""));
        assert_eq!(r.status, 405);
    }
    let m = b.gw.metrics();
    assert!(
        metric_sum(
            &m,
            "tokengate_verify_answers_total",
            &["outcome=\"bad_request\""]
        ) >= 10.0,
        "{m}"
    );
}

#[test]
fn the_revocation_feed_names_the_clients_to_kick() {
    let b = start(&[]);
    let (id, token) = b.gw.create_token("erin", "t");
    let (_, other) = b.gw.create_token("erin", "t2");
    b.wait_allowed("x", &token, "dev-1");
    b.wait_allowed("x", &other, "dev-2");
    let feed = |query: &str| {
        let r = raw_http(
            b.verify,
            &build_request("GET", &format!("/mqtt/revoked?{query}"), &[], b""),
        );
        assert_eq!(r.status, 200, "{r}");
        r.json()
    };
    let now = feed("since=0&wait=0");
    assert_eq!(now["revoked"], json!([]));
    let rev = now["rev"].as_i64().unwrap();
    // A long poll answers as soon as a revocation arrives.
    let verify = b.verify;
    let poll = std::thread::spawn(move || {
        let t = Instant::now();
        let r = raw_http(
            verify,
            &build_request(
                "GET",
                &format!("/mqtt/revoked?since={rev}&wait=30"),
                &[],
                b"",
            ),
        );
        (r.json(), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    b.gw.revoke(id);
    let (got, took) = poll.join().unwrap();
    assert!(
        took < Duration::from_secs(25),
        "the long poll waited out its time"
    );
    let list = got["revoked"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{got}");
    assert_eq!(list[0]["clientid"], "dev-1");
    assert_eq!(list[0]["token_id"], id);
    assert_eq!(list[0]["user_id"], "erin");
    let next = got["rev"].as_i64().unwrap();
    assert!(next > rev);
    // From the new revision on, nothing more (the other client's token is still valid).
    assert_eq!(feed(&format!("since={next}&wait=0"))["revoked"], json!([]));
    for bad in ["", "since=x", "since=-1", "since=1&wait=61"] {
        let r = raw_http(
            b.verify,
            &build_request("GET", &format!("/mqtt/revoked?{bad}"), &[], b""),
        );
        assert_eq!(r.status, 400, "{bad}");
    }
}
