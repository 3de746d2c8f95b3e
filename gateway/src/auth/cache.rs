//! Per-worker cache of verified tokens: bounded, keyed by a seeded hash of the token and
//! confirmed by comparing the token itself, never valid past the token's expiry.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    rc::Rc,
};

use super::Identity;

struct Entry {
    provider: usize,
    token: Box<[u8]>,
    identity: Rc<Identity>,
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
            seed: RandomState::new(),
            capacity,
        }
    }

    fn key(&self, provider: usize, token: &[u8]) -> u64 {
        self.seed.hash_one((provider, token))
    }

    /// The identity `token` verified to under `provider`, if still valid at `now`.
    pub fn get(&self, provider: usize, token: &[u8], now: u64) -> Option<Rc<Identity>> {
        let entry = self.entries.get(&self.key(provider, token))?;
        (entry.provider == provider && *entry.token == *token && now < entry.identity.expires_at)
            .then(|| entry.identity.clone())
    }

    /// Remembers a verified token; returns the shared identity.
    pub fn insert(
        &mut self,
        provider: usize,
        token: &[u8],
        identity: Identity,
        now: u64,
    ) -> Rc<Identity> {
        let identity = Rc::new(identity);
        if self.capacity == 0 {
            return identity;
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| now < e.identity.expires_at);
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
                identity: identity.clone(),
            },
        );
        identity
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
        assert!(cache.get(0, b"token", 99).is_some());
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
