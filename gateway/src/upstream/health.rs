//! Target health, shared by every worker: active checks (one checker thread per config
//! snapshot, so once per appliance, not once per worker) and passive outlier ejection
//! (consecutive failures seen by any worker eject a target for a backoff that doubles on
//! repeat). Balancers skip unavailable targets, unless fewer than the upstream's panic
//! threshold are available: then every target is used, as ejecting most of an upstream
//! would only move the overload.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use crate::config::{HealthCheckConfig, OutlierConfig, UpstreamConfig};

/// One target's health.
#[derive(Debug)]
pub struct TargetHealth {
    /// What active checks last concluded (up until they say otherwise).
    up: AtomicBool,
    /// Ejected by outlier detection until then (ms since the epoch; 0: never).
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
}

impl Default for TargetHealth {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
        }
    }
}

/// The health of every target of a snapshot, by global target index.
#[derive(Debug)]
pub struct Health {
    targets: Box<[TargetHealth]>,
    epoch: Instant,
    /// Another checker (the L4 balancer's probes) has spoken about some target: health
    /// then counts even for upstreams without checks of their own.
    external: AtomicBool,
}

impl Health {
    /// Every target up.
    pub fn new(targets: usize) -> Self {
        Self {
            targets: (0..targets).map(|_| TargetHealth::default()).collect(),
            epoch: Instant::now(),
            external: AtomicBool::new(false),
        }
    }

    /// Milliseconds since the epoch: the clock of ejections.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether target `global` may get requests at `now_ms`.
    pub fn available(&self, global: usize, now_ms: u64) -> bool {
        let t = &self.targets[global];
        t.up.load(Relaxed) && t.ejected_until_ms.load(Relaxed) <= now_ms
    }

    /// `healthy`, `down` (active checks) or `ejected` (outlier detection).
    pub fn state(&self, global: usize) -> &'static str {
        let t = &self.targets[global];
        if !t.up.load(Relaxed) {
            "down"
        } else if t.ejected_until_ms.load(Relaxed) > self.now_ms() {
            "ejected"
        } else {
            "healthy"
        }
    }

    /// A request to `global` went well: its failure streak ends. Writes only when there
    /// was a streak, so healthy traffic does not bounce the cache line between cores.
    pub fn record_success(&self, global: usize, outlier: &OutlierConfig, now_ms: u64) {
        let t = &self.targets[global];
        if t.consecutive_failures.load(Relaxed) != 0 {
            t.consecutive_failures.store(0, Relaxed);
        }
        // Long back in service: the next ejection starts from the base time again.
        if t.ejections.load(Relaxed) != 0
            && now_ms > t.ejected_until_ms.load(Relaxed) + outlier.max_ejection.as_millis() as u64
        {
            t.ejections.store(0, Relaxed);
        }
    }

    /// A request to `global` failed (connect failure, timeout, 502/503/504): after
    /// `consecutive_failures` in a row the target is ejected. Returns the ejection time
    /// when this failure ejected it.
    pub fn record_failure(
        &self,
        global: usize,
        outlier: &OutlierConfig,
        now_ms: u64,
    ) -> Option<Duration> {
        let t = &self.targets[global];
        let streak = t.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if streak < outlier.consecutive_failures || t.ejected_until_ms.load(Relaxed) > now_ms {
            return None;
        }
        t.consecutive_failures.store(0, Relaxed);
        let repeat = t.ejections.fetch_add(1, Relaxed).min(16);
        let backoff = outlier
            .base_ejection
            .saturating_mul(1 << repeat)
            .min(outlier.max_ejection);
        t.ejected_until_ms
            .store(now_ms + backoff.as_millis() as u64, Relaxed);
        Some(backoff)
    }

    /// After a reload: targets of the same upstream and address keep their state.
    pub fn adopt(
        &self,
        mine: &[(String, std::net::SocketAddr)],
        old: &Health,
        theirs: &[(String, std::net::SocketAddr)],
    ) {
        let shift = old.now_ms() as i64 - self.now_ms() as i64;
        for (i, id) in mine.iter().enumerate() {
            let Some(j) = theirs.iter().position(|o| o == id) else {
                continue;
            };
            let (new, was) = (&self.targets[i], &old.targets[j]);
            new.up.store(was.up.load(Relaxed), Relaxed);
            let until = was.ejected_until_ms.load(Relaxed);
            if until != 0 {
                new.ejected_until_ms
                    .store((until as i64 - shift).max(1) as u64, Relaxed);
            }
            new.ejections.store(was.ejections.load(Relaxed), Relaxed);
        }
    }

    /// What another checker concluded of target `global` (see [`Health::set_up`]).
    pub(crate) fn set_up_externally(&self, global: usize, up: bool) -> bool {
        self.external.store(true, Relaxed);
        self.set_up(global, up)
    }

    /// Sets what active checks concluded; true when that changed it.
    pub(crate) fn set_up(&self, global: usize, up: bool) -> bool {
        self.targets[global].up.swap(up, Relaxed) != up
    }
}

