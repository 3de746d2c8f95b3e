//! The whole downstream connection state machine over in-memory I/O: arbitrary bytes,
//! delivered in arbitrary read sizes, through `serve_connection` (parse, route, local
//! answers, upstream connect failure, body handling). Must never panic or hang, and
//! whatever it writes must be HTTP responses.
#![no_main]

use std::{cell::RefCell, path::Path, rc::Rc, sync::Arc};

use gateway::{
    config::Config,
    proxy::{
        Snapshot, Worker, WorkerShared,
        io::{ClientStream, SendNow},
        serve_connection,
    },
    ratelimit::RateTable,
};
use libfuzzer_sys::fuzz_target;
use monoio::{
    BufResult,
    buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut},
    io::{AsyncReadRent, AsyncWriteRent},
};

/// Routes: one to a port nothing listens on (connect fails fast: 502), one behind every
/// policy phase (credentials from headers, cookies and the query; a header-keyed rate
/// limit; a concurrency limit; CORS), and unrouted space (404).
const CONFIG: &str = r#"
[limits]
max_head_size = "4KiB"
max_headers = 32
max_uri_length = 1024
max_body_size = "64KiB"
discard_body_max = "1KiB"

[[listeners]]
name = "fuzz"
bind = "127.0.0.1:0"

[[upstreams]]
name = "nowhere"
targets = [ { addr = "127.0.0.1:1" }, { addr = "127.0.0.1:2" } ]
connect_timeout = "50ms"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "nowhere"

[[routes]]
name = "private"
path_prefix = "/private"
upstream = "nowhere"
auth = ["jwt", "api_key"]
rate_limit = { rate = "1000/s", key = "header:x-user" }
max_in_flight = 4
cors = { allow_origins = ["https://*.example.com"], allow_headers = ["authorization"] }

[auth.api_key]
query = "api_key"

[[auth.jwt]]
keys = [ { alg = "HS256", secret = "fuzzing-secret-fuzzing-secret-32b" } ]
token_from = ["header", "cookie:session", "query:access_token"]

[[consumers]]
name = "fuzzer"
api_keys = ["sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"]
"#;

/// A client connection made of the fuzz input, handed out `chunk` bytes per read.
struct MemoryStream {
    input: Vec<u8>,
    pos: usize,
    chunk: usize,
    output: Rc<RefCell<Vec<u8>>>,
}

// SAFETY: reads touch only `input` and `pos`, writes only `output`: the halves of a
// split never share state.
unsafe impl monoio::io::Split for MemoryStream {}

impl AsyncReadRent for MemoryStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let n = self
            .chunk
            .min(self.input.len() - self.pos)
            .min(buf.bytes_total());
        // SAFETY: `n` is at most the buffer's capacity, and the source range is in bounds.
        unsafe {
            std::ptr::copy_nonoverlapping(self.input[self.pos..].as_ptr(), buf.write_ptr(), n);
            buf.set_init(n);
        }
        self.pos += n;
        (Ok(n), buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        (Err(std::io::ErrorKind::Unsupported.into()), buf)
    }
}

impl AsyncWriteRent for MemoryStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's initialized bytes are readable for its lifetime.
        let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        self.output.borrow_mut().extend_from_slice(bytes);
        (Ok(bytes.len()), buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        (Err(std::io::ErrorKind::Unsupported.into()), buf)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Takes the first half of every direct send, so each write runs both paths: the
/// direct one and the ring write of the rest.
impl SendNow for MemoryStream {
    fn send_now(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.len() / 2;
        self.output.borrow_mut().extend_from_slice(&bytes[..taken]);
        taken
    }
}

/// Input is always at hand: a read never has to give up, and the stream is always
/// readable (the end of the input reads as the end of the stream).
impl ClientStream for MemoryStream {
    async fn read_for(
        &mut self,
        buf: Vec<u8>,
        _window: std::time::Duration,
    ) -> (std::io::Result<Option<usize>>, Vec<u8>) {
        let (len, capacity) = (buf.len(), buf.capacity());
        let (result, slice) = self.read(buf.slice_mut(len..capacity)).await;
        (result.map(Some), slice.into_inner())
    }

    async fn readable(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    static RUNTIME: RefCell<monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>> = RefCell::new(
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime"),
    );
    static RATE_TABLE: Arc<RateTable> = Arc::new(RateTable::new(1024));
    static SNAPSHOT: Arc<Snapshot> =
        Arc::new(Snapshot::new(
            Config::parse(Path::new("fuzz.toml"), CONFIG).expect("fuzz config"),
            &Arc::default(),
        ));
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let output = Rc::new(RefCell::new(Vec::new()));
    let stream = MemoryStream {
        input: input.to_vec(),
        pos: 0,
        chunk: usize::from(chunk % 64) + 1,
        output: output.clone(),
    };
    let snapshot = SNAPSHOT.with(Arc::clone);
    let rate_table = RATE_TABLE.with(Arc::clone);
    RUNTIME.with(|runtime| {
        let worker = Rc::new(
            Worker::new(
                0,
                snapshot,
                WorkerShared {
                    edge_in_userspace: false,
                    rate_table,
                    access_log: None,
                    control: None,
                    takeover_started: None,
                },
            )
            .expect("worker"),
        );
        runtime.borrow_mut().block_on(serve_connection(
            worker,
            stream,
            "198.51.100.1:4000".parse().expect("addr"),
            0,
            None,
        ));
    });
    let output = output.borrow();
    assert!(
        output.is_empty() || output.starts_with(b"HTTP/1.1 "),
        "not an HTTP response: {:?}",
        String::from_utf8_lossy(&output[..output.len().min(64)])
    );
});
