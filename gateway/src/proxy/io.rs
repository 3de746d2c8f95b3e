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

    /// Drops every unconsumed byte, keeping the memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
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

    /// Makes room for at least `min_spare` more bytes, dropping consumed ones first.
    fn make_room(&mut self, min_spare: usize) {
        if self.pos > 0 && self.buf.capacity() - self.buf.len() < min_spare {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < min_spare {
            self.buf.reserve(min_spare);
        }
    }

    /// Reads more bytes from `stream`, appending; `Ok(0)` is end of stream. Makes room
    /// for at least `min_spare` bytes first.
    pub async fn fill<S: AsyncReadRent>(
        &mut self,
        stream: &mut S,
        min_spare: usize,
    ) -> io::Result<usize> {
        self.make_room(min_spare);
        let buf = std::mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        let (result, slice) = stream.read(buf.slice_mut(len..cap)).await;
        self.buf = slice.into_inner();
        result
    }

    /// Like [`ReadBuf::fill`], but gives up after `window` when nothing arrived
    /// (`Ok(None)`, see [`ClientStream::read_for`]).
    pub async fn fill_for<S: ClientStream>(
        &mut self,
        stream: &mut S,
        min_spare: usize,
        window: Duration,
    ) -> io::Result<Option<usize>> {
        self.make_room(min_spare);
        let (result, buf) = stream.read_for(std::mem::take(&mut self.buf), window).await;
        self.buf = buf;
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

/// What a client connection's stream offers beyond plain reads, so an idle keep-alive
/// connection holds its socket and little else: a read that gives up after a short
/// window without losing bytes, and a wait for bytes that holds no buffer.
pub trait ClientStream: SendNow {
    /// Reads into the spare capacity of `buf` like a plain read, but gives up after
    /// `window` when nothing arrived: `Ok(None)`, no byte lost (the pending read is
    /// cancelled and awaited). `Ok(Some(0))` is the end of the stream.
    fn read_for(
        &mut self,
        buf: Vec<u8>,
        window: Duration,
    ) -> impl Future<Output = (io::Result<Option<usize>>, Vec<u8>)>;

    /// Resolves once the peer sent something, closed or failed: a read then will not
    /// wait. Memory only needed while bytes are in flight may be given back meanwhile.
    fn readable(&mut self) -> impl Future<Output = io::Result<()>>;
}

impl ClientStream for monoio::net::TcpStream {
    async fn read_for(
        &mut self,
        buf: Vec<u8>,
        window: Duration,
    ) -> (io::Result<Option<usize>>, Vec<u8>) {
        use monoio::io::CancelableAsyncReadRent;
        let canceller = monoio::io::Canceller::new();
        let (len, capacity) = (buf.len(), buf.capacity());
        let mut read =
            std::pin::pin!(self.cancelable_read(buf.slice_mut(len..capacity), canceller.handle()));
        let (result, slice) = monoio::select! {
            done = &mut read => done,
            () = monoio::time::sleep(window) => {
                canceller.cancel();
                read.await
            }
        };
        let buf = slice.into_inner();
        match result {
            Ok(n) => (Ok(Some(n)), buf),
            Err(error) if error.raw_os_error() == Some(libc::ECANCELED) => (Ok(None), buf),
            Err(error) => (Err(error), buf),
        }
    }

    async fn readable(&mut self) -> io::Result<()> {
        monoio::net::TcpStream::readable(self, false).await
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

/// A stream that can take bytes at once when its socket's send buffer has room, which
/// is the common case for a request head or a small response.
///
/// Why: an io_uring write only reaches the kernel when the worker next parks, so after a
/// burst every response waits until the whole burst is parsed, and the task comes back
/// through the ring to learn it was written. A direct non-blocking send hands each
/// response to the peer (and the backend) as soon as it is ready, with no timer armed.
pub trait SendNow {
    /// Sends what the socket takes without waiting and returns how many bytes that was;
    /// 0 when it would block, failed (the ring write that follows reports the error), or
    /// the stream has no direct path (a TLS stream sends its own records).
    fn send_now(&mut self, _bytes: &[u8]) -> usize {
        0
    }
}

impl SendNow for monoio::net::TcpStream {
    fn send_now(&mut self, bytes: &[u8]) -> usize {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is this stream's open socket and `bytes` is a valid
        // buffer of the length given; MSG_DONTWAIT makes the call return at once.
        let sent = unsafe {
            libc::send(
                self.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(sent).unwrap_or(0)
    }
}

/// Writes all of `out` to `stream` within `timeout`, handing the buffer back cleared:
/// directly when the socket takes it all ([`SendNow`]), else through the ring.
pub async fn write_all_within<S: AsyncWriteRent + SendNow>(
    stream: &mut S,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), IoFailure> {
    let sent = stream.send_now(out);
    if sent == out.len() {
        out.clear();
        return Ok(());
    }
    out.drain(..sent);
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// More than loopback's socket buffers hold, so a direct send takes only part.
    const LARGE: usize = 16 * 1024 * 1024;

    #[test]
    fn a_write_the_socket_cannot_take_at_once_finishes_through_the_ring_in_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let payload: Vec<u8> = (0..LARGE).map(|i| (i % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().expect("accept");
            // Let the writer fill the socket's buffers before anything is drained.
            std::thread::sleep(Duration::from_millis(100));
            let mut received = Vec::with_capacity(LARGE);
            peer.read_to_end(&mut received).expect("read");
            received
        });
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        let expected = payload.clone();
        runtime.block_on(async move {
            let mut stream = monoio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            let mut out = payload;
            let first = stream.send_now(&out);
            assert!(
                first > 0 && first < LARGE,
                "a direct send takes what fits ({first} of {LARGE} bytes)"
            );
            out.drain(..first);
            write_all_within(&mut stream, &mut out, Duration::from_secs(30))
                .await
                .expect("the rest is written");
            assert!(out.is_empty(), "the buffer comes back cleared");
            assert_eq!(stream.send_now(b""), 0);
        });
        // The stream's close may wait in the ring until the runtime goes.
        drop(runtime);
        assert!(
            reader.join().expect("reader") == expected,
            "every byte, in order"
        );
    }
}
