//! Wiring of `rmb-federation` into the relay: settings from the config, the store matching
//! the backplane (Redis or memory), and delivery of federated envelopes into the backplane.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rmb_federation::{
    Delivered, Federation, FederationError, FederationStore, LocalDelivery, MemoryStore,
    RedisStore, RelayKey,
};
use rmb_identity::TwinDirectory;

use crate::backplane::{Backplane, Routed};
use crate::config::Config;
use crate::error::StartError;
use crate::hub::{Queued, Receipt};
use crate::key::SessionKey;
use crate::metrics::Metrics;

/// Puts federated envelopes (and the relay's own error envelopes) into the backplane.
struct BackplaneDelivery {
    backplane: Arc<dyn Backplane>,
    metrics: Arc<Metrics>,
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
        let len = frame.len() as u64;
        let item = Queued {
            frame,
            expires_at,
            accepted: Instant::now(),
            receipt: Receipt::Local,
        };
        match self.backplane.route(&key, item, fail_fast).await {
            Ok(Routed::Online | Routed::Mailbox) => {
                self.metrics.accepted_for_delivery(len);
                Delivered::Accepted
            }
            Ok(Routed::Offline) => Delivered::Offline,
            Ok(Routed::MailboxFull) => Delivered::Full,
            Ok(Routed::OverBudget(budget)) => {
                self.metrics.limit(budget.into());
                Delivered::Full
            }
            Ok(Routed::Draining) => Delivered::Unavailable("relay is draining".into()),
            Err(e) => Delivered::Unavailable(e.to_string()),
        }
    }
}

/// Federation for this relay: on whenever it has a domain (and `--federation` is not false).
pub(crate) async fn open(
    config: &Config,
    directory: &Arc<dyn TwinDirectory>,
    backplane: &Arc<dyn Backplane>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<Federation>>, StartError> {
    if !config.federation.enabled {
        tracing::info!("federation off (--federation false): twins of other relays get error 114");
        return Ok(None);
    }
    if config.domains.is_empty() {
        tracing::info!("federation off: no --domain, every twin in the directory is served here");
        return Ok(None);
    }
    let store: Arc<dyn FederationStore> = match &config.backplane.redis {
        Some(url) => Arc::new(
            RedisStore::connect(url, config.backplane.command_timeout())
                .await
                .map_err(|e| StartError::setting("redis", e.to_string()))?,
        ),
        None => Arc::new(MemoryStore::new()),
    };
    let (key, pending) = identity(config, store.as_ref()).await?;
    let settings = config
        .federation
        .settings(config.served_domains(), &config.limits)?;
    let local = Arc::new(BackplaneDelivery {
        backplane: backplane.clone(),
        metrics: metrics.clone(),
    });
    let federation = Federation::new(
        settings,
        key.clone(),
        store.clone(),
        directory.clone(),
        local,
        metrics.registry(),
    )
    .map_err(|e| match e {
        // The only file the client reads is the extra CA bundle.
        FederationError::Client(e) => StartError::setting("federation-ca-file", e.to_string()),
        other => StartError::Federation(other),
    })?;
    if let Some(candidate) = pending {
        tokio::spawn(adopt_cluster_key(
            Arc::downgrade(&federation),
            store,
            candidate,
        ));
    }
    metrics.alias(
        Box::new(federation.metrics().sent.clone()),
        "federation_message_success",
        "number of messages send successfully via federation (original relay name of rmb_federation_sent_total)",
        &[],
        Some(("domain", "relay")),
    )?;
    tracing::info!(kid = key.kid(), domains = ?config.domains, "federation enabled");
    Ok(Some(federation))
}

/// File name of the generated key in systemd's state directory.
const STATE_KEY_FILE: &str = "identity.key";

/// The relay's identity key: `--identity-key`; else, with Redis, one key generated once for
/// the whole cluster and kept in Redis (every pod must sign with the key the others
/// publish); else one kept in systemd's `$STATE_DIRECTORY`; else a fresh one in memory.
///
/// When Redis cannot be read at start, a generated stand-in is used and returned as pending
/// (its key file text): it is offered to Redis in the background and replaced by the cluster's
/// key if another pod stored one first. An unreachable Redis must not stop the relay.
async fn identity(
    config: &Config,
    store: &dyn FederationStore,
) -> Result<(RelayKey, Option<String>), StartError> {
    if let Some(path) = &config.federation.identity_key {
        let key =
            RelayKey::load(path).map_err(|e| StartError::setting("identity-key", e.to_string()))?;
        return Ok((key, None));
    }
    let now = rmb_proto::unix_now();
    if config.backplane.redis.is_some() {
        let candidate = RelayKey::generate(now);
        let text = candidate.to_json();
        return match store.shared_identity(&text).await {
            Ok(stored) => {
                let key = cluster_key(&stored)?;
                tracing::info!(
                    kid = key.kid(),
                    generated = stored == text,
                    "federation identity: the cluster's key, kept in Redis (rmb:fed:identity)"
                );
                Ok((key, None))
            }
            Err(e) => {
                tracing::warn!(error = %e, kid = candidate.kid(), "federation identity: Redis unreachable; signing with a stand-in key until the cluster's key can be read");
                Ok((candidate, Some(text)))
            }
        };
    }
    if let Some(dir) = state_directory() {
        let path = dir.join(STATE_KEY_FILE);
        if path.exists() {
            let key = RelayKey::load(&path)
                .map_err(|e| StartError::setting("identity-key", e.to_string()))?;
            tracing::info!(kid = key.kid(), path = %path.display(), "federation identity: kept in the state directory");
            return Ok((key, None));
        }
        let key = RelayKey::generate(now);
        key.save(&path)
            .map_err(|e| StartError::setting("identity-key", e.to_string()))?;
        tracing::info!(kid = key.kid(), path = %path.display(), "federation identity: generated into the state directory");
        return Ok((key, None));
    }
    let key = RelayKey::generate(now);
    tracing::info!(
        kid = key.kid(),
        "federation identity: generated in memory; a restart makes a new one, which remote relays fetch when they first see it (give --identity-key to keep one)"
    );
    Ok((key, None))
}

/// Parses the key stored in Redis.
fn cluster_key(stored: &str) -> Result<RelayKey, StartError> {
    RelayKey::from_json(stored, "redis key rmb:fed:identity")
        .map_err(|e| StartError::setting("identity-key", e.to_string()))
}

/// Offers the stand-in key to Redis until Redis answers, then signs with whatever the cluster
/// holds (ours if this pod was first).
async fn adopt_cluster_key(
    federation: std::sync::Weak<Federation>,
    store: Arc<dyn FederationStore>,
    candidate: String,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(federation) = federation.upgrade() else {
            return;
        };
        let Ok(stored) = store.shared_identity(&candidate).await else {
            continue;
        };
        match cluster_key(&stored) {
            Ok(key) if stored != candidate => {
                tracing::info!(
                    kid = key.kid(),
                    "federation identity: switched to the cluster's key from Redis"
                );
                federation.replace_key(key);
            }
            Ok(key) => {
                tracing::info!(
                    kid = key.kid(),
                    "federation identity: the stand-in key is now the cluster's key"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "federation identity: the key in Redis is unusable")
            }
        }
        return;
    }
}

/// systemd's `StateDirectory=` (the first, if several).
fn state_directory() -> Option<std::path::PathBuf> {
    let dirs = std::env::var_os("STATE_DIRECTORY")?;
    let first = std::env::split_paths(&dirs).next()?;
    (!first.as_os_str().is_empty()).then_some(first)
}
