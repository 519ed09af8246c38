//! A request body on its way from the client to the upstream: what is already buffered goes out with
//! the head ([`BodyState::stage`]), the rest is pumped in bounded pieces ([`BodyState::pump`]), a
//! chunked body decoded strictly and re-encoded, cut at `max_body_bytes`.

use super::http1::{self, Buffer, Chunk, ChunkError, ChunkedDecoder, Framing};
use super::upstream::UpstreamError;
use crate::config::BODY_RATE_GRACE;
use std::io;
use std::time::Duration;
// The runtime's clock, so that a paused clock (the in-process tests) reaches every timeout.
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How sending the request body ended badly.
pub(super) enum BodyError {
    /// The client closed or failed mid-body: nobody to answer.
    ClientGone,
    /// The client stopped sending (408).
    Timeout,
    /// The client sent slower than `min_body_rate` bytes a second (408).
    TooSlow(u64),
    /// Broken chunked framing (400).
    Malformed,
    /// Past `max_body_bytes` (413).
    TooLarge(u64),
    /// The upstream stopped taking the body (it may still answer).
    Upstream(UpstreamError, io::Error),
}

/// What bounds the sending of one request body.
pub(super) struct BodyLimits {
    /// Longest wait for the upstream to take a piece (`write_timeout`).
    pub(super) write_timeout: Duration,
    /// Longest wait for the client's next bytes (`[gateway] body_timeout`).
    pub(super) read_timeout: Duration,
    /// When the whole body must have arrived (the route's `request_timeout`).
    pub(super) deadline: Option<Instant>,
    /// The route's `max_body_bytes`.
    pub(super) max: Option<u64>,
    /// `[gateway] min_body_rate`, bytes a second (0: none).
    pub(super) min_rate: u64,
}

/// The body's pace against `min_body_rate`, as time credit: the client starts with
/// [`BODY_RATE_GRACE`], every byte it sends earns `1 / min_rate` seconds, every second spent waiting
/// for it costs one, and the credit never exceeds `body_timeout` (an early burst does not buy a long
/// trickle later). Time spent waiting for the upstream to take the body does not count against the
/// client (as in Kestrel's `MinRequestBodyDataRate`). Out of credit: 408.
struct Pace {
    min_rate: u64,
    credit: Duration,
    cap: Duration,
}

impl Pace {
    fn new(min_rate: u64, cap: Duration) -> Pace {
        Pace {
            min_rate,
            credit: BODY_RATE_GRACE.min(cap),
            cap,
        }
    }

    fn received(&mut self, n: usize, waited: Duration) {
        if self.min_rate == 0 {
            return;
        }
        let earned = Duration::from_secs_f64(n as f64 / self.min_rate as f64);
        self.credit = (self.credit.saturating_sub(waited) + earned).min(self.cap);
    }

    /// How much longer the client may take for its next bytes before it falls under the rate.
    fn allowance(&self) -> Duration {
        if self.min_rate == 0 {
            Duration::MAX
        } else {
            self.credit
        }
    }
}

/// Progress of a request body from the client to the upstream.
pub(super) struct BodyState {
    framing: Framing,
    /// Body bytes (data, without chunk framing) still to come for `Length`.
    left: u64,
    decoder: ChunkedDecoder,
    /// Body data bytes forwarded so far.
    pub(super) forwarded: u64,
    finished: bool,
}

impl BodyState {
    pub(super) fn new(framing: Framing) -> BodyState {
        BodyState {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            decoder: ChunkedDecoder::default(),
            forwarded: 0,
            finished: matches!(framing, Framing::None),
        }
    }

    pub(super) fn done(&self) -> bool {
        self.finished
    }

    /// Moves what the buffer holds of the body into `out` (re-framed when chunked). Returns the data bytes
    /// moved.
    pub(super) fn stage(
        &mut self,
        buf: &mut Buffer,
        out: &mut Vec<u8>,
        max: Option<u64>,
    ) -> Result<u64, BodyError> {
        let before = self.forwarded;
        match self.framing {
            Framing::None | Framing::Close => {}
            Framing::Length(_) => {
                let take = (buf.len() as u64).min(self.left) as usize;
                out.extend_from_slice(&buf.filled()[..take]);
                buf.consume(take);
                self.left -= take as u64;
                self.forwarded += take as u64;
                self.finished = self.left == 0;
            }
            Framing::Chunked => {
                while !buf.is_empty() && !self.finished {
                    let (n, c) = self.decoder.decode(buf.filled()).map_err(|e| match e {
                        ChunkError::Syntax | ChunkError::TooLarge => BodyError::Malformed,
                    })?;
                    match c {
                        Chunk::Data(r) => {
                            let data = &buf.filled()[r];
                            self.forwarded += data.len() as u64;
                            if let Some(max) = max {
                                if self.forwarded > max {
                                    return Err(BodyError::TooLarge(max));
                                }
                            }
                            http1::encode_chunk(out, data);
                        }
                        Chunk::End => {
                            out.extend_from_slice(http1::LAST_CHUNK);
                            self.finished = true;
                        }
                        Chunk::More => {}
                    }
                    buf.consume(n);
                }
            }
        }
        Ok(self.forwarded - before)
    }

    /// Reads the rest of the body from the client and writes it upstream, within `limits`.
    pub(super) async fn pump<R, W>(
        &mut self,
        client: &mut R,
        buf: &mut Buffer,
        out: &mut Vec<u8>,
        upstream: &mut W,
        limits: &BodyLimits,
    ) -> Result<u64, BodyError>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin,
    {
        let max = limits.max;
        let write_timeout = limits.write_timeout;
        // Reads of a body go in pieces of up to `BODY_READ_BYTES`, not of the small idle buffer.
        buf.reserve_body();
        let mut pace = Pace::new(limits.min_rate, limits.read_timeout);
        while !self.finished {
            let mut wait = limits.read_timeout;
            if let Some(d) = limits.deadline {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            let allowed = pace.allowance();
            let slow = allowed < wait;
            wait = wait.min(allowed);
            let started = Instant::now();
            match tokio::time::timeout(wait, client.read(buf.spare())).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(BodyError::ClientGone),
                Ok(Ok(n)) => {
                    buf.filled_by(n);
                    pace.received(n, started.elapsed());
                }
                Err(_) if slow => return Err(BodyError::TooSlow(limits.min_rate)),
                Err(_) => return Err(BodyError::Timeout),
            }
            out.clear();
            self.stage(buf, out, max)?;
            if !out.is_empty() {
                match tokio::time::timeout(write_timeout, upstream.write_all(out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(BodyError::Upstream(UpstreamError::Reset, e)),
                    Err(_) => {
                        return Err(BodyError::Upstream(
                            UpstreamError::WriteTimeout,
                            io::Error::new(io::ErrorKind::TimedOut, "write timed out"),
                        ))
                    }
                }
            }
        }
        Ok(self.forwarded)
    }
}
