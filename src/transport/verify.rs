//! The verify listener's wire side: the same connection loop and hardening as the gateway's listeners
//! (head limits, timeouts, keep-alive, connection limits), but a request is answered, never forwarded.
//!
//! - Only `[verify] trusted_proxies` may ask: anyone else gets 403 before a field is read.
//! - **Forward auth** (any method, any path but `/mqtt/...`): the original request is read from the
//!   `X-Forwarded-*` fields ([`crate::gateway::forwarded`]) and decided by
//!   [`Gate::decide`](crate::gateway::Gate::decide) exactly as the gateway decides its own requests.
//!   Allowed: `200`, empty body, the identity fields (user id, token id, scopes, roles — empty ones on
//!   a public route or for a token without roles — and the signature on a route that signs). Refused: the gateway's own answer, written by the same writer.
//!   The token's in-flight slot is held only until the answer is written.
//! - **MQTT**: `POST /mqtt/authn`, `POST /mqtt/authz` (JSON bodies up to 16 KiB; larger or not JSON:
//!   400) answered by [`crate::gateway::mqtt`]; `GET /mqtt/revoked?since=REV[&wait=SECONDS]`, a
//!   long-poll of the clients whose token was revoked since a revision.

use super::connection::{Client, ClientStream, Facts};
use super::http1::{self, Framing};
use super::rewrite::{push_query_without, write_access, write_scopes};
use super::timed::timed;
use super::Table;
use crate::clock;
use crate::config::IpNet;
use crate::gateway::answer::Answer;
use crate::gateway::forwarded::{self, Asked, Forwarded, FIELDS};
use crate::gateway::mqtt::{Mqtt, MqttAnswer};
use crate::gateway::paths::origin_form;
use crate::gateway::routes::{GROUPS_HEADER, LICENSES_HEADER, ROLES_HEADER, SCOPES_HEADER};
use crate::gateway::{signing, Refusal, Verdict};
use crate::telemetry::verify::{VerifyDoor, VerifyMetrics};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// The largest MQTT request body (EMQX and mosquitto-go-auth send a few hundred bytes).
pub const MAX_MQTT_BODY: u64 = 16 * 1024;

/// How long an MQTT body has to arrive, from the end of its head.
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// The revocation feed's longest and default wait.
const MAX_WAIT: u64 = 60;
const DEFAULT_WAIT: u64 = 30;

/// What the verify listener needs besides the engine.
pub struct Verify {
    /// `[verify] trusted_proxies`: who may ask.
    pub trusted: Vec<IpNet>,
    /// `[verify] cache_seconds`.
    pub cache_seconds: u64,
    /// `[verify] path_prefix` (Envoy `ext_authz`).
    pub path_prefix: Option<String>,
    pub mqtt: Arc<Mqtt>,
    pub metrics: VerifyMetrics,
}

impl Verify {
    /// Whether `peer` may ask.
    pub fn trusts(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted.iter().any(|n| n.contains(ip)))
    }
}

/// Which MQTT endpoint a path names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Authn,
    Authz,
    Revoked,
}

