//! The XDP program: packet tables through `BPF_PROG_TEST_RUN` (counters checked per
//! slot), and attach/detach by `gateway run` on a veth in a namespace. Root only.

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use gateway::xdp::{PinFolder, XdpProgram};
use gateway_common::{PacketCounter, ProtoCounter};
use gateway_tests::{
    Gateway,
    netns::{VethNamespace, xdp_object_or_skip},
};

const XDP_PASS: u32 = 2;

fn eth(ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn vlan(mut frame: Vec<u8>, tpid: u16, inner: u16) -> Vec<u8> {
    frame.truncate(12);
    frame.extend_from_slice(&tpid.to_be_bytes());
    frame.extend_from_slice(&[0x00, 0x64]);
    frame.extend_from_slice(&inner.to_be_bytes());
    frame
}

fn ipv4(protocol: u8, options: usize, fragment_offset: u16) -> Vec<u8> {
    let ihl = 5 + options / 4;
    let mut header = vec![0x40 | ihl as u8, 0, 0, 0, 0, 0];
    header.extend_from_slice(&fragment_offset.to_be_bytes());
    header.extend_from_slice(&[64, protocol, 0, 0, 198, 51, 100, 1, 10, 0, 0, 1]);
    header.resize(ihl * 4, 1);
    header
}

fn ipv6(next_header: u8) -> Vec<u8> {
    let mut header = vec![0x60, 0, 0, 0, 0, 20, next_header, 64];
    header.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8].repeat(4));
    header.extend_from_slice(&[0xfd, 0, 0, 0].repeat(4));
    header
}

