//! End-to-end proxying: the real gateway binary between a raw HTTP client and real
//! backends on loopback.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use gateway_tests::{Backend, Gateway, client};

fn config(workers: usize, upstreams: &str, routes: &str) -> String {
    format!(
        "[gateway]\nworkers = {workers}\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n{upstreams}\n{routes}"
    )
}

fn upstream(name: &str, backends: &[&Backend], extra: &str) -> String {
    let targets: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr))
        .collect();
    format!(
        "[[upstreams]]\nname = \"{name}\"\ntargets = [ {} ]\n{extra}\n",
        targets.join(", ")
    )
}

#[test]
fn routes_by_host_path_method_header_and_query() {
    let backends: Vec<Backend> = ["default", "users", "admin", "posts", "beta", "debug"]
        .iter()
        .map(|n| Backend::start(n))
        .collect();
    let ups: String = backends
        .iter()
        .map(|b| upstream(&b.name, &[b], ""))
        .collect();
    let routes = r#"
[[routes]]
name = "default"
upstream = "default"

[[routes]]
name = "users"
path_prefix = "/users"
upstream = "users"

[[routes]]
name = "admin-host"
host = "admin.example.com"
upstream = "admin"

[[routes]]
name = "posts-write"
path_prefix = "/users"
methods = ["POST"]
upstream = "posts"

[[routes]]
name = "beta"
path_prefix = "/users"
headers = [ { name = "x-beta", value = "on" } ]
upstream = "beta"

[[routes]]
name = "debug"
path_prefix = "/users"
query = [ { name = "debug", value = "1" } ]
upstream = "debug"
"#;
    let gw = Gateway::start(&config(2, &ups, routes));
    let backend_of = |req: &str| {
        let res = client::request(gw.addr(), req);
        assert_eq!(res.status, 200, "request {req:?}: {}", res.text());
        res.json()["backend"]
            .as_str()
            .expect("backend name")
            .to_owned()
    };
    assert_eq!(backend_of("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), "default");
    assert_eq!(
        backend_of("GET /users/7 HTTP/1.1\r\nHost: a\r\n\r\n"),
        "users"
    );
    assert_eq!(
        backend_of("GET /usersx HTTP/1.1\r\nHost: a\r\n\r\n"),
        "default"
    );
    assert_eq!(
        backend_of("GET /users HTTP/1.1\r\nHost: Admin.Example.com\r\n\r\n"),
        "admin"
    );
    assert_eq!(
        backend_of("POST /users HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"),
        "posts"
    );
    assert_eq!(
        backend_of("GET /users HTTP/1.1\r\nHost: a\r\nX-Beta: on\r\n\r\n"),
        "beta"
    );
    assert_eq!(
        backend_of("GET /users?x=2&debug=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
        "debug"
    );
    assert_eq!(
        backend_of("GET /x/../users/./1 HTTP/1.1\r\nHost: a\r\n\r\n"),
        "users"
    );
}

#[test]
fn unmatched_request_gets_404_json_and_connection_stays_usable() {
    let backend = Backend::start("only");
    let routes = "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"u\"\n";
    let gw = Gateway::start(&config(1, &upstream("u", &[&backend], ""), routes));
    let mut stream = client::connect(gw.addr());
    stream
        .write_all(b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /")
        .expect("send");
    let res = client::read_response(&mut stream, false);
    assert_eq!(res.status, 404);
    assert_eq!(res.json()["code"], "no_route");
    assert!(res.header("x-request-id").is_some_and(|id| id.len() == 32));
    // The 5-byte body ("GET /") was discarded, not parsed as a request.
    stream
        .write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let res = client::read_response(&mut stream, false);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["target"], "/api/x");
}

#[test]
fn round_robin_spreads_and_connections_are_reused() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let routes = "[[routes]]\nname = \"all\"\nupstream = \"u\"\n";
    let gw = Gateway::start(&config(1, &upstream("u", &[&a, &b, &c], ""), routes));
    let mut stream = client::connect(gw.addr());
    let requests = 300;
    for _ in 0..requests {
        stream
            .write_all(b"GET /rr HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("send");
        assert_eq!(client::read_response(&mut stream, false).status, 200);
    }
    for backend in [&a, &b, &c] {
        assert_eq!(
            backend.requests(),
            requests / 3,
            "backend {} got an unequal share",
            backend.name
        );
        assert!(
            backend.connections() <= 2,
            "backend {} saw {} connections for {} requests: no reuse",
            backend.name,
            backend.connections(),
            requests / 3
        );
    }
}

#[test]
fn weighted_round_robin_follows_weights() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let ups = format!(
        "[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\", weight = 3 }}, {{ addr = \"{}\", weight = 1 }} ]\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&config(
        1,
        &ups,
        "[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
    ));
    let mut stream = client::connect(gw.addr());
    for _ in 0..400 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("send");
        assert_eq!(client::read_response(&mut stream, false).status, 200);
    }
    assert_eq!((a.requests(), b.requests()), (300, 100));
}

