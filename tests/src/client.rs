//! A small, strict HTTP/1.1 client for tests: raw bytes in, parsed responses out.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Connects with test-friendly timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Connects from a chosen loopback source address (127.0.0.0/8 is all local).
pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Sends `request` on a new connection and returns every byte until the peer closes
/// (or `wait` passes without data).
pub fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.set_read_timeout(Some(wait)).expect("timeout");
    stream.write_all(request).expect("send request");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one request on a new connection and reads one response.
pub fn request(addr: SocketAddr, request: &str) -> Response {
    let mut stream = connect(addr);
    stream.write_all(request.as_bytes()).expect("send request");
    read_response(&mut stream, request.starts_with("HEAD "))
}

/// `GET path` with `Host: host` on a new connection.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Response {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
}

/// Reads exactly one response (strictly framed) from `stream`, asserting that nothing
/// follows it (use [`read_response_from`] for pipelined responses).
pub fn read_response(stream: &mut impl Read, head_request: bool) -> Response {
    let mut pending = Vec::new();
    let response = read_response_from(stream, head_request, &mut pending);
    assert!(
        pending.is_empty(),
        "bytes after the response on a non-pipelined exchange: {:?}",
        String::from_utf8_lossy(&pending)
    );
    response
}

/// Reads one response starting with the bytes in `pending`; bytes read past its end
/// (the next pipelined response) are left in `pending`.
pub fn read_response_from(
    stream: &mut impl Read,
    head_request: bool,
    pending: &mut Vec<u8>,
) -> Response {
    let mut buf = std::mem::take(pending);
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).expect("read response head");
        assert!(
            n > 0,
            "connection closed before a response head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut res = httparse::Response::new(&mut headers);
    res.parse(&buf[..head_end]).expect("valid response head");
    let status = res.code.expect("status");
    let headers: Vec<(String, String)> = res
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        *pending = rest;
        Vec::new()
    } else if let Some(len) = find("content-length") {
        let len: usize = len.trim().parse().expect("numeric content-length");
        while rest.len() < len {
            let n = stream.read(&mut chunk).expect("read body");
            assert!(n > 0, "connection closed mid-body");
            rest.extend_from_slice(&chunk[..n]);
        }
        *pending = rest.split_off(len);
        rest
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        decode_chunked(stream, rest, pending)
    } else {
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break rest,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read close-delimited body: {e}"),
            }
        }
    };
    Response {
        status,
        headers,
        body,
    }
}

fn decode_chunked(stream: &mut impl Read, mut buf: Vec<u8>, leftover: &mut Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut fill = |buf: &mut Vec<u8>| {
        let n = stream.read(&mut chunk).expect("read chunked body");
        assert!(n > 0, "connection closed inside a chunked body");
        buf.extend_from_slice(&chunk[..n]);
    };
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(&mut buf);
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailer lines (none from the gateway) then the final CRLF.
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    fill(&mut buf);
                };
                buf.drain(..end + 2);
                if end == 0 {
                    *leftover = buf;
                    return body;
                }
            }
        }
        while buf.len() < size + 2 {
            fill(&mut buf);
        }
        body.extend_from_slice(&buf[..size]);
        assert_eq!(
            &buf[size..size + 2],
            b"\r\n",
            "chunk data not followed by CRLF"
        );
        buf.drain(..size + 2);
    }
}
