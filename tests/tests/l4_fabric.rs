//! L4 balancing end to end, on a fabric of namespaces built by the test: a client, two
//! gateways running the real `gateway` binary with its XDP program in driver mode, and
//! three backends that decapsulate (the gateway's `l4-decap` XDP program: this kernel
//! has no IPIP device) with the VIP on their loopback and answer the client directly.
//! Root only.
//!
//! Client source ports are chosen, not ephemeral, so every flow's 5-tuple (and so its
//! backend) is the same on every run: the figures below are deterministic.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    Gateway,
    fabric::{Fabric, ip},
    netns::{run_in_namespace, xdp_object_or_skip},
};
use serde_json::Value;

const PREFIX: &str = "l4t";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
const PIN_PATH: &str = "/sys/fs/bpf/gateway-test-l4";
const TOKEN_FILE: &str = "/tmp/gateway-test-l4.token";
const TOKEN: &str = "l4-fabric";

fn ns(member: &str) -> String {
    format!("{PREFIX}{member}")
}

fn gateway_config(interface: &str, admin_port: u16, with_third: bool) -> String {
    let third = if with_third {
        r#", { addr = "10.77.0.13", weight = 1 }"#
    } else {
        ""
    };
    format!(
        r#"
[gateway]
workers = 1
admin = "127.0.0.1:{admin_port}"
admin_token_file = "{TOKEN_FILE}"

[[listeners]]
name = "local"
bind = "127.0.0.1:18080"

[xdp]
interface = "{interface}"
pin_path = "{PIN_PATH}"

[[l4_services]]
name = "web"
vip = "{VIP}"
port = 80
targets = [ {{ addr = "10.77.0.11", weight = 1 }}, {{ addr = "10.77.0.12", weight = 2 }}{third} ]
health_check = {{ port = 8081, interval = "100ms", timeout = "200ms", healthy = 1, unhealthy = 2 }}

# An L7 upstream naming a probed target shares the L4 checks' verdict.
[[upstreams]]
name = "b2-health"
targets = [ {{ addr = "10.77.0.12:8081" }} ]
"#
    )
}