#[test]
fn consistent_hash_keeps_a_key_on_one_target() {
    let backends: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("h{i}"))).collect();
    let refs: Vec<&Backend> = backends.iter().collect();
    let ups = upstream(
        "u",
        &refs,
        "balance = \"consistent_hash\"\nhash_key = \"header:x-user\"\n",
    );
    let gw = Gateway::start(&config(
        2,
        &ups,
        "[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
    ));
    let mut seen = std::collections::HashSet::new();
    for user in 0..40 {
        let first = client::request(
            gw.addr(),
            &format!("GET / HTTP/1.1\r\nHost: a\r\nX-User: u{user}\r\n\r\n"),
        )
        .json()["backend"]
            .clone();
        for _ in 0..3 {
            let again = client::request(
                gw.addr(),
                &format!("GET / HTTP/1.1\r\nHost: a\r\nX-User: u{user}\r\n\r\n"),
            )
            .json()["backend"]
                .clone();
            assert_eq!(first, again, "user u{user} moved between targets");
        }
        seen.insert(first.to_string());
    }
    assert!(seen.len() >= 3, "40 keys landed on only {seen:?}");
}

#[test]
fn forwarding_headers_are_set_and_hop_by_hop_removed() {
    let backend = Backend::start("echo");
    let gw = Gateway::start(&config(
        1,
        &upstream("u", &[&backend], ""),
        "[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
    ));
    let res = client::request(
        gw.addr(),
        "GET /h?q=1 HTTP/1.1\r\nHost: svc.example:8080\r\nConnection: X-Private\r\nX-Private: secret\r\nKeep-Alive: 5\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-Id: client-id-1\r\nX-Keep: yes\r\n\r\n",
    );
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-request-id"), Some("client-id-1"));
    let echo = res.json();
    let headers: Vec<(String, String)> =
        serde_json::from_value(echo["headers"].clone()).expect("header list");
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(echo["target"], "/h?q=1");
    assert_eq!(get("host"), Some("svc.example:8080"));
    assert_eq!(
        get("x-forwarded-for"),
        Some("127.0.0.1"),
        "an untrusted client's X-Forwarded-For must be replaced"
    );
    assert_eq!(get("x-forwarded-proto"), Some("http"));
    assert_eq!(get("x-forwarded-host"), Some("svc.example:8080"));
    assert_eq!(get("x-request-id"), Some("client-id-1"));
    assert_eq!(get("via"), Some("1.1 gateway"));
    assert_eq!(get("x-keep"), Some("yes"));
    for hop in ["x-private", "keep-alive", "connection"] {
        assert_eq!(get(hop), None, "hop-by-hop header {hop} was forwarded");
    }
}

