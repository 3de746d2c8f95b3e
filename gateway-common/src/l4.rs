//! Map layouts of the L4 balancer (Katran's model): VIPs, their Maglev rings, the
//! targets ("reals"), the connection table, counters, and the flow hash both sides use.
//!
//! Userspace builds the rings and writes every map; the XDP program only looks up,
//! hashes, encapsulates and counts.

/// Hash of IPv6 L4 services ([`VipKey`] → [`VipService`]).
pub const L4_SERVICES_MAP: &str = "L4_SERVICES_V1";
/// Hash of IPv4 L4 services ([`VipKeyV4`] → [`VipService`]): the 8-byte key hashes and
/// compares in less time than the 20-byte one, on every packet to a VIP port.
pub const L4_SERVICES_V4_MAP: &str = "L4_SERVICES_V4_V1";
/// Array of ring slots (`u32` real id, [`NO_REAL`] when the service has no live target);
/// each service owns `ring_size` slots from `ring_offset`.
pub const L4_RINGS_MAP: &str = "L4_RINGS_V1";
/// Array of [`Real`]s by real id.
pub const L4_REALS_MAP: &str = "L4_REALS_V1";
/// Array of IPv4 [`VipSlot`]s, [`L4_VIP_INDEX_SLOTS`] long: each IPv4 VIP in the slot
/// [`IndexedVip::index_slot`] names, so a packet finds its service with one array
/// read, which the verifier inlines, instead of a hash lookup, which is a kernel call.
/// The hash map [`L4_SERVICES_V4_MAP`] stays the authority: a slot read while userspace
/// rewrites it, or one marked [`VIP_SLOT_SHARED`], sends the program there.
pub const L4_VIP_INDEX_MAP: &str = "L4_VIP_INDEX_V1";
/// The same index for IPv6 VIPs ([`VipSlot<VipKey>`]s, in front of
/// [`L4_SERVICES_MAP`]).
pub const L4_VIP_INDEX_V6_MAP: &str = "L4_VIP_INDEX_V6_V1";
/// Slots in the VIP index: a power of two, 16 per possible service.
pub const L4_VIP_INDEX_SLOTS: u32 = 4096;
/// [`VipSlot::flags`]: the slot holds a VIP.
pub const VIP_SLOT_IN_USE: u32 = 1;
/// [`VipSlot::flags`]: another VIP places here too (and is found in the hash map only).
pub const VIP_SLOT_SHARED: u32 = 2;

/// LRU hash of established IPv6 flows ([`FlowKey`] → [`FlowTarget`]).
pub const L4_FLOWS_MAP: &str = "L4_FLOWS_V1";
/// LRU hash of established IPv4 flows ([`FlowKeyV4`] → [`FlowTarget`]): every packet
/// of a known flow looks its key up, and a 16-byte key hashes and compares in well
/// under half the time of the 40-byte IPv6-capable one.
pub const L4_FLOWS_V4_MAP: &str = "L4_FLOWS_V4_V1";
/// Per-CPU [`L4Counter`]s by service id.
pub const L4_SERVICE_STATS_MAP: &str = "L4_SERVICE_STATS_V1";
/// Per-CPU [`L4Counter`]s by real id.
pub const L4_REAL_STATS_MAP: &str = "L4_REAL_STATS_V1";
/// One-slot array holding the [`L4Settings`].
pub const L4_SETTINGS_MAP: &str = "L4_SETTINGS_V2";
/// Per-CPU one-slot array of [`AdmissionWindow`]s: how many new flows this CPU's
/// connection table took in the current second (only the program uses it).
pub const L4_ADMISSION_MAP: &str = "L4_ADMISSION_V1";
/// Bitmap of the (protocol, port) pairs some VIP is balanced on, laid out as
/// `PROTECTED_MAP` (see `protected_slot`): a packet to any other port skips the VIP
/// hash lookup, so non-VIP traffic pays one array read for the L4 stage.
pub const L4_PORTS_MAP: &str = "L4_PORTS_V1";

/// Most L4 services (VIP, port, protocol) at once.
pub const MAX_L4_SERVICES: u32 = 256;
/// Most targets over all services (a target of two services is two reals).
pub const MAX_L4_REALS: u32 = 4096;
/// Ring slots shared by all services: 64 services at the default size of 65,537.
pub const L4_RING_CAPACITY: u32 = 1 << 22;
/// IPv4 flows remembered; the least recently seen are evicted (about 72 MiB of kernel
/// memory).
pub const MAX_L4_FLOWS: u32 = 1 << 20;
/// IPv6 flows remembered, likewise (about 24 MiB).
pub const MAX_L4_FLOWS_V6: u32 = 1 << 18;
/// A ring slot of a service without any live target.
pub const NO_REAL: u32 = u32::MAX;

