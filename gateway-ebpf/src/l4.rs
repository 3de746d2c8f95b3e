//! The L4 balancer stage (Katran's model): a packet to a VIP finds its target in the
//! connection table, or through the service's Maglev ring when the flow is new (or its
//! target went down); it is then wrapped in an outer IP header (IPIP: IPv4 or IPv6 in
//! IPv4 or IPv6) addressed to the target, and sent out through the next hop the kernel's
//! FIB names. The target answers the client directly (direct server return).
//!
//! Userspace fills the rings and the targets; this stage only looks up, hashes, rewrites
//! headers and counts.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibLookup, xdp_action},
    helpers::{bpf_fib_lookup, bpf_jiffies64, bpf_ktime_get_ns, bpf_redirect, bpf_xdp_adjust_head},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use gateway_common::{
    AdmissionWindow, FLOW_CACHE_REFRESH_JIFFIES, FlowCacheSlot, FlowKey, FlowKeyV4, FlowTarget,
    IndexedVip, L4_ACTIVE, L4_ALL_PORTS, L4_FLOW_CACHE_V4_SLOTS, L4_FLOW_CACHE_V6_SLOTS,
    L4_HASH_NO_PORTS, L4_RING_CAPACITY, L4_VIP_INDEX_SLOTS, L4Counter, L4Settings, MAX_L4_FLOWS,
    MAX_L4_FLOWS_V6, MAX_L4_REALS, MAX_L4_SERVICES, NEXT_HOP_TTL_JIFFIES, NO_REAL, NextHop,
    PROTECTED_WORDS, REAL_DOWN, REAL_IN_USE, REAL_V6, Real, VIP_SLOT_IN_USE, VIP_SLOT_SHARED,
    Verdict, VipKey, VipKeyV4, VipService, VipSlot, flow_cache_slot, flow_hash_words,
    protected_slot, ring_slot,
};

use crate::parse::{IpPacket, addr_bytes};

#[map(name = "L4_SERVICES_V1")]
static SERVICES: HashMap<VipKey, VipService> = HashMap::with_max_entries(MAX_L4_SERVICES, 0);
#[map(name = "L4_SERVICES_V4_V1")]
static SERVICES_V4: HashMap<VipKeyV4, VipService> = HashMap::with_max_entries(MAX_L4_SERVICES, 0);
#[map(name = "L4_VIP_INDEX_V1")]
static VIP_INDEX: Array<VipSlot> = Array::with_max_entries(L4_VIP_INDEX_SLOTS, 0);
#[map(name = "L4_VIP_INDEX_V6_V1")]
static VIP_INDEX_V6: Array<VipSlot<VipKey>> = Array::with_max_entries(L4_VIP_INDEX_SLOTS, 0);
#[map(name = "L4_RINGS_V1")]
static RINGS: Array<u32> = Array::with_max_entries(L4_RING_CAPACITY, 0);
#[map(name = "L4_REALS_V1")]
static REALS: Array<Real> = Array::with_max_entries(MAX_L4_REALS, 0);
#[map(name = "L4_FLOWS_V1")]
static FLOWS: LruHashMap<FlowKey, FlowTarget> = LruHashMap::with_max_entries(MAX_L4_FLOWS_V6, 0);
#[map(name = "L4_FLOWS_V4_V1")]
static FLOWS_V4: LruHashMap<FlowKeyV4, FlowTarget> = LruHashMap::with_max_entries(MAX_L4_FLOWS, 0);
#[map(name = "L4_FLOW_CACHE_V4_V1")]
static FLOW_CACHE_V4: PerCpuArray<FlowCacheSlot<FlowKeyV4>> =
    PerCpuArray::with_max_entries(L4_FLOW_CACHE_V4_SLOTS, 0);
#[map(name = "L4_FLOW_CACHE_V6_V1")]
static FLOW_CACHE_V6: PerCpuArray<FlowCacheSlot<FlowKey>> =
    PerCpuArray::with_max_entries(L4_FLOW_CACHE_V6_SLOTS, 0);
