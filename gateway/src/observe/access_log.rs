//! Access logs: one JSON line per request, the field set configurable, to stderr or a
//! file. A worker appends lines to its own buffer and hands full buffers (and, every
//! quarter second, partial ones) to one writer thread over a bounded channel: the request
//! path never writes, waits or locks. When the writer falls behind, whole buffers are
//! dropped and counted rather than stalling a worker. `SIGUSR1` makes the writer reopen
//! the file (for logrotate).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::mpsc::{Receiver, SyncSender, TrySendError},
    time::{Duration, SystemTime},
};

/// A buffer is handed over once it holds this much.
const FLUSH_AT: usize = 32 * 1024;
/// Buffers queued for the writer at most; more are dropped (and counted).
const QUEUE: usize = 256;

/// Every field, in the order lines carry them.
pub const FIELDS: [&str; 17] = [
    "time",
    "request_id",
    "client",
    "method",
    "host",
    "path",
    "route",
    "upstream",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream_ms",
    "consumer",
    "scheme",
    "worker",
    "tls_version",
];

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    File(PathBuf),
}

/// `[access_log]`, validated: the target and a bit per field of [`FIELDS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub target: LogTarget,
    pub fields: u32,
}

/// What the writer thread is sent.
pub enum LogMessage {
    Lines(Vec<u8>),
    /// Reopen the file (SIGUSR1).
    Reopen,
    /// Everything is written: stop (sent at shutdown, after every worker flushed).
    Close,
}

/// One finished request, as the log sees it.
pub struct Entry<'a> {
    pub request_id: &'a [u8],
    pub client: IpAddr,
    pub method: &'a [u8],
    pub host: &'a [u8],
    pub path: &'a [u8],
    pub route: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream_duration: Option<Duration>,
    pub consumer: Option<&'a str>,
    pub scheme: &'a str,
    pub worker: usize,
    /// `TLSv1.3` or `TLSv1.2` on TLS connections.
    pub tls_version: Option<&'static str>,
}

/// Starts the writer thread for `target`; the sender goes to every worker. At shutdown,
/// send [`LogMessage::Close`] after the workers' last flush and join the thread.
pub fn start_writer(
    target: LogTarget,
) -> std::io::Result<(SyncSender<LogMessage>, std::thread::JoinHandle<()>)> {
    let mut sink = Sink::open(&target)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let handle = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || writer_loop(&mut sink, &target, &rx))?;
    Ok((tx, handle))
}

enum Sink {
    Stderr,
    File(File),
}

impl Sink {
    fn open(target: &LogTarget) -> std::io::Result<Self> {
        Ok(match target {
            LogTarget::Stderr => Self::Stderr,
            LogTarget::File(path) => {
                Self::File(OpenOptions::new().create(true).append(true).open(path)?)
            }
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stderr => std::io::stderr().lock().write_all(bytes),
            Self::File(file) => file.write_all(bytes),
        }
    }
}

fn writer_loop(sink: &mut Sink, target: &LogTarget, rx: &Receiver<LogMessage>) {
    let mut failing = false;
    for message in rx {
        match message {
            LogMessage::Lines(lines) => match sink.write(&lines) {
                Ok(()) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "access log write failed; lines are being lost");
                }
                Err(_) => {}
            },
            LogMessage::Close => return,
            LogMessage::Reopen => match Sink::open(target) {
                Ok(reopened) => {
                    *sink = reopened;
                    tracing::info!("access log reopened");
                }
                Err(error) => {
                    tracing::warn!(%error, "access log reopen failed; keeping the old file")
                }
            },
        }
    }
}

/// One worker's side: its buffer and the way to the writer.
pub struct WorkerLog {
    buf: Vec<u8>,
    tx: SyncSender<LogMessage>,
    /// Buffers dropped because the writer was behind.
    pub dropped: u64,
    /// The current second as `2026-11-27T17:10:03`, formatted once per second.
    second: u64,
    second_text: String,
}

impl WorkerLog {
    /// A worker's log handing buffers to `tx`.
    pub fn new(tx: SyncSender<LogMessage>) -> Self {
        Self {
            buf: Vec::with_capacity(FLUSH_AT + 4096),
            tx,
            dropped: 0,
            second: u64::MAX,
            second_text: String::new(),
        }
    }

