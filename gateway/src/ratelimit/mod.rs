//! Rate limits and concurrency limits: global across workers, lock-free on the request
//! path, bounded in memory whatever the number of keys.
//!
//! Method: GCRA (the generic cell rate algorithm, equivalent to a token bucket) on one
//! shared table of atomic cells. A cell is one 128-bit word holding a key's hash and its
//! *theoretical arrival time* (TAT); a request is admitted when
//! `TAT - now <= burst × interval` and moves the TAT one interval on with a single
//! compare-and-swap of the whole word, so taking a cell over for a new key and spending
//! from it can never interleave with another core's update of the old key. Every worker updates the same cell, so a
//! client spread over many connections and every worker gets exactly the configured rate
//! — there is no per-worker share to drift — and the only cross-core cost is that one CAS
//! on a cache line the key owns.
//!
//! The table ([`RateTable`]) is fixed-size and open-addressed: a key lives in one of
//! [`PROBE`] cells after its hash. A cell whose bucket has refilled completely holds no
//! information and is reused; when every probed cell is busy, the most idle one is taken
//! over. A key-rotating client therefore cannot grow memory, and the worst it can do is
//! hand a busy key a fresh burst. (Two cores meeting a brand-new key at the same instant
//! may each claim a cell for it: one extra burst, once; the spare cell then idles out.) Keys are hashed with a per-process random seed, so
//! nobody can aim collisions at a known key. The table outlives reloads: limit state
//! survives a config change (cells are keyed by limit name and key).

mod concurrency;
mod table;

use std::time::Duration;

pub use self::{
    concurrency::{InFlight, InFlightGuard},
    table::{Decision, RateTable, SLIDING_MAX},
};

/// A configured rate: `rate` requests per `per`, with up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period.
    pub count: u32,
    pub per: Duration,
    /// Requests that may arrive back to back (the bucket's capacity).
    pub burst: u32,
}

impl Rate {
    /// Nanoseconds between two requests at the sustained rate (at least 1).
    pub fn interval_ns(&self) -> u64 {
        (self.per.as_nanos() / u128::from(self.count.max(1))).clamp(1, u128::from(u64::MAX)) as u64
    }
}

/// What a rate limit is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address (after trusted-proxy resolution).
    ClientIp,
    /// The authenticated consumer; anonymous requests share one bucket.
    Consumer,
    /// One bucket for the whole route.
    Route,
    /// A request header's value (lower-case name); absent values share one bucket.
    Header(String),
    /// A claim of the verified JWT; absent claims share one bucket.
    Claim(String),
}

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitMode {
    /// GCRA (a token bucket): `burst` at once, then the sustained rate.
    #[default]
    Gcra,
    /// A sliding window: at most `count` in any window of `per` (estimated from the
    /// current and previous fixed windows), no burst beyond that.
    SlidingWindow,
}

/// One rate limit of the config: its name (the table key space), rate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpec {
    /// Unique per limit (`route:<name>` or `consumer:<name>`); keys its table cells.
    pub name: String,
    pub rate: Rate,
    pub key: LimitKey,
    pub mode: LimitMode,
}

impl LimitSpec {
    /// Counts one request for `key_hash` the way this limit counts.
    pub fn check(&self, table: &RateTable, key_hash: u64, now_ns: u64) -> Decision {
        match self.mode {
            LimitMode::Gcra => table.check(key_hash, &self.rate, now_ns),
            LimitMode::SlidingWindow => table.check_sliding(key_hash, &self.rate, now_ns),
        }
    }

    /// Requests that fit now for `key_hash`, taking nothing.
    pub fn peek(&self, table: &RateTable, key_hash: u64, now_ns: u64) -> u32 {
        match self.mode {
            LimitMode::Gcra => table.peek(key_hash, &self.rate, now_ns),
            LimitMode::SlidingWindow => table.peek_sliding(key_hash, &self.rate, now_ns),
        }
    }

    /// `RateLimit-Limit`: the burst for GCRA, the window's count for sliding windows.
    pub fn limit(&self) -> u32 {
        match self.mode {
            LimitMode::Gcra => self.rate.burst,
            LimitMode::SlidingWindow => self.rate.count,
        }
    }
}