#[map(name = "L4_SERVICE_STATS_V1")]
static SERVICE_STATS: PerCpuArray<L4Counter> = PerCpuArray::with_max_entries(MAX_L4_SERVICES, 0);
#[map(name = "L4_REAL_STATS_V1")]
static REAL_STATS: PerCpuArray<L4Counter> = PerCpuArray::with_max_entries(MAX_L4_REALS, 0);
#[map(name = "L4_SETTINGS_V2")]
static SETTINGS: Array<L4Settings> = Array::with_max_entries(1, 0);
#[map(name = "L4_ADMISSION_V1")]
static ADMISSION: PerCpuArray<AdmissionWindow> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "L4_NEXT_HOPS_V1")]
static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_L4_REALS, 0);
#[map(name = "L4_PORTS_V1")]
static PORTS: Array<u64> = Array::with_max_entries(PROTECTED_WORDS, 0);
/// Per-CPU scratch space for the FIB lookup's parameters (off the 512-byte stack).
#[map(name = "L4_FIB_SCRATCH_V1")]
static FIB_SCRATCH: PerCpuArray<FibLookup> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const OUTER_TTL: u8 = 64;

/// The service a packet's destination is a VIP of: the exact port first (only when
/// some VIP is balanced on that port), then the service that takes every port (only
/// when there is one).
#[inline(always)]
pub fn service_for(packet: &IpPacket) -> Option<VipService> {
    let flags = SETTINGS.get(0)?.flags;
    if flags & L4_ACTIVE == 0 {
        return None;
    }
    let port_listed = packet.dst_port_be != 0
        && protected_slot(u16::from_be(packet.dst_port_be), packet.protocol)
            .is_some_and(|(word, bit)| PORTS.get(word).is_some_and(|bits| bits & bit != 0));
    let any_port = flags & L4_ALL_PORTS != 0;
    // Direct calls only: a function passed as a value is called through a `Fn` shim
    // that LLVM leaves out of line, a BPF-to-BPF call on every packet.
    if packet.v6 {
        let mut key = VipKey {
            addr: addr_bytes(&packet.dst),
            port_be: packet.dst_port_be,
            protocol: packet.protocol,
            _pad: 0,
        };
        if port_listed && let Some(service) = indexed_service(&VIP_INDEX_V6, &SERVICES, &key) {
            return Some(service);
        }
        if !any_port {
            return None;
        }
        key.port_be = 0;
        indexed_service(&VIP_INDEX_V6, &SERVICES, &key)
    } else {
        let key = vip_key_v4(packet.dst[3], packet.dst_port_be, packet.protocol);
        if port_listed && let Some(service) = indexed_service(&VIP_INDEX, &SERVICES_V4, &key) {
            return Some(service);
        }
        if !any_port {
            return None;
        }
        let key = vip_key_v4(packet.dst[3], 0, packet.protocol);
        indexed_service(&VIP_INDEX, &SERVICES_V4, &key)
    }
}

/// A VIP's service: from its index slot when the slot is whole and holds it, none when
/// the slot is whole and no other VIP places there, else from the hash map.
#[inline(always)]
fn indexed_service<K: IndexedVip>(
    index: &Array<VipSlot<K>>,
    services: &HashMap<K, VipService>,
    key: &K,
) -> Option<VipService> {
    if let Some(slot) = index.get(key.index_slot()) {
        let slot = *slot;
        if slot.check == slot.check_of() {
            if slot.flags & VIP_SLOT_IN_USE != 0 && same_key(&slot.key, key) {
                return Some(slot.service);
            }
            if slot.flags & VIP_SLOT_SHARED == 0 {
                return None;
            }
        }
    }
    // SAFETY: a hash lookup; the value is copied out at once.
    unsafe { services.get(key) }.copied()
}

/// An IPv4 VIP key from the address word as read from the packet, assembled as two
/// words (a field-by-field build stores byte by byte).
#[inline(always)]
fn vip_key_v4(addr: u32, port_be: u16, protocol: u8) -> VipKeyV4 {
    let port = port_be.to_ne_bytes();
    let rest = u32::from_ne_bytes([port[0], port[1], protocol, 0]);
    // SAFETY: `VipKeyV4` is `repr(C)`, 8 bytes of plain integers in this order
    // (asserted in gateway-common), valid for any bit pattern.
    unsafe { core::mem::transmute::<[u32; 2], VipKeyV4>([addr, rest]) }
}

