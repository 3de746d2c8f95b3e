//! The edge policy stage: deny list, allow list and SYN guard, applied to packets for
//! protected destinations (or to everything when `EDGE_PROTECT_ALL` is set). Lists are
//! filled by userspace twice, as LPM tries and as hashes by prefix length; the settings
//! say per list and family which one to probe (a few hash probes beat a trie walk when
//! the list has few distinct lengths). The kernel only looks up.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruPerCpuHashMap, PerCpuArray, lpm_trie::Key},
};
use gateway_common::{
    EDGE_ALLOW_ACTIVE, EDGE_PROTECT_ALL, EDGE_SYN_GUARD, EdgeSettings, LOOKUP_BY_TRIE, ListShape,
    LiveEntryKey, MAX_HASHED_LENGTHS, MAX_LIST_ENTRIES, MAX_SYN_SOURCES, PROTECTED_WORDS,
    PrefixKeyV4, PrefixKeyV6, SHAPE_ALLOW_V4, SHAPE_ALLOW_V6, SHAPE_DENY_V4, SHAPE_DENY_V6,
    SourceKey, TokenBucket, Verdict, protected_slot,
};

use crate::parse::{IPPROTO_TCP, IpPacket, TCP_ACK, TCP_SYN, addr_bytes};

#[map(name = "DENY_V4")]
static DENY_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);
#[map(name = "DENY_V6")]
static DENY_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);
#[map(name = "ALLOW_V4")]
static ALLOW_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);
#[map(name = "ALLOW_V6")]
static ALLOW_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);
/// `BPF_F_NO_PREALLOC`: the by-length hashes take memory per entry, not per capacity.
const NO_PREALLOC: u32 = 1;

#[map(name = "DENY_V4_BYLEN_V1")]
static DENY_V4_BY_LENGTH: HashMap<PrefixKeyV4, u32> =
    HashMap::with_max_entries(MAX_LIST_ENTRIES, NO_PREALLOC);
#[map(name = "DENY_V6_BYLEN_V1")]
static DENY_V6_BY_LENGTH: HashMap<PrefixKeyV6, u32> =
    HashMap::with_max_entries(MAX_LIST_ENTRIES, NO_PREALLOC);
#[map(name = "ALLOW_V4_BYLEN_V1")]
static ALLOW_V4_BY_LENGTH: HashMap<PrefixKeyV4, u32> =
    HashMap::with_max_entries(MAX_LIST_ENTRIES, NO_PREALLOC);
#[map(name = "ALLOW_V6_BYLEN_V1")]
static ALLOW_V6_BY_LENGTH: HashMap<PrefixKeyV6, u32> =
    HashMap::with_max_entries(MAX_LIST_ENTRIES, NO_PREALLOC);
#[map(name = "DENY_HITS_V1")]
static DENY_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_LIST_ENTRIES, 0);
#[map(name = "ALLOW_HITS_V1")]
static ALLOW_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_LIST_ENTRIES, 0);
#[map(name = "PROTECTED_V2")]
static PROTECTED: Array<u64> = Array::with_max_entries(PROTECTED_WORDS, 0);
#[map(name = "EDGE_SETTINGS_V2")]
static SETTINGS: Array<EdgeSettings> = Array::with_max_entries(1, 0);
#[map(name = "SYN_BUCKETS_V1")]
static SYN_BUCKETS: LruPerCpuHashMap<SourceKey, TokenBucket> =
    LruPerCpuHashMap::with_max_entries(MAX_SYN_SOURCES, 0);
/// Userspace bookkeeping pinned beside the lists (`gateway_common::LIVE_ACL_MAP`); the
/// program never looks it up.
#[map(name = "LIVE_ACL_V1")]
static LIVE_ACL: HashMap<LiveEntryKey, u64> = HashMap::with_max_entries(2 * MAX_LIST_ENTRIES, 0);

/// Decides what happens to an IP packet; `to_vip` packets (for an L4 VIP) are always
/// protected.
#[inline(always)]
pub fn judge(packet: &IpPacket, to_vip: bool) -> Verdict {
    let Some(settings) = SETTINGS.get(0) else {
        return Verdict::Unprotected;
    };
    if !to_vip && !is_protected(packet, settings.flags) {
        return Verdict::Unprotected;
    }
    let deny = List {
        v4: &DENY_V4,
        v6: &DENY_V6,
        v4_by_length: &DENY_V4_BY_LENGTH,
        v6_by_length: &DENY_V6_BY_LENGTH,
    };
    if let Some(entry) = deny.lookup(packet, settings, SHAPE_DENY_V4, SHAPE_DENY_V6) {
        bump(&DENY_HITS, entry);
        return Verdict::DeniedByList;
    }
    if settings.flags & EDGE_ALLOW_ACTIVE != 0 {
        let allow = List {
            v4: &ALLOW_V4,
            v6: &ALLOW_V6,
            v4_by_length: &ALLOW_V4_BY_LENGTH,
            v6_by_length: &ALLOW_V6_BY_LENGTH,
        };
        match allow.lookup(packet, settings, SHAPE_ALLOW_V4, SHAPE_ALLOW_V6) {
            Some(entry) => bump(&ALLOW_HITS, entry),
            None => return Verdict::NotAllowed,
        }
    }
    let new_connection = packet.protocol == IPPROTO_TCP
        && packet.tcp_flags & TCP_SYN != 0
        && packet.tcp_flags & TCP_ACK == 0;
    if new_connection && settings.flags & EDGE_SYN_GUARD != 0 && !take_syn_token(packet, settings) {
        return Verdict::SynBudgetExceeded;
    }
    Verdict::Admitted
}

