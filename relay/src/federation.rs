//! Wiring of `rmb-federation` into the relay: settings from the config, the store matching
//! the backplane (Redis or memory), and delivery of federated envelopes into the backplane.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rmb_federation::{
    ClientSettings, Delivered, Federation, FederationStore, LocalDelivery, MemoryStore, RedisStore,
    RelayKey, Settings,
};
use rmb_identity::TwinDirectory;

use crate::backplane::{Backplane, Routed};
use crate::config::{Config, ConfigError};
use crate::hub::{Queued, Receipt};
use crate::key::SessionKey;
use crate::metrics::Metrics;
use crate::StartError;

/// Puts federated envelopes (and the relay's own error envelopes) into the backplane.
struct BackplaneDelivery {
    backplane: Arc<dyn Backplane>,
}

#[async_trait]
impl LocalDelivery for BackplaneDelivery {
    async fn deliver(
        &self,
        twin: u32,
        sid: Option<&str>,
        frame: Bytes,
        expires_at: u64,
        fail_fast: bool,
    ) -> Delivered {
        let key = SessionKey::new(twin, sid);
        let item = Queued {
            frame,
            expires_at,
            accepted: Instant::now(),
            receipt: Receipt::Local,
        };
        match self.backplane.route(&key, item, fail_fast).await {
            Ok(Routed::Online | Routed::Mailbox) => Delivered::Accepted,
            Ok(Routed::Offline) => Delivered::Offline,
            Ok(Routed::MailboxFull) => Delivered::Full,
            Ok(Routed::Draining) => Delivered::Unavailable("relay is draining".into()),
            Err(e) => Delivered::Unavailable(e.to_string()),
        }
    }
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> StartError {
    StartError::Config(ConfigError::Invalid {
        setting,
        reason: reason.into(),
    })
}

/// Federation for this relay, when `--identity-key` is set.
pub(crate) async fn open(
    config: &Config,
    directory: &Arc<dyn TwinDirectory>,
    backplane: &Arc<dyn Backplane>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<Federation>>, StartError> {
    let Some(path) = &config.identity_key else {
        return Ok(None);
    };
    let key = RelayKey::load(path).map_err(|e| invalid("identity-key", e.to_string()))?;
    let store: Arc<dyn FederationStore> = match &config.redis {
        Some(url) => Arc::new(
            RedisStore::connect(url, Duration::from_millis(config.redis_timeout_ms))
                .await
                .map_err(|e| invalid("redis", e.to_string()))?,
        ),
        None => Arc::new(MemoryStore::new()),
    };
    let settings = Settings {
        domains: config
            .domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        client: ClientSettings {
            resolve: config.federation_resolve_map()?,
            insecure_http: config
                .federation_insecure_http
                .iter()
                .map(|d| d.trim().to_ascii_lowercase())
                .collect(),
            ca_file: config.federation_ca_file.clone(),
            timeout: Duration::from_millis(config.federation_timeout_ms),
        },
        max_skew: config.federation_max_skew,
        key_cache_ttl: Duration::from_secs(config.federation_key_cache_seconds),
        batch_max: config.federation_batch,
        max_backoff: Duration::from_secs(config.federation_max_backoff_seconds),
        max_envelope_bytes: config.max_envelope_bytes,
        max_ttl: config.max_ttl,
        max_request_bytes: config.federation_max_request_bytes,
        legacy: config.federation_legacy,
        queue_max: config.federation_queue_max,
    };
    let local = Arc::new(BackplaneDelivery {
        backplane: backplane.clone(),
    });
    let federation = Federation::new(
        settings,
        key.clone(),
        store,
        directory.clone(),
        local,
        metrics.registry(),
    )
    .map_err(|e| invalid("identity-key", e.to_string()))?;
    tracing::info!(kid = key.kid(), domains = ?config.domains, "federation enabled");
    Ok(Some(federation))
}
