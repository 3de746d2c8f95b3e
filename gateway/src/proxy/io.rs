//! Buffered I/O over monoio's owned-buffer model: a read buffer that appends into its
//! spare capacity, and helpers that write part of it without copying.

use std::{future::Future, io, time::Duration};

use monoio::{
    buf::{IoBuf, IoBufMut},
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt},
};

/// Bytes read from a stream and not yet consumed.
#[derive(Debug, Default)]
pub struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
}

/// Why an I/O step with a deadline did not complete.
#[derive(Debug, thiserror::Error)]
pub enum IoFailure {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Largest buffer kept between requests; bigger ones (grown by bodies) are shrunk back.
const KEEP_CAPACITY: usize = 64 * 1024;

impl ReadBuf {
    /// An empty buffer with `capacity` bytes reserved.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
            pos: 0,
        }
    }

    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Number of unconsumed bytes.
    pub fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether everything read has been consumed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `n` bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// The buffer's memory when nothing is left unread (for a pool), leaving this empty
    /// and unallocated.
    pub fn release(&mut self) -> Option<Vec<u8>> {
        if !self.is_empty() || self.buf.capacity() == 0 {
            return None;
        }
        self.pos = 0;
        Some(std::mem::take(&mut self.buf))
    }

    /// Gives an unallocated buffer memory to read into (from a pool).
    pub fn provide(&mut self, mut memory: Vec<u8>) {
        if self.buf.capacity() == 0 {
            memory.clear();
            self.buf = memory;
            self.pos = 0;
        }
    }

    /// Bytes allocated.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Releases memory grown by a large body once the buffer is empty.
    pub fn shrink_if_idle(&mut self) {
        if self.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::with_capacity(KEEP_CAPACITY / 4);
        }
    }

    /// Reads more bytes from `stream`, appending; `Ok(0)` is end of stream. Makes room
    /// for at least `min_spare` bytes first.
    pub async fn fill<S: AsyncReadRent>(
        &mut self,
        stream: &mut S,
        min_spare: usize,
    ) -> io::Result<usize> {
        if self.pos > 0 && self.buf.capacity() - self.buf.len() < min_spare {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < min_spare {
            self.buf.reserve(min_spare);
        }
        let buf = std::mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        let (result, slice) = stream.read(buf.slice_mut(len..cap)).await;
        self.buf = slice.into_inner();
        result
    }

    /// Like [`ReadBuf::fill`], failing with [`IoFailure::Timeout`] after `timeout`.
    pub async fn fill_within<S: AsyncReadRent>(
        &mut self,
        stream: &mut S,
        min_spare: usize,
        timeout: Duration,
    ) -> Result<usize, IoFailure> {
        within(timeout, self.fill(stream, min_spare)).await
    }

    /// Writes the first `n` unconsumed bytes to `stream` without copying, then consumes them.
    pub async fn write_prefix_to<S: AsyncWriteRent>(
        &mut self,
        stream: &mut S,
        n: usize,
        timeout: Duration,
    ) -> Result<(), IoFailure> {
        let buf = std::mem::take(&mut self.buf);
        let range = self.pos..self.pos + n;
        let result = monoio::time::timeout(timeout, async move {
            let (result, slice) = stream.write_all(buf.slice(range)).await;
            (result, slice.into_inner())
        })
        .await;
        match result {
            Ok((result, buf)) => {
                self.buf = buf;
                result?;
                self.consume(n);
                Ok(())
            }
            Err(_) => Err(IoFailure::Timeout),
        }
    }
}

/// Runs an I/O future with a deadline.
pub async fn within<T>(
    timeout: Duration,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, IoFailure> {
    match monoio::time::timeout(timeout, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(IoFailure::Timeout),
    }
}

/// Writes all of `out` to `stream` within `timeout`, handing the buffer back cleared.
pub async fn write_all_within<S: AsyncWriteRent>(
    stream: &mut S,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), IoFailure> {
    let buf = std::mem::take(out);
    let result = monoio::time::timeout(timeout, async move { stream.write_all(buf).await }).await;
    match result {
        Ok((result, mut buf)) => {
            buf.clear();
            *out = buf;
            result?;
            Ok(())
        }
        Err(_) => Err(IoFailure::Timeout),
    }
}