fn tcp() -> Vec<u8> {
    let mut header = vec![
        0xc3, 0x50, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    header.extend_from_slice(b"payload");
    header
}

fn udp() -> Vec<u8> {
    vec![0x30, 0x39, 0x00, 0x35, 0, 16, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn totals(program: &XdpProgram) -> Vec<(ProtoCounter, PacketCounter)> {
    program.protocol_counters().expect("read counters")
}

#[test]
fn packet_table_through_bpf_prog_test_run() {
    let Some(object) = xdp_object_or_skip("packet_table_through_bpf_prog_test_run") else {
        return;
    };
    let mut program = XdpProgram::load_from(&object).expect("load the XDP object");
    use ProtoCounter::*;
    let full_v4_tcp = cat(&[eth(0x0800), ipv4(6, 0, 0), tcp()]);
    let cases: Vec<(&str, Vec<u8>, Vec<ProtoCounter>)> = vec![
        ("IPv4 TCP", full_v4_tcp.clone(), vec![Ipv4, Tcp]),
        (
            "IPv4 UDP",
            cat(&[eth(0x0800), ipv4(17, 0, 0), udp()]),
            vec![Ipv4, Udp],
        ),
        (
            "IPv4 ICMP",
            cat(&[eth(0x0800), ipv4(1, 0, 0), vec![8, 0, 0, 0]]),
            vec![Ipv4, Icmp],
        ),
        (
            "IPv4 GRE",
            cat(&[eth(0x0800), ipv4(47, 0, 0), vec![0; 8]]),
            vec![Ipv4, OtherL4],
        ),
        (
            "IPv4 with options, TCP",
            cat(&[eth(0x0800), ipv4(6, 8, 0), tcp()]),
            vec![Ipv4, Tcp],
        ),
        (
            "IPv4 non-first fragment",
            cat(&[eth(0x0800), ipv4(6, 0, 0x00b9), vec![0; 8]]),
            vec![Ipv4, OtherL4],
        ),
        (
            "IPv6 TCP",
            cat(&[eth(0x86dd), ipv6(6), tcp()]),
            vec![Ipv6, Tcp],
        ),
        (
            "IPv6 UDP",
            cat(&[eth(0x86dd), ipv6(17), udp()]),
            vec![Ipv6, Udp],
        ),
        (
            "IPv6 ICMPv6",
            cat(&[eth(0x86dd), ipv6(58), vec![128, 0, 0, 0]]),
            vec![Ipv6, Icmp],
        ),
        (
            "802.1Q IPv4 TCP",
            cat(&[vlan(eth(0), 0x8100, 0x0800), ipv4(6, 0, 0), tcp()]),
            vec![Vlan, Ipv4, Tcp],
        ),
        (
            "802.1ad+802.1Q IPv6 UDP",
            cat(&[
                vlan(eth(0), 0x88a8, 0x8100),
                vec![0x00, 0x0a, 0x86, 0xdd],
                ipv6(17),
                udp(),
            ]),
            vec![Vlan, Ipv6, Udp],
        ),
        ("ARP", cat(&[eth(0x0806), vec![0; 28]]), vec![NonIp]),
        (
            "truncated IPv4 header",
            cat(&[eth(0x0800), vec![0x45, 0, 0, 20, 0, 0]]),
            vec![Malformed],
        ),
        (
            "IPv4 IHL below 5",
            cat(&[
                eth(0x0800),
                {
                    let mut h = ipv4(6, 0, 0);
                    h[0] = 0x44;
                    h
                },
                tcp(),
            ]),
            vec![Malformed],
        ),
        (
            "IPv4 options past the end",
            cat(&[eth(0x0800), {
                let mut h = ipv4(6, 0, 0);
                h[0] = 0x4f;
                h
            }]),
            vec![Malformed],
        ),
        (
            "truncated TCP header",
            cat(&[eth(0x0800), ipv4(6, 0, 0), vec![0; 10]]),
            vec![Malformed],
        ),
        (
            "truncated UDP header",
            cat(&[eth(0x86dd), ipv6(17), vec![0; 4]]),
            vec![Malformed],
        ),
        (
            "truncated IPv6 header",
            cat(&[eth(0x86dd), ipv6(6)[..20].to_vec()]),
            vec![Malformed],
        ),
        (
            "VLAN tag cut short",
            cat(&[eth(0x8100), vec![0x00]]),
            vec![Malformed],
        ),
        ("bare Ethernet header", eth(0x0800), vec![Malformed]),
    ];
    for (name, packet, expected) in cases {
        let before = totals(&program);
        let mut out = vec![0u8; packet.len() + 256];
        let result = program
            .program_mut()
            .expect("program")
            .test_run(TestRunOptions {
                data_in: Some(&packet),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("{name}: test run failed: {e}"));
        assert_eq!(result.return_value, XDP_PASS, "{name}: verdict");
        assert_eq!(
            &out[..result.data_size_out as usize],
            &packet[..],
            "{name}: the packet must pass unchanged"
        );
        let after = totals(&program);
        for ((slot, b), (_, a)) in before.iter().zip(after.iter()) {
            let want = u64::from(expected.contains(slot));
            assert_eq!(
                a.packets - b.packets,
                want,
                "{name}: counter {}",
                slot.name()
            );
            assert_eq!(
                a.bytes - b.bytes,
                want * packet.len() as u64,
                "{name}: bytes of {}",
                slot.name()
            );
        }
    }

    // Per-packet cost, for the record (the bench reports it; no assertion on time).
    let result = program
        .program_mut()
        .expect("program")
        .test_run(TestRunOptions {
            data_in: Some(&full_v4_tcp),
            repeat: 100_000,
            ..TestRunOptions::default()
        })
        .expect("repeated run");
    eprintln!(
        "XDP parse+count: {:?} per packet (BPF_PROG_TEST_RUN, 100k repeats)",
        result.duration
    );
}

#[test]
fn gateway_attaches_in_driver_mode_and_detaches_on_exit() {
    if xdp_object_or_skip("gateway_attaches_in_driver_mode_and_detaches_on_exit").is_none() {
        return;
    }
    let tag = format!("{}", std::process::id() % 100_000);
    let veth = VethNamespace::create(&tag);
    let mut gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"127.0.0.1:9\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n\n[xdp]\ninterface = \"{}\"\nmode = \"driver\"\n",
        veth.outer
    ));
    assert!(gw.log().contains("XDP program attached"), "{}", gw.log());
    let details = veth.outer_link_details();
    assert!(
        details.contains("xdp"),
        "no XDP program on {}: {details}",
        veth.outer
    );
    assert!(
        !details.contains("xdpgeneric"),
        "driver mode expected: {details}"
    );
    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits");
    assert!(status.success(), "{}", gw.log());
    let details = veth.outer_link_details();
    assert!(
        !details.contains("prog/xdp"),
        "XDP still attached after exit: {details}"
    );
}

#[test]
fn a_missing_interface_is_a_startup_error() {
    if xdp_object_or_skip("a_missing_interface_is_a_startup_error").is_none() {
        return;
    }
    let error = Gateway::try_start(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ { addr = \"127.0.0.1:9\" } ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n\n[xdp]\ninterface = \"gwnosuchif0\"\n",
    )
    .err()
    .expect("the gateway must refuse to start");
    assert!(error.contains("gwnosuchif0"), "{error}");
}

/// A restarted gateway reopens every pinned map as it is; a pinned map whose flags differ
/// from the object's (the kernel fixes them at creation) is dropped, not reused.
#[test]
fn pinned_maps_are_reopened_whole_and_a_changed_one_is_dropped() {
    let Some(object) =
        xdp_object_or_skip("pinned_maps_are_reopened_whole_and_a_changed_one_is_dropped")
    else {
        return;
    };
    let root = std::path::PathBuf::from(format!(
        "{}-pins-test-{}",
        gateway_tests::netns::DEFAULT_PIN_PATH,
        std::process::id()
    ));
    let pins = PinFolder::new(&root, "lo");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(root.clone());
    drop(XdpProgram::load_pinned(&pins).expect("first load pins the maps"));
    let kept = pins.drop_incompatible_maps(&object).expect("compare pins");
    assert!(kept.is_empty(), "maps dropped on a plain restart: {kept:?}");
    drop(XdpProgram::load_pinned(&pins).expect("second load reopens them"));

    // The IPv4 flow table pinned again with the same layout but per-CPU LRU lists
    // (BPF_F_NO_COMMON_LRU): only its flags differ.
    let flows = pins.map(gateway_common::L4_FLOWS_V4_MAP);
    std::fs::remove_file(&flows).expect("unpin the flow table");
    let status = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&flows)
        .args(["type", "lru_hash", "key", "16", "value", "8", "entries"])
        .arg(gateway_common::MAX_L4_FLOWS.to_string())
        .args(["name", gateway_common::L4_FLOWS_V4_MAP, "flags", "2"])
        .status()
        .expect("run bpftool");
    assert!(status.success(), "bpftool map create failed");
    let dropped = pins.drop_incompatible_maps(&object).expect("compare pins");
    assert_eq!(dropped, vec![gateway_common::L4_FLOWS_V4_MAP.to_owned()]);
    assert!(!flows.exists(), "the changed map is unpinned");
}

fn tcp_to(port: u16, flags: u8) -> Vec<u8> {
    let mut header = tcp();
    header[2..4].copy_from_slice(&port.to_be_bytes());
    header[13] = flags;
    header
}

fn ipv4_from(src: [u8; 4], protocol: u8, options: usize, fragment_offset: u16) -> Vec<u8> {
    let mut header = ipv4(protocol, options, fragment_offset);
    header[12..16].copy_from_slice(&src);
    header
}

fn ipv6_with_extensions(next_headers: &[u8], last: u8) -> Vec<u8> {
    // Base header announces the first extension; each 8-byte extension names the next.
    let mut chain: Vec<u8> = next_headers.to_vec();
    chain.push(last);
    let mut packet = ipv6(chain[0]);
    for window in chain.windows(2) {
        packet.extend_from_slice(&[window[1], 0, 0, 0, 0, 0, 0, 0]);
    }
    packet
}

fn edge_policy(
    deny: &[&str],
    allow: &[&str],
    syn: Option<(u32, u32)>,
) -> gateway::config::EdgePolicyConfig {
    gateway::config::EdgePolicyConfig {
        deny: deny.iter().map(|s| s.parse().expect("cidr")).collect(),
        allow: allow.iter().map(|s| s.parse().expect("cidr")).collect(),
        protect_all: false,
        syn_guard: syn.map(|(rate_per_sec, burst)| gateway::config::SynGuardConfig {
            rate_per_sec,
            burst,
        }),
        ban: None,
    }
}

/// Runs `packet` once; returns the verdict (1 drop, 2 pass) and the verdict-counter deltas.
fn run_counted(
    program: &mut XdpProgram,
    packet: &[u8],
) -> (u32, Vec<(gateway_common::Verdict, u64)>) {
    let before = program.verdict_counters().expect("verdicts");
    let result = program
        .program_mut()
        .expect("program")
        .test_run(TestRunOptions {
            data_in: Some(packet),
            ..TestRunOptions::default()
        })
        .expect("test run");
    let after = program.verdict_counters().expect("verdicts");
    let deltas = before
        .iter()
        .zip(&after)
        .map(|((v, b), (_, a))| (*v, a.packets - b.packets))
        .filter(|(_, d)| *d > 0)
        .collect();
    (result.return_value, deltas)
}

const XDP_DROP: u32 = 1;
const LISTENER: u16 = 8080;

#[test]
fn edge_policy_table_through_bpf_prog_test_run() {
    use gateway_common::Verdict::*;
    let Some(object) = xdp_object_or_skip("edge_policy_table_through_bpf_prog_test_run") else {
        return;
    };
    let listeners = ["127.0.0.1:8080".parse().expect("addr")];
    let denied_v4 = [203, 0, 113, 9];
    let other_v4 = [198, 51, 100, 7];
    let syn = TCP_SYN;

    // Deny-only mode: 203.0.113.0/24 and 2001:db8::/32 denied (the ipv6() source is inside it).
    let mut program = XdpProgram::load_from(&object).expect("load");
    program
        .sync_policy(
            &edge_policy(&["203.0.113.0/24", "2001:db8::/32"], &[], None),
            &listeners,
        )
        .expect("apply");
    let cases: Vec<(&str, Vec<u8>, u32, gateway_common::Verdict)> = vec![
        (
            "denied IPv4 to the listener",
            cat(&[
                eth(0x0800),
                ipv4_from(denied_v4, 6, 0, 0),
                tcp_to(LISTENER, syn),
            ]),
            XDP_DROP,
            DeniedByList,
        ),
        (
            "unlisted IPv4 to the listener",
            cat(&[
                eth(0x0800),
                ipv4_from(other_v4, 6, 0, 0),
                tcp_to(LISTENER, syn),
            ]),
            XDP_PASS,
            Admitted,
        ),
        (
            "denied IPv4 to an unprotected port",
            cat(&[eth(0x0800), ipv4_from(denied_v4, 6, 0, 0), tcp_to(22, syn)]),
            XDP_PASS,
            Unprotected,
        ),
        (
            "denied IPv4, UDP to the listener port",
            cat(&[eth(0x0800), ipv4_from(denied_v4, 17, 0, 0), {
                let mut u = udp();
                u[2..4].copy_from_slice(&LISTENER.to_be_bytes());
                u
            }]),
            XDP_PASS,
            Unprotected,
        ),
        (
            "denied IPv4 with options",
            cat(&[
                eth(0x0800),
                ipv4_from(denied_v4, 6, 12, 0),
                tcp_to(LISTENER, 0x10),
            ]),
            XDP_DROP,
            DeniedByList,
        ),
        (
            "denied IPv4 behind 802.1Q",
            cat(&[
                vlan(eth(0), 0x8100, 0x0800),
                ipv4_from(denied_v4, 6, 0, 0),
                tcp_to(LISTENER, syn),
            ]),
            XDP_DROP,
            DeniedByList,
        ),
        (
            "denied IPv4 behind QinQ",
            cat(&[
                vlan(eth(0), 0x88a8, 0x8100),
                vec![0x00, 0x0a, 0x08, 0x00],
                ipv4_from(denied_v4, 6, 0, 0),
                tcp_to(LISTENER, syn),
            ]),
            XDP_DROP,
            DeniedByList,
        ),
        (
            "denied IPv4 non-first fragment",
            cat(&[eth(0x0800), ipv4_from(denied_v4, 6, 0, 0x0010), vec![0; 16]]),
            XDP_DROP,
            DeniedByList,
        ),
        (
            "unlisted IPv4 non-first fragment",
            cat(&[eth(0x0800), ipv4_from(other_v4, 6, 0, 0x0010), vec![0; 16]]),
            XDP_PASS,
            Admitted,
        ),
        (
            "denied IPv6 to the listener",
            cat(&[eth(0x86dd), ipv6(6), tcp_to(LISTENER, syn)]),
            XDP_DROP,
            DeniedByList,
        ),
        (
            "denied IPv6 through hop-by-hop and destination options",
            cat(&[
                eth(0x86dd),
                ipv6_with_extensions(&[0, 60], 6),
                tcp_to(LISTENER, syn),
            ]),
            XDP_DROP,
            DeniedByList,
        ),
        (
            "denied IPv6 to an unprotected port behind extensions",
            cat(&[eth(0x86dd), ipv6_with_extensions(&[0], 6), tcp_to(443, syn)]),
            XDP_PASS,
            Unprotected,
        ),
        (
            "denied IPv6 non-first fragment",
            cat(&[
                eth(0x86dd),
                ipv6(44),
                vec![6, 0, 0x00, 0x08, 0, 0, 0, 1],
                vec![0; 16],
            ]),
            XDP_DROP,
            DeniedByList,
        ),
        (
            "truncated TCP header from a denied source",
            cat(&[eth(0x0800), ipv4_from(denied_v4, 6, 0, 0), vec![0; 8]]),
            XDP_PASS,
            Unprotected,
        ),
        (
            "ARP",
            cat(&[eth(0x0806), vec![0; 28]]),
            XDP_PASS,
            Unprotected,
        ),
    ];
    for (name, packet, verdict, counted) in &cases {
        let (action, deltas) = run_counted(&mut program, packet);
        assert_eq!(action, *verdict, "{name}: XDP action");
        assert_eq!(deltas, vec![(*counted, 1)], "{name}: verdict counters");
    }

    // Allow mode: only 198.51.100.0/24 and fd00::/8 admitted; deny still wins inside it.
    let mut program = XdpProgram::load_from(&object).expect("load");
    program
        .sync_policy(
            &edge_policy(
                &["198.51.100.128/25"],
                &["198.51.100.0/24", "fd00::/8"],
                None,
            ),
            &listeners,
        )
        .expect("apply");
    for (name, packet, verdict, counted) in [
        (
            "allowed IPv4",
            cat(&[
                eth(0x0800),
                ipv4_from([198, 51, 100, 7], 6, 0, 0),
                tcp_to(LISTENER, syn),
            ]),
            XDP_PASS,
            Admitted,
        ),
        (
            "IPv4 outside the allow list",
            cat(&[
                eth(0x0800),
                ipv4_from([192, 0, 2, 1], 6, 0, 0),
                tcp_to(LISTENER, syn),
            ]),
            XDP_DROP,
            NotAllowed,
        ),
        (
            "allowed prefix, denied host",
            cat(&[
                eth(0x0800),
                ipv4_from([198, 51, 100, 200], 6, 0, 0),
                tcp_to(LISTENER, syn),
            ]),
            XDP_DROP,
            DeniedByList,
        ),
        (
            "IPv6 outside the allow list",
            cat(&[eth(0x86dd), ipv6(6), tcp_to(LISTENER, syn)]),
            XDP_DROP,
            NotAllowed,
        ),
        (
            "outside the allow list, unprotected port",
            cat(&[
                eth(0x0800),
                ipv4_from([192, 0, 2, 1], 6, 0, 0),
                tcp_to(22, syn),
            ]),
            XDP_PASS,
            Unprotected,
        ),
    ] {
        let (action, deltas) = run_counted(&mut program, &packet);
        assert_eq!(action, verdict, "{name}: XDP action");
        assert_eq!(deltas, vec![(counted, 1)], "{name}: verdict counters");
    }

    // SYN guard: burst 3 at 2 per second, per source (slow enough that a loaded machine
    // cannot earn a token between two runs). Buckets are per CPU and a test
    // run executes on the caller's CPU: stay on one, or a migration finds a full bucket.
    gateway_tests::pin_thread(0, 0);
    let mut program = XdpProgram::load_from(&object).expect("load");
    program
        .sync_policy(&edge_policy(&[], &[], Some((2, 3))), &listeners)
        .expect("apply");
    let syn_from =
        |src: [u8; 4]| cat(&[eth(0x0800), ipv4_from(src, 6, 0, 0), tcp_to(LISTENER, syn)]);
    let actions: Vec<u32> = (0..5)
        .map(|_| run_counted(&mut program, &syn_from(other_v4)).0)
        .collect();
    assert_eq!(
        actions,
        [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP],
        "burst then drop"
    );
    assert_eq!(
        run_counted(&mut program, &syn_from(other_v4)).1,
        vec![(SynBudgetExceeded, 1)]
    );
    let ack = cat(&[
        eth(0x0800),
        ipv4_from(other_v4, 6, 0, 0),
        tcp_to(LISTENER, TCP_SYN | 0x10),
    ]);
    assert_eq!(
        run_counted(&mut program, &ack).0,
        XDP_PASS,
        "a SYN-ACK is not a new connection"
    );
    assert_eq!(
        run_counted(&mut program, &syn_from(denied_v4)).0,
        XDP_PASS,
        "another source has its own budget"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        run_counted(&mut program, &syn_from(other_v4)).0,
        XDP_PASS,
        "the bucket refills at the rate"
    );
    assert_eq!(
        run_counted(&mut program, &syn_from(other_v4)).0,
        XDP_DROP,
        "one token per 500 ms"
    );

    // Cost per packet, for the record (the bench reports it; no assertion on time).
    let mut program = XdpProgram::load_from(&object).expect("load");
    let many: Vec<String> = (0..10_000u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    program
        .sync_policy(&edge_policy(&many, &[], None), &listeners)
        .expect("apply 10k entries");
    let hit = cat(&[
        eth(0x0800),
        ipv4_from([10, 20, 30, 40], 6, 0, 0),
        tcp_to(LISTENER, syn),
    ]);
    let result = program
        .program_mut()
        .expect("program")
        .test_run(TestRunOptions {
            data_in: Some(&hit),
            repeat: 100_000,
            ..TestRunOptions::default()
        })
        .expect("repeated run");
    assert_eq!(result.return_value, XDP_DROP);
    eprintln!(
        "XDP deny-hit with 10k prefixes: {:?} per packet",
        result.duration
    );
}

const TCP_SYN: u8 = 0x02;

/// A client namespace on a veth pair, the gateway listening on the outer side with the
/// program attached in driver mode: the deny list stops a client in the driver (its SYNs
/// are counted as dropped), for IPv4 and IPv6, while an unlisted config serves it.
#[test]
fn denied_namespace_client_cannot_connect_through_xdp() {
    if xdp_object_or_skip("denied_namespace_client_cannot_connect_through_xdp").is_none() {
        return;
    }
    let backend = gateway_tests::Backend::start("behind-xdp");
    let tag = format!("{}", (std::process::id() + 7) % 100_000);
    let veth = VethNamespace::create(&tag);
    let config = |deny: &str| {
        format!(
            "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"v4\"\nbind = \"10.213.0.1:0\"\n\n[[listeners]]\nname = \"v6\"\nbind = \"[fd00:213::1]:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n\n[xdp]\ninterface = \"{}\"\nmode = \"driver\"\ndeny = [{deny}]\n",
            backend.addr, veth.outer
        )
    };
    {
        let gw = Gateway::start(&config(""));
        let (v4, v6) = (gw.addrs[0].port(), gw.addrs[1].port());
        assert!(
            veth.http_get_from_inside("10.213.0.1", v4, 5)
                .is_some_and(|l| l.starts_with("HTTP/1.1 200")),
            "{}",
            gw.log()
        );
        assert!(
            veth.http_get_from_inside("fd00:213::1", v6, 5)
                .is_some_and(|l| l.starts_with("HTTP/1.1 200")),
            "{}",
            gw.log()
        );
    }
    let gw = Gateway::start(&config("\"10.213.0.2/32\", \"fd00:213::2/128\""));
    let (v4, v6) = (gw.addrs[0].port(), gw.addrs[1].port());
    assert_eq!(
        veth.http_get_from_inside("10.213.0.1", v4, 2),
        None,
        "a denied IPv4 client was served"
    );
    assert_eq!(
        veth.http_get_from_inside("fd00:213::1", v6, 2),
        None,
        "a denied IPv6 client was served"
    );
    assert!(
        gw.log().contains("edge policy enforced in XDP"),
        "{}",
        gw.log()
    );

    // Reload without the IPv4 entry: the driver lets that client through, IPv6 stays denied.
    // Port 0 stays port 0: the listeners are the same ones, already bound.
    let reloaded = config("\"fd00:213::2/128\"");
    std::fs::write(gw.config_path(), reloaded).expect("rewrite config");
    assert!(gw.reload(), "{}", gw.log());
    assert!(
        veth.http_get_from_inside("10.213.0.1", v4, 5)
            .is_some_and(|l| l.starts_with("HTTP/1.1 200")),
        "{}",
        gw.log()
    );
    assert_eq!(
        veth.http_get_from_inside("fd00:213::1", v6, 2),
        None,
        "the IPv6 entry must survive the reload"
    );
}

/// `gateway acl add` writes into the program's maps: the namespace client is dropped in
/// the driver at once, and served again after `gateway acl remove`.
#[test]
fn live_acl_entries_reach_the_xdp_maps() {
    if xdp_object_or_skip("live_acl_entries_reach_the_xdp_maps").is_none() {
        return;
    }
    let backend = gateway_tests::Backend::start("behind-xdp");
    let tag = format!("{}", (std::process::id() + 11) % 100_000);
    let veth = VethNamespace::create(&tag);
    let token = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token.path(), "xdp-acl").expect("token");
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\nadmin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n\n[[listeners]]\nname = \"v4\"\nbind = \"10.213.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n\n[xdp]\ninterface = \"{}\"\nmode = \"driver\"\n",
        token.path().display(),
        backend.addr,
        veth.outer
    ));
    let port = gw.addrs[0].port();
    let admin = format!("http://{}", gw.admin.expect("admin API"));
    let acl = |args: &[&str]| {
        let token = token.path().to_str().expect("utf8");
        let mut all = vec!["acl", "--admin", &admin, "--token-file", token];
        all.extend_from_slice(args);
        let (status, stdout, stderr) = gateway_tests::gateway::run_cli(&all);
        assert!(status.success(), "{stdout}{stderr}");
        stdout
    };
    assert!(
        veth.http_get_from_inside("10.213.0.1", port, 5)
            .is_some_and(|l| l.starts_with("HTTP/1.1 200")),
        "{}",
        gw.log()
    );
    acl(&["deny", "add", "10.213.0.2"]);
    assert_eq!(
        veth.http_get_from_inside("10.213.0.1", port, 2),
        None,
        "a live-denied client was served"
    );
    let listing: serde_json::Value = serde_json::from_str(&acl(&["list"])).expect("JSON");
    assert_eq!(listing["enforcement"], "xdp");
    let entry = &listing["deny"][0];
    assert_eq!(entry["cidr"], "10.213.0.2/32");
    assert!(
        entry["hits"].as_u64().is_some_and(|h| h >= 1),
        "the driver counted the dropped SYNs: {listing}"
    );
    acl(&["deny", "del", "10.213.0.2"]);
    assert!(
        veth.http_get_from_inside("10.213.0.1", port, 5)
            .is_some_and(|l| l.starts_with("HTTP/1.1 200")),
        "{}",
        gw.log()
    );
}

