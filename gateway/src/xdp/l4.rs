//! Reading and writing the L4 balancer's maps (layouts in `gateway_common::l4`). What to
//! write, and in which order, is `crate::l4`'s business; this is only the map I/O.

use aya::maps::{Array, HashMap as BpfHashMap, MapError, PerCpuArray};
use gateway_common::{
    IndexedVip, L4_NEXT_HOPS_MAP, L4_PORTS_MAP, L4_REAL_STATS_MAP, L4_REALS_MAP, L4_RINGS_MAP,
    L4_SERVICE_STATS_MAP, L4_SERVICES_MAP, L4_SERVICES_V4_MAP, L4_SETTINGS_MAP, L4Counter,
    L4Settings, MAX_L4_REALS, NextHop, Real, VIP_SLOT_IN_USE, VIP_SLOT_SHARED, VipKey, VipKeyV4,
    VipService, VipSlot,
};

use super::{
    XdpError,
    lists::{MapSource, map, map_error, map_mut},
};

/// The L4 maps of a loaded program.
pub struct L4Maps<'a> {
    pub(super) ebpf: &'a mut dyn MapSource,
}

impl L4Maps<'_> {
    /// Writes the appliance-wide settings (`flow_cache_epoch` is the map's, raised).
    pub fn write_settings(&mut self, settings: &L4Settings) -> Result<(), XdpError> {
        self.write_settings_with(|_| *settings)
    }

    /// Writes `change(current settings)` under the next flow cache epoch, so no CPU
    /// trusts a flow cache slot filled before.
    fn write_settings_with(
        &mut self,
        change: impl FnOnce(&L4Settings) -> L4Settings,
    ) -> Result<(), XdpError> {
        let name = L4_SETTINGS_MAP;
        let mut array: Array<_, L4Settings> =
            Array::try_from(map_mut(self.ebpf, name)?).map_err(map_error(name))?;
        let current = array.get(&0, 0).map_err(map_error(name))?;
        let mut next = change(&current);
        // Epochs start at 1: an all-zero cache slot never matches.
        next.flow_cache_epoch = current.flow_cache_epoch.wrapping_add(1).max(1);
        array.set(0, next, 0).map_err(map_error(name))
    }

    /// Writes real `id`. The flow cache epoch is raised first: a flow that a CPU's cache
    /// still sends to this real (say, one that went down, moved elsewhere in the
    /// connection table through another CPU, and is now coming back up) is looked up
    /// in the connection table again. A real going down needs no epoch (the cache
    /// checks that its target is up), but every write raises it, which is simpler to
    /// trust and cheap: reals change at health-check pace.
    pub fn write_real(&mut self, id: u32, real: &Real) -> Result<(), XdpError> {
        self.write_settings_with(|current| *current)?;
        let name = L4_REALS_MAP;
        let mut array: Array<_, Real> =
            Array::try_from(map_mut(self.ebpf, name)?).map_err(map_error(name))?;
        array.set(id, real, 0).map_err(map_error(name))
    }

    /// Every real slot in use (a restarted gateway maps its targets back to their ids).
    pub fn reals(&self) -> Result<Vec<(u32, Real)>, XdpError> {
        let name = L4_REALS_MAP;
        let array: Array<_, Real> =
            Array::try_from(map(self.ebpf, name)?).map_err(map_error(name))?;
        let mut out = Vec::new();
        for id in 0..MAX_L4_REALS {
            let real = array.get(&id, 0).map_err(map_error(name))?;
            if real.flags & gateway_common::REAL_IN_USE != 0 {
                out.push((id, real));
            }
        }
        Ok(out)
    }

    /// Writes the ring slots from `offset` that differ from `old` (every slot when there
    /// is no old ring of the same length); returns how many were written.
    pub fn write_ring(
        &mut self,
        offset: u32,
        slots: &[u32],
        old: Option<&[u32]>,
    ) -> Result<usize, XdpError> {
        let name = L4_RINGS_MAP;
        let mut array: Array<_, u32> =
            Array::try_from(map_mut(self.ebpf, name)?).map_err(map_error(name))?;
        let old = old.filter(|o| o.len() == slots.len());
        let mut written = 0;
        for (i, &slot) in slots.iter().enumerate() {
            if old.is_some_and(|o| o[i] == slot) {
                continue;
            }
            array
                .set(offset + i as u32, slot, 0)
                .map_err(map_error(name))?;
            written += 1;
        }
        Ok(written)
    }

    /// Reads `len` ring slots from `offset`.
    pub fn ring(&self, offset: u32, len: u32) -> Result<Vec<u32>, XdpError> {
        let name = L4_RINGS_MAP;
        let array: Array<_, u32> =
            Array::try_from(map(self.ebpf, name)?).map_err(map_error(name))?;
        (offset..offset + len)
            .map(|i| array.get(&i, 0).map_err(map_error(name)))
            .collect()
    }

    /// Brings the port bitmap to `words` (only the words that differ are written).
    pub fn write_ports(&mut self, words: &[u64]) -> Result<(), XdpError> {
        let name = L4_PORTS_MAP;
        let mut array: Array<_, u64> =
            Array::try_from(map_mut(self.ebpf, name)?).map_err(map_error(name))?;
        for (i, &word) in words.iter().enumerate() {
            let i = i as u32;
            if array.get(&i, 0).map_err(map_error(name))? != word {
                array.set(i, word, 0).map_err(map_error(name))?;
            }
        }
        Ok(())
    }

    /// Puts a VIP in service (or changes it): an IPv4 VIP in the compact map and its
    /// index slot (and out of the wide map, where an older program kept it), an IPv6
    /// VIP in the wide map.
    pub fn insert_service(&mut self, key: &VipKey, service: &VipService) -> Result<(), XdpError> {
        let Some(compact) = key.v4() else {
            self.insert_into(L4_SERVICES_MAP, key, service)?;
            return self.index_vip(key, Some(service));
        };
        self.insert_into(L4_SERVICES_V4_MAP, &compact, service)?;
        self.index_vip(&compact, Some(service))?;
        self.remove_from(L4_SERVICES_MAP, key)
    }

    /// Takes a VIP out of service (absent is fine), from every map.
    pub fn remove_service(&mut self, key: &VipKey) -> Result<(), XdpError> {
        match key.v4() {
            Some(compact) => {
                self.remove_from(L4_SERVICES_V4_MAP, &compact)?;
                self.index_vip(&compact, None)?;
            }
            None => self.index_vip(key, None)?,
        }
        self.remove_from(L4_SERVICES_MAP, key)
    }

    /// Keeps `key`'s index slot in step with the hash map (already written): the VIP's
    /// own slot, or a free one, gets its service (`None`: is emptied, still marked shared
    /// if it was); another VIP's slot is marked shared, so the program asks the hash map.
    /// Each write is one whole slot, so a packet sees the old slot, the new one, or a
    /// torn one that fails its check.
    fn index_vip<K: IndexedVip>(
        &mut self,
        key: &K,
        service: Option<&VipService>,
    ) -> Result<(), XdpError>
    where
        VipSlot<K>: aya::Pod,
    {
        let slot = self.vip_slot(key)?;
        let name = K::INDEX_MAP;
        let mut index: Array<_, VipSlot<K>> =
            Array::try_from(map_mut(self.ebpf, name)?).map_err(map_error(name))?;
        let at = key.index_slot();
        let own = slot.flags & VIP_SLOT_IN_USE != 0 && slot.key == *key;
        let shared = slot.flags & VIP_SLOT_SHARED;
        let next = match service {
            Some(service) if own || slot.flags & VIP_SLOT_IN_USE == 0 => {
                VipSlot::sealed(*key, *service, VIP_SLOT_IN_USE | shared)
            }
            Some(_) => VipSlot::sealed(slot.key, slot.service, slot.flags | VIP_SLOT_SHARED),
            None if own => VipSlot::sealed(K::default(), VipService::default(), shared),
            None => return Ok(()),
        };
        if next != slot {
            index.set(at, next, 0).map_err(map_error(name))?;
        }
        Ok(())
    }

    /// Every VIP in either map, once (the compact map's entry wins).
    pub fn services(&self) -> Result<Vec<(VipKey, VipService)>, XdpError> {
        let mut found = std::collections::BTreeMap::new();
        for (key, service) in self.entries::<VipKey>(L4_SERVICES_MAP)? {
            found.insert(key, service);
        }
        for (key, service) in self.entries::<VipKeyV4>(L4_SERVICES_V4_MAP)? {
            found.insert(key.mapped(), service);
        }
        Ok(found.into_iter().collect())
    }

    /// The VIP index slot `key` places in, as it is (whichever VIP holds it).
    pub fn vip_slot<K: IndexedVip>(&self, key: &K) -> Result<VipSlot<K>, XdpError>
    where
        VipSlot<K>: aya::Pod,
    {
        let name = K::INDEX_MAP;
        let index: Array<_, VipSlot<K>> =
            Array::try_from(map(self.ebpf, name)?).map_err(map_error(name))?;
        index.get(&key.index_slot(), 0).map_err(map_error(name))
    }

    fn insert_into<K: aya::Pod>(
        &mut self,
        name: &'static str,
        key: &K,
        service: &VipService,
    ) -> Result<(), XdpError> {
        let mut hash: BpfHashMap<_, K, VipService> =
            BpfHashMap::try_from(map_mut(self.ebpf, name)?).map_err(map_error(name))?;
        hash.insert(key, service, 0).map_err(map_error(name))
    }

    fn remove_from<K: aya::Pod>(&mut self, name: &'static str, key: &K) -> Result<(), XdpError> {
        let mut hash: BpfHashMap<_, K, VipService> =
            BpfHashMap::try_from(map_mut(self.ebpf, name)?).map_err(map_error(name))?;
        match hash.remove(key) {
            Ok(()) => Ok(()),
            // The kernel's "no such key" (aya passes the syscall's error through).
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(error) => Err(map_error(name)(error)),
        }
    }

    fn entries<K: aya::Pod>(&self, name: &'static str) -> Result<Vec<(K, VipService)>, XdpError> {
        let hash: BpfHashMap<_, K, VipService> =
            BpfHashMap::try_from(map(self.ebpf, name)?).map_err(map_error(name))?;
        hash.iter()
            .map(|entry| entry.map_err(map_error(name)))
            .collect()
    }

    /// Service counters (by service id) summed over CPUs.
    pub fn service_counters(&self, ids: &[u32]) -> Result<Vec<L4Counter>, XdpError> {
        summed(self.ebpf, L4_SERVICE_STATS_MAP, ids)
    }

    /// Real counters (by real id) summed over CPUs.
    pub fn real_counters(&self, ids: &[u32]) -> Result<Vec<L4Counter>, XdpError> {
        summed(self.ebpf, L4_REAL_STATS_MAP, ids)
    }

    /// Zeroes the counters and the cached next hop of real `id` (a fresh target must
    /// not inherit a removed one's).
    pub fn reset_real(&mut self, id: u32) -> Result<(), XdpError> {
        reset(self.ebpf, L4_REAL_STATS_MAP, id)?;
        let name = L4_NEXT_HOPS_MAP;
        let mut array: PerCpuArray<_, NextHop> =
            PerCpuArray::try_from(map_mut(self.ebpf, name)?).map_err(map_error(name))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| XdpError::Cpus(e))?;
        let empty = aya::maps::PerCpuValues::try_from(vec![NextHop::default(); cpus])
            .map_err(|e| XdpError::Cpus(std::io::Error::other(e)))?;
        array.set(id, empty, 0).map_err(map_error(name))
    }

    /// Zeroes the counters of service `id`.
    pub fn reset_service_counters(&mut self, id: u32) -> Result<(), XdpError> {
        reset(self.ebpf, L4_SERVICE_STATS_MAP, id)
    }
}

fn summed(
    ebpf: &dyn MapSource,
    name: &'static str,
    ids: &[u32],
) -> Result<Vec<L4Counter>, XdpError> {
    let array: PerCpuArray<_, L4Counter> =
        PerCpuArray::try_from(map(ebpf, name)?).map_err(map_error(name))?;
    ids.iter()
        .map(|id| {
            let per_cpu = array.get(id, 0).map_err(map_error(name))?;
            Ok(per_cpu
                .iter()
                .fold(L4Counter::default(), |acc, c| L4Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                    new_flows: acc.new_flows + c.new_flows,
                }))
        })
        .collect()
}

fn reset(ebpf: &mut dyn MapSource, name: &'static str, id: u32) -> Result<(), XdpError> {
    let mut array: PerCpuArray<_, L4Counter> =
        PerCpuArray::try_from(map_mut(ebpf, name)?).map_err(map_error(name))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| XdpError::Cpus(e))?;
    let zeros = aya::maps::PerCpuValues::try_from(vec![L4Counter::default(); cpus])
        .map_err(|e| XdpError::Cpus(std::io::Error::other(e)))?;
    array.set(id, zeros, 0).map_err(map_error(name))
}
