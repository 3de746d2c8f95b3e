//! Worker steering for the L7 listeners: the `sk_reuseport` program (built beside the
//! XDP object) picks the worker that accepts each new connection — by a hash of the
//! client address, skipping a worker far busier than the least loaded — instead of the
//! kernel's 4-tuple hash. Workers count their open connections in [`WorkerLoad`]; a
//! small thread copies the counts into the program's map and into metrics every
//! [`LOAD_PERIOD`], so the request path makes no syscall for it.
//!
//! Without the program (a build without the eBPF toolchain, or `worker_steering =
//! "kernel"`) the kernel's own pick stays, and the counts still reach the metrics.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::AsFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
    },
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapError, PerCpuArray, ReusePortSockArray},
    programs::{ProgramError, SkReuseport},
};
use gateway_common::{
    MAX_STEER_LISTENERS, MAX_STEER_WORKERS, STEER_LISTENERS_MAP, STEER_LOAD_MAP, STEER_PROGRAM,
    STEER_SETTINGS_MAP, STEER_SOCKETS_MAP, STEER_STATS_MAP, SteerCounter, SteerListenerKey,
    SteerSettings,
};

use crate::config::{Config, STEERING_SLACK};

/// The steering object built by `cargo xtask` (empty in plain `cargo build`s).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-steer.o"));

/// How often the connection counts reach the program and the metrics.
pub const LOAD_PERIOD: Duration = Duration::from_millis(50);

/// Why the steering program could not be set up (the kernel's pick then stays).
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("loading the steering object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("steering program: {0}")]
    Program(#[from] ProgramError),
    #[error("steering map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("at most {MAX_STEER_WORKERS} workers and {MAX_STEER_LISTENERS} listeners are steered")]
    TooMany,
}

/// Open connections per worker; each slot is written only by its own worker.
#[derive(Debug)]
pub struct WorkerLoad {
    slots: Box<[Slot]>,
}

/// One worker's count on its own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot(AtomicU32);

impl WorkerLoad {
    /// Zero connections on each of `workers`.
    pub fn new(workers: usize) -> Self {
        Self {
            slots: (0..workers).map(|_| Slot::default()).collect(),
        }
    }

    /// Worker `worker` now holds `connections`.
    pub fn set(&self, worker: usize, connections: usize) {
        if let Some(slot) = self.slots.get(worker) {
            slot.0
                .store(connections.min(u32::MAX as usize) as u32, Relaxed);
        }
    }

    /// Every worker's count.
    pub fn snapshot(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.0.load(Relaxed)).collect()
    }
}

/// The loaded steering program and its maps.
struct Steering {
    ebpf: Ebpf,
}

impl Steering {
    /// Loads the program, fills the socket array (listener `l`, worker `w` at
    /// `l × MAX_STEER_WORKERS + w`) and attaches it to every listener's group.
    fn attach(
        config: &Config,
        sockets: &[Vec<(usize, TcpListener)>],
        addrs: &[SocketAddr],
    ) -> Result<Self, SteerError> {
        let workers = sockets.len();
        if workers > MAX_STEER_WORKERS as usize || addrs.len() > MAX_STEER_LISTENERS as usize {
            return Err(SteerError::TooMany);
        }
        // The program needs no CO-RE relocation, so none is applied. (aya's loader parses
        // the kernel's BTF when it is made all the same: ~15 MB for a moment at start-up,
        // freed before the gateway says it is ready.)
        let mut ebpf = aya::EbpfLoader::new().btf(None).load(OBJECT)?;
        let map_error = |name| move |source| SteerError::Map { name, source };
        {
            let mut settings: Array<_, SteerSettings> =
                Array::try_from(ebpf.map_mut(STEER_SETTINGS_MAP).ok_or(SteerError::Map {
                    name: STEER_SETTINGS_MAP,
                    source: MapError::InvalidName {
                        name: STEER_SETTINGS_MAP.into(),
                    },
                })?)
                .map_err(map_error(STEER_SETTINGS_MAP))?;
            let value = SteerSettings {
                workers: workers as u32,
                overload_percent: config.gateway.steering_overload_percent,
                slack: STEERING_SLACK,
                _pad: 0,
            };
            settings
                .set(0, value, 0)
                .map_err(map_error(STEER_SETTINGS_MAP))?;
        }
        {
            let mut listeners: BpfHashMap<_, SteerListenerKey, u32> =
                BpfHashMap::try_from(map(&mut ebpf, STEER_LISTENERS_MAP)?)
                    .map_err(map_error(STEER_LISTENERS_MAP))?;
            for (index, addr) in addrs.iter().enumerate() {
                let key = SteerListenerKey {
                    port: u32::from(addr.port()),
                    family: if addr.is_ipv4() { 2 } else { 10 },
                };
                listeners
                    .insert(key, index as u32, 0)
                    .map_err(map_error(STEER_LISTENERS_MAP))?;
            }
        }
        {
            let mut array = ReusePortSockArray::try_from(map(&mut ebpf, STEER_SOCKETS_MAP)?)
                .map_err(map_error(STEER_SOCKETS_MAP))?;
            for (worker, list) in sockets.iter().enumerate() {
                for (listener, socket) in list {
                    let slot = *listener as u32 * MAX_STEER_WORKERS + worker as u32;
                    array
                        .set(slot, socket, 0)
                        .map_err(map_error(STEER_SOCKETS_MAP))?;
                }
            }
        }
        let program: &mut SkReuseport = ebpf
            .program_mut(STEER_PROGRAM)
            .ok_or(ProgramError::UnexpectedProgramType)?
            .try_into()?;
        program.load()?;
        // Attaching through one socket sets the program of its whole group.
        for (listener, _) in addrs.iter().enumerate() {
            if let Some((_, socket)) = sockets
                .first()
                .and_then(|list| list.iter().find(|(l, _)| *l == listener))
            {
                program.attach(socket.as_fd())?;
            }
        }
        Ok(Self { ebpf })
    }