impl<S: ClientStream> Client<'_, S> {
    /// Answers the request at the front of the buffer on the verify listener.
    pub(super) async fn verify(&mut self, v: &Verify, table: &Table, facts: &mut Facts) -> bool {
        let head_bytes = &self.buf.filled()[..self.head.len];
        let target = self.head.target.get(head_bytes);
        let endpoint = match origin_form(target).map(|(p, _)| p) {
            Some("/mqtt/authn") => Some(Endpoint::Authn),
            Some("/mqtt/authz") => Some(Endpoint::Authz),
            Some("/mqtt/revoked") => Some(Endpoint::Revoked),
            _ => None,
        };
        let door = match endpoint {
            None => VerifyDoor::Forward,
            Some(Endpoint::Authn) => VerifyDoor::MqttAuthn,
            Some(Endpoint::Authz) => VerifyDoor::MqttAuthz,
            Some(Endpoint::Revoked) => VerifyDoor::MqttRevoked,
        };
        if !v.trusts(self.peer) {
            v.metrics.answered(door, "untrusted");
            let r = Refusal::new(
                Answer::Forbidden,
                "this address may not ask the verify endpoint",
            )
            .closing();
            return self.refuse(facts, r).await;
        }
        match endpoint {
            Some(Endpoint::Revoked) => self.revoked_feed(v, facts).await,
            Some(e) => self.mqtt_post(v, e, door, facts).await,
            None => self.forward_auth(v, table, facts).await,
        }
    }

    /// Forward auth: the same decision as the gateway's, on the request the fields describe.
    async fn forward_auth(&mut self, v: &Verify, table: &Table, facts: &mut Facts) -> bool {
        let engine = self.engine;
        let head_bytes = &self.buf.filled()[..self.head.len];
        let mut fields = Forwarded::default();
        for f in &self.head.fields {
            let name = f.name.get(head_bytes);
            if let Some(i) = FIELDS
                .iter()
                .position(|n| name.eq_ignore_ascii_case(n.as_bytes()))
            {
                fields.set(i, f.value.get(head_bytes));
            }
        }
        let asked = Asked {
            method: self.head.method.get(head_bytes),
            target: self.head.target.get(head_bytes),
            authorization: self.head.authorization.map(|s| s.get(head_bytes)),
            authorizations: self.head.authorizations as usize,
            peer: self.peer,
            forwarded: fields,
        };
        let original = match forwarded::original(&asked, v.path_prefix.as_deref()) {
            Ok(o) => o,
            Err(unclear) => {
                v.metrics.answered(VerifyDoor::Forward, "bad_request");
                return self.refuse(facts, unclear.refusal()).await;
            }
        };
        let req = original.request();
        let forward = match engine.gate.decide(&table.routes, &req, clock::now()) {
            Verdict::Refuse(r) => {
                v.metrics.answered(VerifyDoor::Forward, r.outcome.as_str());
                return self.refuse(facts, r).await;
            }
            Verdict::Forward(f) => f,
        };
        v.metrics
            .answered(VerifyDoor::Forward, forward.outcome.as_str());
        facts.route = Some(forward.route.index);
        facts.outcome = forward.outcome;
        // The answer: 200, no body, the identity fields.
        let body_in_buffer = match self.head.framing {
            Framing::None => Some(0),
            Framing::Length(n) if (self.buf.len() - self.head.len) as u64 >= n => Some(n as usize),
            _ => None,
        };
        let keep = self.head.keep_alive && body_in_buffer.is_some() && !engine.is_draining();
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n");
        http1::push_field(out, b"x-request-id", self.request_id.as_bytes());
        if v.cache_seconds > 0 {
            out.extend_from_slice(b"cache-control: private, max-age=");
            http1::push_decimal(out, v.cache_seconds);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(b"cache-control: no-store\r\n");
        }
        if let Some(field) = &forward.rate_limit {
            http1::push_field(out, b"ratelimit", field.to_string().as_bytes());
        }
        if let Some(entry) = forward.principal.as_deref() {
            let route = forward.route;
            let user = push_span(out, route.user_id_header.as_str(), entry.user().as_bytes());
            let token_id = route
                .token_id_header
                .as_ref()
                .map(|h| push_span(out, h.as_str(), entry.token_id_text()));
            let (scopes, roles) = write_scopes(out, entry, &route.roles);
            if roles.is_none() {
                http1::push_field(out, ROLES_HEADER.as_bytes(), b"");
            }
            let (groups, licenses) = write_access(out, entry, forward.rewrite.at);
            if groups.is_none() {
                http1::push_field(out, GROUPS_HEADER.as_bytes(), b"");
            }
            if licenses.is_none() {
                http1::push_field(out, LICENSES_HEADER.as_bytes(), b"");
            }
            if let Some(secret) = &route.sign_secret {
                // Signed as the gateway signs a forwarded request: the path and query the upstream
                // will see (without a legacy token parameter), written after the head for a moment.
                let mark = out.len();
                out.extend_from_slice(forward.rewrite.path.as_bytes());
                match (forward.rewrite.query, &route.query_token_param) {
                    (Some(q), Some(param)) => push_query_without(out, q, param),
                    (Some(q), None) => {
                        out.push(b'?');
                        out.extend_from_slice(q.as_bytes());
                    }
                    (None, _) => {}
                }
                let signed = signing::Signed {
                    user: &out[user],
                    token_id: &out[token_id.unwrap_or_default()],
                    scopes: &out[scopes.unwrap_or_default()],
                    roles: &out[roles.unwrap_or_default()],
                    groups: &out[groups.unwrap_or_default()],
                    licenses: &out[licenses.unwrap_or_default()],
                    method: original.method,
                    path_and_query: &out[mark..],
                };
                let value = signing::value(secret, &signed, forward.rewrite.at);
                out.truncate(mark);
                http1::push_field(out, signing::SIGNATURE_HEADER.as_bytes(), value.as_bytes());
            }
        } else {
            // A public route: the identity fields, empty. A proxy that copies them then overwrites
            // whatever the client sent with nothing (Caddy 2.6 writes its placeholder's own text for a
            // field that is absent).
            let route = forward.route;
            http1::push_field(out, route.user_id_header.as_str().as_bytes(), b"");
            if let Some(h) = &route.token_id_header {
                http1::push_field(out, h.as_str().as_bytes(), b"");
            }
            http1::push_field(out, SCOPES_HEADER.as_bytes(), b"");
            http1::push_field(out, ROLES_HEADER.as_bytes(), b"");
            http1::push_field(out, GROUPS_HEADER.as_bytes(), b"");
            http1::push_field(out, LICENSES_HEADER.as_bytes(), b"");
        }
        if !keep {
            out.extend_from_slice(b"connection: close\r\n");
            self.closing
                .get_or_insert(crate::telemetry::connections::Closed::Refused);
        }
        out.extend_from_slice(b"\r\n");
        facts.entry = forward.principal;
        facts.digest = forward.digest;
        // Held until the answer is written: nothing is forwarded, so the exchange ends here.
        let slot = forward.in_flight;
        self.buf.consume(self.head.len);
        if let (true, Some(n)) = (keep, body_in_buffer) {
            self.body_pending = false;
            self.buf.consume(n);
        }
        facts.status = 200;
        let ok = self.write_out().await.is_ok();
        drop(slot);
        ok && keep
    }

    /// `POST /mqtt/authn` and `/mqtt/authz`: a bounded JSON body, then the gateway room's answer.
    async fn mqtt_post(
        &mut self,
        v: &Verify,
        endpoint: Endpoint,
        door: VerifyDoor,
        facts: &mut Facts,
    ) -> bool {
        let method = self.head.method.get(&self.buf.filled()[..self.head.len]);
        if method != b"POST" {
            let mut r = Refusal::new(Answer::MethodNotAllowed, "this endpoint takes POST only");
            r.headers.push(("allow", "POST".into()));
            v.metrics.answered(door, "bad_request");
            return self.refuse(facts, r).await;
        }
        let length = match self.head.framing {
            Framing::None => 0,
            Framing::Length(n) if n <= MAX_MQTT_BODY => n as usize,
            Framing::Length(_) => {
                v.metrics.answered(door, "bad_request");
                let r = Refusal::new(Answer::InvalidRequest, "the body is larger than 16 KiB")
                    .closing();
                return self.refuse(facts, r).await;
            }
            _ => {
                v.metrics.answered(door, "bad_request");
                let r = Refusal::new(
                    Answer::LengthRequired,
                    "send the body with a Content-Length",
                )
                .closing();
                return self.refuse(facts, r).await;
            }
        };
        let expect_continue = self.head.expect_continue;
        self.buf.consume(self.head.len);
        let mut body = Vec::with_capacity(length);
        let take = self.buf.len().min(length);
        body.extend_from_slice(&self.buf.filled()[..take]);
        self.buf.consume(take);
        if expect_continue && body.len() < length && self.buf.is_empty() {
            self.out.clear();
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if self.write_out().await.is_err() {
                return false;
            }
        }
        let deadline = Instant::now() + BODY_DEADLINE;
        while body.len() < length {
            let want = (length - body.len()).min(self.buf.spare().len());
            let read = timed(
                || deadline.saturating_duration_since(Instant::now()),
                self.io.read(&mut self.buf.spare()[..want]),
            )
            .await;
            match read {
                Ok(Ok(n)) if n > 0 => body.extend_from_slice(&self.buf.spare()[..n]),
                Ok(_) => return false,
                Err(_) => {
                    let r =
                        Refusal::new(Answer::RequestTimeout, "the body was not received in time")
                            .closing();
                    facts.status = r.status;
                    let _ = self.answer(&r, false, false).await;
                    return false;
                }
            }
        }
        self.body_pending = false;
        facts.bytes_in = length as u64;
        let now = clock::now();
        let answer = match endpoint {
            Endpoint::Authn => v.mqtt.authn(&body, now),
            _ => v.mqtt.authz(&body, now),
        };
        v.metrics.answered(door, answer.outcome);
        self.json_answer(facts, &answer).await
    }

    /// `GET /mqtt/revoked?since=REV[&wait=SECONDS]`: the clients whose token was revoked after `REV`,
    /// answered as soon as there is one, or after `wait` (default 30 s, at most 60 s) with none:
    /// `{"rev": <next since>, "revoked": [{"clientid","token_id","user_id","rev"}]}`.
    async fn revoked_feed(&mut self, v: &Verify, facts: &mut Facts) -> bool {
        let head_bytes = &self.buf.filled()[..self.head.len];
        let method = self.head.method.get(head_bytes);
        let query = origin_form(self.head.target.get(head_bytes)).and_then(|(_, q)| q);
        let number = |key: &str| {
            crate::gateway::decision::query_value(query, key).map(|v| v.parse::<i64>().ok())
        };
        let (since, wait) = match (number("since"), number("wait")) {
            (Some(Some(s)), None) if s >= 0 => (s, DEFAULT_WAIT),
            (Some(Some(s)), Some(Some(w))) if s >= 0 && (0..=MAX_WAIT as i64).contains(&w) => {
                (s, w as u64)
            }
            _ => {
                v.metrics.answered(VerifyDoor::MqttRevoked, "bad_request");
                let r = Refusal::new(
                    Answer::InvalidRequest,
                    "give since=<revision> (and optionally wait=<0..60 seconds>)",
                );
                return self.refuse(facts, r).await;
            }
        };
        if method != b"GET" || self.head.framing.has_body() {
            v.metrics.answered(VerifyDoor::MqttRevoked, "bad_request");
            let mut r = Refusal::new(Answer::MethodNotAllowed, "this endpoint takes GET only");
            r.headers.push(("allow", "GET".into()));
            return self.refuse(facts, r).await;
        }
        self.buf.consume(self.head.len);
        let deadline = Instant::now() + Duration::from_secs(wait);
        let (rev, list) = loop {
            let (rev, list) = v.mqtt.revoked_since(since);
            if !list.is_empty() || Instant::now() >= deadline || self.engine.is_draining() {
                break (rev, list);
            }
            // Nothing yet: wait for the index to move (or the deadline), then look again.
            while v.mqtt.revision() == rev
                && Instant::now() < deadline
                && !self.engine.is_draining()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        v.metrics.answered(
            VerifyDoor::MqttRevoked,
            if list.is_empty() { "none" } else { "revoked" },
        );
        let answer = MqttAnswer {
            status: 200,
            body: serde_json::json!({ "rev": rev, "revoked": list })
                .to_string()
                .into_bytes(),
            outcome: "",
        };
        self.json_answer(facts, &answer).await
    }

    /// Writes an MQTT answer (JSON) after its request was read whole.
    async fn json_answer(&mut self, facts: &mut Facts, a: &MqttAnswer) -> bool {
        let keep = self.head.keep_alive && !self.engine.is_draining();
        self.write_json(facts, a.status, None, &a.body, keep).await
    }
}

/// Appends `name: value\r\n` and returns where the value is.
fn push_span(out: &mut Vec<u8>, name: &str, value: &[u8]) -> std::ops::Range<usize> {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    let start = out.len();
    out.extend_from_slice(value);
    let end = out.len();
    out.extend_from_slice(b"\r\n");
    start..end
}
