//! The gateway: a twin's keys and relay sessions exposed to local services through Redis
//! queues, compatible with the existing `rmb-peer` (see [`messages`] for the documents).
//!
//! [`run`] wires four parts together:
//! - the local reader ([`local`]): `BRPOP` on `msgbus.system.local` (callers' requests) and
//!   `msgbus.system.reply` (services' replies);
//! - the relay sessions ([`crate::pool`]): one per configured relay, all open at once,
//!   reconnected with backoff and jitter, sharing one outbox;
//! - the core (this module), one task that owns all state: it signs what goes out, verifies
//!   what comes in, and matches responses to the requests waiting for them;
//! - the local writer: `LPUSH` of responses on the caller's `ret` list and of requests on
//!   `msgbus.<cmd>`.
//!
//! Rules the core enforces (every drop is counted in
//! `rmb_peer_envelopes_dropped_total{reason}`, see [`DropReason`]):
//! - every envelope sent is signed with our key; every request or response received must
//!   verify against the source twin's account key from the directory, or it is dropped;
//!   unsigned envelopes are accepted only as errors made by a relay we hold a session with
//!   (no source twin), for a request we sent;
//! - a response is accepted only for a pending request (by uid) and only from a twin the
//!   request went to, once per twin; a second answer for the same uid is a replay;
//! - a request uid seen again from the same twin within its lifetime is dropped, so relay
//!   redeliveries (and the same request arriving through two relays) reach a service once;
//! - expired envelopes are dropped; a pending request whose time to live passes without an
//!   answer from some destination gets, for each such destination, an error response on its
//!   `ret` list with code [`TIMEOUT_CODE`] (500: the protocol has no dedicated timeout code)
//!   and a message starting with `timeout:`;
//! - a request for a service whose `msgbus.<cmd>` list already holds
//!   [`Config::max_queue_length`] documents is not pushed: the sender gets an error response
//!   (code 500, message starting with `queue full:`), and the refusal is logged and counted;
//!   nothing is ever trimmed from a list;
//! - while more than [`OUTBOX_HIGH`] envelopes wait for a relay, the gateway stops popping
//!   `msgbus.system.local`/`reply`, so callers' documents wait in Redis instead of memory;
//! - `rmb.version` requests are answered by the gateway itself, with the crate version as a
//!   JSON string;
//! - payloads are encrypted end to end (secp256k1 ECDH, AES-256-GCM) when both we and the
//!   other twin publish an encryption key (`pk`) in the directory, and sent plain otherwise;
//!   cipher payloads received are decrypted with the key the source twin publishes, and a
//!   request that cannot be decrypted is answered with error 106.

pub mod local;
pub mod messages;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Client, ClientLike as _};
use rmb_identity::{ss58_address, Signer, TwinDirectory};
use rmb_proto::{codes, unix_now, Address, Envelope, Kind, Message, Request, Response};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::direct::{new_uid, REPLY_TTL_SECS};
use crate::keys::Keys;
pub use crate::metrics::{DropReason, Metrics};
use crate::pool::{Pool, PoolSettings};
use local::{LocalItem, Pushed};
use messages::{
    command_queue, decode_data, encode_data, parse_address, AddressText, IncomingRequest,
    IncomingResponse, JsonError, OutgoingRequest, OutgoingResponse, DOC_VERSION, REPLY_QUEUE,
};

/// The error code of the response a caller gets when a destination did not answer before
/// the request expired.
pub const TIMEOUT_CODE: u32 = codes::OTHER;
/// The error code a sender gets when the service's queue is full.
pub const QUEUE_FULL_CODE: u32 = codes::OTHER;
/// The command the gateway answers itself.
pub const VERSION_COMMAND: &str = "rmb.version";
/// Time to live of a request whose document says `exp: 0`.
pub const DEFAULT_TTL_SECS: u64 = 300;
/// Default bound of a service's `msgbus.<cmd>` list.
pub const DEFAULT_MAX_QUEUE_LENGTH: usize = 10_000;
/// How often pending requests are checked for expiry.
const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// How long the relay sessions get to send what is queued when shutting down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Most requests waiting for answers; beyond it new requests are refused with code 500.
pub const MAX_PENDING: usize = 100_000;
/// Envelopes waiting for a relay above which local documents are left in Redis.
pub const OUTBOX_HIGH: usize = 10_000;
/// Channel bounds between the parts.
const QUEUE: usize = 1024;
/// Least time between two warnings about a full service queue.
const QUEUE_WARN_EVERY: Duration = Duration::from_secs(5);

