//! Chunked transfer coding (RFC 9112 §7.1): a strict incremental decoder and the encoder
//! the gateway re-frames bodies with. Chunk extensions are validated and bounded, then
//! dropped; trailers are validated and bounded, then dropped — they never become headers.

use std::io::Write as _;

use super::{FramingError, hex_value};

/// Longest chunk-size line extension the decoder accepts, per chunk.
const MAX_EXTENSION_LEN: usize = 4096;
/// Largest trailer section the decoder accepts.
const MAX_TRAILER_LEN: usize = 16 * 1024;
/// A chunk size is at most 16 hex digits (u64), leading zeros included.
const MAX_SIZE_DIGITS: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits; `digits` so far.
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeWhitespace,
    /// Inside `;ext...` up to CR.
    Extension,
    /// Expecting LF after the size line's CR.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Expecting LF after a trailer line.
    TrailerLf,
    /// Expecting LF of the final blank line.
    FinalLf,
    /// The body is complete.
    Done,
}

/// What one decoding step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// `input[start..end]` is body data; everything before `end` is consumed.
    Data { start: usize, end: usize },
    /// All input was consumed without finding data; read more.
    NeedMore,
    /// The body ended; `consumed` bytes belonged to it, the rest is the next message.
    Done { consumed: usize },
}

/// Incremental, strict chunked decoder.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    extension_len: usize,
    trailer_len: usize,
    /// Total data bytes decoded so far.
    pub body_len: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

const BAD_SIZE: FramingError = FramingError::Malformed("invalid chunk size");
const BAD_EXT: FramingError = FramingError::Malformed("invalid chunk extension");
const BAD_CRLF: FramingError = FramingError::Malformed("missing CRLF after chunk");
const BAD_TRAILER: FramingError = FramingError::Malformed("invalid trailer section");

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            extension_len: 0,
            trailer_len: 0,
            body_len: 0,
        }
    }

    /// Whether the final chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing bytes from `input` until data, the end of input, or the end of
    /// the body. Returns the step's finding; for `Data` and `NeedMore` the consumed
    /// length is `end` and `input.len()` respectively.
    pub fn step(&mut self, input: &[u8]) -> Result<Decoded, FramingError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Data => {
                    let take =
                        (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    self.body_len += take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Decoded::Data {
                        start: i,
                        end: i + take,
                    });
                }
                State::Size => match hex_value(b) {
                    Some(v) => {
                        // Leading zeros count toward the bound too: "0000…1" floods are cut.
                        if self.digits == MAX_SIZE_DIGITS {
                            return Err(BAD_SIZE);
                        }
                        self.size = self.size << 4 | u64::from(v);
                        self.digits += 1;
                    }
                    None if self.digits == 0 => return Err(BAD_SIZE),
                    None => self.after_size(b)?,
                },
                State::SizeWhitespace => self.after_size(b)?,
                State::Extension => {
                    self.extension_len += 1;
                    if self.extension_len > MAX_EXTENSION_LEN {
                        return Err(BAD_EXT);
                    }
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\t' | b' '..=b'~' | 0x80..=0xFF => {}
                        _ => return Err(BAD_EXT),
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(BAD_SIZE);
                    }
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(BAD_CRLF);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(BAD_CRLF);
                    }
                    self.state = State::Size;
                    self.digits = 0;
                    self.size = 0;
                    self.extension_len = 0;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::FinalLf,
                    _ if super::is_tchar(b) => {
                        self.count_trailer()?;
                        self.state = State::Trailer;
                    }
                    _ => return Err(BAD_TRAILER),
                },
                State::Trailer => {
                    self.count_trailer()?;
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\t' | b' '..=b'~' | 0x80..=0xFF => {}
                        _ => return Err(BAD_TRAILER),
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(BAD_TRAILER);
                    }
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(BAD_TRAILER);
                    }
                    self.state = State::Done;
                    return Ok(Decoded::Done { consumed: i + 1 });
                }
                State::Done => return Ok(Decoded::Done { consumed: i }),
            }
            i += 1;
        }
        if self.state == State::Done {
            return Ok(Decoded::Done { consumed: i });
        }
        Ok(Decoded::NeedMore)
    }

    fn after_size(&mut self, b: u8) -> Result<(), FramingError> {
        match b {
            b' ' | b'\t' => self.state = State::SizeWhitespace,
            b';' => {
                self.state = State::Extension;
                self.extension_len = 1;
            }
            b'\r' => self.state = State::SizeLf,
            _ => return Err(BAD_SIZE),
        }
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), FramingError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILER_LEN {
            return Err(BAD_TRAILER);
        }
        Ok(())
    }
}