#[test]
fn trusted_proxies_extend_x_forwarded_for() {
    let backend = Backend::start("echo");
    let text = config(
        1,
        &upstream("u", &[&backend], ""),
        "[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
    )
    .replace(
        "[gateway]\n",
        "[gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    let gw = Gateway::start(&text);
    let res = client::request(
        gw.addr(),
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\r\n",
    );
    let headers: Vec<(String, String)> =
        serde_json::from_value(res.json()["headers"].clone()).expect("headers");
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(get("x-forwarded-proto").as_deref(), Some("https"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::start("echo");
    let gw = Gateway::start(&config(
        1,
        &upstream("u", &[&backend], ""),
        "[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
    ));
    let mut stream = client::connect(gw.addr());
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.extend_from_slice(
            format!(
                "GET /delay/{} HTTP/1.1\r\nHost: a\r\nX-Seq: {i}\r\n\r\n",
                (10 - i) * 3
            )
            .as_bytes(),
        );
    }
    batch.extend_from_slice(b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\n\r\n");
    stream.write_all(&batch).expect("send batch");
    let mut pending = Vec::new();
    for i in 0..10 {
        let res = client::read_response_from(&mut stream, false, &mut pending);
        assert_eq!(
            res.json()["target"],
            format!("/delay/{}", (10 - i) * 3),
            "response {i} out of order"
        );
    }
    let post = client::read_response_from(&mut stream, false, &mut pending);
    assert_eq!(
        (
            post.json()["target"].as_str(),
            post.json()["body_len"].as_u64()
        ),
        (Some("/p"), Some(3))
    );
    assert_eq!(
        client::read_response_from(&mut stream, false, &mut pending).json()["target"],
        "/last"
    );
}

#[test]
fn dead_target_is_502_and_retried_for_idempotent_requests() {
    let live = Backend::start("live");
    // A port nobody listens on: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let ups = format!(
        "[[upstreams]]\nname = \"dead\"\ntargets = [ {{ addr = \"{dead}\" }} ]\n\n[[upstreams]]\nname = \"mixed\"\ntargets = [ {{ addr = \"{dead}\" }}, {{ addr = \"{}\" }} ]\n",
        live.addr
    );
    let routes = "[[routes]]\nname = \"dead\"\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n[[routes]]\nname = \"mixed\"\npath_prefix = \"/mixed\"\nupstream = \"mixed\"\n";
    let gw = Gateway::start(&config(1, &ups, routes));
    let res = client::get(gw.addr(), "a", "/dead");
    assert_eq!(res.status, 502);
    assert_eq!(res.json()["code"], "upstream_connect_failed");
    for _ in 0..6 {
        let res = client::get(gw.addr(), "a", "/mixed");
        assert_eq!(
            res.status,
            200,
            "GET must be retried on the live target: {}",
            res.text()
        );
    }
    let mut saw_502 = false;
    for _ in 0..4 {
        let res = client::request(
            gw.addr(),
            "POST /mixed HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
        );
        saw_502 |= res.status == 502;
        assert!(res.status == 200 || res.status == 502);
    }
    assert!(saw_502, "a POST to the dead target must not be retried");
}

#[test]
fn slow_target_is_504() {
    let slow = Backend::start("slow");
    let ups = upstream("u", &[&slow], "read_timeout = \"300ms\"\n");
    let gw = Gateway::start(&config(
        1,
        &ups,
        "[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
    ));
    let started = Instant::now();
    let res = client::get(gw.addr(), "a", "/delay/2000");
    assert_eq!(res.status, 504);
    assert_eq!(res.json()["code"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "the 504 must come from the read timeout"
    );
    assert_eq!(client::get(gw.addr(), "a", "/delay/10").status, 200);
}

#[test]
fn response_framings_are_relayed() {
    let backend = Backend::start("bodies");
    let gw = Gateway::start(&config(
        1,
        &upstream("u", &[&backend], ""),
        "[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
    ));
    let mut stream = client::connect(gw.addr());
    for (path, len) in [
        ("/bytes/70000", 70000),
        ("/chunked/100000", 100000),
        ("/close/5000", 5000),
        ("/bytes/0", 0),
    ] {
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .expect("send");
        let res = client::read_response(&mut stream, false);
        assert_eq!((res.status, res.body.len()), (200, len), "{path}");
        assert!(
            res.body
                .iter()
                .enumerate()
                .all(|(i, &b)| b == gateway_tests::backend::body_byte(i as u64)),
            "{path}: body corrupted"
        );
    }
    // A HEAD answer carries the length but no body; the connection stays in sync.
    stream
        .write_all(b"HEAD /bytes/123 HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let res = client::read_response(&mut stream, true);
    assert_eq!(res.header("content-length"), Some("123"));
    stream
        .write_all(b"GET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    assert_eq!(client::read_response(&mut stream, false).body, b"abc");
    // An HTTP/1.0 client gets a close-delimited body for a chunked upstream response.
    let raw = client::raw_exchange(
        gw.addr(),
        b"GET /chunked/10 HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.ends_with("\r\n\r\nabcdefghij"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
}

#[test]
fn expect_100_continue_gets_an_interim_response() {
    let backend = Backend::start("echo");
    let gw = Gateway::start(&config(
        1,
        &upstream("u", &[&backend], ""),
        "[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
    ));
    let mut stream = client::connect(gw.addr());
    stream
        .write_all(
            b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .expect("send head");
    let interim = client::read_response(&mut stream, false);
    assert_eq!(interim.status, 100);
    stream.write_all(b"data").expect("send body");
    let res = client::read_response(&mut stream, false);
    assert_eq!(
        (res.status, res.json()["body_len"].as_u64()),
        (200, Some(4))
    );
}

#[test]
fn broken_upstream_framing_is_502() {
    let ambiguous = Backend::raw(
        "ambiguous",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    let bare_lf = Backend::raw("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi");
    for backend in [&ambiguous, &bare_lf] {
        let gw = Gateway::start(&config(
            1,
            &upstream("u", &[backend], ""),
            "[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        ));
        let res = client::get(gw.addr(), "a", "/");
        assert_eq!(res.status, 502, "{}: {}", backend.name, res.text());
        assert_eq!(res.json()["code"], "upstream_invalid_response");
    }
}

#[test]
fn a_pooled_connection_closed_by_the_upstream_is_retried_on_a_fresh_one() {
    // Answers one request per connection, then closes without saying so: every pooled
    // connection is stale by the time the next request takes it.
    let flaky = Backend::raw(
        "one-shot",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    );
    let gw = Gateway::start(&config(
        1,
        &upstream("u", &[&flaky], ""),
        "[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
    ));
    let mut stream = client::connect(gw.addr());
    for i in 0..5 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("send");
        let res = client::read_response(&mut stream, false);
        assert_eq!(
            (res.status, res.body.as_slice()),
            (200, &b"ok"[..]),
            "request {i}"
        );
    }
    assert_eq!(flaky.requests(), 5);
}
