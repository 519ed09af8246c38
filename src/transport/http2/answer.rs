//! The gateway's own answer on an HTTP/2 stream ([`refuse`]): shared by the decision ([`super::stream`])
//! and the forward ([`super::upstream`]).
//!
//! A stream answered while its request body is still coming is not reset here: once the stream's
//! handles are dropped, h2 queues `RST_STREAM(NO_ERROR)` behind the answer's frames (RFC 9113 §8.1), so
//! the client gets the whole answer and then stops sending. An explicit `send_reset` would drop the
//! answer's frames still queued, and the client would see a reset with no answer at all.

use super::head;
use crate::gateway::Refusal;
use crate::transport::connection::Facts;
use crate::transport::request_id::RequestId;
use bytes::Bytes;
use h2::server::SendResponse;

/// Sends the gateway's own answer `r` on the stream.
pub(super) fn refuse(
    respond: &mut SendResponse<Bytes>,
    facts: &mut Facts,
    r: &Refusal,
    request_id: &RequestId,
    is_head: bool,
) {
    facts.status = r.status;
    facts.outcome = r.outcome;
    if let Some(token) = &r.principal {
        facts.entry = Some(token.clone());
    }
    facts.limit = r.limit;
    facts.route = r.route.or(facts.route);
    let (resp, body) = head::refusal(r, request_id.as_str(), is_head);
    let sent = body.len() as u64;
    match respond.send_response(resp, body.is_empty()) {
        Ok(mut send) => {
            if !body.is_empty() {
                // Within the stream's initial window (65,535 bytes) a JSON answer never waits.
                send.reserve_capacity(body.len());
                if send.send_data(body, true).is_ok() {
                    facts.bytes_out = sent;
                }
            }
        }
        Err(e) => log::debug!("HTTP/2 answer not sent: {e}"),
    }
}
