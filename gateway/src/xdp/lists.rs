//! Writing the edge policy into the program's maps and reading it back.
//!
//! The maps may already hold a policy: the previous config, or (pinned) the previous
//! process's. Every change is a diff against what the maps hold, ordered so no packet
//! ever sees a laxer policy than either the old or the new one: new entries first, then
//! the settings, then the removals. An entry keeps its id (and so its hit counter) for
//! as long as it stays listed; a new entry gets a free id with a zeroed counter.

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::Key,
    },
};
use gateway_common::{
    ALLOW_HITS_MAP, ALLOW_V4_BY_LENGTH_MAP, ALLOW_V4_MAP, ALLOW_V6_BY_LENGTH_MAP, ALLOW_V6_MAP,
    DENY_HITS_MAP, DENY_V4_BY_LENGTH_MAP, DENY_V4_MAP, DENY_V6_BY_LENGTH_MAP, DENY_V6_MAP,
    EDGE_ALLOW_ACTIVE, EDGE_PROTECT_ALL, EDGE_SYN_GUARD, EdgeSettings, LIVE_ACL_MAP,
    LIVE_LIST_ALLOW, LIVE_LIST_DENY, LOOKUP_BY_TRIE, ListShape, LiveEntryKey, MAX_HASHED_LENGTHS,
    MAX_LIST_ENTRIES, PROTECTED_MAP, PROTECTED_WORDS, PacketCounter, PrefixKeyV4, PrefixKeyV6,
    SETTINGS_MAP, SHAPE_ALLOW_V4, SHAPE_ALLOW_V6, SHAPE_DENY_V4, SHAPE_DENY_V6, VERDICT_MAP,
    Verdict, protected_slot,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::XdpError;
use crate::config::EdgePolicyConfig;

/// Where the maps come from: a loaded program, or the pins alone (the CLI).
pub trait MapSource {
    fn map(&self, name: &str) -> Option<&Map>;
    fn map_mut(&mut self, name: &str) -> Option<&mut Map>;
}

impl MapSource for Ebpf {
    fn map(&self, name: &str) -> Option<&Map> {
        Ebpf::map(self, name)
    }
    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        Ebpf::map_mut(self, name)
    }
}

/// The maps pinned in a folder, opened without loading the program.
pub struct PinnedMaps(HashMap<&'static str, Map>);

impl PinnedMaps {
    /// Opens the maps the CLI reads; a missing one is an error naming it.
    pub fn open(pins: &super::PinFolder) -> Result<Self, XdpError> {
        let mut maps = HashMap::new();
        for name in [
            DENY_V4_MAP,
            DENY_V6_MAP,
            ALLOW_V4_MAP,
            ALLOW_V6_MAP,
            DENY_HITS_MAP,
            ALLOW_HITS_MAP,
            LIVE_ACL_MAP,
            VERDICT_MAP,
        ] {
            let data = MapData::from_pin(pins.map(name)).map_err(map_error(name))?;
            maps.insert(name, Map::from_map_data(data).map_err(map_error(name))?);
        }
        Ok(Self(maps))
    }
}

impl MapSource for PinnedMaps {
    fn map(&self, name: &str) -> Option<&Map> {
        self.0.get(name)
    }
    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        self.0.get_mut(name)
    }
}

/// The maps of one list.
#[derive(Clone, Copy)]
struct ListMaps {
    v4: &'static str,
    v6: &'static str,
    v4_by_length: &'static str,
    v6_by_length: &'static str,
    hits: &'static str,
    /// Indexes in [`EdgeSettings::shapes`].
    v4_shape: usize,
    v6_shape: usize,
}

const DENY: ListMaps = ListMaps {
    v4: DENY_V4_MAP,
    v6: DENY_V6_MAP,
    v4_by_length: DENY_V4_BY_LENGTH_MAP,
    v6_by_length: DENY_V6_BY_LENGTH_MAP,
    hits: DENY_HITS_MAP,
    v4_shape: SHAPE_DENY_V4,
    v6_shape: SHAPE_DENY_V6,
};
const ALLOW: ListMaps = ListMaps {
    v4: ALLOW_V4_MAP,
    v6: ALLOW_V6_MAP,
    v4_by_length: ALLOW_V4_BY_LENGTH_MAP,
    v6_by_length: ALLOW_V6_BY_LENGTH_MAP,
    hits: ALLOW_HITS_MAP,
    v4_shape: SHAPE_ALLOW_V4,
    v6_shape: SHAPE_ALLOW_V6,
};

