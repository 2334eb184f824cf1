//! A bounded, expiring cache in front of any directory.
//!
//! One lookup per twin is in flight at a time (concurrent callers share it), misses are cached
//! briefly so a flood of handshakes for a non-existent twin does not reach the chain, and
//! errors are never cached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache;
use moka::Expiry;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{DirectoryError, TwinChange, TwinDirectory};
use crate::twin::Twin;

/// Cache bounds.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// How long a found twin is served from cache.
    pub ttl: Duration,
    /// How long "no such twin" is served from cache.
    pub negative_ttl: Duration,
    /// Most twins kept.
    pub capacity: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(10),
            capacity: 100_000,
        }
    }
}

/// Hit and miss counters, for metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Lookups answered from cache.
    pub hits: AtomicU64,
    /// Lookups that went to the inner directory.
    pub misses: AtomicU64,
    /// Lookups that failed in the inner directory.
    pub errors: AtomicU64,
}

type Entry = Option<Arc<Twin>>;

/// Caches another directory's answers.
pub struct CachedDirectory<D> {
    inner: Arc<D>,
    by_id: Cache<u32, Entry>,
    settings: CacheSettings,
    stats: Arc<CacheStats>,
}

struct EntryExpiry(CacheSettings);

impl Expiry<u32, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &u32, value: &Entry, _: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.0.ttl
        } else {
            self.0.negative_ttl
        })
    }
}

impl<D: TwinDirectory> CachedDirectory<D> {
    /// Wraps `inner`; if it publishes change notices, entries are invalidated as they arrive.
    pub fn new(inner: Arc<D>, settings: CacheSettings) -> Arc<Self> {
        let by_id = Cache::builder()
            .max_capacity(settings.capacity)
            .expire_after(EntryExpiry(settings))
            .build();
        let dir = Arc::new(CachedDirectory {
            inner,
            by_id,
            settings,
            stats: Arc::default(),
        });
        if let Some(rx) = dir.inner.changes() {
            tokio::spawn(invalidate_on_change(Arc::downgrade(&dir), rx));
        }
        dir
    }

    /// Drops one twin from the cache.
    pub async fn invalidate(&self, id: u32) {
        self.by_id.invalidate(&id).await;
    }

    /// Drops every cached twin.
    pub fn invalidate_all(&self) {
        self.by_id.invalidate_all();
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// A handle on the counters that outlives borrows (for a metrics task).
    pub fn stats_handle(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> CacheSettings {
        self.settings
    }

    /// The wrapped directory.
    pub fn inner(&self) -> &Arc<D> {
        &self.inner
    }
}

async fn invalidate_on_change<D: TwinDirectory>(
    dir: std::sync::Weak<CachedDirectory<D>>,
    mut rx: broadcast::Receiver<TwinChange>,
) {
    loop {
        let change = rx.recv().await;
        let Some(dir) = dir.upgrade() else { return };
        match change {
            Ok(Some(id)) => dir.invalidate(id).await,
            Ok(None) | Err(RecvError::Lagged(_)) => dir.invalidate_all(),
            Err(RecvError::Closed) => return,
        }
    }
}

#[async_trait]
impl<D: TwinDirectory> TwinDirectory for CachedDirectory<D> {
    async fn twin(&self, id: u32) -> Result<Option<Arc<Twin>>, DirectoryError> {
        if let Some(hit) = self.by_id.get(&id).await {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let inner = self.inner.clone();
        let stats = self.stats.clone();
        self.by_id
            .try_get_with(id, async move {
                stats.misses.fetch_add(1, Ordering::Relaxed);
                inner.twin(id).await
            })
            .await
            .map_err(|e| {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                (*e).clone()
            })
    }

    async fn twin_id_by_account(&self, account: &[u8; 32]) -> Result<Option<u32>, DirectoryError> {
        // Used once per peer start-up, not per message: not worth a second cache.
        self.inner.twin_id_by_account(account).await
    }

    fn changes(&self) -> Option<broadcast::Receiver<TwinChange>> {
        self.inner.changes()
    }
}
