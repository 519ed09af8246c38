//! One HTTP/2 stream, one request, in the HTTP/1.1 loop's order: the head checked and written as an
//! HTTP/1.1 head ([`super::head`]) and parsed by the same strict parser; `max_in_flight` (503); a
//! trusted proxy's request id; the decision ([`Gate::decide`](crate::gateway::Gate::decide)) on the
//! same facts an HTTP/1.1 request gives it (`:authority` as `Host`, the connection's client
//! certificate, the peer); then the gateway's answer, or the head rewritten by the same writer
//! ([`write_upstream_head`]) and forwarded ([`super::upstream`]). After: metrics (with the `h2`
//! protocol) and the access log line.
//!
//! A refused stream whose body is still coming is answered and then reset with `NO_ERROR` (RFC 9113
//! §8.1) by h2 once its handles are dropped (see [`super::answer`]): the client gets the answer, stops
//! sending, and the connection carries on.

use super::answer::{refuse, Answering};
use super::head::{self, Malformed};
use super::upstream::Forwarding;
use super::Peer;
use crate::clock;
use crate::gateway::answer::Answer;
use crate::gateway::paths::origin_form;
use crate::gateway::{Refusal, Verdict};
use crate::transport::connection::{logged_request, record, request_facts, Asker, Facts, Protocol};
use crate::transport::http1::{self, RequestHead};
use crate::transport::request_id::{self, RequestId};
use crate::transport::rewrite::{write_upstream_head, HeadExtras};
use crate::transport::{take_permit, Engine};
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use std::sync::Arc;

/// Serves one stream until its answer has gone out (or the client reset it).
pub(super) async fn exchange(
    engine: &Arc<Engine>,
    peer: &Arc<Peer>,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let table = engine.table.load_full();
    let mut facts = Facts::new();
    let mut request_id = RequestId::fresh();
    // The path for the access log (the stream's head is gone by the time its line is written).
    let mut log_path = Vec::new();
    let (parts, body) = request.into_parts();
    let end_stream = body.is_end_stream();
    let is_head = parts.method == http::Method::HEAD;
    let mut bytes = Vec::with_capacity(512);
    let parsed = match head::http1_head(&parts, end_stream, &mut bytes) {
        Ok(()) => parse(&bytes, engine.max_head_bytes),
        Err(m) => Err(m),
    };
    drop(parts);
    match parsed {
        Err(m) => {
            let r = Refusal::new(m.answer, m.detail);
            let how = Answering {
                request_id: &request_id,
                is_head,
                send_timeout: engine.send_timeout,
            };
            refuse(&mut respond, &mut facts, &r, how).await;
            drop(body);
        }
        Ok(h) => {
            let mut s = Stream {
                engine,
                peer,
                table: &table,
                head: &h,
                bytes: &bytes,
                respond: &mut respond,
                body: Some(body).filter(|_| !end_stream),
                request_id: &mut request_id,
                log_path: &mut log_path,
                is_head,
            };
            s.decide_and_forward(&mut facts).await
        }
    }
    // Every handle of the stream goes here (the body went with the arms above): a body not read to its
    // end makes h2 reset the stream with NO_ERROR after the answer.
    drop(respond);
    let asker = Asker {
        client: peer.addr.map(|_| peer.addr_text.as_str()),
        path: &log_path,
        request_id: request_id.as_str(),
        tls_marker: peer.tls_marker,
        protocol: Protocol::Http2,
    };
    record(engine, &table, &mut facts, asker);
}

/// The HTTP/1.1 head a stream was written into, parsed; refused as the HTTP/1.1 loop refuses a bad
/// head (400, 431 beyond `max_head_bytes` or 128 fields, 501).
fn parse(bytes: &[u8], max_head_bytes: usize) -> Result<RequestHead, Malformed> {
    let mut h = RequestHead::default();
    match h.parse(bytes) {
        Ok(true) if h.len <= max_head_bytes => Ok(h),
        Ok(true) => Err(Malformed {
            answer: Answer::HeadTooLarge,
            detail: "the request head is larger than this gateway accepts",
        }),
        Ok(false) => Err(Malformed {
            answer: Answer::InvalidRequest,
            detail: "the request head is incomplete",
        }),
        Err(e) => Err(Malformed {
            answer: e.answer(),
            detail: e.describe(),
        }),
    }
}