/// Whether a request to a target of `upstream` may go to `global` now, with the
/// upstream's panic threshold applied: `None` when health is not tracked at all.
pub fn availability<'a>(
    health: &'a Health,
    upstream: &UpstreamConfig,
    first: usize,
) -> Option<impl Fn(usize) -> bool + 'a> {
    if upstream.health_check.is_none()
        && upstream.outlier.is_none()
        && !health.external.load(Relaxed)
    {
        return None;
    }
    let now = health.now_ms();
    let n = upstream.targets.len();
    let available = (0..n).filter(|&i| health.available(first + i, now)).count();
    let panic = (available as f64) < upstream.panic_threshold * n as f64;
    Some(move |i: usize| panic || health.available(first + i, now))
}

/// Starts the active checker for every upstream of `upstreams` that has a health check:
/// one thread, ending when `health` is dropped (the snapshot was replaced).
pub fn start_checker(health: &Arc<Health>, upstreams: Vec<(usize, UpstreamConfig)>) {
    let checked: Vec<_> = upstreams
        .into_iter()
        .filter(|(_, u)| u.health_check.is_some())
        .collect();
    if checked.is_empty() {
        return;
    }
    let weak = Arc::downgrade(health);
    let spawned = std::thread::Builder::new()
        .name("health-check".into())
        .spawn(move || {
            let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let Ok(mut runtime) = runtime else {
                tracing::error!("health checks: cannot start their runtime");
                return;
            };
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for (first, upstream) in checked {
                    for (i, target) in upstream.targets.iter().enumerate() {
                        tasks.push(monoio::spawn(check_target(
                            weak.clone(),
                            first + i,
                            target.addr,
                            upstream.clone(),
                        )));
                    }
                }
                for task in tasks {
                    task.await;
                }
            });
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the health checker");
    }
}

async fn check_target(
    health: Weak<Health>,
    global: usize,
    addr: std::net::SocketAddr,
    upstream: UpstreamConfig,
) {
    let Some(check) = upstream.health_check.clone() else {
        return;
    };
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        monoio::time::sleep(check.interval).await;
        let ok = probe(addr, &check, upstream.tls.as_ref()).await;
        let Some(health) = health.upgrade() else {
            return;
        };
        if ok {
            successes += 1;
            failures = 0;
            if successes >= check.healthy && health.set_up(global, true) {
                tracing::info!(upstream = %upstream.name, %addr, "target healthy again");
                crate::webhooks::publish(crate::webhooks::Event::UpstreamHealth {
                    upstream: upstream.name.clone(),
                    target: addr.to_string(),
                    healthy: true,
                });
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= check.unhealthy && health.set_up(global, false) {
                tracing::warn!(upstream = %upstream.name, %addr, "target failed its health checks; out of rotation");
                crate::webhooks::publish(crate::webhooks::Event::UpstreamHealth {
                    upstream: upstream.name.clone(),
                    target: addr.to_string(),
                    healthy: false,
                });
            }
        }
    }
}

/// One probe: a TCP connect, or an HTTP GET whose status must be expected (over TLS
/// when `tls` is given). Shared by upstream targets and L4 service targets.
pub(crate) async fn probe(
    addr: std::net::SocketAddr,
    check: &HealthCheckConfig,
    tls: Option<&crate::tls::UpstreamTls>,
) -> bool {
    let attempt = async {
        let mut stream = crate::upstream::connect(addr, check.timeout, tls)
            .await
            .ok()?;
        let Some(path) = &check.path else {
            return Some(true);
        };
        let host = check.host.clone().unwrap_or_else(|| addr.to_string());
        let mut out = format!(
            "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: gateway-health-check\r\nconnection: close\r\n\r\n"
        )
        .into_bytes();
        crate::proxy::io::write_all_within(&mut stream, &mut out, check.timeout)
            .await
            .ok()?;
        let mut buf = crate::proxy::io::ReadBuf::with_capacity(1024);
        while memchr::memchr(b'\n', buf.data()).is_none() {
            if buf.len() > 1024 || buf.fill(&mut stream, 1024).await.ok()? == 0 {
                return None;
            }
        }
        let line = buf.data();
        let status: u16 = std::str::from_utf8(line.get(9..12)?).ok()?.parse().ok()?;
        Some(if check.expect.is_empty() {
            (200..400).contains(&status)
        } else {
            check.expect.contains(&status)
        })
    };
    matches!(
        monoio::time::timeout(check.timeout, attempt).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_with_a_growing_backoff() {
        let health = Health::new(2);
        let outlier = OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(4),
        };
        assert_eq!(health.record_failure(0, &outlier, 100), None);
        health.record_success(0, &outlier, 100);
        assert_eq!(
            health.record_failure(0, &outlier, 100),
            None,
            "the streak restarted"
        );
        assert_eq!(health.record_failure(0, &outlier, 100), None);
        assert_eq!(
            health.record_failure(0, &outlier, 100),
            Some(Duration::from_secs(1))
        );
        assert!(!health.available(0, 500));
        assert!(health.available(0, 1_100));
        assert!(health.available(1, 500), "the other target is untouched");
        for _ in 0..2 {
            health.record_failure(0, &outlier, 1_200);
        }
        assert_eq!(
            health.record_failure(0, &outlier, 1_200),
            Some(Duration::from_secs(2)),
            "doubled on repeat"
        );
        assert_eq!(health.state(0), "ejected");
    }
}
