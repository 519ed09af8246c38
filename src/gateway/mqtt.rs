//! MQTT brokers on the same tokens: the answers to EMQX 5's HTTP authenticator and authorizer and to
//! mosquitto-go-auth's HTTP backend (`[mqtt] mqtt_mode`), and the revocation feed that lets a broker
//! kick a device whose token was revoked.
//!
//! - **authn** (`{"username","password","clientid"}`): the token is the password; the same token rules
//!   as every request (unknown, revoked, rotated out, expired, certificate-bound — an MQTT client
//!   presents no certificate here, so a bound token is refused). With `mqtt_username = "user_id"` the
//!   username must be the token's user. An allowed client is remembered by its client id (the
//!   session), so that authorization and the feed go by the token this node authenticated.
//! - **authz** (`{"username","clientid","topic","action"|"acc"}`): `[[mqtt.topics]]` rules, where
//!   `{user_id}` is the authenticated user: the session's, else the broker's `user_id` client attribute,
//!   else (with `mqtt_username = "user_id"`) the username. A session whose token is no longer valid
//!   is denied everything. A requested filter with `+`/`#` is allowed only when every topic it could
//!   match is covered by a rule.
//!
//! Pure apart from the session map (a lock-free map, bounded): no I/O.

use super::auth;
use crate::config::verify::{MqttConfig, MqttMode, MqttUsername, TopicAction, USER_ID_PLACEHOLDER};
use crate::config::Roles;
use crate::tokens::format::Digest;
use crate::tokens::index::Index;
use serde::Deserialize;
use std::sync::Arc;

/// The most client ids remembered; beyond, new clients are authenticated but not remembered (their
/// authorization then goes by the broker's `user_id` attribute).
pub const MAX_SESSIONS: usize = 1_000_000;

/// What this node authenticated for a client id.
#[derive(Clone)]
struct Session {
    digest: Digest,
    user: Box<str>,
}

/// One answer to a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttAnswer {
    pub status: u16,
    pub body: Vec<u8>,
    /// `allow`, `deny` or `bad_request` (metrics).
    pub outcome: &'static str,
}

/// One revoked token in the feed, with the client ids this node let in with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Revoked {
    pub clientid: String,
    pub token_id: i64,
    pub user_id: String,
    pub rev: i64,
}

/// The MQTT side of the verify listener.
pub struct Mqtt {
    config: MqttConfig,
    /// Per rule: the roles that grant its `required_scope`.
    granting: Vec<Box<[Box<str>]>>,
    index: Arc<Index>,
    sessions: papaya::HashMap<Box<str>, Session>,
}

#[derive(Deserialize)]
struct AuthnBody {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    clientid: Option<String>,
}

#[derive(Deserialize)]
struct AuthzBody {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    clientid: Option<String>,
    topic: String,
    #[serde(default)]
    action: Option<String>,
    /// mosquitto-go-auth: 1 read, 2 write, 3 read and write, 4 subscribe.
    #[serde(default)]
    acc: Option<u8>,
    /// The `user_id` client attribute, passed back by the broker.
    #[serde(default)]
    user_id: Option<String>,
}

/// What a client asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wants {
    publish: bool,
    subscribe: bool,
}

impl Mqtt {
    pub fn new(config: &MqttConfig, roles: &Roles, index: Arc<Index>) -> Mqtt {
        Mqtt {
            granting: config
                .topics
                .iter()
                .map(|t| {
                    t.required_scope
                        .as_deref()
                        .map(|s| super::routes::granting(roles, s))
                        .unwrap_or_default()
                })
                .collect(),
            config: config.clone(),
            index,
            sessions: papaya::HashMap::new(),
        }
    }

