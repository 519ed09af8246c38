//! A request body on its way from the client to the upstream: what is already buffered goes out with
//! the head ([`BodyState::stage`]), the rest is pumped in bounded pieces ([`BodyState::pump`]), a
//! chunked body decoded strictly and re-encoded, cut at `max_body_bytes`.

use super::connection::CLIENT_IO_TIMEOUT;
use super::http1::{self, Buffer, Chunk, ChunkError, ChunkedDecoder, Framing};
use super::upstream::UpstreamError;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How sending the request body ended badly.
pub(super) enum BodyError {
    /// The client closed or failed mid-body: nobody to answer.
    ClientGone,
    /// The client stopped sending (408).
    Timeout,
    /// Broken chunked framing (400).
    Malformed,
    /// Past `max_body_bytes` (413).
    TooLarge(u64),
    /// The upstream stopped taking the body (it may still answer).
    Upstream(UpstreamError, io::Error),
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

    /// Reads the rest of the body from the client and writes it upstream.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn pump<R, W>(
        &mut self,
        client: &mut R,
        buf: &mut Buffer,
        out: &mut Vec<u8>,
        upstream: &mut W,
        write_timeout: Duration,
        deadline: Option<Instant>,
        max: Option<u64>,
    ) -> Result<u64, BodyError>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin,
    {
        while !self.finished {
            let wait = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(CLIENT_IO_TIMEOUT),
                None => CLIENT_IO_TIMEOUT,
            };
            match tokio::time::timeout(wait, client.read(buf.spare())).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(BodyError::ClientGone),
                Ok(Ok(n)) => buf.filled_by(n),
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