/// What a list's sync leaves to do once the settings are written.
struct Stale {
    entries: Vec<IpNet>,
    v4_keys: Vec<PrefixKeyV4>,
    v6_keys: Vec<PrefixKeyV6>,
}

/// How `nets` of one family are best looked up: nothing for an empty list, the
/// by-length hash for a few distinct lengths (longest first), else the trie.
fn shape_of<'a>(nets: impl Iterator<Item = &'a IpNet>) -> ListShape {
    let mut lengths: Vec<u8> = nets.map(IpNet::prefix_len).collect();
    lengths.sort_unstable_by(|a, b| b.cmp(a));
    lengths.dedup();
    let mut shape = ListShape::default();
    if lengths.len() > MAX_HASHED_LENGTHS {
        shape.count = LOOKUP_BY_TRIE;
    } else {
        shape.count = lengths.len() as u8;
        shape.lengths[..lengths.len()].copy_from_slice(&lengths);
    }
    shape
}

/// Makes the by-length hashes hold exactly the entries of `ids` (inserting what is
/// missing or changed now); returns the keys to remove after the settings are written.
fn mirror_by_length(
    ebpf: &mut dyn MapSource,
    maps: ListMaps,
    ids: &HashMap<IpNet, u32>,
) -> Result<(Vec<PrefixKeyV4>, Vec<PrefixKeyV6>), XdpError> {
    let mut want_v4 = HashMap::new();
    let mut want_v6 = HashMap::new();
    for (net, id) in ids {
        match net {
            IpNet::V4(n) => {
                want_v4.insert(PrefixKeyV4::masked(n.addr().octets(), n.prefix_len()), *id);
            }
            IpNet::V6(n) => {
                want_v6.insert(PrefixKeyV6::masked(&n.addr().octets(), n.prefix_len()), *id);
            }
        }
    }
    let stale_v4 = mirror_one(ebpf, maps.v4_by_length, &want_v4)?;
    let stale_v6 = mirror_one(ebpf, maps.v6_by_length, &want_v6)?;
    Ok((stale_v4, stale_v6))
}

/// Inserts what hash `name` lacks of `want` (or holds with another id); returns the keys
/// it holds beyond `want`.
fn mirror_one<K: aya::Pod + Eq + std::hash::Hash>(
    ebpf: &mut dyn MapSource,
    name: &'static str,
    want: &HashMap<K, u32>,
) -> Result<Vec<K>, XdpError> {
    let mut table =
        BpfHashMap::<_, K, u32>::try_from(map_mut(ebpf, name)?).map_err(map_error(name))?;
    let present: HashMap<K, u32> = table.iter().filter_map(Result::ok).collect();
    for (key, id) in want {
        if present.get(key) != Some(id) {
            table.insert(key, id, 0).map_err(map_error(name))?;
        }
    }
    Ok(present
        .into_keys()
        .filter(|k| !want.contains_key(k))
        .collect())
}

fn remove_by_length(
    ebpf: &mut dyn MapSource,
    maps: ListMaps,
    stale: &Stale,
) -> Result<(), XdpError> {
    let name = maps.v4_by_length;
    let mut v4 = BpfHashMap::<_, PrefixKeyV4, u32>::try_from(map_mut(ebpf, name)?)
        .map_err(map_error(name))?;
    for key in &stale.v4_keys {
        v4.remove(key).map_err(map_error(name))?;
    }
    let name = maps.v6_by_length;
    let mut v6 = BpfHashMap::<_, PrefixKeyV6, u32>::try_from(map_mut(ebpf, name)?)
        .map_err(map_error(name))?;
    for key in &stale.v6_keys {
        v6.remove(key).map_err(map_error(name))?;
    }
    Ok(())
}

/// A live ACL entry as kept in the pinned bookkeeping map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedEntry {
    pub deny: bool,
    pub net: IpNet,
    /// When it expires (`None`: never).
    pub expires: Option<SystemTime>,
}

pub(super) fn map_error(name: &'static str) -> impl Fn(MapError) -> XdpError {
    move |source| XdpError::Map { name, source }
}

pub(super) fn map_mut<'a>(
    ebpf: &'a mut dyn MapSource,
    name: &'static str,
) -> Result<&'a mut Map, XdpError> {
    ebpf.map_mut(name).ok_or_else(|| super::missing_map(name))
}

