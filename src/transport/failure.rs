//! How talking to an upstream failed, for the answer (502 or 504), the metrics and the retry decision:
//! shared by the forward ([`super::forward`]) and the relay ([`super::relay`]).

use super::upstream::UpstreamError;
use crate::gateway::answer::Answer;

/// How reading the response ended badly.
#[derive(Debug)]
pub(super) struct UpstreamFailure {
    pub(super) kind: UpstreamError,
    pub(super) detail: String,
    /// Nothing at all came back (the connection was closed or reset before a byte of a response).
    pub(super) nothing_received: bool,
}

impl UpstreamFailure {
    pub(super) fn new(kind: UpstreamError, detail: impl Into<String>) -> UpstreamFailure {
        UpstreamFailure {
            kind,
            detail: detail.into(),
            nothing_received: false,
        }
    }

    /// The answer the client gets.
    pub(super) fn answer(&self) -> Answer {
        match self.kind {
            UpstreamError::ConnectTimeout
            | UpstreamError::ReadTimeout
            | UpstreamError::WriteTimeout => Answer::GatewayTimeout,
            UpstreamError::Tls => Answer::UpstreamTls,
            UpstreamError::NoHealthy => Answer::NoHealthyUpstream,
            _ => Answer::BadGateway,
        }
    }
}
