//! Types shared by the XDP program (`gateway-ebpf`) and userspace (`gateway::xdp`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of `bool`, with explicit padding and a
//! compile-time size assertion, so both sides agree on the byte layout of every map entry.
//! Map names are constants; a changed layout gets a new versioned name.
#![no_std]

mod l4;
mod steer;
pub use l4::*;
pub use steer::*;

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

/// LPM trie of denied IPv4 sources: `Key<[u8; 4]>` (prefix length, address) → entry id.
pub const DENY_V4_MAP: &str = "DENY_V4";
/// LPM trie of denied IPv6 sources: `Key<[u8; 16]>` → entry id.
pub const DENY_V6_MAP: &str = "DENY_V6";
/// LPM trie of allowed IPv4 sources.
pub const ALLOW_V4_MAP: &str = "ALLOW_V4";
/// LPM trie of allowed IPv6 sources.
pub const ALLOW_V6_MAP: &str = "ALLOW_V6";
/// Hash of denied IPv4 prefixes by length ([`PrefixKeyV4`] → entry id): the same
/// entries as [`DENY_V4_MAP`], looked up one length at a time when the list has few
/// distinct lengths (a hash probe costs a fraction of a trie walk).
pub const DENY_V4_BY_LENGTH_MAP: &str = "DENY_V4_BYLEN_V1";
/// [`DENY_V4_BY_LENGTH_MAP`] for IPv6 ([`PrefixKeyV6`]).
pub const DENY_V6_BY_LENGTH_MAP: &str = "DENY_V6_BYLEN_V1";
/// [`DENY_V4_BY_LENGTH_MAP`] for the allow list.
pub const ALLOW_V4_BY_LENGTH_MAP: &str = "ALLOW_V4_BYLEN_V1";
/// [`DENY_V6_BY_LENGTH_MAP`] for the allow list.
pub const ALLOW_V6_BY_LENGTH_MAP: &str = "ALLOW_V6_BYLEN_V1";
/// Per-CPU hit counters of deny entries, indexed by entry id.
pub const DENY_HITS_MAP: &str = "DENY_HITS_V1";
/// Per-CPU hit counters of allow entries, indexed by entry id.
pub const ALLOW_HITS_MAP: &str = "ALLOW_HITS_V1";
/// Bitmap of protected destination ports, TCP then UDP: an array of `u64` words
/// (see [`protected_slot`]). An array lookup is a few instructions; a hash lookup was
/// a fifth of the deny-hit path.
pub const PROTECTED_MAP: &str = "PROTECTED_V2";
/// Words in [`PROTECTED_MAP`]: 65,536 ports × 2 protocols / 64 bits.
pub const PROTECTED_WORDS: u32 = 2048;
/// One-slot array holding the [`EdgeSettings`].
pub const SETTINGS_MAP: &str = "EDGE_SETTINGS_V2";
/// Per-CPU packet/byte counts per [`Verdict`].
pub const VERDICT_MAP: &str = "VERDICT_STATS_V3";
/// LRU per-CPU hash of SYN token buckets per source ([`SourceKey`] → [`TokenBucket`]).
pub const SYN_BUCKETS_MAP: &str = "SYN_BUCKETS_V1";

/// Hash of the live ACL entries ([`LiveEntryKey`] → expiry in Unix seconds, 0 for
/// none). The XDP program never reads it: it is pinned beside the lists so a restarted
/// gateway (and the CLI) finds which entries were added live and when they expire.
pub const LIVE_ACL_MAP: &str = "LIVE_ACL_V1";

/// Capacity of each deny/allow list per address family (and of the hit counters).
pub const MAX_LIST_ENTRIES: u32 = 65_536;
/// Sources tracked by the SYN guard per CPU; the least recently seen are evicted.
pub const MAX_SYN_SOURCES: u32 = 65_536;

