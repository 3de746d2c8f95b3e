//! Rate limits, concurrency limits, CORS and per-route client-address policy, end to
//! end: `RateLimit-*`/`Retry-After` headers, the configured rate held across many
//! connections and every worker, bounded memory under key rotation, 503 past
//! `max_in_flight`, CORS preflights and simple requests, trusted-proxy client addresses.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    backend::Backend,
    client::{Response, connect, connect_from, read_response},
    gateway::Gateway,
};

fn config(backend: &Backend, extra_gateway: &str, routes: &str) -> String {
    format!(
        r#"
[gateway]
workers = 2
{extra_gateway}

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{}" }} ]

{routes}
"#,
        backend.addr
    )
}

fn send_on(stream: &mut std::net::TcpStream, path: &str, headers: &str) -> Response {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: api.test\r\n{headers}\r\n"
    )
    .expect("send");
    read_response(stream, false)
}

fn header_u64(res: &Response, name: &str) -> u64 {
    res.header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", res.headers))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

#[test]
fn a_burst_is_admitted_then_429_with_retry_after_and_ratelimit_headers() {
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(
        &backend,
        "",
        r#"
[[routes]]
name = "limited"
upstream = "app"
rate_limit = { rate = "5/s", burst = 5, key = "route" }
"#,
    ));
    let mut stream = connect(gw.addr());
    for expected_remaining in (0..5).rev() {
        let res = send_on(&mut stream, "/x", "");
        assert_eq!(res.status, 200);
        assert_eq!(header_u64(&res, "ratelimit-limit"), 5);
        assert_eq!(header_u64(&res, "ratelimit-remaining"), expected_remaining);
        assert!((1..=1).contains(&header_u64(&res, "ratelimit-reset")));
    }
    let res = send_on(&mut stream, "/x", "");
    assert_eq!(res.status, 429, "{}", res.text());
    assert_eq!(res.json()["code"], "rate_limited");
    assert_eq!(header_u64(&res, "retry-after"), 1);
    assert_eq!(header_u64(&res, "ratelimit-remaining"), 0);
    assert_eq!(
        backend.requests(),
        5,
        "refused requests never reach the upstream"
    );
    // The connection stays usable, and the bucket refills at the configured rate.
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(send_on(&mut stream, "/x", "").status, 200);
}

#[test]
fn sliding_window_mode_admits_the_count_and_no_burst_beyond() {
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(
        &backend,
        "",
        r#"
[[routes]]
name = "windowed"
upstream = "app"
rate_limit = { rate = "10/s", key = "route", mode = "sliding_window" }
"#,
    ));
    let mut stream = connect(gw.addr());
    let statuses: Vec<u16> = (0..15)
        .map(|_| send_on(&mut stream, "/x", "").status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    let res = send_on(&mut stream, "/x", "");
    assert_eq!(res.status, 429);
    assert_eq!(header_u64(&res, "ratelimit-limit"), 10);
    assert!((1..=1).contains(&header_u64(&res, "retry-after")));
    let bad = gateway_tests::gateway::write_config(&config(
        &backend,
        "",
        "[[routes]]\nname = \"w\"\nupstream = \"app\"\nrate_limit = { rate = \"10/s\", burst = 5, mode = \"sliding_window\" }\n",
    ));
    let (status, _, stderr) =
        gateway_tests::gateway::run_cli(&["check", "--config", bad.path().to_str().expect("utf8")]);
    assert!(
        !status.success() && stderr.contains("routes[0].rate_limit.burst"),
        "{stderr}"
    );
}

/// Requests from `threads` keep-alive connections for `run`; returns (admitted, elapsed
/// from the first request to the last).
fn hammer(
    addr: SocketAddr,
    threads: usize,
    run: Duration,
    headers: &'static str,
) -> (u64, Duration) {
    let admitted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let admitted = admitted.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    match send_on(&mut stream, "/x", headers).status {
                        200 => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {}
                        other => panic!("unexpected status {other}"),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().expect("client thread");
    }
    (admitted.load(Ordering::Relaxed), start.elapsed())
}

