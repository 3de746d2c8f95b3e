//! Circuit breaking: an upstream's open connections and the requests waiting for one,
//! counted across all workers (one atomic per event, only on upstreams with a
//! `max_connections`). Beyond the limits a request is refused at once with a 503
//! instead of piling onto a backend that is already saturated.
//!
//! Idle pooled connections count as open, but they are not load: when the limit is
//! reached while some are idle (in any worker's pool), a request waits instead of being
//! refused, and every worker closes its idle connections to that upstream while requests
//! wait (see [`ConnectionLimits::has_waiters`]), so the place moves to where it is needed.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

/// One upstream's connection limits, shared by every worker of a snapshot.
#[derive(Debug)]
pub struct ConnectionLimits {
    open: AtomicU32,
    /// Open connections parked idle in a pool.
    idle: AtomicU32,
    max_open: u32,
    pending: AtomicU32,
    max_pending: u32,
}

/// One open upstream connection's place; given back when the connection is dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    idle: bool,
}

/// One request's place in the queue for a connection.
#[derive(Debug)]
pub struct PendingSlot<'a>(&'a ConnectionLimits);

/// Adds one to `counter` unless it is at `limit`.
fn increment_below(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl ConnectionLimits {
    /// Limits of `max_open` connections and `max_pending` waiting requests.
    pub fn new(max_open: u32, max_pending: u32) -> Self {
        Self {
            open: AtomicU32::new(0),
            idle: AtomicU32::new(0),
            max_open,
            pending: AtomicU32::new(0),
            max_pending,
        }
    }

    /// A place for one more connection, or `None` at the limit.
    pub fn try_open(self: &Arc<Self>) -> Option<ConnectionSlot> {
        increment_below(&self.open, self.max_open).then(|| ConnectionSlot {
            limits: self.clone(),
            idle: false,
        })
    }

    /// A place in the queue even when it is full: for a request that only waits for an
    /// idle connection elsewhere to be closed.
    pub fn wait_for_idle(&self) -> PendingSlot<'_> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        PendingSlot(self)
    }

    /// Open connections parked idle now.
    pub fn idle(&self) -> u32 {
        self.idle.load(Ordering::Relaxed)
    }

    /// A place in the queue of requests waiting for a connection, or `None` when it is full.
    pub fn try_wait(&self) -> Option<PendingSlot<'_>> {
        increment_below(&self.pending, self.max_pending).then(|| PendingSlot(self))
    }

    /// Whether requests are waiting: an idle connection is then closed, not parked, so
    /// its place goes to a waiting request (on any worker).
    pub fn has_waiters(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > 0
    }

    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests waiting now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// The connection limit.
    pub fn max_open(&self) -> u32 {
        self.max_open
    }
}

impl ConnectionSlot {
    /// Marks the connection parked in a pool (`true`) or taken out for a request.
    pub fn set_idle(&mut self, idle: bool) {
        if idle != self.idle {
            self.idle = idle;
            if idle {
                self.limits.idle.fetch_add(1, Ordering::AcqRel);
            } else {
                self.limits.idle.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.set_idle(false);
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_and_waiters_are_bounded_and_released() {
        let limits = Arc::new(ConnectionLimits::new(2, 1));
        let a = limits.try_open();
        let b = limits.try_open();
        assert!(a.is_some() && b.is_some());
        assert!(limits.try_open().is_none());
        let waiting = limits.try_wait();
        assert!(waiting.is_some() && limits.has_waiters());
        assert!(limits.try_wait().is_none());
        drop(a);
        assert!(
            limits.try_open().is_some(),
            "a closed connection frees its place"
        );
        let mut parked = b.expect("slot");
        parked.set_idle(true);
        assert_eq!(limits.idle(), 1);
        parked.set_idle(false);
        parked.set_idle(true);
        drop(waiting);
        assert!(!limits.has_waiters());
        drop(parked);
        assert_eq!((limits.open(), limits.idle()), (0, 0));
    }
}