/// What the edge policy decided for a packet; one slot of [`VERDICT_MAP`] each.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not subject to the lists (not IP, or not to a protected destination).
    Unprotected = 0,
    /// To a protected destination and admitted.
    Admitted = 1,
    /// Dropped: the source matches the deny list.
    DeniedByList = 2,
    /// Dropped: an allow list is active and the source is not in it.
    NotAllowed = 3,
    /// Dropped: the source exceeded its budget of new TCP connections.
    SynBudgetExceeded = 4,
    /// To an L4 VIP: encapsulated and sent to a target (XDP_TX or redirect).
    L4Forwarded = 5,
    /// To an L4 VIP: encapsulated and handed to the kernel, which forwards it (the next
    /// hop's neighbour entry was not resolved yet).
    L4ForwardedByKernel = 6,
    /// Dropped: to an L4 VIP whose service has no live target.
    L4NoTarget = 7,
    /// To an L4 VIP but not balanced (a later fragment, a VLAN-tagged frame, or a
    /// frame that cannot grow): left to the kernel.
    L4Unbalanced = 8,
    /// To an L4 VIP, a flow the connection table did not know and, past this CPU's
    /// admission rate of new flows (a flood of them), did not remember either:
    /// encapsulated for the Maglev ring's target and sent on (by the program or by the
    /// kernel), as a remembered flow would be.
    L4ForwardedUnremembered = 9,
}

impl Verdict {
    /// Number of slots in [`VERDICT_MAP`].
    pub const COUNT: u32 = 10;

    /// Every verdict, in slot order.
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Self::Unprotected,
        Self::Admitted,
        Self::DeniedByList,
        Self::NotAllowed,
        Self::SynBudgetExceeded,
        Self::L4Forwarded,
        Self::L4ForwardedByKernel,
        Self::L4NoTarget,
        Self::L4Unbalanced,
        Self::L4ForwardedUnremembered,
    ];

    /// Whether the packet is dropped.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Self::DeniedByList | Self::NotAllowed | Self::SynBudgetExceeded | Self::L4NoTarget
        )
    }

    /// Stable lower-case name for logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unprotected => "unprotected",
            Self::Admitted => "admitted",
            Self::DeniedByList => "denied_by_list",
            Self::NotAllowed => "not_allowed",
            Self::SynBudgetExceeded => "syn_budget_exceeded",
            Self::L4Forwarded => "l4_forwarded",
            Self::L4ForwardedByKernel => "l4_forwarded_by_kernel",
            Self::L4NoTarget => "l4_no_target",
            Self::L4Unbalanced => "l4_unbalanced",
            Self::L4ForwardedUnremembered => "l4_forwarded_unremembered",
        }
    }
}

/// Word index and bit of a protected destination in [`PROTECTED_MAP`], for a port in
/// host byte order and an IP protocol (6 TCP, 17 UDP); `None` for other protocols.
#[inline(always)]
pub const fn protected_slot(port: u16, protocol: u8) -> Option<(u32, u64)> {
    let base = match protocol {
        6 => 0u32,
        17 => 65_536u32,
        _ => return None,
    };
    let index = base + port as u32;
    Some((index / 64, 1u64 << (index % 64)))
}

/// [`EdgeSettings::flags`]: an allow list is active.
pub const EDGE_ALLOW_ACTIVE: u32 = 1;
/// [`EdgeSettings::flags`]: the lists cover all traffic, not just protected ports.
pub const EDGE_PROTECT_ALL: u32 = 2;
/// [`EdgeSettings::flags`]: the SYN guard is on.
pub const EDGE_SYN_GUARD: u32 = 4;

/// Most distinct prefix lengths a list (per family) may have and still be looked up in
/// its by-length hash; past that, one trie walk is cheaper than that many probes.
pub const MAX_HASHED_LENGTHS: usize = 4;
/// [`ListShape::count`]: look this list up in its LPM trie.
pub const LOOKUP_BY_TRIE: u8 = 0xff;

