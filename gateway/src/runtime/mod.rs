//! Workers and their lifecycle: one thread per worker, pinned to a core, each running its
//! own monoio runtime (io_uring, or the legacy epoll driver where io_uring is missing)
//! with its own `SO_REUSEPORT` socket per listener. Workers share nothing on the request
//! path; the config snapshot is an `Arc` read-only.
//!
//! Shutdown: SIGTERM/SIGINT stop accepting, let in-flight requests finish within
//! `gateway.drain_timeout`, then return.

pub mod acl;
mod listener;
mod shutdown;
pub mod steer;
pub mod upgrade;

use std::{
    cell::Cell,
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1},
    iterator::Signals,
};

use self::acl::{AclCommand, AclList, LiveAcl};
pub use self::shutdown::{Mailbox, Shutdown};
use crate::{
    admin::{AdminState, Control, audit::AuditLog},
    config::Config,
    edge::EdgePolicy,
    proxy::{Snapshot, Worker, WorkerShared, serve_connection},
    ratelimit::RateTable,
    webhooks,
    xdp::{PinFolder, XdpProgram, is_placeholder},
};

/// Why the appliance could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Usage(#[from] crate::metering::StoreError),
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
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminError),
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("binary upgrade: {0}")]
    Takeover(String),
    #[error("XDP on {interface}: {source}")]
    Xdp {
        interface: String,
        source: Box<crate::xdp::XdpError>,
    },
    #[error("setting up the L4 services in XDP: {0}")]
    L4(#[from] crate::l4::L4Error),
}

