//! The shared GCRA table: fixed-size, open-addressed, one cache line per key lookup.

use std::{
    hash::{BuildHasher, Hash, Hasher},
    sync::atomic::Ordering::{AcqRel, Acquire},
    time::Instant,
};

use foldhash::fast::RandomState;
use portable_atomic::AtomicU128;

use super::Rate;

/// Cells probed per key: exactly one cache line.
pub const PROBE: usize = 4;

/// One key's state in a single 128-bit word, so that claiming a cell and spending from
/// it are one compare-and-swap: the key's hash (high half; 0 = never used) and its
/// theoretical arrival time in nanoseconds since the table's epoch (low half; at or
/// before "now" means a full bucket).
#[derive(Default)]
struct Cell(AtomicU128);

fn pack(key: u64, tat: u64) -> u128 {
    (u128::from(key) << 64) | u128::from(tat)
}

fn unpack(word: u128) -> (u64, u64) {
    ((word >> 64) as u64, word as u64)
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
        let line = &self.lines[key_hash as usize & self.mask];
        let interval = rate.interval_ns();
        let tolerance = interval.saturating_mul(u64::from(rate.burst.max(1)));
        loop {
            let (cell, word) = choose(line, key_hash, now_ns);
            let (owner, stored) = unpack(word);
            // A cell taken over (never used, refilled, or the most idle one) starts as a
            // full bucket for this key.
            let tat = if owner == key_hash {
                stored.max(now_ns)
            } else {
                now_ns
            };
            let next = tat.saturating_add(interval);
            let wait = next - now_ns;
            if wait > tolerance {
                return Decision::Limited {
                    retry_after_ns: wait - tolerance,
                    reset_ns: tat - now_ns,
                };
            }
            // One CAS claims the cell (if needed) and spends from it; on a race, look again.
            if cell
                .0
                .compare_exchange(word, pack(key_hash, next), AcqRel, Acquire)
                .is_ok()
            {
                return Decision::Allowed {
                    remaining: ((tolerance - wait) / interval).min(u64::from(u32::MAX)) as u32,
                    reset_ns: wait,
                };
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
            .map(|c| unpack(c.0.load(Acquire)))
            .find(|(owner, _)| *owner == key_hash)
            .map_or(0, |(_, tat)| tat.saturating_sub(now_ns));
        (tolerance.saturating_sub(used) / rate.interval_ns()) as u32
    }
}

/// The cell for `key_hash` in `line` and the word read from it: the key's own cell, else
/// a never-used or refilled one, else the one closest to idle.
fn choose(line: &Line, key_hash: u64, now_ns: u64) -> (&Cell, u128) {
    let words: [u128; PROBE] = std::array::from_fn(|i| line.0[i].0.load(Acquire));
    if let Some(i) = words.iter().position(|w| unpack(*w).0 == key_hash) {
        return (&line.0[i], words[i]);
    }
    let free = words.iter().position(|w| {
        let (owner, tat) = unpack(*w);
        owner == 0 || tat <= now_ns
    });
    let i = free.unwrap_or_else(|| (0..PROBE).min_by_key(|&i| unpack(words[i]).1).unwrap_or(0));
    (&line.0[i], words[i])
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

    #[test]
    fn concurrent_takeovers_never_charge_a_new_key_for_another() {
        // 16 cells, every one busy for a minute: each new key takes a cell over while
        // other threads do the same in the same lines.
        let table = std::sync::Arc::new(RateTable::new(16));
        let slow = Rate {
            count: 1,
            per: Duration::from_secs(60),
            burst: 1,
        };
        let handles: Vec<_> = (0..4u32)
            .map(|t| {
                let table = table.clone();
                std::thread::spawn(move || {
                    (0..20_000u32)
                        .filter(|i| {
                            let id = u64::from(t) << 32 | u64::from(*i);
                            let key = table.key_hash("l", &id.to_be_bytes());
                            !table.check(key, &slow, SECOND).allowed()
                        })
                        .count()
                })
            })
            .collect();
        let refused: usize = handles.into_iter().map(|h| h.join().unwrap_or(1)).sum();
        assert_eq!(refused, 0, "a new key always gets its burst");
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
