//! The upstream half of the conformance corpus: raw response bytes from a backend in,
//! what the client gets out. A response whose framing is ambiguous or broken is a 502
//! (or, once its head is on the way, a cut connection), never passed on for the client
//! to guess; bytes a backend sends past the end of its response never reach a client as
//! the answer to its next request (response splitting / desync). Each case names the
//! rule or the published bug it comes from.
//!
//! The backend keeps its connections open like a real one, so a gateway that reused a
//! connection with leftover bytes would answer the follow-up request with them.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use gateway_tests::{client, gateway::Gateway};

/// What a case expects the client to get for `GET /case/N`.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// A 502 from the gateway (the head was refused before anything was sent).
    BadGateway,
    /// This status and decoded body.
    Passed(u16, &'static str),
    /// The head went out; the connection is closed before the body completes.
    Cut,
}

struct Case {
    name: &'static str,
    source: &'static str,
    response: &'static [u8],
    /// The backend closes its connection after the response.
    close: bool,
    expect: Outcome,
}

/// Marker in every byte sequence a backend appends past its response: it must never
/// reach a client.
const SMUGGLED: &str = "SMUGGLED";

const CASES: &[Case] = &[
    Case {
        name: "Content-Length and Transfer-Encoding together",
        source: "RFC 9112 §6.3 ¶3 (ought to be handled as an error; RFC 9112 §11.1 response splitting)",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        close: false,
        expect: Outcome::BadGateway,
    },
    Case {
        name: "two different Content-Length values",
        source: "RFC 9112 §6.3 ¶5 (unrecoverable error)",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 30\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED",
        close: false,
        expect: Outcome::BadGateway,
    },
    Case {
        name: "Content-Length with a sign",
        source: "RFC 9110 §8.6 (Content-Length = 1*DIGIT)",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        close: false,
        expect: Outcome::BadGateway,
    },
    Case {
        name: "Content-Length not a number",
        source: "RFC 9110 §8.6",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
        close: false,
        expect: Outcome::BadGateway,
    },
    Case {
        name: "bare LF line endings",
        source: "RFC 9112 §2.2 (bare LF is tolerated only by choice; a proxy that guesses differs from the next hop)",
        response: b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        close: false,
        expect: Outcome::BadGateway,
    },
    Case {
        name: "obsolete line folding in a response header",
        source: "RFC 9112 §5.2 (a proxy MUST reject or replace obs-fold)",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Folded: a\r\n b\r\n\r\nok",
        close: false,
        expect: Outcome::BadGateway,
    },
    Case {
        name: "whitespace between a field name and the colon",
        source: "RFC 9112 §5.1 (a proxy MUST remove it from a response or reject)",
        response: b"HTTP/1.1 200 OK\r\nContent-Length : 30\r\n\r\nok",
        close: false,
        expect: Outcome::BadGateway,
    },
    Case {
        name: "three-digit status rule",
        source: "RFC 9112 §4 (status-code = 3DIGIT)",
        response: b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        close: false,
        expect: Outcome::BadGateway,
    },
    Case {
        name: "not an HTTP response at all",
        source: "RFC 9112 §4 (status-line); a backend speaking another protocol",
        response: b"SSH-2.0-OpenSSH_9.2\r\n",
        close: true,
        expect: Outcome::BadGateway,
    },
    Case {
        name: "bytes after a Content-Length body",
        source: "RFC 9112 §11.1 (response splitting) and §9.3 (a connection is reused only after a complete response)",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED",
        close: false,
        expect: Outcome::Passed(200, "ok"),
    },
    Case {
        name: "bytes after the last chunk",
        source: "RFC 9112 §7.1 (the message ends at the last chunk and trailers)",
        response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED",
        close: false,
        expect: Outcome::Passed(200, "ok"),
    },
    Case {
        name: "a 204 that carries a body anyway",
        source: "RFC 9110 §15.3.5 (204 has no content); RFC 9112 §6.3 ¶1",
        response: b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\nSMUGGLED",
        close: false,
        expect: Outcome::Passed(204, ""),
    },
    Case {
        name: "a 304 that carries a body anyway",
        source: "RFC 9110 §15.4.5 (304 has no content); RFC 9112 §6.3 ¶1",
        response: b"HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\nSMUGGLED",
        close: false,
        expect: Outcome::Passed(304, ""),
    },
    Case {
        name: "an interim 100 before the final response",
        source: "RFC 9110 §15.2 (1xx then the final response)",
        response: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        close: false,
        expect: Outcome::Passed(200, "final"),
    },
    Case {
        name: "no framing: the body ends at close",
        source: "RFC 9112 §6.3 ¶8 (read until the connection closes)",
        response: b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
        close: true,
        expect: Outcome::Passed(200, "until close"),
    },
    Case {
        name: "a transfer coding other than chunked",
        source: "RFC 9112 §6.1 (transfer codings are hop by hop: one the gateway cannot \
                 decode cannot be relayed as it is) and RFC 9110 §15.6.3 (invalid response: 502)",
        response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nuntil close",
        close: true,
        expect: Outcome::BadGateway,
    },
    Case {
        name: "a chunk size that is not hex",
        source: "RFC 9112 §7.1 (chunk-size = 1*HEXDIG)",
        response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        close: false,
        expect: Outcome::Cut,
    },
    Case {
        name: "a chunk size that overflows 64 bits",
        source: "chunk-size integer overflows: CVE-2014-0075 (Tomcat), CVE-2021-32714 (hyper)",
        response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000002\r\nok\r\n0\r\n\r\n",
        close: false,
        expect: Outcome::Cut,
    },
    Case {
        name: "a Content-Length body cut short by close",
        source: "RFC 9112 §8 (an incomplete message must not look complete)",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        close: true,
        expect: Outcome::Cut,
    },
];

