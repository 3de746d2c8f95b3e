//! Retry budgets: how many retries a worker may send to an upstream, so that retries
//! cannot multiply an outage (the Finagle/Linkerd model). Over a sliding 10-second
//! window, retries may reach `ratio` of the requests plus `min_per_second` per second.
//! Per worker and per upstream: nothing is shared, so nothing is locked.

use std::time::{Duration, Instant};

use crate::config::RetryBudgetConfig;

/// Seconds the budget remembers requests and retries for.
const WINDOW_SECONDS: usize = 10;

/// One worker's retry budget towards one upstream.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    epoch: Instant,
    /// The second (since `epoch`) that `slots[current % WINDOW]` counts.
    current: u64,
    /// (requests, retries) per second of the window.
    slots: [(u32, u32); WINDOW_SECONDS],
}

impl RetryBudget {
    /// An empty budget.
    pub fn new(config: RetryBudgetConfig) -> Self {
        Self {
            config,
            epoch: Instant::now(),
            current: 0,
            slots: [(0, 0); WINDOW_SECONDS],
        }
    }

    /// Moves the window to `now`, forgetting seconds that fell out of it.
    fn advance(&mut self, now: Instant) -> &mut (u32, u32) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        if second > self.current {
            let stale = (second - self.current).min(WINDOW_SECONDS as u64);
            for s in 1..=stale {
                self.slots[((self.current + s) % WINDOW_SECONDS as u64) as usize] = (0, 0);
            }
            self.current = second;
        }
        &mut self.slots[(self.current % WINDOW_SECONDS as u64) as usize]
    }

    /// Counts a request's first try (it earns `ratio` of a retry).
    pub fn record_request(&mut self, now: Instant) {
        let slot = self.advance(now);
        slot.0 = slot.0.saturating_add(1);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        self.advance(now);
        let (requests, retries) = self.slots.iter().fold((0u64, 0u64), |(q, r), s| {
            (q + u64::from(s.0), r + u64::from(s.1))
        });
        let allowed = self.config.ratio * requests as f64
            + self.config.min_per_second * WINDOW_SECONDS as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        let slot = self.advance(now);
        slot.1 = slot.1.saturating_add(1);
        true
    }
}

/// The wait before retry number `retry` (1 for the first): "full jitter", a uniform
/// random share of `base × 2^(retry-1)` capped at `max`, so that clients retrying
/// together spread out instead of arriving in waves.
pub fn backoff(base: Duration, max: Duration, retry: u32, random_unit: f64) -> Duration {
    if base.is_zero() {
        return Duration::ZERO;
    }
    let ceiling = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(max);
    ceiling.mul_f64(random_unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: f64) -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig {
            ratio,
            min_per_second,
        })
    }

    #[test]
    fn retries_are_capped_at_the_ratio_of_requests() {
        let mut b = budget(0.2, 0.0);
        let now = Instant::now();
        for _ in 0..100 {
            b.record_request(now);
        }
        let granted = (0..100).filter(|_| b.try_retry(now)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_floor_allows_retries_without_traffic_and_the_window_forgets() {
        let mut b = budget(0.0, 1.0);
        let start = Instant::now();
        let granted = (0..50).filter(|_| b.try_retry(start)).count();
        assert_eq!(granted, WINDOW_SECONDS);
        // Eleven seconds later, the old retries have left the window.
        let later = start + Duration::from_secs(11);
        assert!(b.try_retry(later));
    }

    #[test]
    fn old_requests_stop_earning_retries() {
        let mut b = budget(0.5, 0.0);
        let start = Instant::now();
        for _ in 0..10 {
            b.record_request(start);
        }
        assert!(b.try_retry(start));
        assert!(!b.try_retry(start + Duration::from_secs(30)));
    }

    #[test]
    fn backoff_grows_then_caps_and_jitters() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(50);
        assert_eq!(backoff(base, max, 1, 1.0), Duration::from_millis(10));
        assert_eq!(backoff(base, max, 3, 1.0), Duration::from_millis(40));
        assert_eq!(backoff(base, max, 9, 1.0), max);
        assert_eq!(backoff(base, max, 2, 0.5), Duration::from_millis(10));
        assert_eq!(backoff(Duration::ZERO, max, 5, 1.0), Duration::ZERO);
    }
}
