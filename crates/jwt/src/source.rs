//! Where a rule's key set comes from: inline `jwks` (parsed once per configuration) or the
//! last good fetch of its `jwksUri`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use zmesh_policy::set::JwtRules;

use crate::keys::KeySet;

/// Gives the key set to verify a rule's tokens with.
pub trait KeySource {
    /// The key set for `rules.rules[index]`; `None` when there is none to use (a `jwksUri`
    /// never fetched successfully, an unusable inline set, or neither configured), and then
    /// the rule's tokens fail closed.
    fn key_set(&self, rules: &Arc<JwtRules>, index: usize) -> Option<Arc<KeySet>>;
}

/// The rules an inline set belongs to (pinning their address) and the set, if usable.
type InlineEntry = (Weak<JwtRules>, Option<Arc<KeySet>>);

/// Inline key sets, parsed on first use and kept while their configuration lives.
///
/// Keyed by the address of the `JwtRules` allocation, which a `Weak` pins so it is never
/// reused for other rules while the entry exists; entries of dropped configurations are pruned
/// when new ones are added.
#[derive(Debug, Default)]
pub struct InlineKeySets {
    sets: Mutex<HashMap<(usize, usize), InlineEntry>>,
}

impl InlineKeySets {
    /// The parsed inline set of `rules.rules[index]`, or `None` if it has none or it is
    /// unusable.
    pub fn get(&self, rules: &Arc<JwtRules>, index: usize) -> Option<Arc<KeySet>> {
        let document = rules.rules.get(index)?.jwks.as_ref()?;
        let key = (Arc::as_ptr(rules) as usize, index);
        let mut sets = self.sets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, set)) = sets.get(&key) {
            return set.clone();
        }
        sets.retain(|_, (owner, _)| owner.strong_count() > 0);
        let set = KeySet::from_value(document).ok().map(Arc::new);
        sets.insert(key, (Arc::downgrade(rules), set.clone()));
        set
    }
}

/// A fixed set of fetched documents by URI plus inline sets: for offline checks, tests and
/// benches, where nothing is fetched.
#[derive(Debug, Default)]
pub struct StaticKeys {
    remote: HashMap<String, Arc<KeySet>>,
    inline: InlineKeySets,
}

impl StaticKeys {
    pub fn new() -> StaticKeys {
        StaticKeys::default()
    }

    /// Serve `set` for rules whose `jwksUri` is `uri`.
    pub fn with_remote(mut self, uri: &str, set: KeySet) -> StaticKeys {
        self.remote.insert(uri.to_owned(), Arc::new(set));
        self
    }
}

impl KeySource for StaticKeys {
    fn key_set(&self, rules: &Arc<JwtRules>, index: usize) -> Option<Arc<KeySet>> {
        let rule = rules.rules.get(index)?;
        match (&rule.jwks, &rule.jwks_uri) {
            (Some(_), _) => self.inline.get(rules, index),
            (None, Some(uri)) => self.remote.get(uri).cloned(),
            (None, None) => None,
        }
    }
}
