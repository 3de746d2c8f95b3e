//! The conformance and attack corpus: raw bytes in, the status (or close) out, and what a
//! recording backend saw — never a smuggled second request, never the hidden path without
//! credentials. Each case names where it comes from: an RFC 9110/9112 rule, or a
//! published desync/bypass bug in another proxy or server that the same bytes triggered.
//!
//! The backend records every request it parses. Its path handling is deliberately lenient
//! (like many real backends it percent-decodes once, merges `//`, resolves dot segments,
//! drops `;parameters`, treats `\` as `/`), so a path the gateway routes as public but the
//! backend resolves to `/treasure` is a bypass.

use std::{net::SocketAddr, time::Duration};

use gateway_tests::{
    client::raw_exchange,
    gateway::Gateway,
    service::{Received, Reply, Service},
    sha256_hex,
};

const KEY: &str = "treasure-key-0123456789";

fn start(backend: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        r#"[gateway]
workers = 1

[limits]
max_body_size = "64KiB"
discard_body_max = "1KiB"
header_read_timeout = "1s"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{backend}" }} ]

[auth.api_key]
header = "x-api-key"

[[consumers]]
name = "owner"
api_keys = ["sha256:{key}"]

[[routes]]
name = "treasure"
path_prefix = "/treasure"
upstream = "app"
auth = ["api_key"]

[[routes]]
name = "public"
path_prefix = "/"
upstream = "app"
"#,
        key = sha256_hex(KEY)
    ))
}

/// What one case expects.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The gateway answers with this status and nothing reaches the backend.
    Refused(u16),
    /// Exactly these many requests reach the backend, with these paths.
    Forwarded(&'static [&'static str]),
}

struct Case {
    name: &'static str,
    source: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, source: &'static str, bytes: &[u8], expect: Expect) -> Case {
    Case {
        name,
        source,
        bytes: bytes.to_vec(),
        expect,
    }
}

