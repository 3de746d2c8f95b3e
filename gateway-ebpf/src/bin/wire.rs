//! A bench-only XDP program, never part of the gateway: it turns a veth into a "wire"
//! that delivers every frame to the interface in slot 0 of `WIRE_TARGET` as an XDP frame
//! (through that interface's `ndo_xdp_xmit`), the way a NIC hands frames to the driver —
//! without a socket buffer. An empty slot drops the frame (the reference run's dead end).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action, macros::map, macros::xdp, maps::DevMap, programs::XdpContext,
};

/// Slot 0: the ifindex frames go out of (its veth peer receives them).
#[map(name = "WIRE_TARGET")]
static WIRE_TARGET: DevMap = DevMap::with_max_entries(1, 0);

/// Forwards the frame to the target, or drops it when there is none.
#[xdp]
pub fn bench_wire(_ctx: XdpContext) -> u32 {
    WIRE_TARGET
        .redirect(0, u64::from(xdp_action::XDP_DROP))
        .unwrap_or(xdp_action::XDP_DROP)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
