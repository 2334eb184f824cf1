//! Remote relay keys: fetched from `https://<origin>/.well-known/rmb/relay.json`, cached, and
//! fetched again when a request names a key id the cached document does not have (the
//! origin rotated its key), at most once per origin every few seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use parking_lot::Mutex;

use crate::auth::KEY_DOCUMENT_PATH;
use crate::client::{HttpClient, LinkError};
use crate::key::KeyDocument;
use crate::metrics::FederationMetrics;

/// Shortest time between two fetches of one origin's document for an unknown key id.
const REFETCH_AFTER: Duration = Duration::from_secs(5);

/// Fetches for origins without a cached document, per second (burst: twice this). Anyone can
/// name any origin in a well-formed header, so without a budget every request could send the
/// relay fetching from a new host, growing the gate map and the per-domain metric.
const NEW_ORIGIN_FETCHES_PER_S: f64 = 5.0;

/// Most key documents kept. Anyone holding a wildcard domain can publish documents for any
/// number of origins; past the cap, expired documents go first, then the oldest.
pub const MAX_CACHED_DOCUMENTS: usize = 4096;

/// Why no key could be found for a request.
#[derive(Debug, thiserror::Error)]
pub enum KeyLookupError {
    /// The origin's document does not list this key id (or it is outside its validity).
    #[error("origin {origin} publishes no valid key {kid}")]
    Unknown {
        /// Origin domain.
        origin: String,
        /// Requested key id.
        kid: String,
    },
    /// The document could not be fetched or read; the sender should retry later.
    #[error("key document of {origin} unavailable: {reason}")]
    Unavailable {
        /// Origin domain.
        origin: String,
        /// What failed.
        #[source]
        reason: FetchError,
    },
}

/// Why a key document could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Too many fetches for origins not seen before: fetching is throttled for now.
    #[error("too many key fetches for unknown origins; retry later")]
    Throttled,
    /// The origin could not be reached, or did not answer.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The origin answered with another status than 200.
    #[error("HTTP {0}")]
    Status(u16),
    /// The body is not a key document.
    #[error("invalid document: {0}")]
    Invalid(#[from] serde_json::Error),
    /// The document names other domains than the one it was fetched from.
    #[error("document does not list {0} among its domains")]
    NotListed(String),
}

struct Cached {
    doc: KeyDocument,
    fetched: Instant,
}

/// The cache of remote key documents.
pub struct KeyCache {
    client: Arc<HttpClient>,
    ttl: Duration,
    docs: Mutex<HashMap<String, Cached>>,
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Token bucket for fetches of origins without a cached document: (tokens, last refill).
    new_origins: Mutex<(f64, Instant)>,
    metrics: FederationMetrics,
}

impl KeyCache {
    /// A cache keeping documents for `ttl`.
    pub fn new(client: Arc<HttpClient>, ttl: Duration, metrics: FederationMetrics) -> KeyCache {
        KeyCache {
            client,
            ttl,
            docs: Mutex::default(),
            gates: Mutex::default(),
            new_origins: Mutex::new((NEW_ORIGIN_FETCHES_PER_S * 2.0, Instant::now())),
            metrics,
        }
    }

    fn lookup(&self, origin: &str, kid: &str, at: u64) -> (Option<[u8; 32]>, Option<Instant>) {
        let docs = self.docs.lock();
        match docs.get(origin) {
            Some(c) => (c.doc.key(kid, at), Some(c.fetched)),
            None => (None, None),
        }
    }

    /// The public key `kid` of `origin`, valid at `at` (unix seconds).
    pub async fn key(&self, origin: &str, kid: &str, at: u64) -> Result<[u8; 32], KeyLookupError> {
        let (found, fetched) = self.lookup(origin, kid, at);
        let fresh = fetched.is_some_and(|t| t.elapsed() < self.ttl);
        if let (Some(key), true) = (found, fresh) {
            return Ok(key);
        }
        if fresh && fetched.is_some_and(|t| t.elapsed() < REFETCH_AFTER) {
            return Err(KeyLookupError::Unknown {
                origin: origin.to_string(),
                kid: kid.to_string(),
            });
        }
        if fetched.is_none() && !self.take_new_origin_fetch() {
            return Err(KeyLookupError::Unavailable {
                origin: origin.to_string(),
                reason: FetchError::Throttled,
            });
        }
        // One fetch per origin at a time; whoever waited re-checks what it brought.
        let gate = self
            .gates
            .lock()
            .entry(origin.to_string())
            .or_default()
            .clone();
        let _held = gate.lock().await;
        let result = self.key_gated(origin, kid, at, found, fetched).await;
        drop(_held);
        // Forget the gate once nobody else waits on it: origins come and go.
        let mut gates = self.gates.lock();
        if gates
            .get(origin)
            .is_some_and(|g| Arc::ptr_eq(g, &gate) && Arc::strong_count(g) == 2)
        {
            gates.remove(origin);
        }
        result
    }

