//! The request path: one fixed pipeline of phases per request, run on the worker that
//! accepted the connection.
//!
//! ```text
//! accept → parse head → route → policy (IP, CORS, auth, rate limits) → split
//!        → concurrency limits → header transforms → mediation (read body, validate,
//!          edit, translate) or cache lookup → pick upstream
//!        → connection (pool or circuit breaker) → forward request (head, body; mirror)
//!        → read response head (101: tunnel) → response filters (transforms, compression,
//!          mediation: translate back, edit JSON)
//!        → relay response (cache store) → pool or close → log → next request
//!                  ↑ a failed try the route retries: back off, pick another target
//! ```
//!
//! Each phase either continues or ends the request with a [`error::ProxyError`], which
//! [`error::ProxyError::answer`] turns into the response (the only such mapping).
//! Per-worker state ([`Worker`]) lives on its thread; the config [`Snapshot`] is shared
//! read-only through an `Arc`.

mod aggregate;
mod attempt;
mod blocks;
mod buffered;
mod cached;
mod compress;
mod connection;
mod drain;
pub mod error;
mod forward;
pub mod idle;
pub mod io;
mod mediated;
mod mirror;
mod policy;
mod relay;
mod serialize;
mod slots;
mod split;
mod transform;
mod tunnel;

use std::{
    cell::{Cell, RefCell},
    net::IpAddr,
    sync::Arc,
};

pub use self::{connection::serve_connection, drain::Drain};
use crate::{
    auth::{Authenticator, TokenCache},
    config::Config,
    edge::{EdgePolicy, SynLimiter},
    observe::{
        WorkerMetrics,
        access_log::{Entry, LogMessage, WorkerLog},
    },
    ratelimit::{InFlight, RateTable},
    router::Router,
    tls::{SniResolver, TlsError},
    upstream::{Upstreams, WorkerUpstreams},
};

/// Everything derived from one config, shared read-only by all workers.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    pub upstreams: Upstreams,
    /// The effective edge policy: the config's lists plus live ACL entries, swapped by
    /// the main thread when those change (workers read it lock-free at accept).
    pub edge: arc_swap::ArcSwap<EdgePolicy>,
    /// Certificate resolvers of the TLS listeners, by listener index.
    pub tls_resolvers: Vec<Option<Arc<SniResolver>>>,
    /// Header lines each listener adds to every response (HSTS), by listener index.
    pub listener_headers: Vec<Vec<u8>>,
    /// Credential verifiers and consumer look-ups.
    pub auth: Authenticator,
    /// Concurrency limits, by route index (global across workers).
    pub in_flight: Vec<Option<InFlight>>,
    /// Concurrency limits, by upstream index (global across workers).
    pub upstream_in_flight: Vec<Option<InFlight>>,
    /// Headers the gateway sets upstream to carry the identity (dropped from clients).
    pub identity_header_names: Vec<String>,
    /// Whether any credential is configured (so identity headers mean something).
    pub identity_headers_in_use: bool,
    /// Usage counters and plan quotas of the consumers (global across workers).
    pub meter: crate::metering::Meter,
}

impl Snapshot {
    /// Compiles the routing table and upstream tables for `config`; its consumers count
    /// their usage in `usage` (the process's book, kept across reloads).
    pub fn new(config: Config, usage: &Arc<crate::metering::UsageBook>) -> Self {
        let router = Router::new(&config);
        let upstreams = Upstreams::new(&config);
        let edge = arc_swap::ArcSwap::from_pointee(EdgePolicy::new(&config.edge));
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
        for provider in &config.auth.jwt {
            if let Some(remote) = &provider.verifier.remote {
                remote.start();
            }
        }
        let auth = Authenticator::new(&config);
        let in_flight = router
            .routes()
            .iter()
            .map(|r| r.policy.max_in_flight.map(InFlight::new))
            .collect();
        let upstream_in_flight = config
            .upstreams
            .iter()
            .map(|u| u.max_in_flight.map(InFlight::new))
            .collect();
        let mut identity_header_names = vec![
            config.auth.consumer_header.clone(),
            config.auth.subject_header.clone(),
        ];
        for provider in &config.auth.jwt {
            identity_header_names.extend(provider.claim_headers.iter().map(|(_, h)| h.clone()));
        }
        let identity_headers_in_use = !config.auth.jwt.is_empty() || !config.consumers.is_empty();
        let meter = usage.meter(&config);
        Self {
            config,
            router,
            upstreams,
            edge,
            tls_resolvers,
            listener_headers,
            auth,
            in_flight,
            upstream_in_flight,
            identity_header_names,
            identity_headers_in_use,
            meter,
        }
    }

