//! Workers and their lifecycle: one thread per worker, pinned to a core, each running its
//! own monoio runtime (io_uring, or the legacy epoll driver where io_uring is missing)
//! with its own `SO_REUSEPORT` socket per listener. Workers share nothing on the request
//! path; the config snapshot is an `Arc` read-only.
//!
//! Shutdown: SIGTERM/SIGINT stop accepting, let in-flight requests finish within
//! `gateway.drain_timeout`, then return.

mod listener;
mod shutdown;

use std::{
    cell::Cell,
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

pub use self::shutdown::Shutdown;
use crate::{
    config::Config,
    proxy::{Snapshot, Worker, serve_connection},
    xdp::{XdpProgram, is_placeholder},
};

/// Why the appliance could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("listener {name:?}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start worker {worker}: {source}")]
    Spawn {
        worker: usize,
        source: std::io::Error,
    },
    #[error("XDP on {interface}: {source}")]
    Xdp {
        interface: String,
        source: Box<crate::xdp::XdpError>,
    },
}

/// Runs the appliance until SIGTERM or SIGINT, then drains and returns.
pub fn run(config: Config) -> Result<(), RuntimeError> {
    let workers = config.worker_count();
    for upstream in &config.upstreams {
        if upstream
            .tls
            .as_ref()
            .is_some_and(|t| t.insecure_skip_verify)
        {
            tracing::warn!(
                upstream = %upstream.name,
                "TLS certificate verification is OFF for this upstream (tls_insecure_skip_verify): anyone on the path can impersonate it"
            );
        }
    }
    let listeners = listener::bind_all(&config, workers)?;
    let snapshot = Arc::new(Snapshot::new(config));
    let xdp = start_xdp(&snapshot, &listeners.addrs)?;
    let edge_in_userspace = xdp.is_none() && snapshot.edge.is_active();
    if edge_in_userspace {
        tracing::info!("edge policy enforced in userspace at accept (XDP not attached)");
    }
    for (l, addr) in snapshot.config.listeners.iter().zip(listeners.addrs.iter()) {
        tracing::info!(listener = %l.name, %addr, "listening");
    }
    if monoio::utils::detect_uring() {
        tracing::info!(workers, "starting workers on io_uring");
    } else {
        tracing::warn!(
            workers,
            "io_uring unavailable; starting workers on the legacy epoll driver"
        );
    }

    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(RuntimeError::Signals)?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::new();
    let mut shutdowns = Vec::new();
    for (id, sockets) in listeners.per_worker.into_iter().enumerate() {
        let shutdown = Arc::new(Shutdown::default());
        shutdowns.push(shutdown.clone());
        let snapshot = snapshot.clone();
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let handle = thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || worker_main(id, core, snapshot, edge_in_userspace, sockets, &shutdown))
            .map_err(|source| RuntimeError::Spawn { worker: id, source })?;
        handles.push(handle);
    }

    for signal in signals.forever() {
        match signal {
            SIGHUP => tracing::warn!(
                "SIGHUP: live reload is not available in this build; restart to apply a new config"
            ),
            _ => {
                tracing::info!(signal, "shutting down: draining in-flight requests");
                break;
            }
        }
    }
    for shutdown in &shutdowns {
        shutdown.trigger();
    }
    for handle in handles {
        if handle.join().is_err() {
            tracing::error!("a worker panicked during shutdown");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

fn start_xdp(
    snapshot: &Snapshot,
    listeners: &[SocketAddr],
) -> Result<Option<XdpProgram>, RuntimeError> {
    let config = &snapshot.config;
    let interface = config.xdp.as_ref().and_then(|x| x.interface.clone());
    if is_placeholder() {
        tracing::info!("built without the XDP program: running L7-only");
        return Ok(None);
    }
    let (Some(xdp), Some(interface)) = (config.xdp.as_ref(), interface) else {
        tracing::info!("no [xdp] interface configured: running L7-only");
        return Ok(None);
    };
    let fail = |source| RuntimeError::Xdp {
        interface: interface.clone(),
        source: Box::new(source),
    };
    let mut program = XdpProgram::load().map_err(fail)?;
    program
        .apply_policy(&snapshot.edge, listeners)
        .map_err(fail)?;
    program.attach(xdp).map_err(fail)?;
    if xdp.mode == crate::config::XdpMode::Skb {
        tracing::warn!(%interface, "XDP in skb (generic) mode: correct but far slower than driver mode");
    }
    tracing::info!(%interface, mode = ?xdp.mode, "XDP program attached; edge policy enforced in XDP");
    Ok(Some(program))
}

fn worker_main(
    id: usize,
    core: Option<core_affinity::CoreId>,
    snapshot: Arc<Snapshot>,
    edge_in_userspace: bool,
    sockets: Vec<std::net::TcpListener>,
    shutdown: &Shutdown,
) {
    if let Some(core) = core
        && !core_affinity::set_for_current(core)
    {
        tracing::warn!(
            worker = id,
            core = core.id,
            "could not pin worker to its core"
        );
    }
    let mut runtime = match build_runtime() {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(worker = id, %error, "cannot build the worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let drain_timeout = snapshot.config.gateway.drain_timeout;
        let worker = Rc::new(Worker::new(id, snapshot, edge_in_userspace));
        let active = Rc::new(Cell::new(0usize));
        for (index, socket) in sockets.into_iter().enumerate() {
            let tls = match worker.snapshot.tls_resolvers.get(index).cloned().flatten() {
                Some(resolver) => match crate::tls::server_config(resolver) {
                    Ok(config) => Some(monoio_rustls::TlsAcceptor::from(config)),
                    Err(error) => {
                        tracing::error!(worker = id, %error, "cannot set up TLS; listener not served");
                        continue;
                    }
                },
                None => None,
            };
            let handshake_timeout = worker.snapshot.config.listeners[index]
                .tls
                .as_ref()
                .map_or(Duration::ZERO, |t| t.handshake_timeout);
            match monoio::net::TcpListener::from_std(socket) {
                Ok(listener) => {
                    let tls = tls.map(|acceptor| (acceptor, handshake_timeout));
                    monoio::spawn(accept_loop(listener, worker.clone(), active.clone(), tls, index));
                }
                Err(error) => tracing::error!(worker = id, %error, "cannot register listener"),
            }
        }
        shutdown.wait().await;
        worker.drain.start();
        let deadline = Instant::now() + drain_timeout;
        while active.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        if active.get() > 0 {
            tracing::warn!(
                worker = id,
                connections = active.get(),
                "drain timeout: closing remaining connections"
            );
        }
    });
}

/// io_uring ring size per worker.
const RING_ENTRIES: u32 = 1024;

/// A worker runtime. The ring is set up for one thread: completions' task work runs
/// when the worker asks for events (`DEFER_TASKRUN`) instead of interrupting it with
/// IPIs, which on this workload is most of the kernel's overhead. Kernels without those
/// flags get a plain ring; without io_uring, monoio falls back to epoll.
fn build_runtime() -> std::io::Result<
    monoio::FusionRuntime<
        monoio::time::TimeDriver<monoio::IoUringDriver>,
        monoio::time::TimeDriver<monoio::LegacyDriver>,
    >,
> {
    let mut tuned = io_uring::IoUring::builder();
    tuned
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    let built = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(RING_ENTRIES)
        .uring_builder(tuned)
        .build();
    built.or_else(|error| {
        tracing::warn!(%error, "tuned io_uring setup refused; using a default ring");
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .with_entries(RING_ENTRIES)
            .build()
    })
}

/// Counts a connection as active while it lives.
struct ActiveGuard(Rc<Cell<usize>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

async fn accept_loop(
    listener: monoio::net::TcpListener,
    worker: Rc<Worker>,
    active: Rc<Cell<usize>>,
    tls: Option<(monoio_rustls::TlsAcceptor, Duration)>,
    listener_index: usize,
) {
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            () = worker.drain.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if !worker.admit_source(peer.ip()) {
                    // Refused by the edge policy: closed before a byte is read.
                    continue;
                }
                active.set(active.get() + 1);
                let guard = ActiveGuard(active.clone());
                let worker = worker.clone();
                let tls = tls.clone();
                monoio::spawn(async move {
                    // A bug in one connection's handling must not take the worker down.
                    let served = match tls {
                        None => {
                            CatchUnwind(Box::pin(serve_connection(
                                worker,
                                stream,
                                peer,
                                listener_index,
                            )))
                            .await
                        }
                        Some((acceptor, timeout)) => {
                            // A stalled or broken handshake costs at most the timeout.
                            match monoio::time::timeout(timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => {
                                    CatchUnwind(Box::pin(serve_connection(
                                        worker,
                                        tls_stream,
                                        peer,
                                        listener_index,
                                    )))
                                    .await
                                }
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "TLS handshake failed");
                                    Ok(())
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    Ok(())
                                }
                            }
                        }
                    };
                    if served.is_err() {
                        tracing::error!(%peer, "connection handler panicked; connection dropped");
                    }
                    drop(guard);
                });
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(worker = worker.id, %error, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Polls a future, turning a panic inside it into `Err(())`.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future<Output = ()>> std::future::Future for CatchUnwind<F> {
    type Output = Result<(), ()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(())) => std::task::Poll::Ready(Ok(())),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}
