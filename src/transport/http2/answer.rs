//! The gateway's own answer on an HTTP/2 stream ([`refuse`]), and the one way a stream's bytes go out as
//! the client's window allows ([`push`]): shared by the decision ([`super::stream`]) and the forward
//! ([`super::upstream`]).
//!
//! A stream answered while its request body is still coming is not reset here: once the stream's
//! handles are dropped, h2 queues `RST_STREAM(NO_ERROR)` behind the answer's frames (RFC 9113 §8.1), so
//! the client gets the whole answer and then stops sending. An explicit `send_reset` would drop the
//! answer's frames still queued, and the client would see a reset with no answer at all. The answer's
//! body goes out by [`push`], within `send_timeout`: a client that holds its window at zero loses the
//! stream (reset `CANCEL`) instead of keeping it, and its place among the connection's streams, for ever.

use super::head;
use crate::gateway::Refusal;
use crate::transport::connection::Facts;
use crate::transport::request_id::RequestId;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, SendStream};
use std::time::Duration;

/// What an answer on a stream needs besides the refusal.
pub(super) struct Answering<'a> {
    pub(super) request_id: &'a RequestId,
    /// A `HEAD` request: the answer has no body.
    pub(super) is_head: bool,
    /// `[gateway] send_timeout`: the longest wait for the client's window to open.
    pub(super) send_timeout: Duration,
}

/// Sends the gateway's own answer `r` on the stream.
pub(super) async fn refuse(
    respond: &mut SendResponse<Bytes>,
    facts: &mut Facts,
    r: &Refusal,
    how: Answering<'_>,
) {
    facts.status = r.status;
    facts.outcome = r.outcome;
    if let Some(token) = &r.principal {
        facts.entry = Some(token.clone());
    }
    facts.limit = r.limit;
    facts.route = r.route.or(facts.route);
    let (resp, body) = head::refusal(r, how.request_id.as_str(), how.is_head);
    let sent = body.len() as u64;
    match respond.send_response(resp, body.is_empty()) {
        Ok(mut send) => {
            if !body.is_empty()
                && push(&mut send, body, how.send_timeout).await.is_ok()
                && send.send_data(Bytes::new(), true).is_ok()
            {
                facts.bytes_out = sent;
            }
        }
        Err(e) => log::debug!("HTTP/2 answer not sent: {e}"),
    }
}

/// Sends `data` as the client's window allows, waiting at most `send_timeout` for each opening of it
/// (a client that holds its window at zero loses the stream). `Err`: the stream is gone (reset by the
/// client, or timed out and reset here).
pub(super) async fn push(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    send_timeout: Duration,
) -> Result<(), ()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let cap = tokio::time::timeout(
            send_timeout,
            std::future::poll_fn(|cx| send.poll_capacity(cx)),
        )
        .await;
        let cap = match cap {
            Ok(Some(Ok(c))) => c,
            Ok(_) => return Err(()),
            Err(_) => {
                send.send_reset(Reason::CANCEL);
                return Err(());
            }
        };
        if cap == 0 {
            continue;
        }
        let piece = data.split_to(cap.min(data.len()));
        send.send_data(piece, false).map_err(|_| ())?;
    }
    Ok(())
}
