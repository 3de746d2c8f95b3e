//! Upstreams: the shared, immutable description of every upstream of a config snapshot
//! ([`Upstreams`]: targets, Maglev tables) and each worker's own mutable side
//! ([`WorkerUpstreams`]: balancer state, keep-alive pools, connection counters).

pub mod balance;
pub mod circuit;
pub mod fetch;
pub mod health;
pub mod maglev;
pub mod pool;
pub mod retry;
pub mod stream;

use std::{net::SocketAddr, time::Duration};

use monoio::net::TcpStream;

pub use self::stream::UpstreamStream;
use self::{
    balance::BalancerState, circuit::ConnectionLimits, circuit::ConnectionSlot, maglev::Maglev,
    pool::Pool, retry::RetryBudget,
};
use crate::config::{Balance, Config, UpstreamConfig};

/// Why talking to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// One upstream, shared by all workers.
#[derive(Debug)]
pub struct UpstreamEntry {
    pub config: UpstreamConfig,
    /// Built for `consistent_hash` upstreams only.
    pub maglev: Option<Maglev>,
    /// Index of this upstream's first target in the flattened target list.
    pub first_target: usize,
    /// Open connections and waiting requests, when `max_connections` is set.
    pub connections: Option<std::sync::Arc<ConnectionLimits>>,
}

/// An upstream connection, holding its place under the upstream's connection limit
/// for as long as it is open (pooled or busy).
#[derive(Debug)]
pub struct UpstreamConn {
    pub stream: UpstreamStream,
    pub slot: Option<ConnectionSlot>,
}

/// Every upstream of a snapshot.
#[derive(Debug)]
pub struct Upstreams {
    pub entries: Vec<UpstreamEntry>,
    /// Total targets across upstreams.
    pub target_count: usize,
    /// Every target's health, shared by all workers.
    pub health: std::sync::Arc<health::Health>,
}

impl Upstreams {
    /// (upstream name, address) of every target, in global order.
    pub fn target_ids(&self) -> Vec<(String, SocketAddr)> {
        self.entries
            .iter()
            .flat_map(|e| {
                e.config
                    .targets
                    .iter()
                    .map(|t| (e.config.name.clone(), t.addr))
            })
            .collect()
    }

    /// Marks every target at `addr` up or down on behalf of another checker (the L4
    /// balancer's probes of the same address); returns how many targets that was.
    pub fn mark_address(&self, addr: SocketAddr, up: bool) -> usize {
        let matching: Vec<usize> = self
            .target_ids()
            .iter()
            .enumerate()
            .filter(|(_, (_, a))| *a == addr)
            .map(|(i, _)| i)
            .collect();
        for &i in &matching {
            self.health.set_up_externally(i, up);
        }
        matching.len()
    }

    /// Builds the shared tables for `config`.
    pub fn new(config: &Config) -> Self {
        let mut first_target = 0;
        let entries: Vec<UpstreamEntry> = config
            .upstreams
            .iter()
            .map(|u| {
                let maglev = matches!(u.balance, Balance::ConsistentHash(_)).then(|| {
                    let names: Vec<String> = u.targets.iter().map(|t| t.addr.to_string()).collect();
                    let weights: Vec<u32> = u.targets.iter().map(|t| t.weight).collect();
                    Maglev::build(&names, &weights, &vec![true; names.len()])
                });
                let entry = UpstreamEntry {
                    config: u.clone(),
                    maglev,
                    first_target,
                    connections: u
                        .max_connections
                        .map(|max| std::sync::Arc::new(ConnectionLimits::new(max, u.max_pending))),
                };
                first_target += u.targets.len();
                entry
            })
            .collect();
        let health = std::sync::Arc::new(health::Health::new(first_target));
        health::start_checker(
            &health,
            entries
                .iter()
                .map(|e: &UpstreamEntry| (e.first_target, e.config.clone()))
                .collect(),
        );
        Self {
            entries,
            target_count: first_target,
            health,
        }
    }
}

/// A worker's balancing state and connection pools for every upstream.
#[derive(Debug)]
pub struct WorkerUpstreams {
    pub balancers: Vec<BalancerState>,
    pub pool: Pool<UpstreamConn>,
    /// Retries this worker may still send, by upstream.
    pub retry_budgets: Vec<RetryBudget>,
}

impl WorkerUpstreams {
    /// Fresh state for a worker; `worker` seeds the random choices.
    pub fn new(upstreams: &Upstreams, worker: usize) -> Self {
        let balancers = upstreams
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                BalancerState::new(e.config.targets.len(), (worker as u64) << 32 | i as u64)
            })
            .collect();
        Self {
            balancers,
            pool: Pool::new(upstreams.target_count),
            retry_budgets: upstreams
                .entries
                .iter()
                .map(|e| RetryBudget::new(e.config.retry_budget))
                .collect(),
        }
    }
}

/// Opens a new connection to `addr` within `timeout` (TCP connect and, with `tls`, the
/// handshake), with Nagle off.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&crate::tls::UpstreamTls>,
) -> Result<UpstreamStream, UpstreamError> {
    let attempt = async {
        let stream = TcpStream::connect_addr(addr)
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        // Best effort: a failure here only costs latency.
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(UpstreamStream::Plain(stream));
        };
        let name = tls.server_name.clone().unwrap_or_else(|| addr.ip().into());
        let connector = monoio_rustls::TlsConnector::from(tls.config.clone());
        match connector.connect(name, stream).await {
            Ok(tls_stream) => Ok(UpstreamStream::Tls(Box::new(tls_stream))),
            Err(error) => Err(UpstreamError::Tls {
                addr,
                source: error.into(),
            }),
        }
    };
    match monoio::time::timeout(timeout, attempt).await {
        Err(_) => Err(UpstreamError::ConnectTimeout { addr }),
        Ok(result) => result,
    }
}
