//! The L4 balancer in the XDP program, through `BPF_PROG_TEST_RUN`: VIP hits come out
//! encapsulated (outer header and checksum checked byte by byte) to the target the
//! Maglev ring names, non-VIP traffic passes untouched, remembered flows keep their
//! target when the ring changes and move when it goes down. Root only.
//!
//! Every run happens on a thread in a fresh network namespace: with no routes there, the
//! program's FIB lookup finds no next hop and hands the encapsulated frame to the kernel
//! (`XDP_PASS`), so the output frame is exactly what the program wrote, whatever the
//! host's routing. The namespace test (`l4_fabric.rs`) covers the real next hop.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use gateway::{config::Config, l4::L4Balancer, xdp::XdpProgram};
use gateway_common::{
    FlowKey, IndexedVip, VIP_SLOT_IN_USE, VIP_SLOT_SHARED, Verdict, VipKey, VipKeyV4, VipSlot,
    flow_hash,
};
use gateway_tests::netns::xdp_object_or_skip;
use serde_json::Value;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const MACS: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

const CONFIG: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"

[xdp]
interface = "lo"
deny = ["198.18.0.0/24"]
tunnel_source_v4 = "172.16.0.0/16"
tunnel_source_v6 = "fd00:4c34::/96"

[[l4_services]]
name = "web"
vip = "10.100.0.1"
port = 80
targets = [ { addr = "10.0.1.1" }, { addr = "10.0.1.2", weight = 2 } ]

[[l4_services]]
name = "web6"
vip = "fd00:100::1"
port = 443
table_size = 1009
targets = [ { addr = "fd00:1::1" }, { addr = "fd00:1::2" } ]

[[l4_services]]
name = "mixed"
vip = "10.100.0.2"
table_size = 211
targets = [ { addr = "fd00:1::3" } ]

[[l4_services]]
name = "dns"
vip = "10.100.0.3"
port = 53
protocol = "udp"
flow_hash = "3-tuple"
table_size = 307
targets = [ { addr = "10.0.1.5" }, { addr = "10.0.1.6" }, { addr = "10.0.1.7" } ]
"#;

fn config(text: &str) -> Config {
    Config::parse(std::path::Path::new("l4-test.toml"), text).expect("valid config")
}

/// Runs `body` on a thread in a new, empty network namespace.
fn in_fresh_namespace<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare only affects this thread's namespaces.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        body()
    })
    .join()
    .expect("the test thread panicked")
}

fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// One packet: Ethernet, IP (lengths filled in), TCP (flags) or UDP, and a payload.
#[derive(Clone, Copy)]
struct Packet {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    protocol: u8,
    tcp_flags: u8,
}

impl Packet {
    fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> Self {
        Self {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            protocol: 6,
            tcp_flags: 0x02,
        }
    }

    fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Self {
        Self {
            protocol: 17,
            tcp_flags: 0,
            ..Self::tcp(src, dst, sport, dport)
        }
    }

