//! Phase "pick upstream" and the bookkeeping of tries: which target a try goes to, the
//! connection it uses (pooled, or new within the upstream's circuit breaker), whether a
//! failed try may be retried (the route's policy and the upstream's budget), and the
//! backoff before the next one.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::{Snapshot, Worker, connection::Connection, error::ProxyError, io::SendNow};
use crate::{
    config::{RetryPolicy, UpstreamConfig},
    upstream::{
        UpstreamConn, UpstreamEntry,
        circuit::{ConnectionLimits, ConnectionSlot},
        connect,
        retry::backoff,
    },
};

/// How often a request waiting for a connection place looks for one.
const PENDING_POLL: Duration = Duration::from_millis(1);

/// Parks a clean connection in the worker's pool for `global`.
pub(super) fn park(
    worker: &Worker,
    generation: u64,
    global: usize,
    mut conn: UpstreamConn,
    config: &UpstreamConfig,
) {
    if let Some(slot) = conn.slot.as_mut() {
        slot.set_idle(true);
    }
    worker.upstream_state(generation, |state| {
        state.pool.put(global, conn, config.max_idle_per_target)
    });
}

/// How long until `deadline` (the whole of `bound` without one), never above `bound`.
pub(super) fn within(bound: Duration, deadline: Option<Instant>) -> Duration {
    deadline.map_or(bound, |d| {
        bound.min(d.saturating_duration_since(Instant::now()))
    })
}

/// One request's progress through its tries.
pub(super) struct Tries {
    /// Tries that failed and counted against the policy's attempts.
    pub failed: u32,
    /// Targets (by index, below 64) this request already failed on.
    pub avoid: u64,
    /// A pooled connection turned out stale: the next try opens a new one.
    pub fresh_only: bool,
    /// When the route's total timeout runs out.
    pub deadline: Option<Instant>,
}

impl Tries {
    pub(super) fn avoid(&mut self, target: usize) {
        if target < 64 {
            self.avoid |= 1 << target;
        }
    }

    pub(super) fn avoids(&self, target: usize) -> bool {
        target < 64 && self.avoid & (1 << target) != 0
    }
}

impl<S: AsyncReadRent + AsyncWriteRent + SendNow> Connection<S> {
    /// Chooses the try's target: a healthy one (unless the upstream is in panic) that
    /// this request has not failed on yet, or any healthy one when none is left.
    pub(super) fn pick_target(
        &self,
        worker: &Worker,
        generation: u64,
        snapshot: &Snapshot,
        upstream_index: usize,
        key_hash: Option<u64>,
        tries: &Tries,
    ) -> Result<usize, ProxyError> {
        let upstream = &snapshot.upstreams.entries[upstream_index];
        let config = &upstream.config;
        let healthy = crate::upstream::health::availability(
            &snapshot.upstreams.health,
            config,
            upstream.first_target,
        );
        let pick = |avoid_failed: bool| {
            let allowed = |i: usize| {
                !(avoid_failed && tries.avoids(i)) && healthy.as_ref().is_none_or(|ok| ok(i))
            };
            worker
                .upstream_state(generation, |state| {
                    state.balancers[upstream_index].pick(
                        config,
                        upstream.maglev.as_ref(),
                        key_hash,
                        &allowed,
                    )
                })
                .flatten()
        };
        pick(true)
            .or_else(|| (tries.avoid != 0).then(|| pick(false)).flatten())
            .ok_or(ProxyError::NoTarget)
    }

    /// A healthy target of upstream `upstream_index` for a request the gateway sends of its
    /// own accord (a mirror copy, a cache refresh): balanced like the request's own tries.
    pub(super) fn side_target(
        &self,
        worker: &Worker,
        snapshot: &Snapshot,
        upstream_index: usize,
    ) -> Option<usize> {
        let config = &snapshot.upstreams.entries[upstream_index].config;
        let tries = Tries {
            failed: 0,
            avoid: 0,
            fresh_only: true,
            deadline: None,
        };
        let key = self.hash_key(config);
        self.pick_target(
            worker,
            worker.generation(),
            snapshot,
            upstream_index,
            key,
            &tries,
        )
        .ok()
    }

