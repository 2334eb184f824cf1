//! The federation store of a single relay process: everything in memory, gone with it.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{down_for_ms, FederationStore, Health, Outbound, StoreError};

#[derive(Default)]
struct Queue {
    items: HashMap<String, (Outbound, u64)>,
    due: BTreeSet<(u64, String)>,
}

/// Most replay marks the memory store holds by default: about 100 MB at the longest keys.
pub const DEFAULT_MAX_MARKS: usize = 1_000_000;

/// Replay marks with their expiry, oldest expiry first, so expired marks leave one by one as
/// calls come in (no rescan of the whole set).
#[derive(Default)]
struct Marks {
    until: HashMap<String, u64>,
    by_expiry: BTreeSet<(u64, String)>,
}

impl Marks {
    fn expire(&mut self, now: u64) {
        while let Some((until, key)) = self.by_expiry.first().cloned() {
            if until > now {
                break;
            }
            self.by_expiry.pop_first();
            self.until.remove(&key);
        }
    }

    fn live(&self, key: &str, now: u64) -> bool {
        self.until.get(key).is_some_and(|until| *until > now)
    }

    fn remove(&mut self, key: &str) {
        if let Some(until) = self.until.remove(key) {
            self.by_expiry.remove(&(until, key.to_string()));
        }
    }
}

/// Queues, health and replay marks held in this process.
pub struct MemoryStore {
    queues: Mutex<HashMap<String, Queue>>,
    health: Mutex<HashMap<String, Health>>,
    seen: Mutex<Marks>,
    max_marks: usize,
    identity: Mutex<Option<String>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_max_marks(DEFAULT_MAX_MARKS)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// An empty store holding at most `max_marks` live replay marks: past it, new marks are
    /// refused (the sender retries later) rather than growing memory without bound.
    pub fn with_max_marks(max_marks: usize) -> MemoryStore {
        MemoryStore {
            queues: Mutex::default(),
            health: Mutex::default(),
            seen: Mutex::default(),
            max_marks: max_marks.max(1),
            identity: Mutex::default(),
        }
    }

    /// Live replay marks held now.
    pub fn marks(&self) -> usize {
        self.seen.lock().until.len()
    }
}

use crate::now_ms;

#[async_trait]
impl FederationStore for MemoryStore {
    async fn push(
        &self,
        domain: &str,
        id: &str,
        item: &Outbound,
        due_ms: u64,
    ) -> Result<(), StoreError> {
        let mut queues = self.queues.lock();
        let q = queues.entry(domain.to_string()).or_default();
        if let Some((_, old_due)) = q.items.remove(id) {
            q.due.remove(&(old_due, id.to_string()));
        }
        q.items.insert(id.to_string(), (item.clone(), due_ms));
        q.due.insert((due_ms, id.to_string()));
        Ok(())
    }

    async fn claim(
        &self,
        domain: &str,
        now_ms: u64,
        max: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<(String, Outbound)>, StoreError> {
        let mut queues = self.queues.lock();
        let Some(q) = queues.get_mut(domain) else {
            return Ok(Vec::new());
        };
        let ids: Vec<(u64, String)> = q
            .due
            .iter()
            .take_while(|(due, _)| *due <= now_ms)
            .take(max)
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for (due, id) in ids {
            q.due.remove(&(due, id.clone()));
            if let Some(entry) = q.items.get_mut(&id) {
                entry.1 = lease_until_ms;
                q.due.insert((lease_until_ms, id.clone()));
                out.push((id, entry.0.clone()));
            }
        }
        Ok(out)
    }

    async fn remove(&self, domain: &str, ids: &[String]) -> Result<(), StoreError> {
        let mut queues = self.queues.lock();
        if let Some(q) = queues.get_mut(domain) {
            for id in ids {
                if let Some((_, due)) = q.items.remove(id) {
                    q.due.remove(&(due, id.clone()));
                }
            }
        }
        Ok(())
    }

    async fn domains(&self) -> Result<Vec<String>, StoreError> {
        let queues = self.queues.lock();
        Ok(queues.keys().cloned().collect())
    }

    async fn retire_if_empty(&self, domain: &str) -> Result<(), StoreError> {
        let mut queues = self.queues.lock();
        if queues.get(domain).is_some_and(|q| q.items.is_empty()) {
            queues.remove(domain);
        }
        Ok(())
    }

    async fn depth(&self, domain: &str) -> Result<u64, StoreError> {
        let queues = self.queues.lock();
        Ok(queues.get(domain).map_or(0, |q| q.items.len() as u64))
    }

    async fn health(&self, domains: &[String]) -> Result<Vec<Health>, StoreError> {
        let health = self.health.lock();
        Ok(domains
            .iter()
            .map(|d| health.get(d).copied().unwrap_or_default())
            .collect())
    }

    async fn report(&self, domain: &str, ok: bool, now_ms: u64) -> Result<(), StoreError> {
        let mut health = self.health.lock();
        let h = health.entry(domain.to_string()).or_default();
        if ok {
            *h = Health::default();
        } else {
            h.failures = h.failures.saturating_add(1);
            h.down_until_ms = now_ms + down_for_ms(h.failures);
        }
        Ok(())
    }

    async fn first_seen(&self, key: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut marks = self.seen.lock();
        marks.expire(now);
        if marks.live(key, now) {
            return Ok(false);
        }
        if marks.until.len() >= self.max_marks {
            return Err(StoreError("replay marks full; retry later".into()));
        }
        let until = now.saturating_add(ttl_ms);
        marks.until.insert(key.to_string(), until);
        marks.by_expiry.insert((until, key.to_string()));
        Ok(true)
    }

    async fn seen(&self, key: &str) -> Result<bool, StoreError> {
        let marks = self.seen.lock();
        Ok(marks.live(key, now_ms()))
    }

    async fn unsee(&self, key: &str) -> Result<(), StoreError> {
        self.seen.lock().remove(key);
        Ok(())
    }

    async fn shared_identity(&self, candidate: &str) -> Result<String, StoreError> {
        let mut identity = self.identity.lock();
        Ok(identity
            .get_or_insert_with(|| candidate.to_string())
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replay_marks_expire_one_by_one_and_stay_within_the_cap() {
        let store = MemoryStore::with_max_marks(2);
        assert!(store.first_seen("a", 1).await.expect("store"));
        assert!(store.first_seen("b", 60_000).await.expect("store"));
        assert!(!store.first_seen("b", 60_000).await.expect("store"));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        // "a" expired: it leaves, making room for "c".
        assert!(store.first_seen("c", 60_000).await.expect("store"));
        assert_eq!(store.marks(), 2);
        assert!(
            store.first_seen("d", 60_000).await.is_err(),
            "a full store refuses new marks instead of growing"
        );
        assert!(store.seen("c").await.expect("store"));
        store.unsee("c").await.expect("store");
        assert!(!store.seen("c").await.expect("store"));
        assert!(store.first_seen("d", 60_000).await.expect("store"));
    }
}