/// Balances a packet of `service`: the verdict to count and the XDP action.
#[inline(always)]
pub fn forward(ctx: &XdpContext, packet: &IpPacket, service: &VipService) -> (Verdict, u32) {
    // Fragments after the first carry no ports to hash; tagged frames would need their
    // tags rebuilt on the way out. Both are the kernel's (documented).
    if packet.later_fragment || packet.l3_offset != ETH_HLEN {
        return (Verdict::L4Unbalanced, xdp_action::XDP_PASS);
    }
    let (src_port_be, dst_port_be) = if service.flags & L4_HASH_NO_PORTS == 0 {
        (packet.src_port_be, packet.dst_port_be)
    } else {
        (0, 0)
    };
    // The packet's address words are the little-endian words the hash is defined over
    // (this program is built for little-endian BPF only).
    let hash = || {
        flow_hash_words(
            &packet.src,
            &packet.dst,
            src_port_be,
            dst_port_be,
            packet.protocol,
        )
    };
    let Some(settings) = SETTINGS.get(0) else {
        return (Verdict::L4Unbalanced, xdp_action::XDP_PASS);
    };
    let clock = CacheClock {
        epoch: settings.flow_cache_epoch,
        // SAFETY: bpf_jiffies64 has no preconditions.
        now: unsafe { bpf_jiffies64() },
    };
    let picked = if packet.v6 {
        let (key, words) = flow_key(packet, src_port_be, dst_port_be);
        let slot = flow_cache_slot(&words, L4_FLOW_CACHE_V6_SLOTS);
        pick(&FLOWS, &FLOW_CACHE_V6, (&key, slot), service, &clock, hash)
    } else {
        let (key, words) = flow_key_v4(packet, src_port_be, dst_port_be);
        let slot = flow_cache_slot(&words, L4_FLOW_CACHE_V4_SLOTS);
        pick(
            &FLOWS_V4,
            &FLOW_CACHE_V4,
            (&key, slot),
            service,
            &clock,
            hash,
        )
    };
    let Picked {
        id,
        hash,
        new_flow,
        remembered,
    } = picked;
    let Some(real) = REALS.get(id).filter(|_| id != NO_REAL) else {
        return (Verdict::L4NoTarget, xdp_action::XDP_DROP);
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    count(&SERVICE_STATS, service.id, len, new_flow);
    count(&REAL_STATS, id, len, new_flow);
    match encapsulate(ctx, packet, settings, real, (id, hash), clock.now) {
        (Verdict::L4Forwarded | Verdict::L4ForwardedByKernel, action) if !remembered => {
            (Verdict::L4ForwardedUnremembered, action)
        }
        sent => sent,
    }
}

/// The IPv6 connection table's key, assembled as ten words (a field-by-field build
/// zeroes the three padding bytes through a byte-loop `memset` call in BPF), and the
/// words.
#[inline(always)]
fn flow_key(packet: &IpPacket, src_port_be: u16, dst_port_be: u16) -> (FlowKey, [u32; 10]) {
    let (s, d) = (&packet.src, &packet.dst);
    let (ports, protocol) = port_and_protocol_words(packet, src_port_be, dst_port_be);
    let words: [u32; 10] = [
        s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], ports, protocol,
    ];
    // SAFETY: `FlowKey` is `repr(C)`, 40 bytes of plain integers and padding in this
    // order (asserted in gateway-common), valid for any bit pattern.
    (
        unsafe { core::mem::transmute::<[u32; 10], FlowKey>(words) },
        words,
    )
}

/// The IPv4 connection table's key, assembled as four words likewise, and the words.
#[inline(always)]
fn flow_key_v4(packet: &IpPacket, src_port_be: u16, dst_port_be: u16) -> (FlowKeyV4, [u32; 4]) {
    let (ports, protocol) = port_and_protocol_words(packet, src_port_be, dst_port_be);
    let words = [packet.src[3], packet.dst[3], ports, protocol];
    // SAFETY: `FlowKeyV4` is `repr(C)`, 16 bytes of plain integers and padding in this
    // order (asserted in gateway-common), valid for any bit pattern.
    (
        unsafe { core::mem::transmute::<[u32; 4], FlowKeyV4>(words) },
        words,
    )
}

