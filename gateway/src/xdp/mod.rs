//! The XDP program's userspace side: the embedded object, loading, attaching to the
//! configured interface (detached again when the handle drops), and reading its maps.
//!
//! A build without the eBPF toolchain embeds an empty placeholder; the gateway then runs
//! L7-only and says so once.

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{ProgramError, Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use gateway_common::{PROTO_STATS_MAP, PacketCounter, ProtoCounter, XDP_PROGRAM};

use crate::config::{XdpConfig, XdpMode};

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
        let map = self.ebpf.map(PROTO_STATS_MAP).ok_or(XdpError::Map {
            name: PROTO_STATS_MAP,
            source: aya::maps::MapError::InvalidName {
                name: PROTO_STATS_MAP.into(),
            },
        })?;
        let array =
            PerCpuArray::<_, PacketCounter>::try_from(map).map_err(|source| XdpError::Map {
                name: PROTO_STATS_MAP,
                source,
            })?;
        ProtoCounter::ALL
            .iter()
            .map(|&slot| {
                let per_cpu = array
                    .get(&(slot as u32), 0)
                    .map_err(|source| XdpError::Map {
                        name: PROTO_STATS_MAP,
                        source,
                    })?;
                let total = per_cpu
                    .iter()
                    .fold(PacketCounter::default(), |acc, c| PacketCounter {
                        packets: acc.packets + c.packets,
                        bytes: acc.bytes + c.bytes,
                    });
                Ok((slot, total))
            })
            .collect()
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