/// A VIP: address (IPv4 as IPv4-mapped IPv6), destination port in network byte order
/// (0: every port) and IP protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub protocol: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// The first 12 bytes of an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
pub const IPV4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

impl VipKey {
    /// The compact key of an IPv4 VIP (`None` for IPv6): what [`L4_SERVICES_V4_MAP`]
    /// is keyed by.
    pub fn v4(&self) -> Option<VipKeyV4> {
        let (prefix, addr) = self.addr.split_at(12);
        (prefix == IPV4_MAPPED_PREFIX).then(|| VipKeyV4 {
            addr: [addr[0], addr[1], addr[2], addr[3]],
            port_be: self.port_be,
            protocol: self.protocol,
            _pad: 0,
        })
    }
}

/// An IPv4 VIP: address, destination port in network byte order (0: every port) and
/// IP protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKeyV4 {
    pub addr: [u8; 4],
    pub port_be: u16,
    pub protocol: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<VipKeyV4>() == 8);

impl VipKeyV4 {
    /// The key as the two little-endian words the index hashes (how the XDP program
    /// assembles it).
    #[inline(always)]
    pub fn words(&self) -> [u32; 2] {
        let port = self.port_be.to_ne_bytes();
        [
            u32::from_le_bytes(self.addr),
            u32::from_le_bytes([port[0], port[1], self.protocol, self._pad]),
        ]
    }
}

/// The VIP index slot of a key given as [`VipKeyV4::words`].
#[inline(always)]
pub fn vip_index_slot(words: [u32; 2]) -> u32 {
    fmix32(words[0].wrapping_mul(0xcc9e_2d51) ^ words[1]) & (L4_VIP_INDEX_SLOTS - 1)
}

/// A VIP key kind with an index ([`VipKeyV4`], [`VipKey`]): both are whole 4-byte
/// words of plain integers with no implicit padding, which [`VipSlot::check_of`] reads
/// as words. Sealed: only these two.
pub trait IndexedVip: Copy + PartialEq + Default + sealed::Sealed {
    /// The name of its index map.
    const INDEX_MAP: &'static str;
    /// Its slot in its index.
    fn index_slot(&self) -> u32;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::VipKeyV4 {}
    impl Sealed for super::VipKey {}
}

impl IndexedVip for VipKeyV4 {
    const INDEX_MAP: &'static str = L4_VIP_INDEX_MAP;

    #[inline(always)]
    fn index_slot(&self) -> u32 {
        vip_index_slot(self.words())
    }
}

impl IndexedVip for VipKey {
    const INDEX_MAP: &'static str = L4_VIP_INDEX_V6_MAP;

    #[inline(always)]
    fn index_slot(&self) -> u32 {
        let a = &self.addr;
        let word = |i: usize| u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        let port = self.port_be.to_ne_bytes();
        let rest = u32::from_le_bytes([port[0], port[1], self.protocol, self._pad]);
        flow_cache_slot(
            &[word(0), word(4), word(8), word(12), rest],
            L4_VIP_INDEX_SLOTS,
        )
    }
}

/// One slot of a VIP index (IPv4 by default).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot<K = VipKeyV4> {
    pub key: K,
    pub service: VipService,
    /// `VIP_SLOT_*` bits.
    pub flags: u32,
    /// [`VipSlot::check_of`] the fields above. Userspace rewrites a slot in place while
    /// packets read it: a read that caught part of the old slot and part of the new one
    /// fails the check and goes to the hash map. An all-zero slot checks (an empty one).
    pub check: u32,
}

const _: () = assert!(core::mem::size_of::<VipSlot>() == 32);
const _: () = assert!(core::mem::size_of::<VipSlot<VipKey>>() == 44);

impl<K: IndexedVip> VipSlot<K> {
    /// A slot with its check filled in.
    pub fn sealed(key: K, service: VipService, flags: u32) -> Self {
        let mut slot = Self {
            key,
            service,
            flags,
            check: 0,
        };
        slot.check = slot.check_of();
        slot
    }