pub(super) fn map<'a>(ebpf: &'a dyn MapSource, name: &'static str) -> Result<&'a Map, XdpError> {
    ebpf.map(name).ok_or_else(|| super::missing_map(name))
}

fn v4_trie<'a>(
    ebpf: &'a mut dyn MapSource,
    name: &'static str,
) -> Result<LpmTrie<&'a mut MapData, [u8; 4], u32>, XdpError> {
    LpmTrie::try_from(map_mut(ebpf, name)?).map_err(map_error(name))
}

fn v6_trie<'a>(
    ebpf: &'a mut dyn MapSource,
    name: &'static str,
) -> Result<LpmTrie<&'a mut MapData, [u8; 16], u32>, XdpError> {
    LpmTrie::try_from(map_mut(ebpf, name)?).map_err(map_error(name))
}

/// Every entry of a list and its id.
fn read_list(ebpf: &dyn MapSource, maps: ListMaps) -> Result<HashMap<IpNet, u32>, XdpError> {
    let mut entries = HashMap::new();
    let v4 =
        LpmTrie::<_, [u8; 4], u32>::try_from(map(ebpf, maps.v4)?).map_err(map_error(maps.v4))?;
    for item in v4.iter() {
        let (key, id) = item.map_err(map_error(maps.v4))?;
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8) {
            entries.insert(IpNet::V4(net), id);
        }
    }
    let v6 =
        LpmTrie::<_, [u8; 16], u32>::try_from(map(ebpf, maps.v6)?).map_err(map_error(maps.v6))?;
    for item in v6.iter() {
        let (key, id) = item.map_err(map_error(maps.v6))?;
        if let Ok(net) = Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8) {
            entries.insert(IpNet::V6(net), id);
        }
    }
    Ok(entries)
}

fn insert(ebpf: &mut dyn MapSource, maps: ListMaps, net: &IpNet, id: u32) -> Result<(), XdpError> {
    match net {
        IpNet::V4(n) => v4_trie(ebpf, maps.v4)?
            .insert(
                &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                id,
                0,
            )
            .map_err(map_error(maps.v4)),
        IpNet::V6(n) => v6_trie(ebpf, maps.v6)?
            .insert(
                &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                id,
                0,
            )
            .map_err(map_error(maps.v6)),
    }
}

fn remove(ebpf: &mut dyn MapSource, maps: ListMaps, net: &IpNet) -> Result<(), XdpError> {
    match net {
        IpNet::V4(n) => v4_trie(ebpf, maps.v4)?
            .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets()))
            .map_err(map_error(maps.v4)),
        IpNet::V6(n) => v6_trie(ebpf, maps.v6)?
            .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets()))
            .map_err(map_error(maps.v6)),
    }
}

/// Adds what `wanted` has and the maps lack (free ids, counters zeroed) to the trie and
/// the by-length hashes; returns what to remove once the settings are written.
fn add_missing(
    ebpf: &mut dyn MapSource,
    maps: ListMaps,
    wanted: &[IpNet],
) -> Result<Stale, XdpError> {
    let present = read_list(ebpf, maps)?;
    let mut used: HashSet<u32> = wanted
        .iter()
        .filter_map(|n| present.get(n).copied())
        .collect();
    let mut ids: HashMap<IpNet, u32> = wanted
        .iter()
        .filter_map(|n| Some((*n, *present.get(n)?)))
        .collect();
    let mut next_id = 0u32;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| XdpError::Cpus(e))?;
    let zero = || {
        PerCpuValues::try_from(vec![0u64; cpus])
            .map_err(|e| XdpError::Cpus(std::io::Error::other(e)))
    };
    for net in wanted.iter().filter(|n| !present.contains_key(n)) {
        while used.contains(&next_id) {
            next_id += 1;
        }
        if next_id >= MAX_LIST_ENTRIES {
            return Err(XdpError::ListFull(MAX_LIST_ENTRIES));
        }
        PerCpuArray::<_, u64>::try_from(map_mut(ebpf, maps.hits)?)
            .map_err(map_error(maps.hits))?
            .set(next_id, zero()?, 0)
            .map_err(map_error(maps.hits))?;
        insert(ebpf, maps, net, next_id)?;
        ids.insert(*net, next_id);
        used.insert(next_id);
    }
    let (v4_keys, v6_keys) = mirror_by_length(ebpf, maps, &ids)?;
    Ok(Stale {
        entries: present
            .into_keys()
            .filter(|n| !wanted.contains(n))
            .collect(),
        v4_keys,
        v6_keys,
    })
}

