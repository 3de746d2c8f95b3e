//! The gateway's XDP program.
//!
//! Stages: parse (Ethernet, up to two VLAN tags, IPv4 with options, IPv6 with extension
//! headers, TCP/UDP) → judge (deny list, allow list, SYN guard, for protected
//! destinations) → count → verdict. Every packet access is bounds-checked against
//! `data_end` before the load, which is what the verifier demands.
#![no_std]
#![no_main]

mod l4;
mod parse;
mod policy;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use gateway_common::{PacketCounter, ProtoCounter, Verdict};

use crate::parse::{Parsed, parse_packet};

/// Per-CPU packet and byte counts per protocol class (`gateway_common::PROTO_STATS_MAP`).
#[map(name = "PROTO_STATS_V1")]
static PROTO_STATS: PerCpuArray<PacketCounter> =
    PerCpuArray::with_max_entries(ProtoCounter::COUNT, 0);

/// Per-CPU packet and byte counts per verdict (`gateway_common::VERDICT_MAP`).
#[map(name = "VERDICT_STATS_V3")]
static VERDICT_STATS: PerCpuArray<PacketCounter> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// Entry point: classify the packet, judge it, balance it when it is for an L4 VIP,
/// count it.
#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (verdict, action) = classify(&ctx, len);
    count(&VERDICT_STATS, verdict as u32, len);
    action
}

#[inline(always)]
fn classify(ctx: &XdpContext, len: u64) -> (Verdict, u32) {
    let verdict = match parse_packet(ctx.data(), ctx.data_end()) {
        Parsed::Malformed => {
            count(&PROTO_STATS, ProtoCounter::Malformed as u32, len);
            // The kernel's own checks drop what is really broken; a short frame is
            // not evidence against its source.
            Verdict::Unprotected
        }
        Parsed::NonIp { vlan } => {
            count_vlan(vlan, len);
            count(&PROTO_STATS, ProtoCounter::NonIp as u32, len);
            Verdict::Unprotected
        }
        Parsed::Ip { packet, vlan } => {
            count_vlan(vlan, len);
            let family = if packet.v6 {
                ProtoCounter::Ipv6
            } else {
                ProtoCounter::Ipv4
            };
            count(&PROTO_STATS, family as u32, len);
            count(&PROTO_STATS, packet.transport as u32, len);
            match l4::service_for(&packet) {
                Some(service) => {
                    let verdict = policy::judge(&packet, true);
                    if verdict.drops() {
                        return (verdict, xdp_action::XDP_DROP);
                    }
                    return l4::forward(ctx, &packet, &service);
                }
                None => policy::judge(&packet, false),
            }
        }
    };
    let action = if verdict.drops() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    };
    (verdict, action)
}

#[inline(always)]
fn count_vlan(vlan: bool, len: u64) {
    if vlan {
        count(&PROTO_STATS, ProtoCounter::Vlan as u32, len);
    }
}

#[inline(always)]
fn count(map: &PerCpuArray<PacketCounter>, slot: u32, len: u64) {
    if let Some(counter) = map.get_ptr_mut(slot) {
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
