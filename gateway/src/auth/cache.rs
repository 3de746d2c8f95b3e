//! Per-worker cache of verified tokens: bounded, keyed by a seeded hash of the token (a
//! fast hash: a collision costs a comparison, never an identity, since the entry is
//! confirmed by comparing the token itself), never valid past the token's expiry. It also
//! remembers, briefly, tokens an introspection server called inactive.

use std::{collections::HashMap, hash::BuildHasher, rc::Rc};

use foldhash::fast::RandomState;

use super::Identity;

struct Entry {
    provider: usize,
    token: Box<[u8]>,
    /// `None`: known inactive.
    identity: Option<Rc<Identity>>,
    /// Unix seconds the entry stops being valid.
    until: u64,
}

/// Verified tokens of one worker (cleared on reload: identities depend on the config).
pub struct TokenCache {
    entries: HashMap<u64, Entry>,
    seed: RandomState,
    capacity: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            seed: RandomState::default(),
            capacity,
        }
    }

    fn key(&self, provider: usize, token: &[u8]) -> u64 {
        self.seed.hash_one((provider, token))
    }

    /// What is known of `token` under `provider` at `now`: `Some(Some(identity))`
    /// verified, `Some(None)` known inactive, `None` unknown.
    pub fn get(&self, provider: usize, token: &[u8], now: u64) -> Option<Option<Rc<Identity>>> {
        let entry = self.entries.get(&self.key(provider, token))?;
        (entry.provider == provider && *entry.token == *token && now < entry.until)
            .then(|| entry.identity.clone())
    }

    /// Remembers a verified token until its expiry; returns the shared identity.
    pub fn insert(
        &mut self,
        provider: usize,
        token: &[u8],
        identity: Identity,
        now: u64,
    ) -> Rc<Identity> {
        let until = identity.expires_at;
        let identity = Rc::new(identity);
        self.remember(provider, token, Some(identity.clone()), until, now);
        identity
    }

    /// Remembers that `token` is inactive until `until`.
    pub fn insert_inactive(&mut self, provider: usize, token: &[u8], until: u64, now: u64) {
        self.remember(provider, token, None, until, now);
    }

    fn remember(
        &mut self,
        provider: usize,
        token: &[u8],
        identity: Option<Rc<Identity>>,
        until: u64,
        now: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| now < e.until);
            // Still full of live tokens: forget every other one (bounded either way).
            let mut keep = false;
            if self.entries.len() >= self.capacity {
                self.entries.retain(|_, _| {
                    keep = !keep;
                    keep
                });
            }
        }
        self.entries.insert(
            self.key(provider, token),
            Entry {
                provider,
                token: token.into(),
                identity,
                until,
            },
        );
    }

    /// Tokens cached now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(expires_at: u64) -> Identity {
        Identity {
            consumer: None,
            subject: Some("s".into()),
            scopes: Vec::new(),
            claims: Vec::new(),
            expires_at,
        }
    }

    #[test]
    fn hits_only_the_same_token_and_provider_before_expiry() {
        let mut cache = TokenCache::new(8);
        cache.insert(0, b"token", identity(100), 10);
        assert!(cache.get(0, b"token", 99).is_some_and(|i| i.is_some()));
        cache.insert_inactive(2, b"opaque", 50, 10);
        assert!(cache.get(2, b"opaque", 49).is_some_and(|i| i.is_none()));
        assert!(cache.get(2, b"opaque", 50).is_none());
        assert!(cache.get(0, b"token", 100).is_none(), "expired");
        assert!(cache.get(1, b"token", 50).is_none(), "another provider");
        assert!(cache.get(0, b"tokem", 50).is_none());
    }

    #[test]
    fn stays_bounded() {
        let mut cache = TokenCache::new(16);
        for i in 0..1000u32 {
            cache.insert(0, &i.to_be_bytes(), identity(u64::MAX), 0);
            assert!(cache.len() <= 16);
        }
    }
}
