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

/// Key-hash bit marking a sliding-window cell; GCRA keys never have it.
const SLIDING: u64 = 1 << 63;
/// Largest count a sliding-window cell holds per window (12 bits).
pub const SLIDING_MAX: u32 = 4095;

/// When a cell's state has no more effect (its bucket refilled, or its windows passed),
/// in nanoseconds: what decides whether a cell is free and which is the most idle.
fn idle_at(word: u128) -> u64 {
    let (owner, low) = unpack(word);
    if owner & SLIDING != 0 {
        // A sliding cell: bits 24.. hold when its count stops counting, in milliseconds.
        (low >> 24).saturating_mul(1_000_000)
    } else {
        low
    }
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
        (hasher.finish() & !SLIDING).max(1)
    }

    /// Counts one request against `key_hash` in sliding-window mode: at most `rate.count`
    /// per `rate.per`, estimated as the previous window's count weighted by how much of
    /// it still overlaps the sliding window, plus the current window's count. Windows are
    /// whole milliseconds (validated); counts go up to [`SLIDING_MAX`].
    pub fn check_sliding(&self, key_hash: u64, rate: &Rate, now_ns: u64) -> Decision {
        let (
            line,
            SlidingAt {
                key,
                window,
                limit,
                index,
                elapsed,
            },
        ) = self.sliding_line(key_hash, rate, now_ns);
        let window_end_ns = ((index + 1) * window).saturating_mul(1_000_000);
        loop {
            let (cell, word) = choose(line, key, now_ns);
            let (prev, cur) = sliding_counts(word, key, index, window);
            // prev × (window − elapsed) / window + cur, compared in units of 1/window.
            let weighted = prev * (window - elapsed) + cur * window;
            if weighted + window > limit * window {
                let wait_ms = if cur + 1 > limit || prev == 0 {
                    window - elapsed
                } else {
                    // The previous window's weight must fall enough for one more.
                    let excess = weighted + window - limit * window;
                    excess.div_ceil(prev).max(1).min(window - elapsed)
                };
                return Decision::Limited {
                    retry_after_ns: wait_ms.saturating_mul(1_000_000),
                    reset_ns: window_end_ns - now_ns,
                };
            }
            let stale_at_ms = (index + 2) * window;
            let low = (stale_at_ms << 24) | (prev << 12) | (cur + 1);
            if cell
                .0
                .compare_exchange(word, pack(key, low), AcqRel, Acquire)
                .is_ok()
            {
                let left = (limit * window - weighted - window) / window;
                return Decision::Allowed {
                    remaining: left as u32,
                    reset_ns: window_end_ns - now_ns,
                };
            }
        }
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

    /// The cache line of a sliding-window key and where `now` falls for it.
    fn sliding_line(&self, key_hash: u64, rate: &Rate, now_ns: u64) -> (&Line, SlidingAt) {
        let at = SlidingAt::new(key_hash, rate, now_ns);
        (&self.lines[at.key as usize & self.mask], at)
    }

    /// Requests that fit now for `key_hash` in sliding-window mode, taking nothing.
    pub fn peek_sliding(&self, key_hash: u64, rate: &Rate, now_ns: u64) -> u32 {
        let (
            line,
            SlidingAt {
                key,
                window,
                limit,
                index,
                elapsed,
            },
        ) = self.sliding_line(key_hash, rate, now_ns);
        let (prev, cur) = line
            .0
            .iter()
            .map(|c| c.0.load(Acquire))
            .find(|w| unpack(*w).0 == key)
            .map_or((0, 0), |w| sliding_counts(w, key, index, window));
        let weighted = prev * (window - elapsed) + cur * window;
        (limit * window).saturating_sub(weighted).div_euclid(window) as u32
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
    let free = words
        .iter()
        .position(|w| unpack(*w).0 == 0 || idle_at(*w) <= now_ns);
    let i = free.unwrap_or_else(|| (0..PROBE).min_by_key(|&i| idle_at(words[i])).unwrap_or(0));
    (&line.0[i], words[i])
}

/// Where `now` falls for a sliding-window limit: the flagged key, the window length and
/// limit, the current window's index and how far into it (milliseconds).
struct SlidingAt {
    key: u64,
    window: u64,
    limit: u64,
    index: u64,
    elapsed: u64,
}

impl SlidingAt {
    fn new(key_hash: u64, rate: &Rate, now_ns: u64) -> Self {
        let window = (rate.per.as_millis() as u64).max(1);
        let now_ms = now_ns / 1_000_000;
        let index = now_ms / window;
        Self {
            key: key_hash | SLIDING,
            window,
            limit: u64::from(rate.count.min(SLIDING_MAX)),
            index,
            elapsed: now_ms - index * window,
        }
    }
}

/// (previous, current) window counts of a sliding cell as of window `index`; a cell of
/// another key counts as empty (it is being taken over).
fn sliding_counts(word: u128, key: u64, index: u64, window: u64) -> (u64, u64) {
    let (owner, low) = unpack(word);
    if owner != key {
        return (0, 0);
    }
    let stored = (low >> 24) / window - 2;
    let (prev, cur) = ((low >> 12) & 0xFFF, low & 0xFFF);
    match index.checked_sub(stored) {
        Some(0) => (prev, cur),
        Some(1) => (cur, 0),
        _ => (0, 0),
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

    #[test]
    fn sliding_windows_count_exactly_and_weigh_the_previous_one() {
        let table = RateTable::new(64);
        let key = table.key_hash("route:s", b"k");
        let r = Rate {
            count: 10,
            per: Duration::from_secs(1),
            burst: 10,
        };
        // Window [1 s, 2 s): exactly 10 fit, however fast they come.
        let start = SECOND;
        let admitted = (0..30)
            .filter(|_| table.check_sliding(key, &r, start).allowed())
            .count();
        assert_eq!(admitted, 10);
        assert_eq!(table.peek_sliding(key, &r, start), 0);
        // A quarter into the next window the previous one still weighs 3/4: 10 × 0.75 =
        // 7.5, so 2 more fit (9.5 < 10), not 3.
        let later = 2 * SECOND + SECOND / 4;
        let more = (0..10)
            .filter(|_| table.check_sliding(key, &r, later).allowed())
            .count();
        assert_eq!(more, 2);
        // Two windows later nothing of it is left.
        assert_eq!(table.peek_sliding(key, &r, 4 * SECOND), 10);
        // The GCRA cells of the same key are separate.
        assert!(table.check(key, &r, start).allowed());
    }

    #[test]
    fn a_limited_sliding_answer_says_when_to_retry() {
        let table = RateTable::new(16);
        let key = table.key_hash("route:s", b"k");
        let r = Rate {
            count: 2,
            per: Duration::from_secs(10),
            burst: 2,
        };
        let at = 10 * SECOND + 4 * SECOND;
        assert!(table.check_sliding(key, &r, at).allowed());
        assert!(table.check_sliding(key, &r, at).allowed());
        let Decision::Limited {
            retry_after_ns,
            reset_ns,
        } = table.check_sliding(key, &r, at)
        else {
            panic!("the third is refused");
        };
        assert_eq!(retry_after_ns, 6 * SECOND, "the window ends in 6 s");
        assert_eq!(reset_ns, 6 * SECOND);
    }

    proptest! {
        /// In every aligned window, sliding mode admits at most the limit.
        #[test]
        fn sliding_admissions_never_exceed_the_limit_per_window(
            count in 1u32..50,
            gaps in proptest::collection::vec(0u64..SECOND / 20, 1..400),
        ) {
            let table = RateTable::new(16);
            let key = table.key_hash("p", b"k");
            let r = Rate { count, per: Duration::from_secs(1), burst: count };
            let mut now = SECOND;
            let mut per_window = std::collections::HashMap::new();
            for gap in gaps {
                now += gap;
                if table.check_sliding(key, &r, now).allowed() {
                    *per_window.entry(now / SECOND).or_insert(0u32) += 1;
                }
            }
            prop_assert!(per_window.values().all(|&n| n <= count));
        }
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