#[test]
fn one_client_on_eight_connections_gets_the_configured_rate_within_5_percent() {
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(
        &backend,
        "",
        r#"
[[routes]]
name = "limited"
upstream = "app"
rate_limit = { rate = "200/s", burst = 20, key = "client_ip" }
"#,
    ));
    let (admitted, elapsed) = hammer(gw.addr(), 8, Duration::from_secs(5), "");
    let expected = 20.0 + 200.0 * elapsed.as_secs_f64();
    let ratio = admitted as f64 / expected;
    eprintln!(
        "rate accuracy: admitted {admitted} in {elapsed:?}, expected {expected:.0}, ratio {ratio:.4}"
    );
    assert!(
        (0.95..=1.05).contains(&ratio),
        "admitted {admitted} in {elapsed:?}, expected about {expected:.0} (ratio {ratio:.3})"
    );
    assert_eq!(backend.requests() as u64, admitted);
}

#[test]
fn rotating_keys_cannot_grow_memory() {
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(
        &backend,
        "rate_limit_keys = 4096",
        r#"
[[routes]]
name = "limited"
upstream = "app"
rate_limit = { rate = "1/min", burst = 1, key = "header:x-user" }
"#,
    ));
    let mut warm = connect(gw.addr());
    assert_eq!(send_on(&mut warm, "/x", "X-User: warm\r\n").status, 200);
    let before = gw.rss();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let addr = gw.addr();
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                for i in 0..5_000u64 {
                    let res = send_on(&mut stream, "/x", &format!("X-User: user-{t}-{i}\r\n"));
                    assert_eq!(res.status, 200, "a new key gets its burst");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let grown = gw.rss().saturating_sub(before);
    eprintln!(
        "key rotation: RSS {before} -> {} bytes over 40k keys",
        gw.rss()
    );
    assert!(
        grown < 8 << 20,
        "RSS grew by {grown} bytes over 40k distinct keys"
    );
    // Keys are still limited individually.
    assert_eq!(send_on(&mut warm, "/x", "X-User: again\r\n").status, 200);
    assert_eq!(send_on(&mut warm, "/x", "X-User: again\r\n").status, 429);
}

/// One slow request holds the only place; the next gets 503 until it is done.
fn assert_one_in_flight(backend: &Backend, gw: &Gateway) {
    let addr = gw.addr();
    let slow = std::thread::spawn(move || send_on(&mut connect(addr), "/delay/1500", "").status);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.requests() == 0 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let res = send_on(&mut connect(addr), "/x", "");
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.json()["code"], "too_many_in_flight");
    assert_eq!(slow.join().expect("slow request"), 200);
    // The place is given back just after the response's last byte is written: the
    // client may see the response a moment before that.
    let deadline = Instant::now() + Duration::from_secs(2);
    while send_on(&mut connect(addr), "/x", "").status != 200 {
        assert!(Instant::now() < deadline, "the place is never free again");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn max_in_flight_answers_503_beyond_the_limit() {
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(
        &backend,
        "",
        "[[routes]]\nname = \"narrow\"\nupstream = \"app\"\nmax_in_flight = 1\n",
    ));
    assert_one_in_flight(&backend, &gw);

    // The same limit on the upstream covers every route to it.
    let backend = Backend::start("app");
    let text = config(
        &backend,
        "",
        "[[routes]]\nname = \"a\"\nupstream = \"app\"\n",
    )
    .replace("targets = [", "max_in_flight = 1\ntargets = [");
    let gw = Gateway::start(&text);
    assert_one_in_flight(&backend, &gw);
}