    fn write_loads(&mut self, loads: &[u32], written: &mut [u32]) -> Result<(), SteerError> {
        let mut array: Array<_, u32> = Array::try_from(map(&mut self.ebpf, STEER_LOAD_MAP)?)
            .map_err(|source| SteerError::Map {
                name: STEER_LOAD_MAP,
                source,
            })?;
        for (worker, (&load, last)) in loads.iter().zip(written.iter_mut()).enumerate() {
            if load != *last {
                array
                    .set(worker as u32, load, 0)
                    .map_err(|source| SteerError::Map {
                        name: STEER_LOAD_MAP,
                        source,
                    })?;
                *last = load;
            }
        }
        Ok(())
    }

    fn decisions(&self) -> Option<Vec<u64>> {
        let map = self.ebpf.map(STEER_STATS_MAP)?;
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).ok()?;
        SteerCounter::ALL
            .iter()
            .map(|c| Some(array.get(&(*c as u32), 0).ok()?.iter().sum()))
            .collect()
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map, SteerError> {
    ebpf.map_mut(name).ok_or(SteerError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    })
}

/// Sets up steering (when configured and built) and starts the thread that publishes
/// the workers' loads; it stops when `stop` is set.
pub fn start(
    config: &Config,
    sockets: &[Vec<(usize, TcpListener)>],
    addrs: &[SocketAddr],
    load: Arc<WorkerLoad>,
    stop: Arc<AtomicBool>,
) {
    let mut steering = if !config.gateway.steer_by_client {
        tracing::info!("worker steering: the kernel's reuseport hash (worker_steering = kernel)");
        None
    } else if OBJECT.is_empty() {
        tracing::info!(
            "worker steering: the kernel's reuseport hash (built without the steering program)"
        );
        None
    } else {
        match Steering::attach(config, sockets, addrs) {
            Ok(steering) => {
                tracing::info!("worker steering: by client address (sk_reuseport program)");
                Some(steering)
            }
            Err(error) => {
                tracing::warn!(%error, "worker steering unavailable; the kernel's reuseport hash stays");
                None
            }
        }
    };
    let spawned = std::thread::Builder::new()
        .name("worker-load".into())
        .spawn(move || {
            let workers = load.snapshot().len();
            let mut written = vec![u32::MAX; workers];
            let gauges: Vec<metrics::Gauge> = (0..workers)
                .map(|w| metrics::gauge!("gateway_worker_connections", "worker" => w.to_string()))
                .collect();
            let decisions: Vec<metrics::Counter> = SteerCounter::ALL
                .iter()
                .map(|c| metrics::counter!("gateway_worker_steering_total", "decision" => c.name()))
                .collect();
            while !stop.load(Relaxed) {
                let loads = load.snapshot();
                for (gauge, &value) in gauges.iter().zip(&loads) {
                    gauge.set(f64::from(value));
                }
                if let Some(steering) = steering.as_mut() {
                    if let Err(error) = steering.write_loads(&loads, &mut written) {
                        tracing::warn!(%error, "worker steering: updating the loads failed");
                    }
                    if let Some(counts) = steering.decisions() {
                        for (counter, count) in decisions.iter().zip(counts) {
                            counter.absolute(count);
                        }
                    }
                }
                std::thread::sleep(LOAD_PERIOD);
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the worker-load thread");
    }
}
