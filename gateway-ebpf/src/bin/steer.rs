//! The worker-steering program (`sk_reuseport`): picks the worker that accepts each new
//! connection to a gateway listener. A client address always hashes to the same worker,
//! so its connections share one worker's caches and per-IP rate limits stay exact
//! without cross-core traffic; a worker far busier than the least loaded one is skipped
//! for the least loaded. Anything it cannot decide is left to the kernel's own pick.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_hdr_start_off::BPF_HDR_START_NET, sk_action},
    helpers::bpf_skb_load_bytes_relative,
    macros::{map, sk_reuseport},
    maps::{Array, HashMap, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use gateway_common::{
    MAX_STEER_LISTENERS, MAX_STEER_WORKERS, SteerCounter, SteerListenerKey, SteerSettings,
    client_worker,
};

#[map(name = "STEER_SOCKETS_V1")]
static SOCKETS: ReusePortSockArray =
    ReusePortSockArray::with_max_entries(MAX_STEER_LISTENERS * MAX_STEER_WORKERS, 0);
#[map(name = "STEER_LISTENERS_V1")]
static LISTENERS: HashMap<SteerListenerKey, u32> =
    HashMap::with_max_entries(2 * MAX_STEER_LISTENERS, 0);
#[map(name = "STEER_LOAD_V1")]
static LOAD: Array<u32> = Array::with_max_entries(MAX_STEER_WORKERS, 0);
#[map(name = "STEER_SETTINGS_V1")]
static SETTINGS: Array<SteerSettings> = Array::with_max_entries(1, 0);
#[map(name = "STEER_STATS_V1")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SteerCounter::COUNT, 0);

const ETH_P_IP_BE: u32 = 0x0008;
const ETH_P_IPV6_BE: u32 = 0xdd86;

/// Entry point: select a worker's socket, or let the kernel choose.
#[sk_reuseport]
pub fn gateway_steer(ctx: SkReuseportContext) -> u32 {
    let counter = match steer(&ctx) {
        Some(counter) => counter,
        None => SteerCounter::Kernel,
    };
    if let Some(count) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's slot, for this program run.
        unsafe { *count += 1 };
    }
    sk_action::SK_PASS
}

#[inline(always)]
fn steer(ctx: &SkReuseportContext) -> Option<SteerCounter> {
    let settings = SETTINGS.get(0)?;
    let workers = settings.workers;
    if workers == 0 || workers > MAX_STEER_WORKERS {
        return None;
    }
    // SAFETY: the socket being considered; the verifier checks the field reads.
    let (port, family) = unsafe {
        let sock = ctx.sk().sock;
        ((*sock).src_port, (*sock).family)
    };
    // SAFETY: a hash lookup; the value is copied out at once.
    let listener = *unsafe { LISTENERS.get(SteerListenerKey { port, family }) }?;
    let client = client_address(ctx)?;
    let mut worker = client_worker(&client, workers);
    let mut counter = SteerCounter::ByClient;
    let (least, least_load) = least_loaded(workers);
    let load = LOAD.get(worker).copied().unwrap_or(0);
    let limit = (u64::from(least_load) * u64::from(settings.overload_percent)) / 100
        + u64::from(settings.slack);
    if u64::from(load) > limit {
        worker = least;
        counter = SteerCounter::Diverted;
    }
    let slot = listener * MAX_STEER_WORKERS + worker;
    SOCKETS.select_reuseport(ctx, slot).ok()?;
    Some(counter)
}

/// The least loaded worker and its load.
#[inline(always)]
fn least_loaded(workers: u32) -> (u32, u32) {
    let (mut best, mut best_load) = (0u32, u32::MAX);
    for w in 0..MAX_STEER_WORKERS {
        if w >= workers {
            break;
        }
        let load = LOAD.get(w).copied().unwrap_or(0);
        if load < best_load {
            best = w;
            best_load = load;
        }
    }
    (best, best_load)
}

/// The client's address from the IP header (IPv4 as IPv4-mapped IPv6).
#[inline(always)]
fn client_address(ctx: &SkReuseportContext) -> Option<[u8; 16]> {
    let mut addr = [0u8; 16];
    let rc = match ctx.eth_protocol() {
        ETH_P_IP_BE => {
            addr[10] = 0xff;
            addr[11] = 0xff;
            // SAFETY: reads 4 bytes into the last 4 of a 16-byte local.
            unsafe {
                bpf_skb_load_bytes_relative(
                    ctx.as_ptr(),
                    12,
                    addr.as_mut_ptr().add(12).cast(),
                    4,
                    BPF_HDR_START_NET,
                )
            }
        }
        ETH_P_IPV6_BE => {
            // SAFETY: reads 16 bytes into a 16-byte local.
            unsafe {
                bpf_skb_load_bytes_relative(
                    ctx.as_ptr(),
                    8,
                    addr.as_mut_ptr().cast(),
                    16,
                    BPF_HDR_START_NET,
                )
            }
        }
        _ => return None,
    };
    (rc == 0).then_some(addr)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