/// Brings the maps to `policy`, protecting the ports of `listeners`.
pub fn sync(
    ebpf: &mut dyn MapSource,
    policy: &EdgePolicyConfig,
    listeners: &[SocketAddr],
) -> Result<(), XdpError> {
    let stale_deny = add_missing(ebpf, DENY, &policy.deny)?;
    let stale_allow = add_missing(ebpf, ALLOW, &policy.allow)?;
    write_protected_ports(ebpf, listeners)?;
    let mut flags = 0;
    if !policy.allow.is_empty() {
        flags |= EDGE_ALLOW_ACTIVE;
    }
    if policy.protect_all {
        flags |= EDGE_PROTECT_ALL;
    }
    let (rate, burst) = policy.syn_guard.map_or((0, 0), |g| {
        flags |= EDGE_SYN_GUARD;
        (g.rate_per_sec, g.burst)
    });
    let mut shapes = [ListShape::default(); 4];
    for (maps, list) in [(DENY, &policy.deny), (ALLOW, &policy.allow)] {
        shapes[maps.v4_shape] = shape_of(list.iter().filter(|n| matches!(n, IpNet::V4(_))));
        shapes[maps.v6_shape] = shape_of(list.iter().filter(|n| matches!(n, IpNet::V6(_))));
    }
    let settings = EdgeSettings {
        flags,
        syn_rate_per_sec: rate,
        syn_burst: burst,
        _pad: 0,
        shapes,
    };
    Array::<_, EdgeSettings>::try_from(map_mut(ebpf, SETTINGS_MAP)?)
        .map_err(map_error(SETTINGS_MAP))?
        .set(0, settings, 0)
        .map_err(map_error(SETTINGS_MAP))?;
    for (maps, stale) in [(DENY, &stale_deny), (ALLOW, &stale_allow)] {
        for net in &stale.entries {
            remove(ebpf, maps, net)?;
        }
        remove_by_length(ebpf, maps, stale)?;
    }
    Ok(())
}

/// Writes the TCP ports of `listeners` as the protected set (only changed words).
fn write_protected_ports(
    ebpf: &mut dyn MapSource,
    listeners: &[SocketAddr],
) -> Result<(), XdpError> {
    let mut wanted = vec![0u64; PROTECTED_WORDS as usize];
    for addr in listeners {
        if let Some((word, bit)) = protected_slot(addr.port(), 6) {
            wanted[word as usize] |= bit;
        }
    }
    let mut protected = Array::<_, u64>::try_from(map_mut(ebpf, PROTECTED_MAP)?)
        .map_err(map_error(PROTECTED_MAP))?;
    for (word, bits) in wanted.into_iter().enumerate() {
        let word = word as u32;
        if protected.get(&word, 0).map_err(map_error(PROTECTED_MAP))? != bits {
            protected
                .set(word, bits, 0)
                .map_err(map_error(PROTECTED_MAP))?;
        }
    }
    Ok(())
}

/// Packets each of `nets` matched, summed over CPUs (`None` for a net not in the maps).
pub fn hits(
    ebpf: &dyn MapSource,
    deny: bool,
    nets: &[IpNet],
) -> Result<Vec<Option<u64>>, XdpError> {
    let maps = if deny { DENY } else { ALLOW };
    let ids = read_list(ebpf, maps)?;
    let counters =
        PerCpuArray::<_, u64>::try_from(map(ebpf, maps.hits)?).map_err(map_error(maps.hits))?;
    nets.iter()
        .map(|net| {
            ids.get(net)
                .map(|id| {
                    counters
                        .get(id, 0)
                        .map(|per_cpu| per_cpu.iter().sum())
                        .map_err(map_error(maps.hits))
                })
                .transpose()
        })
        .collect()
}

fn live_key(entry_deny: bool, net: &IpNet) -> LiveEntryKey {
    let mut key = LiveEntryKey {
        list: if entry_deny {
            LIVE_LIST_DENY
        } else {
            LIVE_LIST_ALLOW
        },
        prefix_len: net.prefix_len(),
        ..LiveEntryKey::default()
    };
    match net {
        IpNet::V4(n) => {
            key.family = 4;
            key.addr[..4].copy_from_slice(&n.addr().octets());
        }
        IpNet::V6(n) => {
            key.family = 6;
            key.addr = n.addr().octets();
        }
    }
    key
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs().max(1))
}

