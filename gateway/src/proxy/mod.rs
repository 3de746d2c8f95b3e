//! The request path: one fixed pipeline of phases per request, run on the worker that
//! accepted the connection.
//!
//! ```text
//! accept → parse head → route → pick upstream → forward request (head, body)
//!        → read response head → relay response (head, body) → pool or close → next request
//!                  ↑ connect failure on an idempotent request: pick another target once
//! ```
//!
//! Each phase either continues or ends the request with a [`error::ProxyError`], which
//! [`error::ProxyError::answer`] turns into the response (the only such mapping).
//! Per-worker state ([`Worker`]) lives on its thread; the config [`Snapshot`] is shared
//! read-only through an `Arc`.

mod connection;
mod drain;
pub mod error;
mod forward;
pub mod io;
mod relay;
mod serialize;

use std::{
    cell::{Cell, RefCell},
    net::IpAddr,
    sync::Arc,
};

pub use self::{connection::serve_connection, drain::Drain};
use crate::{
    config::Config,
    edge::{EdgePolicy, SynLimiter},
    router::Router,
    tls::SniResolver,
    upstream::{Upstreams, WorkerUpstreams},
};

/// Everything derived from one config, shared read-only by all workers.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    pub upstreams: Upstreams,
    pub edge: EdgePolicy,
    /// Certificate resolvers of the TLS listeners, by listener index.
    pub tls_resolvers: Vec<Option<Arc<SniResolver>>>,
    /// Header lines each listener adds to every response (HSTS), by listener index.
    pub listener_headers: Vec<Vec<u8>>,
}

impl Snapshot {
    /// Compiles the routing table and upstream tables for `config`.
    pub fn new(config: Config) -> Self {
        let router = Router::new(&config);
        let upstreams = Upstreams::new(&config);
        let edge = EdgePolicy::new(&config.edge);
        let tls_resolvers = config
            .listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(|t| Arc::new(SniResolver::new(&t.certificates, !t.sni_required)))
            })
            .collect();
        let listener_headers = config
            .listeners
            .iter()
            .map(|l| match l.tls.as_ref().and_then(|t| t.hsts.as_deref()) {
                Some(hsts) => format!("strict-transport-security: {hsts}\r\n").into_bytes(),
                None => Vec::new(),
            })
            .collect();
        Self {
            config,
            router,
            upstreams,
            edge,
            tls_resolvers,
            listener_headers,
        }
    }

    /// Whether `peer` is a trusted proxy whose forwarding headers are believed.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        let peer = canonical_ip(peer);
        self.config
            .gateway
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer))
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One worker's state: its upstream pools and balancers, its drain signal, its
/// request-id generator. Owned by the worker thread; never shared.
#[derive(Debug)]
pub struct Worker {
    pub id: usize,
    pub snapshot: Arc<Snapshot>,
    pub upstreams: RefCell<WorkerUpstreams>,
    pub drain: Drain,
    rng: RefCell<fastrand::Rng>,
    /// Set when XDP is not attached: the edge policy is then enforced at accept.
    edge_in_userspace: bool,
    syn_limiter: RefCell<Option<SynLimiter>>,
    /// Connections refused at accept by the edge policy, by verdict slot.
    pub edge_refusals: Cell<[u64; gateway_common::Verdict::COUNT as usize]>,
}

impl Worker {
    /// State for worker `id` on `snapshot`.
    pub fn new(id: usize, snapshot: Arc<Snapshot>, edge_in_userspace: bool) -> Self {
        let upstreams = RefCell::new(WorkerUpstreams::new(&snapshot.upstreams, id));
        let syn_limiter = snapshot
            .config
            .edge
            .syn_guard
            .filter(|_| edge_in_userspace)
            .map(SynLimiter::new);
        Self {
            id,
            snapshot,
            upstreams,
            drain: Drain::default(),
            rng: RefCell::new(fastrand::Rng::new()),
            edge_in_userspace,
            syn_limiter: RefCell::new(syn_limiter),
            edge_refusals: Cell::new([0; gateway_common::Verdict::COUNT as usize]),
        }
    }

    /// The edge policy at accept, when XDP does not enforce it: whether a connection
    /// from `ip` may be served.
    pub fn admit_source(&self, ip: IpAddr) -> bool {
        if !self.edge_in_userspace {
            return true;
        }
        let mut verdict = self.snapshot.edge.judge_source(ip);
        if !verdict.drops() {
            let limited = self
                .syn_limiter
                .borrow_mut()
                .as_mut()
                .is_some_and(|limiter| !limiter.admit(ip, std::time::Instant::now()));
            if limited {
                verdict = gateway_common::Verdict::SynBudgetExceeded;
            }
        }
        if !verdict.drops() {
            return true;
        }
        let mut refusals = self.edge_refusals.get();
        refusals[verdict as usize] += 1;
        self.edge_refusals.set(refusals);
        tracing::debug!(%ip, reason = verdict.name(), "connection refused by the edge policy");
        false
    }

    /// Appends a fresh 128-bit request id as 32 lower-case hex digits.
    pub fn new_request_id(&self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut rng = self.rng.borrow_mut();
        for word in [rng.u64(..), rng.u64(..)] {
            for shift in (0..64).step_by(4).rev() {
                out.push(HEX[((word >> shift) & 0xF) as usize]);
            }
        }
    }
}
