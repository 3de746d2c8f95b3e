//! What the L4 maps should hold, computed without touching them: stable ids for
//! services and targets, each service's region of the shared ring array, and its Maglev
//! ring. Ids outlive reloads (and, read back from the pinned maps, restarts), so
//! counters and remembered flows keep pointing at the same targets.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use gateway_common::{
    L4_HASH_NO_PORTS, L4_RING_CAPACITY, MAX_L4_REALS, MAX_L4_SERVICES, NO_REAL, Real, VipKey,
    VipService,
};

use crate::{config::L4ServiceConfig, upstream::maglev::Maglev};

/// Why the tables cannot hold a config.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("no free L4 service slot (at most {MAX_L4_SERVICES})")]
    NoServiceSlot,
    #[error("no free L4 target slot (at most {MAX_L4_REALS})")]
    NoRealSlot,
    #[error("no room for a table of {0} slots in the shared ring ({L4_RING_CAPACITY} slots)")]
    NoRingSpace(u32),
}

/// A service's place: its counter slot and its ring region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub id: u32,
    pub offset: u32,
    pub size: u32,
}

/// Id and ring-region allocation.
#[derive(Debug, Default)]
pub struct Ids {
    services: BTreeMap<VipKey, Placement>,
    reals: BTreeMap<(VipKey, [u8; 16]), u32>,
    /// Regions still read by a VIP entry that is being replaced: (offset, size).
    retiring: Vec<(u32, u32)>,
}

/// An address as the maps hold it: IPv4 as IPv4-mapped IPv6.
pub fn addr_bytes(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address the maps hold, back as an [`IpAddr`].
pub fn addr_of(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// The map key of a service.
pub fn vip_key(service: &L4ServiceConfig) -> VipKey {
    VipKey {
        addr: addr_bytes(service.vip),
        port_be: service.port.unwrap_or(0).to_be(),
        protocol: service.protocol.number(),
        _pad: 0,
    }
}

/// The map value of a service at `place`.
pub fn vip_service(service: &L4ServiceConfig, place: Placement) -> VipService {
    VipService {
        id: place.id,
        ring_offset: place.offset,
        ring_size: place.size,
        flags: if service.hash_ports {
            0
        } else {
            L4_HASH_NO_PORTS
        },
    }
}

impl Ids {
    /// The ids a previous process left in the pinned maps.
    pub fn restore(services: &[(VipKey, VipService)], reals: &[(u32, Real)]) -> Self {
        Self {
            services: services
                .iter()
                .map(|(key, s)| {
                    let place = Placement {
                        id: s.id,
                        offset: s.ring_offset,
                        size: s.ring_size,
                    };
                    (*key, place)
                })
                .collect(),
            reals: reals
                .iter()
                .map(|(id, real)| ((real.vip, real.addr), *id))
                .collect(),
            retiring: Vec::new(),
        }
    }

    /// The placement of `key` with a ring of `size`: the one it has, or a new one. When
    /// the size changed, the old region is returned: the VIP entry still points there
    /// until it is rewritten, then [`Ids::retire_done`] frees it.
    pub fn place_service(
        &mut self,
        key: VipKey,
        size: u32,
    ) -> Result<(Placement, Option<(u32, u32)>), TableError> {
        if let Some(place) = self.services.get(&key).copied() {
            if place.size == size {
                return Ok((place, None));
            }
            let offset = self.free_region(size)?;
            let new = Placement {
                offset,
                size,
                ..place
            };
            self.retiring.push((place.offset, place.size));
            self.services.insert(key, new);
            return Ok((new, Some((place.offset, place.size))));
        }
        let used: Vec<u32> = self.services.values().map(|p| p.id).collect();
        let id = (0..MAX_L4_SERVICES)
            .find(|id| !used.contains(id))
            .ok_or(TableError::NoServiceSlot)?;
        let offset = self.free_region(size)?;
        let place = Placement { id, offset, size };
        self.services.insert(key, place);
        Ok((place, None))
    }

    /// Regions being replaced are no longer read.
    pub fn retire_done(&mut self) {
        self.retiring.clear();
    }

    /// Forgets a removed service (its region and id become free).
    pub fn release_service(&mut self, key: &VipKey) {
        self.services.remove(key);
    }

    /// The id of target `addr` of `key`, and whether it is new.
    pub fn real(&mut self, key: VipKey, addr: [u8; 16]) -> Result<(u32, bool), TableError> {
        if let Some(id) = self.reals.get(&(key, addr)) {
            return Ok((*id, false));
        }
        let mut used: Vec<u32> = self.reals.values().copied().collect();
        used.sort_unstable();
        let id = (0..MAX_L4_REALS)
            .find(|id| used.binary_search(id).is_err())
            .ok_or(TableError::NoRealSlot)?;
        self.reals.insert((key, addr), id);
        Ok((id, true))
    }

    /// Forgets a removed target; its id, if it had one.
    pub fn release_real(&mut self, key: VipKey, addr: [u8; 16]) -> Option<u32> {
        self.reals.remove(&(key, addr))
    }

    /// Every (service, target address) with an id.
    pub fn reals(&self) -> impl Iterator<Item = (VipKey, [u8; 16], u32)> + '_ {
        self.reals.iter().map(|((k, a), id)| (*k, *a, *id))
    }

    /// Every service with a placement.
    pub fn services(&self) -> impl Iterator<Item = (VipKey, Placement)> + '_ {
        self.services.iter().map(|(k, p)| (*k, *p))
    }

    /// First fit among the regions in use (and those retiring).
    fn free_region(&self, size: u32) -> Result<u32, TableError> {
        let mut used: Vec<(u32, u32)> = self
            .services
            .values()
            .map(|p| (p.offset, p.size))
            .chain(self.retiring.iter().copied())
            .collect();
        used.sort_unstable();
        let mut start = 0u32;
        for (offset, len) in used {
            if offset >= start && offset - start >= size {
                return Ok(start);
            }
            start = start.max(offset + len);
        }
        if L4_RING_CAPACITY - start >= size {
            Ok(start)
        } else {
            Err(TableError::NoRingSpace(size))
        }
    }
}

