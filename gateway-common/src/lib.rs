//! Types shared by the XDP program (`gateway-ebpf`) and userspace (`gateway::xdp`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of `bool`, with explicit padding and a
//! compile-time size assertion, so both sides agree on the byte layout of every map entry.
//! Map names are constants; a changed layout gets a new versioned name.
#![no_std]

/// Name of the per-CPU array that counts packets per protocol class.
pub const PROTO_STATS_MAP: &str = "PROTO_STATS_V1";

/// Name of the XDP entry point in the object file.
pub const XDP_PROGRAM: &str = "gateway_xdp";

/// One slot of [`PROTO_STATS_MAP`]: what the XDP parser saw.
///
/// A packet increments exactly one network-layer slot (`Ipv4`, `Ipv6`, `NonIp`,
/// `Malformed`) and, when it is IP and well formed, exactly one transport slot.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoCounter {
    /// IPv4 packets (after any VLAN tags).
    Ipv4 = 0,
    /// IPv6 packets (after any VLAN tags).
    Ipv6 = 1,
    /// Frames that are neither IPv4 nor IPv6 (ARP, LLDP, ...).
    NonIp = 2,
    /// Frames cut short or with impossible header lengths.
    Malformed = 3,
    /// TCP segments.
    Tcp = 4,
    /// UDP datagrams.
    Udp = 5,
    /// ICMP and ICMPv6.
    Icmp = 6,
    /// Any other transport protocol, and non-first fragments.
    OtherL4 = 7,
    /// Frames that carried at least one 802.1Q/802.1ad tag.
    Vlan = 8,
}

impl ProtoCounter {
    /// Number of slots in [`PROTO_STATS_MAP`].
    pub const COUNT: u32 = 9;

    /// Every counter, in slot order, for userspace reports.
    pub const ALL: [ProtoCounter; Self::COUNT as usize] = [
        Self::Ipv4,
        Self::Ipv6,
        Self::NonIp,
        Self::Malformed,
        Self::Tcp,
        Self::Udp,
        Self::Icmp,
        Self::OtherL4,
        Self::Vlan,
    ];

    /// Stable lower-case name for logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::NonIp => "non_ip",
            Self::Malformed => "malformed",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::OtherL4 => "other_l4",
            Self::Vlan => "vlan",
        }
    }
}

/// Packet and byte counts of one [`ProtoCounter`] slot on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes of those packets, from the start of the Ethernet header.
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCounter>() == 16);

// SAFETY: `PacketCounter` is `repr(C)`, `Copy`, made of two `u64`s with no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PacketCounter {}
