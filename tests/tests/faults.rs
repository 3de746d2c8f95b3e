//! Backends that fail on purpose, through a fault-injecting proxy: each fault maps to its
//! documented answer within the configured timeouts (refused, closed early or garbage:
//! 502; silent: 504; broken after the head: the client connection closes), no worker
//! wedges while faults hang, healthy routes keep serving, and the faulty route recovers
//! when the backend does.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use gateway_tests::{
    backend::Backend,
    client::{connect, get},
    faults::{Fault, FaultProxy},
    gateway::Gateway,
};

fn gateway(faulty: SocketAddr, healthy: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "[gateway]\nworkers = 2\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"faulty\"\ntargets = [ {{ addr = \"{faulty}\" }} ]\n\
         connect_timeout = \"500ms\"\nread_timeout = \"1s\"\nwrite_timeout = \"1s\"\n\n\
         [[upstreams]]\nname = \"healthy\"\ntargets = [ {{ addr = \"{healthy}\" }} ]\n\n\
         [[routes]]\nname = \"faulty\"\npath_prefix = \"/f\"\nstrip_prefix = true\nupstream = \"faulty\"\n\n\
         [[routes]]\nname = \"healthy\"\nupstream = \"healthy\"\n"
    ))
}

/// Sends a GET and reads until the gateway closes or `wait` passes; returns the bytes
/// and how long it took.
fn exchange(gw: &Gateway, path: &str, wait: Duration) -> (Vec<u8>, Duration) {
    let mut stream = connect(gw.addr());
    stream.set_read_timeout(Some(wait)).expect("timeout");
    let started = Instant::now();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return (out, started.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn each_fault_gets_its_documented_answer_in_time() {
    let backend = Backend::start("backend");
    let proxy = FaultProxy::start(backend.addr, Fault::None);
    let gw = gateway(proxy.addr, backend.addr);
    for (fault, status, code, at_most) in [
        (Fault::Refuse, 502, "upstream_connection_failed", 500),
        (Fault::CloseEarly, 502, "upstream_connection_failed", 500),
        (Fault::Garbage, 502, "upstream_invalid_response", 500),
        (Fault::HangBeforeHeaders, 504, "upstream_timeout", 1800),
        (Fault::Trickle(1500), 504, "upstream_timeout", 1800),
    ] {
        proxy.set(fault);
        let started = Instant::now();
        let res = get(gw.addr(), "a", "/f/x");
        let took = started.elapsed();
        assert_eq!(res.status, status, "{fault:?}: {}", res.text());
        assert_eq!(res.json()["code"], code, "{fault:?}");
        assert!(
            took < Duration::from_millis(at_most),
            "{fault:?} answered after {took:?}"
        );
    }
    // A slow but steady backend is slow, not broken.
    proxy.set(Fault::Trickle(2));
    let res = get(gw.addr(), "a", "/f/bytes/200");
    assert_eq!(res.status, 200);
    assert_eq!(res.body.len(), 200);
    // Broken after the head: the status is already out, so the connection closes with
    // the body cut short, within the read timeout.
    for (fault, wait) in [
        (Fault::ResetMidResponse, 1000),
        (Fault::HangAfterHeaders, 2500),
    ] {
        proxy.set(fault);
        let (bytes, took) = exchange(&gw, "/f/bytes/20000", Duration::from_secs(5));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("HTTP/1.1 200"), "{fault:?}: {text:.200}");
        assert!(bytes.len() < 20000, "{fault:?}: the body is cut short");
        assert!(
            took < Duration::from_millis(wait),
            "{fault:?}: closed after {took:?}"
        );
    }
    // The backend recovers: so does the route, with no wedged pool left behind.
    proxy.set(Fault::None);
    for _ in 0..10 {
        assert_eq!(get(gw.addr(), "a", "/f/x").status, 200);
    }
}

#[test]
fn hanging_backends_never_wedge_a_worker() {
    let backend = Backend::start("backend");
    let proxy = FaultProxy::start(backend.addr, Fault::HangBeforeHeaders);
    let gw = gateway(proxy.addr, backend.addr);
    let addr = gw.addr();
    let stuck: Vec<_> = (0..40)
        .map(|_| std::thread::spawn(move || gateway_tests::client::get(addr, "a", "/f/x").status))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Both workers hold hanging requests; healthy requests on either are still prompt.
    for _ in 0..40 {
        let started = Instant::now();
        let res = get(gw.addr(), "a", "/ok");
        assert_eq!(res.status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "a healthy request waited {:?}",
            started.elapsed()
        );
    }
    for status in stuck {
        assert_eq!(status.join().expect("client"), 504);
    }
}
