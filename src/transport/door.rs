//! A side door on the gateway's listeners: one exact path (the secret-scanning endpoint of `[leaks]`)
//! answered by a handler from a higher room instead of by routing, with no bearer token. This file owns
//! only the wire side: matching the path, refusing other methods (405), reading a bounded body (411
//! without a length, 413 over the handler's limit, 408 when it does not arrive in time), and writing the
//! handler's JSON answer. What the request means, and whether it is believed, is the handler's business
//! ([`Door`]); the transport never imports it.

use super::connection::{Client, ClientStream, Facts};
use super::http1::Framing;
use super::rewrite::write_error_head;
use super::timed::timed;
use crate::gateway::answer::Answer;
use crate::gateway::paths::origin_form;
use crate::gateway::Refusal;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
// The runtime's clock, so that a paused clock (the in-process tests) reaches every timeout.
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// How long a client has to send the whole body, from the end of its head.
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// A slot the handler grants for one request, held while its body is read and handled (dropped after).
pub type DoorPermit = Box<dyn Send>;

/// What the transport hands the handler: the fields it asked for ([`Door::fields`], in that order;
/// `None` when absent or sent more than once) and, for [`Door::handle`], the whole body.
pub struct DoorRequest {
    pub fields: Vec<Option<Vec<u8>>>,
    pub body: Vec<u8>,
    /// Whether the request came in on the TLS listener.
    pub tls: bool,
}

