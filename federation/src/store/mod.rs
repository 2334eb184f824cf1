//! Where outbound envelopes wait for their remote relay, and the state pods share about
//! remote relays (health) and requests already seen (replay). `memory` serves one process;
//! `redis` lets any pod send any queued envelope and keeps the queue when a pod dies.

mod memory;
mod redis;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use self::redis::RedisStore;
pub use memory::MemoryStore;

/// A store failure: the operation did not happen and may be retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("federation store unavailable: {0}")]
pub struct StoreError(pub String);

/// One envelope on its way to a remote relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The envelope exactly as the sender sent it.
    pub frame: Bytes,
    /// Unix second at which it must be given up.
    pub expires_at: u64,
    /// The destination twin's relay domains that are not ours, in chain order.
    pub relays: Vec<String>,
    /// Relays that refused it for good.
    pub refused: Vec<String>,
    /// Failed attempts so far (drives the backoff).
    pub attempts: u32,
    /// The last failure, for the error envelope.
    pub last_error: String,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    f: String,
    x: u64,
    r: Vec<String>,
    #[serde(default)]
    n: Vec<String>,
    #[serde(default)]
    a: u32,
    #[serde(default)]
    e: String,
}

impl Outbound {
    /// The stored form (JSON with the envelope in base64).
    pub fn encode(&self) -> String {
        let stored = Stored {
            f: STANDARD.encode(&self.frame),
            x: self.expires_at,
            r: self.relays.clone(),
            n: self.refused.clone(),
            a: self.attempts,
            e: self.last_error.clone(),
        };
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// Parses the stored form; `None` for anything unreadable.
    pub fn decode(text: &[u8]) -> Option<Outbound> {
        let stored: Stored = serde_json::from_slice(text).ok()?;
        Some(Outbound {
            frame: Bytes::from(STANDARD.decode(stored.f).ok()?),
            expires_at: stored.x,
            relays: stored.r,
            refused: stored.n,
            attempts: stored.a,
            last_error: stored.e,
        })
    }
}

/// What pods know about a remote relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// Consecutive failed requests.
    pub failures: u32,
    /// Unix ms until which it counts as down.
    pub down_until_ms: u64,
}

/// The shared state behind federation.
#[async_trait]
pub trait FederationStore: Send + Sync + 'static {
    /// Queues (or re-queues) `item` under `id` for `domain`, due at `due_ms`.
    async fn push(
        &self,
        domain: &str,
        id: &str,
        item: &Outbound,
        due_ms: u64,
    ) -> Result<(), StoreError>;

    /// Takes up to `max` items due at `now_ms`; they are hidden from other senders until
    /// `lease_until_ms` (then due again, should this pod die before finishing them).
    async fn claim(
        &self,
        domain: &str,
        now_ms: u64,
        max: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<(String, Outbound)>, StoreError>;

    /// Removes finished items.
    async fn remove(&self, domain: &str, ids: &[String]) -> Result<(), StoreError>;

    /// Domains that may have queued items.
    async fn domains(&self) -> Result<Vec<String>, StoreError>;

    /// Forgets `domain` as a queue if it is empty (a later push brings it back).
    async fn retire_if_empty(&self, domain: &str) -> Result<(), StoreError>;

    /// Items queued for `domain`.
    async fn depth(&self, domain: &str) -> Result<u64, StoreError>;

    /// The health of each of `domains`, in the same order.
    async fn health(&self, domains: &[String]) -> Result<Vec<Health>, StoreError>;

    /// Records the result of a request to `domain`.
    async fn report(&self, domain: &str, ok: bool, now_ms: u64) -> Result<(), StoreError>;

    /// Marks `key` as seen for `ttl_ms`; `true` if it was not seen before.
    async fn first_seen(&self, key: &str, ttl_ms: u64) -> Result<bool, StoreError>;

    /// Whether `key` carries a live `first_seen` mark. Read only: it lets a replay be turned
    /// away before the signature check it would otherwise cost.
    async fn seen(&self, key: &str) -> Result<bool, StoreError>;

    /// Forgets a `first_seen` mark (the thing it stood for did not happen after all).
    async fn unsee(&self, key: &str) -> Result<(), StoreError>;

    /// The relay identity key every pod sharing this store uses (the key file format):
    /// `candidate` becomes it unless one is stored already, in which case that one is
    /// returned. First writer wins, so pods starting together agree.
    async fn shared_identity(&self, candidate: &str) -> Result<String, StoreError>;
}

/// How long a remote relay counts as down after `failures` consecutive failures.
pub fn down_for_ms(failures: u32) -> u64 {
    (500u64 << failures.min(7)).min(60_000)
}
