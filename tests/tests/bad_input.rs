//! Every bad-input case gets its status (or a clean close) and the worker keeps serving.

use std::{io::Write, time::Duration};

use gateway_tests::{Backend, Gateway, client};

fn gateway(backend: &Backend) -> Gateway {
    Gateway::start(&format!(
        r#"
[gateway]
workers = 1

[limits]
max_head_size = "4KiB"
max_headers = 20
max_uri_length = 512
max_body_size = "1KiB"
header_read_timeout = "500ms"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "u"
targets = [ {{ addr = "{}" }} ]

[[routes]]
name = "all"
upstream = "u"
"#,
        backend.addr
    ))
}

/// Status line of the first response in `raw`, and whether the gateway closed after it.
fn status_of(raw: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[test]
fn bad_requests_get_their_status_and_the_worker_keeps_serving() {
    let backend = Backend::start("echo");
    let gw = gateway(&backend);
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(600));
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..25).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    let huge_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "v".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("differing CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(), 400),
        ("signed CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc".to_vec(), 400),
        ("overflowing CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 184467440737095516160\r\n\r\n".to_vec(), 400),
        ("TE not chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 400),
        ("TE chunked not final", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(), 400),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(), 400),
        ("empty chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n".to_vec(), 400),
        ("bare LF in chunk ext", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x\ny\r\nabc\r\n0\r\n\r\n".to_vec(), 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  folded\r\n\r\n".to_vec(), 400),
        ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n".to_vec(), 400),
        ("bare CR", b"GET / HTTP/1.1\rHost: a\r\n\r\n".to_vec(), 400),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n".to_vec(), 400),
        ("invalid header name", b"GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n".to_vec(), 400),
        ("control char in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n".to_vec(), 400),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("duplicate Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        ("encoded slash", b"GET /a%2F..%2Fadmin HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("encoded NUL", b"GET /a%00 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n".to_vec(), 400),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 400),
        ("long URI", long_uri.into_bytes(), 414),
        ("too many headers", many_headers.into_bytes(), 431),
        ("huge head", huge_head.into_bytes(), 431),
        ("body too large", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n".to_vec(), 413),
        ("chunked body too large", format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n", "x".repeat(2048)).into_bytes(), 413),
        ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n".to_vec(), 501),
        ("unknown expectation", b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx".to_vec(), 417),
    ];
    for (name, bytes, expected) in cases {
        let raw = client::raw_exchange(gw.addr(), &bytes, Duration::from_secs(5));
        assert_eq!(
            status_of(&raw),
            expected,
            "case {name:?}: {}",
            String::from_utf8_lossy(&raw)
        );
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(
            text.contains("connection: close"),
            "case {name:?} must close the connection: {text}"
        );
        assert!(
            text.contains("\"code\""),
            "case {name:?} must carry a JSON error: {text}"
        );
        let ok = client::get(gw.addr(), "a", "/after");
        assert_eq!(
            ok.status, 200,
            "the worker stopped serving after case {name:?}"
        );
    }
    assert_eq!(
        backend.requests(),
        20 + 9,
        "no bad request may reach the backend"
    );
}

#[test]
fn nothing_after_an_error_is_processed() {
    let backend = Backend::start("echo");
    let gw = gateway(&backend);
    // A smuggling attempt: the second request hides behind an invalid first one.
    let raw = client::raw_exchange(
        gw.addr(),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(3),
    );
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "exactly one response: {text}"
    );
    assert_eq!(
        backend.requests(),
        0,
        "the smuggled request reached the backend"
    );
}

#[test]
fn stalled_head_gets_408() {
    let backend = Backend::start("echo");
    let gw = gateway(&backend);
    let raw = client::raw_exchange(
        gw.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&raw), 408, "{}", String::from_utf8_lossy(&raw));
    // A slowloris trickle is cut at the same deadline, not extended by each byte.
    let mut stream = client::connect(gw.addr());
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if stream.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    assert!(
        closed || String::from_utf8_lossy(&rest).contains(" 408 "),
        "a trickled head must end in 408"
    );
    assert_eq!(client::get(gw.addr(), "a", "/").status, 200);
}

#[test]
fn chunked_request_with_trailers_is_forwarded_without_them() {
    let backend = Backend::start("echo");
    let gw = gateway(&backend);
    let res = client::request(
        gw.addr(),
        "POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Trailer: evil\r\n\r\n",
    );
    assert_eq!(res.status, 200);
    let echo = res.json();
    assert_eq!(echo["body_len"], 9);
    let headers = echo["headers"].to_string().to_ascii_lowercase();
    assert!(
        !headers.contains("x-trailer"),
        "a trailer became a header: {headers}"
    );
}