    fn take_new_origin_fetch(&self) -> bool {
        let mut bucket = self.new_origins.lock();
        let now = Instant::now();
        let refill =
            now.saturating_duration_since(bucket.1).as_secs_f64() * NEW_ORIGIN_FETCHES_PER_S;
        bucket.0 = (bucket.0 + refill).min(NEW_ORIGIN_FETCHES_PER_S * 2.0);
        bucket.1 = now;
        if bucket.0 < 1.0 {
            return false;
        }
        bucket.0 -= 1.0;
        true
    }

    async fn key_gated(
        &self,
        origin: &str,
        kid: &str,
        at: u64,
        found: Option<[u8; 32]>,
        fetched: Option<Instant>,
    ) -> Result<[u8; 32], KeyLookupError> {
        let (found_now, fetched_now) = self.lookup(origin, kid, at);
        if fetched_now != fetched {
            return found_now.ok_or_else(|| KeyLookupError::Unknown {
                origin: origin.to_string(),
                kid: kid.to_string(),
            });
        }
        match self.fetch(origin).await {
            Ok(doc) => {
                let key = doc.key(kid, at);
                self.store(origin, doc);
                key.ok_or_else(|| KeyLookupError::Unknown {
                    origin: origin.to_string(),
                    kid: kid.to_string(),
                })
            }
            // A stale document still vouches for the keys it lists while the origin is
            // unreachable.
            Err(_) if found.is_some() => found.ok_or_else(|| KeyLookupError::Unknown {
                origin: origin.to_string(),
                kid: kid.to_string(),
            }),
            Err(reason) => Err(KeyLookupError::Unavailable {
                origin: origin.to_string(),
                reason,
            }),
        }
    }

    /// Caches `doc`, within [`MAX_CACHED_DOCUMENTS`].
    fn store(&self, origin: &str, doc: KeyDocument) {
        let now = Instant::now();
        let mut docs = self.docs.lock();
        if docs.len() >= MAX_CACHED_DOCUMENTS && !docs.contains_key(origin) {
            docs.retain(|_, c| now.saturating_duration_since(c.fetched) < self.ttl);
            if docs.len() >= MAX_CACHED_DOCUMENTS {
                let oldest = docs
                    .iter()
                    .min_by_key(|(_, c)| c.fetched)
                    .map(|(o, _)| o.clone());
                if let Some(oldest) = oldest {
                    docs.remove(&oldest);
                }
            }
        }
        docs.insert(origin.to_string(), Cached { doc, fetched: now });
    }

    /// Documents cached now.
    pub fn cached(&self) -> usize {
        self.docs.lock().len()
    }

    /// The metric label of `origin`: its own name once it served a document, while fewer
    /// than [`crate::metrics::MAX_LABELED_DOMAINS`] domains have one; otherwise `other`.
    fn label(&self, origin: &str, served: bool) -> String {
        let labels = &self.metrics.labels;
        if served {
            labels.admit(origin);
        }
        labels.label(origin).to_string()
    }

    async fn fetch(&self, origin: &str) -> Result<KeyDocument, FetchError> {
        let result = self.fetch_inner(origin).await;
        let label = if result.is_ok() { "ok" } else { "error" };
        let domain = self.label(origin, result.is_ok());
        let domain = domain.as_str();
        self.metrics
            .key_fetches
            .with_label_values(&[domain, label])
            .inc();
        match &result {
            Ok(doc) => tracing::info!(%origin, keys = doc.keys.len(), "fetched relay key document"),
            Err(e) => tracing::warn!(%origin, error = %e, "cannot fetch relay key document"),
        }
        result
    }

    async fn fetch_inner(&self, origin: &str) -> Result<KeyDocument, FetchError> {
        let resp = self
            .client
            .request(origin, Method::GET, KEY_DOCUMENT_PATH, &[], Bytes::new())
            .await?;
        if resp.status != StatusCode::OK {
            return Err(FetchError::Status(resp.status.as_u16()));
        }
        let doc: KeyDocument = serde_json::from_slice(&resp.body)?;
        if !doc.domains.is_empty() && !doc.domains.iter().any(|d| d.eq_ignore_ascii_case(origin)) {
            return Err(FetchError::NotListed(origin.to_string()));
        }
        Ok(doc)
    }
}
