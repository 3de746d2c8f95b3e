//! Body relays: move one message body from a source stream to a destination stream,
//! re-framing it as told, in bounded memory. Used in both directions; the caller maps a
//! [`RelayError`] to the side that failed.

use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::{
    compress::BodyEncoder,
    io::{IoFailure, ReadBuf, SendNow, write_all_within},
};
use crate::http::{
    FramingError,
    chunked::{ChunkedDecoder, Decoded, LAST_CHUNK, encode_chunk},
    response::ResponseBody,
};

/// Read size while streaming bodies.
pub(super) const BODY_READ: usize = 64 * 1024;
/// Body bytes already buffered are copied behind a pending head (one write) up to this.
const COALESCE_LIMIT: usize = 16 * 1024;
/// Re-encoded output is flushed once it reaches this size.
const FLUSH_AT: usize = 32 * 1024;

/// Why a relay stopped early.
#[derive(Debug)]
pub(super) enum RelayError {
    /// Reading the source failed or timed out.
    Read(IoFailure),
    /// Writing the destination failed or timed out.
    Write(IoFailure),
    /// The source closed before the body ended.
    SourceClosed,
    /// The source broke chunked framing.
    Framing(FramingError),
    /// The body grew past the allowed size.
    TooLarge,
}

/// A copy of the body taken on the way through (for a mirrored request), given up when
/// the body grows past `cap`.
pub(super) struct Tee<'a> {
    pub buf: &'a mut Vec<u8>,
    pub cap: usize,
    pub overflowed: bool,
}

impl Tee<'_> {
    fn take(&mut self, data: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.buf.len() + data.len() > self.cap {
            self.overflowed = true;
            self.buf.clear();
        } else {
            self.buf.extend_from_slice(data);
        }
    }
}

/// The two ends of a relay and their deadlines. `out` may already hold bytes (a head)
/// that must go out before the body; it is empty again when a relay returns `Ok`.
pub(super) struct Relay<'a, R, W> {
    pub src: &'a mut R,
    pub buf: &'a mut ReadBuf,
    pub dst: &'a mut W,
    pub out: &'a mut Vec<u8>,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Where a copy of the body goes, when one is wanted.
    pub tee: Option<Tee<'a>>,
}