    /// A mix of every word but the check: a bijection of a weighted sum (odd weights,
    /// powers of the golden ratio's), so two slots collide only when their sums do, and
    /// the all-zero slot gives 0.
    #[inline(always)]
    pub fn check_of(&self) -> u32 {
        const GOLDEN: u32 = 0x9e37_79b1;
        let words = core::mem::size_of::<Self>() / 4 - 1;
        let base = (self as *const Self).cast::<u32>();
        let mut sum = 0u32;
        let mut weight = GOLDEN;
        for i in 0..words {
            // SAFETY: `Self` is `words + 1` whole 4-byte words of plain integers (the
            // key kinds are sealed to two such layouts, asserted above), read in bounds.
            let word = unsafe { base.add(i).read_unaligned() };
            sum = sum.wrapping_add(word.wrapping_mul(weight));
            weight = weight.wrapping_mul(GOLDEN);
        }
        fmix32(sum)
    }
}

/// MurmurHash3's finalizer: a bijection on `u32` that spreads every input bit.
#[inline(always)]
const fn fmix32(mut hash: u32) -> u32 {
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

impl VipKeyV4 {
    /// The same VIP as a [`VipKey`] (IPv4-mapped).
    pub fn mapped(&self) -> VipKey {
        let mut addr = [0u8; 16];
        addr[..12].copy_from_slice(&IPV4_MAPPED_PREFIX);
        addr[12..].copy_from_slice(&self.addr);
        VipKey {
            addr,
            port_be: self.port_be,
            protocol: self.protocol,
            _pad: 0,
        }
    }
}

/// [`VipService::flags`]: hash only source, destination and protocol (no ports), so
/// every datagram of a client goes to one target whatever its source port.
pub const L4_HASH_NO_PORTS: u32 = 1;

/// What the program needs to balance a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipService {
    /// Slot in [`L4_SERVICE_STATS_MAP`].
    pub id: u32,
    /// First slot of this service's ring in [`L4_RINGS_MAP`].
    pub ring_offset: u32,
    /// Slots in the ring (a prime).
    pub ring_size: u32,
    /// `L4_HASH_*` bits.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<VipService>() == 16);

/// [`Real::flags`]: the slot holds a target.
pub const REAL_IN_USE: u32 = 1;
/// [`Real::flags`]: the target's address is IPv6 (else IPv4-mapped).
pub const REAL_V6: u32 = 2;
/// [`Real::flags`]: the target is down (failed health checks, or removed): flows that
/// remembered it are balanced afresh.
pub const REAL_DOWN: u32 = 4;

/// A target of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real {
    /// Where packets are tunnelled (IPv4 as IPv4-mapped IPv6).
    pub addr: [u8; 16],
    /// The service it belongs to, so a restarted gateway can map ids back to targets.
    pub vip: VipKey,
    /// `REAL_*` bits.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<Real>() == 40);

/// A flow: both addresses (IPv4-mapped for IPv4), both ports in network byte order
/// (zero when the service hashes without ports), and the protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// An IPv4 flow, laid out as [`FlowKey`] without the IPv4-mapped prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FlowKeyV4>() == 16);

/// Where a remembered flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTarget {
    pub real: u32,
    /// The flow's [`flow_hash`], kept so a known flow's packets skip hashing: the outer
    /// source and the IPv6 flow label still need it. (This was padding before; an entry
    /// written by an older program reads 0 here until its flow goes idle.)
    pub hash: u32,
}

const _: () = assert!(core::mem::size_of::<FlowTarget>() == 8);

/// Per-CPU array of IPv4 [`FlowCacheSlot`]s, [`L4_FLOW_CACHE_V4_SLOTS`] per CPU, at
/// [`flow_cache_slot`] of the key's words: a known flow's target found by one array
/// read, which the verifier inlines, instead of the connection table's hash lookup, a
/// kernel call (the largest single cost of a known flow's packet). Open vSwitch's
/// exact-match cache in front of its classifier is the same idea. The connection table
/// stays the authority: a slot is filled from it, and trusted only while the epoch it
/// was filled under is current, its target is up, and it was filled less than
/// [`FLOW_CACHE_REFRESH_JIFFIES`] ago.
pub const L4_FLOW_CACHE_V4_MAP: &str = "L4_FLOW_CACHE_V4_V1";
/// The same for IPv6 flows.
pub const L4_FLOW_CACHE_V6_MAP: &str = "L4_FLOW_CACHE_V6_V1";
/// IPv4 flow cache slots per CPU (a power of two; 256 KiB per CPU).
pub const L4_FLOW_CACHE_V4_SLOTS: u32 = 8192;
/// IPv6 flow cache slots per CPU (a power of two; 224 KiB per CPU).
pub const L4_FLOW_CACHE_V6_SLOTS: u32 = 4096;
/// After this many jiffies (1 s at HZ=250) a cached flow's next packet looks it up in
/// the connection table again: the lookup marks the flow as recently used there, so a
/// busy flow served from the cache is not the one a full table evicts.
pub const FLOW_CACHE_REFRESH_JIFFIES: u32 = 250;

