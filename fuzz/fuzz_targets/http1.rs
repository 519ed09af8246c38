//! Fuzzes the HTTP/1 wire layer of the forwarding engine (`tokengate::transport::http1`): request and response head
//! parsing and the chunked decoder, on arbitrary bytes. Asserts, besides "no panic":
//! - a complete request head parses the same from exactly its own bytes (the end is found once, the same
//!   way), every span lies inside the head, and `Length`/`Chunked` framing comes with the field that says
//!   so — never both (no Content-Length + Transfer-Encoding can pass);
//! - the chunked decoder gives the same data, the same end and the same verdict however the input is split
//!   into reads (split points drawn from the input), and what it decodes re-encodes to a body it decodes
//!   to the same data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::transport::http1::{
    encode_chunk, Chunk, ChunkedDecoder, Framing, RequestHead, ResponseHead, LAST_CHUNK,
};

/// Decodes `input` fed in pieces cut at `cuts`; returns (data, bytes consumed up to the end, or error).
fn decode(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Result<Option<usize>, ()>) {
    let mut d = ChunkedDecoder::default();
    let mut data = Vec::new();
    let mut pos = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    bounds.push(input.len());
    bounds.sort_unstable();
    for end in bounds {
        while pos < end {
            match d.decode(&input[pos..end]) {
                Ok((n, c)) => {
                    if let Chunk::Data(r) = &c {
                        data.extend_from_slice(&input[pos + r.start..pos + r.end]);
                    }
                    pos += n;
                    if c == Chunk::End {
                        return (data, Ok(Some(pos)));
                    }
                }
                Err(_) => return (data, Err(())),
            }
        }
    }
    (data, Ok(None))
}

fuzz_target!(|input: &[u8]| {
    let mut head = RequestHead::default();
    if let Ok(true) = head.parse(input) {
        let len = head.len;
        assert!(len <= input.len());
        for f in &head.fields {
            assert!(f.name.end as usize <= len && f.value.end as usize <= len);
        }
        let has = |name: &str| {
            head.fields
                .iter()
                .any(|f| f.name.get(input).eq_ignore_ascii_case(name.as_bytes()))
        };
        match head.framing {
            Framing::Length(_) => assert!(has("content-length") && !has("transfer-encoding")),
            Framing::Chunked => assert!(has("transfer-encoding") && !has("content-length")),
            Framing::None | Framing::Close => assert!(!has("transfer-encoding")),
        }
        let mut again = RequestHead::default();
        assert_eq!(again.parse(&input[..len]), Ok(true), "a head does not parse from its own bytes");
        assert_eq!((again.len, again.framing), (len, head.framing));
    }
    let mut resp = ResponseHead::default();
    let _ = resp.parse(input, input.first().is_some_and(|b| b & 1 == 1));

    // The chunked decoder: split-invariant, and decode(encode(x)) == x.
    let cuts: Vec<usize> = input.iter().take(4).map(|&b| b as usize * 7).collect();
    let whole = decode(input, &[]);
    let split = decode(input, &cuts);
    assert_eq!(whole, split, "the decoder depends on how reads are split");
    if let (data, Ok(Some(_))) = &whole {
        let mut body = Vec::new();
        for piece in data.chunks(100) {
            encode_chunk(&mut body, piece);
        }
        body.extend_from_slice(LAST_CHUNK);
        let (again, end) = decode(&body, &[]);
        assert_eq!((&again, end), (data, Ok(Some(body.len()))));
    }
});
