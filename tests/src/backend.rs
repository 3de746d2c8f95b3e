//! A real HTTP/1.1 backend on an ephemeral loopback port, one thread per connection.
//!
//! Behaviour is chosen by path, so one backend serves every scenario:
//! - any path: `200` with a JSON echo of the request (backend name, method, target,
//!   headers, body length and checksum);
//! - `/delay/MS`: the echo after MS milliseconds;
//! - `/bytes/N`: N bytes with Content-Length; `/chunked/N`: N bytes chunked;
//!   `/text/N` and `/textchunked/N`: the same as `text/plain` (with an ETag for `/text`);
//!   `/close/N`: N bytes delimited by closing the connection;
//! - `/status/CODE`: the echo with that status.
//!
//! A backend made with [`Backend::raw`] answers every request with fixed bytes instead;
//! one made with [`Behavior::Hang`] reads requests and never answers.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

/// Special behaviours that are not path-driven.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Path-driven behaviour (see the module docs).
    Normal,
    /// Answer every request with these bytes, then close.
    Raw(Vec<u8>),
    /// Path-driven behaviour over TLS with this server config.
    Tls(std::sync::Arc<rustls::ServerConfig>),
    /// Read each request and never answer (until the client closes).
    Hang,
}

/// Counters a test can assert on.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
}

