//! The tfchain twin directory: twins read from `TfgridModule` storage through subxt's dynamic
//! API (no code generated from a fixed metadata file), several RPC endpoints with failover,
//! and cache invalidation from the twin events of finalized blocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmb_common::backoff::{BackoffPolicy, Jitter};
use subxt::ext::scale_decode::{self, DecodeAsType};
use subxt::{OnlineClient, SubstrateConfig};
use tokio::sync::{broadcast, Mutex};

use super::{DirectoryError, TwinChange, TwinDirectory};
use crate::keys::{KeyType, Signer};
use crate::twin::{join_relays, split_relays, Twin};

type Client = OnlineClient<SubstrateConfig>;

/// Where the chain is and how patiently to ask it.
#[derive(Debug, Clone)]
pub struct SubstrateSettings {
    /// RPC endpoints (`ws://` or `wss://`), tried in order; the first that answers is kept
    /// until it fails.
    pub urls: Vec<String>,
    /// Longest wait for a connection to one endpoint.
    pub connect_timeout: Duration,
    /// Longest wait for one lookup on one endpoint.
    pub call_timeout: Duration,
    /// After every endpoint failed, lookups fail at once for this long instead of waiting on
    /// dead endpoints again (a handshake gets its 503 immediately).
    pub retry_after: Duration,
    /// Upper bound of the backoff between event resubscriptions.
    pub max_backoff: Duration,
}

