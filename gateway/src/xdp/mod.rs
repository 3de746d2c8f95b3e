//! The XDP program's userspace side: the embedded object, loading it over the pinned
//! maps of its interface, attaching it through a pinned link (or swapping it into the
//! link a previous process left), writing the policy and reading the counters.
//!
//! A build without the eBPF toolchain embeds an empty placeholder; the gateway then runs
//! L7-only and says so once.

pub mod decap;
pub mod inspect;
pub mod l4;
mod lists;
mod pins;

use std::{net::SocketAddr, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use gateway_common::{PROTO_STATS_MAP, PacketCounter, ProtoCounter, Verdict, XDP_PROGRAM};

pub use self::{
    lists::{PersistedEntry, PinnedMaps, entries_with_hits, verdicts},
    pins::PinFolder,
};
use ipnet::IpNet;

use crate::config::{EdgePolicyConfig, XdpConfig, XdpMode, XdpOnExit};

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
    #[error("XDP pin folder {}: {message}", path.display())]
    Pins { path: PathBuf, message: String },
    #[error("XDP link {action} failed: {message}")]
    Link {
        action: &'static str,
        message: String,
    },
    #[error("no such network interface")]
    NoInterface,
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("an edge list holds at most {0} entries per family")]
    ListFull(u32),
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
    attachment: Option<Attachment>,
}

/// The program's place in the driver: a bpf link pinned in the interface's folder.
struct Attachment {
    interface: String,
    link: FdLink,
    pins: PinFolder,
    on_exit: XdpOnExit,
    /// A binary upgrade's new process owns the link now: leave it be.
    handed_over: bool,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram")
            .field("interface", &self.attachment.as_ref().map(|a| &a.interface))
            .finish_non_exhaustive()
    }
}

impl XdpProgram {
    /// Loads the embedded program with private, unpinned maps (tests and benchmarks).
    pub fn load() -> Result<Self, XdpError> {
        Self::load_from(OBJECT)
    }

    /// Loads a program from `object` bytes with private, unpinned maps.
    pub fn load_from(object: &[u8]) -> Result<Self, XdpError> {
        Self::load_with(object, None)
    }

    /// Loads the embedded program over the maps pinned in `pins` (created and pinned
    /// when absent), so the lists, live entries and counters of a previous process
    /// carry on.
    pub fn load_pinned(pins: &PinFolder) -> Result<Self, XdpError> {
        Self::load_with(OBJECT, Some(pins))
    }

