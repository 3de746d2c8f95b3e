//! The XDP program's userspace side: the embedded object, loading, attaching to the
//! configured interface (detached again when the handle drops), and reading its maps.
//!
//! A build without the eBPF toolchain embeds an empty placeholder; the gateway then runs
//! L7-only and says so once.

use std::net::SocketAddr;

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, PerCpuArray, lpm_trie::Key},
    programs::{ProgramError, Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use gateway_common::{
    ALLOW_HITS_MAP, ALLOW_V4_MAP, ALLOW_V6_MAP, DENY_HITS_MAP, DENY_V4_MAP, DENY_V6_MAP,
    EDGE_ALLOW_ACTIVE, EDGE_PROTECT_ALL, EDGE_SYN_GUARD, EdgeSettings, PROTECTED_MAP,
    PROTO_STATS_MAP, PacketCounter, ProtoCounter, SETTINGS_MAP, VERDICT_MAP, Verdict, XDP_PROGRAM,
    protected_slot,
};
use ipnet::IpNet;

use crate::{
    config::{XdpConfig, XdpMode},
    edge::EdgePolicy,
};

/// The XDP object built by `cargo xtask` (empty in plain `cargo build`s).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf.o"));

/// Why the XDP program could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("this gateway was built without its XDP program (build with `cargo xtask`)")]
    NotBuilt,
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no program {XDP_PROGRAM:?}")]
    MissingProgram,
    #[error("XDP program {action} failed: {source}")]
    Program {
        action: &'static str,
        source: ProgramError,
    },
    #[error("XDP map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

/// Whether the embedded object is the empty placeholder.
pub fn is_placeholder() -> bool {
    OBJECT.is_empty()
}

/// The embedded object's bytes (for tests and tools that load it themselves).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// A loaded XDP program, attached to an interface while this lives.
pub struct XdpProgram {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    interface: Option<String>,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram")
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

impl XdpProgram {
    /// Loads the embedded program into the kernel without attaching it.
    pub fn load() -> Result<Self, XdpError> {
        Self::load_from(OBJECT)
    }

    /// Loads a program from `object` bytes.
    pub fn load_from(object: &[u8]) -> Result<Self, XdpError> {
        if object.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        let mut loaded = Self {
            ebpf: Ebpf::load(object)?,
            link: None,
            interface: None,
        };
        loaded
            .program_mut()?
            .load()
            .map_err(|source| XdpError::Program {
                action: "load",
                source,
            })?;
        Ok(loaded)
    }

    /// Attaches to `config.interface` in the configured mode.
    pub fn attach(&mut self, config: &XdpConfig) -> Result<(), XdpError> {
        let Some(interface) = config.interface.as_deref() else {
            return Ok(());
        };
        let mode = match config.mode {
            XdpMode::Driver => AyaXdpMode::Driver,
            XdpMode::Skb => AyaXdpMode::Skb,
        };
        let link = self
            .program_mut()?
            .attach(interface, mode)
            .map_err(|source| XdpError::Program {
                action: "attach",
                source,
            })?;
        self.link = Some(link);
        self.interface = Some(interface.to_owned());
        Ok(())
    }

    /// The program, for test runs.
    pub fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(XdpError::MissingProgram)?
            .try_into()
            .map_err(|source| XdpError::Program {
                action: "lookup",
                source,
            })
    }

    /// Protocol counters summed over CPUs, in [`ProtoCounter::ALL`] order.
    pub fn protocol_counters(&self) -> Result<Vec<(ProtoCounter, PacketCounter)>, XdpError> {
        let sums = self.sum_per_cpu(PROTO_STATS_MAP, ProtoCounter::COUNT)?;
        Ok(ProtoCounter::ALL.iter().copied().zip(sums).collect())
    }

    /// Verdict counters summed over CPUs, in [`Verdict::ALL`] order.
    pub fn verdict_counters(&self) -> Result<Vec<(Verdict, PacketCounter)>, XdpError> {
        let sums = self.sum_per_cpu(VERDICT_MAP, Verdict::COUNT)?;
        Ok(Verdict::ALL.iter().copied().zip(sums).collect())
    }

    /// Packets each of the first `entries` deny (or allow) entries matched, summed over
    /// CPUs; entry ids are positions in the effective list.
    pub fn entry_hits(&self, deny: bool, entries: usize) -> Result<Vec<u64>, XdpError> {
        let name = if deny { DENY_HITS_MAP } else { ALLOW_HITS_MAP };
        let map = self.ebpf.map(name).ok_or_else(|| missing_map(name))?;
        let array = PerCpuArray::<_, u64>::try_from(map)
            .map_err(|source| XdpError::Map { name, source })?;
        (0..entries as u32)
            .map(|id| {
                array
                    .get(&id, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .map_err(|source| XdpError::Map { name, source })
            })
            .collect()
    }

    fn sum_per_cpu(&self, name: &'static str, slots: u32) -> Result<Vec<PacketCounter>, XdpError> {
        let map = self.ebpf.map(name).ok_or_else(|| missing_map(name))?;
        let array = PerCpuArray::<_, PacketCounter>::try_from(map)
            .map_err(|source| XdpError::Map { name, source })?;
        (0..slots)
            .map(|slot| {
                let per_cpu = array
                    .get(&slot, 0)
                    .map_err(|source| XdpError::Map { name, source })?;
                Ok(per_cpu
                    .iter()
                    .fold(PacketCounter::default(), |acc, c| PacketCounter {
                        packets: acc.packets + c.packets,
                        bytes: acc.bytes + c.bytes,
                    }))
            })
            .collect()
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, XdpError> {
        self.ebpf.map_mut(name).ok_or_else(|| missing_map(name))
    }

    /// Loads `policy` into the maps: settings, the protected listener ports (TCP) and
    /// both lists. Entry ids are positions in the configured lists.
    pub fn apply_policy(
        &mut self,
        policy: &EdgePolicy,
        listeners: &[SocketAddr],
    ) -> Result<(), XdpError> {
        let config = policy.config();
        let mut flags = 0;
        if !config.allow.is_empty() {
            flags |= EDGE_ALLOW_ACTIVE;
        }
        if config.protect_all {
            flags |= EDGE_PROTECT_ALL;
        }
        let (rate, burst) = config.syn_guard.map_or((0, 0), |g| {
            flags |= EDGE_SYN_GUARD;
            (g.rate_per_sec, g.burst)
        });
        let settings = EdgeSettings {
            flags,
            syn_rate_per_sec: rate,
            syn_burst: burst,
            _pad: 0,
        };
        let map_error = |name| move |source| XdpError::Map { name, source };
        let mut protected = Array::<_, u64>::try_from(self.map_mut(PROTECTED_MAP)?)
            .map_err(map_error(PROTECTED_MAP))?;
        for addr in listeners {
            if let Some((word, bit)) = protected_slot(addr.port(), 6) {
                let bits = protected.get(&word, 0).map_err(map_error(PROTECTED_MAP))?;
                protected
                    .set(word, bits | bit, 0)
                    .map_err(map_error(PROTECTED_MAP))?;
            }
        }
        for (list, v4_name, v6_name) in [
            (&config.deny, DENY_V4_MAP, DENY_V6_MAP),
            (&config.allow, ALLOW_V4_MAP, ALLOW_V6_MAP),
        ] {
            for (id, net) in list.iter().enumerate() {
                let id = id as u32;
                match net {
                    IpNet::V4(n) => LpmTrie::<_, [u8; 4], u32>::try_from(self.map_mut(v4_name)?)
                        .map_err(map_error(v4_name))?
                        .insert(
                            &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                            id,
                            0,
                        )
                        .map_err(map_error(v4_name))?,
                    IpNet::V6(n) => LpmTrie::<_, [u8; 16], u32>::try_from(self.map_mut(v6_name)?)
                        .map_err(map_error(v6_name))?
                        .insert(
                            &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                            id,
                            0,
                        )
                        .map_err(map_error(v6_name))?,
                }
            }
        }
        // Settings last: the lists are complete before the switches that use them flip.
        Array::<_, EdgeSettings>::try_from(self.map_mut(SETTINGS_MAP)?)
            .map_err(map_error(SETTINGS_MAP))?
            .set(0, settings, 0)
            .map_err(map_error(SETTINGS_MAP))
    }
}

impl XdpProgram {
    /// Reload: switches from `old` to `new` without a moment where a source listed in
    /// both is admitted: new entries are written first, then the old-only ones removed.
    pub fn replace_policy(
        &mut self,
        old: &EdgePolicy,
        new: &EdgePolicy,
        listeners: &[SocketAddr],
    ) -> Result<(), XdpError> {
        self.apply_policy(new, listeners)?;
        let map_error = |name| move |source| XdpError::Map { name, source };
        for (old_list, new_list, v4_name, v6_name) in [
            (
                &old.config().deny,
                &new.config().deny,
                DENY_V4_MAP,
                DENY_V6_MAP,
            ),
            (
                &old.config().allow,
                &new.config().allow,
                ALLOW_V4_MAP,
                ALLOW_V6_MAP,
            ),
        ] {
            for net in old_list.iter().filter(|n| !new_list.contains(n)) {
                match net {
                    IpNet::V4(n) => LpmTrie::<_, [u8; 4], u32>::try_from(self.map_mut(v4_name)?)
                        .map_err(map_error(v4_name))?
                        .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets()))
                        .map_err(map_error(v4_name))?,
                    IpNet::V6(n) => LpmTrie::<_, [u8; 16], u32>::try_from(self.map_mut(v6_name)?)
                        .map_err(map_error(v6_name))?
                        .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets()))
                        .map_err(map_error(v6_name))?,
                }
            }
        }
        Ok(())
    }
}

fn missing_map(name: &'static str) -> XdpError {
    XdpError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        if let (Some(link), Ok(program)) = (self.link.take(), self.program_mut()) {
            if let Err(error) = program.detach(link) {
                tracing::warn!(%error, interface = ?self.interface, "detaching XDP failed");
            } else {
                tracing::info!(interface = ?self.interface, "XDP program detached");
            }
        }
    }
}