impl<R: AsyncReadRent, W: AsyncWriteRent + SendNow> Relay<'_, R, W> {
    fn tee(&mut self, data_len: usize) {
        if let Some(tee) = self.tee.as_mut() {
            tee.take(&self.buf.data()[..data_len]);
        }
    }

    /// Sends what `out` holds (a head without a body): a body of 0 bytes.
    pub async fn flush_head(&mut self) -> Result<u64, RelayError> {
        self.flush().await.map(|()| 0)
    }

    async fn flush(&mut self) -> Result<(), RelayError> {
        if self.out.is_empty() {
            return Ok(());
        }
        write_all_within(self.dst, self.out, self.write_timeout)
            .await
            .map_err(RelayError::Write)
    }

    async fn fill(&mut self) -> Result<(), RelayError> {
        match self
            .buf
            .fill_within(self.src, BODY_READ, self.read_timeout)
            .await
        {
            Ok(0) => Err(RelayError::SourceClosed),
            Ok(_) => Ok(()),
            Err(failure) => Err(RelayError::Read(failure)),
        }
    }

    /// Copies exactly `remaining` bytes: what the buffer holds first (behind the pending
    /// head when small), then straight from reads, without copying. Returns the body
    /// length, like every copy.
    pub async fn copy_length(&mut self, length: u64) -> Result<u64, RelayError> {
        let mut remaining = length;
        let buffered = (self.buf.len() as u64).min(remaining) as usize;
        self.tee(buffered);
        if buffered <= COALESCE_LIMIT {
            self.out.extend_from_slice(&self.buf.data()[..buffered]);
            self.buf.consume(buffered);
            self.flush().await?;
        } else {
            self.flush().await?;
            self.buf
                .write_prefix_to(self.dst, buffered, self.write_timeout)
                .await
                .map_err(RelayError::Write)?;
        }
        remaining -= buffered as u64;
        while remaining > 0 {
            self.fill().await?;
            let take = (self.buf.len() as u64).min(remaining) as usize;
            self.tee(take);
            self.buf
                .write_prefix_to(self.dst, take, self.write_timeout)
                .await
                .map_err(RelayError::Write)?;
            remaining -= take as u64;
        }
        Ok(length)
    }

    /// Decodes a chunked body and writes it re-chunked (`rechunk`) or raw, refusing more
    /// than `max_len` body bytes. Trailers are consumed and dropped.
    pub async fn copy_chunked(&mut self, rechunk: bool, max_len: u64) -> Result<u64, RelayError> {
        let length = self
            .chunked_into(max_len, &mut Sink::Raw { rechunk })
            .await?;
        self.finish(rechunk).await?;
        Ok(length)
    }

    /// Copies until the source closes, re-chunked (`rechunk`) or raw.
    pub async fn copy_until_close(&mut self, rechunk: bool) -> Result<u64, RelayError> {
        let length = self.until_close_into(&mut Sink::Raw { rechunk }).await?;
        self.finish(rechunk).await?;
        Ok(length)
    }

    /// Compresses a body of `framing` from the source through `encoder`, writing the
    /// encoded stream re-chunked (`rechunk`) or raw. Returns the encoded length.
    pub async fn copy_encoded(
        &mut self,
        framing: ResponseBody,
        mut encoder: BodyEncoder,
        rechunk: bool,
    ) -> Result<u64, RelayError> {
        let mut sink = Sink::Encoded {
            encoder: &mut encoder,
            rechunk,
            sent: 0,
        };
        match framing {
            ResponseBody::None => {}
            ResponseBody::Length(length) => {
                let mut remaining = length;
                while remaining > 0 {
                    if self.buf.is_empty() {
                        self.flush().await?;
                        self.fill().await?;
                    }
                    let take = (self.buf.len() as u64).min(remaining) as usize;
                    self.tee(take);
                    sink.put(&self.buf.data()[..take], self.out);
                    self.buf.consume(take);
                    remaining -= take as u64;
                    if self.out.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
            }
            ResponseBody::Chunked => {
                self.chunked_into(u64::MAX, &mut sink).await?;
            }
            ResponseBody::UntilClose => {
                self.until_close_into(&mut sink).await?;
            }
        }
        let sent = sink.encoded_len();
        let tail = encoder.finish();
        frame(&tail, rechunk, self.out);
        self.finish(rechunk).await?;
        Ok(sent + tail.len() as u64)
    }

    /// Decodes a chunked body into `sink` (and the tee), flushing what is ready before
    /// every wait; returns the decoded length. Trailers are consumed and dropped.
    async fn chunked_into(&mut self, max_len: u64, sink: &mut Sink<'_>) -> Result<u64, RelayError> {
        let mut decoder = ChunkedDecoder::new();
        loop {
            match decoder.step(self.buf.data()).map_err(RelayError::Framing)? {
                Decoded::Data { start, end } => {
                    let data = &self.buf.data()[start..end];
                    if let Some(tee) = self.tee.as_mut() {
                        tee.take(data);
                    }
                    sink.put(data, self.out);
                    self.buf.consume(end);
                    if decoder.body_len > max_len {
                        return Err(RelayError::TooLarge);
                    }
                }
                Decoded::Done { consumed } => {
                    self.buf.consume(consumed);
                    return Ok(decoder.body_len);
                }
                Decoded::NeedMore => {
                    let all = self.buf.len();
                    self.buf.consume(all);
                    // Whatever is decoded goes out before waiting for more.
                    self.flush().await?;
                    self.fill().await?;
                }
            }
            if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
    }

    /// Copies into `sink` (and the tee) until the source closes; returns the length.
    async fn until_close_into(&mut self, sink: &mut Sink<'_>) -> Result<u64, RelayError> {
        let mut copied = 0u64;
        loop {
            let len = self.buf.len();
            self.tee(len);
            sink.put(self.buf.data(), self.out);
            copied += len as u64;
            self.buf.consume(len);
            self.flush().await?;
            match self.fill().await {
                Ok(()) => {}
                Err(RelayError::SourceClosed) => return Ok(copied),
                Err(error) => return Err(error),
            }
        }
    }

    /// Ends a re-chunked body with the last chunk and sends what is left.
    async fn finish(&mut self, rechunk: bool) -> Result<(), RelayError> {
        if rechunk {
            self.out.extend_from_slice(LAST_CHUNK);
        }
        self.flush().await
    }
}

/// Where a relay puts body bytes: into the output as they are, or through a compressor.
enum Sink<'e> {
    Raw {
        rechunk: bool,
    },
    Encoded {
        encoder: &'e mut BodyEncoder,
        rechunk: bool,
        /// Encoded bytes put out so far.
        sent: u64,
    },
}

impl Sink<'_> {
    /// Encoded bytes put out so far (zero for a raw sink).
    fn encoded_len(&self) -> u64 {
        match self {
            Self::Raw { .. } => 0,
            Self::Encoded { sent, .. } => *sent,
        }
    }

    /// Puts `data` (body bytes as the source sent them) into `out`, framed.
    fn put(&mut self, data: &[u8], out: &mut Vec<u8>) {
        match self {
            Self::Raw { rechunk } => frame(data, *rechunk, out),
            Self::Encoded {
                encoder,
                rechunk,
                sent,
            } => {
                encoder.write(data);
                let produced = encoder.output();
                *sent += produced.len() as u64;
                frame(produced, *rechunk, out);
                produced.clear();
            }
        }
    }
}

/// Appends `data` to `out` as a chunk (`rechunk`) or raw.
fn frame(data: &[u8], rechunk: bool, out: &mut Vec<u8>) {
    if rechunk {
        encode_chunk(data, out);
    } else {
        out.extend_from_slice(data);
    }
}
