//! The shared GCRA table: fixed-size, open-addressed, one cache line per key lookup.

use std::{
    hash::{BuildHasher, Hash, Hasher},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Instant,
};

use foldhash::fast::RandomState;

use super::Rate;

/// Cells probed per key: exactly one cache line.
pub const PROBE: usize = 4;

/// One key's state: its hash (0: never used) and its theoretical arrival time.
#[derive(Default)]
struct Cell {
    key: AtomicU64,
    /// Nanoseconds since the table's epoch; at or before "now" means a full bucket.
    tat: AtomicU64,
}

/// [`PROBE`] cells sharing a cache line.
#[repr(C, align(64))]
#[derive(Default)]
struct Line([Cell; PROBE]);

/// The outcome of one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; `remaining` more requests fit right now.
    Allowed { remaining: u32, reset_ns: u64 },
    /// Refused; one more request fits after `retry_after_ns`.
    Limited { retry_after_ns: u64, reset_ns: u64 },
}

impl Decision {
    /// Whether the request may go on.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }
}

/// Process-wide GCRA cells for every rate limit, shared by all workers (see the module
/// documentation for the method).
pub struct RateTable {
    lines: Box<[Line]>,
    mask: usize,
    seed: RandomState,
    epoch: Instant,
}

impl std::fmt::Debug for RateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateTable")
            .field("cells", &(self.lines.len() * PROBE))
            .finish_non_exhaustive()
    }
}

impl RateTable {
    /// A table tracking up to about `keys` keys at once (rounded up to a power of two).
    pub fn new(keys: usize) -> Self {
        let lines = (keys.max(PROBE) / PROBE).next_power_of_two();
        Self {
            lines: (0..lines).map(|_| Line::default()).collect(),
            mask: lines - 1,
            seed: RandomState::default(),
            epoch: Instant::now(),
        }
    }

    /// Cells in the table: the most keys it tracks at once.
    pub fn capacity(&self) -> usize {
        self.lines.len() * PROBE
    }

    /// Now, in the table's clock (never 0).
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// The cell hash of `key` under the limit named `limit` (never 0).
    pub fn key_hash(&self, limit: &str, key: &[u8]) -> u64 {
        let mut hasher = self.seed.build_hasher();
        limit.hash(&mut hasher);
        key.hash(&mut hasher);
        hasher.finish().max(1)
    }