    fn answer(&self, allow: bool, extra: serde_json::Value) -> MqttAnswer {
        let mut body = serde_json::json!({ "result": if allow { "allow" } else { "deny" } });
        if allow {
            if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
        }
        let status = match (self.config.mode, allow) {
            (MqttMode::Status, false) => 403,
            _ => 200,
        };
        MqttAnswer {
            status,
            body: body.to_string().into_bytes(),
            outcome: if allow { "allow" } else { "deny" },
        }
    }

    /// `POST /mqtt/authn` (mosquitto-go-auth's `/user`).
    pub fn authn(&self, body: &[u8], now: u64) -> MqttAnswer {
        let b: AuthnBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(_) => return bad_request("the body is not the JSON object expected"),
        };
        let deny = || self.answer(false, serde_json::Value::Null);
        let Some(password) = b.password.as_deref().filter(|p| !p.is_empty()) else {
            return deny();
        };
        let Ok(digest) = auth::digest(password) else {
            return deny();
        };
        let Ok(entry) =
            auth::authorize_digest(&self.index, &digest, auth::Requirements::NONE, None, now)
        else {
            return deny();
        };
        if self.config.username == MqttUsername::UserId
            && b.username.as_deref() != Some(entry.user())
        {
            return deny();
        }
        entry.record_use(now);
        if let Some(id) = b.clientid.as_deref().filter(|c| !c.is_empty()) {
            let sessions = self.sessions.pin();
            if sessions.len() < MAX_SESSIONS || sessions.contains_key(id) {
                sessions.insert(
                    id.into(),
                    Session {
                        digest,
                        user: entry.user().into(),
                    },
                );
            }
        }
        let mut extra = serde_json::json!({
            "is_superuser": false,
            "client_attrs": {"user_id": entry.user(), "token_id": entry.token_id.to_string()},
        });
        if entry.expires_at != u64::MAX {
            extra["expire_at"] = entry.expires_at.into();
        }
        self.answer(true, extra)
    }

    /// `POST /mqtt/authz` (mosquitto-go-auth's `/acl`).
    pub fn authz(&self, body: &[u8], now: u64) -> MqttAnswer {
        let b: AuthzBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(_) => return bad_request("the body is not the JSON object expected"),
        };
        let wants = match (b.action.as_deref(), b.acc) {
            (Some("publish"), None) => Wants {
                publish: true,
                subscribe: false,
            },
            (Some("subscribe"), None) => Wants {
                publish: false,
                subscribe: true,
            },
            (None, Some(1 | 4)) => Wants {
                publish: false,
                subscribe: true,
            },
            (None, Some(2)) => Wants {
                publish: true,
                subscribe: false,
            },
            (None, Some(3)) => Wants {
                publish: true,
                subscribe: true,
            },
            _ => return bad_request("give action (publish, subscribe) or acc (1, 2, 3, 4)"),
        };
        let deny = self.answer(false, serde_json::Value::Null);
        // Who is asking: the session this node authenticated, checked against the token as it is now.
        let session = b
            .clientid
            .as_deref()
            .and_then(|c| self.sessions.pin().get(c).cloned());
        let mut entry = None;
        let user: String = match &session {
            Some(s) => match auth::authorize_digest(
                &self.index,
                &s.digest,
                auth::Requirements::NONE,
                None,
                now,
            ) {
                Ok(e) => {
                    entry = Some(e);
                    s.user.to_string()
                }
                Err(_) => return deny,
            },
            None => match (&b.user_id, self.config.username, &b.username) {
                (Some(u), _, _) if !u.is_empty() => u.clone(),
                (_, MqttUsername::UserId, Some(u)) if !u.is_empty() => u.clone(),
                _ => return deny,
            },
        };
        // Two answers to "who": refused, not resolved.
        if b.user_id
            .as_deref()
            .is_some_and(|u| !u.is_empty() && u != user)
            || (self.config.username == MqttUsername::UserId
                && b.username.as_deref().is_some_and(|u| u != user))
        {
            return deny;
        }
        if !valid_filter(&b.topic) || (wants.publish && b.topic.contains(['+', '#'])) {
            return deny;
        }
        let allowed = |action: TopicAction| {
            self.config.topics.iter().enumerate().any(|(i, rule)| {
                (rule.action == action || rule.action == TopicAction::All)
                    && covers(&rule.pattern, &user, &b.topic)
                    && match &rule.required_scope {
                        None => true,
                        Some(scope) => entry
                            .as_ref()
                            .is_some_and(|e| e.allows(scope, &self.granting[i])),
                    }
                    && rule
                        .required_group
                        .as_deref()
                        .is_none_or(|g| entry.as_ref().is_some_and(|e| e.in_group(g)))
                    && rule
                        .required_license
                        .as_deref()
                        .is_none_or(|l| entry.as_ref().is_some_and(|e| e.holds_license(l, now)))
            })
        };
        let ok = (!wants.publish || allowed(TopicAction::Publish))
            && (!wants.subscribe || allowed(TopicAction::Subscribe));
        self.answer(ok, serde_json::json!({}))
    }

    /// The clients this node let in whose token was revoked at a revision after `since`, and the
    /// index's revision now (the next `since`). Clients whose token has left the index are forgotten.
    pub fn revoked_since(&self, since: i64) -> (i64, Vec<Revoked>) {
        let rev = self.index.last_rev();
        let sessions = self.sessions.pin();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, s) in sessions.iter() {
            match self.index.get(&s.digest) {
                None => gone.push(id.clone()),
                Some(slot) if slot.entry.is_revoked() && slot.entry.rev() > since => {
                    out.push(Revoked {
                        clientid: id.to_string(),
                        token_id: slot.entry.token_id,
                        user_id: slot.entry.user().to_owned(),
                        rev: slot.entry.rev(),
                    })
                }
                Some(_) => {}
            }
        }
        for id in gone {
            sessions.remove(&id);
        }
        out.sort_by(|a, b| (a.rev, &a.clientid).cmp(&(b.rev, &b.clientid)));
        (rev, out)
    }

    /// The index's revision now (the feed waits for it to move).
    pub fn revision(&self) -> i64 {
        self.index.last_rev()
    }
}