/// How the program looks up one list of one family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListShape {
    /// 0: the list is empty (no lookup at all); 1..=[`MAX_HASHED_LENGTHS`]: probe the
    /// by-length hash at `lengths[..count]`, longest first; [`LOOKUP_BY_TRIE`]: the trie.
    pub count: u8,
    pub lengths: [u8; MAX_HASHED_LENGTHS],
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<ListShape>() == 8);

/// Index of a list and family in [`EdgeSettings::shapes`].
pub const SHAPE_DENY_V4: usize = 0;
/// See [`SHAPE_DENY_V4`].
pub const SHAPE_DENY_V6: usize = 1;
/// See [`SHAPE_DENY_V4`].
pub const SHAPE_ALLOW_V4: usize = 2;
/// See [`SHAPE_DENY_V4`].
pub const SHAPE_ALLOW_V6: usize = 3;

/// Switches of the edge policy, written by userspace into [`SETTINGS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeSettings {
    /// `EDGE_*` bits.
    pub flags: u32,
    /// New TCP connections per second each source may open (per CPU).
    pub syn_rate_per_sec: u32,
    /// Burst allowance of the SYN token bucket.
    pub syn_burst: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// How each list and family is looked up (`SHAPE_*` order).
    pub shapes: [ListShape; 4],
}

const _: () = assert!(core::mem::size_of::<EdgeSettings>() == 48);

/// A key of the IPv4 by-length hashes: the prefix length and the masked address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixKeyV4 {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<PrefixKeyV4>() == 8);

/// A key of the IPv6 by-length hashes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixKeyV6 {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<PrefixKeyV6>() == 20);

impl PrefixKeyV4 {
    /// `addr` cut to its first `prefix_len` bits.
    #[inline(always)]
    pub fn masked(addr: [u8; 4], prefix_len: u8) -> Self {
        let bits = u32::from(prefix_len.min(32));
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        Self {
            prefix_len: bits,
            addr: (u32::from_be_bytes(addr) & mask).to_be_bytes(),
        }
    }
}

impl PrefixKeyV6 {
    /// `addr` cut to its first `prefix_len` bits.
    #[inline(always)]
    pub fn masked(addr: &[u8; 16], prefix_len: u8) -> Self {
        let bits = u32::from(prefix_len.min(128));
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            let start = (i as u32) * 8;
            if bits >= start + 8 {
                out[i] = addr[i];
            } else if bits > start {
                out[i] = addr[i] & (0xffu8 << (8 - (bits - start)));
            }
            i += 1;
        }
        Self {
            prefix_len: bits,
            addr: out,
        }
    }
}

/// A source address; IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<SourceKey>() == 16);

/// One live ACL entry: its list, and the prefix (IPv4 in the first four bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LiveEntryKey {
    /// [`LIVE_LIST_DENY`] or [`LIVE_LIST_ALLOW`].
    pub list: u8,
    /// 4 or 6.
    pub family: u8,
    pub prefix_len: u8,
    pub _pad: u8,
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<LiveEntryKey>() == 20);

/// [`LiveEntryKey::list`] of a deny entry.
pub const LIVE_LIST_DENY: u8 = 0;
/// [`LiveEntryKey::list`] of an allow entry.
pub const LIVE_LIST_ALLOW: u8 = 1;

/// A token bucket of the SYN guard, in thousandths of a token.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub milli_tokens: u64,
    pub last_ns: u64,
}

const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);

/// Longest gap credited at once: anything longer refills the bucket completely anyway
/// (for rates of 1/s and above), and the cap keeps `gap × rate` far from overflowing.
const MAX_REFILL_NS: u64 = 10_000_000_000;
/// Rates above this are treated as this (a billion new connections a second is no limit).
const MAX_RATE_PER_SEC: u64 = 1_000_000_000;

