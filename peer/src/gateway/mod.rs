//! The gateway: a twin's keys and relay session exposed to local services through Redis
//! queues, compatible with the existing `rmb-peer` (see [`messages`] for the documents).
//!
//! [`run`] wires four parts together:
//! - the local reader ([`local`]): `BRPOP` on `msgbus.system.local` (callers' requests) and
//!   `msgbus.system.reply` (services' replies);
//! - the relay session ([`relay`]): one websocket, reconnected with backoff and jitter;
//! - the core (this module), one task that owns all state: it signs what goes out, verifies
//!   what comes in, and matches responses to the requests waiting for them;
//! - the local writer: `LPUSH` of responses on the caller's `ret` list and of requests on
//!   `msgbus.<cmd>`.
//!
//! Rules the core enforces:
//! - every envelope sent is signed with our key; every request or response received must
//!   verify against the source twin's account key from the directory, or it is dropped and
//!   counted ([`Stats::bad_signatures`], [`Stats::unknown_sources`]);
//! - a response is accepted only for a pending request (by uid) and only from a twin the
//!   request went to, once per twin; anything else is dropped ([`Stats::unexpected`]);
//! - a request uid seen again from the same twin within its lifetime is dropped
//!   ([`Stats::duplicates`]), so relay redeliveries reach a service once;
//! - expired envelopes are dropped; a pending request whose time to live passes without an
//!   answer from some destination gets, for each such destination, an error response on its
//!   `ret` list with code [`TIMEOUT_CODE`] (500: the protocol has no dedicated timeout code)
//!   and a message starting with `timeout:`;
//! - `rmb.version` requests are answered by the gateway itself, with the crate version as a
//!   JSON string.
//!
//! - payloads are encrypted end to end (secp256k1 ECDH, AES-256-GCM) when both we and the
//!   other twin publish an encryption key (`pk`) in the directory, and sent plain otherwise;
//!   cipher payloads received are decrypted with the key the source twin publishes, and a
//!   request that cannot be decrypted is answered with error 106.
//!
//! Not yet here: several relays at once (only the first is used), the substrate directory.

pub mod local;
pub mod messages;
pub mod relay;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Client, ClientLike as _};
use rmb_identity::{
    sign_envelope, ss58_address, verify_envelope, SharedKey, Signer, TwinDirectory,
};
use rmb_proto::{codes, unix_now, Address, Envelope, Kind, Message, Payload, Request, Response};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::direct::{new_uid, REPLY_TTL_SECS};
use local::LocalItem;
use messages::{
    command_queue, decode_data, encode_data, parse_address, AddressText, IncomingRequest,
    IncomingResponse, JsonError, OutgoingRequest, OutgoingResponse, DOC_VERSION, REPLY_QUEUE,
};

/// The error code of the response a caller gets when a destination did not answer before
/// the request expired.
pub const TIMEOUT_CODE: u32 = codes::OTHER;
/// The command the gateway answers itself.
pub const VERSION_COMMAND: &str = "rmb.version";
/// Time to live of a request whose document says `exp: 0`.
pub const DEFAULT_TTL_SECS: u64 = 300;
/// How often pending requests are checked for expiry.
const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// How long the relay session gets to send what is queued when shutting down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Most requests waiting for answers; beyond it new requests are refused with code 500.
pub const MAX_PENDING: usize = 100_000;
/// Most shared keys cached.
const MAX_SHARED_KEYS: usize = 10_000;
/// Channel bounds between the parts.
const QUEUE: usize = 1024;

/// What the gateway needs to run.
pub struct Config {
    /// Our keys: every envelope is signed with them, and the session token too.
    pub signer: Signer,
    /// Our twin id; looked up in the directory by our account key when `None`.
    pub twin: Option<u32>,
    /// The local Redis, `redis://host:port`.
    pub redis_url: String,
    /// Relay websocket URLs (`ws://host:port`). Only the first is used for now.
    pub relays: Vec<String>,
    /// Where twins' keys are looked up.
    pub directory: Arc<dyn TwinDirectory>,
    /// Counters, shared with whoever wants to read them.
    pub stats: Arc<Stats>,
}

