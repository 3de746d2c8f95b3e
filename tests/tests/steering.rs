//! Worker steering by the `sk_reuseport` program, against the real binary with two
//! workers: every connection from one client address lands on the worker that address
//! hashes to (the gateway names the worker in `x-gateway-worker` when asked to), the
//! addresses spread over both workers, and a worker holding far more connections than
//! the other is skipped. Needs the eBPF objects (root, `cargo xtask test`).

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use gateway_common::client_worker;
use gateway_tests::{Gateway, backend::Backend, netns::xdp_object_or_skip};

fn config(backend: &Backend, steering: &str) -> String {
    format!(
        r#"
[gateway]
workers = 2
worker_steering = "{steering}"
debug_worker_header = true

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{}" }} ]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "app"
"#,
        backend.addr
    )
}

fn source(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, host)
}

/// A connection from `from` to the gateway.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
        .expect("bind the source address");
    socket.connect(&to.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
}

/// Which worker answers a request on `stream` (the connection is closed after).
fn worker_of(mut stream: TcpStream) -> usize {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .expect("send");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .lines()
        .find_map(|l| l.strip_prefix("x-gateway-worker: "))
        .unwrap_or_else(|| panic!("no worker header in {response:?}"))
        .trim()
        .parse()
        .expect("a worker index")
}

fn mapped(addr: Ipv4Addr) -> [u8; 16] {
    addr.to_ipv6_mapped().octets()
}

#[test]
fn connections_are_steered_by_client_address_and_away_from_a_busy_worker() {
    if xdp_object_or_skip("connections_are_steered_by_client_address").is_none() {
        return;
    }
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(&backend, "client_ip"));
    gw.wait_for_log("worker steering: by client address");
    let addr = gw.addr();

    // Every address sticks to the worker it hashes to, three connections out of three.
    let mut per_worker = [0usize; 2];
    for host in 10..50 {
        let expected = client_worker(&mapped(source(host)), 2) as usize;
        for _ in 0..3 {
            let worker = worker_of(connect_from(source(host), addr));
            assert_eq!(worker, expected, "127.0.0.{host} reached worker {worker}");
        }
        per_worker[expected] += 1;
    }
    assert!(
        per_worker.iter().all(|&n| n >= 10),
        "40 addresses spread {per_worker:?}"
    );

    // Hold many idle connections on worker 0 (from addresses that hash there): a new
    // client of worker 0 is sent to worker 1 until they close.
    let busy: Vec<u8> = (60..200)
        .filter(|&h| client_worker(&mapped(source(h)), 2) == 0)
        .collect();
    let idle: Vec<TcpStream> = busy[..30]
        .iter()
        .map(|&h| connect_from(source(h), addr))
        .collect();
    let newcomer = busy[31];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // The loads reach the program every 50 ms.
        std::thread::sleep(Duration::from_millis(100));
        if worker_of(connect_from(source(newcomer), addr)) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a client of the busy worker was never diverted"
        );
    }
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if worker_of(connect_from(source(newcomer), addr)) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client never returned to its worker"
        );
    }
}

#[test]
fn the_kernel_hash_stays_when_asked_for() {
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(&backend, "kernel"));
    gw.wait_for_log("worker steering: the kernel's reuseport hash");
    // Served by both workers whatever the client: the kernel hashes ports too.
    let mut seen = [false; 2];
    for _ in 0..64 {
        seen[worker_of(connect_from(source(10), gw.addr()))] = true;
        if seen == [true, true] {
            return;
        }
    }
    panic!("64 connections from one address all reached one worker: {seen:?}");
}
