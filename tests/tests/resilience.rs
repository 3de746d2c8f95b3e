//! Resilience with real backends that fail on purpose: retries land on a healthy target
//! (on 503, on a reset, on a per-try timeout), requests whose body is gone are never
//! retried, the retry budget caps amplification, per-try and total timeouts answer 504
//! in time, the circuit breaker answers 503 beyond `max_connections` and `max_pending`,
//! and `Retry-After` reaches the client.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use gateway_tests::{
    backend::{Backend, Behavior},
    client::{connect, get, read_response, request},
    gateway::Gateway,
};

/// One upstream `app` over `targets` and one route `all` to it.
fn config(targets: &[SocketAddr], upstream_extra: &str, route_extra: &str) -> String {
    let targets = targets
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[gateway]\nworkers = 2\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"app\"\ntargets = [ {targets} ]\n{upstream_extra}\n\n\
         [[routes]]\nname = \"all\"\nupstream = \"app\"\n{route_extra}\n"
    )
}

fn unavailable(name: &str) -> Backend {
    Backend::raw(
        name,
        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n",
    )
}

#[test]
fn retries_on_503_land_on_the_healthy_target() {
    let steady = Backend::start("steady");
    let failing = unavailable("failing");
    let gw = Gateway::start(&config(
        &[steady.addr, failing.addr],
        "",
        "retry = { attempts = 3, on = [\"503\"], backoff = \"5ms\" }",
    ));
    for i in 0..40 {
        let res = get(gw.addr(), "a", &format!("/r/{i}"));
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
        assert_eq!(res.json()["backend"], "steady");
    }
    assert!(
        failing.requests() >= 10,
        "round robin sent about half the first tries to the failing target ({})",
        failing.requests()
    );
}

#[test]
fn a_reset_before_the_response_is_retried_and_a_sent_body_is_not() {
    let steady = Backend::start("steady");
    // Reads the request, then closes without a byte of response.
    let resetting = Backend::raw("resetting", b"");
    let gw = Gateway::start(&config(
        &[steady.addr, resetting.addr],
        "",
        "retry = { attempts = 2, on = [\"reset\"], non_idempotent = true }",
    ));
    for i in 0..20 {
        let res = get(gw.addr(), "a", &format!("/g/{i}"));
        assert_eq!(res.status, 200, "GET {i} is retried: {}", res.text());
    }
    // A POST whose body already went to the failed target cannot be resent: those that
    // hit the resetting target get the 502, the others pass.
    let statuses: Vec<u16> = (0..20)
        .map(|i| {
            request(
                gw.addr(),
                &format!("POST /p/{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"),
            )
            .status
        })
        .collect();
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 502)),
        "{statuses:?}"
    );
    // A bodiless POST may be resent when the route allows non-idempotent retries.
    for i in 0..10 {
        let res = request(
            gw.addr(),
            &format!("POST /e/{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
        );
        assert_eq!(res.status, 200, "bodiless POST {i}: {}", res.text());
    }
}

#[test]
fn post_is_not_retried_unless_the_route_says_so() {
    let failing = unavailable("failing");
    let gw = Gateway::start(&config(
        &[failing.addr],
        "",
        "retry = { attempts = 3, on = [\"503\"] }",
    ));
    let before = failing.requests();
    let res = request(
        gw.addr(),
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(res.status, 503);
    assert_eq!(failing.requests() - before, 1, "one try only");
    // The upstream's Retry-After reaches the client.
    assert_eq!(res.header("retry-after"), Some("7"));
    // GET is retried (three tries on the single target).
    let before = failing.requests();
    assert_eq!(get(gw.addr(), "a", "/x").status, 503);
    assert_eq!(failing.requests() - before, 3);
}

#[test]
fn the_retry_budget_caps_amplification() {
    let failing = unavailable("failing");
    // Five tries per request would mean 5x the load; the budget allows 10% more plus a
    // floor of 0.5 retries a second per worker (5 per 10 s window).
    let gw = Gateway::start(&config(
        &[failing.addr],
        "retry_budget = { ratio = 0.1, min_per_second = 0.5 }",
        "retry = { attempts = 5, on = [\"503\"] }",
    ));
    let requests = 100;
    for _ in 0..requests {
        assert_eq!(get(gw.addr(), "a", "/x").status, 503);
    }
    let hits = failing.requests();
    let ceiling = requests + requests / 10 + 2 * 5;
    assert!(
        hits > requests && hits <= ceiling,
        "{hits} upstream requests for {requests} client requests (ceiling {ceiling}, \
         unbudgeted {})",
        requests * 5
    );
}

#[test]
fn a_per_try_timeout_moves_the_request_to_another_target() {
    let steady = Backend::start("steady");
    let hanging = Backend::with_behavior("hanging", Behavior::Hang);
    let gw = Gateway::start(&config(
        &[steady.addr, hanging.addr],
        "",
        "per_try_timeout = \"200ms\"\ntimeout = \"2s\"\nretry = { attempts = 2, on = [\"timeout\"] }",
    ));
    for i in 0..10 {
        let started = Instant::now();
        let res = get(gw.addr(), "a", &format!("/t/{i}"));
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
    assert!(hanging.requests() >= 3, "some first tries hung");
}

#[test]
fn timeouts_answer_504_in_time() {
    let steady = Backend::start("slow");
    // Total timeout: the slow response is cut at 300 ms.
    let gw = Gateway::start(&config(&[steady.addr], "", "timeout = \"300ms\""));
    let started = Instant::now();
    let res = get(gw.addr(), "a", "/delay/3000");
    assert_eq!(res.status, 504, "{}", res.text());
    assert_eq!(res.json()["code"], "upstream_timeout");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );
    assert_eq!(get(gw.addr(), "a", "/delay/10").status, 200);
    drop(gw);

    // Per-try timeout, retried once on the same single target, then 504 within the total.
    let gw = Gateway::start(&config(
        &[steady.addr],
        "",
        "per_try_timeout = \"150ms\"\ntimeout = \"1s\"\nretry = { attempts = 2, on = [\"timeout\"], backoff = \"1ms\" }",
    ));
    let before = steady.requests();
    let started = Instant::now();
    let res = get(gw.addr(), "a", "/delay/3000");
    assert_eq!(res.status, 504);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_millis(1500),
        "two tries of 150 ms: {waited:?}"
    );
    // The backend counts a request once it has read it; give the second one a moment.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(steady.requests() - before, 2);
}