/// What the gateway needs to run.
pub struct Config {
    /// Our keys: every envelope is signed with them, and the session tokens too.
    pub signer: Signer,
    /// Our twin id; looked up in the directory by our account key when `None`.
    pub twin: Option<u32>,
    /// The local Redis, `redis://host:port`.
    pub redis_url: String,
    /// The relays (`ws://` or `wss://`), all used at once, and how sessions behave.
    pub relay: PoolSettings,
    /// Where twins' keys are looked up.
    pub directory: Arc<dyn TwinDirectory>,
    /// Most documents a service's `msgbus.<cmd>` list may hold before requests for it are
    /// refused (0: no bound).
    pub max_queue_length: usize,
    /// Counters and gauges, shared with whoever exposes or reads them.
    pub metrics: Arc<Metrics>,
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No relay URL was given.
    #[error("no relay configured")]
    NoRelay,
    /// The local Redis cannot be reached.
    #[error("local redis {url}: {reason}")]
    Redis {
        /// The URL used.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The directory failed while resolving our twin.
    #[error("twin directory: {0}")]
    Directory(String),
    /// The directory knows no twin with our key.
    #[error("no twin has the account {0}; register it or give the twin id")]
    UnknownAccount(String),
    /// The directory lists our twin with another key.
    #[error("twin {0} is registered with another account key than ours")]
    KeyMismatch(u32),
}

/// Runs the gateway until `shutdown` completes. Fails only at start (Redis unreachable, our
/// twin unknown); afterwards relay and Redis failures are retried.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    if config.relay.relays.is_empty() {
        return Err(GatewayError::NoRelay);
    }
    let twin = resolve_twin(&config.signer, config.twin, config.directory.as_ref()).await?;
    let redis_err = |e: fred::error::Error| GatewayError::Redis {
        url: local::masked(&config.redis_url),
        reason: e.to_string(),
    };
    let pop = local::connect(&config.redis_url).await.map_err(redis_err)?;
    let push = local::connect(&config.redis_url).await.map_err(redis_err)?;
    let relays: Vec<String> = config
        .relay
        .relays
        .iter()
        .map(|r| crate::metrics::relay_label(r))
        .collect();
    tracing::info!(
        twin,
        relays = ?relays,
        redis = %local::masked(&config.redis_url),
        "gateway starting"
    );

    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (local_tx, local_rx) = mpsc::channel(QUEUE);
    let pop_cancel = CancellationToken::new();
    let metrics = config.metrics;
    let pool = Pool::start(
        config.relay,
        config.signer.clone(),
        twin,
        in_tx,
        metrics.clone(),
    );
    let pop_task = tokio::spawn(local::pop_loop(
        pop,
        local_tx,
        metrics.clone(),
        pop_cancel.clone(),
    ));

    let core = Core {
        keys: Keys::new(
            config.signer,
            Address::new(twin, None),
            config.directory,
            metrics.clone(),
        ),
        metrics,
        push: push.clone(),
        pool,
        max_queue_length: config.max_queue_length,
        pending: HashMap::new(),
        seen: HashMap::new(),
        answered: HashMap::new(),
        last_queue_warning: None,
    };
    let pool = core.run(local_rx, in_rx, shutdown, pop_cancel).await;
    let _ = pop_task.await;
    pool.shutdown(SHUTDOWN_GRACE).await;
    let _ = push.quit().await;
    tracing::info!(twin, "gateway stopped");
    Ok(())
}

/// Our twin id: `given` (checked against the directory when it knows the twin), or the
/// twin registered with our account key.
pub(crate) async fn resolve_twin(
    signer: &Signer,
    given: Option<u32>,
    directory: &dyn TwinDirectory,
) -> Result<u32, GatewayError> {
    let account = signer.public_key();
    match given {
        Some(id) => {
            match directory.twin(id).await {
                Ok(Some(t)) if t.account != account => return Err(GatewayError::KeyMismatch(id)),
                Ok(Some(_)) => {}
                Ok(None) => tracing::warn!(twin = id, "our twin is not in the directory"),
                Err(e) => tracing::warn!(twin = id, error = %e, "cannot check our twin"),
            }
            Ok(id)
        }
        None => directory
            .twin_id_by_account(&account)
            .await
            .map_err(|e| GatewayError::Directory(e.to_string()))?
            .ok_or_else(|| GatewayError::UnknownAccount(ss58_address(&account))),
    }
}