    fn flow(&self, with_ports: bool) -> FlowKey {
        FlowKey {
            src: mapped(self.src),
            dst: mapped(self.dst),
            src_port_be: if with_ports { self.sport.to_be() } else { 0 },
            dst_port_be: if with_ports { self.dport.to_be() } else { 0 },
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }

    /// The IP packet (no Ethernet header).
    fn ip(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.protocol == 6 {
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, self.tcp_flags, 0xff, 0xff]);
            l4.extend_from_slice(&[0, 0, 0, 0]);
        } else {
            l4.extend_from_slice(&(8u16 + 7).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(b"payload");
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = (20 + l4.len()) as u16;
                let mut h = vec![0x45, 0x28];
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&[0, 7, 0x40, 0, 61, self.protocol, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                [h, l4].concat()
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut h = vec![0x62, 0x80, 0, 0];
                h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                h.extend_from_slice(&[self.protocol, 61]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                [h, l4].concat()
            }
            _ => unreachable!("one family per packet"),
        }
    }

    fn frame(&self) -> Vec<u8> {
        let ethertype: [u8; 2] = if self.src.is_ipv4() {
            [0x08, 0x00]
        } else {
            [0x86, 0xdd]
        };
        [MACS.as_slice(), &ethertype, &self.ip()].concat()
    }
}

fn run(program: &mut XdpProgram, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .program_mut()
        .expect("program")
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn verdict_count(program: &XdpProgram, verdict: Verdict) -> u64 {
    program
        .verdict_counters()
        .expect("verdicts")
        .into_iter()
        .find(|(v, _)| *v == verdict)
        .map_or(0, |(_, c)| c.packets)
}

fn ipv4_checksum_ok(header: &[u8]) -> bool {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// The target the ring of `service` gives `flow`, computed in userspace from the same
/// Maglev build and flow hash the program uses.
fn expected_target(config: &Config, service: usize, flow: &FlowKey, up: &[bool]) -> IpAddr {
    let s = &config.l4_services[service];
    let ids: Vec<u32> = (0..s.targets.len() as u32).collect();
    let ring = gateway::l4::tables::ring(s, &ids, up);
    let slot = flow_hash(flow) % s.table_size;
    s.targets[ring[slot as usize] as usize].addr
}

/// Checks an encapsulated frame: Ethernet kept (MACs) with the outer family's type,
/// the outer header to `target` from inside the tunnel prefix, the inner packet intact.
fn assert_encapsulated(what: &str, out: &[u8], inner: &[u8], target: IpAddr, hash: u32) {
    assert_eq!(
        &out[..12],
        &MACS,
        "{what}: MAC addresses kept for the kernel"
    );
    match target {
        IpAddr::V4(t) => {
            assert_eq!(&out[12..14], &[0x08, 0x00], "{what}: ethertype");
            let h = &out[14..34];
            assert_eq!(h[0], 0x45, "{what}: version and IHL");
            assert_eq!(h[1], inner[1], "{what}: TOS copied from the inner header");
            let total = u16::from_be_bytes([h[2], h[3]]) as usize;
            assert_eq!(total, inner.len() + 20, "{what}: total length");
            assert_eq!(h[8], 64, "{what}: TTL");
            assert_eq!(h[9], 4, "{what}: protocol IPIP");
            assert!(ipv4_checksum_ok(h), "{what}: header checksum");
            assert_eq!(
                &h[12..14],
                &[172, 16],
                "{what}: source in the tunnel prefix"
            );
            let host = u16::from_be_bytes([h[14], h[15]]);
            let hash_bytes = hash.to_ne_bytes();
            assert_eq!(
                host,
                u16::from_be_bytes([hash_bytes[2], hash_bytes[3]]),
                "{what}: source host bits from the flow hash"
            );
            assert_eq!(&h[16..20], &t.octets(), "{what}: outer destination");
            assert_eq!(&out[34..], inner, "{what}: inner packet untouched");
        }
        IpAddr::V6(t) => {
            assert_eq!(&out[12..14], &[0x86, 0xdd], "{what}: ethertype");
            let h = &out[14..54];
            assert_eq!(h[0] >> 4, 6, "{what}: version");
            let label = u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]]);
            assert_eq!(
                label,
                hash & 0xfffff,
                "{what}: flow label from the flow hash"
            );
            let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
            assert_eq!(payload, inner.len(), "{what}: payload length");
            let next = if inner[0] >> 4 == 4 { 4 } else { 41 };
            assert_eq!(h[6], next, "{what}: next header");
            assert_eq!(h[7], 64, "{what}: hop limit");
            assert_eq!(
                &h[8..20],
                &"fd00:4c34::"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets()[..12],
                "{what}: source in the tunnel prefix"
            );
            assert_eq!(&h[20..24], &hash.to_ne_bytes(), "{what}: source host bits");
            assert_eq!(&h[24..40], &t.octets(), "{what}: outer destination");
            assert_eq!(&out[54..], inner, "{what}: inner packet untouched");
        }
    }
}

/// `text` (services "web" and "web6" with two targets each), and the same with a third
/// target added to both.
fn two_and_three_targets(text: &str) -> (Config, Config) {
    let three = text
        .replace(
            r#"{ addr = "10.0.1.2", weight = 2 } ]"#,
            r#"{ addr = "10.0.1.2", weight = 2 }, { addr = "10.0.1.3", weight = 4 } ]"#,
        )
        .replace(
            r#"{ addr = "fd00:1::2" } ]"#,
            r#"{ addr = "fd00:1::2" }, { addr = "fd00:1::4", weight = 4 } ]"#,
        );
    (config(text), config(&three))
}

/// `count` TCP flows from `client` to "web" that the three-target ring sends elsewhere
/// than the two-target one.
fn flows_that_move(two: &Config, three: &Config, client: &str, count: usize) -> Vec<Packet> {
    flows_of_service_that_move(two, three, 0, client, "10.100.0.1", 80, count)
}

