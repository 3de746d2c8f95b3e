//! The server side of a TLS connection on a worker: rustls driven directly over the
//! connection's owned-buffer I/O. Ours rather than monoio-rustls' because the gateway
//! needs the session after the handshake (protocol version for the access log, the
//! verified client certificate for mTLS), which that crate does not expose.
//!
//! Raw bytes are read into one buffer and handed to rustls as it asks for them; what
//! rustls produces is written out before any read waits, so a handshake flight, an alert
//! or a key-update answer never sits in memory while the peer waits for it.

use std::{
    io::{self, Read as _, Write as _},
    sync::Arc,
    time::Duration,
};

use monoio::{
    BufResult,
    buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut},
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split},
};

use crate::proxy::io::{ClientStream, SendNow};
use rustls::{ServerConfig, ServerConnection};

/// Raw bytes read from the socket per read: one maximal TLS record and its header.
const READ_BUFFER: usize = 16 * 1024 + 5;

/// The worker's spare raw-byte buffers (thread-local: one pool per worker thread), so a
/// connection going idle can give its buffers back and the next read on this core
/// reuses them instead of allocating.
mod spare_buffers {
    use std::cell::RefCell;

    /// Buffers kept per worker; more are freed.
    const KEPT: usize = 256;

    thread_local! {
        static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// A spare buffer, or a new (unallocated) one.
    pub fn take() -> Vec<u8> {
        SPARE
            .with(|spare| spare.borrow_mut().pop())
            .unwrap_or_default()
    }

    /// Keeps `buffer` for a later [`take`] (or frees it when the pool is full).
    pub fn give(buffer: Vec<u8>) {
        if buffer.capacity() == 0 {
            return;
        }
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < KEPT {
                spare.push(buffer);
            }
        });
    }
}

/// A server TLS stream: after [`TlsStream::accept`], plaintext in and out.
pub struct TlsStream<IO> {
    io: IO,
    session: ServerConnection,
    /// Raw bytes from the socket; `incoming[consumed..]` is not yet given to rustls.
    incoming: Vec<u8>,
    consumed: usize,
    /// Encrypted bytes rustls produced, reused between writes.
    outgoing: Vec<u8>,
}

impl<IO: AsyncReadRent + AsyncWriteRent + SendNow> TlsStream<IO> {
    /// Runs the server handshake on `io` with `config`.
    pub async fn accept(io: IO, config: Arc<ServerConfig>) -> io::Result<Self> {
        let session = ServerConnection::new(config).map_err(io::Error::other)?;
        let mut stream = Self {
            io,
            session,
            incoming: Vec::new(),
            consumed: 0,
            outgoing: Vec::new(),
        };
        while stream.session.is_handshaking() {
            stream.write_tls().await?;
            if !stream.session.is_handshaking() {
                break;
            }
            if stream.receive().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // The last flight (and session tickets) go out before the first read waits.
        stream.write_tls().await?;
        Ok(stream)
    }

    /// Raw bytes rustls has not seen yet, or plaintext (or a close) it holds: a read
    /// can go on without the socket.
    fn has_pending_input(&self) -> bool {
        self.consumed < self.incoming.len() || !self.session.wants_read()
    }

    /// The rustls session: negotiated version, ALPN, the client's certificates.
    pub fn session(&self) -> &ServerConnection {
        &self.session
    }

    /// Writes everything rustls wants to send.
    async fn write_tls(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            let mut out = std::mem::take(&mut self.outgoing);
            if out.capacity() == 0 {
                out = spare_buffers::take();
            }
            out.clear();
            self.session.write_tls(&mut out)?;
            // Records the socket takes at once go now (see `SendNow`); the rest, or
            // all of it when the buffer is full, through the ring.
            let sent = self.io.send_now(&out);
            if sent == out.len() {
                self.outgoing = out;
                continue;
            }
            out.drain(..sent);
            let (result, out) = self.io.write_all(out).await;
            self.outgoing = out;
            result?;
        }
        Ok(())
    }

    /// Gives rustls more raw bytes (reading the socket when none are buffered) and lets
    /// it process them; 0 at the end of the stream. A protocol error sends its alert.
    async fn receive(&mut self) -> io::Result<usize> {
        if self.consumed == self.incoming.len() {
            let mut buf = std::mem::take(&mut self.incoming);
            if buf.capacity() == 0 {
                buf = spare_buffers::take();
            }
            buf.clear();
            buf.reserve(READ_BUFFER);
            let (result, buf) = self.io.read(buf).await;
            self.incoming = buf;
            self.consumed = 0;
            if result? == 0 {
                // Tell rustls: a missing close_notify then reads as an unexpected EOF.
                let _ = self.session.read_tls(&mut io::empty());
                return Ok(0);
            }
        }
        let taken = self
            .session
            .read_tls(&mut &self.incoming[self.consumed..])?;
        if taken == 0 {
            // Only asked when rustls wants bytes: taking none would loop forever.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS receive buffer full",
            ));
        }
        self.consumed += taken;
        if let Err(error) = self.session.process_new_packets() {
            let _ = self.write_tls().await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
        Ok(taken)
    }

    /// Copies available plaintext into `dst`; `None` when rustls needs more bytes.
    fn plaintext(&mut self, dst: &mut [u8]) -> Option<io::Result<usize>> {
        match self.session.reader().read(dst) {
            Ok(n) => Some(Ok(n)),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => None,
            // The peer closed without close_notify: an end of stream like any other;
            // HTTP framing tells a truncated message apart.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Some(Ok(0)),
            Err(error) => Some(Err(error)),
        }
    }

    async fn read_into(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(result) = self.plaintext(dst) {
                return result;
            }
            // Answers rustls owes the peer (key updates) go out before we wait.
            self.write_tls().await?;
            if self.receive().await? == 0 {
                return self.plaintext(dst).unwrap_or(Ok(0));
            }
        }
    }

    async fn write_from(&mut self, src: &[u8]) -> io::Result<usize> {
        let written = self.session.writer().write(src)?;
        self.write_tls().await?;
        Ok(written)
    }
}

