//! The chunked decoder fed arbitrary bytes in arbitrary pieces: never panics, consumes
//! exactly what it reports, and whatever it accepts re-encodes and decodes to the same
//! data.
#![no_main]

use gateway::http::chunked::{ChunkedDecoder, Decoded, LAST_CHUNK, encode_chunk};
use libfuzzer_sys::fuzz_target;

/// Decodes `input` fed `piece` bytes at a time; the data, or `None` when refused or cut.
fn decode(input: &[u8], piece: usize) -> Option<Vec<u8>> {
    let mut decoder = ChunkedDecoder::new();
    let mut out = Vec::new();
    let (mut fed, mut pos) = (0, 0);
    loop {
        if pos == fed {
            if fed == input.len() {
                return None;
            }
            fed = (fed + piece).min(input.len());
        }
        match decoder.step(&input[pos..fed]).ok()? {
            Decoded::Data { start, end } => {
                assert!(start <= end && pos + end <= fed);
                out.extend_from_slice(&input[pos + start..pos + end]);
                pos += end;
            }
            Decoded::NeedMore => pos = fed,
            Decoded::Done { consumed } => {
                assert!(pos + consumed <= fed);
                return Some(out);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, input)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece % 32) + 1;
    if let Some(body) = decode(input, piece) {
        let mut encoded = Vec::new();
        encode_chunk(&body, &mut encoded);
        encoded.extend_from_slice(LAST_CHUNK);
        assert_eq!(decode(&encoded, 7).as_deref(), Some(body.as_slice()));
    }
});
