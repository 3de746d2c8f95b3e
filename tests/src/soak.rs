//! A soak run: mixed traffic against a running gateway for a while — keep-alive requests,
//! a new connection per request, TLS handshakes, malformed requests, and reloads — with
//! the gateway's memory, descriptors and upstream connections sampled as it goes. Used by
//! `cargo xtask soak` (minutes) and by a short test that fails on growth.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{Gateway, tls::TestPki};

/// One sample of the gateway's resources.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub rss_bytes: u64,
    pub fds: usize,
    /// Established connections from the gateway to the backend.
    pub upstream_connections: usize,
    /// Requests answered as expected so far (all kinds).
    pub answered: u64,
}

/// What a soak run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub samples: Vec<Sample>,
    /// Requests answered as expected (200 for good ones, 400 for malformed ones).
    pub answered: u64,
    /// Requests that failed or got an unexpected answer.
    pub failed: u64,
    pub reloads: u64,
}

impl Report {
    /// Growth from the first sample after warm-up (a quarter of the run) to the last:
    /// (RSS bytes, descriptors).
    pub fn growth(&self) -> (i64, i64) {
        let warm = self.samples[self.samples.len() / 4];
        let last = self.samples[self.samples.len() - 1];
        (
            last.rss_bytes as i64 - warm.rss_bytes as i64,
            last.fds as i64 - warm.fds as i64,
        )
    }

    /// The samples as a Markdown table.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| t (s) | RSS (MiB) | descriptors | upstream connections | requests answered |\n|---|---|---|---|---|\n",
        );
        for s in &self.samples {
            out.push_str(&format!(
                "| {} | {:.1} | {} | {} | {} |\n",
                s.at.as_secs(),
                s.rss_bytes as f64 / 1048576.0,
                s.fds,
                s.upstream_connections,
                s.answered
            ));
        }
        out
    }
}

/// What a soak runs against: a backend and the gateway in front of it.
pub struct Fixture {
    pub pki: TestPki,
    pub backend: crate::Backend,
    pub gateway: Gateway,
}

impl Fixture {
    /// Starts the backend and the gateway (`$GATEWAY_BIN`, else a debug build) on
    /// [`config`].
    pub fn start() -> Self {
        let pki = TestPki::new();
        let backend = crate::Backend::start("soak");
        let gateway = Gateway::start(&config(&pki, backend.addr));
        Self {
            pki,
            backend,
            gateway,
        }
    }

    /// [`run`] against this fixture.
    pub fn run(&self, duration: Duration, every: Duration) -> Report {
        run(
            &self.gateway,
            &self.pki,
            self.backend.addr.port(),
            duration,
            every,
        )
    }
}

/// The gateway config a soak runs against: a plain and a TLS listener to `backend`.
pub fn config(pki: &TestPki, backend: SocketAddr) -> String {
    let (cert, key) = pki.issue("soak", &["soak.test"]);
    format!(
        "[gateway]\nworkers = 2\n\n[[listeners]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{backend}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        cert.display(),
        key.display()
    )
}

/// Runs mixed traffic against `gw` (started on [`config`]) for `duration`, sampling every
/// `every`; `backend_port` identifies upstream connections.
pub fn run(
    gw: &Gateway,
    pki: &TestPki,
    backend_port: u16,
    duration: Duration,
    every: Duration,
) -> Report {
    let (plain, tls) = (gw.addrs[0], gw.addrs[1]);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let count = |ok: bool, answered: &AtomicU64, failed: &AtomicU64| {
        if ok {
            answered.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    };
    let tls_config = pki.client_config(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    let mut threads = Vec::new();
    for kind in 0..4 {
        let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
        let tls_config = tls_config.clone();
        threads.push(std::thread::spawn(move || {
            let mut keep_alive: Option<TcpStream> = None;
            while !stop.load(Ordering::Relaxed) {
                let ok = match kind {
                    0 => keep_alive_request(plain, &mut keep_alive),
                    1 => one_shot(plain, "GET /soak HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 200),
                    2 => crate::tls::https_request(
                        tls,
                        "soak.test",
                        tls_config.clone(),
                        "GET /soak HTTP/1.1\r\nHost: soak.test\r\nConnection: close\r\n\r\n",
                    )
                    .is_ok_and(|r| r.status == 200),
                    _ => one_shot(
                        plain,
                        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                        400,
                    ),
                };
                count(ok, &answered, &failed);
            }
        }));
    }
    let started = Instant::now();
    let mut report = Report::default();
    let mut next_reload = started + Duration::from_secs(2);
    let sample = || Sample {
        at: started.elapsed(),
        rss_bytes: gw.rss(),
        fds: open_descriptors(gw.pid()),
        upstream_connections: established_to(backend_port),
        answered: answered.load(Ordering::Relaxed),
    };
    while started.elapsed() < duration {
        report.samples.push(sample());
        let until = Instant::now() + every;
        while Instant::now() < until {
            if Instant::now() >= next_reload {
                if gw.reload() {
                    report.reloads += 1;
                }
                next_reload += Duration::from_secs(2);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        if thread.join().is_err() {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    report.samples.push(sample());
    report.answered = answered.load(Ordering::Relaxed);
    report.failed = failed.load(Ordering::Relaxed);
    report
}

/// One request on a kept-alive connection (reconnecting when there is none).
fn keep_alive_request(addr: SocketAddr, conn: &mut Option<TcpStream>) -> bool {
    if conn.is_none() {
        *conn = connect(addr);
    }
    let Some(stream) = conn.as_mut() else {
        return false;
    };
    let ok = stream
        .write_all(b"GET /soak HTTP/1.1\r\nHost: a\r\n\r\n")
        .is_ok()
        && read_status_and_body(stream) == Some(200);
    if !ok {
        *conn = None;
    }
    ok
}

/// One request on a new connection, read to the end; whether the status is `expected`.
fn one_shot(addr: SocketAddr, request: &str, expected: u16) -> bool {
    let Some(mut stream) = connect(addr) else {
        return false;
    };
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    status_of(&bytes) == Some(expected)
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(stream)
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|&b| b == b'\r').next()?;
    std::str::from_utf8(line.get(9..12)?).ok()?.parse().ok()
}

/// Reads one Content-Length-framed response; its status.
fn read_status_and_body(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    status_of(&buf)
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Established TCP connections (IPv4) whose remote port is `port`.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port_hex = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() > 3 && fields[2].ends_with(&port_hex) && fields[3] == "01"
        })
        .count()
}
