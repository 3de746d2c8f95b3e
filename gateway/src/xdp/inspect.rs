//! `gateway xdp show` and `gateway xdp detach`: the pinned state of an interface, read
//! and removed without a running gateway (a stopped one with `on_exit = "keep"` leaves
//! its program enforcing the lists; this is how an operator sees and removes it).

use std::time::SystemTime;

use aya::programs::links::PinnedLink;
use serde_json::{Value, json};

use super::{PinFolder, PinnedMaps, XdpError, lists};

/// The interface's pinned state as JSON: whether the program is attached through the
/// pinned link, the verdict counters, and both lists with hits and live entries' expiry.
pub fn describe(pins: &PinFolder) -> Result<Value, XdpError> {
    if !pins.exists() {
        return Err(XdpError::Pins {
            path: pins.dir().to_owned(),
            message: "nothing is pinned here (never attached, or detached and removed)".into(),
        });
    }
    let maps = PinnedMaps::open(pins)?;
    let live = lists::live_entries(&maps)?;
    let now = SystemTime::now();
    let list = |deny: bool| -> Result<Vec<Value>, XdpError> {
        Ok(lists::entries_with_hits(&maps, deny)?
            .into_iter()
            .map(|(net, hits)| {
                let recorded = live.iter().find(|e| e.deny == deny && e.net == net);
                json!({
                    "cidr": net.to_string(),
                    "source": if recorded.is_some() { "live" } else { "config" },
                    "expires_in_seconds": recorded
                        .and_then(|e| e.expires)
                        .map(|t| t.duration_since(now).map_or(0, |d| d.as_secs())),
                    "hits": hits,
                })
            })
            .collect())
    };
    let verdicts: serde_json::Map<String, Value> = lists::verdicts(&maps)?
        .into_iter()
        .map(|(verdict, c)| {
            (
                verdict.name().to_owned(),
                json!({ "packets": c.packets, "bytes": c.bytes }),
            )
        })
        .collect();
    Ok(json!({
        "pins": pins.dir().display().to_string(),
        "attached": PinnedLink::from_pin(pins.link()).is_ok(),
        "verdicts": verdicts,
        "deny": list(true)?,
        "allow": list(false)?,
    }))
}

/// Detaches the program (when the pinned link was its last holder) and removes every
/// pinned map: the interface is as if the gateway had never run on it.
pub fn remove(pins: &PinFolder) -> Result<bool, XdpError> {
    let existed = pins.exists();
    pins.remove()?;
    Ok(existed)
}