/// One flow cache slot: the flow, where the connection table said it goes, the
/// [`L4Settings::flow_cache_epoch`] and the jiffies (low 32 bits) of that answer. Only
/// the program of the slot's own CPU reads or writes it; an all-zero slot never
/// matches (epochs start at 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSlot<K> {
    pub key: K,
    pub target: FlowTarget,
    pub epoch: u32,
    pub seen: u32,
}

const _: () = assert!(core::mem::size_of::<FlowCacheSlot<FlowKeyV4>>() == 32);
const _: () = assert!(core::mem::size_of::<FlowCacheSlot<FlowKey>>() == 56);

/// The flow cache slot of a flow key given as words, of a cache `slots` long (a power
/// of two). The words are weighted by distinct odd constants (powers of the golden
/// ratio's), so their products are independent and computed side by side, and no
/// change to one word leaves the sum the same; `fmix32` then spreads every bit of the
/// sum over the slot bits.
#[inline(always)]
pub fn flow_cache_slot<const N: usize>(words: &[u32; N], slots: u32) -> u32 {
    const GOLDEN: u32 = 0x9e37_79b1;
    let mut sum = 0u32;
    let mut weight = GOLDEN;
    for word in words {
        sum = sum.wrapping_add(word.wrapping_mul(weight));
        weight = weight.wrapping_mul(GOLDEN);
    }
    fmix32(sum) & (slots - 1)
}

/// Per-CPU array of [`NextHop`]s by real id: the FIB's answer for a target, reused
/// for [`NEXT_HOP_TTL_JIFFIES`] so the lookup is not paid on every packet.
pub const L4_NEXT_HOPS_MAP: &str = "L4_NEXT_HOPS_V1";
/// How long a cached next hop is trusted (jiffies: 64 ms at HZ=1000, 256 ms at HZ=250);
/// route and neighbour changes take effect within it.
pub const NEXT_HOP_TTL_JIFFIES: u64 = 64;

/// Where frames for a target leave: what `bpf_fib_lookup` said, until `expires`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// Egress interface; 0: nothing cached.
    pub ifindex: u32,
    /// Jiffies after which the FIB is asked again.
    pub expires: u64,
}

const _: () = assert!(core::mem::size_of::<NextHop>() == 24);

/// Packets, bytes and new flows of a service or a real on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L4Counter {
    pub packets: u64,
    pub bytes: u64,
    /// Flows the connection table did not know (balanced through the ring).
    pub new_flows: u64,
}

const _: () = assert!(core::mem::size_of::<L4Counter>() == 24);

/// [`L4Settings::flags`]: at least one service exists; without it the program skips
/// the VIP lookup.
pub const L4_ACTIVE: u32 = 1;
/// [`L4Settings::flags`]: some service takes every port of its VIP, so a packet whose
/// port is not in [`L4_PORTS_MAP`] is still looked up by address.
pub const L4_ALL_PORTS: u32 = 2;

/// Appliance-wide L4 settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L4Settings {
    /// `L4_*` bits.
    pub flags: u32,
    /// Outer IPv4 source: `source_v4 | (flow hash & source_v4_host_mask)`, both as
    /// read from memory in network order, so every flow gets its own outer source and
    /// the targets' NICs spread flows over their queues (RSS hashes the outer header).
    pub source_v4: [u8; 4],
    pub source_v4_host_mask: [u8; 4],
    /// Outer IPv6 source: the last four bytes take the flow hash under the mask.
    pub source_v6: [u8; 16],
    pub source_v6_host_mask: [u8; 4],
    /// New flows per second each CPU remembers in the connection table; 0: no limit.
    /// Past it (a flood of new flows, spoofed SYNs for one), packets are still balanced
    /// through the ring, to the same target, but not remembered: each insert into a full
    /// table evicts a flow that must keep its target when the ring changes.
    pub remembered_flows_per_cpu: u32,
    /// Raised before every change to a real (and with every settings write): a flow
    /// cache slot filled under an older epoch is not trusted. Without it a CPU could
    /// keep sending a flow to a target that went down and came back up while another
    /// CPU moved the flow elsewhere in the connection table.
    pub flow_cache_epoch: u32,
}

