//! The XDP program: packet tables through `BPF_PROG_TEST_RUN` (counters checked per
//! slot), and attach/detach by `gateway run` on a veth in a namespace. Root only.

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use gateway::xdp::XdpProgram;
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
