//! The memory behind the replay rules: keys remembered until a given unix second, bounded.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// Keys remembered until their own expiry (unix seconds), at most `capacity` of them.
/// Expired keys are forgotten as new ones arrive; when full, the key closest to its expiry
/// is forgotten first (its replay window was closing anyway), so memory stays bounded even
/// under a flood of valid envelopes.
#[derive(Debug)]
pub(crate) struct ExpiringSet<K> {
    until: HashMap<K, u64>,
    by_expiry: BTreeSet<(u64, K)>,
    capacity: usize,
}

impl<K: Hash + Ord + Clone> ExpiringSet<K> {
    pub(crate) fn new(capacity: usize) -> ExpiringSet<K> {
        ExpiringSet {
            until: HashMap::new(),
            by_expiry: BTreeSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether `key` is remembered at `now`.
    pub(crate) fn contains(&self, key: &K, now: u64) -> bool {
        self.until.get(key).is_some_and(|&until| until >= now)
    }

    /// Remembers `key` until `until`. Returns false, changing nothing, when it is remembered
    /// already: the caller holds a replay.
    pub(crate) fn insert(&mut self, key: K, until: u64, now: u64) -> bool {
        self.forget_expired(now);
        if self.contains(&key, now) {
            return false;
        }
        if self.until.len() >= self.capacity {
            if let Some((_, oldest)) = self.by_expiry.pop_first() {
                self.until.remove(&oldest);
            }
        }
        self.until.insert(key.clone(), until);
        self.by_expiry.insert((until, key));
        true
    }

    /// Forgets every key whose time is over at `now`.
    pub(crate) fn forget_expired(&mut self, now: u64) {
        while let Some((until, _)) = self.by_expiry.first() {
            if *until >= now {
                break;
            }
            if let Some((_, key)) = self.by_expiry.pop_first() {
                self.until.remove(&key);
            }
        }
    }

    /// How many keys are remembered (expired ones not yet forgotten included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_until_its_expiry_and_then_forgotten() {
        let mut set = ExpiringSet::new(10);
        assert!(set.insert("a", 100, 50));
        assert!(!set.insert("a", 200, 60), "a replay changes nothing");
        assert!(set.contains(&"a", 100));
        assert!(!set.contains(&"a", 101));
        assert!(set.insert("b", 300, 150), "inserting forgets what expired");
        assert_eq!(set.len(), 1);
        assert!(
            set.insert("a", 400, 150),
            "after its expiry a key is new again"
        );
    }

    #[test]
    fn when_full_the_key_closest_to_its_expiry_goes_first() {
        let mut set = ExpiringSet::new(3);
        for (key, until) in [("late", 900), ("soon", 200), ("mid", 500)] {
            assert!(set.insert(key, until, 100));
        }
        assert!(set.insert("new", 600, 100));
        assert_eq!(set.len(), 3);
        assert!(!set.contains(&"soon", 100));
        for key in ["late", "mid", "new"] {
            assert!(set.contains(&key, 100), "{key}");
        }
    }
}