/// A running backend; stops accepting when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    /// Starts a path-driven backend named `name`.
    pub fn start(name: &str) -> Self {
        Self::with_behavior(name, Behavior::Normal)
    }

    /// Starts a path-driven backend that speaks TLS with `cert` and `key` (PEM files).
    pub fn tls(name: &str, cert: &std::path::Path, key: &std::path::Path) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let chain = CertificateDer::pem_file_iter(cert)
            .expect("cert file")
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_file(key).expect("key file");
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        Self::with_behavior(name, Behavior::Tls(std::sync::Arc::new(config)))
    }

    /// Starts a backend that answers with `bytes` and closes.
    pub fn raw(name: &str, bytes: &[u8]) -> Self {
        Self::with_behavior(name, Behavior::Raw(bytes.to_vec()))
    }

    /// Starts a path-driven backend named `name` on a fixed address (the demo's).
    pub fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self::serve(
            name,
            Behavior::Normal,
            TcpListener::bind(addr)?,
        ))
    }

    /// Starts a backend with `behavior`.
    pub fn with_behavior(name: &str, behavior: Behavior) -> Self {
        Self::serve(
            name,
            behavior,
            TcpListener::bind("127.0.0.1:0").expect("bind backend"),
        )
    }

    fn serve(name: &str, behavior: Behavior, listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("backend addr");
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_stats, thread_stop, thread_name) =
            (stats.clone(), stop.clone(), name.to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                thread_stats.connections.fetch_add(1, Ordering::Relaxed);
                let (stats, name, behavior) =
                    (thread_stats.clone(), thread_name.clone(), behavior.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_nodelay(true);
                    let _ = match &behavior {
                        Behavior::Tls(config) => {
                            match rustls::ServerConnection::new(config.clone()) {
                                Ok(conn) => serve(
                                    rustls::StreamOwned::new(conn, stream),
                                    &name,
                                    &behavior,
                                    &stats,
                                ),
                                Err(_) => Ok(()),
                            }
                        }
                        _ => serve(stream, &name, &behavior, &stats),
                    };
                });
            }
        });
        Self {
            addr,
            name: name.to_owned(),
            stats,
            stop,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// FNV-1a, to let tests compare large bodies without keeping them.
pub fn checksum(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Initial value for [`checksum`].
pub const CHECKSUM_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// The byte at `offset` of generated bodies.
pub fn body_byte(offset: u64) -> u8 {
    b"abcdefghijklmnopqrstuvwxyz0123456789"[(offset % 36) as usize]
}

struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Conn<S> {
    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads a CRLF-terminated line.
    fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Consumes `n` body bytes, folding them into a checksum.
    fn body(&mut self, mut n: u64, hash: &mut u64) -> std::io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill()? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            *hash = checksum(*hash, &self.buf[..take]);
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }
}

fn serve<S: Read + Write>(
    stream: S,
    name: &str,
    behavior: &Behavior,
    stats: &Stats,
) -> std::io::Result<()> {
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    loop {
        let head_end = loop {
            if let Some(i) = conn.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if conn.fill()? == 0 {
                return Ok(());
            }
        };
        let head: Vec<u8> = conn.buf.drain(..head_end).collect();
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(&head).is_err() {
            conn.stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )?;
            return Ok(());
        }
        let method = req.method.unwrap_or("").to_owned();
        let target = req.path.unwrap_or("").to_owned();
        let header_list: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let find = |n: &str| {
            header_list
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut hash = CHECKSUM_SEED;
        let mut body_len = 0u64;
        if let Some(len) = find("content-length") {
            body_len = len.trim().parse().unwrap_or(0);
            conn.body(body_len, &mut hash)?;
        } else if find("transfer-encoding").is_some() {
            loop {
                let line = conn.line()?;
                let size = u64::from_str_radix(
                    String::from_utf8_lossy(&line)
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
                if size == 0 {
                    while !conn.line()?.is_empty() {}
                    break;
                }
                conn.body(size, &mut hash)?;
                body_len += size;
                conn.line()?;
            }
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        match behavior {
            Behavior::Raw(bytes) => {
                conn.stream.write_all(bytes)?;
                return Ok(());
            }
            Behavior::Hang => while conn.fill()? > 0 {},
            Behavior::Normal | Behavior::Tls(_) => {}
        }
        let path = target.split('?').next().unwrap_or("").to_owned();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (verb, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let number: u64 = arg.parse().unwrap_or(0);
        let connection = if close { "connection: close\r\n" } else { "" };
        match verb {
            "bytes" | "chunked" | "close" | "text" | "textchunked" => {
                let head = match verb {
                    "bytes" => {
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {number}\r\n{connection}\r\n")
                    }
                    "text" => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\netag: \"t{number}\"\r\ncontent-length: {number}\r\n{connection}\r\n"
                    ),
                    "chunked" => {
                        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{connection}\r\n")
                    }
                    "textchunked" => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n{connection}\r\n"
                    ),
                    _ => "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_owned(),
                };
                conn.stream.write_all(head.as_bytes())?;
                let mut sent = if method == "HEAD" { number } else { 0 };
                let mut block = vec![0u8; 64 * 1024];
                while sent < number {
                    let n = (number - sent).min(block.len() as u64) as usize;
                    for (i, b) in block[..n].iter_mut().enumerate() {
                        *b = body_byte(sent + i as u64);
                    }
                    if verb.ends_with("chunked") {
                        conn.stream.write_all(format!("{n:x}\r\n").as_bytes())?;
                        conn.stream.write_all(&block[..n])?;
                        conn.stream.write_all(b"\r\n")?;
                    } else {
                        conn.stream.write_all(&block[..n])?;
                    }
                    sent += n as u64;
                }
                if verb.ends_with("chunked") && method != "HEAD" {
                    conn.stream.write_all(b"0\r\n\r\n")?;
                }
                if verb == "close" {
                    return Ok(());
                }
            }
            _ => {
                if verb == "delay" {
                    std::thread::sleep(Duration::from_millis(number));
                }
                let status = if verb == "status" { number as u16 } else { 200 };
                let body = serde_json::json!({
                    "backend": name,
                    "method": method,
                    "target": target,
                    "headers": header_list,
                    "body_len": body_len,
                    "body_checksum": format!("{hash:016x}"),
                })
                .to_string();
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{connection}\r\n{body}",
                    body.len()
                );
                conn.stream.write_all(response.as_bytes())?;
            }
        }
        if close {
            return Ok(());
        }
    }
}
