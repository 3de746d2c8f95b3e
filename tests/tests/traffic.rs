//! Traffic shaping with real backends: weighted canary splits land within tolerance,
//! header and cookie flags pick their upstream, a split key keeps a client on one side,
//! mirrored requests (head and body) reach the shadow without touching the real answer,
//! and request and response header transforms apply with their variables.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use gateway_tests::{
    backend::{Backend, Behavior},
    client::{connect, read_response, request},
    gateway::Gateway,
};

/// Sends `count` requests on one keep-alive connection; returns each answering backend.
fn backends_for(gw: SocketAddr, path: &str, extra: &str, count: usize) -> Vec<String> {
    let mut stream = connect(gw);
    (0..count)
        .map(|_| {
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes())
                .expect("send");
            let res = read_response(&mut stream, false);
            assert_eq!(res.status, 200, "{}", res.text());
            res.json()["backend"].as_str().unwrap_or("").to_owned()
        })
        .collect()
}

fn share(backends: &[String], name: &str) -> f64 {
    backends.iter().filter(|b| *b == name).count() as f64 / backends.len() as f64
}

/// A shadow that records every request it gets (head and body) and answers 200.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = record.clone();
                std::thread::spawn(move || Self::serve(stream, &record));
            }
        });
        Self { addr, seen }
    }

    fn serve(mut stream: TcpStream, record: &Mutex<Vec<Vec<u8>>>) {
        let mut data = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if data.len() >= end + 4 + length {
                    record
                        .lock()
                        .expect("record")
                        .push(data[..end + 4 + length].to_vec());
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                    return;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn requests(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("record")
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    fn wait_for(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.requests();
            if seen.len() >= count {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the shadow saw {} of {count}",
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn upstream(name: &str, addr: SocketAddr) -> String {
    format!("[[upstreams]]\nname = \"{name}\"\ntargets = [ {{ addr = \"{addr}\" }} ]\n\n")
}

fn gateway(upstreams: &str, routes: &str) -> Gateway {
    Gateway::start(&format!(
        "[gateway]\nworkers = 2\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n{upstreams}{routes}"
    ))
}

#[test]
fn weighted_split_and_flags_pick_their_upstreams() {
    let (stable, canary, beta) = (
        Backend::start("stable"),
        Backend::start("canary"),
        Backend::start("beta"),
    );
    let gw = gateway(
        &(upstream("stable", stable.addr)
            + &upstream("canary", canary.addr)
            + &upstream("beta", beta.addr)),
        "[[routes]]\nname = \"shop\"\nupstream = \"stable\"\nsplit = [\n  { upstream = \"beta\", header = \"x-beta\", value = \"on\" },\n  { upstream = \"beta\", cookie = \"beta\", value = \"1\" },\n  { upstream = \"canary\", weight = 20 },\n]\n",
    );
    let served = backends_for(gw.addr(), "/shop", "", 2000);
    let canary_share = share(&served, "canary");
    assert!(
        (0.16..=0.24).contains(&canary_share),
        "canary got {canary_share} of the traffic, configured 20%"
    );
    assert_eq!(share(&served, "beta"), 0.0, "flags only");
    assert!(
        backends_for(gw.addr(), "/shop", "X-Beta: on\r\n", 50)
            .iter()
            .all(|b| b == "beta")
    );
    assert!(
        backends_for(gw.addr(), "/shop", "Cookie: theme=dark; beta=1\r\n", 50)
            .iter()
            .all(|b| b == "beta")
    );
    // A flag with another value is ordinary traffic.
    assert!(
        !backends_for(gw.addr(), "/shop", "X-Beta: off\r\n", 50)
            .iter()
            .any(|b| b == "beta")
    );
}

#[test]
fn a_split_key_keeps_each_client_on_one_side() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let gw = gateway(
        &(upstream("stable", stable.addr) + &upstream("canary", canary.addr)),
        "[[routes]]\nname = \"sticky\"\nupstream = \"stable\"\nsplit_key = \"cookie:uid\"\nsplit = [ { upstream = \"canary\", weight = 50 } ]\n",
    );
    let mut sides = Vec::new();
    for client in 0..60 {
        let served = backends_for(
            gw.addr(),
            "/x",
            &format!("Cookie: uid=user-{client}\r\n"),
            6,
        );
        assert!(
            served.iter().all(|b| *b == served[0]),
            "client {client} moved: {served:?}"
        );
        sides.push(served[0].clone());
    }
    let canary_share = share(&sides, "canary");
    assert!(
        (0.25..=0.75).contains(&canary_share),
        "both sides get clients: {canary_share}"
    );
}

#[test]
fn mirrored_requests_reach_the_shadow_with_their_body() {
    let stable = Backend::start("stable");
    let shadow = Recorder::start();
    let gw = gateway(
        &(upstream("stable", stable.addr) + &upstream("shadow", shadow.addr)),
        "[[routes]]\nname = \"mirrored\"\nupstream = \"stable\"\nmirror = { upstream = \"shadow\", percent = 100, max_body = \"1KiB\" }\n",
    );
    for i in 0..20 {
        let res = request(
            gw.addr(),
            &format!(
                "POST /orders/{i} HTTP/1.1\r\nHost: shop\r\nContent-Length: 10\r\n\r\n0123456789"
            ),
        );
        assert_eq!(res.status, 200);
        assert_eq!(res.json()["backend"], "stable");
        assert_eq!(res.json()["body_len"], 10);
    }
    let seen = shadow.wait_for(20);
    for copy in &seen {
        assert!(copy.starts_with("POST /orders/"), "{copy}");
        assert!(copy.contains("x-gateway-mirror: 1\r\n"), "{copy}");
        assert!(copy.contains("host: shop\r\n"), "{copy}");
        assert!(copy.ends_with("\r\n\r\n0123456789"), "{copy}");
    }
    // A chunked body is mirrored with a length; one over max_body is not mirrored.
    let res = request(
        gw.addr(),
        "POST /chunked HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(res.status, 200);
    let seen = shadow.wait_for(21);
    assert!(
        seen.iter().any(|c| c.starts_with("POST /chunked")
            && c.contains("content-length: 5")
            && c.ends_with("hello")),
        "{seen:?}"
    );
    let big = "b".repeat(2000);
    let res = request(
        gw.addr(),
        &format!("POST /big HTTP/1.1\r\nHost: shop\r\nContent-Length: 2000\r\n\r\n{big}"),
    );
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["body_len"], 2000);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!shadow.requests().iter().any(|c| c.starts_with("POST /big")));
}

#[test]
fn a_sampled_mirror_copies_its_share_and_a_broken_shadow_changes_nothing() {
    let stable = Backend::start("stable");
    let shadow = Recorder::start();
    let hanging = Backend::with_behavior("hanging", Behavior::Hang);
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = closed.local_addr().expect("addr");
    drop(closed);
    let gw = gateway(
        &(upstream("stable", stable.addr)
            + &upstream("shadow", shadow.addr)
            + &upstream("hanging", hanging.addr)
            + &upstream("gone", closed_addr)),
        "[[routes]]\nname = \"half\"\npath_prefix = \"/half\"\nupstream = \"stable\"\nmirror = { upstream = \"shadow\", percent = 50 }\n\n\
         [[routes]]\nname = \"slow-shadow\"\npath_prefix = \"/slow\"\nupstream = \"stable\"\nmirror = { upstream = \"hanging\" }\n\n\
         [[routes]]\nname = \"no-shadow\"\npath_prefix = \"/gone\"\nupstream = \"stable\"\nmirror = { upstream = \"gone\" }\n",
    );
    backends_for(gw.addr(), "/half", "", 400);
    std::thread::sleep(Duration::from_millis(500));
    let copies = shadow.requests().len();
    assert!(
        (140..=260).contains(&copies),
        "{copies} of 400 mirrored at 50%"
    );
    for path in ["/slow", "/gone"] {
        let started = Instant::now();
        let served = backends_for(gw.addr(), path, "", 20);
        assert!(served.iter().all(|b| b == "stable"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}: the shadow never delays the real request ({:?})",
            started.elapsed()
        );
    }
}

/// Every value of `name` in the echoed request headers.
fn echoed(json: &serde_json::Value, name: &str) -> Vec<String> {
    json["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|pair| pair[1].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn header_transforms_apply_with_variables() {
    let stable = Backend::start("stable");
    let gw = gateway(
        &upstream("stable", stable.addr),
        r#"[[routes]]
name = "headers"
upstream = "stable"
request_headers = { set = { "x-route" = "${route}", "x-client" = "${client_ip} ${method} ${path}", "x-consumer-hint" = "${consumer}" }, add = { "x-tag" = "gw" }, remove = ["x-secret"] }
response_headers = { set = { "content-type" = "application/x-test" }, add = { "x-served-by" = "${route}/${request_id}" } }
"#,
    );
    let res = request(
        gw.addr(),
        "GET /a/b HTTP/1.1\r\nHost: a\r\nX-Route: forged\r\nX-Secret: s3cr3t\r\nX-Tag: client\r\nX-Request-Id: req-42\r\n\r\n",
    );
    assert_eq!(res.status, 200);
    let json = res.json();
    assert_eq!(echoed(&json, "x-route"), ["headers"], "set replaces");
    assert_eq!(echoed(&json, "x-client"), ["127.0.0.1 GET /a/b"]);
    assert!(echoed(&json, "x-secret").is_empty(), "removed");
    let mut tags = echoed(&json, "x-tag");
    tags.sort();
    assert_eq!(tags, ["client", "gw"], "add appends");
    assert!(
        echoed(&json, "x-consumer-hint").is_empty(),
        "a variable the request does not have leaves the header out"
    );
    let content_types: Vec<_> = res
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .collect();
    assert_eq!(content_types.len(), 1, "{:?}", res.headers);
    assert_eq!(res.header("content-type"), Some("application/x-test"));
    assert_eq!(res.header("x-served-by"), Some("headers/req-42"));
}

#[test]
fn bad_traffic_settings_are_refused_with_their_key() {
    let text = format!(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\n{}\
         [[routes]]\nname = \"r\"\nupstream = \"u\"\nsplit = [ {{ upstream = \"nope\", weight = 10 }}, {{ upstream = \"u\", weight = 70 }}, {{ upstream = \"u\", weight = 40 }}, {{ upstream = \"u\" }} ]\n\
         split_key = \"ip\"\nmirror = {{ upstream = \"missing\" }}\n\
         request_headers = {{ set = {{ \"content-length\" = \"1\", \"x-ok\" = \"${{nope}}\" }} }}\n",
        upstream("u", "127.0.0.1:9".parse().expect("addr"))
    );
    let Err(error) = Gateway::try_start(&text) else {
        panic!("the gateway accepted bad traffic settings");
    };
    for key in [
        "routes[0].split[0].upstream",
        "routes[0].split[3]",
        "routes[0].split:",
        "routes[0].split_key",
        "routes[0].mirror.upstream",
        "routes[0].request_headers.set",
        "routes[0].request_headers.set.x-ok",
    ] {
        assert!(error.contains(key), "{key} missing from: {error}");
    }
}

#[test]
fn versioned_routes_select_and_rewrite_the_version() {
    let (v1, v2, v3) = (
        Backend::start("v1"),
        Backend::start("v2"),
        Backend::start("v3"),
    );
    let gw = gateway(
        &(upstream("v1", v1.addr) + &upstream("v2", v2.addr) + &upstream("v3", v3.addr)),
        r#"[[routes]]
name = "users-v2"
path_prefix = "/users"
upstream = "v2"
version = { value = "2", from = "accept", to = "path" }

[[routes]]
name = "users-v3"
path_prefix = "/users"
upstream = "v3"
version = { value = "3", from = "header:api-version", to = "header:x-api-version" }

[[routes]]
name = "path-v3"
upstream = "v3"
version = { value = "3", from = "path", to = "header:x-api-version" }

[[routes]]
name = "users-default"
path_prefix = "/users"
upstream = "v1"
"#,
    );
    let get = |path: &str, extra: &str| {
        let res = request(
            gw.addr(),
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n"),
        );
        assert_eq!(res.status, 200, "{}", res.text());
        res.json()
    };
    for accept in [
        "Accept: application/vnd.acme.v2+json\r\n",
        "Accept: text/html, application/json; version=2\r\n",
    ] {
        let json = get("/users/7?x=1", accept);
        assert_eq!(json["backend"], "v2", "{accept}");
        assert_eq!(json["target"], "/v2/users/7?x=1");
    }
    let json = get("/users/7", "Api-Version: 3\r\n");
    assert_eq!(json["backend"], "v3");
    assert_eq!(json["target"], "/users/7");
    assert_eq!(echoed(&json, "x-api-version"), ["3"]);
    let json = get("/v3/users/7", "");
    assert_eq!(json["backend"], "v3");
    assert_eq!(json["target"], "/users/7", "the version moved to a header");
    assert_eq!(echoed(&json, "x-api-version"), ["3"]);
    // No version, or one no route serves: the unversioned route.
    assert_eq!(get("/users/7", "")["backend"], "v1");
    assert_eq!(
        get("/users/7", "Accept: application/json; version=9\r\n")["backend"],
        "v1"
    );
}