const _: () = assert!(core::mem::size_of::<L4Settings>() == 40);

/// One CPU's count of flows remembered in the current one-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionWindow {
    /// `bpf_ktime_get_ns` when the window began.
    pub started_ns: u64,
    /// Flows remembered since.
    pub remembered: u64,
}

const _: () = assert!(core::mem::size_of::<AdmissionWindow>() == 16);

/// MurmurHash3 (x86, 32-bit) of a flow, seeded: the same in the kernel and in
/// userspace, so tests and tools can predict where a flow goes, and every appliance
/// running this program agrees.
#[inline(always)]
pub fn flow_hash(flow: &FlowKey) -> u32 {
    flow_hash_words(
        &le_words(&flow.src),
        &le_words(&flow.dst),
        flow.src_port_be,
        flow.dst_port_be,
        flow.protocol,
    )
}

/// An address's 16 bytes as four little-endian words, as [`flow_hash_words`] takes them.
#[inline(always)]
pub fn le_words(addr: &[u8; 16]) -> [u32; 4] {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_le_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ]);
        i += 1;
    }
    words
}

/// [`flow_hash`] over addresses already held as little-endian words (how the XDP
/// program, on a little-endian target, reads them from the packet): no byte shuffling
/// on the per-packet path.
#[inline(always)]
pub fn flow_hash_words(
    src: &[u32; 4],
    dst: &[u32; 4],
    src_port_be: u16,
    dst_port_be: u16,
    protocol: u8,
) -> u32 {
    let mut hash = 0x4c34_6761u32;
    let mut i = 0;
    while i < 4 {
        hash = murmur_round(hash, src[i]);
        i += 1;
    }
    let mut i = 0;
    while i < 4 {
        hash = murmur_round(hash, dst[i]);
        i += 1;
    }
    hash = murmur_round(
        hash,
        (u32::from(src_port_be) << 16) | u32::from(dst_port_be),
    );
    hash = murmur_round(hash, u32::from(protocol));
    fmix32(hash ^ 40)
}