/// The last two words of both flow keys: the ports, then the protocol and padding.
#[inline(always)]
fn port_and_protocol_words(packet: &IpPacket, src_port_be: u16, dst_port_be: u16) -> (u32, u32) {
    let (a, b) = (src_port_be.to_ne_bytes(), dst_port_be.to_ne_bytes());
    (
        u32::from_ne_bytes([a[0], a[1], b[0], b[1]]),
        u32::from_ne_bytes([packet.protocol, 0, 0, 0]),
    )
}

/// A flow's target, every field defined on every path: the two tables' picks merge
/// into one value, and the verifier refuses to spill a register holding the undefined
/// payload of an `Option`'s `None`.
struct Picked {
    /// The real, or [`NO_REAL`] when the service has no live target.
    id: u32,
    hash: u32,
    /// The connection table did not know the flow.
    new_flow: bool,
    /// The connection table knows the flow now (false past the admission rate).
    remembered: bool,
}

/// No live target.
const NO_PICK: Picked = Picked {
    id: NO_REAL,
    hash: 0,
    new_flow: false,
    remembered: false,
};

/// What a flow cache slot is checked against: the current epoch and jiffies.
struct CacheClock {
    epoch: u32,
    now: u64,
}

/// Whether real `id` takes packets: in use and not down.
#[inline(always)]
fn usable(id: u32) -> bool {
    REALS
        .get(id)
        .is_some_and(|real| real.flags & (REAL_IN_USE | REAL_DOWN) == REAL_IN_USE)
}

/// Whether two keys hold the same bytes, compared a word at a time (a derived `==`
/// goes field by field, byte arrays through a `bcmp` call). Keys are built from
/// words with their padding zeroed, so equal flows are equal bytes.
#[inline(always)]
fn same_key<K: Copy>(a: &K, b: &K) -> bool {
    let words = core::mem::size_of::<K>() / 4;
    let (a, b) = ((a as *const K).cast::<u32>(), (b as *const K).cast::<u32>());
    let mut same = true;
    for i in 0..words {
        // SAFETY: both keys are `words` whole 4-byte words (16 or 40 bytes).
        same &= unsafe { a.add(i).read_unaligned() == b.add(i).read_unaligned() };
    }
    same
}

/// The flow's target: from this CPU's flow cache while its slot is trusted, else the
/// one the connection table has while that is up (with the hash stored beside it; the
/// cache slot is filled from it), else the ring's pick for its hash (both remembered,
/// the hash computed only here). [`NO_PICK`] when the service has no live target.
#[inline(always)]
fn pick<K: Copy>(
    flows: &LruHashMap<K, FlowTarget>,
    cache: &PerCpuArray<FlowCacheSlot<K>>,
    (flow, cache_slot): (&K, u32),
    service: &VipService,
    clock: &CacheClock,
    hash: impl FnOnce() -> u32,
) -> Picked {
    let cached = cache.get_ptr_mut(cache_slot);
    if let Some(slot) = cached {
        // SAFETY: this CPU's slot, for this program run.
        let slot = unsafe { &*slot };
        if slot.epoch == clock.epoch
            && (clock.now as u32).wrapping_sub(slot.seen) < FLOW_CACHE_REFRESH_JIFFIES
            && same_key(&slot.key, flow)
            && usable(slot.target.real)
        {
            return Picked {
                id: slot.target.real,
                hash: slot.target.hash,
                new_flow: false,
                remembered: true,
            };
        }
    }
    // SAFETY: an LRU hash lookup; the value is copied out at once.
    let known = unsafe { flows.get(flow) }.copied();
    if let Some(known) = known
        && usable(known.real)
    {
        if let Some(slot) = cached {
            // SAFETY: this CPU's slot, for this program run.
            unsafe {
                *slot = FlowCacheSlot {
                    key: *flow,
                    target: known,
                    epoch: clock.epoch,
                    seen: clock.now as u32,
                };
            }
        }
        return Picked {
            id: known.real,
            hash: known.hash,
            new_flow: false,
            remembered: true,
        };
    }
    // New, or its target went down: hashed afresh.
    let hash = hash();
    let Some(&id) = RINGS.get(ring_slot(service, hash)) else {
        return NO_PICK;
    };
    if id == NO_REAL || REALS.get(id).is_none() {
        return NO_PICK;
    }
    let remembered = admit_new_flow();
    if remembered {
        // A full table forgets the least recently seen flow: memory stays bounded.
        let _ = flows.insert(flow, FlowTarget { real: id, hash }, 0);
    }
    Picked {
        id,
        hash,
        new_flow: true,
        remembered,
    }
}