/// Counters of what the gateway did and refused.
#[derive(Debug, Default)]
pub struct Stats {
    /// Relay sessions opened.
    pub relay_connects: AtomicU64,
    /// Request envelopes sent (one per destination).
    pub requests_sent: AtomicU64,
    /// Responses and errors handed to local callers (timeouts included).
    pub responses_delivered: AtomicU64,
    /// Requests handed to local services.
    pub requests_delivered: AtomicU64,
    /// Replies of local services sent to the relay.
    pub replies_sent: AtomicU64,
    /// Envelopes whose signature did not verify.
    pub bad_signatures: AtomicU64,
    /// Envelopes from twins the directory does not know (or could not be asked about).
    pub unknown_sources: AtomicU64,
    /// Responses for no pending request or from a twin the request did not go to.
    pub unexpected: AtomicU64,
    /// Requests seen twice.
    pub duplicates: AtomicU64,
    /// Envelopes received already expired.
    pub expired: AtomicU64,
    /// Destinations that did not answer in time.
    pub timeouts: AtomicU64,
    /// Local documents that could not be parsed or used.
    pub invalid_documents: AtomicU64,
    /// Failed Redis commands.
    pub redis_errors: AtomicU64,
}

impl Stats {
    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
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
    let url = config
        .relays
        .first()
        .cloned()
        .ok_or(GatewayError::NoRelay)?;
    if config.relays.len() > 1 {
        tracing::warn!(
            relay = %url,
            "several relays given: only the first is used by this version"
        );
    }
    let twin = resolve_twin(&config).await?;
    let redis_err = |e: fred::error::Error| GatewayError::Redis {
        url: config.redis_url.clone(),
        reason: e.to_string(),
    };
    let pop = local::connect(&config.redis_url).await.map_err(redis_err)?;
    let push = local::connect(&config.redis_url).await.map_err(redis_err)?;
    tracing::info!(twin, relay = %url, redis = %config.redis_url, "gateway starting");

    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (local_tx, local_rx) = mpsc::channel(QUEUE);
    let relay_cancel = CancellationToken::new();
    let pop_cancel = CancellationToken::new();
    let mut relay_task = tokio::spawn(relay::run(
        url,
        config.signer.clone(),
        twin,
        out_rx,
        in_tx,
        config.stats.clone(),
        relay_cancel.clone(),
    ));
    let pop_task = tokio::spawn(local::pop_loop(
        pop,
        local_tx,
        config.stats.clone(),
        pop_cancel.clone(),
    ));

    let core = Core {
        signer: config.signer,
        me: Address::new(twin, None),
        directory: config.directory,
        stats: config.stats,
        push: push.clone(),
        outbound: out_tx,
        pending: HashMap::new(),
        seen: HashMap::new(),
        keys: HashMap::new(),
    };
    core.run(local_rx, in_rx, shutdown, pop_cancel).await;
    let _ = pop_task.await;
    // The core dropped its sender: the session sends what is queued, then closes.
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut relay_task)
        .await
        .is_err()
    {
        relay_cancel.cancel();
        let _ = relay_task.await;
    }
    let _ = push.quit().await;
    tracing::info!(twin, "gateway stopped");
    Ok(())
}