    /// A connection to `target` for this try: a pooled one, or a new one within the
    /// upstream's connection limit (waiting for a place while the queue has room).
    /// Returns it with whether it was pooled.
    pub(super) async fn upstream_connection(
        &self,
        worker: &Worker,
        generation: u64,
        upstream_index: usize,
        upstream: &UpstreamEntry,
        target: usize,
        tries: &Tries,
    ) -> Result<(UpstreamConn, bool), ProxyError> {
        let config = &upstream.config;
        let global = upstream.first_target + target;
        if !tries.fresh_only {
            let pooled = worker
                .upstream_state(generation, |state| {
                    state.pool.take(global, config.idle_timeout)
                })
                .flatten();
            if let Some(mut conn) = pooled {
                if let Some(slot) = conn.slot.as_mut() {
                    slot.set_idle(false);
                }
                worker.metrics(|m| {
                    if let Some(u) = m.upstreams.get(upstream_index) {
                        u.reused.increment(1);
                    }
                });
                return Ok((conn, true));
            }
        }
        let slot = match &upstream.connections {
            None => None,
            Some(limits) => Some(
                self.connection_slot(worker, upstream_index, limits, config, tries)
                    .await?,
            ),
        };
        let addr = config.targets[target].addr;
        let timeout = within(config.connect_timeout, tries.deadline);
        let stream = connect(addr, timeout, config.tls.as_ref()).await?;
        worker.upstream_state(generation, |state| state.pool.opened += 1);
        worker.metrics(|m| {
            if let Some(u) = m.upstreams.get(upstream_index) {
                u.opened.increment(1);
            }
        });
        Ok((UpstreamConn { stream, slot }, false))
    }

    /// Circuit breaking: a place for a new connection under `max_connections`. At the
    /// limit the request waits (up to the connect timeout) if fewer than `max_pending`
    /// already do, and is refused with a 503 otherwise.
    async fn connection_slot(
        &self,
        worker: &Worker,
        upstream_index: usize,
        limits: &Arc<ConnectionLimits>,
        config: &UpstreamConfig,
        tries: &Tries,
    ) -> Result<ConnectionSlot, ProxyError> {
        if let Some(slot) = limits.try_open() {
            return Ok(slot);
        }
        let overflow = |reason: &'static str| {
            worker.metrics(|m| {
                if let Some(u) = m.upstreams.get(upstream_index) {
                    u.overflows.increment(1);
                }
            });
            tracing::debug!(upstream = %config.name, reason, "circuit breaker refused a request");
            ProxyError::Overloaded(reason)
        };
        // Idle connections (in any worker's pool) hold places but carry no load: wait
        // for one of them to close rather than refuse.
        let _waiting = match limits.try_wait() {
            Some(waiting) => waiting,
            None if limits.idle() > 0 => limits.wait_for_idle(),
            None => return Err(overflow("max_pending")),
        };
        let give_up = Instant::now() + within(config.connect_timeout, tries.deadline);
        loop {
            // Places free up on any worker; a short poll finds them without a shared
            // wake-up structure. Only requests over the limit ever wait here.
            monoio::time::sleep(PENDING_POLL).await;
            if let Some(slot) = limits.try_open() {
                return Ok(slot);
            }
            if Instant::now() >= give_up {
                return Err(overflow("max_connections"));
            }
        }
    }

    /// Whether the request may be tried again after a failed try, taking a retry from
    /// the upstream's budget if so.
    pub(super) fn may_retry(
        &self,
        worker: &Worker,
        generation: u64,
        upstream_index: usize,
        policy: &RetryPolicy,
        tries: &Tries,
    ) -> bool {
        let now = Instant::now();
        let eligible = tries.failed < policy.attempts
            && self.body_untouched()
            && (policy.non_idempotent || self.state.head.is_idempotent())
            && tries.deadline.is_none_or(|d| now < d);
        if !eligible {
            return false;
        }
        let granted = worker
            .upstream_state(generation, |state| {
                state.retry_budgets[upstream_index].try_retry(now)
            })
            .unwrap_or(false);
        worker.metrics(|m| {
            if let Some(u) = m.upstreams.get(upstream_index) {
                if granted {
                    u.retries.increment(1);
                } else {
                    u.retries_refused.increment(1);
                }
            }
        });
        if !granted {
            tracing::debug!("retry budget spent; not retrying");
        }
        granted
    }

    /// Waits before the next try: jittered exponential backoff, never past the deadline.
    pub(super) async fn back_off(&self, worker: &Worker, policy: &RetryPolicy, tries: &Tries) {
        let delay = backoff(
            policy.backoff,
            policy.max_backoff,
            tries.failed,
            worker.random_unit(),
        );
        let delay = within(delay, tries.deadline);
        if !delay.is_zero() {
            monoio::time::sleep(delay).await;
        }
    }
}