impl TokenBucket {
    /// A bucket holding its whole burst at `now_ns`.
    #[inline(always)]
    pub const fn full(burst: u32, now_ns: u64) -> Self {
        Self {
            milli_tokens: burst as u64 * 1000,
            last_ns: now_ns,
        }
    }

    /// Refills at `rate_per_sec` for the time since the last call (capped at `burst`
    /// tokens), then takes one token if there is one. The one rule shared by the XDP
    /// SYN guard and its userspace fallback.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, rate_per_sec: u32, burst: u32) -> bool {
        let capacity = burst as u64 * 1000;
        let gap = now_ns.saturating_sub(self.last_ns).min(MAX_REFILL_NS);
        // Tokens accrue at `rate` per second, in thousandths: rate × ns / 1e6. With the
        // gap ≤ 1e10 and the rate capped at 1e9/s the product stays below 2^64 (and
        // needs no 128-bit multiply, which BPF lacks).
        let rate = (rate_per_sec as u64).min(MAX_RATE_PER_SEC);
        let earned = gap * rate / 1_000_000;
        let tokens = (self.milli_tokens.saturating_add(earned)).min(capacity);
        self.last_ns = now_ns;
        if tokens >= 1000 {
            self.milli_tokens = tokens - 1000;
            true
        } else {
            self.milli_tokens = tokens;
            false
        }
    }
}

// SAFETY: all of these are `repr(C)`, `Copy`, with explicit padding and no pointers.
#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::EdgeSettings {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::TokenBucket {}
    unsafe impl aya::Pod for super::LiveEntryKey {}
    unsafe impl aya::Pod for super::PrefixKeyV4 {}
    unsafe impl aya::Pod for super::PrefixKeyV6 {}
}

#[cfg(test)]
mod tests {
    use super::{PrefixKeyV4, PrefixKeyV6, TokenBucket};

    #[test]
    fn prefix_keys_keep_only_the_prefix_bits() {
        assert_eq!(
            PrefixKeyV4::masked([10, 20, 30, 40], 24).addr,
            [10, 20, 30, 0]
        );
        assert_eq!(PrefixKeyV4::masked([10, 20, 30, 40], 0).addr, [0; 4]);
        assert_eq!(
            PrefixKeyV4::masked([10, 20, 30, 41], 31).addr,
            [10, 20, 30, 40]
        );
        assert_eq!(
            PrefixKeyV4::masked([10, 20, 30, 40], 32).addr,
            [10, 20, 30, 40]
        );
        let addr = [
            0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
        ];
        let key = PrefixKeyV6::masked(&addr, 36);
        assert_eq!(key.prefix_len, 36);
        assert_eq!(key.addr[..5], [0x20, 0x01, 0x0d, 0xb8, 0xf0]);
        assert!(key.addr[5..].iter().all(|b| *b == 0));
        assert_eq!(PrefixKeyV6::masked(&addr, 128).addr, addr);
    }

    #[test]
    fn token_bucket_spends_refills_and_survives_extreme_rates() {
        let mut bucket = TokenBucket::full(2, 0);
        assert!(bucket.take(0, 1, 2) && bucket.take(0, 1, 2) && !bucket.take(0, 1, 2));
        assert!(
            !bucket.take(500_000_000, 1, 2),
            "half a second at 1/s is half a token"
        );
        assert!(bucket.take(1_000_000_000, 1, 2));
        // The largest rate after a long gap must neither overflow nor exceed the burst.
        let mut bucket = TokenBucket::full(3, 0);
        assert!((0..3).all(|_| bucket.take(0, u32::MAX, 3)));
        let admitted = (0..5)
            .filter(|_| bucket.take(u64::MAX / 2, u32::MAX, 3))
            .count();
        assert_eq!(admitted, 3);
        // A clock that goes backwards earns nothing.
        let mut bucket = TokenBucket::full(1, 100);
        assert!(bucket.take(100, 10, 1));
        assert!(!bucket.take(50, 10, 1));
    }
}
