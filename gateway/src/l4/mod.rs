//! L4 load balancing in XDP (Katran's model), the userspace half: turns
//! `[[l4_services]]` into the XDP program's maps — VIP entries, targets, one Maglev ring
//! per service — keeps them in step with reloads and health checks, and reports what
//! they hold with their counters.
//!
//! Order of writes, so no packet sees a half-made service: targets before the ring that
//! names them, the ring before the VIP entry that points at it; on a target going down,
//! the new ring before the target's down flag (flows that remembered it are re-balanced
//! by the program from then on); on removal, the VIP entry first.

pub mod health;
pub mod tables;

use std::{net::IpAddr, sync::mpsc::Sender};

use gateway_common::{
    L4_ACTIVE, L4_ALL_PORTS, L4Settings, REAL_DOWN, REAL_IN_USE, REAL_V6, Real, VipKey,
};
use serde_json::{Value, json};

use self::tables::{Ids, Placement, TableError, addr_bytes, ring, vip_key, vip_service};
use crate::{
    admin::Control,
    config::{Config, L4ServiceConfig},
    xdp::{XdpError, XdpProgram},
};

/// Why the L4 maps could not be brought to the config.
#[derive(Debug, thiserror::Error)]
pub enum L4Error {
    #[error(transparent)]
    Tables(#[from] TableError),
    #[error(transparent)]
    Xdp(#[from] XdpError),
}

/// One service as written to the maps.
#[derive(Debug)]
struct Service {
    config: L4ServiceConfig,
    key: VipKey,
    place: Placement,
    /// Real id of each target, in config order.
    reals: Vec<u32>,
    /// What health checks concluded of each target (up until they say otherwise).
    up: Vec<bool>,
    /// The ring as written.
    ring: Vec<u32>,
}

/// The L4 balancer's state on the main thread.
#[derive(Debug, Default)]
pub struct L4Balancer {
    ids: Ids,
    services: Vec<Service>,
    checker: Option<health::Checker>,
}

impl L4Balancer {
    /// Takes over the maps (and the ids a previous process left in them) and writes
    /// `config`'s services.
    pub fn start(
        config: &Config,
        xdp: &mut XdpProgram,
        control: &Sender<Control>,
    ) -> Result<Self, L4Error> {
        let maps = xdp.l4();
        let ids = Ids::restore(&maps.services()?, &maps.reals()?);
        let mut balancer = Self {
            ids,
            services: Vec::new(),
            checker: None,
        };
        // Services a previous process left that this config no longer has.
        let left: Vec<VipKey> = balancer.ids.services().map(|(k, _)| k).collect();
        balancer.apply(config, xdp, control)?;
        for key in left {
            if !balancer.services.iter().any(|s| s.key == key) {
                balancer.remove_leftover(key, xdp)?;
            }
        }
        Ok(balancer)
    }

    /// Brings the maps to `config` (start and reload). Targets that stay keep their id,
    /// health and remembered flows.
    pub fn apply(
        &mut self,
        config: &Config,
        xdp: &mut XdpProgram,
        control: &Sender<Control>,
    ) -> Result<(), L4Error> {
        let settings = settings(config);
        let ports = port_bitmap(&config.l4_services, &self.services);
        if config.l4_services.is_empty() {
            // Off first: the program stops looking VIPs up before they go.
            xdp.l4().write_settings(&settings)?;
        }
        // Ports of the old and the new services while both may be in the map.
        xdp.l4().write_ports(&ports)?;
        let mut old = std::mem::take(&mut self.services);
        for service in &config.l4_services {
            let previous = old
                .iter()
                .position(|s| s.key == vip_key(service))
                .map(|i| old.swap_remove(i));
            let next = self.write_service(service, previous.as_ref(), xdp)?;
            if let Some(previous) = previous {
                self.release_targets(&previous, Some(&next), xdp)?;
            }
            self.services.push(next);
        }
        self.ids.retire_done();
        for gone in old {
            xdp.l4().remove_service(&gone.key)?;
            self.release_targets(&gone, None, xdp)?;
            self.ids.release_service(&gone.key);
            tracing::info!(service = %gone.config.name, "L4 service removed");
        }
        xdp.l4().write_settings(&settings)?;
        xdp.l4()
            .write_ports(&port_bitmap(&config.l4_services, &[]))?;
        self.checker = None;
        self.checker = health::start(self.probes(), control.clone());
        Ok(())
    }

    /// A health conclusion for a target: rebuilds its service's ring. Returns the
    /// service's name when that changed anything.
    pub fn set_health(
        &mut self,
        vip: VipKey,
        target: IpAddr,
        up: bool,
        xdp: &mut XdpProgram,
    ) -> Result<Option<String>, L4Error> {
        let Some(service) = self.services.iter_mut().find(|s| s.key == vip) else {
            return Ok(None);
        };
        let Some(i) = service.config.targets.iter().position(|t| t.addr == target) else {
            return Ok(None);
        };
        if service.up[i] == up {
            return Ok(None);
        }
        service.up[i] = up;
        let real = real_entry(service, i);
        let next_ring = ring(&service.config, &service.reals, &service.up);
        let mut maps = xdp.l4();
        if up {
            maps.write_real(service.reals[i], &real)?;
        }
        let moved = maps.write_ring(service.place.offset, &next_ring, Some(&service.ring))?;
        if !up {
            maps.write_real(service.reals[i], &real)?;
        }
        service.ring = next_ring;
        tracing::info!(service = %service.config.name, %target, up, slots = moved, "L4 target health changed; ring rebuilt");
        Ok(Some(service.config.name.clone()))
    }

    /// Services, targets, weights, health and counters (admin API, CLI, metrics).
    pub fn view(&self, xdp: &mut XdpProgram) -> Value {
        let maps = xdp.l4();
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|s| {
                let service_counts = maps
                    .service_counters(&[s.place.id])
                    .ok()
                    .and_then(|c| c.first().copied())
                    .unwrap_or_default();
                let real_counts = maps.real_counters(&s.reals).unwrap_or_default();
                let slots = ring_shares(&s.ring, &s.reals);
                let targets: Vec<Value> = s
                    .config
                    .targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let c = real_counts.get(i).copied().unwrap_or_default();
                        json!({
                            "addr": t.addr.to_string(),
                            "weight": t.weight,
                            "healthy": s.up[i],
                            "ring_slots": slots[i],
                            "packets": c.packets,
                            "bytes": c.bytes,
                            "new_flows": c.new_flows,
                        })
                    })
                    .collect();
                json!({
                    "name": s.config.name,
                    "vip": s.config.vip.to_string(),
                    "port": s.config.port,
                    "protocol": s.config.protocol.name(),
                    "flow_hash": if s.config.hash_ports { "5-tuple" } else { "3-tuple" },
                    "table_size": s.config.table_size,
                    "packets": service_counts.packets,
                    "bytes": service_counts.bytes,
                    "new_flows": service_counts.new_flows,
                    "targets": targets,
                })
            })
            .collect();
        json!({ "services": services })
    }

    /// Writes one service: targets, ring, then the VIP entry.
    fn write_service(
        &mut self,
        config: &L4ServiceConfig,
        previous: Option<&Service>,
        xdp: &mut XdpProgram,
    ) -> Result<Service, L4Error> {
        let key = vip_key(config);
        let (place, _retiring) = self.ids.place_service(key, config.table_size)?;
        let mut service = Service {
            config: config.clone(),
            key,
            place,
            reals: Vec::with_capacity(config.targets.len()),
            up: Vec::with_capacity(config.targets.len()),
            ring: Vec::new(),
        };
        let mut maps = xdp.l4();
        for (i, target) in config.targets.iter().enumerate() {
            let (id, new) = self.ids.real(key, addr_bytes(target.addr))?;
            let up = previous
                .and_then(|p| {
                    let j = p
                        .config
                        .targets
                        .iter()
                        .position(|t| t.addr == target.addr)?;
                    Some(p.up[j])
                })
                .unwrap_or(true);
            service.reals.push(id);
            service.up.push(up);
            if new {
                maps.reset_real(id)?;
            }
            maps.write_real(id, &real_entry(&service, i))?;
        }
        if previous.is_none() {
            maps.reset_service_counters(place.id)?;
        }
        service.ring = ring(config, &service.reals, &service.up);
        let same_region = previous
            .filter(|p| p.place == place)
            .map(|p| p.ring.as_slice());
        maps.write_ring(place.offset, &service.ring, same_region)?;
        maps.insert_service(&key, &vip_service(config, place))?;
        if previous.is_none() {
            tracing::info!(service = %config.name, vip = %config.vip, port = ?config.port, targets = config.targets.len(), "L4 service in XDP");
        }
        Ok(service)
    }

    /// Takes the targets of `old` that `next` no longer has out of the maps: flows that
    /// remembered them are re-balanced.
    fn release_targets(
        &mut self,
        old: &Service,
        next: Option<&Service>,
        xdp: &mut XdpProgram,
    ) -> Result<(), L4Error> {
        for target in &old.config.targets {
            let kept = next.is_some_and(|n| n.config.targets.iter().any(|t| t.addr == target.addr));
            if kept {
                continue;
            }
            if let Some(id) = self.ids.release_real(old.key, addr_bytes(target.addr)) {
                xdp.l4().write_real(id, &Real::default())?;
            }
        }
        Ok(())
    }

    /// Removes a service a previous process left in the pinned maps.
    fn remove_leftover(&mut self, key: VipKey, xdp: &mut XdpProgram) -> Result<(), L4Error> {
        xdp.l4().remove_service(&key)?;
        let reals: Vec<([u8; 16], u32)> = self
            .ids
            .reals()
            .filter(|(k, _, _)| *k == key)
            .map(|(_, a, id)| (a, id))
            .collect();
        for (addr, id) in reals {
            self.ids.release_real(key, addr);
            xdp.l4().write_real(id, &Real::default())?;
        }
        self.ids.release_service(&key);
        Ok(())
    }

    fn probes(&self) -> Vec<health::Probe> {
        self.services
            .iter()
            .filter_map(|s| Some((s, s.config.health_check.as_ref()?)))
            .flat_map(|(s, check)| {
                s.config.targets.iter().map(move |t| health::Probe {
                    vip: s.key,
                    target: t.addr,
                    port: check.port,
                    check: check.probe.clone(),
                })
            })
            .collect()
    }
}