/// A backend that answers `GET /case/N` with case N's bytes and anything else with
/// `after`, keeping connections open unless the case closes them.
struct RawBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl RawBackend {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        std::thread::spawn(move || serve(stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, stop }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream) {
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end + 4);
        let path = head.split_whitespace().nth(1).unwrap_or_default();
        let case = path
            .strip_prefix("/case/")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| CASES.get(n));
        match case {
            Some(case) => {
                if stream.write_all(case.response).is_err() || case.close {
                    return;
                }
            }
            None => {
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter")
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn start(backend: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"app\"\ntargets = [ {{ addr = \"{backend}\" }} ]\nread_timeout = \"2s\"\n\n\
         [[routes]]\nname = \"all\"\nupstream = \"app\"\n"
    ))
}

/// Everything the client receives until the gateway closes or stays quiet for `quiet`.
fn read_all(stream: &mut TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(quiet)).expect("timeout");
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, false);
            }
            Err(_) => return (out, true),
        }
    }
}

#[test]
fn upstream_framing_cases_get_their_documented_answer_and_never_desync() {
    let backend = RawBackend::start();
    let gw = start(backend.addr);
    let mut failures = Vec::new();
    for (index, case) in CASES.iter().enumerate() {
        let mut stream = client::connect(gw.addr());
        stream
            .write_all(format!("GET /case/{index} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .expect("send");
        let verdict = match case.expect {
            Outcome::Cut => {
                let (bytes, closed) = read_all(&mut stream, Duration::from_secs(5));
                let text = String::from_utf8_lossy(&bytes).into_owned();
                (closed && !text.contains(SMUGGLED))
                    .then_some(())
                    .ok_or_else(|| {
                        format!("expected a cut connection; closed={closed}, got {text:?}")
                    })
            }
            Outcome::BadGateway | Outcome::Passed(..) => {
                // Interim 1xx answers may be relayed (RFC 9110 §15.2); the final one counts.
                let mut res = client::read_response(&mut stream, false);
                while (100..200).contains(&res.status) {
                    res = client::read_response(&mut stream, false);
                }
                let (status, body) = match case.expect {
                    Outcome::BadGateway => (502, None),
                    Outcome::Passed(status, body) => (status, Some(body)),
                    Outcome::Cut => unreachable!(),
                };
                let text = String::from_utf8_lossy(&res.body).into_owned();
                if res.status != status || body.is_some_and(|b| b != text) {
                    Err(format!(
                        "expected {status} {body:?}, got {} {text:?}",
                        res.status
                    ))
                } else if text.contains(SMUGGLED) {
                    Err(format!("smuggled bytes reached the client: {text:?}"))
                } else if res
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    Ok(())
                } else {
                    // The same client connection's next request gets the backend's real
                    // answer to it, never leftovers of the previous response.
                    stream
                        .write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
                        .expect("send follow-up");
                    let next = client::read_response(&mut stream, false);
                    (next.status == 200 && next.body == b"after")
                        .then_some(())
                        .ok_or_else(|| {
                            format!(
                                "the follow-up got {} {:?}",
                                next.status,
                                String::from_utf8_lossy(&next.body)
                            )
                        })
                }
            }
        };
        if let Err(why) = verdict {
            failures.push(format!("{} [{}]: {why}", case.name, case.source));
        }
    }
    // And afterwards the gateway still serves normally.
    let res = client::get(gw.addr(), "a", "/after");
    assert_eq!((res.status, res.body.as_slice()), (200, &b"after"[..]));
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