/// L7-to-XDP feedback: a namespace client that collects the configured number of 401s is
/// banned in the driver (its next connection cannot even open) and released after the
/// ban time.
#[test]
fn a_client_provoking_401s_is_banned_at_xdp_and_released() {
    if xdp_object_or_skip("a_client_provoking_401s_is_banned_at_xdp_and_released").is_none() {
        return;
    }
    let backend = gateway_tests::Backend::start("behind-xdp");
    let tag = format!("{}", (std::process::id() + 13) % 100_000);
    let veth = VethNamespace::create(&tag);
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"v4\"\nbind = \"10.213.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"private\"\npath_prefix = \"/private\"\nupstream = \"u\"\nauth = [\"api_key\"]\n\n[[routes]]\nname = \"public\"\nupstream = \"u\"\n\n[xdp]\ninterface = \"{}\"\nmode = \"driver\"\nban = {{ threshold = 3, window = \"10s\", duration = \"3s\" }}\n",
        backend.addr, veth.outer
    ));
    let port = gw.addrs[0].port();
    for _ in 0..4 {
        assert!(
            veth.http_get_path_from_inside("10.213.0.1", port, "/private/x", 5)
                .is_some_and(|l| l.starts_with("HTTP/1.1 401")),
            "{}",
            gw.log()
        );
    }
    gw.wait_for_log("source banned at the edge");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        veth.http_get_from_inside("10.213.0.1", port, 2),
        None,
        "the banned client got through the driver"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        veth.http_get_from_inside("10.213.0.1", port, 5)
            .is_some_and(|l| l.starts_with("HTTP/1.1 200")),
        "the ban was lifted: {}",
        gw.log()
    );
}