/// Whether this CPU may remember one more new flow this second
/// ([`L4Settings::remembered_flows_per_cpu`]; a flow left out is balanced the same way,
/// through the ring, and asked again with its next packet).
#[inline(always)]
fn admit_new_flow() -> bool {
    let limit = SETTINGS
        .get(0)
        .map_or(0, |settings| settings.remembered_flows_per_cpu);
    if limit == 0 {
        return true;
    }
    let Some(window) = ADMISSION.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot, for this program run; bpf_ktime_get_ns has no
    // preconditions.
    let (window, now) = unsafe { (&mut *window, bpf_ktime_get_ns()) };
    if now.wrapping_sub(window.started_ns) >= 1_000_000_000 {
        window.started_ns = now;
        window.remembered = 0;
    }
    if window.remembered >= u64::from(limit) {
        return false;
    }
    window.remembered += 1;
    true
}

#[inline(always)]
fn count(map: &PerCpuArray<L4Counter>, slot: u32, len: u64, new_flow: bool) {
    if let Some(counter) = map.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, valid for this program run, touched only by this CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len;
            (*counter).new_flows += u64::from(new_flow);
        }
    }
}

/// What the inner packet contributes to the outer header.
struct Inner {
    /// The inner packet's whole length (IP header included).
    total_len: u16,
    /// Its DSCP/ECN byte, copied outward.
    traffic_class: u8,
}

/// Reads what the outer header needs before the head moves.
#[inline(always)]
fn inner_of(ctx: &XdpContext, v6: bool) -> Option<Inner> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + 8 > end {
        return None;
    }
    // SAFETY: the first 8 IP bytes lie before `end` (checked above).
    let ip = unsafe { core::ptr::read_unaligned((data + ETH_HLEN) as *const [u8; 8]) };
    let (total_len, traffic_class) = if v6 {
        let payload = u16::from_be_bytes([ip[4], ip[5]]);
        (
            payload.checked_add(IPV6_HLEN as u16)?,
            (ip[0] << 4) | (ip[1] >> 4),
        )
    } else {
        (u16::from_be_bytes([ip[2], ip[3]]), ip[1])
    };
    Some(Inner {
        total_len,
        traffic_class,
    })
}

