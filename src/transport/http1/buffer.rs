//! The read buffer of a connection: bytes read and not yet consumed, grown only while a head larger than
//! its first size is read or a body streams through it, and given back between requests.

use super::MAX_HEAD_BYTES;

/// Size of a read buffer when bytes first arrive (a new or idle client connection holds none, see
/// [`Buffer::release`]); it grows only while a head larger than this is read, or to
/// [`BODY_READ_BYTES`] while a body streams through it.
pub const BUFFER_BYTES: usize = 2 * 1024;
/// A buffer larger than this (grown for a large head or a body) is given back between requests.
pub const KEPT_BYTES: usize = 4 * 1024;
/// Size of the read buffer while a request body streams through it (fewer, larger reads).
pub const BODY_READ_BYTES: usize = 16 * 1024;

/// A growable read buffer: `data[start..end]` holds bytes read and not yet consumed.
pub struct Buffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// The largest head it grows for ([`MAX_HEAD_BYTES`], or a client connection's `max_head_bytes`).
    limit: usize,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer::new()
    }
}

impl Buffer {
    pub fn new() -> Buffer {
        Buffer::with_limit(MAX_HEAD_BYTES)
    }

    /// A buffer that grows for heads of at most `limit` bytes (at most [`MAX_HEAD_BYTES`]); it holds
    /// no memory until the first [`Self::spare`].
    pub fn with_limit(limit: usize) -> Buffer {
        Buffer {
            data: Vec::new(),
            start: 0,
            end: 0,
            limit: limit.min(MAX_HEAD_BYTES),
        }
    }

    /// The largest head this buffer grows for.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The unconsumed bytes.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks `n` unconsumed bytes as used.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space to read into, after moving unconsumed bytes to the front (and growing up to its
    /// limit when a head does not fit). Never empty unless `len()` is at the limit.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = vec![0; BUFFER_BYTES];
        }
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < self.limit {
            self.data.resize((self.data.len() * 2).min(self.limit), 0);
        }
        &mut self.data[self.end..]
    }

    /// Records `n` bytes read into [`Self::spare`].
    pub fn filled_by(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.data.len());
    }

    /// Gives the memory back while the buffer is empty (an idle connection holds none); the next
    /// [`Self::spare`] allocates it again.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.data = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Whether [`Self::release`] gave the memory back (and nothing was read since).
    pub fn is_released(&self) -> bool {
        self.data.is_empty()
    }

    /// Grows the buffer to [`BODY_READ_BYTES`] for a body that streams through it (given back by
    /// [`Self::shrink_if_idle`] after the exchange).
    pub fn reserve_body(&mut self) {
        if self.data.len() < BODY_READ_BYTES {
            if self.data.is_empty() {
                self.data = vec![0; BODY_READ_BYTES];
                return;
            }
            self.data.resize(BODY_READ_BYTES, 0);
        }
    }

    /// Gives a buffer that grew for a large head or a body its normal size back once it is empty.
    pub fn shrink_if_idle(&mut self) {
        if self.is_empty() && self.data.len() > KEPT_BYTES {
            self.data.truncate(BUFFER_BYTES);
            self.data.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_compacts_and_grows_only_for_heads() {
        let mut b = Buffer::new();
        let s = b.spare().len();
        b.filled_by(s);
        b.consume(10);
        assert_eq!(b.spare().len(), 10);
        b.filled_by(10);
        assert_eq!(b.len(), s);
        assert!(!b.spare().is_empty(), "grows while below the head limit");
        // Grown past what is kept between requests: given back once empty.
        while b.len() <= KEPT_BYTES {
            let n = b.spare().len();
            b.filled_by(n);
        }
        b.consume(b.len());
        b.shrink_if_idle();
        assert_eq!(b.spare().len(), BUFFER_BYTES);
        // An idle buffer holds nothing until bytes come again.
        b.release();
        assert!(b.is_released());
        assert_eq!(b.spare().len(), BUFFER_BYTES);
        assert!(
            Buffer::new().is_released(),
            "a new buffer holds no memory yet"
        );
    }
}
