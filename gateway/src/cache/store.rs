//! One worker's cached responses: a weighted CLOCK-Pro cache (quick_cache, unsynchronized:
//! the worker owns it) keyed by the hash of the request's cache key, holding the
//! variants a `Vary` header asks for. Its byte weight is capped per worker; the coldest
//! entries leave first.

use std::{
    rc::Rc,
    time::{Duration, Instant},
};

use crate::http::fields::Fields;

/// Most variants (different `Vary` values) kept per key.
const MAX_VARIANTS: usize = 8;

/// One stored response (cheap to clone: the bytes are shared).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The full cache key, to rule out hash collisions and to purge by prefix.
    pub key: Rc<[u8]>,
    /// The `Vary` header names (lower-case) with the request values this variant is for.
    pub vary: Vec<(String, Option<Vec<u8>>)>,
    pub status: u16,
    /// Header lines to send back (end-to-end fields only, no framing).
    pub head: Rc<[u8]>,
    pub body: Rc<[u8]>,
    pub stored_at: Instant,
    /// The `Age` the upstream reported.
    pub initial_age: Duration,
    /// How long after its creation the response is fresh.
    pub freshness: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// Stale uses need a successful revalidation (`must-revalidate`).
    pub must_revalidate: bool,
    pub etag: Option<Vec<u8>>,
    pub last_modified: Option<Vec<u8>>,
}

impl Stored {
    /// How old the response is now (RFC 9111 §4.2.3, with the upstream's Age).
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    /// Whether it may be served without revalidation.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.freshness
    }

    /// How far past its freshness it is (zero while fresh).
    pub fn staleness(&self, now: Instant) -> Duration {
        self.age(now).saturating_sub(self.freshness)
    }

    /// Whether this variant answers a request with `fields`.
    fn serves(&self, fields: &Fields) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| fields.get(name.as_bytes()) == value.as_deref())
    }

    fn weight(&self) -> u64 {
        (self.key.len() + self.head.len() + self.body.len() + 256) as u64
    }
}

/// The variants of one key.
#[derive(Debug, Clone)]
struct Variants(Vec<Rc<Stored>>);

#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<u64, Variants> for ByBytes {
    fn weight(&self, _key: &u64, value: &Variants) -> u64 {
        value.0.iter().map(|s| s.weight()).sum()
    }
}

/// A worker's cache.
pub struct Store {
    entries: quick_cache::unsync::Cache<u64, Variants, ByBytes>,
    /// Largest body stored.
    pub max_entry: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .finish()
    }
}

impl Store {
    /// An empty cache holding up to `max_bytes`, with bodies up to `max_entry`.
    pub fn new(max_bytes: u64, max_entry: usize) -> Self {
        let estimated = usize::try_from(max_bytes / 8192).unwrap_or(1024).max(16);
        Self {
            entries: quick_cache::unsync::Cache::with_weighter(
                estimated,
                max_bytes.max(1),
                ByBytes,
            ),
            max_entry,
        }
    }

    /// The variant stored under `key` (hash `hash`) that answers a request with `fields`.
    pub fn lookup(&self, hash: u64, key: &[u8], fields: &Fields) -> Option<Rc<Stored>> {
        self.entries
            .get(&hash)?
            .0
            .iter()
            .find(|s| &*s.key == key && s.serves(fields))
            .cloned()
    }

    /// Stores `stored` under `hash`, replacing the variant with the same `Vary` values.
    pub fn insert(&mut self, hash: u64, stored: Stored) {
        if stored.body.len() > self.max_entry {
            return;
        }
        let stored = Rc::new(stored);
        let mut variants = match self.entries.peek(&hash) {
            Some(v) if v.0.first().is_some_and(|s| s.key == stored.key) => v.clone(),
            _ => Variants(Vec::new()),
        };
        variants.0.retain(|s| s.vary != stored.vary);
        if variants.0.len() >= MAX_VARIANTS {
            variants.0.remove(0);
        }
        variants.0.push(stored);
        self.entries.insert(hash, variants);
    }

    /// Removes every response whose key is `key` (`exact`) or starts with it; returns
    /// how many keys went.
    pub fn purge(&mut self, key: &[u8], exact: bool) -> usize {
        let doomed: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, v)| {
                v.0.first().is_some_and(|s| {
                    if exact {
                        &*s.key == key
                    } else {
                        s.key.starts_with(key)
                    }
                })
            })
            .map(|(hash, _)| *hash)
            .collect();
        for hash in &doomed {
            self.entries.remove(hash);
        }
        doomed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::response::fields_of as fields;

    fn stored(key: &str, vary: Vec<(String, Option<Vec<u8>>)>, body: usize) -> Stored {
        Stored {
            key: Rc::from(key.as_bytes()),
            vary,
            status: 200,
            head: Rc::from(&b""[..]),
            body: Rc::from(vec![b'x'; body]),
            stored_at: Instant::now(),
            initial_age: Duration::ZERO,
            freshness: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            etag: None,
            last_modified: None,
        }
    }

    #[test]
    fn variants_follow_vary_and_keys_are_verified() {
        let mut store = Store::new(1 << 20, 1 << 16);
        let lang = |v: &str| vec![("accept-language".to_owned(), Some(v.as_bytes().to_vec()))];
        store.insert(1, stored("GET a/x", lang("en"), 10));
        store.insert(1, stored("GET a/x", lang("de"), 20));
        let en = fields("Accept-Language: en\r\n");
        let de = fields("Accept-Language: de\r\n");
        assert_eq!(
            store.lookup(1, b"GET a/x", &en).map(|s| s.body.len()),
            Some(10)
        );
        assert_eq!(
            store.lookup(1, b"GET a/x", &de).map(|s| s.body.len()),
            Some(20)
        );
        assert!(store.lookup(1, b"GET a/x", &fields("")).is_none());
        assert!(store.lookup(1, b"GET a/y", &en).is_none(), "hash collision");
        // The same variant again replaces the old one.
        store.insert(1, stored("GET a/x", lang("en"), 30));
        assert_eq!(
            store.lookup(1, b"GET a/x", &en).map(|s| s.body.len()),
            Some(30)
        );
    }

    #[test]
    fn purge_by_key_or_prefix_and_the_cap_holds() {
        let mut store = Store::new(64 * 1024, 16 * 1024);
        for i in 0..4u64 {
            store.insert(i, stored(&format!("GET a/img/{i}"), vec![], 100));
        }
        store.insert(9, stored("GET a/doc", vec![], 100));
        assert_eq!(store.purge(b"GET a/img/1", true), 1);
        assert_eq!(store.purge(b"GET a/img/", false), 3);
        assert_eq!(store.entries.len(), 1);
        assert!(store.lookup(9, b"GET a/doc", &fields("")).is_some());
        store.insert(10, stored("GET a/huge", vec![], 20 * 1024));
        assert!(
            store.lookup(10, b"GET a/huge", &fields("")).is_none(),
            "over max_entry"
        );
        for i in 100..200u64 {
            store.insert(i, stored(&format!("GET a/{i}"), vec![], 8 * 1024));
        }
        assert!(
            store.entries.weight() <= 64 * 1024,
            "{} bytes",
            store.entries.weight()
        );
    }
}