/// A 400 for a body that is not what the endpoint takes.
pub fn bad_request(detail: &'static str) -> MqttAnswer {
    MqttAnswer {
        status: 400,
        body: super::answer::error_body("invalid_request", detail),
        outcome: "bad_request",
    }
}

/// A topic or topic filter as MQTT allows it: 1 to 65535 bytes, no NUL, `+` and `#` only as whole
/// levels, `#` last.
fn valid_filter(topic: &str) -> bool {
    if topic.is_empty() || topic.len() > 65535 || topic.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = topic.split('/').collect();
    levels
        .iter()
        .enumerate()
        .all(|(i, l)| !l.contains(['+', '#']) || *l == "+" || (*l == "#" && i + 1 == levels.len()))
}

/// Whether rule `pattern` (with `{user_id}` as `user`) covers every topic the requested filter `topic`
/// can match. A user id that could change the pattern's shape (`/`, `+`, `#`, NUL, empty) covers
/// nothing; topics starting with `$` are not matched by a leading wildcard (MQTT 4.7.2).
pub fn covers(pattern: &str, user: &str, topic: &str) -> bool {
    if pattern.contains(USER_ID_PLACEHOLDER)
        && (user.is_empty() || user.contains(['/', '+', '#', '\0']))
    {
        return false;
    }
    let mut wanted = topic.split('/');
    for (i, p) in pattern.split('/').enumerate() {
        let p = p.replace(USER_ID_PLACEHOLDER, user);
        let dollar = i == 0 && topic.starts_with('$');
        if p == "#" {
            return !dollar;
        }
        let Some(t) = wanted.next() else {
            return false;
        };
        if p == "+" {
            if t == "#" || dollar {
                return false;
            }
        } else if p != t {
            return false;
        }
    }
    wanted.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::verify::TopicRule;
    use crate::tokens::format::Token;
    use crate::tokens::store::IndexRow;

    #[test]
    fn patterns_cover_topics_and_filters() {
        let p = "hives/{user_id}/+/telemetry";
        assert!(covers(p, "alice", "hives/alice/h1/telemetry"));
        assert!(covers(p, "alice", "hives/alice/+/telemetry"));
        assert!(!covers(p, "alice", "hives/bob/h1/telemetry"));
        assert!(
            !covers(p, "alice", "hives/+/h1/telemetry"),
            "another user's too"
        );
        assert!(!covers(p, "alice", "hives/#"));
        assert!(
            !covers(p, "alice", "hives/alice/#"),
            "# is more than one level"
        );
        assert!(!covers(p, "alice", "hives/alice/h1/telemetry/x"));
        assert!(!covers(p, "alice", "hives/alice/h1"));
        assert!(!covers(p, "a/b", "hives/a/b/telemetry"), "a / in the user");
        assert!(!covers(p, "+", "hives/+/h1/telemetry"));
        assert!(!covers(p, "#", "hives/#"));
        assert!(!covers(p, "", "hives//h1/telemetry"));
        assert!(
            !covers("status/{user_id}/+", "alice", "status/alice/#"),
            "+ is one level, # many"
        );
        assert!(covers("status/{user_id}/+", "alice", "status/alice/+"));
        let p = "users/{user_id}/#";
        assert!(covers(p, "alice", "users/alice"));
        assert!(covers(p, "alice", "users/alice/a/b/#"));
        assert!(!covers(p, "alice", "users/alicex/a"));
        assert!(!covers("#", "alice", "$SYS/x"));
        assert!(!covers("+/x", "alice", "$SYS/x"));
        assert!(covers("dev-{user_id}/x", "alice", "dev-alice/x"));
        assert!(
            valid_filter("a/+/b/#")
                && !valid_filter("a/b#")
                && !valid_filter("a/#/b")
                && !valid_filter("")
        );
    }

    const NOW: u64 = 1_000_000;

    fn world(config: MqttConfig) -> (Mqtt, Token, Token) {
        let index = Index::new();
        let row = |id, t: &Token, user: &str, scopes: &[&str], revoked| IndexRow {
            id,
            user: user.into(),
            digest: t.digest(),
            prev_digest: None,
            prev_valid_until: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: Some(2_000_000),
            revoked,
            rev: id,
            bound_cert: None,
            rate_limit: None,
            quota: None,
            quota_used: 0,
            quota_period: None,
            leaked: false,
            access: if user == "alice" {
                crate::tokens::store::Access::parse(
                    Some("apiary-42\u{1f}"),
                    Some("video\u{1f}1500000"),
                )
            } else {
                Default::default()
            },
        };
        let (a, b) = (Token::generate(), Token::generate());
        index.apply(&row(1, &a, "alice", &["telemetry:write"], false));
        index.apply(&row(2, &b, "bob", &["other"], false));
        (Mqtt::new(&config, &Roles::new(), Arc::new(index)), a, b)
    }

    fn rules() -> MqttConfig {
        MqttConfig {
            username: MqttUsername::Free,
            mode: MqttMode::Json,
            topics: vec![
                TopicRule {
                    pattern: "hives/{user_id}/+/telemetry".into(),
                    action: TopicAction::Publish,
                    required_scope: Some("telemetry:write".into()),
                    required_group: None,
                    required_license: None,
                },
                TopicRule {
                    pattern: "cmd/{user_id}/#".into(),
                    action: TopicAction::Subscribe,
                    required_scope: None,
                    required_group: None,
                    required_license: None,
                },
            ],
        }
    }

    fn json(a: &MqttAnswer) -> serde_json::Value {
        serde_json::from_slice(&a.body).unwrap()
    }

    #[test]
    fn authn_then_authz_by_session() {
        let (m, a, b) = world(rules());
        let r = m.authn(
            format!(
                r#"{{"username":"x","password":"{}","clientid":"c1"}}"#,
                a.as_str()
            )
            .as_bytes(),
            NOW,
        );
        let v = json(&r);
        assert_eq!(v["result"], "allow");
        assert_eq!(v["client_attrs"]["user_id"], "alice");
        assert_eq!(v["client_attrs"]["token_id"], "1");
        assert_eq!(v["expire_at"], 2_000_000);
        let authz = |topic: &str, action: &str, extra: &str| {
            json(
                &m.authz(
                    format!(r#"{{"clientid":"c1","topic":"{topic}","action":"{action}"{extra}}}"#)
                        .as_bytes(),
                    NOW,
                ),
            )["result"]
                .clone()
        };
        assert_eq!(authz("hives/alice/h1/telemetry", "publish", ""), "allow");
        assert_eq!(authz("hives/bob/h1/telemetry", "publish", ""), "deny");
        assert_eq!(
            authz("hives/alice/+/telemetry", "publish", ""),
            "deny",
            "no wildcard publish"
        );
        assert_eq!(
            authz("hives/alice/h1/telemetry", "subscribe", ""),
            "deny",
            "publish-only rule"
        );
        assert_eq!(authz("cmd/alice/#", "subscribe", ""), "allow");
        assert_eq!(authz("cmd/+/x", "subscribe", ""), "deny");
        assert_eq!(authz("cmd/#", "subscribe", ""), "deny");
        assert_eq!(
            authz("cmd/alice/x", "subscribe", r#","user_id":"bob""#),
            "deny",
            "two answers to who"
        );
        // Bob lacks the scope the telemetry rule requires.
        m.authn(
            format!(r#"{{"password":"{}","clientid":"c2"}}"#, b.as_str()).as_bytes(),
            NOW,
        );
        let r = m.authz(
            br#"{"clientid":"c2","topic":"hives/bob/h/telemetry","action":"publish"}"#,
            NOW,
        );
        assert_eq!(json(&r)["result"], "deny");
        // Unknown client, no attribute: deny. The broker's attribute: rules without a scope apply.
        assert_eq!(
            json(&m.authz(
                br#"{"clientid":"zz","topic":"cmd/bob/x","action":"subscribe"}"#,
                NOW
            ))["result"],
            "deny"
        );
        assert_eq!(
            json(&m.authz(
                br#"{"clientid":"zz","user_id":"bob","topic":"cmd/bob/x","action":"subscribe"}"#,
                NOW
            ))["result"],
            "allow"
        );
        assert_eq!(json(&m.authz(br#"{"clientid":"zz","user_id":"bob","topic":"hives/bob/h/telemetry","action":"publish"}"#, NOW))["result"], "deny");
    }

    #[test]
    fn denials_and_bad_bodies() {
        let mut cfg = rules();
        cfg.username = MqttUsername::UserId;
        cfg.mode = MqttMode::Status;
        let (m, a, _) = world(cfg);
        let body = |user: &str, pw: &str| {
            format!(r#"{{"username":"{user}","password":"{pw}","clientid":"c"}}"#)
        };
        assert_eq!(
            m.authn(body("bob", a.as_str()).as_bytes(), NOW).status,
            403,
            "wrong user"
        );
        assert_eq!(
            m.authn(body("alice", a.as_str()).as_bytes(), NOW).status,
            200
        );
        assert_eq!(
            m.authn(body("alice", a.as_str()).as_bytes(), 2_000_000)
                .status,
            403,
            "expired"
        );
        assert_eq!(
            m.authn(body("alice", "tg_nope").as_bytes(), NOW).status,
            403
        );
        assert_eq!(m.authn(body("alice", "").as_bytes(), NOW).status, 403);
        assert_eq!(m.authn(b"not json", NOW).status, 400);
        assert_eq!(m.authn(b"[1]", NOW).status, 400);
        assert_eq!(m.authz(br#"{"topic":"a"}"#, NOW).status, 400, "no action");
        // acc: 2 write, 4 subscribe; 3 needs both.
        let acl = |acc: u8, topic: &str| {
            m.authz(
                format!(r#"{{"username":"alice","clientid":"c","topic":"{topic}","acc":{acc}}}"#)
                    .as_bytes(),
                NOW,
            )
            .status
        };
        assert_eq!(acl(2, "hives/alice/h/telemetry"), 200);
        assert_eq!(acl(4, "hives/alice/h/telemetry"), 403);
        assert_eq!(acl(3, "hives/alice/h/telemetry"), 403);
        assert_eq!(acl(1, "cmd/alice/x"), 200);
        // The session's token revoked: everything denied, and the feed names the client.
        let (rev, list) = m.revoked_since(0);
        assert!(list.is_empty());
        m.index.apply(&IndexRow {
            id: 1,
            user: "alice".into(),
            digest: a.digest(),
            prev_digest: None,
            prev_valid_until: None,
            scopes: vec!["telemetry:write".into()],
            expires_at: Some(2_000_000),
            revoked: true,
            rev: 10,
            bound_cert: None,
            rate_limit: None,
            quota: None,
            quota_used: 0,
            quota_period: None,
            leaked: false,
            access: Default::default(),
        });
        assert_eq!(acl(1, "cmd/alice/x"), 403);
        let (now_rev, list) = m.revoked_since(rev);
        assert_eq!(now_rev, 10);
        assert_eq!(
            list,
            vec![Revoked {
                clientid: "c".into(),
                token_id: 1,
                user_id: "alice".into(),
                rev: 10
            }]
        );
        assert!(m.revoked_since(10).1.is_empty());
    }

    /// `required_group` / `required_license` on a topic rule: held by the session's token (alice), not
    /// by bob's, nor by a client named only by the broker's attribute; the license ends by the clock.
    #[test]
    fn topic_rules_may_require_a_group_and_a_license() {
        let rule = |pattern: &str, group: Option<&str>, license: Option<&str>| TopicRule {
            pattern: pattern.into(),
            action: TopicAction::Subscribe,
            required_scope: None,
            required_group: group.map(Into::into),
            required_license: license.map(Into::into),
        };
        let (m, a, b) = world(MqttConfig {
            username: MqttUsername::Free,
            mode: MqttMode::Json,
            topics: vec![
                rule("apiary/{user_id}/#", Some("apiary-42"), None),
                rule("video/{user_id}/#", None, Some("video")),
            ],
        });
        for (client, t) in [("ca", &a), ("cb", &b)] {
            m.authn(
                format!(r#"{{"password":"{}","clientid":"{client}"}}"#, t.as_str()).as_bytes(),
                NOW,
            );
        }
        let ask = |client: &str, topic: &str, now| {
            json(
                &m.authz(
                    format!(r#"{{"clientid":"{client}","topic":"{topic}","action":"subscribe"}}"#)
                        .as_bytes(),
                    now,
                ),
            )["result"]
                .clone()
        };
        assert_eq!(ask("ca", "apiary/alice/x", NOW), "allow");
        assert_eq!(ask("ca", "video/alice/x", NOW), "allow");
        assert_eq!(ask("ca", "video/alice/x", 1_500_000), "deny");
        assert_eq!(ask("cb", "apiary/bob/x", NOW), "deny");
        assert_eq!(ask("cb", "video/bob/x", NOW), "deny");
        let attr = m.authz(
            br#"{"clientid":"zz","user_id":"alice","topic":"apiary/alice/x","action":"subscribe"}"#,
            NOW,
        );
        assert_eq!(json(&attr)["result"], "deny");
    }
}
