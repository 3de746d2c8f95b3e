//! Map layouts of the worker-steering program (`sk_reuseport`): which worker's socket
//! takes a new connection to a gateway listener.

/// Name of the steering program in its object.
pub const STEER_PROGRAM: &str = "gateway_steer";
/// `REUSEPORT_SOCKARRAY` of the listening sockets: listener `l`'s socket of worker `w`
/// sits at `l × MAX_STEER_WORKERS + w`.
pub const STEER_SOCKETS_MAP: &str = "STEER_SOCKETS_V1";
/// Hash of listeners ([`SteerListenerKey`] → listener index).
pub const STEER_LISTENERS_MAP: &str = "STEER_LISTENERS_V1";
/// Array of active connections per worker (`u32`), written by userspace.
pub const STEER_LOAD_MAP: &str = "STEER_LOAD_V1";
/// One-slot array holding the [`SteerSettings`].
pub const STEER_SETTINGS_MAP: &str = "STEER_SETTINGS_V1";
/// Per-CPU counters by [`SteerCounter`].
pub const STEER_STATS_MAP: &str = "STEER_STATS_V1";

/// Most workers steered.
pub const MAX_STEER_WORKERS: u32 = 64;
/// Most listeners steered.
pub const MAX_STEER_LISTENERS: u32 = 16;

/// A listener as the program sees its socket: local port (host order) and family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SteerListenerKey {
    pub port: u32,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u32,
}

const _: () = assert!(core::mem::size_of::<SteerListenerKey>() == 8);

/// How the program picks a worker.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerSettings {
    /// Workers (sockets per listener).
    pub workers: u32,
    /// A worker is skipped when its load exceeds the least loaded worker's times this
    /// percentage, plus `slack`.
    pub overload_percent: u32,
    pub slack: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SteerSettings>() == 16);

/// Slots of [`STEER_STATS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteerCounter {
    /// Sent to the worker the client address hashes to.
    ByClient = 0,
    /// That worker was overloaded: sent to the least loaded one instead.
    Diverted = 1,
    /// Left to the kernel (unknown listener, unreadable packet, selection failed).
    Kernel = 2,
}

impl SteerCounter {
    /// Number of slots.
    pub const COUNT: u32 = 3;
    /// Every counter in slot order.
    pub const ALL: [SteerCounter; 3] = [Self::ByClient, Self::Diverted, Self::Kernel];

    /// Stable lower-case name for metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ByClient => "by_client",
            Self::Diverted => "diverted",
            Self::Kernel => "kernel",
        }
    }
}

/// The worker a client address (16 bytes, IPv4 mapped) hashes to, out of `workers`.
/// Shared with userspace so tests and tools can predict it.
#[inline(always)]
pub fn client_worker(addr: &[u8; 16], workers: u32) -> u32 {
    let flow = crate::FlowKey {
        src: *addr,
        ..Default::default()
    };
    if workers == 0 {
        return 0;
    }
    crate::flow_hash(&flow) % workers
}

// SAFETY: `repr(C)`, `Copy`, explicit padding, no pointers.
#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SteerListenerKey {}
    unsafe impl aya::Pod for super::SteerSettings {}
}
