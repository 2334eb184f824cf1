//! RMB federation: how a relay reaches twins served by other operators' relays, and how it
//! accepts envelopes from them, without trusting the relay in between.
//!
//! - [`key`]: the relay's ed25519 identity and the key document it publishes.
//! - [`auth`]: the signed `Authorization` header of every relay-to-relay request.
//! - [`client`]: keep-alive HTTP/2 (or HTTP/1.1) over rustls to remote relays.
//! - [`discovery`]: remote key documents, cached, refreshed on an unknown key id.
//! - [`store`]: outbound queues per remote domain, relay health and replay marks (memory or
//!   Redis).
//! - [`Federation`]: outbound senders with retries and fallback relays, and the inbound
//!   checks (link, then every envelope) for the batch endpoint and the legacy `POST /`.
//!
//! The relay plugs its own delivery in through [`LocalDelivery`]; this crate does not depend
//! on the relay.

pub mod auth;
pub mod client;
pub mod discovery;
mod inbound;
pub mod key;
pub mod metrics;
mod outbound;
pub mod store;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rmb_identity::TwinDirectory;

pub use auth::LinkAuth;
pub use client::{ClientSettings, HttpClient};
pub use inbound::{encode_batch, split_batch, BatchError, HttpAnswer, Verdict};
pub use key::{KeyDocument, KeyFileError, RelayKey};
pub use metrics::FederationMetrics;
pub use outbound::EnqueueError;
pub use store::{FederationStore, MemoryStore, Outbound, RedisStore, StoreError};

/// What became of an envelope handed to the local relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Queued for the destination (connected or in its mailbox).
    Accepted,
    /// Destination offline and the envelope asked to fail fast.
    Offline,
    /// The destination's mailbox is full: try again later.
    Full,
    /// The relay cannot take it now (backplane down, draining): try again later.
    Unavailable(String),
}

/// The relay side of federation: puts an envelope into the local backplane.
#[async_trait]
pub trait LocalDelivery: Send + Sync + 'static {
    /// Routes `frame` (exactly as received) to the session `(twin, sid)` served here.
    async fn deliver(
        &self,
        twin: u32,
        sid: Option<&str>,
        frame: Bytes,
        expires_at: u64,
        fail_fast: bool,
    ) -> Delivered;
}

/// Why federation cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The HTTP client cannot be built (TLS, CA file).
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// The shared store cannot be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Inconsistent settings.
    #[error("federation: {0}")]
    Settings(String),
    /// A metric definition is wrong (a bug, reported rather than a panic).
    #[error(transparent)]
    Metrics(#[from] rmb_common::metrics::MetricError),
}

/// How federation behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our relay domains (lowercase); envelopes for twins listing one of them are ours.
    pub domains: Vec<String>,
    /// How remote relays are reached.
    pub client: ClientSettings,
    /// Largest difference between a request's timestamp and our clock, in seconds.
    pub max_skew: u64,
    /// How long a remote key document is trusted before it is fetched again.
    pub key_cache_ttl: Duration,
    /// Most envelopes in one outbound request.
    pub batch_max: usize,
    /// Longest wait between two attempts for one envelope.
    pub max_backoff: Duration,
    /// Largest envelope accepted.
    pub max_envelope_bytes: usize,
    /// Longest time to live an envelope may ask for, in seconds.
    pub max_ttl: u64,
    /// Largest inbound request body.
    pub max_request_bytes: usize,
    /// Most envelopes in one inbound batch; a bigger batch is refused whole.
    pub max_batch_envelopes: usize,
    /// Whether the legacy `POST /` of one raw envelope is accepted.
    pub legacy: bool,
    /// Most envelopes queued for one remote domain; more are refused (the sender retries).
    pub queue_max: u64,
    /// How long a failed request to a remote relay counts against it when a twin's relays
    /// are ranked (the original relay's `--ranker-period`).
    pub ranker_period: Duration,
}