/// The handler's answer: a status and a JSON body.
pub struct DoorAnswer {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After`, in seconds (503).
    pub retry_after: Option<u64>,
}

impl DoorAnswer {
    /// A JSON error answer in the gateway's shape (`{"error","detail"}`).
    pub fn error(status: u16, error: &str, detail: &str) -> DoorAnswer {
        DoorAnswer {
            status,
            body: crate::gateway::answer::error_body(error, detail),
            retry_after: None,
        }
    }
}

/// A handler behind the side door.
#[async_trait]
pub trait Door: Send + Sync {
    /// The exact path it answers (compared with the request's path, without its query).
    fn path(&self) -> &str;
    /// Header fields it wants to see, lower-case.
    fn fields(&self) -> &[&'static str];
    /// The largest body it takes; a larger one is refused (413) before a byte of it is read.
    fn max_body(&self) -> u64;
    /// Looks at the fields before the body is read: `Some` answers at once (the body is not read and
    /// the connection closes).
    fn before_body(&self, req: &DoorRequest) -> Option<DoorAnswer>;
    /// A slot for reading and handling one body, which bounds the memory bodies take; `Err` answers at
    /// once (503: too many at once).
    fn admit(&self) -> Result<DoorPermit, DoorAnswer>;
    /// Handles a `POST` with its whole body.
    async fn handle(self: Arc<Self>, req: DoorRequest) -> DoorAnswer;
}

impl<S: ClientStream> Client<'_, S> {
    /// Serves the request if it is for the side door; `None`: it is not, go on with the decision.
    pub(super) async fn door(&mut self, facts: &mut Facts) -> Option<bool> {
        let door = self.engine.door.as_ref()?;
        let head_bytes = &self.buf.filled()[..self.head.len];
        let target = self.head.target.get(head_bytes);
        let path = origin_form(target).map(|(p, _)| p)?;
        if path != door.path() {
            return None;
        }
        let door = door.clone();
        let method = self.head.method.get(head_bytes);
        let is_head = method == b"HEAD";
        if method != b"POST" {
            let mut r = Refusal::new(Answer::MethodNotAllowed, "this endpoint takes POST only");
            r.headers.push(("allow", "POST".into()));
            return Some(self.door_refuse(facts, r, is_head).await);
        }
        let mut req = DoorRequest {
            fields: self.door_fields(door.fields()),
            body: Vec::new(),
            tls: self.tls.is_some(),
        };
        let length = match self.head.framing {
            Framing::None => 0,
            Framing::Length(n) => n,
            _ => {
                let r = Refusal::new(
                    Answer::LengthRequired,
                    "send the body with a Content-Length",
                )
                .closing();
                return Some(self.door_refuse(facts, r, false).await);
            }
        };
        if let Some(a) = door.before_body(&req) {
            return Some(self.door_answer(facts, a, false).await);
        }
        if length > door.max_body() {
            let r = Refusal::new(Answer::PayloadTooLarge, "the body is too large").closing();
            return Some(self.door_refuse(facts, r, false).await);
        }
        let permit = match door.admit() {
            Ok(p) => p,
            Err(a) => return Some(self.door_answer(facts, a, false).await),
        };
        let Some(body) = self.door_body(facts, length as usize).await else {
            return Some(false);
        };
        req.body = body;
        let answer = door.handle(req).await;
        drop(permit);
        Some(self.door_answer(facts, answer, true).await)
    }

    /// The values of the fields the door asks for, each when it was sent exactly once.
    fn door_fields(&self, names: &[&str]) -> Vec<Option<Vec<u8>>> {
        let head_bytes = &self.buf.filled()[..self.head.len];
        names
            .iter()
            .map(|name| {
                let mut found = self
                    .head
                    .fields
                    .iter()
                    .filter(|f| f.name.get(head_bytes).eq_ignore_ascii_case(name.as_bytes()));
                match (found.next(), found.next()) {
                    (Some(f), None) => Some(f.value.get(head_bytes).to_vec()),
                    _ => None,
                }
            })
            .collect()
    }

    /// Reads the body of `length` bytes (what the buffer holds past the head, then from the client, within
    /// [`BODY_DEADLINE`]), answering `100 Continue` when asked. `None`: the connection is done (the client
    /// went away, or was answered 408).
    async fn door_body(&mut self, facts: &mut Facts, length: usize) -> Option<Vec<u8>> {
        let expect_continue = self.head.expect_continue;
        self.buf.consume(self.head.len);
        // Grown as bytes arrive: memory follows what was sent, not what was announced.
        let mut body = Vec::with_capacity(length.min(64 * 1024));
        let take = self.buf.len().min(length);
        body.extend_from_slice(&self.buf.filled()[..take]);
        self.buf.consume(take);
        let deadline = Instant::now() + BODY_DEADLINE;
        if expect_continue && body.len() < length && self.buf.is_empty() {
            self.out.clear();
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if self.write_out().await.is_err() {
                return None;
            }
        }
        while body.len() < length {
            let want = (length - body.len()).min(self.buf.spare().len());
            let read = timed(
                || deadline.saturating_duration_since(Instant::now()),
                self.io.read(&mut self.buf.spare()[..want]),
            )
            .await;
            match read {
                Ok(Ok(n)) if n > 0 => {
                    body.extend_from_slice(&self.buf.spare()[..n]);
                }
                Ok(_) => return None, // the client went away
                Err(_) => {
                    let r =
                        Refusal::new(Answer::RequestTimeout, "the body was not received in time")
                            .closing();
                    facts.status = r.status;
                    let _ = self.answer(&r, false, false).await;
                    return None;
                }
            }
        }
        self.body_pending = false;
        facts.bytes_in = length as u64;
        Some(body)
    }

    /// A refusal before the body was read: the connection closes unless there is no body.
    async fn door_refuse(&mut self, facts: &mut Facts, r: Refusal, is_head: bool) -> bool {
        let keep = r.reusable
            && self.head.keep_alive
            && !self.head.framing.has_body()
            && !self.engine.is_draining();
        self.buf.consume(self.head.len);
        facts.status = r.status;
        match self.answer(&r, keep, is_head).await {
            Ok(sent) => {
                facts.bytes_out = sent;
                keep
            }
            Err(_) => false,
        }
    }

    /// Writes the handler's answer. `body_read`: the request's body has been read (the connection may
    /// carry on); otherwise it closes unless the request had no body.
    async fn door_answer(&mut self, facts: &mut Facts, a: DoorAnswer, body_read: bool) -> bool {
        if !body_read {
            self.buf.consume(self.head.len);
        }
        let keep = (body_read || !self.head.framing.has_body())
            && self.head.keep_alive
            && !self.engine.is_draining();
        self.write_json(facts, a.status, a.retry_after, &a.body, keep)
            .await
    }

    /// Writes a JSON answer of a handler (a door's, the verify listener's MQTT endpoints): `status`,
    /// `body`, `Retry-After`; returns whether the connection carries on (`keep`, if the write went
    /// through).
    pub(super) async fn write_json(
        &mut self,
        facts: &mut Facts,
        status: u16,
        retry_after: Option<u64>,
        body: &[u8],
        keep: bool,
    ) -> bool {
        let r = Refusal::door(status, retry_after);
        self.out.clear();
        write_error_head(
            &mut self.out,
            &r,
            body.len(),
            keep,
            self.request_id.as_bytes(),
        );
        self.out.extend_from_slice(body);
        facts.status = status;
        match self.write_out().await {
            Ok(()) => {
                facts.bytes_out = body.len() as u64;
                keep
            }
            Err(_) => false,
        }
    }
}
