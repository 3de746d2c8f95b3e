//! A bench-only XDP program, never part of the gateway: it turns a veth into a "wire"
//! that delivers every frame to the interface in slot 0 of `WIRE_TARGETS` as an XDP frame
//! (through that interface's `ndo_xdp_xmit`), the way a NIC hands frames to its driver —
//! without a socket buffer. Frames from the IPv4 source in `WIRE_DIVERT` go to slot 1
//! instead (the reference run's dead end); an empty slot drops.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, DevMap},
    programs::XdpContext,
};

/// Slot 0: the ifindex frames go out of (its veth peer receives them); slot 1: where
/// diverted frames go.
#[map(name = "WIRE_TARGETS")]
static WIRE_TARGETS: DevMap = DevMap::with_max_entries(2, 0);

/// The IPv4 source (as its four bytes in memory order) whose frames are diverted; 0: none.
#[map(name = "WIRE_DIVERT")]
static WIRE_DIVERT: Array<u32> = Array::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const IPV4_SOURCE: usize = ETH_HLEN + 12;

/// Forwards the frame to its target, or drops it when there is none.
#[xdp]
pub fn bench_wire(ctx: XdpContext) -> u32 {
    let slot = u32::from(is_diverted(&ctx));
    WIRE_TARGETS
        .redirect(slot, u64::from(xdp_action::XDP_DROP))
        .unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn is_diverted(ctx: &XdpContext) -> bool {
    let divert = match WIRE_DIVERT.get(0) {
        Some(source) if *source != 0 => *source,
        _ => return false,
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + IPV4_SOURCE + 4 > end {
        return false;
    }
    // SAFETY: both reads are inside the frame, checked against `data_end` above.
    let (ethertype, source) = unsafe {
        (
            core::ptr::read_unaligned((data + 12) as *const [u8; 2]),
            core::ptr::read_unaligned((data + IPV4_SOURCE) as *const u32),
        )
    };
    ethertype == [0x08, 0x00] && source == divert
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