#[test]
fn cors_preflights_are_answered_and_simple_requests_get_headers() {
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(
        &backend,
        "",
        r#"
[[routes]]
name = "api"
upstream = "app"
cors = { allow_origins = ["https://app.example.org", "https://*.example.com"], allow_methods = ["GET", "POST", "DELETE"], allow_headers = ["Authorization", "Content-Type"], expose_headers = ["X-Request-Id"], allow_credentials = true, max_age = "10m" }
"#,
    ));
    let preflight = |origin: &str| {
        let mut stream = connect(gw.addr());
        write!(
            stream,
            "OPTIONS /orders HTTP/1.1\r\nHost: api.test\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: DELETE\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"
        )
        .expect("send");
        read_response(&mut stream, false)
    };
    for origin in ["https://app.example.org", "https://eu.shop.example.com"] {
        let res = preflight(origin);
        assert_eq!(res.status, 204, "{origin}");
        assert_eq!(res.header("access-control-allow-origin"), Some(origin));
        assert_eq!(
            res.header("access-control-allow-methods"),
            Some("GET, POST, DELETE")
        );
        assert_eq!(
            res.header("access-control-allow-headers"),
            Some("authorization, content-type")
        );
        assert_eq!(res.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(res.header("access-control-max-age"), Some("600"));
        assert_eq!(res.header("vary"), Some("origin"));
    }
    for origin in [
        "https://evil.test",
        "https://example.com",
        "http://a.example.com",
    ] {
        let res = preflight(origin);
        assert_eq!(res.status, 204);
        assert_eq!(res.header("access-control-allow-origin"), None, "{origin}");
    }
    assert_eq!(
        backend.requests(),
        0,
        "preflights are answered by the gateway"
    );

    let mut stream = connect(gw.addr());
    let res = send_on(
        &mut stream,
        "/orders",
        "Origin: https://app.example.org\r\n",
    );
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://app.example.org")
    );
    assert_eq!(
        res.header("access-control-expose-headers"),
        Some("X-Request-Id")
    );
    let res = send_on(&mut stream, "/orders", "Origin: https://evil.test\r\n");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("access-control-allow-origin"), None);
    // Without Origin, OPTIONS is an ordinary request for the upstream.
    write!(stream, "OPTIONS /orders HTTP/1.1\r\nHost: api.test\r\n\r\n").expect("send");
    assert_eq!(read_response(&mut stream, false).status, 200);
    assert_eq!(backend.requests(), 3);
}

#[test]
fn route_ip_lists_judge_the_client_behind_a_trusted_proxy() {
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(
        &backend,
        "trusted_proxies = [\"127.0.0.1\"]",
        r#"
[[routes]]
name = "office"
upstream = "app"
ip_allow = ["10.1.0.0/16"]
ip_deny = ["10.1.9.0/24"]
"#,
    ));
    let via_proxy = |xff: &str| {
        let mut stream = connect(gw.addr());
        let headers = if xff.is_empty() {
            String::new()
        } else {
            format!("X-Forwarded-For: {xff}\r\n")
        };
        send_on(&mut stream, "/x", &headers).status
    };
    assert_eq!(via_proxy("10.1.2.3"), 200);
    assert_eq!(
        via_proxy("192.0.2.1, 10.1.2.3"),
        200,
        "the last hop before us counts"
    );
    assert_eq!(
        via_proxy("10.1.2.3, 127.0.0.1"),
        200,
        "trusted hops are skipped"
    );
    assert_eq!(via_proxy("10.1.9.7"), 403, "deny wins over allow");
    assert_eq!(via_proxy("10.2.0.1"), 403);
    assert_eq!(
        via_proxy(""),
        403,
        "the proxy itself is not in the allow list"
    );
    assert_eq!(
        via_proxy("10.1.2.3, 192.0.2.1"),
        403,
        "a spoofed earlier hop is ignored"
    );
    // A peer that is not a trusted proxy is judged by its own address.
    let untrusted: IpAddr = "127.0.0.2".parse().expect("ip");
    let mut stream = connect_from(untrusted, gw.addr()).expect("connect from 127.0.0.2");
    let res = send_on(&mut stream, "/x", "X-Forwarded-For: 10.1.2.3\r\n");
    assert_eq!(res.status, 403);
    assert_eq!(res.json()["code"], "ip_denied");
}