/// The ring of `service`: slot → real id (`real_ids[i]` is target `i`'s), only targets
/// `up` and weighted above zero; every slot [`NO_REAL`] when none is.
pub fn ring(service: &L4ServiceConfig, real_ids: &[u32], up: &[bool]) -> Vec<u32> {
    // Names are what make two appliances agree: the target's address, nothing local.
    let names: Vec<String> = service.targets.iter().map(|t| t.addr.to_string()).collect();
    let weights: Vec<u32> = service.targets.iter().map(|t| t.weight).collect();
    let table = Maglev::build_sized(&names, &weights, up, service.table_size as usize);
    if table.slots().is_empty() {
        return vec![NO_REAL; service.table_size as usize];
    }
    table
        .slots()
        .iter()
        .map(|&t| real_ids[t as usize])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{L4Protocol, L4TargetConfig};

    fn service(targets: usize, size: u32) -> L4ServiceConfig {
        L4ServiceConfig {
            name: "svc".into(),
            vip: "10.0.0.100".parse().unwrap(),
            port: Some(80),
            protocol: L4Protocol::Tcp,
            hash_ports: true,
            table_size: size,
            targets: (0..targets)
                .map(|i| L4TargetConfig {
                    addr: format!("10.0.1.{}", i + 1).parse().unwrap(),
                    weight: 1 + (i as u32 % 3),
                })
                .collect(),
            health_check: None,
        }
    }

    fn shares(ring: &[u32]) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for &r in ring {
            *counts.entry(r).or_default() += 1;
        }
        counts
    }

    #[test]
    fn shares_follow_weights_within_one_percent() {
        let s = service(7, 65_537);
        let ids: Vec<u32> = (100..107).collect();
        let ring = ring(&s, &ids, &[true; 7]);
        let total_weight: u32 = s.targets.iter().map(|t| t.weight).sum();
        for (i, count) in shares(&ring) {
            let weight = s.targets[(i - 100) as usize].weight;
            let share = count as f64 / ring.len() as f64;
            let expected = f64::from(weight) / f64::from(total_weight);
            assert!(
                (share - expected).abs() < 0.01,
                "{i}: {share} vs {expected}"
            );
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth_of_the_slots_and_builds_are_identical() {
        let n = 10;
        let s = service(n, 65_537);
        let ids: Vec<u32> = (0..n as u32).collect();
        let all = ring(&s, &ids, &vec![true; n]);
        assert_eq!(all, ring(&s, &ids, &vec![true; n]), "deterministic");
        let mut up = vec![true; n];
        up[4] = false;
        let without = ring(&s, &ids, &up);
        let moved = all.iter().zip(&without).filter(|(a, b)| a != b).count();
        let owned_by_removed = all.iter().filter(|&&r| r == 4).count();
        assert!(without.iter().all(|&r| r != 4));
        // Every slot of the removed target moves; of the others, only a few percent.
        assert!(moved >= owned_by_removed);
        let bound = all.len() as f64 * (1.0 / n as f64) * 1.5;
        assert!((moved as f64) < bound, "moved {moved} of {}", all.len());
        // Ids are names of slots, not inputs to the hash: other ids give the same shape.
        let other_ids: Vec<u32> = (50..50 + n as u32).collect();
        let renamed = ring(&s, &other_ids, &vec![true; n]);
        assert!(all.iter().zip(&renamed).all(|(a, b)| a + 50 == *b));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Any weights: shares within 1% of the weights, removing any one target moves
        /// its own slots and few others, and a rebuild is identical.
        #[test]
        fn any_weights_give_weighted_shares_and_small_moves(
            weights in proptest::collection::vec(1u32..8, 2..12),
            removed in 0usize..12,
        ) {
            let n = weights.len();
            let removed = removed % n;
            let mut s = service(n, 65_537);
            for (t, w) in s.targets.iter_mut().zip(&weights) {
                t.weight = *w;
            }
            let ids: Vec<u32> = (0..n as u32).collect();
            let all = ring(&s, &ids, &vec![true; n]);
            proptest::prop_assert_eq!(&all, &ring(&s, &ids, &vec![true; n]));
            let total: u32 = weights.iter().sum();
            let counts = shares(&all);
            for (i, w) in weights.iter().enumerate() {
                let share = counts.get(&(i as u32)).copied().unwrap_or(0) as f64 / all.len() as f64;
                let expected = f64::from(*w) / f64::from(total);
                proptest::prop_assert!((share - expected).abs() < 0.01, "target {}: {} vs {}", i, share, expected);
            }
            let mut up = vec![true; n];
            up[removed] = false;
            let without = ring(&s, &ids, &up);
            let own = all.iter().filter(|&&r| r == removed as u32).count();
            let others_moved = all
                .iter()
                .zip(&without)
                .filter(|(a, b)| a != b && **a != removed as u32)
                .count();
            proptest::prop_assert!(without.iter().all(|&r| r != removed as u32));
            // Maglev moves a few percent of the other slots at most.
            proptest::prop_assert!((others_moved as f64) < 0.05 * all.len() as f64 + own as f64 * 0.2,
                "{} other slots moved, {} own", others_moved, own);
        }
    }

    #[test]
    fn no_live_target_fills_the_ring_with_no_real() {
        let s = service(2, 211);
        assert!(
            ring(&s, &[1, 2], &[false, false])
                .iter()
                .all(|&r| r == NO_REAL)
        );
    }

    #[test]
    fn ids_are_stable_and_regions_never_overlap() {
        let mut ids = Ids::default();
        let a = vip_key(&service(1, 211));
        let mut b = a;
        b.port_be = 443u16.to_be();
        let (pa, _) = ids.place_service(a, 65_537).unwrap();
        let (pb, _) = ids.place_service(b, 65_537).unwrap();
        assert_ne!(pa.id, pb.id);
        assert!(pa.offset + pa.size <= pb.offset || pb.offset + pb.size <= pa.offset);
        assert_eq!(ids.place_service(a, 65_537).unwrap(), (pa, None));
        // Resizing moves the service to a new region while the old one retires.
        let (bigger, old) = ids.place_service(a, 131_071).unwrap();
        assert_eq!(old, Some((pa.offset, pa.size)));
        assert_eq!(bigger.id, pa.id);
        assert!(bigger.offset >= pb.offset + pb.size || bigger.offset + bigger.size <= pb.offset);
        assert!(bigger.offset >= pa.offset + pa.size || bigger.offset + bigger.size <= pa.offset);
        ids.retire_done();
        let (r1, new1) = ids.real(a, [1; 16]).unwrap();
        let (r2, new2) = ids.real(a, [2; 16]).unwrap();
        assert!(new1 && new2 && r1 != r2);
        assert_eq!(ids.real(a, [1; 16]).unwrap(), (r1, false));
        assert_eq!(ids.release_real(a, [1; 16]), Some(r1));
        // Restoring from what the maps hold gives the same ids back.
        let services = vec![(b, vip_service(&service(1, 211), pb))];
        let reals = vec![(
            r2,
            Real {
                addr: [2; 16],
                vip: a,
                flags: gateway_common::REAL_IN_USE,
            },
        )];
        let mut restored = Ids::restore(&services, &reals);
        assert_eq!(restored.real(a, [2; 16]).unwrap(), (r2, false));
        assert_eq!(restored.place_service(b, 65_537).unwrap(), (pb, None));
    }

    #[test]
    fn a_full_ring_is_an_error() {
        let mut ids = Ids::default();
        let mut key = vip_key(&service(1, 211));
        let size = 1_048_573;
        for port in 0..4u16 {
            key.port_be = port.to_be();
            ids.place_service(key, size).unwrap();
        }
        key.port_be = 9u16.to_be();
        assert_eq!(
            ids.place_service(key, size).unwrap_err(),
            TableError::NoRingSpace(size)
        );
    }
}
