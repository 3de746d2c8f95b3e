//! The edge policy enforced in userspace at accept (no XDP attached): same semantics as
//! the XDP program, checked from different loopback source addresses.

use std::{
    io::{Read, Write},
    net::IpAddr,
};

use gateway_tests::{Backend, Gateway, client};

fn gateway(backend: &Backend, xdp: &str) -> Gateway {
    Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n\n[xdp]\n{xdp}\n",
        backend.addr
    ))
}

/// Sends a GET from `source`; `Some(status)` when served, `None` when the gateway closed
/// the connection without answering.
fn status_from(source: &str, gw: &Gateway) -> Option<u16> {
    let source: IpAddr = source.parse().expect("source ip");
    let mut stream = client::connect_from(source, gw.addr())
        .expect("TCP connect (the kernel accepts before the policy runs)");
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .is_err()
    {
        return None;
    }
    let mut first = [0u8; 12];
    match stream.read(&mut first) {
        Ok(n) if n >= 12 => std::str::from_utf8(&first[9..12]).ok()?.parse().ok(),
        _ => None,
    }
}

#[test]
fn deny_list_refuses_listed_sources_only() {
    let backend = Backend::start("b");
    let gw = gateway(&backend, "deny = [\"127.0.0.2/32\", \"127.0.9.0/24\"]");
    assert!(
        gw.log().contains("edge policy enforced in userspace"),
        "{}",
        gw.log()
    );
    assert_eq!(status_from("127.0.0.1", &gw), Some(200));
    assert_eq!(
        status_from("127.0.0.2", &gw),
        None,
        "a denied source was served"
    );
    assert_eq!(
        status_from("127.0.9.77", &gw),
        None,
        "a source inside a denied prefix was served"
    );
    assert_eq!(status_from("127.0.0.3", &gw), Some(200));
    assert_eq!(backend.requests(), 2);
}

#[test]
fn allow_list_admits_only_listed_sources_and_deny_wins() {
    let backend = Backend::start("b");
    let gw = gateway(
        &backend,
        "allow = [\"127.0.0.0/29\"]\ndeny = [\"127.0.0.5/32\"]",
    );
    assert_eq!(status_from("127.0.0.3", &gw), Some(200));
    assert_eq!(
        status_from("127.0.0.5", &gw),
        None,
        "deny must win over allow"
    );
    assert_eq!(
        status_from("127.0.0.9", &gw),
        None,
        "a source outside the allow list was served"
    );
}

#[test]
fn syn_guard_limits_new_connections_per_source() {
    let backend = Backend::start("b");
    let gw = gateway(&backend, "[xdp.syn_guard]\nrate = 1\nburst = 3");
    let served: Vec<Option<u16>> = (0..5).map(|_| status_from("127.0.0.6", &gw)).collect();
    assert_eq!(
        served[..3],
        [Some(200); 3],
        "the burst must be served: {served:?}"
    );
    assert!(
        served[3..].iter().all(Option::is_none),
        "past the burst, connections must be refused: {served:?}"
    );
    assert_eq!(
        status_from("127.0.0.7", &gw),
        Some(200),
        "another source keeps its own budget"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        status_from("127.0.0.6", &gw),
        Some(200),
        "the bucket refills at the rate"
    );
}

#[test]
fn a_reload_can_add_a_deny_list_enforced_at_accept() {
    let backend = Backend::start("b");
    let text = |xdp: &str| {
        format!(
            "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n{xdp}",
            backend.addr
        )
    };
    let gw = Gateway::start(&text(""));
    assert_eq!(status_from("127.0.0.12", &gw), Some(200));
    std::fs::write(
        gw.config_path(),
        text("\n[xdp]\ndeny = [\"127.0.0.12/32\"]\n"),
    )
    .expect("rewrite config");
    assert!(gw.reload(), "{}", gw.log());
    assert_eq!(
        status_from("127.0.0.12", &gw),
        None,
        "the reloaded deny list must apply"
    );
    assert_eq!(status_from("127.0.0.13", &gw), Some(200));
}
