//! Remote JWKS: fetched off the request path by a background thread, swapped in
//! atomically (workers read the key set lock-free), refreshed on a schedule and soon
//! after a token names an unknown `kid` (at most once per `min_refresh`), and kept as it
//! is when a fetch fails.

use std::{
    sync::{
        Arc, OnceLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::Thread,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use super::{
    client::{CallError, Endpoint},
    jwt::{ClaimRules, KeyError, VerificationKey},
};

/// Largest JWKS document accepted.
const MAX_JWKS: usize = 1 << 20;

/// Why a fetch failed (the previous keys stay).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("{url}: {source}")]
    Call { url: String, source: CallError },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("{url}: no usable key")]
    Empty { url: String },
    #[error("cannot start a fetch runtime: {0}")]
    Runtime(std::io::Error),
}

/// One provider's remote key set.
pub struct RemoteJwks {
    endpoint: Endpoint,
    rules: ClaimRules,
    timeout: Duration,
    refresh: Duration,
    min_refresh: Duration,
    keys: ArcSwap<Vec<VerificationKey>>,
    epoch: Instant,
    /// When the last fetch started (ns since `epoch`), to rate-limit refresh requests.
    last_fetch_ns: AtomicU64,
    wanted: AtomicBool,
    refresher: OnceLock<Thread>,
    /// Completed fetches, successful or not (for tests and metrics).
    pub fetches: AtomicU64,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.endpoint.url)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// A key set at `endpoint`, empty until fetched.
    pub fn new(
        endpoint: Endpoint,
        rules: ClaimRules,
        refresh: Duration,
        min_refresh: Duration,
    ) -> Self {
        Self {
            endpoint,
            rules,
            timeout: Duration::from_secs(5),
            refresh,
            min_refresh,
            keys: ArcSwap::from_pointee(Vec::new()),
            epoch: Instant::now(),
            last_fetch_ns: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
            refresher: OnceLock::new(),
            fetches: AtomicU64::new(0),
        }
    }

    /// The URL, for messages.
    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    /// The current keys (a lock-free read).
    pub fn keys(&self) -> arc_swap::Guard<Arc<Vec<VerificationKey>>> {
        self.keys.load()
    }

    /// Replaces the keys (a reload carrying over a set it could not fetch itself).
    pub fn set_keys(&self, keys: Arc<Vec<VerificationKey>>) {
        self.keys.store(keys);
    }

    /// Fetches the document now, on this thread; on success the new keys take over.
    pub fn fetch_now(&self) -> Result<usize, JwksError> {
        self.last_fetch_ns
            .store(self.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let result = fetch_runtime()
            .map_err(JwksError::Runtime)
            .and_then(|mut rt| rt.block_on(self.fetch()));
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let keys = result?;
        let count = keys.len();
        self.keys.store(Arc::new(keys));
        Ok(count)
    }

    async fn fetch(&self) -> Result<Vec<VerificationKey>, JwksError> {
        let url = || self.endpoint.url.clone();
        let (status, body) = self
            .endpoint
            .call("GET", "", b"", self.timeout, MAX_JWKS)
            .await
            .map_err(|source| JwksError::Call { url: url(), source })?;
        if status != 200 {
            return Err(JwksError::Status { url: url(), status });
        }
        let keys = VerificationKey::from_jwks(&body, &self.endpoint.url, &self.rules)?;
        if keys.is_empty() {
            return Err(JwksError::Empty { url: url() });
        }
        Ok(keys)
    }

    /// A token named a `kid` not in the set: ask for a refresh, at most once per
    /// `min_refresh`. Never blocks the caller.
    pub fn want_refresh(&self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let last = self.last_fetch_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.min_refresh.as_nanos() as u64
            || self.wanted.swap(true, Ordering::AcqRel)
        {
            return;
        }
        if let Some(thread) = self.refresher.get() {
            thread.unpark();
        }
    }

    /// Starts the background refresher (once); it stops when the set is dropped.
    pub fn start(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let url = self.endpoint.url.clone();
        self.refresher.get_or_init(|| {
            let spawned = std::thread::Builder::new()
                .name("jwks-refresh".into())
                .spawn(move || refresh_loop(weak));
            match spawned {
                Ok(handle) => handle.thread().clone(),
                Err(error) => {
                    tracing::error!(%url, %error, "cannot start the JWKS refresher");
                    std::thread::current()
                }
            }
        });
    }
}

fn refresh_loop(weak: Weak<RemoteJwks>) {
    let mut next = Instant::now() + weak.upgrade().map_or(Duration::ZERO, |jwks| jwks.refresh);
    loop {
        std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
        let Some(jwks) = weak.upgrade() else {
            return;
        };
        let wanted = jwks.wanted.swap(false, Ordering::AcqRel);
        if !wanted && Instant::now() < next {
            continue;
        }
        match jwks.fetch_now() {
            Ok(count) => tracing::info!(url = jwks.url(), keys = count, "JWKS refreshed"),
            Err(error) => tracing::warn!(%error, "JWKS refresh failed; keeping the current keys"),
        }
        next = Instant::now() + jwks.refresh;
    }
}

/// A single-threaded runtime for blocking fetches outside the workers.
fn fetch_runtime()
-> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
}
