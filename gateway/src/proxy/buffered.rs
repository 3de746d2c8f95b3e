//! Reading a whole body before acting on it (mediation): the body is scanned in the
//! connection's read buffer *without consuming it*, so when it turns out larger than
//! the limit the buffer still holds every byte and the body can be streamed untouched.

use std::time::Duration;

use monoio::io::AsyncReadRent;

use super::io::{IoFailure, ReadBuf};
use crate::http::{
    FramingError,
    chunked::{ChunkedDecoder, Decoded},
};

/// How the body to read is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    Length(u64),
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// A body scanned whole, or found too large.
#[derive(Debug)]
pub(super) enum Peeked {
    /// `raw_len` bytes of the buffer are the body as framed; `body` is it decoded.
    Complete { raw_len: usize, body: Vec<u8> },
    /// Larger than the limit: nothing was consumed.
    TooLarge,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum PeekError {
    #[error("read failed: {0}")]
    Read(IoFailure),
    #[error("the peer closed before the body ended")]
    Closed,
    #[error("{0}")]
    Framing(#[from] FramingError),
}

/// Read size while buffering a body.
const READ: usize = 16 * 1024;

/// Reads until `buf` holds the whole body (decoded into `Peeked::Complete`), or the body
/// proves larger than `max` decoded bytes. Chunk framing may add at most as much again
/// plus 4 KiB before the body counts as too large (many tiny chunks).
pub(super) async fn peek_body<S: AsyncReadRent>(
    buf: &mut ReadBuf,
    stream: &mut S,
    framing: BodyFraming,
    max: usize,
    read_timeout: Duration,
) -> Result<Peeked, PeekError> {
    if let BodyFraming::Length(n) = framing
        && n > max as u64
    {
        return Ok(Peeked::TooLarge);
    }
    let mut decoder = ChunkedDecoder::new();
    let mut scanned = 0;
    let mut decoded = Vec::new();
    let raw_cap = max.saturating_mul(2).saturating_add(4096);
    loop {
        let data = buf.data();
        match framing {
            BodyFraming::Length(n) => {
                let n = n as usize;
                if data.len() >= n {
                    return Ok(Peeked::Complete {
                        raw_len: n,
                        body: data[..n].to_vec(),
                    });
                }
            }
            BodyFraming::Chunked => loop {
                match decoder.step(&data[scanned..])? {
                    Decoded::Data { start, end } => {
                        decoded.extend_from_slice(&data[scanned + start..scanned + end]);
                        scanned += end;
                    }
                    Decoded::NeedMore => {
                        scanned = data.len();
                        break;
                    }
                    Decoded::Done { consumed } => {
                        return Ok(Peeked::Complete {
                            raw_len: scanned + consumed,
                            body: decoded,
                        });
                    }
                }
            },
            BodyFraming::UntilClose => {}
        }
        if decoded.len() > max
            || buf.len() > raw_cap
            || (framing == BodyFraming::UntilClose && buf.len() > max)
        {
            return Ok(Peeked::TooLarge);
        }
        match buf.fill_within(stream, READ, read_timeout).await {
            Ok(0) if framing == BodyFraming::UntilClose => {
                return Ok(Peeked::Complete {
                    raw_len: buf.len(),
                    body: buf.data().to_vec(),
                });
            }
            Ok(0) => return Err(PeekError::Closed),
            Ok(_) => {}
            Err(failure) => return Err(PeekError::Read(failure)),
        }
    }
}
