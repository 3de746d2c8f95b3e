//! S8: what an idle keep-alive connection costs each proxy. Each contender gets up to
//! [`CONNECTIONS`] connections (fewer when the descriptor limit is lower), one request on
//! each, then holds them open; the figure is the growth of the proxy's resident memory
//! (process and children) divided by the connections, plain and over TLS 1.3.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::bench::{
    BenchCertificate, free_port, start_proxy, stop, tree_rss_bytes, wait_http, wait_tcp,
};

/// Idle connections held per contender, at most.
const CONNECTIONS: usize = 10_000;
const CONTENDERS: [&str; 3] = ["gateway", "nginx", "haproxy"];

/// Raises this process's descriptor limit to its hard limit (the proxies inherit it) and
/// returns how many connections both ends can then hold.
fn raise_fd_limit() -> Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    let usable = (limit.rlim_max as usize / 2).saturating_sub(1000);
    if usable < 1000 {
        bail!(
            "the descriptor limit ({}) is too low for S8",
            limit.rlim_max
        );
    }
    Ok(usable.min(CONNECTIONS))
}

/// One request on `stream`; reads the whole (Content-Length framed) answer.
fn one_request<S: Read + Write>(stream: &mut S) -> Result<()> {
    stream.write_all(b"GET /b/64 HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut answer = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before the answer");
        }
        answer.extend_from_slice(&chunk[..n]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("unexpected answer: {head}");
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no content-length")?;
            if answer.len() >= end + 4 + length {
                return Ok(());
            }
        }
    }
}

/// Bytes of proxy memory per idle connection for `contender`.
fn per_connection(
    contender: &str,
    dir: &Path,
    backend: u16,
    tls: Option<&BenchCertificate>,
    connections: usize,
) -> Result<f64> {
    let port = free_port()?;
    let proxy = start_proxy(contender, dir, port, backend, tls)?;
    let measured = (|| -> Result<f64> {
        match tls {
            Some(_) => wait_tcp(port)?,
            None => wait_http(port, "/b/64")?,
        }
        // Warm the proxy (pools, first allocations) before the baseline.
        let mut plain = Vec::new();
        let mut secure = Vec::new();
        let open = |plain: &mut Vec<TcpStream>,
                    secure: &mut Vec<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>|
         -> Result<()> {
            let tcp = TcpStream::connect(("127.0.0.1", port))?;
            tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
            match tls {
                None => {
                    let mut tcp = tcp;
                    one_request(&mut tcp)?;
                    plain.push(tcp);
                }
                Some(certificate) => {
                    let client = rustls::ClientConnection::new(
                        certificate.client_config(),
                        "localhost".try_into()?,
                    )?;
                    let mut stream = rustls::StreamOwned::new(client, tcp);
                    one_request(&mut stream)?;
                    secure.push(stream);
                }
            }
            Ok(())
        };
        for _ in 0..16 {
            open(&mut plain, &mut secure)?;
        }
        std::thread::sleep(Duration::from_millis(300));
        let before = tree_rss_bytes(proxy.id())?;
        for _ in 0..connections {
            open(&mut plain, &mut secure)?;
        }
        std::thread::sleep(Duration::from_millis(500));
        let after = tree_rss_bytes(proxy.id())?;
        Ok(after.saturating_sub(before) as f64 / connections as f64)
    })();
    stop(proxy);
    measured
}

/// The S8 table.
pub fn section(dir: &Path, backend: u16, certificate: &BenchCertificate) -> Result<String> {
    let connections = raise_fd_limit()?;
    let mut out = String::new();
    writeln!(
        out,
        "\nS8: memory per idle keep-alive connection ({connections} connections, one request each, then held; growth of the proxy's RSS, process and children)\n"
    )?;
    writeln!(
        out,
        "| proxy | plain bytes/connection | TLS 1.3 bytes/connection |"
    )?;
    writeln!(out, "|---|---|---|")?;
    for contender in CONTENDERS {
        let plain = per_connection(contender, dir, backend, None, connections)?;
        let tls = per_connection(contender, dir, backend, Some(certificate), connections)?;
        eprintln!("S8 {contender:8} plain {plain:8.0} B/conn  TLS {tls:8.0} B/conn");
        writeln!(out, "| {contender} | {plain:.0} | {tls:.0} |")?;
    }
    writeln!(
        out,
        "\nTarget: at or below haproxy's bytes per idle connection. Reproduce: `cargo xtask bench --only S8` (the count is bounded by the descriptor limit)."
    )?;
    Ok(out)
}