/// Runs the appliance until SIGTERM or SIGINT, then drains and returns. With `takeover`,
/// the listening sockets come from the gateway being upgraded, which is told to drain
/// once this one serves.
pub fn run(config: Config, takeover: Option<upgrade::Takeover>) -> Result<(), RuntimeError> {
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
    // Before any worker registers a metric handle: handles made earlier record nothing.
    let mut prometheus = config
        .gateway
        .admin
        .and_then(|_| crate::observe::install_recorder());
    let (listeners, takeover) = match takeover {
        None => (listener::bind_all(&config, workers)?, None),
        Some(mut takeover) => {
            let addrs = std::mem::take(&mut takeover.addrs);
            let sockets = std::mem::take(&mut takeover.sockets);
            (
                listener::from_takeover(&config, workers, addrs, sockets)?,
                Some(takeover),
            )
        }
    };
    // Duplicates of every listening socket, for the next upgrade's hand-off.
    let handoff: Vec<(usize, std::os::fd::OwnedFd)> = if config.gateway.upgrade_socket.is_some() {
        listeners
            .per_worker
            .iter()
            .flatten()
            .filter_map(|(index, socket)| socket.try_clone().ok().map(|s| (*index, s.into())))
            .collect()
    } else {
        Vec::new()
    };
    let usage = Arc::new(crate::metering::UsageBook::open(
        config.metering.path.clone(),
    )?);
    if config.metering.path.is_none() && config.consumers.iter().any(|c| c.plan.is_some()) {
        tracing::warn!(
            "no [metering] path: usage counts and quotas restart from zero with the process"
        );
    }
    let saver_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saver = usage.spawn_saver(config.metering.flush_interval, saver_stop.clone());
    let snapshot = Arc::new(Snapshot::new(config, &usage));
    webhooks::start(&snapshot.config.webhooks);
    let (mut xdp, mut live) = start_xdp(&snapshot, &listeners.addrs)?;
    // Only now, with the lists in the driver, may the kernel queue connections.
    listeners.listen(&snapshot.config)?;
    // Without XDP the policy is checked at accept, whatever it holds now: a reload may
    // add lists later.
    let edge_in_userspace = xdp.is_none();
    if edge_in_userspace && snapshot.edge.load().is_active() {
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

    let rate_table = Arc::new(RateTable::new(snapshot.config.gateway.rate_limit_keys));
    let (access_log, log_writer) = match &snapshot.config.access_log {
        Some(log) => {
            let (tx, handle) = crate::observe::access_log::start_writer(log.target.clone())
                .map_err(RuntimeError::AccessLog)?;
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };
    // Signals, admin requests and bans reach the main thread as one stream of messages.
    let (control, inbox) = std::sync::mpsc::channel();
    let mut l4 = start_l4(&snapshot.config, xdp.as_mut(), &control)?;
    let l4_control = control.clone();
    let shared = WorkerShared {
        edge_in_userspace,
        rate_table: rate_table.clone(),
        access_log: access_log.clone(),
        control: Some(control.clone()),
        takeover_started: takeover.as_ref().map(|_| Instant::now()),
    };
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]).map_err(RuntimeError::Signals)?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::new();
    let mut mailboxes = Vec::new();
    let load = Arc::new(steer::WorkerLoad::new(listeners.per_worker.len()));
    let load_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    steer::start(
        &snapshot.config,
        &listeners.per_worker,
        &listeners.addrs,
        load.clone(),
        load_stop.clone(),
    );
    for (id, sockets) in listeners.per_worker.into_iter().enumerate() {
        let mailbox = Arc::new(WorkerMailbox::default());
        mailboxes.push(mailbox.clone());
        let snapshot = snapshot.clone();
        let shared = shared.clone();
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let handle = thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn({
                let load = load.clone();
                move || worker_main(id, core, snapshot, shared, sockets, mailbox, load)
            })
            .map_err(|source| RuntimeError::Spawn { worker: id, source })?;
        handles.push(handle);
    }

    let signal_handle = signals.handle();
    {
        let control = control.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if control.send(Control::Signal(signal)).is_err() {
                        return;
                    }
                }
            })
            .map_err(RuntimeError::Signals)?;
    }
    let audit = Arc::new(AuditLog::new(snapshot.config.gateway.audit_log.clone()));
    let admin = match snapshot.config.gateway.admin {
        Some(addr) => {
            let state = Arc::new(AdminState::new(
                snapshot.clone(),
                workers,
                listeners.addrs.clone(),
                prometheus.take(),
                control.clone(),
                if edge_in_userspace {
                    "userspace"
                } else {
                    "xdp"
                },
                rate_table.clone(),
                audit.clone(),
            ));
            let bound = crate::admin::spawn(addr, state.clone())?;
            tracing::info!(addr = %bound, "admin API listening");
            Some(state)
        }
        None => None,
    };
    if let Some(path) = &snapshot.config.gateway.upgrade_socket {
        upgrade::serve(path, handoff, listeners.addrs.clone(), control.clone())
            .map_err(|e| RuntimeError::Takeover(e.to_string()))?;
    }
    drop(control);
    if let Some(takeover) = takeover {
        match takeover.ready() {
            Ok(()) => tracing::info!("upgrade: serving; the previous process drains"),
            Err(error) => tracing::warn!(%error, "upgrade: could not tell the previous process"),
        }
    }
    // One line operators and supervisors can wait for: every listener, worker, the
    // steering program and the admin API are up, and start-up's transients are freed.
    tracing::info!(workers, "ready");

    let mut current = snapshot;
    loop {
        let message = match inbox.recv_timeout(Duration::from_secs(1)) {
            Ok(message) => message,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let expired = live.expire(Instant::now());
                if !expired.is_empty() {
                    for (list, net) in &expired {
                        audit.record(
                            "ttl",
                            "acl_expire",
                            serde_json::json!({ "list": list, "cidr": net.to_string() }),
                        );
                        webhooks::publish(webhooks::Event::AclChange {
                            action: "expire",
                            list,
                            cidr: net.to_string(),
                            by: "ttl".into(),
                        });
                    }
                    apply_live_acl(&current, &live, xdp.as_mut(), &listeners.addrs);
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match message {
            Control::Signal(SIGHUP) => {
                let outcome = reload(&current, &live, xdp.as_mut(), &listeners.addrs);
                audit_reload(&audit, "signal:SIGHUP", &current, &outcome);
                if let Ok(next) = outcome {
                    reload_l4(&mut l4, &next.config, xdp.as_mut(), &l4_control);
                    install(&mailboxes, admin.as_deref(), &next);
                    current = next;
                }
            }
            Control::Signal(SIGUSR1) => {
                if let Some(log) = &access_log {
                    let _ = log.send(crate::observe::access_log::LogMessage::Reopen);
                }
            }
            Control::Signal(signal) => {
                tracing::info!(signal, "shutting down: draining in-flight requests");
                break;
            }
            Control::HandedOver => {
                if let Some(xdp) = xdp.as_mut() {
                    xdp.hand_over();
                }
                tracing::info!("upgraded: draining in-flight requests");
                break;
            }
            Control::Reload { identity, reply } => {
                let outcome = reload(&current, &live, xdp.as_mut(), &listeners.addrs);
                audit_reload(&audit, &identity, &current, &outcome);
                let outcome = outcome.map(|next| {
                    reload_l4(&mut l4, &next.config, xdp.as_mut(), &l4_control);
                    install(&mailboxes, admin.as_deref(), &next);
                    current = next;
                    format!(
                        "{} routes, {} upstreams",
                        current.config.routes.len(),
                        current.config.upstreams.len()
                    )
                });
                let _ = reply.send(outcome);
            }
            Control::Acl {
                command,
                identity,
                reply,
            } => {
                let answer = match command {
                    AclCommand::List => Ok(live.view(
                        &current.config.edge,
                        if xdp.is_some() { "xdp" } else { "userspace" },
                        |deny, list| xdp.as_ref()?.entry_hits(deny, list).ok(),
                    )),
                    AclCommand::Add { list, net, ttl } => {
                        let new = live.add(list, net, ttl, &identity);
                        webhooks::publish(webhooks::Event::AclChange {
                            action: "add",
                            list: list.name(),
                            cidr: net.to_string(),
                            by: identity.clone(),
                        });
                        audit.record(
                            &identity,
                            "acl_add",
                            serde_json::json!({
                                "list": if list == AclList::Deny { "deny" } else { "allow" },
                                "cidr": net.to_string(),
                                "ttl_seconds": ttl.map(|t| t.as_secs()),
                                "renewed": !new,
                            }),
                        );
                        apply_live_acl(&current, &live, xdp.as_mut(), &listeners.addrs);
                        Ok(serde_json::json!({ "added": new, "renewed": !new }))
                    }
                    AclCommand::Remove { list, net } => {
                        if live.remove(list, net) {
                            webhooks::publish(webhooks::Event::AclChange {
                                action: "remove",
                                list: list.name(),
                                cidr: net.to_string(),
                                by: identity.clone(),
                            });
                            audit.record(
                                &identity,
                                "acl_remove",
                                serde_json::json!({
                                    "list": if list == AclList::Deny { "deny" } else { "allow" },
                                    "cidr": net.to_string(),
                                }),
                            );
                            apply_live_acl(&current, &live, xdp.as_mut(), &listeners.addrs);
                            Ok(serde_json::json!({ "removed": true }))
                        } else {
                            Err(format!(
                                "{net} is not a live entry (entries from the config file change by editing it and reloading)"
                            ))
                        }
                    }
                };
                let _ = reply.send(answer);
            }
            Control::Ban { ip, status } => {
                let net = ipnet::IpNet::from(ip);
                let Some(ban) = current.config.edge.ban.as_ref() else {
                    continue;
                };
                if live.contains(AclList::Deny, net) {
                    continue;
                }
                live.add(AclList::Deny, net, Some(ban.duration), "l7-ban");
                tracing::warn!(%ip, status, duration = ?ban.duration, "source banned at the edge after repeated rejected requests");
                metrics::counter!("gateway_edge_bans_total").increment(1);
                webhooks::publish(webhooks::Event::Ban {
                    ip: ip.to_string(),
                    last_status: status,
                    seconds: ban.duration.as_secs(),
                });
                audit.record(
                    "l7-ban",
                    "ban",
                    serde_json::json!({
                        "cidr": net.to_string(),
                        "last_status": status,
                        "ttl_seconds": ban.duration.as_secs(),
                    }),
                );
                apply_live_acl(&current, &live, xdp.as_mut(), &listeners.addrs);
            }
            Control::CachePurge {
                key,
                prefix,
                identity,
                reply,
            } => {
                let (tx, rx) = std::sync::mpsc::channel();
                for mailbox in &mailboxes {
                    mailbox.purges.push((key.clone(), !prefix, tx.clone()));
                }
                drop(tx);
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut purged = 0;
                for _ in &mailboxes {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(count) => purged += count,
                        Err(_) => break,
                    }
                }
                audit.record(
                    &identity,
                    "cache_purge",
                    serde_json::json!({ "key": key, "prefix": prefix, "purged": purged }),
                );
                let _ = reply.send(purged);
            }
            Control::L4Health {
                vip,
                target,
                probed,
                up,
            } => {
                if let Some(program) = xdp.as_mut() {
                    match l4.set_health(vip, target, up, program) {
                        Ok(Some(service)) => {
                            webhooks::publish(webhooks::Event::UpstreamHealth {
                                upstream: format!("l4:{service}"),
                                target: target.to_string(),
                                healthy: up,
                            });
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::error!(%error, "L4 health change: updating the ring failed")
                        }
                    }
                }
                // L7 upstream targets at the probed address share the conclusion.
                current.upstreams.mark_address(probed, up);
            }
            Control::L4View(reply) => {
                let view = match xdp.as_mut() {
                    Some(program) => l4.view(program),
                    None => serde_json::json!({ "services": [] }),
                };
                let _ = reply.send(view);
            }
            Control::XdpCounters(reply) => {
                let counters = xdp
                    .as_ref()
                    .and_then(|x| x.verdict_counters().ok())
                    .map(|list| {
                        list.into_iter()
                            .map(|(verdict, c)| (verdict.name(), c.packets, c.bytes))
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = reply.send(counters);
            }
        }
    }
    signal_handle.close();
    for mailbox in &mailboxes {
        mailbox.shutdown.post(());
    }
    for handle in handles {
        if handle.join().is_err() {
            tracing::error!("a worker panicked during shutdown");
        }
    }
    // Every worker has flushed: the writer stops after the last line.
    if let (Some(log), Some(writer)) = (&access_log, log_writer) {
        let _ = log.send(crate::observe::access_log::LogMessage::Close);
        if writer.join().is_err() {
            tracing::error!("the access-log writer panicked");
        }
    }
    drop(shared);
    load_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    saver_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(saver) = saver {
        saver.thread().unpark();
        let _ = saver.join();
    }
    if let Err(error) = usage.save_if_changed() {
        tracing::error!(%error, "saving usage counts at shutdown failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Swaps in the effective edge policy after a live ACL change: XDP maps first (new
/// entries before removals), then the policy workers check at accept.
fn apply_live_acl(
    current: &Snapshot,
    live: &LiveAcl,
    xdp: Option<&mut XdpProgram>,
    addrs: &[SocketAddr],
) {
    let next = Arc::new(EdgePolicy::new(&live.merged(&current.config.edge)));
    if let Some(xdp) = xdp {
        if let Err(error) = xdp.sync_policy(next.config(), addrs) {
            tracing::error!(%error, "ACL change: updating the XDP lists failed");
        }
        if let Err(error) = xdp.store_live_entries(&live.persisted()) {
            tracing::warn!(%error, "ACL change: recording the live entries for a restart failed");
        }
    }
    current.edge.store(next);
    tracing::info!("ACL updated");
}

/// Appends a reload attempt to the audit trail.
fn audit_reload(
    audit: &AuditLog,
    identity: &str,
    current: &Snapshot,
    outcome: &Result<Arc<Snapshot>, String>,
) {
    let before = crate::admin::audit::summary(current);
    let entry = match outcome {
        Ok(next) => serde_json::json!({
            "result": "applied",
            "before": before,
            "after": crate::admin::audit::summary(next),
        }),
        Err(problems) => serde_json::json!({
            "result": "refused",
            "before": before,
            "problems": problems.lines().collect::<Vec<_>>(),
        }),
    };
    audit.record(identity, "reload", entry);
    webhooks::publish(webhooks::Event::ConfigReload {
        applied: outcome.is_ok(),
        by: identity.to_owned(),
        detail: match outcome {
            Ok(next) => format!(
                "{} routes, {} upstreams",
                next.config.routes.len(),
                next.config.upstreams.len()
            ),
            Err(problems) => problems.clone(),
        },
    });
}

/// Puts a reloaded snapshot in service: every worker, and the admin API's view.
fn install(mailboxes: &[Arc<WorkerMailbox>], admin: Option<&AdminState>, next: &Arc<Snapshot>) {
    webhooks::start(&next.config.webhooks);
    for mailbox in mailboxes {
        mailbox.config.post(next.clone());
    }
    if let Some(admin) = admin {
        admin.current.store(next.clone());
        admin
            .reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What the main thread sends a worker.
#[derive(Default)]
struct WorkerMailbox {
    shutdown: Shutdown,
    config: Mailbox<Arc<Snapshot>>,
    /// Cache purges: (key, exact), and where to say how many keys went.
    purges: Mailbox<Vec<(String, bool, std::sync::mpsc::Sender<usize>)>>,
}

/// SIGHUP: reads and validates the config file again. On any problem the running config
/// stays and every problem is logged; on success the new snapshot (and the edge policy,
/// in XDP when attached) takes over. Listeners cannot change without a restart.
fn reload(
    current: &Snapshot,
    live: &LiveAcl,
    xdp: Option<&mut XdpProgram>,
    addrs: &[SocketAddr],
) -> Result<Arc<Snapshot>, String> {
    let path = &current.config.source;
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("reload refused, the running config stays:\n{error}");
            return Err(error.to_string());
        }
    };
    let same_listeners = config.listeners.len() == current.config.listeners.len()
        && config
            .listeners
            .iter()
            .zip(&current.config.listeners)
            .all(|(a, b)| {
                a.name == b.name
                    && a.bind == b.bind
                    && a.tls.is_some() == b.tls.is_some()
                    && a.redirect_to_https == b.redirect_to_https
            });
    if !same_listeners {
        let message = "listeners changed; restart to apply them";
        tracing::error!("reload refused, the running config stays: {message}");
        return Err(message.to_owned());
    }
    if config.gateway.rate_limit_keys != current.config.gateway.rate_limit_keys {
        tracing::warn!(
            "gateway.rate_limit_keys changed: the rate-limit table keeps its size until restart"
        );
    }
    if config.metering != current.config.metering {
        tracing::warn!("[metering] changed: the usage file and interval stay until restart");
    }
    let next = Arc::new(Snapshot::new(config, current.meter.book()));
    next.adopt_remote_keys(current);
    // Targets that stay keep their health (no flapping back into rotation on reload).
    next.upstreams.health.adopt(
        &next.upstreams.target_ids(),
        &current.upstreams.health,
        &current.upstreams.target_ids(),
    );
    // Live ACL entries outlive reloads.
    next.edge
        .store(Arc::new(EdgePolicy::new(&live.merged(&next.config.edge))));
    if let Some(xdp) = xdp
        && let Err(error) = xdp.sync_policy(next.edge.load().config(), addrs)
    {
        tracing::error!(%error, "reload: updating the XDP lists failed; they may be partly new");
    }
    tracing::info!(
        path = %path.display(),
        routes = next.config.routes.len(),
        upstreams = next.config.upstreams.len(),
        "config reloaded"
    );
    Ok(next)
}

/// Writes the L4 services into the XDP maps (nothing without XDP: then they are not
/// balanced, and the log says so).
fn start_l4(
    config: &Config,
    xdp: Option<&mut XdpProgram>,
    control: &std::sync::mpsc::Sender<Control>,
) -> Result<crate::l4::L4Balancer, RuntimeError> {
    match xdp {
        Some(program) => Ok(crate::l4::L4Balancer::start(config, program, control)?),
        None => {
            if !config.l4_services.is_empty() {
                tracing::warn!("L4 services need the XDP program; they are not balanced");
            }
            Ok(crate::l4::L4Balancer::default())
        }
    }
}

/// Brings the L4 maps to a reloaded config; a failure is logged and leaves the maps
/// partly updated (the next reload retries).
fn reload_l4(
    l4: &mut crate::l4::L4Balancer,
    config: &Config,
    xdp: Option<&mut XdpProgram>,
    control: &std::sync::mpsc::Sender<Control>,
) {
    if let Some(program) = xdp
        && let Err(error) = l4.apply(config, program, control)
    {
        tracing::error!(%error, "reload: updating the L4 services failed");
    }
}

/// Loads the XDP program over its interface's pinned maps, restores the live ACL
/// entries a previous process recorded there, writes the effective policy, and puts the
/// program in the driver (swapped into a pinned link when one is left, so there is no
/// moment without it). Without an interface or the program, the live entries start empty
/// and the policy is enforced at accept.
fn start_xdp(
    snapshot: &Snapshot,
    listeners: &[SocketAddr],
) -> Result<(Option<XdpProgram>, LiveAcl), RuntimeError> {
    let config = &snapshot.config;
    let interface = config.xdp.as_ref().and_then(|x| x.interface.clone());
    if is_placeholder() {
        tracing::info!("built without the XDP program: running L7-only");
        return Ok((None, LiveAcl::default()));
    }
    let (Some(xdp), Some(interface)) = (config.xdp.as_ref(), interface) else {
        tracing::info!("no [xdp] interface configured: running L7-only");
        return Ok((None, LiveAcl::default()));
    };
    let fail = |source| RuntimeError::Xdp {
        interface: interface.clone(),
        source: Box::new(source),
    };
    let Ok(c_name) = std::ffi::CString::new(interface.as_str()) else {
        return Err(fail(crate::xdp::XdpError::NoInterface));
    };
    // SAFETY: a valid NUL-terminated name.
    if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
        return Err(fail(crate::xdp::XdpError::NoInterface));
    }
    let pins = PinFolder::new(&xdp.pin_path, &interface);
    let mut program = XdpProgram::load_pinned(&pins).map_err(fail)?;
    let live = LiveAcl::restore(program.live_entries().map_err(fail)?);
    if !live.is_empty() {
        tracing::info!(
            entries = live.len(),
            "live ACL entries restored from the pinned maps"
        );
    }
    let policy = Arc::new(EdgePolicy::new(&live.merged(&config.edge)));
    program
        .sync_policy(policy.config(), listeners)
        .map_err(fail)?;
    program
        .store_live_entries(&live.persisted())
        .map_err(fail)?;
    snapshot.edge.store(policy);
    program.attach(xdp, &pins).map_err(fail)?;
    if xdp.mode == crate::config::XdpMode::Skb {
        tracing::warn!(%interface, "XDP in skb (generic) mode: correct but far slower than driver mode");
    }
    tracing::info!(%interface, mode = ?xdp.mode, pins = %pins.dir().display(), "XDP program attached; edge policy enforced in XDP");
    Ok((Some(program), live))
}

fn worker_main(
    id: usize,
    core: Option<core_affinity::CoreId>,
    snapshot: Arc<Snapshot>,
    shared: WorkerShared,
    sockets: Vec<(usize, std::net::TcpListener)>,
    mailbox: Arc<WorkerMailbox>,
    load: Arc<steer::WorkerLoad>,
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
        let worker = match Worker::new(id, snapshot, shared) {
            Ok(worker) => Rc::new(worker),
            Err(error) => {
                tracing::error!(worker = id, %error, "cannot set up TLS; worker not serving");
                return;
            }
        };
        let active = Rc::new(Cell::new(0usize));
        for (index, socket) in sockets {
            match monoio::net::TcpListener::from_std(socket) {
                Ok(listener) => {
                    let active = ActiveCount {
                        count: active.clone(),
                        load: load.clone(),
                        worker: id,
                    };
                    monoio::spawn(accept_loop(listener, worker.clone(), active, index));
                }
                Err(error) => tracing::error!(worker = id, %error, "cannot register listener"),
            }
        }
        let reloads = worker.clone();
        let inbox = mailbox.clone();
        monoio::spawn(async move {
            loop {
                let snapshot = inbox.config.recv().await;
                if let Err(error) = reloads.install(snapshot) {
                    tracing::error!(worker = reloads.id, %error, "reload: TLS setup failed; this worker keeps the previous config");
                }
            }
        });
        let sweeper = worker.clone();
        monoio::spawn(async move {
            let mut pause = Duration::from_millis(5);
            loop {
                monoio::time::sleep(pause).await;
                pause = if sweeper.release_idle_for_waiters() {
                    Duration::from_millis(5)
                } else {
                    Duration::from_millis(250)
                };
            }
        });
        let idle = worker.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(crate::proxy::idle::SWEEP_PERIOD).await;
                idle.idle.sweep(Instant::now());
            }
        });
        let purger = worker.clone();
        let purges = mailbox.clone();
        monoio::spawn(async move {
            loop {
                for (key, exact, reply) in purges.purges.recv().await {
                    let count = purger.cache().borrow_mut().purge(key.as_bytes(), exact);
                    let _ = reply.send(count);
                }
            }
        });
        if worker.logs_requests() {
            let flusher = worker.clone();
            monoio::spawn(async move {
                loop {
                    monoio::time::sleep(Duration::from_millis(250)).await;
                    flusher.flush_log();
                }
            });
        }
        mailbox.shutdown.recv().await;
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
        worker.flush_log();
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

/// A worker's count of open connections: its own, and its slot of the shared loads
/// (read by worker steering and the metrics).
#[derive(Clone)]
struct ActiveCount {
    count: Rc<Cell<usize>>,
    load: Arc<steer::WorkerLoad>,
    worker: usize,
}

impl ActiveCount {
    fn add(&self, delta: isize) {
        let now = self.count.get().saturating_add_signed(delta);
        self.count.set(now);
        self.load.set(self.worker, now);
    }
}

/// Counts a connection as active while it lives.
struct ActiveGuard(ActiveCount);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// How long after a takeover the accept is re-armed, and how often.
const TAKEOVER_REARM_WINDOW: Duration = Duration::from_secs(3);
const TAKEOVER_REARM: Duration = Duration::from_millis(50);

async fn accept_loop(
    listener: monoio::net::TcpListener,
    worker: Rc<Worker>,
    active: ActiveCount,
    listener_index: usize,
) {
    // Draining cancels the pending accept through io_uring and still awaits it: an accept
    // that completed in the same instant yields its connection (served, and closed after
    // one answer) instead of leaking an accepted socket nobody reads. After a binary
    // upgrade takeover, the pending accept is also re-armed every 50 ms for a few
    // seconds: a wakeup the draining process's cancelled accept swallowed would otherwise
    // leave a connection queued until the next one arrives.
    let rearm_until = worker.takeover_started.map(|t| t + TAKEOVER_REARM_WINDOW);
    loop {
        let canceller = monoio::io::Canceller::new();
        let mut accept = std::pin::pin!(listener.cancelable_accept(canceller.handle()));
        let rearm = rearm_until.is_some_and(|until| Instant::now() < until);
        let accepted = monoio::select! {
            accepted = &mut accept => accepted,
            () = worker.drain.wait() => {
                canceller.cancel();
                accept.await
            }
            () = monoio::time::sleep(TAKEOVER_REARM), if rearm => {
                canceller.cancel();
                accept.await
            }
        };
        if accepted.is_err() && worker.drain.is_draining() {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                if !worker.admit_source(peer.ip()) {
                    // Refused by the edge policy: closed before a byte is read.
                    continue;
                }
                active.add(1);
                let guard = ActiveGuard(active.clone());
                let listener_metrics = worker.metrics(|m| {
                    m.listeners.get(listener_index).map(|l| {
                        l.accepted.increment(1);
                        l.active.increment(1.0);
                        (
                            l.active.clone(),
                            l.tls_handshakes.clone(),
                            l.tls_failures.clone(),
                        )
                    })
                });
                let (active_gauge, handshakes) = match listener_metrics {
                    Some((active, ok, failed)) => (Some(active), Some((ok, failed))),
                    None => (None, None),
                };
                // The connection's whole life is one boxed future; its task holds the
                // pointer and a few handles, whatever the handshake needed. The acceptor
                // is the current config's: a reload rotates certificates for new
                // handshakes while open connections keep theirs.
                let serve: ConnectionFuture = match worker.listener_tls(listener_index) {
                    None => Box::pin(serve_connection(
                        worker.clone(),
                        stream,
                        peer,
                        listener_index,
                        None,
                    )),
                    Some((config, timeout)) => {
                        let worker = worker.clone();
                        Box::pin(async move {
                            let accepted = accept_tls(stream, peer, config, timeout, handshakes);
                            if let Some(serve) = accepted.await {
                                serve(worker, listener_index).await;
                            }
                        })
                    }
                };
                monoio::spawn(async move {
                    let served = CatchUnwind(serve).await;
                    if let Some(active) = &active_gauge {
                        active.decrement(1.0);
                    }
                    if served.is_err() {
                        tracing::error!(%peer, "connection handler panicked; connection dropped");
                    }
                    drop(guard);
                });
            }
            // A re-armed accept (after a takeover) was cancelled: arm it again.
            Err(error) if error.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(worker = worker.id, %error, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection's life on a worker, boxed: only a pointer is kept in its task.
type ConnectionFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Runs the TLS handshake of an accepted connection within `timeout` (a stalled or
/// broken one costs at most that), counting the outcome. Returns what serves the
/// connection afterwards, given the worker and the listener's index.
async fn accept_tls(
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    handshakes: Option<(metrics::Counter, metrics::Counter)>,
) -> Option<impl FnOnce(Rc<Worker>, usize) -> ConnectionFuture> {
    // Boxed: the handshake's state is large, and it is needed only until it is done.
    let handshake = Box::pin(monoio::time::timeout(
        timeout,
        crate::tls::TlsStream::accept(stream, config),
    ))
    .await;
    if let Some((ok, failed)) = handshakes {
        match &handshake {
            Ok(Ok(_)) => ok.increment(1),
            _ => failed.increment(1),
        }
    }
    match handshake {
        Ok(Ok(tls_stream)) => Some(move |worker, listener| {
            let tls = crate::tls::TlsInfo::of(tls_stream.session());
            Box::pin(serve_connection(
                worker,
                tls_stream,
                peer,
                listener,
                Some(tls),
            )) as ConnectionFuture
        }),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Polls a connection's future, turning a panic inside it into `Err(())`: a bug in one
/// connection's handling must not take the worker down.
struct CatchUnwind(ConnectionFuture);

impl std::future::Future for CatchUnwind {
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