/// A backend: the decap program on its interface (attached by `gateway decap attach`,
/// run inside the namespace), a service on :80 answering each line with its name, and a
/// health port on :8081 that can be switched off.
struct BackendHost {
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackendHost {
    fn start(namespace: &str, name: &'static str) -> Self {
        let healthy = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let interface = format!("{namespace}0");
        let (h, s) = (healthy.clone(), stop.clone());
        let thread = run_in_namespace(namespace, move || {
            // A child of this thread runs in its namespace (and in the host's bpffs).
            let out = std::process::Command::new(gateway_tests::gateway::gateway_bin())
                .args([
                    "decap",
                    "attach",
                    "--interface",
                    &interface,
                    "--pin-path",
                    PIN_PATH,
                ])
                .output()
                .expect("gateway decap attach");
            assert!(out.status.success(), "gateway decap attach: {out:?}");
            let service = listener(80);
            let mut health = Some(listener(8081));
            ready_tx.send(()).expect("ready");
            while !s.load(Relaxed) {
                if let Ok((stream, _)) = service.accept() {
                    std::thread::spawn(move || answer(stream, name));
                }
                // Switched off, the port is closed: probes are refused.
                match (&health, h.load(Relaxed)) {
                    (Some(port), true) => drop(port.accept()),
                    (Some(_), false) => health = None,
                    (None, true) => health = Some(listener(8081)),
                    (None, false) => {}
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let out = std::process::Command::new(gateway_tests::gateway::gateway_bin())
                .args([
                    "decap",
                    "detach",
                    "--interface",
                    &interface,
                    "--pin-path",
                    PIN_PATH,
                ])
                .output()
                .expect("gateway decap detach");
            assert!(out.status.success(), "gateway decap detach: {out:?}");
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the backend did not start");
        Self {
            healthy,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BackendHost {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn listener(port: u16) -> TcpListener {
    let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind a backend port");
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

fn answer(stream: TcpStream, name: &str) {
    let _ = stream.set_nonblocking(false);
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

/// A client connection to the VIP from a chosen source port.
struct Flow {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Flow {
    /// Which backend answers a line sent on this connection.
    fn ask(&mut self) -> String {
        self.stream.write_all(b"who\n").expect("send on the flow");
        let mut name = String::new();
        self.reader.read_line(&mut name).expect("read the answer");
        name.trim().to_owned()
    }

    /// Closes with a reset: the source port is free again at once (no TIME_WAIT).
    fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

fn connect(port: u16) -> Flow {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("reuseaddr");
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)), port);
    socket.bind(&local.into()).expect("bind the client port");
    socket
        .connect_timeout(
            &SocketAddr::new(IpAddr::V4(VIP), 80).into(),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("connect from port {port} to the VIP: {e}"));
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let reader = BufReader::new(stream.try_clone().expect("clone"));
    Flow { stream, reader }
}

/// Opens one flow per port (from the client namespace), asks each which backend it
/// reached, and resets it; the backends in port order.
fn survey(ports: std::ops::Range<u16>) -> Vec<String> {
    run_in_namespace(&ns("c"), move || {
        ports
            .map(|port| {
                let mut flow = connect(port);
                let name = flow.ask();
                flow.reset();
                name
            })
            .collect()
    })
    .join()
    .expect("the client thread panicked")
}

/// [`survey`] with the client's route to the VIP through `gateway`.
fn survey_via(gateway: &str, ports: std::ops::Range<u16>) -> Vec<String> {
    let vip = format!("{VIP}/32");
    ip(&["-n", &ns("c"), "route", "replace", &vip, "via", gateway]).unwrap();
    survey(ports)
}

fn share(names: &[String], name: &str) -> f64 {
    names.iter().filter(|n| *n == name).count() as f64 / names.len() as f64
}

/// `GET path` on a gateway's admin API, from inside its namespace.
fn admin_get(namespace: &str, port: u16, path: &'static str) -> String {
    run_in_namespace(namespace, move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("admin API");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
    })
    .join()
    .expect("admin thread")
}

/// `gateway l4 list` against a gateway's admin API, run inside its namespace.
fn l4_view(namespace: &str, port: u16) -> Value {
    let admin = format!("http://127.0.0.1:{port}");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", namespace])
        .arg(gateway_tests::gateway::gateway_bin())
        .args(["l4", "--admin", &admin, "--token-file", TOKEN_FILE, "list"])
        .output()
        .expect("gateway l4 list");
    assert!(out.status.success(), "gateway l4 list: {out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON from gateway l4 list")
}

fn wait_for_health(namespace: &str, port: u16, target: &str, healthy: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = l4_view(namespace, port);
        let state = view["services"][0]["targets"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["addr"] == target))
            .map(|t| t["healthy"] == healthy);
        if state == Some(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{target} never became healthy={healthy}: {view}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn vip_flows_are_balanced_by_weight_survive_changes_and_agree_across_gateways() {
    let Some(object) = xdp_object_or_skip("vip_flows_are_balanced_by_weight") else {
        return;
    };
    let _pins = RemoveOnDrop(PIN_PATH);
    let _token = RemoveOnDrop(TOKEN_FILE);
    std::fs::write(TOKEN_FILE, TOKEN).expect("token file");
    let _ = std::fs::remove_dir_all(PIN_PATH);
    let mut fabric = Fabric::create(PREFIX);
    fabric.join(&ns("c"), 2);
    let g_if = fabric.join(&ns("g"), 1);
    let h_if = fabric.join(&ns("h"), 3);
    for gw in [ns("g"), ns("h")] {
        fabric.accept_xdp_frames_from(&gw, &object, gateway_common::XDP_PROGRAM);
        // Frames the kernel forwards (before a neighbour is known) go back out.
        fabric.sysctl(&gw, "net.ipv4.ip_forward=1");
        fabric.sysctl(&gw, "net.ipv4.conf.all.send_redirects=0");
    }
    let mut backends = Vec::new();
    for (i, name) in ["b1", "b2", "b3"].into_iter().enumerate() {
        let namespace = ns(name);
        fabric.join(&namespace, 11 + i as u8);
        ip(&[
            "-n",
            &namespace,
            "addr",
            "add",
            &format!("{VIP}/32"),
            "dev",
            "lo",
        ])
        .unwrap();
        fabric.sysctl(&namespace, "net.ipv4.conf.all.arp_ignore=1");
        backends.push(BackendHost::start(&namespace, name));
    }
    ip(&[
        "-n",
        &ns("c"),
        "route",
        "add",
        &format!("{VIP}/32"),
        "via",
        "10.77.0.1",
    ])
    .unwrap();

    let gw = Gateway::start_in_namespace(&ns("g"), &gateway_config(&g_if, 9911, false));
    gw.wait_for_log("L4 service in XDP");

    // Weighted spread (1:2) over 300 flows.
    let first = survey(20_000..20_300);
    let (b1, b2) = (share(&first, "b1"), share(&first, "b2"));
    assert!(
        (b1 - 1.0 / 3.0).abs() < 0.10 && (b2 - 2.0 / 3.0).abs() < 0.10,
        "shares {b1:.3} / {b2:.3}"
    );
    // The program forwarded them itself (XDP_TX), not only through the kernel.
    let metrics = admin_get(&ns("g"), 9911, "/metrics");
    assert!(
        metric(
            &metrics,
            "gateway_xdp_packets_total{verdict=\"l4_forwarded\"}"
        ) > 300,
        "{metrics}"
    );
    let view = l4_view(&ns("g"), 9911);
    let flows: u64 = view["services"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["new_flows"].as_u64().unwrap())
        .sum();
    assert!(flows >= 300, "{view}");

    // Open connections survive a third target joining (reload).
    let mut held = run_in_namespace(&ns("c"), || {
        (30_000..30_020)
            .map(|port| {
                let mut flow = connect(port);
                let name = flow.ask();
                (flow, name)
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    std::fs::write(gw.config_path(), gateway_config(&g_if, 9911, true)).unwrap();
    assert!(gw.reload(), "reload refused:\n{}", gw.log());
    for (flow, name) in &mut held {
        assert_eq!(
            &flow.ask(),
            name,
            "an open connection moved when a target was added"
        );
    }
    for (flow, _) in held {
        flow.reset();
    }

    // With three targets (1:2:1), then the middle one fails its health checks: its
    // flows move, every other flow stays where it was.
    let before = survey(21_000..21_300);
    let b3 = share(&before, "b3");
    assert!((b3 - 0.25).abs() < 0.10, "b3's share {b3:.3}");
    backends[1].healthy.store(false, Relaxed);
    wait_for_health(&ns("g"), 9911, "10.77.0.12", false);
    let upstreams: Value =
        serde_json::from_str(&admin_get(&ns("g"), 9911, "/upstreams")).expect("JSON");
    assert!(
        upstreams.to_string().contains(r#""state":"down""#),
        "the L7 upstream at the probed address did not share the verdict: {upstreams}"
    );
    let after = survey(21_000..21_300);
    for (i, (was, now)) in before.iter().zip(&after).enumerate() {
        if was == "b2" {
            assert_ne!(now, "b2", "flow {i} stayed on the failed target");
        } else {
            assert_eq!(now, was, "flow {i} of a healthy target moved");
        }
    }
    backends[1].healthy.store(true, Relaxed);
    wait_for_health(&ns("g"), 9911, "10.77.0.12", true);

    // A second gateway with the same config sends every flow where the first does.
    let second = Gateway::start_in_namespace(&ns("h"), &gateway_config(&h_if, 9912, true));
    second.wait_for_log("L4 service in XDP");
    let via_second = survey_via("10.77.0.3", 22_000..22_100);
    let via_first = survey_via("10.77.0.1", 22_000..22_100);
    assert_eq!(
        via_first, via_second,
        "the two gateways disagree on some flows"
    );
    let second_view = l4_view(&ns("h"), 9912);
    assert!(
        second_view["services"][0]["new_flows"].as_u64().unwrap() >= 100,
        "{second_view}"
    );
}

/// Removes the gateways' pinned maps and links however the test ends.
struct RemoveOnDrop(&'static str);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
        let _ = std::fs::remove_file(self.0);
    }
}