    /// Appends the line for `entry` with the fields in `fields`.
    pub fn record(&mut self, entry: &Entry<'_>, fields: u32) {
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if fields & 1 != 0 && now.as_secs() != self.second {
            self.second = now.as_secs();
            let text = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + now).to_string();
            self.second_text = text.trim_end_matches('Z').to_owned();
        }
        let millis = now.subsec_millis();
        let out = &mut self.buf;
        out.push(b'{');
        let mut first = true;
        for (bit, name) in FIELDS.iter().enumerate() {
            if fields & (1 << bit) == 0 {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            if bit == 0 {
                out.push(b'"');
                out.extend_from_slice(self.second_text.as_bytes());
                out.extend_from_slice(&[
                    b'.',
                    b'0' + (millis / 100) as u8,
                    b'0' + (millis / 10 % 10) as u8,
                    b'0' + (millis % 10) as u8,
                    b'Z',
                    b'"',
                ]);
            } else {
                write_field(out, bit, entry);
            }
        }
        out.extend_from_slice(b"}\n");
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Hands what is buffered to the writer (never waits).
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let lines = std::mem::replace(&mut self.buf, Vec::with_capacity(FLUSH_AT + 4096));
        match self.tx.try_send(LogMessage::Lines(lines)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped += 1,
        }
    }
}

fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    // The common case (printable ASCII, nothing to escape) is copied as is.
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    // Serializing a string cannot fail.
    let _ = serde_json::to_writer(&mut *out, text.as_ref());
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros() as u64;
    number(out, micros / 1000);
    out.push(b'.');
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Every field but `time` (written by [`WorkerLog::record`] from its per-second cache),
/// by its position in [`FIELDS`].
fn write_field(out: &mut Vec<u8>, bit: usize, e: &Entry<'_>) {
    match bit {
        1 => string(out, e.request_id),
        2 => {
            let _ = write!(out, "\"{}\"", e.client);
        }
        3 => string(out, e.method),
        4 => string(out, e.host),
        5 => string(out, e.path),
        6 => match e.route {
            Some(route) => string(out, route.as_bytes()),
            None => out.extend_from_slice(b"null"),
        },
        7 => match e.upstream {
            Some(addr) => {
                let _ = write!(out, "\"{addr}\"");
            }
            None => out.extend_from_slice(b"null"),
        },
        8 => number(out, u64::from(e.status)),
        9 => number(out, e.bytes_in),
        10 => number(out, e.bytes_out),
        11 => millis(out, e.duration),
        12 => match e.upstream_duration {
            Some(d) => millis(out, d),
            None => out.extend_from_slice(b"null"),
        },
        13 => match e.consumer {
            Some(c) => string(out, c.as_bytes()),
            None => out.extend_from_slice(b"null"),
        },
        14 => string(out, e.scheme.as_bytes()),
        15 => number(out, e.worker as u64),
        _ => match e.tls_version {
            Some(version) => string(out, version.as_bytes()),
            None => out.extend_from_slice(b"null"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_the_chosen_fields() {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let mut log = WorkerLog::new(tx);
        let entry = Entry {
            request_id: b"abc",
            client: "10.0.0.1".parse().expect("ip"),
            method: b"GET",
            host: b"api.test",
            path: b"/a\"b\\\n\xff",
            route: Some("r"),
            upstream: Some("127.0.0.1:9000".parse().expect("addr")),
            status: 200,
            bytes_in: 0,
            bytes_out: 42,
            duration: Duration::from_micros(1234),
            upstream_duration: None,
            consumer: None,
            scheme: "https",
            worker: 1,
            tls_version: Some("TLSv1.3"),
        };
        log.record(&entry, u32::MAX);
        log.record(&entry, 1 << 8 | 1 << 5);
        log.flush();
        let Ok(LogMessage::Lines(lines)) = rx.try_recv() else {
            panic!("a buffer was handed over");
        };
        let text = String::from_utf8(lines).expect("utf8");
        let mut lines = text.lines();
        let full: serde_json::Value =
            serde_json::from_str(lines.next().expect("line")).expect("json");
        assert_eq!(full["path"], "/a\"b\\\n\u{fffd}");
        assert_eq!(full["duration_ms"], 1.234);
        assert_eq!(full["upstream_ms"], serde_json::Value::Null);
        assert_eq!(full["upstream"], "127.0.0.1:9000");
        let time = full["time"].as_str().expect("time");
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
        assert_eq!(full.as_object().map(|o| o.len()), Some(FIELDS.len()));
        let some: serde_json::Value =
            serde_json::from_str(lines.next().expect("line")).expect("json");
        assert_eq!(
            some,
            serde_json::json!({ "path": "/a\"b\\\n\u{fffd}", "status": 200 })
        );
    }
}
