//! Verified tokens, so a client that sends the same token on every request pays for one
//! signature check, not one per request.
//!
//! An entry is keyed by the SHA-256 of the token (a collision-resistant digest, since a hit
//! hands out claims without checking a signature) and the rule that verified it. The rule is
//! identified by the address of its `JwtRules` allocation, pinned by a `Weak` so the address
//! cannot be reused while the entry lives: a new configuration always gives new rules, so an
//! entry never outlives the issuer/audience settings it was checked against. The entry also
//! records the key set generation; a replaced key set makes it stale. Expiry is checked again
//! on every hit.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use serde_json::{Map, Value};
use zmesh_policy::Claims;
use zmesh_policy::set::JwtRules;

/// The default bound: a few thousand distinct live tokens per proxy.
pub const DEFAULT_CAPACITY: usize = 4096;

pub(crate) type Digest = [u8; 32];

pub(crate) fn digest(token: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CacheKey {
    digest: Digest,
    rules: usize,
    index: usize,
}

/// What a verification established about a token under one rule.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) exp: Option<u64>,
    pub(crate) nbf: Option<u64>,
    /// The payload as sent (for `outputClaimToHeaders`).
    pub(crate) raw: Map<String, Value>,
    /// The payload with the rule's space-delimited claims split (for authorization).
    pub(crate) claims: Claims,
}

#[derive(Debug)]
struct Entry {
    rules: Weak<JwtRules>,
    generation: u64,
    verified: Arc<Verified>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<CacheKey, Entry>,
    /// Insertion order, oldest first, for eviction.
    order: VecDeque<CacheKey>,
}

/// A bounded, thread-safe cache of verified tokens.
#[derive(Debug)]
pub struct TokenCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(DEFAULT_CAPACITY)
    }
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache { inner: Mutex::new(Inner::default()), capacity: capacity.max(1) }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent in a way that
        // matters (entries are whole values), so a poisoned lock is still used.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(digest: &Digest, rules: &Arc<JwtRules>, index: usize) -> CacheKey {
        CacheKey { digest: *digest, rules: Arc::as_ptr(rules) as usize, index }
    }

    /// The verification of this token under this rule with the key set of `generation`.
    pub(crate) fn get(
        &self,
        digest: &Digest,
        rules: &Arc<JwtRules>,
        index: usize,
        generation: u64,
    ) -> Option<Arc<Verified>> {
        let inner = self.lock();
        let entry = inner.entries.get(&Self::key(digest, rules, index))?;
        (entry.generation == generation && Weak::as_ptr(&entry.rules) == Arc::as_ptr(rules))
            .then(|| entry.verified.clone())
    }

    pub(crate) fn insert(
        &self,
        digest: &Digest,
        rules: &Arc<JwtRules>,
        index: usize,
        generation: u64,
        verified: Arc<Verified>,
    ) {
        let key = Self::key(digest, rules, index);
        let entry = Entry { rules: Arc::downgrade(rules), generation, verified };
        let mut inner = self.lock();
        if inner.entries.insert(key, entry).is_some() {
            return;
        }
        inner.order.push_back(key);
        while inner.entries.len() > self.capacity {
            let Some(oldest) = inner.order.pop_front() else { break };
            inner.entries.remove(&oldest);
        }
    }

    /// Drop every entry (for a caller that wants to free memory at once on a change).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified() -> Arc<Verified> {
        Arc::new(Verified { exp: None, nbf: None, raw: Map::new(), claims: Claims::default() })
    }

    fn rules() -> Arc<JwtRules> {
        Arc::new(JwtRules { policy: "foo/jwt".into(), rules: vec![crate::tests::rule("i")] })
    }

    #[test]
    fn an_entry_is_served_only_for_the_same_rule_and_key_generation() {
        let cache = TokenCache::new(8);
        let (a, b) = (rules(), rules());
        let d = digest("t");
        cache.insert(&d, &a, 0, 7, verified());
        assert!(cache.get(&d, &a, 0, 7).is_some());
        assert!(cache.get(&d, &a, 0, 8).is_none(), "another key set generation");
        assert!(cache.get(&d, &a, 1, 7).is_none(), "another rule of the policy");
        assert!(cache.get(&d, &b, 0, 7).is_none(), "rules of another configuration");
        assert!(cache.get(&digest("u"), &a, 0, 7).is_none(), "another token");
    }

    #[test]
    fn the_oldest_entries_are_evicted_past_the_bound() {
        let cache = TokenCache::new(2);
        let a = rules();
        for token in ["1", "2", "3"] {
            cache.insert(&digest(token), &a, 0, 1, verified());
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&digest("1"), &a, 0, 1).is_none());
        assert!(cache.get(&digest("3"), &a, 0, 1).is_some());
    }
}
