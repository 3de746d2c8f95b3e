//! Response compression through the gateway, checked with curl (which decodes gzip and
//! brotli itself): negotiation by `Accept-Encoding`, `Vary` and weakened `ETag`s, chunked
//! and length-framed upstream bodies, HTTP/1.0 clients, and what is never compressed
//! (small bodies, other types, encoded bodies, HEAD). A 16 MB body streams through in
//! bounded memory.

use std::{net::SocketAddr, process::Command};

use gateway_tests::{
    backend::{Backend, body_byte},
    client::request,
    gateway::Gateway,
};

fn gateway(backend: SocketAddr, encoded: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "[gateway]\nworkers = 2\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"app\"\ntargets = [ {{ addr = \"{backend}\" }} ]\n\n\
         [[upstreams]]\nname = \"encoded\"\ntargets = [ {{ addr = \"{encoded}\" }} ]\n\n\
         [[routes]]\nname = \"pre\"\npath_prefix = \"/pre\"\nupstream = \"encoded\"\ncompression = {{}}\n\n\
         [[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nstrip_prefix = true\nupstream = \"app\"\n\n\
         [[routes]]\nname = \"all\"\nupstream = \"app\"\ncompression = {{ algorithms = [\"br\", \"gzip\"], min_size = \"1KiB\" }}\n"
    ))
}

/// What curl saw: status, lower-cased response headers, decoded body, bytes on the wire.
struct Fetched {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    wire_bytes: u64,
}

impl Fetched {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn curl(url: &str, args: &[&str]) -> Fetched {
    let dir = tempfile::tempdir().expect("dir");
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let output = Command::new("curl")
        .args(["-s", "--compressed", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{size_download}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let written = String::from_utf8_lossy(&output.stdout).into_owned();
    let (status, size) = written.split_once(' ').expect("curl -w output");
    let head = std::fs::read_to_string(&headers).expect("headers");
    Fetched {
        status: status.parse().expect("status"),
        headers: head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect(),
        body: std::fs::read(&body).expect("body"),
        wire_bytes: size.trim().parse().expect("size"),
    }
}

fn expected(n: u64) -> Vec<u8> {
    (0..n).map(body_byte).collect()
}

#[test]
fn negotiated_codings_decode_to_the_original_body() {
    let backend = Backend::start("app");
    let encoded = Backend::raw("pre", b"HTTP/1.1 200 OK\r\n\r\n");
    let gw = gateway(backend.addr, encoded.addr);
    let base = format!("http://{}", gw.addr());
    for (accept, coding) in [
        ("br", "br"),
        ("gzip", "gzip"),
        ("gzip;q=1, br;q=0.5", "gzip"),
        ("gzip, br", "br"),
    ] {
        for path in ["/text/200000", "/textchunked/300000"] {
            let size: u64 = path.rsplit('/').next().unwrap_or("0").parse().expect("n");
            let got = curl(
                &format!("{base}{path}"),
                &["-H", &format!("Accept-Encoding: {accept}")],
            );
            assert_eq!(got.status, 200);
            assert_eq!(
                got.header("content-encoding"),
                Some(coding),
                "{accept} {path}"
            );
            assert_eq!(got.header("vary"), Some("accept-encoding"));
            assert_eq!(got.header("transfer-encoding"), Some("chunked"));
            assert!(got.header("content-length").is_none());
            assert_eq!(got.body, expected(size), "{accept} {path}: decoded body");
            assert!(
                got.wire_bytes * 20 < size,
                "{coding}: {} bytes on the wire for {size}",
                got.wire_bytes
            );
        }
    }
    // The strong validator of the identity body becomes weak for the encoded one.
    let got = curl(
        &format!("{base}/text/5000"),
        &["-H", "Accept-Encoding: gzip"],
    );
    assert_eq!(got.header("etag"), Some("W/\"t5000\""));
    // Without a coding the client accepts: the body as it is, with Vary.
    let res = request(gw.addr(), "GET /text/5000 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(res.header("content-encoding"), None);
    assert_eq!(res.header("content-length"), Some("5000"));
    assert_eq!(res.header("vary"), Some("accept-encoding"));
    assert_eq!(res.header("etag"), Some("\"t5000\""));
    let res = request(
        gw.addr(),
        "GET /text/5000 HTTP/1.1\r\nHost: a\r\nAccept-Encoding: deflate, br;q=0, gzip;q=0\r\n\r\n",
    );
    assert_eq!(res.header("content-encoding"), None);
    assert_eq!(res.body, expected(5000));
}

#[test]
fn what_is_never_compressed() {
    let backend = Backend::start("app");
    let encoded = Backend::raw(
        "pre",
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-encoding: gzip\r\ncontent-length: 4\r\n\r\nabcd",
    );
    let gw = gateway(backend.addr, encoded.addr);
    let ask = |path: &str, method: &str| {
        request(
            gw.addr(),
            &format!("{method} {path} HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip, br\r\n\r\n"),
        )
    };
    // Under min_size, an unlisted type, a route without compression.
    for path in ["/text/500", "/bytes/5000", "/plain/text/5000"] {
        let res = ask(path, "GET");
        assert_eq!(res.header("content-encoding"), None, "{path}");
        assert!(res.header("content-length").is_some(), "{path}");
    }
    // Already encoded upstream: passed through untouched.
    let res = ask("/pre/x", "GET");
    assert_eq!(res.header("content-encoding"), Some("gzip"));
    assert_eq!(res.body, b"abcd");
    // HEAD: the identity headers, no body.
    let res = ask("/text/5000", "HEAD");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-encoding"), None);
    assert_eq!(res.header("content-length"), Some("5000"));
    assert!(res.body.is_empty());
}

#[test]
fn http10_clients_get_a_close_delimited_encoded_body() {
    let backend = Backend::start("app");
    let encoded = Backend::raw("pre", b"HTTP/1.1 200 OK\r\n\r\n");
    let gw = gateway(backend.addr, encoded.addr);
    let got = curl(
        &format!("http://{}/text/100000", gw.addr()),
        &["--http1.0", "-H", "Accept-Encoding: gzip"],
    );
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert_eq!(got.header("transfer-encoding"), None);
    assert_eq!(got.header("connection"), Some("close"));
    assert_eq!(got.body, expected(100_000));
}

#[test]
fn a_large_body_is_compressed_as_it_streams() {
    let backend = Backend::start("app");
    let encoded = Backend::raw("pre", b"HTTP/1.1 200 OK\r\n\r\n");
    let gw = gateway(backend.addr, encoded.addr);
    let size = 16_000_000u64;
    for coding in ["gzip", "br"] {
        // Each body on its own: the peak counts from now, not from start-up or the
        // previous transfer's teardown.
        gw.reset_peak_rss();
        let before = gw.rss();
        let got = curl(
            &format!("http://{}/text/{size}", gw.addr()),
            &["-H", &format!("Accept-Encoding: {coding}")],
        );
        assert_eq!(got.header("content-encoding"), Some(coding));
        assert_eq!(got.body.len() as u64, size);
        assert!(got.body == expected(size), "{coding}: decoded body differs");
        let grown = gw.peak_rss().saturating_sub(before);
        eprintln!("{coding} compression of 16 MB: peak RSS grew by {grown} bytes");
        assert!(
            grown < 10 << 20,
            "{coding}: the body must stream, not be buffered whole: peak RSS grew by {grown} bytes"
        );
    }
}
