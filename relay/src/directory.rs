//! Which twin directory the relay reads (a twins file or tfchain), the cache in front of
//! it, and the metrics of the chain client.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Registry};
use rmb_common::metrics::{MetricError, Registrar};
use rmb_identity::directory::{CacheStats, SubstrateDirectory, SubstrateSettings, SubstrateStats};
use rmb_identity::{CachedDirectory, FileDirectory, TwinDirectory};
use std::sync::atomic::Ordering;

use rmb_identity::DirectoryError;

use crate::config::DirectoryArgs;
use crate::error::StartError;
use crate::limits::KeyedLimiter;
use crate::metrics::{Limit, Metrics};

/// The chain behind a global budget (`--directory-lookup-rate`): the cache answers repeated
/// lookups, but every handshake token, routed envelope or federated envelope can name a twin
/// id never seen, and each such lookup is a chain round trip. Past the budget the lookup
/// fails as "unavailable" (not cached): the caller is told to retry later, the chain is
/// spared. A twins file is local and needs no budget.
struct Budgeted<D> {
    inner: Arc<D>,
    budget: KeyedLimiter<()>,
    refused: Option<IntCounter>,
}

#[async_trait::async_trait]
impl<D: TwinDirectory> TwinDirectory for Budgeted<D> {
    async fn twin(&self, id: u32) -> Result<Option<Arc<rmb_identity::Twin>>, DirectoryError> {
        if !self.budget.take(()) {
            if let Some(refused) = &self.refused {
                refused.inc();
            }
            return Err(DirectoryError::Unavailable(
                "directory lookup budget spent (--directory-lookup-rate)".into(),
            ));
        }
        self.inner.twin(id).await
    }

    async fn twin_id_by_account(&self, account: &[u8; 32]) -> Result<Option<u32>, DirectoryError> {
        self.inner.twin_id_by_account(account).await
    }

    fn changes(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<rmb_identity::directory::TwinChange>> {
        self.inner.changes()
    }
}

/// The opened directory and the counters its metrics are read from.
pub(crate) struct OpenedDirectory {
    pub(crate) directory: Arc<dyn TwinDirectory>,
    pub(crate) cache_stats: Arc<CacheStats>,
    pub(crate) chain: Option<ChainMetrics>,
}

/// Opens `--substrate` or `--twins` (validation made sure exactly one is set).
pub(crate) fn open(
    config: &DirectoryArgs,
    metrics: &Metrics,
) -> Result<OpenedDirectory, StartError> {
    let settings = config.cache_settings();
    if !config.substrate.is_empty() {
        let mut chain = SubstrateSettings::new(config.substrate.clone());
        chain.call_timeout = Duration::from_millis(config.substrate_timeout_ms);
        chain.connect_timeout = chain.call_timeout;
        let substrate = SubstrateDirectory::start(chain);
        tracing::info!(urls = ?config.substrate, "twin directory: tfchain");
        let chain_metrics = ChainMetrics::register(metrics.registry(), substrate.stats_handle())?;
        let budgeted = Arc::new(Budgeted {
            inner: substrate,
            budget: KeyedLimiter::new(config.directory_lookup_rate),
            refused: metrics.limit_counter(Limit::DirectoryLookups),
        });
        let cached = CachedDirectory::new(budgeted, settings);
        return Ok(OpenedDirectory {
            cache_stats: cached.stats_handle(),
            directory: cached,
            chain: Some(chain_metrics),
        });
    }
    let Some(path) = &config.twins else {
        return Err(StartError::setting("twins", "no twin directory configured"));
    };
    let file = FileDirectory::open(path)?;
    tracing::info!(path = %path.display(), twins = file.len(), "twin directory: file");
    file.watch(Duration::from_millis(config.twins_poll_ms));
    let cached = CachedDirectory::new(file, settings);
    Ok(OpenedDirectory {
        cache_stats: cached.stats_handle(),
        directory: cached,
        chain: None,
    })
}

/// Prometheus view of the tfchain client's counters, refreshed by housekeeping.
pub(crate) struct ChainMetrics {
    stats: Arc<SubstrateStats>,
    lookups: IntCounterVec,
    failovers: IntCounter,
    events: IntCounter,
    subscriptions: IntCounter,
    finalized_block: IntGauge,
    event_lag: Gauge,
}

impl ChainMetrics {
    fn register(
        registry: &Registry,
        stats: Arc<SubstrateStats>,
    ) -> Result<ChainMetrics, MetricError> {
        let r = Registrar::keeping_duplicates(registry);
        Ok(ChainMetrics {
            stats,
            lookups: r.counter_vec(
                "rmb_relay_chain_lookups_total",
                "tfchain storage lookups, by result (found, not_found, error)",
                &["result"],
            )?,
            failovers: r.counter(
                "rmb_relay_chain_failovers_total",
                "Times the tfchain client gave up on one RPC endpoint for the next",
            )?,
            events: r.counter(
                "rmb_relay_chain_twin_events_total",
                "TwinStored/TwinUpdated/TwinDeleted events applied from finalized blocks",
            )?,
            subscriptions: r.counter(
                "rmb_relay_chain_subscriptions_total",
                "Finalized-block subscriptions established (more than one: the feed was lost)",
            )?,
            finalized_block: r.gauge(
                "rmb_relay_chain_finalized_block",
                "Newest finalized block whose twin events were applied",
            )?,
            event_lag: r.float_gauge(
                "rmb_relay_chain_event_lag_seconds",
                "Wall clock minus the timestamp of the last applied finalized block",
            )?,
        })
    }

    /// Copies the client's counters into the exported metrics.
    pub(crate) fn sync(&self) {
        let s = &self.stats;
        for (label, value) in [
            ("found", &s.found),
            ("not_found", &s.not_found),
            ("error", &s.errors),
        ] {
            let counter = self.lookups.with_label_values(&[label]);
            Metrics::sync_counter(&counter, value.load(Ordering::Relaxed));
        }
        Metrics::sync_counter(&self.failovers, s.failovers.load(Ordering::Relaxed));
        Metrics::sync_counter(&self.events, s.events.load(Ordering::Relaxed));
        Metrics::sync_counter(&self.subscriptions, s.subscriptions.load(Ordering::Relaxed));
        self.finalized_block
            .set(s.finalized_block.load(Ordering::Relaxed) as i64);
        self.event_lag
            .set(s.event_lag_ms.load(Ordering::Relaxed) as f64 / 1000.0);
    }
}