#[inline(always)]
const fn murmur_round(hash: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (hash ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// The ring slot a flow of `service` hashes to.
#[inline(always)]
pub fn ring_slot(service: &VipService, hash: u32) -> u32 {
    if service.ring_size == 0 {
        return service.ring_offset;
    }
    service.ring_offset + hash % service.ring_size
}

// SAFETY: all of these are `repr(C)`, `Copy`, with explicit padding and no pointers.
#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipKeyV4 {}
    unsafe impl aya::Pod for super::VipSlot {}
    unsafe impl aya::Pod for super::VipSlot<super::VipKey> {}
    unsafe impl aya::Pod for super::VipService {}
    unsafe impl aya::Pod for super::Real {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    unsafe impl aya::Pod for super::FlowTarget {}
    unsafe impl aya::Pod for super::L4Counter {}
    unsafe impl aya::Pod for super::L4Settings {}
    unsafe impl aya::Pod for super::NextHop {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_vip_key_round_trips_through_its_compact_form() {
        let mut key = VipKey {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 100, 0, 1],
            port_be: 80u16.to_be(),
            protocol: 6,
            _pad: 0,
        };
        let compact = key.v4().expect("an IPv4-mapped VIP");
        assert_eq!(compact.addr, [10, 100, 0, 1]);
        assert_eq!(compact.mapped(), key);
        key.addr = [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 100, 0, 1];
        assert_eq!(key.v4(), None, "IPv6 stays in the wide map");
    }

    #[test]
    fn a_vip_slot_read_half_old_half_new_fails_its_check() {
        let key = |last: u8, port: u16| VipKeyV4 {
            addr: [10, 100, 0, last],
            port_be: port.to_be(),
            protocol: 6,
            _pad: 0,
        };
        let service = |id: u32, offset: u32| VipService {
            id,
            ring_offset: offset,
            ring_size: 65_537,
            flags: 0,
        };
        let empty: VipSlot = VipSlot::default();
        assert_eq!(empty.check, empty.check_of(), "an all-zero slot is whole");
        let old = VipSlot::sealed(key(1, 80), service(1, 0), VIP_SLOT_IN_USE);
        let new = VipSlot::sealed(key(1, 80), service(2, 65_537), VIP_SLOT_IN_USE);
        assert_eq!(old.check, old.check_of());
        // Every way of taking some 8-byte words from the new slot and the rest from the
        // old one (userspace's copy may land a word at a time).
        let words = |slot: &VipSlot| -> [u64; 4] {
            // SAFETY: `VipSlot` is 32 bytes of plain integers.
            unsafe { core::mem::transmute(*slot) }
        };
        let (a, b) = (words(&old), words(&new));
        for mask in 1..15u32 {
            let mut mixed = a;
            for (i, word) in mixed.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    *word = b[i];
                }
            }
            // SAFETY: as above.
            let slot: VipSlot = unsafe { core::mem::transmute(mixed) };
            if slot != old && slot != new {
                assert_ne!(slot.check, slot.check_of(), "mask {mask:#b} passed");
            }
        }
        // IPv6 slots, a 4-byte word at a time (44 bytes).
        let key6 = |last: u8| VipKey {
            addr: [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last],
            port_be: 443u16.to_be(),
            protocol: 6,
            _pad: 0,
        };
        let old = VipSlot::sealed(key6(1), service(1, 0), VIP_SLOT_IN_USE);
        let new = VipSlot::sealed(key6(1), service(2, 65_537), VIP_SLOT_IN_USE | 2);
        let words = |slot: &VipSlot<VipKey>| -> [u32; 11] {
            // SAFETY: `VipSlot<VipKey>` is 44 bytes of plain integers.
            unsafe { core::mem::transmute(*slot) }
        };
        let (a, b) = (words(&old), words(&new));
        for mask in 1..(1u32 << 11) - 1 {
            let mut mixed = a;
            for (i, word) in mixed.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    *word = b[i];
                }
            }
            // SAFETY: as above.
            let slot: VipSlot<VipKey> = unsafe { core::mem::transmute(mixed) };
            if slot != old && slot != new {
                assert_ne!(slot.check, slot.check_of(), "IPv6 mask {mask:#b} passed");
            }
        }
        let mut filled = [0u32; L4_VIP_INDEX_SLOTS as usize];
        let mut filled6 = [0u32; L4_VIP_INDEX_SLOTS as usize];
        for last in 0..=255u8 {
            filled6[key6(last).index_slot() as usize] += 1;
            filled[vip_index_slot(key(last, 443).words()) as usize] += 1;
        }
        assert!(
            filled.iter().chain(&filled6).all(|&n| n <= 2),
            "256 VIPs in 4096 slots crowd one slot"
        );
    }

    #[test]
    fn flow_cache_slots_spread_like_random_ones() {
        // Clients as a NAT or a test lab makes them: neighbouring addresses, sequential
        // ports, one VIP. (IPv4 words as the program reads them: packet bytes, native.)
        let word = |bytes: [u8; 4]| u32::from_ne_bytes(bytes);
        let slots = L4_FLOW_CACHE_V4_SLOTS;
        let mut used = [false; L4_FLOW_CACHE_V4_SLOTS as usize];
        let flows = 5_000u32;
        for n in 0..flows {
            let src = word([10, 0, (n / 50) as u8, (n % 50) as u8]);
            let port = (40_000 + n % 100) as u16;
            let [high, low] = port.to_be_bytes();
            let ports = word([high, low, 0, 80]);
            used[flow_cache_slot(&[src, word([10, 100, 0, 1]), ports, 6], slots) as usize] = true;
        }
        let used = used.iter().filter(|&&u| u).count() as f64;
        // Random slots would leave about slots × (1 − e^(−flows/slots)) in use.
        let expected = f64::from(slots) * (1.0 - (-f64::from(flows) / f64::from(slots)).exp());
        assert!(
            used > 0.95 * expected,
            "{used} slots used, random would use {expected:.0}"
        );
    }

    #[test]
    fn flow_hash_is_stable_and_spreads_ports() {
        let mut flow = FlowKey {
            src: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1],
            dst: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 100],
            src_port_be: 40_000u16.to_be(),
            dst_port_be: 80u16.to_be(),
            protocol: 6,
            _pad: [0; 3],
        };
        let first = flow_hash(&flow);
        assert_eq!(first, flow_hash(&flow), "no hidden state");
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            flow.src_port_be = (10_000 + port).to_be();
            buckets[(flow_hash(&flow) % 16) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (800..1200).contains(&b)),
            "{buckets:?}"
        );
    }
}