/// The same for service number `service` at `vip`:`port`.
fn flows_of_service_that_move(
    two: &Config,
    three: &Config,
    service: usize,
    client: &str,
    vip: &str,
    port: u16,
    count: usize,
) -> Vec<Packet> {
    let moving: Vec<Packet> = (1_000..3_000)
        .map(|sport| Packet::tcp(client, vip, sport, port))
        .filter(|p| {
            let flow = p.flow(true);
            expected_target(two, service, &flow, &[true, true])
                != expected_target(three, service, &flow, &[true, true, true])
        })
        .take(count)
        .collect();
    assert_eq!(moving.len(), count);
    moving
}

/// The target an encapsulated frame is addressed to (its outer destination).
fn outer_target(out: &[u8]) -> IpAddr {
    if out[12..14] == [0x08, 0x00] {
        IpAddr::from(<[u8; 4]>::try_from(&out[30..34]).unwrap())
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&out[38..54]).unwrap())
    }
}

fn targets_of(view: &Value, service: &str) -> Vec<Value> {
    view["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap_or_else(|| panic!("no service {service} in {view}"))["targets"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn vip_packets_are_encapsulated_to_the_maglev_target() {
    let Some(object) = xdp_object_or_skip("vip_packets_are_encapsulated_to_the_maglev_target")
    else {
        return;
    };
    in_fresh_namespace(move || {
        let config = config(CONFIG);
        let mut program = XdpProgram::load_from(&object).expect("load the XDP object");
        let (control, _inbox) = std::sync::mpsc::channel();
        program.sync_policy(&config.edge, &[]).expect("edge policy");
        let balancer = L4Balancer::start(&config, &mut program, &control).expect("L4 maps");
        let cases: Vec<(&str, Packet, usize, bool)> = vec![
            (
                "IPv4 in IPv4",
                Packet::tcp("192.0.2.10", "10.100.0.1", 40_000, 80),
                0,
                true,
            ),
            (
                "IPv4, other source port",
                Packet::tcp("192.0.2.10", "10.100.0.1", 40_001, 80),
                0,
                true,
            ),
            (
                "IPv6 in IPv6",
                Packet::tcp("2001:db8::10", "fd00:100::1", 40_000, 443),
                1,
                true,
            ),
            (
                "IPv4 in IPv6, a service of every port",
                Packet::tcp("192.0.2.11", "10.100.0.2", 1234, 9999),
                2,
                true,
            ),
            (
                "UDP hashed without ports",
                Packet::udp("192.0.2.12", "10.100.0.3", 5353, 53),
                3,
                false,
            ),
        ];
        for (what, packet, service, with_ports) in &cases {
            let flow = packet.flow(*with_ports);
            let target = expected_target(
                &config,
                *service,
                &flow,
                &vec![true; config.l4_services[*service].targets.len()],
            );
            let (action, out) = run(&mut program, &packet.frame());
            assert_eq!(
                action, XDP_PASS,
                "{what}: no next hop here, so the kernel forwards"
            );
            assert_encapsulated(what, &out, &packet.ip(), target, flow_hash(&flow));
        }
        assert_eq!(
            verdict_count(&program, Verdict::L4ForwardedByKernel),
            cases.len() as u64
        );

        // Every datagram of a 3-tuple service's client goes to one target.
        let first = run(
            &mut program,
            &Packet::udp("192.0.2.12", "10.100.0.3", 1, 53).frame(),
        )
        .1;
        for port in [2, 3, 40_000, 65_535] {
            let out = run(
                &mut program,
                &Packet::udp("192.0.2.12", "10.100.0.3", port, 53).frame(),
            )
            .1;
            assert_eq!(
                out[30..34],
                first[30..34],
                "source port {port} changed the target"
            );
        }

        // Not for a VIP: untouched, whatever is close to one.
        let untouched = [
            (
                "another address",
                Packet::tcp("192.0.2.10", "10.100.0.9", 40_000, 80),
            ),
            (
                "the VIP on another port",
                Packet::tcp("192.0.2.10", "10.100.0.1", 40_000, 81),
            ),
            (
                "the VIP over UDP",
                Packet::udp("192.0.2.10", "10.100.0.1", 40_000, 80),
            ),
            (
                "the DNS VIP over TCP",
                Packet::tcp("192.0.2.10", "10.100.0.3", 40_000, 53),
            ),
        ];
        for (what, packet) in untouched {
            let frame = packet.frame();
            assert_eq!(run(&mut program, &frame), (XDP_PASS, frame), "{what}");
        }

        // Truncated packets to a VIP are never encapsulated.
        let whole = Packet::tcp("192.0.2.10", "10.100.0.1", 40_000, 80).frame();
        for cut in [14, 20, 33, 40, 53] {
            let frame = &whole[..cut];
            assert_eq!(
                run(&mut program, frame),
                (XDP_PASS, frame.to_vec()),
                "cut at {cut}"
            );
        }
        // A VLAN-tagged frame to a VIP is left to the kernel, untouched.
        let mut tagged = whole[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        tagged.extend_from_slice(&whole[12..]);
        assert_eq!(run(&mut program, &tagged), (XDP_PASS, tagged.clone()));
        assert_eq!(
            verdict_count(&program, Verdict::L4Unbalanced),
            1,
            "{:?}",
            program.verdict_counters()
        );

        // The deny list applies to VIPs too.
        let denied = Packet::tcp("198.18.0.5", "10.100.0.1", 40_000, 80).frame();
        assert_eq!(run(&mut program, &denied).0, XDP_DROP);
        assert_eq!(
            verdict_count(&program, Verdict::DeniedByList),
            1,
            "{:?}",
            program.verdict_counters()
        );

        // Counters: per service and per target, packets and new flows.
        let view = balancer.view(&mut program);
        let web: u64 = targets_of(&view, "web")
            .iter()
            .map(|t| t["packets"].as_u64().unwrap())
            .sum();
        assert_eq!(web, 2, "{view}");
        let web_service = view["services"][0].clone();
        assert_eq!(web_service["packets"], 2);
        assert_eq!(web_service["new_flows"], 2);
        let dns_flows: u64 = targets_of(&view, "dns")
            .iter()
            .map(|t| t["new_flows"].as_u64().unwrap())
            .sum();
        assert_eq!(dns_flows, 1, "one 3-tuple flow: {view}");
    });
}

#[test]
fn remembered_flows_keep_their_target_until_it_goes_down() {
    let Some(object) = xdp_object_or_skip("remembered_flows_keep_their_target_until_it_goes_down")
    else {
        return;
    };
    in_fresh_namespace(move || {
        let (two, three) = two_and_three_targets(CONFIG);
        let mut program = XdpProgram::load_from(&object).expect("load the XDP object");
        let (control, _inbox) = std::sync::mpsc::channel();
        let mut balancer = L4Balancer::start(&two, &mut program, &control).expect("L4 maps");
        let moving = flows_that_move(&two, &three, "192.0.2.20", 20);
        // IPv6 flows live in their own table: the same holds for them.
        let moving6 =
            flows_of_service_that_move(&two, &three, 1, "2001:db8::20", "fd00:100::1", 443, 10);
        let before: Vec<IpAddr> = moving
            .iter()
            .map(|p| outer_target(&run(&mut program, &p.frame()).1))
            .collect();
        let before6: Vec<IpAddr> = moving6
            .iter()
            .map(|p| outer_target(&run(&mut program, &p.frame()).1))
            .collect();

        // A third target joins: the ring changes, remembered flows do not move.
        balancer
            .apply(&three, &mut program, &control)
            .expect("reload");
        for (p, was) in moving.iter().zip(&before) {
            let established = Packet {
                tcp_flags: 0x10,
                ..*p
            };
            let now = outer_target(&run(&mut program, &established.frame()).1);
            assert_eq!(
                now, *was,
                "an established flow moved after a target was added"
            );
        }
        for (p, was) in moving6.iter().zip(&before6) {
            let now = outer_target(&run(&mut program, &p.frame()).1);
            assert_eq!(
                now, *was,
                "an established IPv6 flow moved after a target was added"
            );
        }
        let fresh6 = Packet::tcp("2001:db8::21", "fd00:100::1", 5_000, 443);
        assert_eq!(
            outer_target(&run(&mut program, &fresh6.frame()).1),
            expected_target(&three, 1, &fresh6.flow(true), &[true, true, true])
        );
        // A new flow follows the new ring.
        let fresh = Packet::tcp("192.0.2.21", "10.100.0.1", 5_000, 80);
        let flow = fresh.flow(true);
        assert_eq!(
            outer_target(&run(&mut program, &fresh.frame()).1),
            expected_target(&three, 0, &flow, &[true, true, true])
        );

        // Target 10.0.1.1 goes down: its flows move, the others stay.
        let vip = VipKey {
            addr: mapped("10.100.0.1".parse().unwrap()),
            port_be: 80u16.to_be(),
            protocol: 6,
            _pad: 0,
        };
        let down: IpAddr = "10.0.1.1".parse().unwrap();
        balancer
            .set_health(vip, down, false, &mut program)
            .expect("health");
        let mut moved = 0;
        for (p, was) in moving.iter().zip(&before) {
            let now = outer_target(&run(&mut program, &p.frame()).1);
            if *was == down {
                assert_ne!(now, down, "a flow stayed on the target that went down");
                moved += 1;
            } else {
                assert_eq!(now, *was, "a flow of a healthy target moved");
            }
        }
        assert!(
            moved > 0,
            "no remembered flow was on the target that went down"
        );
        let view = balancer.view(&mut program);
        let healthy: Vec<bool> = targets_of(&view, "web")
            .iter()
            .map(|t| t["healthy"].as_bool().unwrap())
            .collect();
        assert_eq!(healthy, [false, true, true]);
        assert_eq!(targets_of(&view, "web")[0]["ring_slots"], 0);

        // Without any live target the VIP's packets are dropped and counted.
        let mixed = VipKey {
            addr: mapped("10.100.0.2".parse().unwrap()),
            port_be: 0,
            protocol: 6,
            _pad: 0,
        };
        balancer
            .set_health(mixed, "fd00:1::3".parse().unwrap(), false, &mut program)
            .expect("health");
        let orphan = Packet::tcp("192.0.2.22", "10.100.0.2", 1, 2).frame();
        assert_eq!(run(&mut program, &orphan).0, XDP_DROP);
        assert_eq!(verdict_count(&program, Verdict::L4NoTarget), 1);

        // Removing every service switches the stage off: VIP traffic passes untouched.
        let none = config(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[xdp]\ninterface = \"lo\"\n",
        );
        balancer
            .apply(&none, &mut program, &control)
            .expect("reload");
        let frame = moving[0].frame();
        assert_eq!(run(&mut program, &frame), (XDP_PASS, frame.clone()));
    });
}

/// A flow's target as a CPU's flow cache knows it must never outlive a change the
/// connection table saw: here the target goes down, another CPU moves the flow in the
/// table, and the target comes back up. The first CPU, whose cache still names the old
/// target (now up again), must follow the table.
#[test]
fn a_flow_cached_on_one_cpu_follows_the_table_after_its_target_flaps() {
    let Some(object) =
        xdp_object_or_skip("a_flow_cached_on_one_cpu_follows_the_table_after_its_target_flaps")
    else {
        return;
    };
    in_fresh_namespace(move || {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (first_cpu, other_cpu) = (0, 1.min(cpus - 1));
        let config = config(CONFIG);
        let mut program = XdpProgram::load_from(&object).expect("load the XDP object");
        let (control, _inbox) = std::sync::mpsc::channel();
        let mut balancer = L4Balancer::start(&config, &mut program, &control).expect("L4 maps");
        let flapping: IpAddr = "10.0.1.1".parse().unwrap();
        let other: IpAddr = "10.0.1.2".parse().unwrap();
        let flows: Vec<Packet> = (1_000..2_000)
            .map(|sport| Packet::tcp("192.0.2.30", "10.100.0.1", sport, 80))
            .filter(|p| expected_target(&config, 0, &p.flow(true), &[true, true]) == flapping)
            .take(10)
            .collect();
        assert_eq!(flows.len(), 10);
        let targets = |program: &mut XdpProgram| -> Vec<IpAddr> {
            flows
                .iter()
                .map(|p| outer_target(&run(program, &p.frame()).1))
                .collect()
        };
        // The first packet puts each flow in the table, the second in this CPU's cache,
        // the third is answered from the cache.
        gateway_tests::pin_thread(0, first_cpu);
        for _ in 0..3 {
            assert_eq!(targets(&mut program), vec![flapping; flows.len()]);
        }
        let vip = VipKey {
            addr: mapped("10.100.0.1".parse().unwrap()),
            port_be: 80u16.to_be(),
            protocol: 6,
            _pad: 0,
        };
        balancer
            .set_health(vip, flapping, false, &mut program)
            .expect("health");
        gateway_tests::pin_thread(0, other_cpu);
        assert_eq!(
            targets(&mut program),
            vec![other; flows.len()],
            "the flows left the target that went down"
        );
        balancer
            .set_health(vip, flapping, true, &mut program)
            .expect("health");
        gateway_tests::pin_thread(0, first_cpu);
        assert_eq!(
            targets(&mut program),
            vec![other; flows.len()],
            "a CPU's cache sent flows back to the target they left"
        );
        // A flow the table never saw still follows the ring, flapping target included.
        let fresh = Packet::tcp("192.0.2.31", "10.100.0.1", 7_000, 80);
        assert_eq!(
            outer_target(&run(&mut program, &fresh.frame()).1),
            expected_target(&config, 0, &fresh.flow(true), &[true, true])
        );
    });
}

/// Flows served from a CPU's flow cache keep to their service: a 3-tuple service's
/// datagrams are one flow whatever their source port, and a removed VIP's cached flows
/// are no longer balanced, while the other VIPs' are.
#[test]
fn cached_flows_follow_their_service_even_when_it_goes() {
    let Some(object) = xdp_object_or_skip("cached_flows_follow_their_service_even_when_it_goes")
    else {
        return;
    };
    in_fresh_namespace(move || {
        let full = config(CONFIG);
        let mut program = XdpProgram::load_from(&object).expect("load the XDP object");
        let (control, _inbox) = std::sync::mpsc::channel();
        let mut balancer = L4Balancer::start(&full, &mut program, &control).expect("L4 maps");
        gateway_tests::pin_thread(0, 0);
        let web = Packet::tcp("192.0.2.40", "10.100.0.1", 40_000, 80).frame();
        let dns = |sport| Packet::udp("192.0.2.40", "10.100.0.3", sport, 53).frame();
        let web_target = outer_target(&run(&mut program, &web).1);
        let dns_target = outer_target(&run(&mut program, &dns(5_000)).1);
        // Later packets come from the cache (the second fills it); to the 3-tuple service,
        // other source ports are the same flow.
        for sport in [5_000, 5_000, 5_000, 5_001, 5_001, 6_000] {
            assert_eq!(outer_target(&run(&mut program, &dns(sport)).1), dns_target);
            assert_eq!(outer_target(&run(&mut program, &web).1), web_target);
        }
        let start = CONFIG.find("[[l4_services]]\nname = \"web\"").unwrap();
        let end = CONFIG.find("[[l4_services]]\nname = \"web6\"").unwrap();
        let without_web = format!("{}{}", &CONFIG[..start], &CONFIG[end..]);
        balancer
            .apply(&config(&without_web), &mut program, &control)
            .expect("reload");
        assert_eq!(
            run(&mut program, &web),
            (XDP_PASS, web.clone()),
            "a removed VIP's cached flow was still balanced"
        );
        assert_eq!(outer_target(&run(&mut program, &dns(5_000)).1), dns_target);
    });
}

/// Two IPv4 VIPs that land in one slot of the VIP index: one lives in the slot, the
/// other only in the hash map (the slot is marked shared). Both are balanced, while the
/// slot's owner leaves and after it comes back.
#[test]
fn ipv4_vips_sharing_an_index_slot_are_both_balanced() {
    let Some(object) = xdp_object_or_skip("ipv4_vips_sharing_an_index_slot_are_both_balanced")
    else {
        return;
    };
    let first = VipKeyV4 {
        addr: [10, 100, 0, 1],
        port_be: 80u16.to_be(),
        protocol: 6,
        _pad: 0,
    };
    let second = (0..=u16::MAX)
        .map(|n| VipKeyV4 {
            addr: [10, 101, (n >> 8) as u8, n as u8],
            ..first
        })
        .find(|key| key.index_slot() == first.index_slot())
        .expect("a VIP in the same slot");
    let second = std::net::Ipv4Addr::from(second.addr).to_string();
    vips_sharing_an_index_slot_are_both_balanced(object, first, "10.100.0.1", &second);
}

/// The same for two IPv6 VIPs in one slot of the IPv6 index.
#[test]
fn ipv6_vips_sharing_an_index_slot_are_both_balanced() {
    let Some(object) = xdp_object_or_skip("ipv6_vips_sharing_an_index_slot_are_both_balanced")
    else {
        return;
    };
    let vip = |n: u16| -> std::net::Ipv6Addr { format!("fd00:100::{n:x}").parse().unwrap() };
    let key = |n: u16| VipKey {
        addr: vip(n).octets(),
        port_be: 80u16.to_be(),
        protocol: 6,
        _pad: 0,
    };
    let first = key(1);
    let second = (2..=u16::MAX)
        .find(|&n| key(n).index_slot() == first.index_slot())
        .expect("a VIP in the same slot");
    vips_sharing_an_index_slot_are_both_balanced(
        object,
        first,
        &vip(1).to_string(),
        &vip(second).to_string(),
    );
}

/// `first` (the key of VIP `first_vip`) and `second_vip` share an index slot: the first
/// VIP written holds it, the second is marked as sharing it, and both are balanced
/// through a reload without the first and one with it back.
fn vips_sharing_an_index_slot_are_both_balanced<K>(
    object: Vec<u8>,
    first: K,
    first_vip: &str,
    second_vip: &str,
) where
    K: IndexedVip + std::fmt::Debug + Send + 'static,
    VipSlot<K>: aya::Pod,
{
    let target = if first_vip.contains(':') {
        "fd00:1::1"
    } else {
        "10.0.1.1"
    };
    let service = |name: &str, vip: &str| {
        format!(
            "[[l4_services]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 80\ntargets = [ {{ addr = \"{target}\" }} ]\n"
        )
    };
    let head = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[xdp]\ninterface = \"lo\"\n";
    let both = config(&format!(
        "{head}{}{}",
        service("first", first_vip),
        service("second", second_vip)
    ));
    let second_alone = config(&format!("{head}{}", service("second", second_vip)));
    let (first_vip, second_vip) = (first_vip.to_owned(), second_vip.to_owned());
    let not_a_vip = if first_vip.contains(':') {
        "fd00:100::ffff"
    } else {
        "10.100.0.9"
    };
    in_fresh_namespace(move || {
        let mut program = XdpProgram::load_from(&object).expect("load the XDP object");
        let (control, _inbox) = std::sync::mpsc::channel();
        let mut balancer = L4Balancer::start(&both, &mut program, &control).expect("L4 maps");
        let p = &mut program;
        // The first VIP written holds the slot; the second is marked as sharing it.
        let slot = |p: &mut XdpProgram| p.l4().vip_slot(&first).expect("read the index");
        let held = slot(p);
        assert_eq!(held.key, first);
        assert_eq!(held.flags, VIP_SLOT_IN_USE | VIP_SLOT_SHARED);
        assert_eq!(held.check, held.check_of(), "a whole slot");
        assert!(balanced(p, &first_vip), "the first VIP");
        assert!(balanced(p, &second_vip), "the VIP sharing its slot");
        assert!(!balanced(p, not_a_vip), "not a VIP");
        balancer
            .apply(&second_alone, p, &control)
            .expect("reload without the first");
        assert_eq!(slot(p).flags, VIP_SLOT_SHARED, "emptied, still shared");
        assert!(!balanced(p, &first_vip), "the first VIP left");
        assert!(
            balanced(p, &second_vip),
            "the second VIP, found in the hash map"
        );
        balancer
            .apply(&both, p, &control)
            .expect("reload with both");
        assert_eq!(
            slot(p).key,
            first,
            "the first VIP takes the free slot again"
        );
        assert!(balanced(p, &first_vip), "the first VIP is back");
        assert!(balanced(p, &second_vip), "the second VIP still");
    });
}

/// Whether a TCP packet to `vip`:80 comes out wrapped in an outer header of its own
/// family (IPv4 in IPv4, IPv6 in IPv6).
fn balanced(program: &mut XdpProgram, vip: &str) -> bool {
    let v6 = vip.contains(':');
    let client = if v6 { "2001:db8::40" } else { "192.0.2.40" };
    let frame = Packet::tcp(client, vip, 40_000, 80).frame();
    let out = run(program, &frame).1;
    if v6 {
        out.len() == frame.len() + 40 && out[12..14] == [0x86, 0xdd] && out[20] == 41
    } else {
        out.len() == frame.len() + 20 && out[12..14] == [0x08, 0x00] && out[23] == 4
    }
}

/// Past `l4_remembered_flows_per_cpu` new flows in one second, a CPU still balances new
/// flows through the ring, to the same targets, but does not remember them: they are
/// counted as `l4_forwarded_unremembered`, and they follow the ring when it changes while
/// the remembered ones stay.
#[test]
fn past_the_admission_rate_new_flows_are_balanced_but_not_remembered() {
    let Some(object) =
        xdp_object_or_skip("past_the_admission_rate_new_flows_are_balanced_but_not_remembered")
    else {
        return;
    };
    in_fresh_namespace(move || {
        // The admission window is per CPU: stay on one.
        gateway_tests::pin_thread(0, 0);
        let limited = CONFIG.replace(
            "tunnel_source_v6 = \"fd00:4c34::/96\"\n",
            "tunnel_source_v6 = \"fd00:4c34::/96\"\nl4_remembered_flows_per_cpu = 3\n",
        );
        let (two, three) = two_and_three_targets(&limited);
        assert_eq!(two.xdp.as_ref().unwrap().l4_remembered_flows_per_cpu, 3);
        let mut program = XdpProgram::load_from(&object).expect("load the XDP object");
        let (control, _inbox) = std::sync::mpsc::channel();
        let mut balancer = L4Balancer::start(&two, &mut program, &control).expect("L4 maps");
        let flows = flows_that_move(&two, &three, "192.0.2.30", 5);
        let outer_target = |out: &[u8]| IpAddr::from(<[u8; 4]>::try_from(&out[30..34]).unwrap());
        for p in &flows {
            let flow = p.flow(true);
            let (_, out) = run(&mut program, &p.frame());
            assert_encapsulated(
                "a new flow",
                &out,
                &p.ip(),
                expected_target(&two, 0, &flow, &[true, true]),
                flow_hash(&flow),
            );
        }
        let unremembered = verdict_count(&program, Verdict::L4ForwardedUnremembered);
        let forwarded = verdict_count(&program, Verdict::L4ForwardedByKernel)
            + verdict_count(&program, Verdict::L4Forwarded);
        assert_eq!(
            (forwarded, unremembered),
            (3, 2),
            "three flows remembered, two past the rate"
        );

        // The ring changes: the three remembered flows keep their target; the two others
        // were not remembered, so they follow the new ring.
        balancer
            .apply(&three, &mut program, &control)
            .expect("reload");
        for (i, p) in flows.iter().enumerate() {
            let flow = p.flow(true);
            let now = outer_target(&run(&mut program, &p.frame()).1);
            if i < 3 {
                assert_eq!(now, expected_target(&two, 0, &flow, &[true, true]));
            } else {
                assert_eq!(now, expected_target(&three, 0, &flow, &[true, true, true]));
            }
        }
    });
}

/// Runs `ip` (or `sysctl`) inside the calling thread's namespace; panics on failure.
fn run_here(program: &str, args: &str) {
    let status = std::process::Command::new(program)
        .args(args.split(' '))
        .status()
        .unwrap_or_else(|e| panic!("{program} {args}: {e}"));
    assert!(status.success(), "{program} {args} failed");
}

#[test]
fn a_known_next_hop_gets_its_mac_addresses_and_a_redirect() {
    let Some(object) = xdp_object_or_skip("a_known_next_hop_gets_its_mac_addresses_and_a_redirect")
    else {
        return;
    };
    in_fresh_namespace(move || {
        for args in [
            "link set lo up",
            "link add l4n0 address 02:00:00:00:aa:01 type veth peer name l4n1",
            "addr add 10.0.1.254/24 dev l4n0",
            "link set l4n0 up",
            "link set l4n1 up",
            "neigh replace 10.0.1.1 lladdr 02:00:00:00:bb:01 dev l4n0 nud permanent",
            "neigh replace 10.0.1.2 lladdr 02:00:00:00:bb:02 dev l4n0 nud permanent",
        ] {
            run_here("ip", args);
        }
        run_here("sysctl", "-qw net.ipv4.ip_forward=1");
        let config = config(CONFIG);
        let mut program = XdpProgram::load_from(&object).expect("load the XDP object");
        let (control, _inbox) = std::sync::mpsc::channel();
        let _balancer = L4Balancer::start(&config, &mut program, &control).expect("L4 maps");
        let packet = Packet::tcp("192.0.2.10", "10.100.0.1", 40_000, 80);
        let flow = packet.flow(true);
        let target = expected_target(&config, 0, &flow, &[true, true]);
        let (action, out) = run(&mut program, &packet.frame());
        assert_eq!(action, 4, "XDP_REDIRECT to the next hop's interface");
        let IpAddr::V4(t) = target else {
            unreachable!()
        };
        let mac = [2, 0, 0, 0, 0xbb, t.octets()[3]];
        assert_eq!(&out[..6], &mac, "destination MAC of the next hop");
        assert_eq!(
            &out[6..12],
            &[2, 0, 0, 0, 0xaa, 1],
            "source MAC of the egress interface"
        );
        assert_eq!(verdict_count(&program, Verdict::L4Forwarded), 1);
    });
}