async fn resolve_twin(config: &Config) -> Result<u32, GatewayError> {
    let account = config.signer.public_key();
    match config.twin {
        Some(id) => {
            match config.directory.twin(id).await {
                Ok(Some(t)) if t.account != account => return Err(GatewayError::KeyMismatch(id)),
                Ok(Some(_)) => {}
                Ok(None) => tracing::warn!(twin = id, "our twin is not in the directory"),
                Err(e) => tracing::warn!(twin = id, error = %e, "cannot check our twin"),
            }
            Ok(id)
        }
        None => config
            .directory
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
    deadline: Instant,
    ttl: u64,
}

struct Core {
    signer: Signer,
    me: Address,
    directory: Arc<dyn TwinDirectory>,
    stats: Arc<Stats>,
    push: Client,
    outbound: mpsc::Sender<Envelope>,
    /// By envelope uid.
    pending: HashMap<String, Pending>,
    /// Requests received: (source twin, uid) → unix time they expire.
    seen: HashMap<(u32, String), u64>,
    /// Keys shared with other twins, with the public key they were derived from.
    keys: HashMap<u32, (Vec<u8>, SharedKey)>,
}

impl Core {
    async fn run(
        mut self,
        mut local: mpsc::Receiver<LocalItem>,
        mut inbound: mpsc::Receiver<Envelope>,
        shutdown: impl Future<Output = ()> + Send,
        pop_cancel: CancellationToken,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stopping = false;
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = &mut shutdown, if !stopping => {
                    // Stop popping; handle what was popped already, then return.
                    stopping = true;
                    pop_cancel.cancel();
                }
                item = local.recv() => match item {
                    Some(LocalItem::Request(doc)) => self.local_request(&doc).await,
                    Some(LocalItem::Reply(doc)) => self.local_reply(&doc).await,
                    None => return,
                },
                Some(env) = inbound.recv() => self.incoming(env).await,
                _ = tick.tick() => {
                    self.expire().await;
                    ticks += 1;
                    if ticks % 50 == 0 {
                        let now = unix_now();
                        self.seen.retain(|_, expires| *expires >= now);
                    }
                }
            }
        }
    }

    async fn push(&self, list: &str, doc: &impl serde::Serialize) {
        match serde_json::to_string(doc) {
            Ok(text) => local::push(&self.push, &self.stats, list, text).await,
            Err(e) => tracing::error!(error = %e, "cannot encode a document"),
        }
    }

    async fn send(&self, env: Envelope) {
        if self.outbound.send(env).await.is_err() {
            tracing::warn!("relay session stopped; envelope dropped");
        }
    }

    /// The key shared with `twin`, when `twin` publishes an encryption key (and, with
    /// `need_ours`, when we publish ours too, so that `twin` can derive it).
    async fn shared_key(&mut self, twin: u32, need_ours: bool) -> Option<SharedKey> {
        if need_ours {
            let ours = self.directory.twin(self.me.twin).await.ok().flatten()?;
            let published = self.signer.identity().encryption_public_key();
            if ours.pk.as_deref() != Some(&published[..]) {
                return None;
            }
        }
        let pk = self.directory.twin(twin).await.ok().flatten()?.pk.clone()?;
        if let Some((cached_pk, key)) = self.keys.get(&twin) {
            if *cached_pk == pk {
                return Some(key.clone());
            }
        }
        let key = match SharedKey::derive(self.signer.identity(), &pk) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(twin, error = %e, "twin publishes an unusable encryption key");
                return None;
            }
        };
        if self.keys.len() >= MAX_SHARED_KEYS {
            self.keys.clear();
        }
        self.keys.insert(twin, (pk, key.clone()));
        Some(key)
    }

    /// The payload for `twin`: encrypted when both twins publish encryption keys.
    async fn seal(&mut self, twin: u32, plain: Vec<u8>) -> Payload {
        match self.shared_key(twin, true).await {
            Some(key) => Payload::Cipher(key.encrypt(&plain)),
            None => Payload::Plain(plain),
        }
    }

    /// The plain bytes of a cipher payload from `twin`.
    async fn open(&mut self, twin: u32, cipher: &[u8]) -> Result<Vec<u8>, String> {
        let key = self
            .shared_key(twin, false)
            .await
            .ok_or_else(|| format!("twin {twin} publishes no usable encryption key"))?;
        key.decrypt(cipher).map_err(|e| e.to_string())
    }

    fn sign(&self, mut env: Envelope) -> Envelope {
        sign_envelope(&mut env, &self.signer);
        env
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
        self.stats.count(&self.stats.responses_delivered);
        self.push(reply_to, &doc).await;
    }

    async fn local_request(&mut self, doc: &str) {
        let req: OutgoingRequest = match serde_json::from_str(doc) {
            Ok(req) => req,
            Err(e) => {
                self.stats.count(&self.stats.invalid_documents);
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
            self.stats.count(&self.stats.invalid_documents);
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
                self.stats.count(&self.stats.invalid_documents);
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
            self.stats.count(&self.stats.invalid_documents);
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
                    deadline: Instant::now() + Duration::from_secs(ttl),
                    ttl,
                },
            );
        }
        let now = unix_now();
        for dst in destinations {
            let payload = self.seal(dst, payload.clone()).await;
            let env = self.sign(Envelope {
                uid: uid.clone(),
                tags: req.tags.clone(),
                timestamp: now,
                expiration: ttl,
                source: Some(self.me.clone()),
                destination: Some(Address::new(dst, None)),
                message: Some(Message::Request(Request {
                    command: req.command.clone(),
                })),
                schema: req.schema.clone(),
                payload: Some(payload),
                ..Default::default()
            });
            self.stats.count(&self.stats.requests_sent);
            self.send(env).await;
        }
    }

    async fn local_reply(&mut self, doc: &str) {
        let reply: OutgoingResponse = match serde_json::from_str(doc) {
            Ok(r) => r,
            Err(e) => {
                self.stats.count(&self.stats.invalid_documents);
                tracing::warn!(error = %e, "invalid reply document");
                return;
            }
        };
        let uid = reply.reference.clone().unwrap_or_default();
        let Some(destination) = parse_address(&reply.destination).filter(|_| !uid.is_empty())
        else {
            self.stats.count(&self.stats.invalid_documents);
            tracing::warn!(dst = %reply.destination, "reply without a valid ref and dst");
            return;
        };
        let mut env = Envelope {
            uid,
            timestamp: unix_now(),
            expiration: REPLY_TTL_SECS,
            source: Some(self.me.clone()),
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
                env.payload = Some(self.seal(destination.twin, data).await);
            }
            (None, Err(e)) => {
                self.stats.count(&self.stats.invalid_documents);
                env.message = Some(Message::Error(rmb_proto::Error {
                    code: codes::INVALID_PAYLOAD,
                    message: format!("the service's reply is not base64: {e}"),
                }));
            }
        }
        self.stats.count(&self.stats.replies_sent);
        let env = self.sign(env);
        self.send(env).await;
    }

    async fn incoming(&mut self, env: Envelope) {
        let kind = env.kind();
        if !matches!(kind, Kind::Request | Kind::Response | Kind::Error) {
            return; // pongs to our keepalive pings
        }
        let now = unix_now();
        if env.is_expired(now) {
            self.stats.count(&self.stats.expired);
            tracing::debug!(uid = %env.uid, "dropping an expired envelope");
            return;
        }
        if kind == Kind::Request {
            self.incoming_request(env, now).await;
        } else {
            self.incoming_answer(env).await;
        }
    }

    /// Whether `env` is signed by its source twin's key.
    async fn verified(&self, env: &Envelope, twin: u32) -> bool {
        match self.directory.twin(twin).await {
            Ok(Some(t)) => match verify_envelope(env, &t.account) {
                Ok(_) => true,
                Err(e) => {
                    self.stats.count(&self.stats.bad_signatures);
                    tracing::warn!(uid = %env.uid, twin, error = %e, "dropping a badly signed envelope");
                    false
                }
            },
            Ok(None) => {
                self.stats.count(&self.stats.unknown_sources);
                tracing::warn!(uid = %env.uid, twin, "dropping an envelope from an unknown twin");
                false
            }
            Err(e) => {
                self.stats.count(&self.stats.unknown_sources);
                tracing::warn!(uid = %env.uid, twin, error = %e, "cannot look the source twin up; dropping");
                false
            }
        }
    }

    async fn incoming_request(&mut self, env: Envelope, now: u64) {
        let Some(source) = env.source.clone().filter(|s| s.twin != 0) else {
            self.stats.count(&self.stats.unknown_sources);
            return;
        };
        if !self.verified(&env, source.twin).await {
            return;
        }
        let key = (source.twin, env.uid.clone());
        if self.seen.contains_key(&key) {
            self.stats.count(&self.stats.duplicates);
            tracing::debug!(uid = %env.uid, twin = source.twin, "dropping a duplicate request");
            return;
        }
        self.seen.insert(key, env.expires_at().max(now));
        let Some(Message::Request(Request { command })) = env.message.clone() else {
            return;
        };
        let data = match &env.payload {
            Some(Payload::Plain(p)) => p.clone(),
            None => Vec::new(),
            Some(Payload::Cipher(c)) => match self.open(source.twin, c).await {
                Ok(plain) => plain,
                Err(reason) => {
                    tracing::warn!(uid = %env.uid, twin = source.twin, reason, "cannot decrypt a request");
                    let refusal = self.error_envelope(
                        &env,
                        codes::CRYPTO,
                        &format!("cannot decrypt: {reason}"),
                    );
                    self.send(refusal).await;
                    return;
                }
            },
        };
        if command == VERSION_COMMAND {
            let version = serde_json::to_vec(crate::VERSION).unwrap_or_default();
            let payload = self.seal(source.twin, version).await;
            let resp = self.sign(Envelope {
                uid: env.uid.clone(),
                timestamp: unix_now(),
                expiration: REPLY_TTL_SECS,
                source: Some(self.me.clone()),
                destination: Some(source),
                message: Some(Message::Response(Response {})),
                schema: Some(crate::direct::JSON_SCHEMA.to_string()),
                payload: Some(payload),
                ..Default::default()
            });
            self.stats.count(&self.stats.replies_sent);
            self.send(resp).await;
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
        self.stats.count(&self.stats.requests_delivered);
        self.push(&command_queue(&command), &doc).await;
    }

    fn error_envelope(&self, to: &Envelope, code: u32, message: &str) -> Envelope {
        self.sign(Envelope {
            uid: to.uid.clone(),
            timestamp: unix_now(),
            expiration: REPLY_TTL_SECS,
            source: Some(self.me.clone()),
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
            self.stats.count(&self.stats.unexpected);
            tracing::debug!(uid = %env.uid, "dropping an answer to no pending request");
            return;
        };
        let from_relay = env.source.as_ref().is_none_or(|s| s.twin == 0);
        let source = if from_relay {
            // The relay's own errors (unknown twin, offline, limits) are unsigned and carry no
            // source; they come from the relay we hold a session with. Without a source they
            // can be attributed only when a single destination is still waiting.
            if env.kind() != Kind::Error {
                self.stats.count(&self.stats.unexpected);
                return;
            }
            match pending.waiting.iter().collect::<Vec<_>>().as_slice() {
                [only] => Address::new(**only, None),
                _ => Address::new(0, None),
            }
        } else {
            let source = env.source.clone().unwrap_or_default();
            if !pending.waiting.contains(&source.twin) {
                self.stats.count(&self.stats.unexpected);
                tracing::debug!(uid = %env.uid, twin = source.twin, "dropping an answer from a twin not waited for");
                return;
            }
            if !self.verified(&env, source.twin).await {
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
        match (&env.message, &env.payload) {
            (Some(Message::Error(e)), _) => {
                doc.error = Some(JsonError {
                    code: e.code,
                    message: e.message.clone(),
                })
            }
            (_, Some(Payload::Cipher(c))) => match self.open(source.twin, c).await {
                Ok(plain) => doc.data = encode_data(&plain),
                Err(reason) => {
                    doc.error = Some(JsonError {
                        code: codes::CRYPTO,
                        message: format!("cannot decrypt the response: {reason}"),
                    })
                }
            },
            (_, Some(Payload::Plain(p))) => doc.data = encode_data(p),
            (_, None) => {}
        }
        self.stats.count(&self.stats.responses_delivered);
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
            let mut waiting: Vec<u32> = p.waiting.into_iter().collect();
            waiting.sort_unstable();
            for twin in waiting {
                self.stats.count(&self.stats.timeouts);
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
    }
}
