//! The gateway's XDP program.
//!
//! Stages: parse (Ethernet, up to two VLAN tags, IPv4 with options, IPv6, TCP/UDP) →
//! count. This first program only classifies and counts; every packet passes. Later
//! stages (deny/allow lists, SYN guard, L4 balancing) slot in between parse and count.
//! Every packet access is bounds-checked against `data_end` before the load, which is
//! what the verifier demands.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext,
};
use gateway_common::{PacketCounter, ProtoCounter};

use crate::parse::{Parsed, parse_packet};

/// Per-CPU packet and byte counts per protocol class (`gateway_common::PROTO_STATS_MAP`).
#[map(name = "PROTO_STATS_V1")]
static PROTO_STATS: PerCpuArray<PacketCounter> =
    PerCpuArray::with_max_entries(ProtoCounter::COUNT, 0);

/// Entry point: classify the packet, count it, pass it on.
#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match parse_packet(ctx.data(), ctx.data_end()) {
        Parsed::Malformed => count(ProtoCounter::Malformed, len),
        Parsed::NonIp { vlan } => {
            count_vlan(vlan, len);
            count(ProtoCounter::NonIp, len);
        }
        Parsed::Ip {
            v6,
            transport,
            vlan,
        } => {
            count_vlan(vlan, len);
            count(
                if v6 {
                    ProtoCounter::Ipv6
                } else {
                    ProtoCounter::Ipv4
                },
                len,
            );
            count(transport, len);
        }
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count_vlan(vlan: bool, len: u64) {
    if vlan {
        count(ProtoCounter::Vlan, len);
    }
}

#[inline(always)]
fn count(slot: ProtoCounter, len: u64) {
    if let Some(counter) = PROTO_STATS.get_ptr_mut(slot as u32) {
        // SAFETY: the pointer comes from the per-CPU array lookup and is valid for this
        // CPU for the duration of the program; no other context touches this CPU's slot.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
