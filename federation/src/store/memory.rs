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

/// Queues, health and replay marks held in this process.
#[derive(Default)]
pub struct MemoryStore {
    queues: Mutex<HashMap<String, Queue>>,
    health: Mutex<HashMap<String, Health>>,
    seen: Mutex<HashMap<String, u64>>,
    identity: Mutex<Option<String>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
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
        let mut seen = self.seen.lock();
        if seen.len() > 100_000 {
            seen.retain(|_, until| *until > now);
        }
        match seen.get(key) {
            Some(until) if *until > now => Ok(false),
            _ => {
                seen.insert(key.to_string(), now + ttl_ms);
                Ok(true)
            }
        }
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
