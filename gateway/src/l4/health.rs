//! Active checks of the L4 services' targets: one thread with its own small runtime,
//! probing every target (TCP connect, or HTTP GET) and telling the main thread each time
//! a target's conclusion changes. The main thread rebuilds the ring; this thread never
//! touches the maps.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc::Sender,
    },
};

use gateway_common::VipKey;

use crate::{admin::Control, config::HealthCheckConfig};

/// One target to probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub vip: VipKey,
    pub target: IpAddr,
    pub port: u16,
    pub check: HealthCheckConfig,
}

/// The running checker; dropping it stops it (after the probes in flight).
#[derive(Debug)]
pub struct Checker {
    stop: Arc<AtomicBool>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Starts probing `probes`; conclusions go to `control` as [`Control::L4Health`].
pub fn start(probes: Vec<Probe>, control: Sender<Control>) -> Option<Checker> {
    if probes.is_empty() {
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("l4-health".into())
        .spawn(move || {
            let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let Ok(mut runtime) = runtime else {
                tracing::error!("L4 health checks: cannot start their runtime");
                return;
            };
            runtime.block_on(async move {
                let tasks: Vec<_> = probes
                    .into_iter()
                    .map(|p| monoio::spawn(check(p, control.clone(), stopped.clone())))
                    .collect();
                for task in tasks {
                    task.await;
                }
            });
        });
    match spawned {
        Ok(_) => Some(Checker { stop }),
        Err(error) => {
            tracing::error!(%error, "cannot start the L4 health checker");
            None
        }
    }
}

async fn check(probe: Probe, control: Sender<Control>, stop: Arc<AtomicBool>) {
    let addr = SocketAddr::new(probe.target, probe.port);
    let check = &probe.check;
    // What was last reported; `None` until the first conclusion.
    let mut reported: Option<bool> = None;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let ok = crate::upstream::health::probe(addr, check, None).await;
        if stop.load(Relaxed) {
            return;
        }
        if ok {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        let conclusion = if successes >= check.healthy {
            Some(true)
        } else if failures >= check.unhealthy {
            Some(false)
        } else {
            None
        };
        if let Some(up) = conclusion
            && reported != Some(up)
        {
            reported = Some(up);
            let message = Control::L4Health {
                vip: probe.vip,
                target: probe.target,
                probed: addr,
                up,
            };
            if control.send(message).is_err() {
                return;
            }
        }
        monoio::time::sleep(check.interval).await;
    }
}
