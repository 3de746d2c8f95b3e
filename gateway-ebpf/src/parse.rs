//! Header parsing for the XDP program: Ethernet, up to two VLAN tags (802.1ad/802.1Q),
//! IPv4 (with options), IPv6 (walking the common extension headers), TCP and UDP.
//!
//! Functions take raw packet bounds (`data`, `data_end`) and never read a byte they have
//! not checked against `data_end` first.

use gateway_common::ProtoCounter;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers walked before giving up (each is a bounded, unrolled step).
const MAX_IPV6_EXTENSIONS: usize = 6;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// An IPv6 address (IPv4 as IPv4-mapped IPv6) as four 32-bit words in packet (network)
/// byte order: copied, compared and hashed a word at a time, not byte by byte.
pub type Addr = [u32; 4];

/// The third word of an IPv4-mapped address (`::ffff:0:0/96`), in packet byte order.
const MAPPED_V4: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The address as the byte array the maps' keys hold (the same bytes, no copy).
#[inline(always)]
pub fn addr_bytes(addr: &Addr) -> [u8; 16] {
    // SAFETY: `[u32; 4]` and `[u8; 16]` have the same size, and every bit pattern is a
    // valid byte array.
    unsafe { core::mem::transmute::<Addr, [u8; 16]>(*addr) }
}

/// What the parser learned about an IP packet.
pub struct IpPacket {
    pub v6: bool,
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// Where the IP header starts (after Ethernet and any VLAN tags).
    pub l3_offset: usize,
    /// IP protocol of the transport header (after IPv6 extensions).
    pub protocol: u8,
    /// Transport class for the protocol counters.
    pub transport: ProtoCounter,
    /// Destination port in network byte order; 0 when there is no port to read.
    pub dst_port_be: u16,
    /// Source port in network byte order; 0 when there is no port to read.
    pub src_port_be: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// A non-first fragment: no transport header, judged by its source alone.
    pub later_fragment: bool,
}

/// What the parser learned about a frame.
pub enum Parsed {
    /// The frame ends before a header it announces, or a length field is impossible.
    Malformed,
    /// Not an IP packet.
    NonIp { vlan: bool },
    /// An IP packet.
    Ip { packet: IpPacket, vlan: bool },
}

/// Reads `N` bytes at `offset`, if they lie inside the packet.
#[inline(always)]
fn read<const N: usize>(data: usize, data_end: usize, offset: usize) -> Option<[u8; N]> {
    // Verifier workaround: launder the start pointer through the stack so LLVM cannot
    // re-associate `data + offset + k` into `(data + k) + offset`, a pointer the
    // verifier never saw checked against `data_end`.
    // SAFETY: a volatile read of a local.
    let start = unsafe { core::ptr::read_volatile(&(data + offset)) };
    if start + N > data_end {
        return None;
    }
    // SAFETY: the N bytes at `start` were checked to lie before `data_end`.
    Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
}

#[inline(always)]
fn read_u8(data: usize, data_end: usize, offset: usize) -> Option<u8> {
    read::<1>(data, data_end, offset).map(|b| b[0])
}

#[inline(always)]
fn read_u16_be(data: usize, data_end: usize, offset: usize) -> Option<u16> {
    read::<2>(data, data_end, offset).map(u16::from_be_bytes)
}

/// Parses a frame laid out between `data` and `data_end`.
#[inline(always)]
pub fn parse_packet(data: usize, data_end: usize) -> Parsed {
    let Some(mut ethertype) = read_u16_be(data, data_end, 12) else {
        return Parsed::Malformed;
    };
    let mut offset = ETH_HLEN;
    let mut vlan = false;
    // Up to two tags (802.1ad outer, 802.1Q inner); unrolled for the verifier.
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        vlan = true;
        let Some(inner) = read_u16_be(data, data_end, offset + 2) else {
            return Parsed::Malformed;
        };
        ethertype = inner;
        offset += VLAN_HLEN;
    }
    let packet = match ethertype {
        ETH_P_IP => parse_ipv4(data, data_end, offset),
        ETH_P_IPV6 => parse_ipv6(data, data_end, offset),
        _ => return Parsed::NonIp { vlan },
    };
    match packet {
        Some(packet) => Parsed::Ip { packet, vlan },
        None => Parsed::Malformed,
    }
}

