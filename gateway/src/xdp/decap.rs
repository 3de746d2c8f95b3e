//! The backends' half of the L4 balancer, for hosts whose kernel has no IPIP device:
//! `gateway decap attach` puts the `l4-decap` XDP program (built beside the gateway's
//! own) on an interface, where it strips the outer header of IPIP packets. Its link is
//! pinned in `<pin_path>/decap/<interface>/`, so it stays after the command exits and
//! `gateway decap detach` removes it.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, links::FdLink},
};

use super::{PinFolder, XdpError};

/// The decapsulation object (empty in plain `cargo build`s).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/l4-decap.o"));

/// The program's name in its object.
const PROGRAM: &str = "l4_decap";

/// `<pin_path>/decap/<interface>` (bpffs refuses dots in names).
fn pins(root: &Path, interface: &str) -> PinFolder {
    PinFolder::new(&root.join("decap"), interface)
}

/// Attaches the decapsulation program to `interface` (driver mode, or generic with
/// `skb`) and pins its link; replaces one attached before.
pub fn attach(interface: &str, skb: bool, root: &Path) -> Result<(), XdpError> {
    if OBJECT.is_empty() {
        return Err(XdpError::NotBuilt);
    }
    let pins = pins(root, interface);
    pins.prepare()?;
    let _ = std::fs::remove_file(pins.link());
    let mut ebpf = Ebpf::load(OBJECT)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or(XdpError::MissingProgram)?
        .try_into()
        .map_err(|source| XdpError::Program {
            action: "lookup",
            source,
        })?;
    let program_error = |action| move |source| XdpError::Program { action, source };
    program.load().map_err(program_error("load"))?;
    let mode = if skb { XdpMode::Skb } else { XdpMode::Driver };
    let id = program
        .attach(interface, mode)
        .map_err(program_error("attach"))?;
    let link = program.take_link(id).map_err(program_error("attach"))?;
    let link_error = |message: String| XdpError::Link {
        action: "pin",
        message,
    };
    let link = FdLink::try_from(link).map_err(|e| link_error(e.to_string()))?;
    link.pin(pins.link())
        .map_err(|e| link_error(e.to_string()))?;
    Ok(())
}

/// Detaches the program from `interface`; false when none was pinned.
pub fn detach(interface: &str, root: &Path) -> Result<bool, XdpError> {
    let pins = pins(root, interface);
    if !pins.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(pins.dir()).map_err(|e| XdpError::Pins {
        path: pins.dir().to_owned(),
        message: e.to_string(),
    })?;
    Ok(true)
}