/// How a lenient backend resolves a path: decode once, `\` as `/`, drop `;params`,
/// merge `//`, resolve dot segments, drop a trailing `/`.
fn backend_view(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        let segment = segment.split(';').next().unwrap_or_default();
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Whether the backend resolves the request to the hidden path.
fn is_treasure(request: &Received) -> bool {
    let view = backend_view(&request.path);
    view == "/treasure" || view.starts_with("/treasure/")
}

/// Whether the hidden path was reached without the owner's credentials.
fn reaches_treasure(request: &Received) -> bool {
    is_treasure(request) && request.header("x-consumer") != Some("owner")
}

#[test]
fn smuggling_and_framing_cases_never_reach_the_backend_as_a_second_request() {
    let backend = Service::start(|_| Reply::new(200, "text/plain", "ok"));
    let gw = start(backend.addr);
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let with_tail = |head: &[u8]| [head, smuggled].concat();
    let cases = vec![
        case("CL and TE together", "RFC 9112 §6.1 (a server MAY reject); PortSwigger CL.TE/TE.CL", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("TE with vertical tab", "CVE-2019-18277 (HAProxy): Transfer-Encoding: \\x0bchunked", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("space before colon in TE", "CVE-2019-16869 (Netty); RFC 9112 §5.1", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("TE value with a leading comma", "http-garden: TE list parsing discrepancies", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("TE chunked twice", "RFC 9112 §6.1 (chunked MUST NOT be applied more than once)", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("TE split over two lines", "CVE-2022-32215 (Node.js llhttp): multi-line Transfer-Encoding", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("TE in HTTP/1.0", "RFC 9112 §6.1 (HTTP/1.0 + TE: framing is faulty)", &with_tail(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("empty Content-Length", "CVE-2023-40225 (HAProxy forwarded empty Content-Length); RFC 9110 §8.6", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n"), Expect::Refused(400)),
        case("signed Content-Length", "CVE-2021-32715 (hyper accepted +N)", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd"), Expect::Refused(400)),
        case("Content-Length list with different values", "RFC 9112 §6.3 rule 5", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\nabcd"), Expect::Refused(400)),
        case("chunk size overflow", "CVE-2021-32714 (hyper chunk size overflow); CVE-2013-2028 (nginx)", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nf0000000000000003\r\nabc\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("bare LF after chunk size", "CVE-2022-32214 (Node.js llhttp: lone LF as a delimiter)", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("CR inside a chunk extension", "CVE-2021-22960 (Node.js llhttp chunk extensions)", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;a\rb\r\nabc\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("chunk data longer than its size", "RFC 9112 §7.1 (chunk-data then CRLF)", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n"), Expect::Refused(400)),
        case("empty header name", "CVE-2023-25725 (HAProxy dropped headers after an empty name)", &with_tail(b"POST / HTTP/1.1\r\nHost: a\r\n: x\r\nContent-Length: 4\r\n\r\nabcd"), Expect::Refused(400)),
        case("obs-fold", "RFC 9112 §5.2 (a server MUST reject or replace obs-fold)", &with_tail(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"), Expect::Refused(400)),
        case("bare CR in a field line", "RFC 9112 §2.2 (bare CR MUST be rejected or replaced)", &with_tail(b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"), Expect::Refused(400)),
        case("NUL in a field value", "RFC 9110 §5.5 (NUL MUST be rejected or replaced)", &with_tail(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"), Expect::Refused(400)),
        case("two Host fields", "RFC 9112 §3.2 (more than one Host: 400)", &with_tail(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), Expect::Refused(400)),
        case("missing Host", "RFC 9112 §3.2 (HTTP/1.1 without Host: 400)", &with_tail(b"GET / HTTP/1.1\r\n\r\n"), Expect::Refused(400)),
        case("whitespace in the request line", "RFC 9112 §3 (single SP); http-garden request-line cases", &with_tail(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), Expect::Refused(400)),
        case("fragment in the target", "CVE-2023-45539 (HAProxy accepted # in the path)", &with_tail(b"GET /treasure#.png HTTP/1.1\r\nHost: a\r\n\r\n"), Expect::Refused(400)),
        case("HTTP/1.2 version", "RFC 9112 §2.3 (SHOULD be read as 1.1; refused here: the parser knows 1.0 and 1.1 only)", &with_tail(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"), Expect::Refused(400)),
        case("long header name ending in Content-Length", "CVE-2021-40346 (HAProxy header-name length overflow)", format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length0{}: x\r\nContent-Length: 4\r\n\r\nabcd{}", "a".repeat(256), String::from_utf8_lossy(smuggled)).as_bytes(), Expect::Forwarded(&["/", "/smuggled"])),
        case("local 401 with a body holding a request", "CVE-2025-4366 (Pingora: body of a locally answered request parsed as the next one)", b"GET /treasure HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", Expect::Refused(401)),
        case("forwarded body holding a request", "PortSwigger request smuggling: a body is never parsed as a request", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", Expect::Forwarded(&["/echo"])),
        case("401 with a chunked body holding a request", "CVE-2025-4366 (Pingora) / locally answered requests with pending bodies", b"POST /treasure HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n23\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\n\r\n", Expect::Refused(401)),
        case("h2c upgrade attempt", "Bishop Fox h2c smuggling (2020): Upgrade: h2c must not reach the backend", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", Expect::Forwarded(&["/"])),
    ];
    let mut failures = Vec::new();
    for case in cases {
        let before = backend.received().len();
        let raw = raw_exchange(gw.addr(), &case.bytes, Duration::from_millis(1500));
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status: Option<u16> = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        let seen: Vec<Received> = backend.received()[before..].to_vec();
        let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
        let ok = match case.expect {
            Expect::Refused(want) => status == Some(want) && seen.is_empty(),
            Expect::Forwarded(want) => paths == want,
        };
        if seen.iter().any(|r| r.path == "/smuggled")
            && !matches!(case.expect, Expect::Forwarded(w) if w.contains(&"/smuggled"))
        {
            failures.push(format!(
                "{} [{}]: SMUGGLED a request to the backend",
                case.name, case.source
            ));
        } else if !ok {
            failures.push(format!(
                "{} [{}]: expected {:?}, got status {status:?}, backend saw {paths:?}: {}",
                case.name,
                case.source,
                case.expect,
                text.lines().next().unwrap_or_default()
            ));
        }
        if let Some(h2c) = seen.iter().find(|r| r.header("upgrade").is_some()) {
            failures.push(format!("{}: the backend saw Upgrade: {h2c:?}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_hidden_path_is_unreachable_without_credentials_whatever_its_encoding() {
    let backend = Service::start(|req| {
        let body = if is_treasure(req) {
            "TREASURE"
        } else {
            "public"
        };
        Reply::new(200, "text/plain", body)
    });
    let gw = start(backend.addr);
    let targets = [
        "/treasure",
        "/treasure/",
        "/treasure/gold",
        "/TREASURE",
        "/%74reasure",
        "/%74%72%65%61%73%75%72%65",
        "/treasur%65/gold",
        "//treasure",
        "///treasure/gold",
        "/./treasure",
        "/public/../treasure",
        "/public/%2e%2e/treasure",
        "/public/.%2E/treasure",
        "/public/%2e./treasure",
        "/public/..%2Ftreasure",
        "/public/%2F../treasure",
        "/public/..%5Ctreasure",
        "/public\\..\\treasure",
        "/treasure;jsessionid=1",
        "/treasure;/gold",
        "/public/..;/treasure",
        "/treasure%00.png",
        "/treasure%2500",
        "/%2574reasure",
        "/treasure?x=1",
        "/../treasure",
        "/../../../../treasure",
        "/treasure%20",
        "/treasure.",
        "http://a/treasure",
        "*",
    ];
    let mut leaks = Vec::new();
    for target in targets {
        let raw = raw_exchange(
            gw.addr(),
            format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
            Duration::from_millis(1500),
        );
        let text = String::from_utf8_lossy(&raw);
        if text.contains("TREASURE") {
            leaks.push(format!(
                "{target:?} → {}",
                text.lines().next().unwrap_or_default()
            ));
        }
    }
    let seen = backend.received();
    let reached: Vec<&str> = seen
        .iter()
        .filter(|r| reaches_treasure(r))
        .map(|r| r.path.as_str())
        .collect();
    assert!(
        leaks.is_empty() && reached.is_empty(),
        "the hidden path leaked: {leaks:?}, backend served {reached:?}"
    );
    // With the key it is reachable, so the test is not vacuous.
    let raw = raw_exchange(
        gw.addr(),
        format!("GET /treasure/gold HTTP/1.1\r\nHost: a\r\nX-Api-Key: {KEY}\r\n\r\n").as_bytes(),
        Duration::from_millis(1500),
    );
    assert!(String::from_utf8_lossy(&raw).contains("TREASURE"));
}

#[test]
fn hop_by_hop_forwarding_and_identity_headers_cannot_be_abused() {
    let backend = Service::start(|_| Reply::new(200, "text/plain", "ok"));
    let gw = start(backend.addr);
    struct HeaderCase {
        name: &'static str,
        source: &'static str,
        request: &'static str,
        /// (header, the value the backend must see, or None for absent).
        want: &'static [(&'static str, Option<&'static str>)],
    }
    let cases = [
        HeaderCase {
            name: "Connection naming X-Forwarded-For",
            source: "CVE-2024-45410 (Traefik: hop-by-hop removal of X-Forwarded-*)",
            request: "GET /a HTTP/1.1\r\nHost: a\r\nConnection: close, X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
            want: &[("x-forwarded-for", Some("127.0.0.1"))],
        },
        HeaderCase {
            name: "client-sent identity header",
            source: "identity spoofing through gateway-set headers (OWASP API2:2023)",
            request: "GET /a HTTP/1.1\r\nHost: a\r\nX-Consumer: owner\r\nX-Auth-Subject: root\r\n\r\n",
            want: &[("x-consumer", None), ("x-auth-subject", None)],
        },
        HeaderCase {
            name: "Connection naming an identity header",
            source: "hop-by-hop header abuse (N. Davison, 2019)",
            request: "GET /a HTTP/1.1\r\nHost: a\r\nConnection: x-consumer\r\nX-Consumer: owner\r\n\r\n",
            want: &[("x-consumer", None)],
        },
        HeaderCase {
            name: "forwarded host from an untrusted client",
            source: "RFC 7239 §8 (trust only known proxies); cache-poisoning via X-Forwarded-Host",
            request: "GET /a HTTP/1.1\r\nHost: a\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\r\n",
            want: &[
                ("x-forwarded-host", Some("a")),
                ("x-forwarded-proto", Some("http")),
            ],
        },
        HeaderCase {
            name: "absolute-form target with another Host",
            source: "RFC 9112 §3.2.2 (the target's authority replaces Host)",
            request: "GET http://b.example/a HTTP/1.1\r\nHost: a\r\n\r\n",
            want: &[("host", Some("b.example"))],
        },
        HeaderCase {
            name: "hop-by-hop fields",
            source: "RFC 9110 §7.6.1 (Connection, Keep-Alive, Proxy-Connection, TE, Upgrade are per hop)",
            request: "GET /a HTTP/1.1\r\nHost: a\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: websocket\r\n\r\n",
            want: &[
                ("keep-alive", None),
                ("proxy-connection", None),
                ("te", None),
                ("upgrade", None),
            ],
        },
    ];
    let mut failures = Vec::new();
    for case in cases {
        let before = backend.received().len();
        let raw = raw_exchange(
            gw.addr(),
            case.request.as_bytes(),
            Duration::from_millis(800),
        );
        let seen = backend.received()[before..].to_vec();
        let [request] = seen.as_slice() else {
            failures.push(format!(
                "{} [{}]: backend saw {} requests: {}",
                case.name,
                case.source,
                seen.len(),
                String::from_utf8_lossy(&raw)
            ));
            continue;
        };
        for (header, want) in case.want {
            if request.header(header) != *want {
                failures.push(format!(
                    "{} [{}]: {header} = {:?}, want {want:?}",
                    case.name,
                    case.source,
                    request.header(header)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
