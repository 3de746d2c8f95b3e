//! Concurrency limits: at most N requests of a route in flight across all workers.

use std::sync::atomic::{AtomicU32, Ordering};

/// A global in-flight counter with its limit (one per limited route and snapshot).
#[derive(Debug)]
pub struct InFlight {
    current: AtomicU32,
    limit: u32,
}

/// One admitted request; gives its place back when dropped.
#[derive(Debug)]
pub struct InFlightGuard<'a>(&'a InFlight);

impl InFlight {
    /// A counter admitting up to `limit` requests at once.
    pub fn new(limit: u32) -> Self {
        Self {
            current: AtomicU32::new(0),
            limit,
        }
    }

    /// A place for one more request, or `None` when `limit` are already in flight.
    pub fn try_enter(&self) -> Option<InFlightGuard<'_>> {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlightGuard(self))
    }

    /// Requests in flight now.
    pub fn current(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let limit = InFlight::new(2);
        let a = limit.try_enter();
        let b = limit.try_enter();
        assert!(a.is_some() && b.is_some());
        assert!(limit.try_enter().is_none());
        drop(a);
        assert!(limit.try_enter().is_some());
        drop(b);
        assert_eq!(limit.current(), 0);
    }
}