    /// After a reload: a remote JWKS the new config could not fetch keeps the keys the
    /// previous config had for the same URL.
    pub fn adopt_remote_keys(&self, previous: &Snapshot) {
        let remotes = |s: &Snapshot| {
            s.config
                .auth
                .jwt
                .iter()
                .filter_map(|p| p.verifier.remote.clone())
                .collect::<Vec<_>>()
        };
        let old = remotes(previous);
        for remote in remotes(self) {
            if !remote.keys().is_empty() {
                continue;
            }
            if let Some(before) = old.iter().find(|o| o.url() == remote.url()) {
                remote.set_keys(before.keys().clone());
            }
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

/// A worker's acceptors for every TLS listener of `snapshot` (its own session cache).
fn listener_tls(snapshot: &Snapshot) -> Result<Vec<Option<ListenerTls>>, TlsError> {
    snapshot
        .tls_resolvers
        .iter()
        .zip(&snapshot.config.listeners)
        .map(|(resolver, listener)| match (resolver, &listener.tls) {
            (Some(resolver), Some(tls)) => {
                let config = crate::tls::server_config(resolver.clone(), tls.client_auth.as_ref())?;
                Ok(Some((config, tls.handshake_timeout)))
            }
            _ => Ok(None),
        })
        .collect()
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("generation", &self.generation.get())
            .finish_non_exhaustive()
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Size of an upstream read buffer (a response head and the first body bytes).
const UPSTREAM_BUFFER: usize = 16 * 1024;
/// Upstream read buffers a worker keeps for reuse.
const POOLED_BUFFERS: usize = 256;
/// Request states a worker keeps for reuse: enough for the requests usually in flight
/// on one core; a burst beyond it allocates, and the surplus is freed afterwards.
const POOLED_REQUEST_STATES: usize = 256;

/// An empty response cache with `settings`' limits.
fn new_store(settings: crate::config::CacheSettings) -> crate::cache::Store {
    crate::cache::Store::new(
        settings.max_size,
        usize::try_from(settings.max_entry_size).unwrap_or(usize::MAX),
    )
}

/// A TLS listener's server config on one worker (its own session cache) and its
/// handshake timeout.
pub type ListenerTls = (std::sync::Arc<rustls::ServerConfig>, std::time::Duration);

/// One worker's state: the config snapshot it serves, its upstream pools and balancers,
/// its TLS acceptors, its drain signal, its request-id generator. Owned by the worker
/// thread; never shared.
///
/// A reload [`Worker::install`]s a new snapshot: requests already running finish on the
/// snapshot they started with; per-snapshot state (balancers, pools, acceptors) is
/// rebuilt and tagged with a new generation, and a request from an older generation no
/// longer touches it.
pub struct Worker {
    pub id: usize,
    snapshot: RefCell<Arc<Snapshot>>,
    generation: Cell<u64>,
    upstreams: RefCell<WorkerUpstreams>,
    tls: RefCell<Vec<Option<ListenerTls>>>,
    pub drain: Drain,
    /// Idle keep-alive connections' deadlines (one sweep instead of a timer each).
    pub idle: idle::IdleClock,
    rng: RefCell<fastrand::Rng>,
    /// Set when XDP is not attached: the edge policy is then enforced at accept.
    edge_in_userspace: bool,
    syn_limiter: RefCell<Option<SynLimiter>>,
    /// Connections refused at accept by the edge policy, by verdict slot.
    pub edge_refusals: Cell<[u64; gateway_common::Verdict::COUNT as usize]>,
    /// The process-wide rate-limit cells (shared lock-free by every worker).
    pub rate_table: Arc<RateTable>,
    /// Tokens this worker verified (cleared on reload).
    token_cache: RefCell<TokenCache>,
    /// This worker's metric handles for the current snapshot.
    metrics: RefCell<WorkerMetrics>,
    /// This worker's access-log buffer, when access logs are on.
    access_log: RefCell<Option<WorkerLog>>,
    /// Where bans are reported.
    control: Option<std::sync::mpsc::Sender<crate::admin::Control>>,
    /// When this process took its listeners over (binary upgrade), if it did.
    pub takeover_started: Option<std::time::Instant>,
    /// Mirrored requests in flight on this worker.
    mirrors_in_flight: std::rc::Rc<Cell<u32>>,
    /// This worker's response cache, kept across reloads while its limits stay.
    cache: std::rc::Rc<RefCell<crate::cache::Store>>,
    cache_settings: Cell<crate::config::CacheSettings>,
    /// Cache fills in progress (concurrent misses wait for them).
    pub cache_flights: crate::cache::Flights,
    /// Upstream read buffers lent to requests, so idle client connections hold none.
    buffers: RefCell<Vec<Vec<u8>>>,
    /// Heap blocks the futures of requests in progress run in.
    future_blocks: blocks::FutureBlocks,
    /// Request states lent to connections with a request in progress (boxed: a
    /// connection takes and gives back the pointer, not the state's bytes).
    #[allow(clippy::vec_box)]
    request_states: RefCell<Vec<Box<connection::RequestState>>>,
}

/// Process-wide things every worker gets at start, besides the config snapshot.
#[derive(Clone)]
pub struct WorkerShared {
    /// XDP is not attached: the edge policy is enforced at accept.
    pub edge_in_userspace: bool,
    /// The rate-limit cells shared by every worker.
    pub rate_table: Arc<RateTable>,
    /// The access-log writer, when access logs are on.
    pub access_log: Option<std::sync::mpsc::SyncSender<LogMessage>>,
    /// The main thread's control channel (L7-to-XDP bans).
    pub control: Option<std::sync::mpsc::Sender<crate::admin::Control>>,
    /// When this process took the listeners over from a running gateway.
    pub takeover_started: Option<std::time::Instant>,
}

impl Worker {
    /// State for worker `id` on `snapshot`.
    pub fn new(id: usize, snapshot: Arc<Snapshot>, shared: WorkerShared) -> Result<Self, TlsError> {
        let WorkerShared {
            edge_in_userspace,
            rate_table,
            access_log,
            control,
            takeover_started,
        } = shared;
        let upstreams = RefCell::new(WorkerUpstreams::new(&snapshot.upstreams, id));
        let tls = RefCell::new(listener_tls(&snapshot)?);
        let syn_limiter = snapshot
            .config
            .edge
            .syn_guard
            .filter(|_| edge_in_userspace)
            .map(SynLimiter::new);
        let token_cache = RefCell::new(TokenCache::new(snapshot.config.auth.token_cache_entries));
        let metrics = RefCell::new(WorkerMetrics::new(id, &snapshot.config));
        let cache_settings = snapshot.config.cache;
        Ok(Self {
            id,
            snapshot: RefCell::new(snapshot),
            generation: Cell::new(0),
            upstreams,
            tls,
            drain: Drain::default(),
            idle: idle::IdleClock::default(),
            rng: RefCell::new(fastrand::Rng::new()),
            edge_in_userspace,
            syn_limiter: RefCell::new(syn_limiter),
            edge_refusals: Cell::new([0; gateway_common::Verdict::COUNT as usize]),
            rate_table,
            token_cache,
            metrics,
            access_log: RefCell::new(access_log.map(WorkerLog::new)),
            control,
            takeover_started,
            mirrors_in_flight: std::rc::Rc::default(),
            cache: std::rc::Rc::new(RefCell::new(new_store(cache_settings))),
            cache_settings: Cell::new(cache_settings),
            cache_flights: crate::cache::Flights::default(),
            buffers: RefCell::new(Vec::new()),
            request_states: RefCell::new(Vec::new()),
            future_blocks: blocks::FutureBlocks::default(),
        })
    }

    /// The snapshot new requests run on.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Runs `f` on the current snapshot without taking a reference to it (no shared
    /// counter touched): for work after a request that needs no snapshot of its own.
    pub fn with_snapshot<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&self.snapshot.borrow())
    }

    /// The generation of the per-snapshot state; changes on every install.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Runs `f` on the balancers and pools if they still belong to `generation`.
    pub fn upstream_state<R>(
        &self,
        generation: u64,
        f: impl FnOnce(&mut WorkerUpstreams) -> R,
    ) -> Option<R> {
        (self.generation.get() == generation).then(|| f(&mut self.upstreams.borrow_mut()))
    }

    /// The TLS acceptor of listener `index` (None for plain listeners).
    pub fn listener_tls(&self, index: usize) -> Option<ListenerTls> {
        self.tls.borrow().get(index).cloned().flatten()
    }

    /// Switches new requests and handshakes to `snapshot` (a reload). Nothing changes
    /// when its TLS setup fails.
    pub fn install(&self, snapshot: Arc<Snapshot>) -> Result<(), TlsError> {
        let tls = listener_tls(&snapshot)?;
        *self.upstreams.borrow_mut() = WorkerUpstreams::new(&snapshot.upstreams, self.id);
        *self.tls.borrow_mut() = tls;
        *self.syn_limiter.borrow_mut() = snapshot
            .config
            .edge
            .syn_guard
            .filter(|_| self.edge_in_userspace)
            .map(SynLimiter::new);
        *self.token_cache.borrow_mut() = TokenCache::new(snapshot.config.auth.token_cache_entries);
        *self.metrics.borrow_mut() = WorkerMetrics::new(self.id, &snapshot.config);
        if snapshot.config.cache != self.cache_settings.get() {
            self.cache_settings.set(snapshot.config.cache);
            *self.cache.borrow_mut() = new_store(snapshot.config.cache);
        }
        *self.snapshot.borrow_mut() = snapshot;
        self.generation.set(self.generation.get() + 1);
        Ok(())
    }

    /// The edge policy at accept, when XDP does not enforce it: whether a connection
    /// from `ip` may be served.
    pub fn admit_source(&self, ip: IpAddr) -> bool {
        if !self.edge_in_userspace {
            return true;
        }
        let edge = self.snapshot.borrow().edge.load_full();
        if !edge.is_active() {
            return true;
        }
        let mut verdict = edge.judge_source(ip);
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

    /// Runs `f` on this worker's metric handles (never held across an await).
    pub fn metrics<R>(&self, f: impl FnOnce(&mut WorkerMetrics) -> R) -> R {
        f(&mut self.metrics.borrow_mut())
    }

    /// L7-to-XDP feedback: counts a rejected request against `ip` (global, in the rate
    /// table) and reports a ban when the source crosses the threshold. Returns whether
    /// the source is now banned (its connection should close). Only the peer itself can
    /// be banned: a client behind a trusted proxy is not dropped at the edge.
    pub fn count_rejection(&self, ip: IpAddr, peer: IpAddr, status: u16) -> bool {
        if ip != canonical_ip(peer) {
            return false;
        }
        let rate = self.with_snapshot(|snapshot| {
            let ban = snapshot.config.edge.ban.as_ref()?;
            ban.statuses
                .contains(&status)
                .then_some(crate::ratelimit::Rate {
                    count: ban.threshold,
                    per: ban.window,
                    burst: ban.threshold,
                })
        });
        let Some(rate) = rate else {
            return false;
        };
        let key = match ip {
            IpAddr::V4(v4) => self.rate_table.key_hash("edge:ban", &v4.octets()),
            IpAddr::V6(v6) => self.rate_table.key_hash("edge:ban", &v6.octets()),
        };
        if self
            .rate_table
            .check(key, &rate, self.rate_table.now_ns())
            .allowed()
        {
            return false;
        }
        if let Some(control) = &self.control {
            let _ = control.send(crate::admin::Control::Ban { ip, status });
        }
        true
    }

    /// Whether requests are logged.
    pub fn logs_requests(&self) -> bool {
        self.access_log.borrow().is_some()
    }

    /// Appends the access-log line for `entry` (a no-op when logs are off).
    pub fn log_request(&self, entry: &Entry<'_>, fields: u32) {
        if let Some(log) = self.access_log.borrow_mut().as_mut() {
            log.record(entry, fields);
        }
    }

    /// Hands buffered log lines to the writer (the periodic flush, and at shutdown).
    pub fn flush_log(&self) {
        if let Some(log) = self.access_log.borrow_mut().as_mut() {
            log.flush();
        }
    }

    /// This worker's cache of verified tokens (borrow it only between awaits).
    pub fn token_cache(&self) -> &RefCell<TokenCache> {
        &self.token_cache
    }

    /// Circuit breaking across workers: closes this worker's idle connections to every
    /// limited upstream that has requests waiting for a place (the periodic sweep).
    /// Returns whether any upstream is limited (otherwise the sweep can slow down).
    pub fn release_idle_for_waiters(&self) -> bool {
        let snapshot = self.snapshot.borrow();
        let generation = self.generation.get();
        let mut limited = false;
        for entry in &snapshot.upstreams.entries {
            limited |= entry.connections.is_some();
            if entry
                .connections
                .as_ref()
                .is_some_and(|c| c.has_waiters() && c.idle() > 0)
            {
                let targets = entry.first_target..entry.first_target + entry.config.targets.len();
                self.upstream_state(generation, |state| state.pool.close_idle(targets));
            }
        }
        limited
    }

    /// The working state for a connection's next request: a pooled one, or a new one.
    fn lend_request_state(&self) -> Box<connection::RequestState> {
        self.request_states
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Box::new(connection::RequestState::new()))
    }

    /// Takes a request state back from a connection going idle (kept, trimmed, when
    /// the pool has room).
    fn return_request_state(&self, mut state: Box<connection::RequestState>) {
        let mut pool = self.request_states.borrow_mut();
        if pool.len() < POOLED_REQUEST_STATES && state.is_vacant() {
            state.trim();
            pool.push(state);
        }
    }

    /// A read buffer for an upstream response: a pooled one, or a new one.
    pub fn lend_buffer(&self) -> Vec<u8> {
        self.buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(UPSTREAM_BUFFER))
    }

    /// Takes a lent buffer back (kept when the pool has room and it is not oversized).
    pub fn return_buffer(&self, buffer: Vec<u8>) {
        let mut pool = self.buffers.borrow_mut();
        if pool.len() < POOLED_BUFFERS && buffer.capacity() <= 4 * UPSTREAM_BUFFER {
            pool.push(buffer);
        }
    }

    /// This worker's response cache (borrow it only between awaits).
    pub fn cache(&self) -> &std::rc::Rc<RefCell<crate::cache::Store>> {
        &self.cache
    }

    /// A uniform random number in [0, 1) (backoff jitter).
    pub fn random_unit(&self) -> f64 {
        self.rng.borrow_mut().f64()
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
