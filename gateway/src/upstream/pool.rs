//! Per-worker keep-alive pools: idle upstream connections by target, last-in first-out
//! (the warmest connection is reused first), bounded per target, expired by age on the
//! way out. A worker's pool is its own: nothing here is shared or locked.

use std::time::{Duration, Instant};

/// Idle connections of every target of one worker.
#[derive(Debug)]
pub struct Pool<C> {
    idle: Vec<Vec<(C, Instant)>>,
    /// Connections opened by this worker.
    pub opened: u64,
    /// Requests sent on a reused connection.
    pub reused: u64,
}

impl<C> Pool<C> {
    /// A pool for `targets` targets (flattened across upstreams).
    pub fn new(targets: usize) -> Self {
        Self {
            idle: (0..targets).map(|_| Vec::new()).collect(),
            opened: 0,
            reused: 0,
        }
    }

    /// The most recently parked connection to `target` younger than `max_idle`.
    pub fn take(&mut self, target: usize, max_idle: Duration) -> Option<C> {
        let idle = self.idle.get_mut(target)?;
        let now = Instant::now();
        while let Some((conn, since)) = idle.pop() {
            if now.duration_since(since) < max_idle {
                self.reused += 1;
                return Some(conn);
            }
        }
        None
    }

    /// Parks `conn` for reuse; dropped (closed) when the target already has `max` idle.
    pub fn put(&mut self, target: usize, conn: C, max: usize) {
        let Some(idle) = self.idle.get_mut(target) else {
            return;
        };
        if idle.len() < max {
            idle.push((conn, Instant::now()));
        } else if let Some(oldest) = idle.first_mut() {
            // Full: replace the oldest, which is the likeliest to have been closed by now.
            *oldest = (conn, Instant::now());
            idle.rotate_left(1);
        }
    }

    /// Closes every idle connection to the targets in `targets`.
    pub fn close_idle(&mut self, targets: std::ops::Range<usize>) {
        for target in targets {
            if let Some(idle) = self.idle.get_mut(target) {
                idle.clear();
            }
        }
    }

    /// Idle connections currently parked for `target`.
    pub fn idle_count(&self, target: usize) -> usize {
        self.idle.get(target).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Pool;

    #[test]
    fn reuses_newest_first_and_bounds_idle() {
        let mut pool = Pool::new(2);
        pool.put(0, "a", 2);
        pool.put(0, "b", 2);
        pool.put(0, "c", 2);
        assert_eq!(pool.idle_count(0), 2);
        assert_eq!(pool.take(0, Duration::from_secs(60)), Some("c"));
        assert_eq!(pool.take(0, Duration::from_secs(60)), Some("b"));
        assert_eq!(pool.take(0, Duration::from_secs(60)), None);
        assert_eq!(pool.take(1, Duration::from_secs(60)), None);
        assert_eq!(pool.reused, 2);
    }

    #[test]
    fn expired_connections_are_dropped() {
        let mut pool = Pool::new(1);
        pool.put(0, 1, 4);
        assert_eq!(pool.take(0, Duration::ZERO), None);
        assert_eq!(pool.idle_count(0), 0);
    }
}