/// Starts `n` requests for `path` at once; returns their responses.
fn concurrent(addr: SocketAddr, path: &str, n: usize) -> Vec<gateway_tests::client::Response> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_owned();
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                std::io::Write::write_all(
                    &mut stream,
                    format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
                )
                .expect("send");
                read_response(&mut stream, false)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect()
}

#[test]
fn the_circuit_breaker_refuses_beyond_max_connections() {
    let slow = Backend::start("slow");
    let token = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token.path(), "breaker-token").expect("token");
    let text = config(&[slow.addr], "max_connections = 2\nmax_pending = 0", "").replace(
        "workers = 2",
        &format!(
            "workers = 2\nadmin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"",
            token.path().display()
        ),
    );
    let gw = Gateway::start(&text);
    let responses = concurrent(gw.addr(), "/delay/600", 6);
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = responses.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok, 2, "two connections serve");
    assert_eq!(refused.len(), 4, "the rest is refused at once");
    for r in refused {
        assert_eq!(r.json()["code"], "upstream_overloaded");
    }
    assert!(slow.connections() <= 2);
    let upstreams = request(
        gw.admin.expect("admin"),
        "GET /upstreams HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer breaker-token\r\n\r\n",
    )
    .json();
    let breaker = &upstreams["upstreams"][0]["max_connections"];
    assert_eq!(breaker["limit"], 2, "{upstreams}");
    assert_eq!(breaker["pending"], 0, "{upstreams}");
    // Once they are done, requests pass again on either worker: the two connections
    // now idle in one worker's pool are closed for a request on the other.
    for _ in 0..8 {
        let res = get(gw.addr(), "a", "/x");
        assert_eq!(res.status, 200, "{}", res.text());
    }
}

#[test]
fn pending_requests_wait_for_a_connection_place() {
    let slow = Backend::start("slow");
    let gw = Gateway::start(&config(
        &[slow.addr],
        "max_connections = 1\nmax_pending = 8\nconnect_timeout = \"3s\"",
        "",
    ));
    // Four requests, one connection: they queue and are served one after another.
    let started = Instant::now();
    let responses = concurrent(gw.addr(), "/delay/150", 4);
    assert!(
        responses.iter().all(|r| r.status == 200),
        "{:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "served one at a time"
    );
    // A queue of one: the third concurrent request is refused.
    drop(gw);
    let gw = Gateway::start(&config(
        &[slow.addr],
        "max_connections = 1\nmax_pending = 1\nconnect_timeout = \"3s\"",
        "",
    ));
    let statuses: Vec<u16> = concurrent(gw.addr(), "/delay/400", 3)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        1,
        "{statuses:?}"
    );
}

#[test]
fn bad_retry_settings_are_refused_with_their_key() {
    let text = config(
        &["127.0.0.1:9".parse().expect("addr")],
        "max_connections = 0\nretry_budget = { ratio = -1.0 }",
        "timeout = \"1s\"\nper_try_timeout = \"2s\"\nretry = { attempts = 0, on = [\"sometimes\"] }",
    );
    let Err(error) = Gateway::try_start(&text) else {
        panic!("the gateway accepted bad retry settings");
    };
    for key in [
        "upstreams[0].max_connections",
        "upstreams[0].retry_budget.ratio",
        "routes[0].per_try_timeout",
        "routes[0].retry.attempts",
        "routes[0].retry.on[0]",
    ] {
        assert!(error.contains(key), "{key} missing from: {error}");
    }
}