/// A request sent and not fully answered yet.
struct Pending {
    reference: Option<String>,
    reply_to: String,
    /// Destinations that have not answered.
    waiting: HashSet<u32>,
    /// Every destination.
    destinations: Vec<u32>,
    deadline: Instant,
    ttl: u64,
}

struct Core {
    keys: Keys,
    metrics: Arc<Metrics>,
    push: Client,
    pool: Pool,
    max_queue_length: usize,
    /// By envelope uid.
    pending: HashMap<String, Pending>,
    /// Requests received: (source twin, uid) → unix time they expire.
    seen: HashMap<(u32, String), u64>,
    /// Requests of ours fully answered or expired: uid → unix time an answer would expire.
    answered: HashMap<String, u64>,
    last_queue_warning: Option<Instant>,
}

impl Core {
    async fn run(
        mut self,
        mut local: mpsc::Receiver<LocalItem>,
        mut inbound: mpsc::Receiver<Envelope>,
        shutdown: impl Future<Output = ()> + Send,
        pop_cancel: CancellationToken,
    ) -> Pool {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stopping = false;
        let mut ticks = 0u64;
        let mut paused = false;
        loop {
            let backlog = self.pool.outbox().len();
            if (backlog >= OUTBOX_HIGH) != paused {
                paused = !paused;
                if paused {
                    tracing::warn!(
                        backlog,
                        "relays are not taking envelopes; leaving local documents in redis"
                    );
                } else {
                    tracing::info!(backlog, "relays caught up; popping local documents again");
                }
            }
            tokio::select! {
                _ = &mut shutdown, if !stopping => {
                    // Stop popping; handle what was popped already, then return.
                    stopping = true;
                    pop_cancel.cancel();
                }
                item = local.recv(), if !paused || stopping => match item {
                    Some(LocalItem::Request(doc)) => self.local_request(&doc).await,
                    Some(LocalItem::Reply(doc)) => self.local_reply(&doc).await,
                    None => return self.pool,
                },
                Some(env) = inbound.recv() => self.incoming(env).await,
                _ = tick.tick() => {
                    self.expire().await;
                    ticks += 1;
                    if ticks % 50 == 0 {
                        let now = unix_now();
                        self.seen.retain(|_, expires| *expires >= now);
                        self.answered.retain(|_, expires| *expires >= now);
                    }
                }
            }
        }
    }

    async fn push(&self, list: &str, doc: &impl serde::Serialize) {
        match serde_json::to_string(doc) {
            Ok(text) => local::push(&self.push, &self.metrics, list, text).await,
            Err(e) => tracing::error!(error = %e, "cannot encode a document"),
        }
    }

    fn send(&self, env: Envelope) {
        self.pool.send(env);
    }

    fn sign(&self, env: Envelope) -> Envelope {
        self.keys.sign(env)
    }

    /// Pushes an error response for a caller.
    async fn answer_caller_error(
        &self,
        reply_to: &str,
        reference: Option<String>,
        source: String,
        code: u32,
        message: String,
    ) {
        if reply_to.is_empty() {
            return;
        }
        let doc = IncomingResponse {
            version: DOC_VERSION,
            reference,
            data: String::new(),
            source,
            schema: None,
            timestamp: unix_now(),
            error: Some(JsonError { code, message }),
        };
        self.push(reply_to, &doc).await;
    }

