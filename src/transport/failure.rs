//! How talking to an upstream failed, for the answer (502 or 504), the metrics and the retry decision:
//! shared by the forward ([`super::forward`]) and the relay ([`super::relay`]).

use super::upstream::UpstreamError;

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

    pub(super) fn status(&self) -> u16 {
        match self.kind {
            UpstreamError::ConnectTimeout
            | UpstreamError::ReadTimeout
            | UpstreamError::WriteTimeout => 504,
            _ => 502,
        }
    }
}
