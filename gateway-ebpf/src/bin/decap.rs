//! The backends' half of the L4 balancer, for hosts without an IPIP tunnel device
//! (kernels built without `CONFIG_NET_IPIP`/`CONFIG_IPV6_TUNNEL`, like Katran's
//! `decap` program): strips the outer IPv4 or IPv6 header of an IPIP packet (IPv4 or
//! IPv6 inside) and passes the inner packet to the kernel as if it had arrived bare.
//! With the VIP on the backend's loopback, the kernel answers the client directly.
//! Anything else passes untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, macros::map, macros::xdp,
    maps::PerCpuArray, programs::XdpContext,
};

const ETH_HLEN: usize = 14;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;

/// Per-CPU count of decapsulated packets (slot 0).
#[map(name = "DECAP_STATS")]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Decapsulates IPIP (any of the four combinations), passes the rest.
#[xdp]
pub fn l4_decap(ctx: XdpContext) -> u32 {
    let Some((outer_len, inner_ethertype)) = outer_header(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the Ethernet header lies before `end` (checked above).
    let macs = unsafe { core::ptr::read_unaligned(data as *const [u8; 12]) };
    // SAFETY: shrinks the packet this program runs on from the front.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return xdp_action::XDP_DROP;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the new Ethernet header lies before `end` (checked above).
    unsafe {
        core::ptr::write_unaligned(data as *mut [u8; 12], macs);
        core::ptr::write_unaligned((data + 12) as *mut [u8; 2], inner_ethertype);
    }
    if let Some(count) = DECAP_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, for this program run.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_PASS
}

/// The outer header's length and the inner packet's ethertype, for an IPIP packet.
#[inline(always)]
fn outer_header(ctx: &XdpContext) -> Option<(usize, [u8; 2])> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + 40 > end {
        // Shorter than Ethernet + IPv6 header: only an IPv4 outer header may fit.
        if data + ETH_HLEN + 20 > end {
            return None;
        }
    }
    // SAFETY: Ethernet plus 20 bytes lie before `end` (checked above).
    let (ethertype, first, v4_protocol) = unsafe {
        (
            core::ptr::read_unaligned((data + 12) as *const [u8; 2]),
            *((data + ETH_HLEN) as *const u8),
            *((data + ETH_HLEN + 9) as *const u8),
        )
    };
    let (outer_len, inner) = match ethertype {
        [0x08, 0x00] if first == 0x45 => (20, v4_protocol),
        [0x86, 0xdd] if first >> 4 == 6 => {
            if data + ETH_HLEN + 40 > end {
                return None;
            }
            // SAFETY: the IPv6 header lies before `end` (checked above).
            (40, unsafe { *((data + ETH_HLEN + 6) as *const u8) })
        }
        _ => return None,
    };
    match inner {
        IPPROTO_IPIP => Some((outer_len, [0x08, 0x00])),
        IPPROTO_IPV6 => Some((outer_len, [0x86, 0xdd])),
        _ => None,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