    async fn local_request(&mut self, doc: &str) {
        let req: OutgoingRequest = match serde_json::from_str(doc) {
            Ok(req) => req,
            Err(e) => {
                self.metrics.invalid_documents.inc();
                tracing::warn!(error = %e, "invalid request document");
                // Answer the caller if we can tell where.
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(doc) {
                    let ret = value["ret"].as_str().unwrap_or_default();
                    let reference = value["ref"].as_str().map(str::to_string);
                    let message = format!("invalid request: {e}");
                    self.answer_caller_error(
                        ret,
                        reference,
                        "0".into(),
                        codes::INVALID_MESSAGE,
                        message,
                    )
                    .await;
                }
                return;
            }
        };
        let mut destinations = req.destinations.clone();
        destinations.sort_unstable();
        destinations.dedup();
        if destinations.is_empty() || req.command.is_empty() {
            self.metrics.invalid_documents.inc();
            let message = "invalid request: cmd and dst are required".to_string();
            self.answer_caller_error(
                &req.reply_to,
                req.reference,
                "0".into(),
                codes::INVALID_MESSAGE,
                message,
            )
            .await;
            return;
        }
        let payload = match decode_data(&req.data) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.invalid_documents.inc();
                for dst in destinations {
                    let message = format!("dat is not base64: {e}");
                    self.answer_caller_error(
                        &req.reply_to,
                        req.reference.clone(),
                        dst.to_string(),
                        codes::INVALID_PAYLOAD,
                        message,
                    )
                    .await;
                }
                return;
            }
        };
        if self.pending.len() >= MAX_PENDING {
            self.metrics.invalid_documents.inc();
            for dst in destinations {
                let message = format!("too many pending requests ({MAX_PENDING})");
                self.answer_caller_error(
                    &req.reply_to,
                    req.reference.clone(),
                    dst.to_string(),
                    codes::OTHER,
                    message,
                )
                .await;
            }
            return;
        }
        let ttl = if req.expiration == 0 {
            DEFAULT_TTL_SECS
        } else {
            req.expiration
        };
        let uid = new_uid();
        if req.reply_to.is_empty() {
            tracing::debug!(%uid, "request without ret: responses will be dropped");
        } else {
            self.pending.insert(
                uid.clone(),
                Pending {
                    reference: req.reference.clone(),
                    reply_to: req.reply_to.clone(),
                    waiting: destinations.iter().copied().collect(),
                    destinations: destinations.clone(),
                    deadline: Instant::now() + Duration::from_secs(ttl),
                    ttl,
                },
            );
            self.metrics.pending.set(self.pending.len() as i64);
        }
        let now = unix_now();
        for dst in destinations {
            let payload = self.keys.seal(dst, payload.clone()).await;
            let env = self.sign(Envelope {
                uid: uid.clone(),
                tags: req.tags.clone(),
                timestamp: now,
                expiration: ttl,
                source: Some(self.keys.me.clone()),
                destination: Some(Address::new(dst, None)),
                message: Some(Message::Request(Request {
                    command: req.command.clone(),
                })),
                schema: req.schema.clone(),
                payload: Some(payload),
                ..Default::default()
            });
            self.send(env);
        }
    }

    async fn local_reply(&mut self, doc: &str) {
        let reply: OutgoingResponse = match serde_json::from_str(doc) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.invalid_documents.inc();
                tracing::warn!(error = %e, "invalid reply document");
                return;
            }
        };
        let uid = reply.reference.clone().unwrap_or_default();
        let Some(destination) = parse_address(&reply.destination).filter(|_| !uid.is_empty())
        else {
            self.metrics.invalid_documents.inc();
            tracing::warn!(dst = %reply.destination, "reply without a valid ref and dst");
            return;
        };
        let mut env = Envelope {
            uid,
            timestamp: unix_now(),
            expiration: REPLY_TTL_SECS,
            source: Some(self.keys.me.clone()),
            destination: Some(destination.clone()),
            ..Default::default()
        };
        match (&reply.error, decode_data(&reply.data)) {
            (Some(err), _) => {
                env.message = Some(Message::Error(rmb_proto::Error {
                    code: err.code,
                    message: err.message.clone(),
                }));
            }
            (None, Ok(data)) => {
                env.message = Some(Message::Response(Response {}));
                env.schema = reply.schema.clone();
                env.payload = Some(self.keys.seal(destination.twin, data).await);
            }
            (None, Err(e)) => {
                self.metrics.invalid_documents.inc();
                env.message = Some(Message::Error(rmb_proto::Error {
                    code: codes::INVALID_PAYLOAD,
                    message: format!("the service's reply is not base64: {e}"),
                }));
            }
        }
        let env = self.sign(env);
        self.send(env);
    }

    async fn incoming(&mut self, env: Envelope) {
        let kind = env.kind();
        if !matches!(kind, Kind::Request | Kind::Response | Kind::Error) {
            return; // pongs to our keepalive pings
        }
        let now = unix_now();
        if env.is_expired(now) {
            self.metrics.drop_one(DropReason::Expired);
            tracing::debug!(uid = %env.uid, "dropping an expired envelope");
            return;
        }
        if kind == Kind::Request {
            self.incoming_request(env, now).await;
        } else {
            self.incoming_answer(env).await;
        }
    }

    async fn incoming_request(&mut self, env: Envelope, now: u64) {
        let Some(source) = env.source.clone().filter(|s| s.twin != 0) else {
            self.metrics.drop_one(DropReason::Unsigned);
            tracing::warn!(uid = %env.uid, "dropping a request without a source twin");
            return;
        };
        if !self.keys.verified(&env, source.twin).await {
            return;
        }
        let key = (source.twin, env.uid.clone());
        if self.seen.contains_key(&key) {
            self.metrics.drop_one(DropReason::Replayed);
            tracing::debug!(uid = %env.uid, twin = source.twin, "dropping a request seen before");
            return;
        }
        self.seen.insert(key, env.expires_at().max(now));
        let Some(Message::Request(Request { command })) = env.message.clone() else {
            return;
        };
        let data = match self.keys.payload(source.twin, &env).await {
            Ok(plain) => plain,
            Err(reason) => {
                self.metrics.drop_one(DropReason::Crypto);
                tracing::warn!(uid = %env.uid, twin = source.twin, reason, "cannot decrypt a request");
                let refusal =
                    self.error_envelope(&env, codes::CRYPTO, &format!("cannot decrypt: {reason}"));
                self.send(refusal);
                return;
            }
        };
        self.metrics.received(Kind::Request.as_str());
        if command == VERSION_COMMAND {
            let version = serde_json::to_vec(crate::VERSION).unwrap_or_default();
            let payload = self.keys.seal(source.twin, version).await;
            let resp = self.sign(Envelope {
                uid: env.uid.clone(),
                timestamp: unix_now(),
                expiration: REPLY_TTL_SECS,
                source: Some(self.keys.me.clone()),
                destination: Some(source),
                message: Some(Message::Response(Response {})),
                schema: Some(crate::direct::JSON_SCHEMA.to_string()),
                payload: Some(payload),
                ..Default::default()
            });
            self.send(resp);
            return;
        }
        let doc = IncomingRequest {
            version: DOC_VERSION,
            reference: Some(env.uid.clone()),
            source: AddressText(&source).to_string(),
            command: command.clone(),
            expiration: env.expiration,
            data: encode_data(&data),
            tags: env.tags.clone(),
            reply_to: REPLY_QUEUE.to_string(),
            schema: env.schema.clone(),
            timestamp: env.timestamp,
        };
        let text = match serde_json::to_string(&doc) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a document");
                return;
            }
        };
        let queue = command_queue(&command);
        match local::push_capped(
            &self.push,
            &self.metrics,
            &queue,
            text,
            self.max_queue_length,
        )
        .await
        {
            Pushed::Stored(length) => self.metrics.service_queue.observe(length as f64),
            Pushed::Full(length) => {
                self.metrics.drop_one(DropReason::LocalQueueFull);
                let warn_due = self
                    .last_queue_warning
                    .is_none_or(|t| t.elapsed() >= QUEUE_WARN_EVERY);
                if warn_due {
                    self.last_queue_warning = Some(Instant::now());
                    tracing::warn!(
                        queue,
                        length,
                        limit = self.max_queue_length,
                        "service queue full: refusing requests (is the service running?)"
                    );
                }
                let message = format!(
                    "queue full: {queue} holds {length} requests (limit {})",
                    self.max_queue_length
                );
                let refusal = self.error_envelope(&env, QUEUE_FULL_CODE, &message);
                self.send(refusal);
            }
            Pushed::Failed => {
                let refusal = self.error_envelope(
                    &env,
                    codes::OTHER,
                    "the peer's local redis is unavailable",
                );
                self.send(refusal);
            }
        }
    }

    fn error_envelope(&self, to: &Envelope, code: u32, message: &str) -> Envelope {
        self.sign(Envelope {
            uid: to.uid.clone(),
            timestamp: unix_now(),
            expiration: REPLY_TTL_SECS,
            source: Some(self.keys.me.clone()),
            destination: to.source.clone(),
            message: Some(Message::Error(rmb_proto::Error {
                code,
                message: message.to_string(),
            })),
            ..Default::default()
        })
    }

    async fn incoming_answer(&mut self, env: Envelope) {
        let Some(pending) = self.pending.get(&env.uid) else {
            let reason = if self.answered.contains_key(&env.uid) {
                DropReason::Replayed
            } else {
                DropReason::Unexpected
            };
            self.metrics.drop_one(reason);
            tracing::debug!(uid = %env.uid, reason = reason.as_str(), "dropping an answer to no pending request");
            return;
        };
        let from_relay = env.source.as_ref().is_none_or(|s| s.twin == 0);
        let source = if from_relay {
            // The relay's own errors (unknown twin, offline, limits) are unsigned and carry no
            // source; they come from a relay we hold a session with. Without a source they
            // can be attributed only when a single destination is still waiting.
            if env.kind() != Kind::Error {
                self.metrics.drop_one(DropReason::Unsigned);
                return;
            }
            match pending.waiting.iter().collect::<Vec<_>>().as_slice() {
                [only] => Address::new(**only, None),
                // Several waiting: the relay names the twin in its message ("unknown twin 7").
                waiting => {
                    let message = match &env.message {
                        Some(Message::Error(e)) => e.message.as_str(),
                        _ => "",
                    };
                    let named = message
                        .split(|c: char| !c.is_ascii_digit())
                        .filter_map(|word| word.parse::<u32>().ok())
                        .find(|twin| waiting.contains(&twin));
                    Address::new(named.unwrap_or(0), None)
                }
            }
        } else {
            let source = env.source.clone().unwrap_or_default();
            if !pending.waiting.contains(&source.twin) {
                // Either a twin that answered already, or one the request never went to.
                let reason = if pending.destinations.contains(&source.twin) {
                    DropReason::Replayed
                } else {
                    DropReason::WrongSource
                };
                self.metrics.drop_one(reason);
                tracing::warn!(uid = %env.uid, twin = source.twin, "dropping an answer from a twin not waited for");
                return;
            }
            if !self.keys.verified(&env, source.twin).await {
                return;
            }
            source
        };
        let Some(pending) = self.pending.get_mut(&env.uid) else {
            return;
        };
        pending.waiting.remove(&source.twin);
        let (reference, reply_to) = (pending.reference.clone(), pending.reply_to.clone());
        if pending.waiting.is_empty() {
            self.pending.remove(&env.uid);
            self.answered
                .insert(env.uid.clone(), unix_now().saturating_add(REPLY_TTL_SECS));
            self.metrics.pending.set(self.pending.len() as i64);
        }
        let mut doc = IncomingResponse {
            version: DOC_VERSION,
            reference,
            data: String::new(),
            source: AddressText(&source).to_string(),
            schema: env.schema.clone(),
            timestamp: env.timestamp,
            error: None,
        };
        match &env.message {
            Some(Message::Error(e)) => {
                doc.error = Some(JsonError {
                    code: e.code,
                    message: e.message.clone(),
                })
            }
            _ => match self.keys.payload(source.twin, &env).await {
                Ok(plain) => doc.data = encode_data(&plain),
                Err(reason) => {
                    doc.error = Some(JsonError {
                        code: codes::CRYPTO,
                        message: format!("cannot decrypt the response: {reason}"),
                    })
                }
            },
        }
        self.metrics.received(env.kind().as_str());
        self.push(&reply_to, &doc).await;
    }

    /// Answers, with a timeout error, every destination of every expired pending request.
    async fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in expired {
            let Some(p) = self.pending.remove(&uid) else {
                continue;
            };
            self.answered
                .insert(uid.clone(), unix_now().saturating_add(REPLY_TTL_SECS));
            let mut waiting: Vec<u32> = p.waiting.into_iter().collect();
            waiting.sort_unstable();
            for twin in waiting {
                self.metrics.timeouts.inc();
                let message = format!(
                    "timeout: twin {twin} did not answer within {} seconds",
                    p.ttl
                );
                self.answer_caller_error(
                    &p.reply_to,
                    p.reference.clone(),
                    twin.to_string(),
                    TIMEOUT_CODE,
                    message,
                )
                .await;
            }
        }
        self.metrics.pending.set(self.pending.len() as i64);
    }
}