/// One stream's request on its way through the decision.
struct Stream<'a> {
    engine: &'a Arc<Engine>,
    peer: &'a Arc<Peer>,
    table: &'a crate::transport::Table,
    head: &'a RequestHead,
    bytes: &'a [u8],
    respond: &'a mut SendResponse<Bytes>,
    /// The request body (`None`: the stream ended with its headers).
    body: Option<RecvStream>,
    request_id: &'a mut RequestId,
    /// Where the access log's path is kept (see [`logged_request`]).
    log_path: &'a mut Vec<u8>,
    is_head: bool,
}

impl Stream<'_> {
    async fn decide_and_forward(&mut self, facts: &mut Facts) {
        let engine = self.engine;
        let _in_flight = match &engine.in_flight {
            Some((count, max)) => match take_permit(count, *max) {
                Some(slot) => Some(slot),
                None => return self.refuse(facts, &Refusal::too_many_in_flight()).await,
            },
            None => None,
        };
        let peer = self.peer;
        let table = self.table;
        if table.routes.trusts(peer.addr) {
            self.adopt_request_id();
        }
        let req = request_facts(self.head, self.bytes, peer.addr, peer.tls.as_ref());
        if engine.access_log.enabled() {
            facts.log = Some(logged_request(req.method, req.target, self.log_path));
        }
        // The side door (`[leaks]`) is an HTTP/1.1 endpoint: over HTTP/2 its path is not routed to
        // anything else either.
        if let Some(door) = &engine.door {
            if origin_form(req.target).is_some_and(|(p, _)| p == door.path()) {
                let r = Refusal::new(Answer::NotFound, "this endpoint is served over HTTP/1.1");
                return self.refuse(facts, &r).await;
            }
        }
        let forward = match engine.gate.decide(&table.routes, &req, clock::now()) {
            Verdict::Refuse(r) => return self.refuse(facts, &r).await,
            Verdict::Forward(f) => f,
        };
        let io = &table.io[forward.route.index];
        facts.route = Some(forward.route.index);
        facts.outcome = forward.outcome;
        let user = io
            .pool
            .user_key(forward.principal.as_deref().map(|e| e.user()));
        let server = io.pool.pick(user, 0);
        let host = &io.pool.members[server.unwrap_or(0)].upstream.host;
        let mut out = Vec::with_capacity(1024);
        write_upstream_head(
            &mut out,
            self.head,
            self.bytes,
            &forward,
            (host, &peer.addr_text),
            HeadExtras {
                request_id: self.request_id.as_bytes(),
                upgrade: false,
            },
        );
        facts.entry = forward.principal;
        facts.digest = forward.digest;
        facts.rate_limit = forward.rate_limit;
        // The token's in-flight slot is held until the answer has gone out.
        let _token_slot = forward.in_flight;
        let method = self.head.method.get(self.bytes);
        let forwarding = Forwarding {
            engine,
            peer,
            io,
            server,
            user,
            head: out,
            framing: self.head.framing,
            is_head: self.is_head,
            retryable: self.body.is_none()
                && matches!(
                    method,
                    b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
                ),
            request_id: self.request_id,
        };
        forwarding.run(self.respond, self.body.take(), facts).await
    }

    async fn refuse(&mut self, facts: &mut Facts, r: &Refusal) {
        let how = Answering {
            request_id: self.request_id,
            is_head: self.is_head,
            send_timeout: self.engine.send_timeout,
        };
        refuse(self.respond, facts, r, how).await;
    }

    /// Keeps a trusted proxy's own request id, when it sent exactly one and a sane one.
    fn adopt_request_id(&mut self) {
        let mut ids =
            self.head.fields.iter().filter(|f| {
                http1::same_field(f.name.get(self.bytes), request_id::HEADER.as_bytes())
            });
        if let (Some(f), None) = (ids.next(), ids.next()) {
            if let Some(id) = RequestId::from_client(f.value.get(self.bytes)) {
                *self.request_id = id;
            }
        }
    }
}
