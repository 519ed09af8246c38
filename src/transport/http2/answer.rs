//! The gateway's own answer on an HTTP/2 stream ([`refuse`]) and what the stream's end leaves to do
//! ([`Answered`]): shared by the decision ([`super::stream`]) and the forward ([`super::upstream`]).

use super::head;
use crate::gateway::Refusal;
use crate::transport::connection::Facts;
use crate::transport::request_id::RequestId;
use bytes::Bytes;
use h2::server::SendResponse;

/// How a stream ended on the gateway's side, for the reset that may follow the answer.
pub(super) struct Answered {
    /// The request body was not read to its end: reset the stream (`NO_ERROR`) so the client stops.
    pub(super) body_left: bool,
}

/// Sends the gateway's own answer `r` on the stream.
pub(super) fn refuse(
    respond: &mut SendResponse<Bytes>,
    facts: &mut Facts,
    r: &Refusal,
    request_id: &RequestId,
    is_head: bool,
) -> Answered {
    facts.status = r.status;
    facts.outcome = r.outcome;
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
    Answered { body_left: true }
}
