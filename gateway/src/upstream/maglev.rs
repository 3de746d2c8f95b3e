//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of a
//! prime size in which each target owns a share of slots proportional to its weight.
//! Removing a target moves only the keys it owned (about 1/N), and two gateways with the
//! same targets build identical tables, because every hash here is seed-free.

/// Stable 64-bit FNV-1a, seeded, for table construction and key hashing.
pub fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    // A final avalanche so nearby keys spread over the table.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

/// A built Maglev table: slot → target index.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
}

/// Smallest table size used; grows to stay ≥ 100 slots per target.
const MIN_TABLE_SIZE: usize = 65_537;

impl Maglev {
    /// Builds the table for targets named by `names` (stable identities such as
    /// `ip:port`) with `weights`; `alive[i] == false` leaves target `i` out.
    pub fn build(names: &[String], weights: &[u32], alive: &[bool]) -> Self {
        Self::build_sized(names, weights, alive, table_size(names.len()))
    }

    /// [`Maglev::build`] with a table of `size` slots (a prime, at least 100 per target
    /// for shares within 1% of the weights); the XDP balancer's tables are sized by config.
    pub fn build_sized(names: &[String], weights: &[u32], alive: &[bool], size: usize) -> Self {
        let live: Vec<usize> = (0..names.len())
            .filter(|&i| alive[i] && weights[i] > 0)
            .collect();
        if live.is_empty() {
            return Self { table: Vec::new() };
        }
        let permutation: Vec<(u64, u64)> = live
            .iter()
            .map(|&i| {
                let offset = fnv1a(0x6d61_676c_6576_3031, names[i].as_bytes()) % size as u64;
                let skip =
                    fnv1a(0x6d61_676c_6576_3032, names[i].as_bytes()) % (size as u64 - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = live.iter().map(|&i| weights[i]).max().unwrap_or(1);
        let mut next = vec![0u64; live.len()];
        let mut table = vec![u32::MAX; size];
        let mut filled = 0;
        // Each round, a target claims slots in proportion to its weight: it takes a
        // turn whenever its accumulated credit reaches the heaviest weight.
        let mut credit = vec![0u64; live.len()];
        'fill: loop {
            for (k, &target) in live.iter().enumerate() {
                credit[k] += u64::from(weights[target]);
                if credit[k] < u64::from(max_weight) {
                    continue;
                }
                credit[k] -= u64::from(max_weight);
                let (offset, skip) = permutation[k];
                loop {
                    let slot = ((offset + next[k] * skip) % size as u64) as usize;
                    next[k] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = target as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break 'fill;
                }
            }
        }
        Self { table }
    }

    /// Slot → target index; empty when every target is out.
    pub fn slots(&self) -> &[u32] {
        &self.table
    }

    /// The target for a key hash; `None` when every target is out.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
    }

    /// The target for `hash` among those `ok` accepts, walking to the next slots past
    /// the others (so keys of a usable target never move).
    pub fn lookup_where(&self, hash: u64, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.table.len();
        if len == 0 {
            return None;
        }
        (0..len.min(4096))
            .map(|step| self.table[((hash % len as u64) as usize + step) % len] as usize)
            .find(|&t| ok(t))
    }
}

/// Smallest prime ≥ max(65537, 100 × targets).
fn table_size(targets: usize) -> usize {
    let mut n = MIN_TABLE_SIZE.max(targets.saturating_mul(100));
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// Whether `n` is prime (trial division: table sizes are at most about a million).
pub fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn shares_follow_weights() {
        let weights = [1, 2, 3, 4];
        let table = Maglev::build(&names(4), &weights, &[true; 4]);
        let mut counts = [0usize; 4];
        for slot in &table.table {
            counts[*slot as usize] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let share = counts[i] as f64 / table.table.len() as f64;
            let expected = f64::from(w) / 10.0;
            assert!(
                (share - expected).abs() < 0.01,
                "target {i}: share {share}, expected {expected}"
            );
        }
    }

    #[test]
    fn removing_a_target_moves_about_one_nth_of_keys() {
        let n = 5;
        let before = Maglev::build(&names(n), &[1; 5], &[true; 5]);
        let after = Maglev::build(&names(n), &[1; 5], &[true, true, false, true, true]);
        let keys = 10_000u64;
        let moved = (0..keys)
            .map(|k| fnv1a(0, &k.to_le_bytes()))
            .filter(|&h| {
                let (a, b) = (before.lookup(h), after.lookup(h));
                a != b && a != Some(2)
            })
            .count();
        let owned_by_removed = (0..keys)
            .filter(|k| before.lookup(fnv1a(0, &k.to_le_bytes())) == Some(2))
            .count();
        assert!(
            (1500..2500).contains(&owned_by_removed),
            "removed target owned {owned_by_removed}"
        );
        // Keys of surviving targets barely move (Maglev's bound is a few percent).
        assert!(
            moved < keys as usize / 50,
            "{moved} keys of live targets moved"
        );
    }

    #[test]
    fn identical_inputs_build_identical_tables() {
        let a = Maglev::build(&names(7), &[1, 1, 2, 1, 1, 3, 1], &[true; 7]);
        let b = Maglev::build(&names(7), &[1, 1, 2, 1, 1, 3, 1], &[true; 7]);
        assert_eq!(a.table, b.table);
    }
}
