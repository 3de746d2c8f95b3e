//! Load-balancing decisions, made per worker on worker-local state (no sharing, no locks).
//!
//! `round_robin` is nginx's smooth weighted round robin; `least_conn` picks the fewest
//! in-flight requests per unit of weight; `p2c_ewma` compares two random targets on
//! latency EWMA × (in-flight + 1) / weight; `consistent_hash` looks the request key up in
//! the upstream's shared Maglev table. In-flight counts and latency are this worker's own.

use std::time::Duration;

use super::maglev::Maglev;
use crate::config::{Balance, UpstreamConfig};

/// Weight of a new latency sample in the EWMA.
const EWMA_ALPHA: f64 = 0.3;

/// One worker's balancing state for one upstream.
#[derive(Debug)]
pub struct BalancerState {
    current: Vec<i64>,
    in_flight: Vec<u32>,
    ewma_micros: Vec<f64>,
    rotation: usize,
    rng: fastrand::Rng,
}

impl BalancerState {
    /// Fresh state for `targets` targets; `seed` decorrelates workers' random choices.
    pub fn new(targets: usize, seed: u64) -> Self {
        Self {
            current: vec![0; targets],
            in_flight: vec![0; targets],
            ewma_micros: vec![0.0; targets],
            rotation: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Picks a target among those `allowed` says may be used (not excluded for a
    /// retry, not ejected by health checks).
    pub fn pick(
        &mut self,
        upstream: &UpstreamConfig,
        maglev: Option<&Maglev>,
        key_hash: Option<u64>,
        allowed: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = upstream.targets.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return allowed(0).then_some(0);
        }
        match &upstream.balance {
            Balance::RoundRobin => {
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in (0..n).filter(|&i| allowed(i)) {
                    let weight = i64::from(upstream.targets[i].weight);
                    self.current[i] += weight;
                    total += weight;
                    if best.is_none_or(|b| self.current[i] > self.current[b]) {
                        best = Some(i);
                    }
                }
                let best = best?;
                self.current[best] -= total;
                Some(best)
            }
            Balance::LeastConn => {
                self.rotation = self.rotation.wrapping_add(1);
                let start = self.rotation % n;
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| allowed(i))
                    .min_by(|&a, &b| {
                        // in_flight[a] / weight[a] < in_flight[b] / weight[b], without division.
                        let lhs =
                            u64::from(self.in_flight[a]) * u64::from(upstream.targets[b].weight);
                        let rhs =
                            u64::from(self.in_flight[b]) * u64::from(upstream.targets[a].weight);
                        lhs.cmp(&rhs)
                    })
            }
            Balance::P2cEwma => {
                let a = self.random_where(n, allowed)?;
                let Some(b) = self.random_where(n, |i| i != a && allowed(i)) else {
                    return Some(a);
                };
                let score = |i: usize| {
                    (self.ewma_micros[i] + 1.0) * f64::from(self.in_flight[i] + 1)
                        / f64::from(upstream.targets[i].weight)
                };
                Some(if score(a) <= score(b) { a } else { b })
            }
            Balance::ConsistentHash(_) => {
                let maglev = maglev?;
                let hash = key_hash.unwrap_or_else(|| self.rng.u64(..));
                maglev.lookup_where(hash, allowed)
            }
        }
    }

    /// A random index in `0..n` that `ok` accepts: a few random draws, then a scan
    /// from a random start (so the common case costs one draw and no allocation).
    fn random_where(&mut self, n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
        for _ in 0..4 {
            let i = self.rng.usize(..n);
            if ok(i) {
                return Some(i);
            }
        }
        let start = self.rng.usize(..n);
        (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
    }

    /// A request to `target` started.
    pub fn started(&mut self, target: usize) {
        self.in_flight[target] += 1;
    }

    /// A request to `target` finished; `latency` is its upstream time when it succeeded.
    pub fn finished(&mut self, target: usize, latency: Option<Duration>) {
        self.in_flight[target] = self.in_flight[target].saturating_sub(1);
        if let Some(latency) = latency {
            let sample = latency.as_secs_f64() * 1e6;
            let ewma = &mut self.ewma_micros[target];
            *ewma = if *ewma == 0.0 {
                sample
            } else {
                *ewma + EWMA_ALPHA * (sample - *ewma)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{HashKey, TargetConfig};

    fn upstream(balance: Balance, weights: &[u32]) -> UpstreamConfig {
        UpstreamConfig {
            name: "u".into(),
            balance,
            targets: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| TargetConfig {
                    addr: format!("127.0.0.1:{}", 1000 + i).parse().expect("addr"),
                    weight,
                })
                .collect(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_idle_per_target: 1,
            max_in_flight: None,
            max_connections: None,
            max_pending: 0,
            retry_budget: crate::config::RetryBudgetConfig {
                ratio: 0.2,
                min_per_second: 5.0,
            },
            health_check: None,
            outlier: None,
            panic_threshold: 0.5,
            idle_timeout: Duration::from_secs(1),
            tls: None,
        }
    }

    fn assert_shares(counts: &[usize], weights: &[u32], tolerance: f64) {
        let total: usize = counts.iter().sum();
        let weight_sum: u32 = weights.iter().sum();
        for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
            let share = c as f64 / total as f64;
            let expected = f64::from(w) / f64::from(weight_sum);
            assert!(
                (share - expected).abs() <= tolerance,
                "target {i}: share {share:.3}, expected {expected:.3} ({counts:?})"
            );
        }
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let weights = [5, 1, 1, 3];
        let up = upstream(Balance::RoundRobin, &weights);
        let mut state = BalancerState::new(4, 1);
        let mut counts = [0; 4];
        for _ in 0..10_000 {
            counts[state.pick(&up, None, None, &|_| true).expect("target")] += 1;
        }
        assert_shares(&counts, &weights, 0.001);
        // Smooth: the heavy target never runs more than its weight in a row.
        let picks: Vec<usize> = (0..20)
            .map(|_| state.pick(&up, None, None, &|_| true).expect("target"))
            .collect();
        assert!(
            picks
                .windows(3)
                .all(|w| !(w[0] == 0 && w[1] == 0 && w[2] == 0)),
            "{picks:?}"
        );
    }

    #[test]
    fn least_conn_prefers_idle_targets_by_weight() {
        let weights = [1, 1, 2];
        let up = upstream(Balance::LeastConn, &weights);
        let mut state = BalancerState::new(3, 1);
        let mut counts = [0; 3];
        // Hold every request open: picks must balance in-flight counts by weight.
        for _ in 0..10_000 {
            let t = state.pick(&up, None, None, &|_| true).expect("target");
            state.started(t);
            counts[t] += 1;
        }
        assert_shares(&counts, &weights, 0.01);
    }

    #[test]
    fn p2c_ewma_avoids_the_slow_target_and_spreads_equal_ones() {
        let up = upstream(Balance::P2cEwma, &[1, 1, 1]);
        let mut state = BalancerState::new(3, 7);
        let mut counts = [0; 3];
        for _ in 0..10_000 {
            let t = state.pick(&up, None, None, &|_| true).expect("target");
            state.started(t);
            let latency = if t == 2 { 50_000 } else { 1_000 };
            state.finished(t, Some(Duration::from_micros(latency)));
            counts[t] += 1;
        }
        assert!(counts[2] < 1_000, "slow target got {counts:?}");
        assert_shares(&counts[..2], &[1, 1], 0.05);
    }

    #[test]
    fn unavailable_targets_are_never_picked_by_any_algorithm() {
        for balance in [
            Balance::RoundRobin,
            Balance::LeastConn,
            Balance::P2cEwma,
            Balance::ConsistentHash(HashKey::ClientIp),
        ] {
            let up = upstream(balance.clone(), &[1, 1, 1]);
            let names: Vec<String> = up.targets.iter().map(|t| t.addr.to_string()).collect();
            let maglev = Maglev::build(&names, &[1, 1, 1], &[true; 3]);
            let mut state = BalancerState::new(3, 3);
            for k in 0..1000u64 {
                let t = state.pick(
                    &up,
                    Some(&maglev),
                    Some(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                    &|i| i != 1,
                );
                assert_ne!(t, Some(1), "{balance:?}");
                assert!(t.is_some(), "{balance:?}");
                // With every target but one out, that one is always chosen.
                let only = state.pick(
                    &up,
                    Some(&maglev),
                    Some(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                    &|i| i == 2,
                );
                assert_eq!(only, Some(2), "{balance:?}");
            }
        }
    }
}