    fn load_with(object: &[u8], pins: Option<&PinFolder>) -> Result<Self, XdpError> {
        if object.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        let ebpf = match pins {
            None => Ebpf::load(object)?,
            Some(pins) => {
                pins.prepare()?;
                for name in pins.drop_incompatible_maps(object)? {
                    tracing::warn!(map = %name, "pinned XDP map had another layout or flags; starting it afresh");
                }
                let names: Vec<String> = aya_obj::Object::parse(object)
                    .map(|o| o.maps.into_keys().filter(|n| !n.starts_with('.')).collect())
                    .unwrap_or_default();
                let paths: Vec<(String, PathBuf)> = names
                    .into_iter()
                    .map(|n| (pins.map(&n), n))
                    .map(|(p, n)| (n, p))
                    .collect();
                let mut loader = EbpfLoader::new();
                for (name, path) in &paths {
                    loader.map_pin_path(name.as_str(), path.as_path());
                }
                loader.load(object)?
            }
        };
        let mut loaded = Self {
            ebpf,
            attachment: None,
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

    /// Puts the program on `config.interface`: swapped atomically into the link a
    /// previous gateway left pinned (no moment without a program), or attached afresh in
    /// the configured mode with its link pinned in `pins`.
    pub fn attach(&mut self, config: &XdpConfig, pins: &PinFolder) -> Result<(), XdpError> {
        let Some(interface) = config.interface.as_deref() else {
            return Ok(());
        };
        let link_path = pins.link();
        let link = match self.adopt(&link_path) {
            Ok(Some(link)) => {
                tracing::info!(%interface, "XDP program swapped into the pinned link");
                link
            }
            Ok(None) => self.attach_fresh(interface, config.mode, &link_path)?,
            Err(error) => {
                tracing::warn!(%interface, %error, "the pinned XDP link is stale; attaching afresh");
                let _ = std::fs::remove_file(&link_path);
                self.attach_fresh(interface, config.mode, &link_path)?
            }
        };
        self.attachment = Some(Attachment {
            interface: interface.to_owned(),
            link,
            pins: pins.clone(),
            on_exit: config.on_exit,
            handed_over: false,
        });
        Ok(())
    }

    /// Swaps this program into the link pinned at `path`, if there is one.
    fn adopt(&mut self, path: &std::path::Path) -> Result<Option<FdLink>, XdpError> {
        if !path.exists() {
            return Ok(None);
        }
        let link_error = |action, message: String| XdpError::Link { action, message };
        let pinned = PinnedLink::from_pin(path).map_err(|e| link_error("open", e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| link_error("open", e.to_string()))?;
        let program = self.program_mut()?;
        let id = program
            .attach_to_link(link)
            .map_err(|e| link_error("update", e.to_string()))?;
        let link = program
            .take_link(id)
            .map_err(|e| link_error("take", e.to_string()))?;
        FdLink::try_from(link)
            .map(Some)
            .map_err(|e| link_error("take", e.to_string()))
    }

    fn attach_fresh(
        &mut self,
        interface: &str,
        mode: XdpMode,
        link_path: &std::path::Path,
    ) -> Result<FdLink, XdpError> {
        let mode = match mode {
            XdpMode::Driver => AyaXdpMode::Driver,
            XdpMode::Skb => AyaXdpMode::Skb,
        };
        let program = self.program_mut()?;
        let id = program
            .attach(interface, mode)
            .map_err(|source| XdpError::Program {
                action: "attach",
                source,
            })?;
        let link = program.take_link(id).map_err(|source| XdpError::Program {
            action: "attach",
            source,
        })?;
        let link_error = |message: String| XdpError::Link {
            action: "pin",
            message,
        };
        let link = FdLink::try_from(link)
            .map_err(|e| link_error(format!("the kernel attached XDP without a bpf link ({e})")))?;
        let pinned = link.pin(link_path).map_err(|e| link_error(e.to_string()))?;
        Ok(FdLink::from(pinned))
    }

    /// Marks the program as handed to a binary upgrade's new process: exiting leaves it
    /// attached whatever `on_exit` says.
    pub fn hand_over(&mut self) {
        if let Some(attachment) = &mut self.attachment {
            attachment.handed_over = true;
        }
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
        let sums = lists::summed_counters(&self.ebpf, PROTO_STATS_MAP, ProtoCounter::COUNT)?;
        Ok(ProtoCounter::ALL.iter().copied().zip(sums).collect())
    }

    /// Verdict counters summed over CPUs, in [`Verdict::ALL`] order.
    pub fn verdict_counters(&self) -> Result<Vec<(Verdict, PacketCounter)>, XdpError> {
        lists::verdicts(&self.ebpf)
    }

    /// Brings the maps to `policy`, protecting the ports of `listeners`: new entries
    /// first, then the switches, then removals, so no packet sees a laxer policy than
    /// the old or the new one.
    pub fn sync_policy(
        &mut self,
        policy: &EdgePolicyConfig,
        listeners: &[SocketAddr],
    ) -> Result<(), XdpError> {
        lists::sync(&mut self.ebpf, policy, listeners)
    }

    /// Packets each of `nets` matched in the deny (or allow) list, summed over CPUs.
    pub fn entry_hits(&self, deny: bool, nets: &[IpNet]) -> Result<Vec<Option<u64>>, XdpError> {
        lists::hits(&self.ebpf, deny, nets)
    }

    /// The L4 balancer's maps.
    pub fn l4(&mut self) -> l4::L4Maps<'_> {
        l4::L4Maps {
            ebpf: &mut self.ebpf,
        }
    }

    /// The live ACL entries a previous process recorded (pinned maps only).
    pub fn live_entries(&self) -> Result<Vec<PersistedEntry>, XdpError> {
        lists::live_entries(&self.ebpf)
    }

    /// Records the live ACL entries for the next process.
    pub fn store_live_entries(&mut self, entries: &[PersistedEntry]) -> Result<(), XdpError> {
        lists::store_live_entries(&mut self.ebpf, entries)
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
        let Some(attachment) = self.attachment.take() else {
            return;
        };
        let interface = attachment.interface;
        if attachment.handed_over {
            tracing::info!(%interface, "XDP program left to the upgraded gateway");
        } else if attachment.on_exit == XdpOnExit::Keep {
            tracing::info!(%interface, pins = %attachment.pins.dir().display(), "XDP program stays attached (on_exit = keep)");
        } else {
            // The pin holds the link open; without it, closing our descriptor detaches.
            match std::fs::remove_file(attachment.pins.link()) {
                Ok(()) => tracing::info!(%interface, "XDP program detached"),
                Err(error) => tracing::warn!(%interface, %error, "detaching XDP failed"),
            }
        }
        drop(attachment.link);
    }
}