impl SubstrateSettings {
    /// Defaults for these endpoints.
    pub fn new(urls: Vec<String>) -> SubstrateSettings {
        SubstrateSettings {
            urls,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Counters and gauges for metrics.
#[derive(Debug, Default)]
pub struct SubstrateStats {
    /// Lookups that found a twin (or an account's twin id).
    pub found: AtomicU64,
    /// Lookups the chain answered with "no such twin".
    pub not_found: AtomicU64,
    /// Lookups that failed on every endpoint.
    pub errors: AtomicU64,
    /// Times a lookup or subscription moved to another endpoint.
    pub failovers: AtomicU64,
    /// Twin events applied (each invalidates one cached twin).
    pub events: AtomicU64,
    /// Event subscriptions (re)established; more than one means the feed was lost.
    pub subscriptions: AtomicU64,
    /// Newest finalized block whose events were applied.
    pub finalized_block: AtomicU64,
    /// How far behind wall-clock time that block's timestamp was when applied, in ms.
    pub event_lag_ms: AtomicU64,
}

/// Twins on tfchain.
pub struct SubstrateDirectory {
    settings: SubstrateSettings,
    connection: Mutex<Connection>,
    changes: broadcast::Sender<TwinChange>,
    stats: Arc<SubstrateStats>,
}

#[derive(Default)]
struct Connection {
    client: Option<Client>,
    /// Bumped on every new connection, so a failure reported on an old client does not
    /// drop a newer one.
    generation: u64,
    /// Index into `urls` of the endpoint to use (or try next).
    current: usize,
    /// Set when every endpoint failed: until then, fail without trying.
    down_until: Option<Instant>,
}

/// The parts of the on-chain `Twin` we use; other fields (entities) are skipped by name.
#[derive(Debug, DecodeAsType)]
#[decode_as_type(crate_path = "scale_decode")]
struct ChainTwin {
    id: u32,
    account_id: [u8; 32],
    relay: Option<Vec<u8>>,
    pk: Option<Vec<u8>>,
}

/// Enough of a twin event to know which twin changed.
#[derive(Debug, DecodeAsType)]
#[decode_as_type(crate_path = "scale_decode")]
struct TwinIdOnly {
    id: u32,
}

impl ChainTwin {
    fn into_twin(self) -> Twin {
        let relays = self
            .relay
            .map(|r| split_relays(&String::from_utf8_lossy(&r)))
            .unwrap_or_default();
        Twin {
            id: self.id,
            account: self.account_id,
            relays,
            pk: self.pk.filter(|pk| !pk.is_empty()),
        }
    }
}

impl SubstrateDirectory {
    /// A directory over `settings.urls`; starts following finalized blocks in the
    /// background. Does not wait for the chain: lookups connect on demand.
    pub fn start(settings: SubstrateSettings) -> Arc<SubstrateDirectory> {
        let (changes, _) = broadcast::channel(1024);
        let dir = Arc::new(SubstrateDirectory {
            settings,
            connection: Mutex::new(Connection::default()),
            changes,
            stats: Arc::default(),
        });
        tokio::spawn(follow_finalized(Arc::downgrade(&dir)));
        dir
    }

    /// Counters for metrics.
    pub fn stats_handle(&self) -> Arc<SubstrateStats> {
        self.stats.clone()
    }

    /// The endpoints, in failover order.
    pub fn urls(&self) -> &[String] {
        &self.settings.urls
    }

    /// The connected client and its generation, connecting (with failover) when there is
    /// none.
    async fn client(&self) -> Result<(u64, Client), DirectoryError> {
        let mut conn = self.connection.lock().await;
        if let Some(client) = &conn.client {
            return Ok((conn.generation, client.clone()));
        }
        if conn.down_until.is_some_and(|t| Instant::now() < t) {
            return Err(self.unavailable("every endpoint failed moments ago"));
        }
        let mut failures = Vec::new();
        for _ in 0..self.settings.urls.len() {
            let url = &self.settings.urls[conn.current];
            let connect = Client::from_insecure_url(url);
            match tokio::time::timeout(self.settings.connect_timeout, connect).await {
                Ok(Ok(client)) => {
                    tracing::info!(url = %url, "connected to tfchain");
                    conn.client = Some(client.clone());
                    conn.generation += 1;
                    conn.down_until = None;
                    return Ok((conn.generation, client));
                }
                Ok(Err(e)) => failures.push(format!("{url}: {e}")),
                Err(_) => failures.push(format!(
                    "{url}: no connection within {:?}",
                    self.settings.connect_timeout
                )),
            }
            self.stats.failovers.fetch_add(1, Ordering::Relaxed);
            conn.current = (conn.current + 1) % self.settings.urls.len();
        }
        conn.down_until = Some(Instant::now() + self.settings.retry_after);
        Err(self.unavailable(&failures.join("; ")))
    }

    /// Forgets the client of `generation` after it failed, so the next call connects to
    /// the next endpoint.
    async fn drop_client(&self, generation: u64) {
        let mut conn = self.connection.lock().await;
        if conn.client.is_some() && conn.generation == generation {
            conn.client = None;
            conn.current = (conn.current + 1) % self.settings.urls.len().max(1);
            self.stats.failovers.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unavailable(&self, why: &str) -> DirectoryError {
        DirectoryError::Unavailable(format!("tfchain unreachable ({why})"))
    }

    /// Runs one storage query at the current finalized block, failing over between
    /// endpoints, each attempt bounded by the call timeout.
    async fn query<R, F, Fut>(&self, op: F) -> Result<R, DirectoryError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<R, QueryError>>,
    {
        let mut last = String::new();
        for _ in 0..self.settings.urls.len().max(1) {
            let (generation, client) = match self.client().await {
                Ok(connected) => connected,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            match tokio::time::timeout(self.settings.call_timeout, op(client)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(QueryError::Decode(e))) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    return Err(DirectoryError::InvalidData(e));
                }
                Ok(Err(QueryError::Rpc(e))) => last = e,
                Err(_) => last = format!("no answer within {:?}", self.settings.call_timeout),
            }
            tracing::warn!(error = %last, "tfchain lookup failed; trying the next endpoint");
            self.drop_client(generation).await;
        }
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        Err(self.unavailable(&last))
    }

    fn count<T>(&self, found: &Option<T>) {
        let counter = if found.is_some() {
            &self.stats.found
        } else {
            &self.stats.not_found
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What [`SubstrateDirectory::publish_twin`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwinPublication {
    /// The chain already lists these relays and this key.
    UpToDate,
    /// `TfgridModule.update_twin` was submitted (accepted into the pool); it takes effect
    /// when its block is finalized.
    Submitted,
    /// The account has no twin on chain: nothing to update.
    NoTwin,
}

/// Signs extrinsics with a twin's account key.
struct ExtrinsicSigner<'a>(&'a Signer);

impl subxt::transactions::Signer<SubstrateConfig> for ExtrinsicSigner<'_> {
    fn account_id(&self) -> subxt::utils::AccountId32 {
        subxt::utils::AccountId32(self.0.public_key())
    }

    fn sign(&self, payload: &[u8]) -> subxt::utils::MultiSignature {
        // `Signer::sign` prefixes the scheme byte; the chain wants the bare 64 bytes.
        let prefixed = self.0.sign(payload);
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&prefixed[1..]);
        match self.0.key_type() {
            KeyType::Ed25519 => subxt::utils::MultiSignature::Ed25519(raw),
            KeyType::Sr25519 => subxt::utils::MultiSignature::Sr25519(raw),
        }
    }
}

impl SubstrateDirectory {
    /// Makes the chain list `relays` and `pk` for the signer's twin: reads the twin (not from
    /// any cache) and, when either differs, submits `TfgridModule.update_twin` signed by the
    /// twin's account. What the existing `rmb-peer` does at start unless `--no-update`.
    pub async fn publish_twin(
        &self,
        signer: &Signer,
        relays: &[String],
        pk: Option<&[u8]>,
    ) -> Result<TwinPublication, DirectoryError> {
        let Some(id) = self.twin_id_by_account(&signer.public_key()).await? else {
            return Ok(TwinPublication::NoTwin);
        };
        let Some(current) = self.twin(id).await? else {
            return Ok(TwinPublication::NoTwin);
        };
        let wanted: Vec<String> = relays.iter().map(|r| r.to_ascii_lowercase()).collect();
        if sorted(&current.relays) == sorted(&wanted) && current.pk.as_deref() == pk {
            return Ok(TwinPublication::UpToDate);
        }
        let relay = (!wanted.is_empty()).then(|| join_relays(&wanted).into_bytes());
        let pk = pk.map(<[u8]>::to_vec);
        self.query(|client| submit_update(client, signer, relay.clone(), pk.clone()))
            .await?;
        Ok(TwinPublication::Submitted)
    }
}

fn sorted(items: &[String]) -> Vec<String> {
    let mut items = items.to_vec();
    items.sort();
    items
}

async fn submit_update(
    client: Client,
    signer: &Signer,
    relay: Option<Vec<u8>>,
    pk: Option<Vec<u8>>,
) -> Result<(), QueryError> {
    let call = subxt::dynamic::tx("TfgridModule", "update_twin", (relay, pk));
    let mut transactions = client
        .tx()
        .await
        .map_err(|e| QueryError::Rpc(e.to_string()))?;
    transactions
        .sign_and_submit_default(&call, &ExtrinsicSigner(signer))
        .await
        // A refused transaction is not the endpoint's fault: do not fail over.
        .map_err(|e| QueryError::Decode(format!("update_twin refused: {e}")))?;
    Ok(())
}

/// A failed query: the endpoint (retry elsewhere) or the data (do not).
enum QueryError {
    Rpc(String),
    Decode(String),
}

async fn fetch_twin(client: Client, id: u32) -> Result<Option<ChainTwin>, QueryError> {
    let at = client
        .at_current_block()
        .await
        .map_err(|e| QueryError::Rpc(e.to_string()))?;
    let address = subxt::dynamic::storage::<(u32,), ChainTwin>("TfgridModule", "Twins");
    let value = at
        .storage()
        .try_fetch(address, (id,))
        .await
        .map_err(|e| QueryError::Rpc(e.to_string()))?;
    value
        .map(|v| v.decode().map_err(|e| QueryError::Decode(e.to_string())))
        .transpose()
}

async fn fetch_twin_id(client: Client, account: [u8; 32]) -> Result<Option<u32>, QueryError> {
    let at = client
        .at_current_block()
        .await
        .map_err(|e| QueryError::Rpc(e.to_string()))?;
    let address = subxt::dynamic::storage::<([u8; 32],), u32>("TfgridModule", "TwinIdByAccountID");
    let value = at
        .storage()
        .try_fetch(address, (account,))
        .await
        .map_err(|e| QueryError::Rpc(e.to_string()))?;
    value
        .map(|v| v.decode().map_err(|e| QueryError::Decode(e.to_string())))
        .transpose()
}

#[async_trait]
impl TwinDirectory for SubstrateDirectory {
    async fn twin(&self, id: u32) -> Result<Option<Arc<Twin>>, DirectoryError> {
        let twin = self.query(|client| fetch_twin(client, id)).await?;
        self.count(&twin);
        Ok(twin.map(|t| Arc::new(t.into_twin())))
    }

    async fn twin_id_by_account(&self, account: &[u8; 32]) -> Result<Option<u32>, DirectoryError> {
        let account = *account;
        let id = self.query(|client| fetch_twin_id(client, account)).await?;
        self.count(&id);
        Ok(id)
    }

    fn changes(&self) -> Option<broadcast::Receiver<TwinChange>> {
        Some(self.changes.subscribe())
    }
}

/// Follows finalized blocks and turns twin events into change notices. After a lost feed
/// it resubscribes with backoff and announces "anything may have changed", since events
/// were missed meanwhile. Cached twins stay usable while the chain is away.
async fn follow_finalized(dir: std::sync::Weak<SubstrateDirectory>) {
    let Some(max_backoff) = dir.upgrade().map(|this| this.settings.max_backoff) else {
        return;
    };
    // From 250 ms doubling to the cap, each wait up to half as long again.
    let mut backoff = BackoffPolicy::new(Duration::from_millis(250), max_backoff)
        .with_jitter(Jitter::Added)
        .start();
    loop {
        let Some(this) = dir.upgrade() else { return };
        match follow_once(&this).await {
            Ok(()) => backoff.reset(),
            Err(e) => tracing::warn!(error = %e, "tfchain block feed lost; resubscribing"),
        }
        drop(this);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Why the finalized-block feed stopped.
#[derive(Debug, thiserror::Error)]
enum FeedLost {
    /// No client for any RPC endpoint.
    #[error(transparent)]
    Connect(#[from] DirectoryError),
    /// The chain failed at one step of following blocks.
    #[error("{step}: {source}")]
    Chain {
        /// What was being done.
        step: &'static str,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The subscription ended without an error.
    #[error("subscription ended")]
    Ended,
}

impl FeedLost {
    fn at<E: std::error::Error + Send + Sync + 'static>(
        step: &'static str,
    ) -> impl Fn(E) -> FeedLost {
        move |e| FeedLost::Chain {
            step,
            source: Box::new(e),
        }
    }
}

async fn follow_once(dir: &SubstrateDirectory) -> Result<(), FeedLost> {
    let (generation, client) = dir.client().await?;
    let mut blocks = match client.stream_blocks().await {
        Ok(blocks) => blocks,
        Err(e) => {
            dir.drop_client(generation).await;
            return Err(FeedLost::at("subscribing to finalized blocks")(e));
        }
    };
    dir.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
    // Whatever happened while we were not subscribed is unknown: start clean.
    let _ = dir.changes.send(None);
    let outcome = apply_blocks(dir, &mut blocks).await;
    dir.drop_client(generation).await;
    outcome
}

/// Applies the twin events of each finalized block until the feed fails or ends.
async fn apply_blocks(
    dir: &SubstrateDirectory,
    blocks: &mut subxt::client::Blocks<SubstrateConfig>,
) -> Result<(), FeedLost> {
    while let Some(block) = blocks.next().await {
        let block = block.map_err(FeedLost::at("next block"))?;
        let at = block.at().await.map_err(FeedLost::at("block state"))?;
        let events = at
            .events()
            .fetch()
            .await
            .map_err(FeedLost::at("block events"))?;
        for event in events.iter() {
            let Ok(event) = event else { continue };
            if event.pallet_name() != "TfgridModule" {
                continue;
            }
            let id = match event.event_name() {
                "TwinStored" | "TwinUpdated" => event
                    .decode_fields_unchecked_as::<(TwinIdOnly,)>()
                    .map(|(t,)| t.id),
                "TwinDeleted" => event.decode_fields_unchecked_as::<(u32,)>().map(|(id,)| id),
                _ => continue,
            };
            match id {
                Ok(id) => {
                    dir.stats.events.fetch_add(1, Ordering::Relaxed);
                    let _ = dir.changes.send(Some(id));
                }
                // Cannot tell which twin: drop them all rather than serve a stale one.
                Err(_) => {
                    let _ = dir.changes.send(None);
                }
            }
        }
        dir.stats
            .finalized_block
            .store(block.number(), Ordering::Relaxed);
        record_lag(dir, &at).await;
    }
    Err(FeedLost::Ended)
}

/// Event lag: wall clock minus the block's `Timestamp.Now`, when the chain has it.
async fn record_lag(dir: &SubstrateDirectory, at: &subxt::OnlineClientAtBlock<SubstrateConfig>) {
    let address = subxt::dynamic::storage::<(), u64>("Timestamp", "Now");
    let Ok(Some(value)) = at.storage().try_fetch(address, ()).await else {
        return;
    };
    let Ok(block_ms) = value.decode() else { return };
    let now_ms = rmb_common::now_ms();
    dir.stats
        .event_lag_ms
        .store(now_ms.saturating_sub(block_ms), Ordering::Relaxed);
}