/// Wraps the packet for `real` and sends it on. The headers are written straight into
/// the packet and the FIB parameters live in a per-CPU scratch slot: the BPF stack is
/// 512 bytes for the whole program.
#[inline(always)]
fn encapsulate(
    ctx: &XdpContext,
    packet: &IpPacket,
    settings: &L4Settings,
    real: &Real,
    (id, hash): (u32, u32),
    now: u64,
) -> (Verdict, u32) {
    let Some(inner) = inner_of(ctx, packet.v6) else {
        return (Verdict::L4Unbalanced, xdp_action::XDP_PASS);
    };
    let outer_v6 = real.flags & REAL_V6 != 0;
    let outer_len = if outer_v6 { IPV6_HLEN } else { IPV4_HLEN };
    let Some(outer_total) = inner.total_len.checked_add(outer_len as u16) else {
        return (Verdict::L4Unbalanced, xdp_action::XDP_PASS);
    };
    // SAFETY: grows the headroom of the packet this program runs on.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return (Verdict::L4Unbalanced, xdp_action::XDP_PASS);
    }
    let inner_protocol = if packet.v6 {
        IPPROTO_IPV6
    } else {
        IPPROTO_IPIP
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    let outer = data + ETH_HLEN;
    // The old MAC addresses now sit `outer_len` bytes in: copied to the new front.
    if outer_v6 {
        if data + ETH_HLEN + IPV6_HLEN > end {
            return (Verdict::L4NoTarget, xdp_action::XDP_DROP);
        }
        // SAFETY: both 12-byte ranges lie before `end` (checked above).
        unsafe { move_macs(data, IPV6_HLEN) };
        let mut source = settings.source_v6;
        let mask = u32::from_ne_bytes(settings.source_v6_host_mask);
        let low = u32::from_ne_bytes([source[12], source[13], source[14], source[15]]);
        source[12..].copy_from_slice(&(low | (hash & mask)).to_ne_bytes());
        // SAFETY: Ethernet plus an IPv6 header lie before `end` (checked above).
        unsafe {
            write_ipv6_header(outer, &inner, outer_total, inner_protocol, hash);
            core::ptr::write_unaligned((data + 12) as *mut [u8; 2], ETH_P_IPV6);
            core::ptr::write_unaligned((outer + 8) as *mut [u8; 16], source);
            core::ptr::write_unaligned((outer + 24) as *mut [u8; 16], real.addr);
        }
        next_hop(ctx, (id, now), |fib| {
            fib.family = AF_INET6;
            fib.__bindgen_anon_1.tot_len = outer_total;
            fib.__bindgen_anon_3.ipv6_src = words(&source);
            fib.__bindgen_anon_4.ipv6_dst = words(&real.addr);
        })
    } else {
        if data + ETH_HLEN + IPV4_HLEN > end {
            return (Verdict::L4NoTarget, xdp_action::XDP_DROP);
        }
        // SAFETY: both 12-byte ranges lie before `end` (checked above).
        unsafe { move_macs(data, IPV4_HLEN) };
        let source = u32::from_ne_bytes(settings.source_v4)
            | (hash & u32::from_ne_bytes(settings.source_v4_host_mask));
        let target =
            u32::from_ne_bytes([real.addr[12], real.addr[13], real.addr[14], real.addr[15]]);
        // SAFETY: Ethernet plus an IPv4 header lie before `end` (checked above).
        unsafe {
            core::ptr::write_unaligned((data + 12) as *mut [u8; 2], ETH_P_IP);
            write_ipv4_header(outer, &inner, outer_total, inner_protocol, source, target);
        }
        next_hop(ctx, (id, now), |fib| {
            fib.family = AF_INET;
            fib.__bindgen_anon_1.tot_len = outer_total;
            fib.__bindgen_anon_3.ipv4_src = source;
            fib.__bindgen_anon_4.ipv4_dst = target;
        })
    }
}

/// Sends the encapsulated frame to the FIB's next hop (cached per CPU and target for
/// [`NEXT_HOP_TTL_JIFFIES`]); when the kernel cannot name one yet (no neighbour
/// entry), hands the frame to the kernel, which forwards it and resolves the neighbour
/// for the packets that follow. `query` fills the FIB parameters (family, length,
/// addresses), which only a cache miss needs.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    (real, now): (u32, u64),
    query: impl FnOnce(&mut FibLookup),
) -> (Verdict, u32) {
    // SAFETY: the context pointer is the program's own.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let cached = NEXT_HOPS.get_ptr_mut(real);
    if let Some(hop) = cached {
        // SAFETY: this CPU's slot, for this program run.
        let hop = unsafe { &*hop };
        if hop.ifindex != 0 && now < hop.expires {
            return send(ctx, &hop.dmac, &hop.smac, hop.ifindex, ingress);
        }
    }
    let Some(fib) = FIB_SCRATCH.get_ptr_mut(0) else {
        return (Verdict::L4ForwardedByKernel, xdp_action::XDP_PASS);
    };
    // SAFETY: this CPU's scratch slot, used by this program run only; all-zero is a
    // valid FIB parameter block.
    let fib = unsafe {
        *fib = core::mem::zeroed();
        &mut *fib
    };
    fib.ifindex = ingress;
    query(fib);
    // SAFETY: the parameter block is a map value of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            fib,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return (Verdict::L4ForwardedByKernel, xdp_action::XDP_PASS);
    }
    if let Some(hop) = cached {
        // SAFETY: this CPU's slot, for this program run.
        unsafe {
            *hop = NextHop {
                dmac: fib.dmac,
                smac: fib.smac,
                ifindex: fib.ifindex,
                expires: now + NEXT_HOP_TTL_JIFFIES,
            };
        }
    }
    send(ctx, &fib.dmac, &fib.smac, fib.ifindex, ingress)
}