/// The live entries recorded in the pinned bookkeeping map.
pub fn live_entries(ebpf: &dyn MapSource) -> Result<Vec<PersistedEntry>, XdpError> {
    let table = BpfHashMap::<_, LiveEntryKey, u64>::try_from(map(ebpf, LIVE_ACL_MAP)?)
        .map_err(map_error(LIVE_ACL_MAP))?;
    let mut out = Vec::new();
    for item in table.iter() {
        let (key, expires) = item.map_err(map_error(LIVE_ACL_MAP))?;
        let net = match key.family {
            4 => {
                let mut octets = [0u8; 4];
                octets.copy_from_slice(&key.addr[..4]);
                Ipv4Net::new(Ipv4Addr::from(octets), key.prefix_len).map(IpNet::V4)
            }
            _ => Ipv6Net::new(Ipv6Addr::from(key.addr), key.prefix_len).map(IpNet::V6),
        };
        let Ok(net) = net else { continue };
        out.push(PersistedEntry {
            deny: key.list == LIVE_LIST_DENY,
            net,
            expires: (expires != 0).then(|| UNIX_EPOCH + Duration::from_secs(expires)),
        });
    }
    Ok(out)
}

/// Makes the bookkeeping map hold exactly `entries`.
pub fn store_live_entries(
    ebpf: &mut dyn MapSource,
    entries: &[PersistedEntry],
) -> Result<(), XdpError> {
    let stale: Vec<LiveEntryKey> = {
        let wanted: HashSet<LiveEntryKey> =
            entries.iter().map(|e| live_key(e.deny, &e.net)).collect();
        let table = BpfHashMap::<_, LiveEntryKey, u64>::try_from(map(ebpf, LIVE_ACL_MAP)?)
            .map_err(map_error(LIVE_ACL_MAP))?;
        table
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect()
    };
    let mut table = BpfHashMap::<_, LiveEntryKey, u64>::try_from(map_mut(ebpf, LIVE_ACL_MAP)?)
        .map_err(map_error(LIVE_ACL_MAP))?;
    for entry in entries {
        let expires = entry.expires.map_or(0, unix_seconds);
        table
            .insert(live_key(entry.deny, &entry.net), expires, 0)
            .map_err(map_error(LIVE_ACL_MAP))?;
    }
    for key in stale {
        table.remove(&key).map_err(map_error(LIVE_ACL_MAP))?;
    }
    Ok(())
}

/// Per-CPU packet counters of `slots` slots of `name`, summed over CPUs.
pub fn summed_counters(
    ebpf: &dyn MapSource,
    name: &'static str,
    slots: u32,
) -> Result<Vec<PacketCounter>, XdpError> {
    let array =
        PerCpuArray::<_, PacketCounter>::try_from(map(ebpf, name)?).map_err(map_error(name))?;
    (0..slots)
        .map(|slot| {
            let per_cpu = array.get(&slot, 0).map_err(map_error(name))?;
            Ok(per_cpu
                .iter()
                .fold(PacketCounter::default(), |acc, c| PacketCounter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                }))
        })
        .collect()
}

/// Verdict counters summed over CPUs, in [`Verdict::ALL`] order.
pub fn verdicts(ebpf: &dyn MapSource) -> Result<Vec<(Verdict, PacketCounter)>, XdpError> {
    let sums = summed_counters(ebpf, VERDICT_MAP, Verdict::COUNT)?;
    Ok(Verdict::ALL.iter().copied().zip(sums).collect())
}

/// Every entry of a list with its hit count, for the CLI's view of the pins.
pub fn entries_with_hits(ebpf: &dyn MapSource, deny: bool) -> Result<Vec<(IpNet, u64)>, XdpError> {
    let maps = if deny { DENY } else { ALLOW };
    let mut nets: Vec<IpNet> = read_list(ebpf, maps)?.into_keys().collect();
    nets.sort();
    let counts = hits(ebpf, deny, &nets)?;
    Ok(nets
        .into_iter()
        .zip(counts)
        .map(|(net, hits)| (net, hits.unwrap_or(0)))
        .collect())
}