/// Federation for one relay pod: outbound queues and senders, inbound checks.
pub struct Federation {
    settings: Settings,
    /// The identity key; replaced at most once, when a cluster key becomes readable after a
    /// start without Redis (see [`Federation::replace_key`]).
    key: parking_lot::RwLock<RelayKey>,
    store: Arc<dyn FederationStore>,
    client: Arc<HttpClient>,
    keys: discovery::KeyCache,
    directory: Arc<dyn TwinDirectory>,
    local: Arc<dyn LocalDelivery>,
    metrics: FederationMetrics,
    wake: tokio::sync::Notify,
    workers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stopping: AtomicBool,
    /// Remote domains without the batch endpoint (old relays), until when to treat them so.
    legacy_remotes: Mutex<HashMap<String, std::time::Instant>>,
    /// Envelopes queued per remote domain as this pod's senders saw last (domains with none
    /// are dropped): the queue bound reads this, not the metric, whose label may be `other`.
    depths: Mutex<HashMap<String, u64>>,
    /// Recent failures of each remote relay, for ranking a twin's relays.
    ranker: outbound::Ranker,
}

impl Federation {
    /// Builds federation over a store, the twin directory and the relay's delivery.
    pub fn new(
        mut settings: Settings,
        key: RelayKey,
        store: Arc<dyn FederationStore>,
        directory: Arc<dyn TwinDirectory>,
        local: Arc<dyn LocalDelivery>,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Federation>, FederationError> {
        if settings.domains.is_empty() {
            return Err(FederationError::Settings(
                "a relay domain (--domain) is required to federate".into(),
            ));
        }
        for d in &mut settings.domains {
            *d = d.to_ascii_lowercase();
        }
        settings.batch_max = settings.batch_max.max(1);
        settings.queue_max = settings.queue_max.max(1);
        let metrics = FederationMetrics::new(registry)?;
        let client = Arc::new(HttpClient::new(settings.client.clone())?);
        let keys =
            discovery::KeyCache::new(client.clone(), settings.key_cache_ttl, metrics.clone());
        let ranker = outbound::Ranker::new(settings.ranker_period);
        Ok(Arc::new(Federation {
            settings,
            key: parking_lot::RwLock::new(key),
            store,
            client,
            keys,
            directory,
            local,
            metrics,
            wake: tokio::sync::Notify::new(),
            workers: Mutex::default(),
            dispatcher: Mutex::default(),
            stopping: AtomicBool::new(false),
            legacy_remotes: Mutex::default(),
            depths: Mutex::default(),
            ranker,
        }))
    }

    /// Our domains.
    pub fn domains(&self) -> &[String] {
        &self.settings.domains
    }

    /// Our main domain: the origin of our requests and the name on our error envelopes.
    pub fn origin(&self) -> &str {
        self.settings.domains.first().map_or("", String::as_str)
    }

    /// The key document (`GET /.well-known/rmb/relay.json`), as JSON.
    pub fn key_document(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.key().document(&self.settings.domains)).unwrap_or_default()
    }

    /// The identity key in use.
    pub fn key(&self) -> RelayKey {
        self.key.read().clone()
    }

    /// Signs from now on with `key` (a relay that started with a stand-in key while the
    /// cluster's shared key could not be read).
    pub fn replace_key(&self, key: RelayKey) {
        *self.key.write() = key;
    }

    /// Whether the legacy `POST /` is accepted.
    pub fn legacy_enabled(&self) -> bool {
        self.settings.legacy
    }

    /// The largest inbound request body.
    pub fn max_request_bytes(&self) -> usize {
        self.settings.max_request_bytes
    }

    /// The metrics (for tests and the relay's housekeeping).
    pub fn metrics(&self) -> &FederationMetrics {
        &self.metrics
    }
}

pub(crate) use rmb_common::now_ms;

/// Whether `name` is a plausible DNS host name (what we are willing to fetch keys from).
pub(crate) fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
