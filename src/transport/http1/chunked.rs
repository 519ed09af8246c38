//! The chunked transfer coding (RFC 9112 section 7.1): a strict incremental decoder and the encoder.

use std::ops::Range;

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A byte that does not belong where it is (bad hex, bare LF, missing CRLF after data, control bytes).
    Syntax,
    /// A chunk size over 2^60, a chunk line or the trailer section too long.
    TooLarge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size (`digits` so far).
    Size,
    /// After `;`: extension bytes up to CR.
    Extension,
    /// After the CR that ends a size line.
    SizeLf,
    /// Chunk data: `remaining` bytes to go.
    Data,
    /// After the data: expecting CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// After the CR of a trailer line / of the final empty line.
    TrailerLf,
    FinalLf,
    Done,
}

/// What [`ChunkedDecoder::decode`] found in its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body data at this range of the input (framing before it consumed).
    Data(Range<usize>),
    /// All input was framing; more is needed.
    More,
    /// The message ended; bytes after `consumed` belong to the next message.
    End,
}

/// An incremental, strict decoder of the chunked transfer coding (RFC 9112 section 7.1). Extensions and
/// trailer fields are checked and dropped.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    remaining: u64,
    digits: u8,
    /// Bytes of the current size line (extensions) or of the trailer section so far.
    line: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            remaining: 0,
            digits: 0,
            line: 0,
        }
    }
}

const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Reads framing from `input` until body data, the end of the message, or the end of the input.
    /// Returns the bytes consumed (data included) and what was found.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Chunk), ChunkError> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(ChunkError::TooLarge);
                        }
                        let d = (b as char).to_digit(16).expect("hex") as u64;
                        self.remaining = self.remaining * 16 + d;
                        self.digits += 1;
                    }
                    b';' if self.digits > 0 => {
                        self.state = Extension;
                        self.line = 0;
                    }
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err(ChunkError::Syntax),
                },
                Extension => match b {
                    b'\r' => self.state = SizeLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {
                        self.line += 1;
                        if self.line > MAX_CHUNK_LINE {
                            return Err(ChunkError::TooLarge);
                        }
                    }
                    _ => return Err(ChunkError::Syntax),
                },
                SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Syntax);
                    }
                    self.digits = 0;
                    if self.remaining == 0 {
                        self.state = TrailerStart;
                        self.line = 0;
                    } else {
                        self.state = Data;
                    }
                }
                Data => {
                    let n = (input.len() - i)
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = DataCr;
                    }
                    return Ok((i + n, Chunk::Data(i..i + n)));
                }
                DataCr => self.state = expect(b, b'\r', DataLf)?,
                DataLf => self.state = expect(b, b'\n', Size)?,
                TrailerStart => match b {
                    b'\r' => self.state = FinalLf,
                    // A field line starts with a name character: no obs-fold, no stray whitespace.
                    b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'..=b'`' | b'|' | b'~' => {
                        self.state = Trailer
                    }
                    b if b.is_ascii_alphanumeric() => self.state = Trailer,
                    _ => return Err(ChunkError::Syntax),
                },
                Trailer => match b {
                    b'\r' => self.state = TrailerLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                    _ => return Err(ChunkError::Syntax),
                },
                TrailerLf => self.state = expect(b, b'\n', TrailerStart)?,
                FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Syntax);
                    }
                    self.state = Done;
                    return Ok((i + 1, Chunk::End));
                }
                Done => return Ok((i, Chunk::End)),
            }
            if matches!(self.state, TrailerStart | Trailer | TrailerLf | FinalLf) {
                self.line += 1;
                if self.line > MAX_TRAILERS {
                    return Err(ChunkError::TooLarge);
                }
            }
            i += 1;
        }
        if self.state == Done {
            return Ok((i, Chunk::End));
        }
        Ok((i, Chunk::More))
    }
}

/// The next state if `b` is the one byte allowed here.
fn expect(b: u8, want: u8, next: ChunkState) -> Result<ChunkState, ChunkError> {
    if b == want {
        Ok(next)
    } else {
        Err(ChunkError::Syntax)
    }
}

/// Appends `data` as one chunk of the chunked coding.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::http1::push_decimal;
    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        // Feed one byte at a time: the decoder must not depend on how reads are split.
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let (n, c) = d.decode(&input[pos..pos + 1])?;
            if let Chunk::Data(r) = &c {
                out.extend_from_slice(&input[pos + r.start..pos + r.end]);
            }
            pos += n;
            if c == Chunk::End {
                return Ok((out, pos));
            }
        }
        Err(ChunkError::Syntax)
    }

    #[test]
    fn chunked_decoding() {
        let (data, used) =
            decode_all(b"5\r\nhello\r\n1;ext=\"v\"\r\n!\r\n0\r\nX-T: 1\r\n\r\nGET").unwrap();
        assert_eq!(data, b"hello!");
        assert_eq!(
            used,
            b"5\r\nhello\r\n1;ext=\"v\"\r\n!\r\n0\r\nX-T: 1\r\n\r\n".len()
        );
        let mut d = ChunkedDecoder::default();
        assert_eq!(
            d.decode(b"3\r\nabc\r\n0\r\n\r\nrest").unwrap(),
            (6, Chunk::Data(3..6))
        );
        assert_eq!(d.decode(b"\r\n0\r\n\r\nrest").unwrap(), (7, Chunk::End));
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"g\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"0\r\n\n",
            b"0\r\n X: folded\r\n\r\n",
            b"1;a\x00\r\nx\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode_all(b"1000000000000000\r\n"),
            Err(ChunkError::TooLarge)
        );
    }

    #[test]
    fn chunked_encoding_round_trips() {
        let mut out = Vec::new();
        encode_chunk(&mut out, &[7u8; 300]);
        encode_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert!(out.starts_with(b"12c\r\n"));
        let (data, used) = decode_all(&out).unwrap();
        assert_eq!((data.len(), used), (300, out.len()));
        let mut n = Vec::new();
        push_decimal(&mut n, 1234567890);
        assert_eq!(n, b"1234567890");
    }
}
