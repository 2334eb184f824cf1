//! Which pod owns a session on another pod, remembered from the routing script's replies so
//! the next envelopes for it go straight to that pod's inbox without a `ROUTE` call.
//!
//! A wrong entry never loses mail: the pod it names re-routes an entry for a session it no
//! longer holds (`handle_entry`), and a dead pod's inbox is re-routed by the per-session and
//! whole-pod takeovers. It only costs a detour, so entries are dropped whenever ownership may
//! have changed: on a local attach or detach of the key, an evict, a failed append, a pod that
//! stopped beating, and after a short time to live.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::key::SessionKey;

/// Most session keys remembered (a few MB at most).
const MAX_ENTRIES: u64 = 100_000;

/// Session key → owner pod, trusted only while that pod beats.
pub(crate) struct OwnerCache {
    /// `None`: caching is off (time to live 0).
    owners: Option<moka::sync::Cache<SessionKey, Arc<str>>>,
    /// Pods whose heartbeat was recent at the last look ([`OwnerCache::set_live`]).
    live: RwLock<HashSet<Arc<str>>>,
}

impl OwnerCache {
    /// A cache whose entries live `ttl` (zero: no cache).
    pub fn new(ttl: Duration) -> OwnerCache {
        let owners = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl)
                .build()
        });
        OwnerCache {
            owners,
            live: RwLock::default(),
        }
    }

    /// Whether owners are cached at all.
    pub fn enabled(&self) -> bool {
        self.owners.is_some()
    }

    /// The pod that owns `key`, if known and still beating.
    pub fn get(&self, key: &SessionKey) -> Option<Arc<str>> {
        let owners = self.owners.as_ref()?;
        let pod = owners.get(key)?;
        if self.live.read().contains(&pod) {
            return Some(pod);
        }
        owners.invalidate(key);
        None
    }

    /// `key` is owned by `pod` (another pod), as the routing script just said.
    pub fn learned(&self, key: &SessionKey, pod: &str) {
        if let Some(owners) = &self.owners {
            owners.insert(key.clone(), Arc::from(pod));
        }
    }

    /// Ownership of `key` may have changed.
    pub fn forget(&self, key: &SessionKey) {
        if let Some(owners) = &self.owners {
            owners.invalidate(key);
        }
    }

    /// The pods that beat recently; entries naming any other pod are not trusted.
    pub fn set_live(&self, pods: HashSet<Arc<str>>) {
        *self.live.write() = pods;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(pods: &[&str]) -> HashSet<Arc<str>> {
        pods.iter().map(|p| Arc::from(*p)).collect()
    }

    #[test]
    fn an_owner_is_trusted_only_while_its_pod_beats() {
        let cache = OwnerCache::new(Duration::from_secs(60));
        let key = SessionKey::new(7, Some("s"));
        cache.set_live(live(&["pod-a", "pod-b"]));
        cache.learned(&key, "pod-a");
        assert_eq!(cache.get(&key).as_deref(), Some("pod-a"));
        cache.set_live(live(&["pod-b"]));
        assert_eq!(cache.get(&key), None, "pod-a stopped beating");
        cache.set_live(live(&["pod-a", "pod-b"]));
        assert_eq!(cache.get(&key), None, "dropped, not merely hidden");
    }

    #[test]
    fn forget_and_a_zero_ttl_leave_nothing_cached() {
        let cache = OwnerCache::new(Duration::from_secs(60));
        let key = SessionKey::new(7, None);
        cache.set_live(live(&["pod-a"]));
        cache.learned(&key, "pod-a");
        cache.forget(&key);
        assert_eq!(cache.get(&key), None);
        let off = OwnerCache::new(Duration::ZERO);
        off.set_live(live(&["pod-a"]));
        off.learned(&key, "pod-a");
        assert!(!off.enabled());
        assert_eq!(off.get(&key), None);
    }
}