/// Appends one chunk (`size CRLF data CRLF`) to `out`; empty data appends nothing, so
/// it can never be mistaken for the last chunk.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Decodes a whole body fed in pieces of `piece` bytes.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), FramingError> {
        let mut decoder = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut pos = 0;
        while fed < input.len() || pos < fed {
            if pos == fed {
                fed = (fed + piece).min(input.len());
            }
            match decoder.step(&input[pos..fed])? {
                Decoded::Data { start, end } => {
                    out.extend_from_slice(&input[pos + start..pos + end]);
                    pos += end;
                }
                Decoded::NeedMore => {
                    pos = fed;
                    if fed == input.len() {
                        return Err(FramingError::Malformed("truncated"));
                    }
                }
                Decoded::Done { consumed } => return Ok((out, pos + consumed)),
            }
        }
        Err(FramingError::Malformed("truncated"))
    }

    #[test]
    fn decodes_valid_bodies() {
        let body = b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 100] {
            assert_eq!(
                decode(body, piece),
                Ok((b"hello world".to_vec(), body.len() - 4)),
                "piece {piece}"
            );
        }
        assert_eq!(
            decode(b"A\r\n0123456789\r\n0\r\n\r\n", 4).map(|r| r.0),
            Ok(b"0123456789".to_vec())
        );
        assert_eq!(
            decode(b"5 ;x\r\nhello\r\n0\r\n\r\n", 4).map(|r| r.0),
            Ok(b"hello".to_vec())
        );
    }

    #[test]
    fn rejects_malformed_framing() {
        for body in [
            &b"\r\nhello\r\n0\r\n\r\n"[..],  // empty size
            b"-5\r\nhello\r\n0\r\n\r\n",     // signed size
            b"0x5\r\nhello\r\n0\r\n\r\n",    // prefixed size
            b"5\nhello\r\n0\r\n\r\n",        // bare LF after size
            b"5\r\nhelloXX0\r\n\r\n",        // data longer than size
            b"5\r\nhello\n0\r\n\r\n",        // bare LF after data
            b"5;a\nb\r\nhello\r\n0\r\n\r\n", // bare LF inside extension
            b"5;\x00\r\nhello\r\n0\r\n\r\n", // control byte in extension
            b"10000000000000000\r\n",        // 17 digits
            b"0\r\nbad trailer\n\r\n",       // bare LF in trailer
            b"0\r\n: x\r\n\r\n",             // trailer without a name
            b"5\r\nhello\r\n0\r\n\r",        // truncated
        ] {
            assert!(
                decode(body, 3).is_err(),
                "must reject {:?}",
                String::from_utf8_lossy(body)
            );
        }
        let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(5000));
        assert!(decode(long_ext.as_bytes(), 64).is_err());
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8), piece in 1usize..50) {
            let mut encoded = Vec::new();
            for chunk in &chunks {
                encode_chunk(chunk, &mut encoded);
            }
            encoded.extend_from_slice(LAST_CHUNK);
            let (decoded, consumed) = decode(&encoded, piece).expect("own encoding decodes");
            prop_assert_eq!(decoded, chunks.concat());
            prop_assert_eq!(consumed, encoded.len());
        }
    }
}