/// The fixed IPv4 header: its 20 bytes as five words, read through one bounds check.
#[inline(always)]
fn parse_ipv4(data: usize, data_end: usize, offset: usize) -> Option<IpPacket> {
    let header = read::<20>(data, data_end, offset)?;
    let words = read_words::<5>(&header);
    let version_ihl = header[0];
    let ihl = ((version_ihl & 0x0F) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 || data + offset + ihl > data_end {
        return None;
    }
    let frag = u16::from_be_bytes([header[6], header[7]]);
    let ip = IpFields {
        offset,
        protocol: header[9],
        later_fragment: frag & 0x1FFF != 0,
        v6: false,
        src: [0, 0, MAPPED_V4, words[3]],
        dst: [0, 0, MAPPED_V4, words[4]],
    };
    transport(data, data_end, offset + ihl, ip)
}

/// The first `4 × W` bytes as words in packet byte order.
#[inline(always)]
fn read_words<const W: usize>(bytes: &[u8]) -> [u32; W] {
    let mut words = [0u32; W];
    for (i, word) in words.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]);
    }
    words
}

#[inline(always)]
fn parse_ipv6(data: usize, data_end: usize, offset: usize) -> Option<IpPacket> {
    let header = read::<IPV6_HLEN>(data, data_end, offset)?;
    let words = read_words::<10>(&header);
    if header[0] >> 4 != 6 {
        return None;
    }
    let mut next_header = header[6];
    let src = [words[2], words[3], words[4], words[5]];
    let dst = [words[6], words[7], words[8], words[9]];
    let mut at = offset + IPV6_HLEN;
    let mut later_fragment = false;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let length = match next_header {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                (read_u8(data, data_end, at + 1)? as usize + 1) * 8
            }
            IPV6_AUTH => (read_u8(data, data_end, at + 1)? as usize + 2) * 4,
            IPV6_FRAGMENT => {
                let fragment_offset = read_u16_be(data, data_end, at + 2)? >> 3;
                later_fragment = fragment_offset != 0;
                8
            }
            _ => break,
        };
        next_header = read_u8(data, data_end, at)?;
        at += length;
    }
    let ip = IpFields {
        offset,
        protocol: next_header,
        later_fragment,
        v6: true,
        src,
        dst,
    };
    transport(data, data_end, at, ip)
}

/// What the network layer told about a packet.
struct IpFields {
    offset: usize,
    protocol: u8,
    later_fragment: bool,
    v6: bool,
    src: Addr,
    dst: Addr,
}

/// Reads the transport header at `offset`; `None` when it is cut short.
#[inline(always)]
fn transport(data: usize, data_end: usize, offset: usize, ip: IpFields) -> Option<IpPacket> {
    let protocol = ip.protocol;
    let mut packet = IpPacket {
        v6: ip.v6,
        src: ip.src,
        dst: ip.dst,
        l3_offset: ip.offset,
        protocol,
        transport: ProtoCounter::OtherL4,
        dst_port_be: 0,
        src_port_be: 0,
        tcp_flags: 0,
        later_fragment: ip.later_fragment,
    };
    // A non-first fragment carries no transport header.
    if ip.later_fragment {
        return Some(packet);
    }
    // Each header is read whole through one bounds check: the verifier tracks one
    // packet pointer per check, and loads through a re-derived pointer lose the range.
    match protocol {
        IPPROTO_TCP => {
            let header = read::<TCP_MIN_HLEN>(data, data_end, offset)?;
            let hlen = ((header[12] >> 4) as usize) * 4;
            if hlen < TCP_MIN_HLEN || data + offset + hlen > data_end {
                return None;
            }
            packet.src_port_be = u16::from_ne_bytes([header[0], header[1]]);
            packet.dst_port_be = u16::from_ne_bytes([header[2], header[3]]);
            packet.tcp_flags = header[13];
            packet.transport = ProtoCounter::Tcp;
        }
        IPPROTO_UDP => {
            let header = read::<UDP_HLEN>(data, data_end, offset)?;
            packet.src_port_be = u16::from_ne_bytes([header[0], header[1]]);
            packet.dst_port_be = u16::from_ne_bytes([header[2], header[3]]);
            packet.transport = ProtoCounter::Udp;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => packet.transport = ProtoCounter::Icmp,
        _ => {}
    }
    Some(packet)
}
