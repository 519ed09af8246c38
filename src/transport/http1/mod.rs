//! HTTP/1.x on the wire (RFC 9112) for the forwarding engine in [`crate::transport`], split the way hyper
//! splits `proto/h1`: the read buffer ([`buffer`]), request and response heads parsed by `httparse` into
//! byte spans with their framing ([`head`]), the chunked transfer coding ([`chunked`]), and the small
//! encoders the rewritten heads are written with ([`encode`]). Which fields are hop-by-hop, and how names
//! are compared in every spelling, is [`super::names`].
//!
//! Strict by design: a head or body whose framing could be read two ways (Content-Length together with
//! Transfer-Encoding, differing Content-Lengths, a field name that reads as either without being spelled
//! so, a transfer coding other than `chunked`, a chunk line with stray bytes, bare LF inside chunked
//! framing) is an error, never a guess. Forwarded heads are rebuilt
//! field by field and chunked bodies are re-encoded, so what an upstream parses is exactly what was checked.

mod buffer;
mod chunked;
mod encode;
mod head;

pub use super::names::{is_hop_by_hop, same_field};
pub use buffer::{Buffer, BODY_READ_BYTES, BUFFER_BYTES, KEPT_BYTES};
pub use chunked::{encode_chunk, Chunk, ChunkError, ChunkedDecoder, LAST_CHUNK};
pub use encode::{push_decimal, push_field};
pub use head::{list, Field, Framing, HeadError, RequestHead, ResponseHead, Span};

/// Most header fields accepted in a request or response head (more: 431 / 502).
pub const MAX_HEADERS: usize = 128;
/// Largest request or response head, request line and fields included (larger: 431 / 502).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
