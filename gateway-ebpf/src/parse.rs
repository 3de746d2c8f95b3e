//! Header parsing for the XDP program: Ethernet, 802.1Q/802.1ad, IPv4, IPv6, TCP, UDP.
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
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// What the parser learned about a frame.
pub enum Parsed {
    /// The frame ends before a header it announces, or a length field is impossible.
    Malformed,
    /// Not an IP packet.
    NonIp { vlan: bool },
    /// An IP packet and its transport class (`Tcp`, `Udp`, `Icmp` or `OtherL4`).
    Ip {
        v6: bool,
        transport: ProtoCounter,
        vlan: bool,
    },
}

/// Reads a big-endian u16 at `offset`, if it lies inside the packet.
#[inline(always)]
fn read_u16_be(data: usize, data_end: usize, offset: usize) -> Option<u16> {
    if data + offset + 2 > data_end {
        return None;
    }
    // SAFETY: the two bytes at `data + offset` were checked to lie before `data_end`.
    let bytes = unsafe { core::ptr::read_unaligned((data + offset) as *const [u8; 2]) };
    Some(u16::from_be_bytes(bytes))
}

/// Reads one byte at `offset`, if it lies inside the packet.
#[inline(always)]
fn read_u8(data: usize, data_end: usize, offset: usize) -> Option<u8> {
    if data + offset + 1 > data_end {
        return None;
    }
    // SAFETY: the byte at `data + offset` was checked to lie before `data_end`.
    Some(unsafe { *((data + offset) as *const u8) })
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
    match ethertype {
        ETH_P_IP => parse_ipv4(data, data_end, offset, vlan),
        ETH_P_IPV6 => parse_ipv6(data, data_end, offset, vlan),
        _ => Parsed::NonIp { vlan },
    }
}

#[inline(always)]
fn parse_ipv4(data: usize, data_end: usize, offset: usize, vlan: bool) -> Parsed {
    let Some(version_ihl) = read_u8(data, data_end, offset) else {
        return Parsed::Malformed;
    };
    let ihl = ((version_ihl & 0x0F) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    let (Some(frag), Some(protocol)) = (
        read_u16_be(data, data_end, offset + 6),
        read_u8(data, data_end, offset + 9),
    ) else {
        return Parsed::Malformed;
    };
    if data + offset + ihl > data_end {
        return Parsed::Malformed;
    }
    // A non-first fragment carries no transport header.
    if frag & 0x1FFF != 0 {
        return Parsed::Ip {
            v6: false,
            transport: ProtoCounter::OtherL4,
            vlan,
        };
    }
    let transport = classify_transport(data, data_end, offset + ihl, protocol);
    match transport {
        Some(transport) => Parsed::Ip {
            v6: false,
            transport,
            vlan,
        },
        None => Parsed::Malformed,
    }
}

#[inline(always)]
fn parse_ipv6(data: usize, data_end: usize, offset: usize, vlan: bool) -> Parsed {
    let (Some(version), Some(next_header)) = (
        read_u8(data, data_end, offset),
        read_u8(data, data_end, offset + 6),
    ) else {
        return Parsed::Malformed;
    };
    if version >> 4 != 6 || data + offset + IPV6_HLEN > data_end {
        return Parsed::Malformed;
    }
    match classify_transport(data, data_end, offset + IPV6_HLEN, next_header) {
        Some(transport) => Parsed::Ip {
            v6: true,
            transport,
            vlan,
        },
        None => Parsed::Malformed,
    }
}

/// Classifies the transport header at `offset`; `None` when it is cut short.
#[inline(always)]
fn classify_transport(
    data: usize,
    data_end: usize,
    offset: usize,
    protocol: u8,
) -> Option<ProtoCounter> {
    match protocol {
        IPPROTO_TCP => {
            let data_offset = read_u8(data, data_end, offset + 12)?;
            let hlen = ((data_offset >> 4) as usize) * 4;
            if hlen < TCP_MIN_HLEN || data + offset + hlen > data_end {
                return None;
            }
            Some(ProtoCounter::Tcp)
        }
        IPPROTO_UDP => {
            if data + offset + UDP_HLEN > data_end {
                return None;
            }
            Some(ProtoCounter::Udp)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => Some(ProtoCounter::Icmp),
        _ => Some(ProtoCounter::OtherL4),
    }
}