/// Protected: to a listed destination port, any non-first fragment (its port is
/// unknown, so it is judged by its source), or everything under `EDGE_PROTECT_ALL`.
#[inline(always)]
fn is_protected(packet: &IpPacket, flags: u32) -> bool {
    if flags & EDGE_PROTECT_ALL != 0 || packet.later_fragment {
        return true;
    }
    if packet.dst_port_be == 0 {
        return false;
    }
    match protected_slot(u16::from_be(packet.dst_port_be), packet.protocol) {
        Some((word, bit)) => PROTECTED.get(word).is_some_and(|bits| bits & bit != 0),
        None => false,
    }
}

/// One list's maps: the tries and the by-length hashes hold the same entries; the
/// settings' [`ListShape`] says which one a packet is looked up in.
struct List {
    v4: &'static LpmTrie<[u8; 4], u32>,
    v6: &'static LpmTrie<[u8; 16], u32>,
    v4_by_length: &'static HashMap<PrefixKeyV4, u32>,
    v6_by_length: &'static HashMap<PrefixKeyV6, u32>,
}

impl List {
    /// The id of the entry the packet's source matches, if any.
    #[inline(always)]
    fn lookup(
        &self,
        packet: &IpPacket,
        settings: &EdgeSettings,
        v4_shape: usize,
        v6_shape: usize,
    ) -> Option<u32> {
        if packet.v6 {
            let shape = &settings.shapes[v6_shape];
            let src = addr_bytes(&packet.src);
            if shape.count == LOOKUP_BY_TRIE {
                return self.v6.get(Key::new(128, src)).copied();
            }
            probe(shape, |len| {
                // SAFETY: a hash lookup; the value is copied out at once.
                unsafe { self.v6_by_length.get(PrefixKeyV6::masked(&src, len)) }.copied()
            })
        } else {
            let addr = packet.src[3].to_ne_bytes();
            let shape = &settings.shapes[v4_shape];
            if shape.count == LOOKUP_BY_TRIE {
                return self.v4.get(Key::new(32, addr)).copied();
            }
            probe(shape, |len| {
                // SAFETY: a hash lookup; the value is copied out at once.
                unsafe { self.v4_by_length.get(PrefixKeyV4::masked(addr, len)) }.copied()
            })
        }
    }
}

/// Tries the shape's lengths longest first (so the longest match wins, as in the trie).
#[inline(always)]
fn probe(shape: &ListShape, mut at_length: impl FnMut(u8) -> Option<u32>) -> Option<u32> {
    for i in 0..MAX_HASHED_LENGTHS {
        if i >= usize::from(shape.count) {
            return None;
        }
        if let Some(id) = at_length(shape.lengths[i]) {
            return Some(id);
        }
    }
    None
}

#[inline(always)]
fn bump(hits: &PerCpuArray<u64>, entry: u32) {
    if let Some(counter) = hits.get_ptr_mut(entry) {
        // SAFETY: a per-CPU slot, valid for this program run, touched only by this CPU.
        unsafe { *counter += 1 };
    }
}

/// Takes one token from the source's bucket; false when it is empty.
#[inline(always)]
fn take_syn_token(packet: &IpPacket, settings: &EdgeSettings) -> bool {
    let key = SourceKey {
        addr: addr_bytes(&packet.src),
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let (rate, burst) = (settings.syn_rate_per_sec, settings.syn_burst);
    match SYN_BUCKETS.get_ptr_mut(key) {
        // SAFETY: a per-CPU LRU value, valid for this program run on this CPU.
        Some(bucket) => unsafe { &mut *bucket }.take(now, rate, burst),
        None => {
            let mut fresh = TokenBucket::full(burst, now);
            let admitted = fresh.take(now, rate, burst);
            // A full table evicts the least recently seen source: memory stays bounded.
            let _ = SYN_BUCKETS.insert(key, fresh, 0);
            admitted
        }
    }
}