/// Syncing a changed policy keeps each staying entry's id and hit counter, and a new (or
/// returning) entry starts from zero: no entry inherits another's hits.
#[test]
fn entries_keep_their_hit_counters_across_policy_changes() {
    let Some(object) = xdp_object_or_skip("entries_keep_their_hit_counters_across_policy_changes")
    else {
        return;
    };
    let listeners = ["127.0.0.1:8080".parse().expect("addr")];
    let net = |s: &str| -> ipnet::IpNet { s.parse().expect("cidr") };
    let (x, y, z) = (
        net("203.0.113.0/24"),
        net("198.51.100.0/24"),
        net("192.0.2.0/24"),
    );
    let mut program = XdpProgram::load_from(&object).expect("load");
    let hit = |program: &mut XdpProgram, src: [u8; 4]| {
        let packet = cat(&[
            eth(0x0800),
            ipv4_from(src, 6, 0, 0),
            tcp_to(LISTENER, TCP_SYN),
        ]);
        assert_eq!(run_counted(program, &packet).0, XDP_DROP);
    };
    program
        .sync_policy(
            &edge_policy(&["203.0.113.0/24", "198.51.100.0/24"], &[], None),
            &listeners,
        )
        .expect("sync");
    hit(&mut program, [203, 0, 113, 1]);
    hit(&mut program, [198, 51, 100, 1]);
    hit(&mut program, [198, 51, 100, 2]);
    program
        .sync_policy(
            &edge_policy(&["198.51.100.0/24", "192.0.2.0/24"], &[], None),
            &listeners,
        )
        .expect("sync");
    assert_eq!(
        program.entry_hits(true, &[x, y, z]).expect("hits"),
        vec![None, Some(2), Some(0)],
        "removed, kept, new"
    );
    program
        .sync_policy(
            &edge_policy(
                &["203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"],
                &[],
                None,
            ),
            &listeners,
        )
        .expect("sync");
    assert_eq!(
        program.entry_hits(true, &[x, y, z]).expect("hits"),
        vec![Some(0), Some(2), Some(0)],
        "a returning entry starts afresh"
    );
}