    /// Takes one request from the bucket of `key_hash` at `rate`.
    pub fn check(&self, key_hash: u64, rate: &Rate, now_ns: u64) -> Decision {
        let cell = self.cell(key_hash, now_ns);
        let interval = rate.interval_ns();
        let tolerance = interval.saturating_mul(u64::from(rate.burst.max(1)));
        let mut tat = cell.tat.load(Relaxed);
        loop {
            let next = tat.max(now_ns).saturating_add(interval);
            let wait = next - now_ns;
            if wait > tolerance {
                return Decision::Limited {
                    retry_after_ns: wait - tolerance,
                    reset_ns: tat.max(now_ns) - now_ns,
                };
            }
            match cell.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => {
                    return Decision::Allowed {
                        remaining: ((tolerance - wait) / interval).min(u64::from(u32::MAX)) as u32,
                        reset_ns: wait,
                    };
                }
                Err(current) => tat = current,
            }
        }
    }

    /// The state of `key_hash` without taking anything: requests that fit now.
    pub fn peek(&self, key_hash: u64, rate: &Rate, now_ns: u64) -> u32 {
        let line = &self.lines[key_hash as usize & self.mask];
        let tolerance = rate
            .interval_ns()
            .saturating_mul(u64::from(rate.burst.max(1)));
        let used = line
            .0
            .iter()
            .find(|c| c.key.load(Relaxed) == key_hash)
            .map_or(0, |c| c.tat.load(Relaxed).saturating_sub(now_ns));
        (tolerance.saturating_sub(used) / rate.interval_ns()) as u32
    }

    /// The cell holding `key_hash`, claiming one when the key is new.
    fn cell(&self, key_hash: u64, now_ns: u64) -> &Cell {
        let line = &self.lines[key_hash as usize & self.mask];
        if let Some(cell) = line.0.iter().find(|c| c.key.load(Relaxed) == key_hash) {
            return cell;
        }
        // A never-used cell, or one whose bucket has refilled: its TAT is in the past,
        // which is exactly a fresh bucket for the new key.
        for cell in &line.0 {
            let owner = cell.key.load(Relaxed);
            if (owner == 0 || cell.tat.load(Relaxed) <= now_ns)
                && cell
                    .key
                    .compare_exchange(owner, key_hash, Relaxed, Relaxed)
                    .is_ok()
            {
                return cell;
            }
        }
        // Every cell is busy: take over the one closest to idle, with a fresh bucket.
        let victim = line
            .0
            .iter()
            .min_by_key(|c| c.tat.load(Relaxed))
            .unwrap_or(&line.0[0]);
        victim.key.store(key_hash, Relaxed);
        victim.tat.store(now_ns, Relaxed);
        victim
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn rate(count: u32, burst: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(1),
            burst,
        }
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let table = RateTable::new(64);
        let key = table.key_hash("route:a", b"10.0.0.1");
        let r = rate(10, 5);
        let now = SECOND;
        let admitted = (0..20)
            .filter(|_| table.check(key, &r, now).allowed())
            .count();
        assert_eq!(admitted, 5, "the burst, all at once");
        // One interval later exactly one more fits.
        assert!(table.check(key, &r, now + SECOND / 10).allowed());
        assert!(!table.check(key, &r, now + SECOND / 10).allowed());
    }

    #[test]
    fn headers_figures_are_consistent() {
        let table = RateTable::new(64);
        let key = table.key_hash("l", b"k");
        let r = rate(2, 3);
        let now = SECOND;
        assert_eq!(
            table.check(key, &r, now),
            Decision::Allowed {
                remaining: 2,
                reset_ns: SECOND / 2
            }
        );
        table.check(key, &r, now);
        table.check(key, &r, now);
        assert_eq!(
            table.check(key, &r, now),
            Decision::Limited {
                retry_after_ns: SECOND / 2,
                reset_ns: 3 * SECOND / 2
            }
        );
        assert_eq!(table.peek(key, &r, now + SECOND / 2), 1);
    }

    #[test]
    fn distinct_limits_and_keys_do_not_share_buckets() {
        let table = RateTable::new(64);
        let r = rate(1, 1);
        let a = table.key_hash("route:a", b"x");
        let b = table.key_hash("route:b", b"x");
        let c = table.key_hash("route:a", b"y");
        for key in [a, b, c] {
            assert!(table.check(key, &r, SECOND).allowed());
            assert!(!table.check(key, &r, SECOND).allowed());
        }
    }

    #[test]
    fn rotating_keys_stay_within_the_table() {
        let table = RateTable::new(1024);
        let r = rate(1, 1);
        for i in 0..100_000u32 {
            let key = table.key_hash("l", &i.to_be_bytes());
            assert!(
                table.check(key, &r, SECOND).allowed(),
                "a new key gets its burst"
            );
        }
        assert_eq!(table.capacity(), 1024);
    }

    #[test]
    fn shared_across_threads_the_rate_is_exact() {
        let table = std::sync::Arc::new(RateTable::new(64));
        let key = table.key_hash("l", b"k");
        let r = rate(1000, 10);
        // Every thread checks at the same instant: exactly the burst is admitted.
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let table = table.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| table.check(key, &r, SECOND).allowed())
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(admitted, 10);
    }

    proptest! {
        /// Over any arrival pattern, admissions never exceed burst + rate × elapsed, and
        /// a client that keeps asking gets at least rate × elapsed.
        #[test]
        fn admissions_follow_the_bucket(
            count in 1u32..1000,
            burst in 1u32..50,
            gaps in proptest::collection::vec(0u64..SECOND / 50, 1..400),
        ) {
            let table = RateTable::new(16);
            let key = table.key_hash("p", b"k");
            let r = rate(count, burst);
            let interval = r.interval_ns();
            let start = SECOND;
            let mut now = start;
            let mut admitted = 0u64;
            for gap in gaps {
                now += gap;
                if table.check(key, &r, now).allowed() {
                    admitted += 1;
                }
            }
            let elapsed = now - start;
            prop_assert!(admitted <= u64::from(burst) + elapsed / interval + 1);
        }
    }
}