/// Writes the next hop's MAC addresses and sends the frame out of `ifindex`.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    dmac: &[u8; 6],
    smac: &[u8; 6],
    ifindex: u32,
    ingress: u32,
) -> (Verdict, u32) {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        return (Verdict::L4NoTarget, xdp_action::XDP_DROP);
    }
    // SAFETY: the Ethernet header lies before `end` (checked above).
    unsafe {
        core::ptr::write_unaligned(data as *mut [u8; 6], *dmac);
        core::ptr::write_unaligned((data + 6) as *mut [u8; 6], *smac);
    }
    if ifindex == ingress {
        return (Verdict::L4Forwarded, xdp_action::XDP_TX);
    }
    // SAFETY: bpf_redirect only records the target interface.
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    (Verdict::L4Forwarded, action)
}

/// Copies the 12 MAC address bytes found `from` bytes into the frame to its front, as
/// two word loads (a byte array copy becomes a byte-by-byte `memmove` call in BPF).
///
/// # Safety
/// `data .. data + from + 12` must lie inside the packet.
#[inline(always)]
unsafe fn move_macs(data: usize, from: usize) {
    // SAFETY: guaranteed by the caller; both values are read before either is written.
    unsafe {
        let head = core::ptr::read_unaligned((data + from) as *const u64);
        let tail = core::ptr::read_unaligned((data + from + 8) as *const u32);
        core::ptr::write_unaligned(data as *mut u64, head);
        core::ptr::write_unaligned((data + 8) as *mut u32, tail);
    }
}

/// Writes an outer IPv4 header (checksum included) at `at`.
///
/// # Safety
/// 20 bytes at `at` must lie inside the packet.
#[inline(always)]
unsafe fn write_ipv4_header(
    at: usize,
    inner: &Inner,
    total: u16,
    protocol: u8,
    source: u32,
    target: u32,
) {
    let version_tos = 0x4500u16 | u16::from(inner.traffic_class);
    let ttl_protocol = (u16::from(OUTER_TTL) << 8) | u16::from(protocol);
    // One's-complement sum over the header's 16-bit words; the addresses are summed in
    // memory order, so swap them to host order word by word.
    let mut sum = u32::from(version_tos) + u32::from(total) + u32::from(ttl_protocol);
    for word in [source, target] {
        let bytes = word.to_ne_bytes();
        sum += u32::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        sum += u32::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let checksum = !(sum as u16);
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::ptr::write_unaligned(at as *mut u16, version_tos.to_be());
        core::ptr::write_unaligned((at + 2) as *mut u16, total.to_be());
        core::ptr::write_unaligned((at + 4) as *mut u32, 0);
        core::ptr::write_unaligned((at + 8) as *mut u16, ttl_protocol.to_be());
        core::ptr::write_unaligned((at + 10) as *mut u16, checksum.to_be());
        core::ptr::write_unaligned((at + 12) as *mut u32, source);
        core::ptr::write_unaligned((at + 16) as *mut u32, target);
    }
}

/// Writes the first 8 bytes of an outer IPv6 header at `at` (the addresses follow).
///
/// # Safety
/// 8 bytes at `at` must lie inside the packet.
#[inline(always)]
unsafe fn write_ipv6_header(at: usize, inner: &Inner, total: u16, next_header: u8, hash: u32) {
    // The flow label carries the flow hash: IPv6 RSS and ECMP hash it.
    let first = (6u32 << 28) | (u32::from(inner.traffic_class) << 20) | (hash & 0x000f_ffff);
    let payload = total - IPV6_HLEN as u16;
    let rest = (u32::from(payload) << 16) | (u32::from(next_header) << 8) | u32::from(OUTER_TTL);
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::ptr::write_unaligned(at as *mut u32, first.to_be());
        core::ptr::write_unaligned((at + 4) as *mut u32, rest.to_be());
    }
}

/// An IPv6 address as the FIB lookup's four words (memory order kept).
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for i in 0..4 {
        out[i] = u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ]);
    }
    out
}