/// A list with few distinct prefix lengths is probed by length in hashes, one with many
/// is walked in the trie: both give the same verdicts, and the longest match gets the hit.
#[test]
fn by_length_and_trie_lookups_agree() {
    let Some(object) = xdp_object_or_skip("by_length_and_trie_lookups_agree") else {
        return;
    };
    let listeners = ["127.0.0.1:8080".parse().expect("addr")];
    let net = |s: &str| -> ipnet::IpNet { s.parse().expect("cidr") };
    let few = [
        "198.51.100.0/24",
        "198.51.100.7/32",
        "2001:db8::/32",
        "2001:db8::5/128",
    ];
    let many: Vec<&str> = few
        .iter()
        .copied()
        .chain([
            "10.0.0.0/8",
            "172.16.0.0/12",
            "100.64.0.0/10",
            "192.0.2.128/25",
            "2001:db9::/48",
            "2001:dba::/64",
            "2001:dbb::/100",
        ])
        .collect();
    for (what, list) in [("by length", few.to_vec()), ("trie", many)] {
        let mut program = XdpProgram::load_from(&object).expect("load");
        program
            .sync_policy(&edge_policy(&list, &[], None), &listeners)
            .expect("sync");
        let v4 = |program: &mut XdpProgram, src: [u8; 4]| {
            let packet = cat(&[
                eth(0x0800),
                ipv4_from(src, 6, 0, 0),
                tcp_to(LISTENER, TCP_SYN),
            ]);
            run_counted(program, &packet).0
        };
        assert_eq!(v4(&mut program, [198, 51, 100, 7]), XDP_DROP, "{what}");
        assert_eq!(v4(&mut program, [198, 51, 100, 200]), XDP_DROP, "{what}");
        assert_eq!(v4(&mut program, [198, 51, 101, 7]), XDP_PASS, "{what}");
        let v6 = |program: &mut XdpProgram, last: u8| {
            let mut packet = cat(&[eth(0x86DD), ipv6(6), tcp_to(LISTENER, TCP_SYN)]);
            // Source 2001:db8::<last>.
            let mut source = [0u8; 16];
            source[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            source[15] = last;
            packet[14 + 8..14 + 24].copy_from_slice(&source);
            run_counted(program, &packet).0
        };
        assert_eq!(v6(&mut program, 5), XDP_DROP, "{what}");
        assert_eq!(v6(&mut program, 9), XDP_DROP, "{what}");
        assert_eq!(
            program
                .entry_hits(
                    true,
                    &[
                        net("198.51.100.7/32"),
                        net("198.51.100.0/24"),
                        net("2001:db8::5/128"),
                        net("2001:db8::/32")
                    ]
                )
                .expect("hits"),
            vec![Some(1), Some(1), Some(1), Some(1)],
            "{what}: the longest match counts"
        );
    }
}