/// The proxy's plaintext goes through rustls, which sends its records itself (directly
/// when the socket takes them, see `write_tls`).
impl<IO> SendNow for TlsStream<IO> {}

impl<IO: ClientStream + AsyncReadRent + AsyncWriteRent> ClientStream for TlsStream<IO> {
    async fn read_for(
        &mut self,
        mut buf: Vec<u8>,
        window: Duration,
    ) -> (io::Result<Option<usize>>, Vec<u8>) {
        if !self.has_pending_input() {
            // Only the wait for the next raw bytes gives up; once some arrived, the
            // rest of their record follows like any read.
            let mut raw = spare_buffers::take();
            raw.clear();
            raw.reserve(READ_BUFFER);
            let (result, raw) = self.io.read_for(raw, window).await;
            match result {
                Ok(Some(0)) => {
                    spare_buffers::give(raw);
                    return (Ok(Some(0)), buf);
                }
                Ok(Some(_)) => {
                    spare_buffers::give(std::mem::replace(&mut self.incoming, raw));
                    self.consumed = 0;
                }
                Ok(None) => {
                    spare_buffers::give(raw);
                    return (Ok(None), buf);
                }
                Err(error) => {
                    spare_buffers::give(raw);
                    return (Err(error), buf);
                }
            }
        }
        let (len, capacity) = (buf.len(), buf.capacity());
        // SAFETY: the spare capacity is allocated memory `buf` owns; `read_into` writes
        // at most its length and reports how much, which is then marked initialized.
        let spare =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().add(len), capacity - len) };
        let result = self.read_into(spare).await;
        if let Ok(n) = result {
            // SAFETY: `n` bytes after `len` were just written.
            unsafe { buf.set_len(len + n) };
        }
        (result.map(Some), buf)
    }

    async fn readable(&mut self) -> io::Result<()> {
        if self.has_pending_input() {
            return Ok(());
        }
        // Idle: the raw-byte buffers go back to the worker until bytes arrive.
        self.consumed = 0;
        spare_buffers::give(std::mem::take(&mut self.incoming));
        spare_buffers::give(std::mem::take(&mut self.outgoing));
        self.io.readable().await
    }
}

impl<IO: AsyncReadRent + AsyncWriteRent + SendNow> AsyncReadRent for TlsStream<IO> {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's pointer and capacity describe writable memory it owns.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
        match self.read_into(dst).await {
            Ok(n) => {
                // SAFETY: `n` bytes were just written at the start of the buffer.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(error) => (Err(error), buf),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Plaintext goes into the first non-empty slice; the caller reads again for more.
        let slices = buf.write_iovec_len();
        let iovecs = buf.write_iovec_ptr();
        for i in 0..slices {
            // SAFETY: the buffer guarantees `slices` valid iovecs behind the pointer.
            let iovec = unsafe { *iovecs.add(i) };
            if iovec.iov_len == 0 {
                continue;
            }
            // SAFETY: an iovec of the buffer describes writable memory it owns.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(iovec.iov_base.cast(), iovec.iov_len) };
            return match self.read_into(dst).await {
                Ok(n) => {
                    // SAFETY: `n` bytes were written into the first slice.
                    unsafe { buf.set_init(n) };
                    (Ok(n), buf)
                }
                Err(error) => (Err(error), buf),
            };
        }
        (Ok(0), buf)
    }
}

impl<IO: AsyncReadRent + AsyncWriteRent + SendNow> AsyncWriteRent for TlsStream<IO> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's pointer and initialized length describe readable memory.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let result = self.write_from(src).await;
        (result, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let mut written = 0;
        for i in 0..buf.read_iovec_len() {
            // SAFETY: the buffer guarantees that many valid iovecs behind the pointer.
            let iovec = unsafe { *buf.read_iovec_ptr().add(i) };
            // SAFETY: an iovec of the buffer describes readable memory it owns.
            let src = unsafe { std::slice::from_raw_parts(iovec.iov_base.cast(), iovec.iov_len) };
            match self.session.writer().write(src) {
                Ok(n) => {
                    written += n;
                    if n < src.len() {
                        break;
                    }
                }
                Err(error) => return (Err(error), buf),
            }
        }
        let result = self.write_tls().await.map(|()| written);
        (result, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.write_tls().await?;
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.session.send_close_notify();
        self.write_tls().await?;
        self.io.shutdown().await
    }
}

// SAFETY: as for monoio's own streams: the halves of a split stream are driven by one
// thread, and no borrow of the session is held across an await.
unsafe impl<IO: Split> Split for TlsStream<IO> {}