/// The map entry of target `i` of `service`.
fn real_entry(service: &Service, i: usize) -> Real {
    let addr = service.config.targets[i].addr;
    let mut flags = REAL_IN_USE;
    if addr.is_ipv6() {
        flags |= REAL_V6;
    }
    if !service.up[i] {
        flags |= REAL_DOWN;
    }
    Real {
        addr: addr_bytes(addr),
        vip: service.key,
        flags,
    }
}

/// Ring slots per target (in config order).
fn ring_shares(ring: &[u32], reals: &[u32]) -> Vec<usize> {
    let index: std::collections::HashMap<u32, usize> =
        reals.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    let mut shares = vec![0usize; reals.len()];
    for slot in ring {
        if let Some(&i) = index.get(slot) {
            shares[i] += 1;
        }
    }
    shares
}

/// The port bitmap of `services` and of the services `also` (still in the maps).
fn port_bitmap(services: &[L4ServiceConfig], also: &[Service]) -> Vec<u64> {
    let mut words = vec![0u64; gateway_common::PROTECTED_WORDS as usize];
    let ports = services
        .iter()
        .chain(also.iter().map(|s| &s.config))
        .filter_map(|s| Some((s.port?, s.protocol.number())));
    for (port, protocol) in ports {
        if let Some((word, bit)) = gateway_common::protected_slot(port, protocol) {
            words[word as usize] |= bit;
        }
    }
    words
}

/// The settings the config asks for.
fn settings(config: &Config) -> L4Settings {
    let Some(xdp) = &config.xdp else {
        return L4Settings::default();
    };
    let v4 = xdp.tunnel_source_v4;
    let v6 = xdp.tunnel_source_v6;
    let v6_host = u128::from(v6.hostmask()) as u32;
    L4Settings {
        flags: if config.l4_services.is_empty() {
            0
        } else if config.l4_services.iter().any(|s| s.port.is_none()) {
            L4_ACTIVE | L4_ALL_PORTS
        } else {
            L4_ACTIVE
        },
        source_v4: v4.network().octets(),
        source_v4_host_mask: v4.hostmask().octets(),
        source_v6: v6.network().octets(),
        source_v6_host_mask: v6_host.to_be_bytes(),
        remembered_flows_per_cpu: xdp.l4_remembered_flows_per_cpu,
        // `L4Maps::write_settings` raises the map's own epoch.
        flow_cache_epoch: 0,
    }
}
