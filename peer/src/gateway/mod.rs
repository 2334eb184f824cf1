//! The gateway: a twin's keys and relay sessions exposed to local services through Redis
//! queues, compatible with the existing `rmb-peer` (see [`messages`] for the documents).
//!
//! [`run`] wires four parts together:
//! - the local reader ([`local`]): `BRPOP` on `msgbus.system.local` (callers' requests) and
//!   `msgbus.system.reply` (services' replies);
//! - the relay sessions ([`crate::pool`]): one per configured relay, all open at once,
//!   reconnected with backoff and jitter, sharing one outbox;
//! - the gateway task (this module), a thin shell around the protocol core
//!   ([`crate::protocol`]), which decides what to do with every envelope: what to verify,
//!   refuse, drop, deliver, and how to seal what goes out. The task turns documents into the
//!   core's inputs, answers its directory and backlog questions, and carries out its actions;
//!   it never awaits Redis inside a rule;
//! - the local writer: `LPUSH` of responses on the caller's `ret` list and of requests on
//!   `msgbus.<cmd>`.
//!
//! The protocol rules (verification, refusals with codes 102–106, replays, sealing) are
//! listed in [`crate::protocol`]. What the gateway adds (every drop is counted in
//! `rmb_peer_envelopes_dropped_total{reason}`, see [`DropReason`]):
//! - the local API is served from the start. While our twin id is not known yet (the twin
//!   directory, usually the chain, is being asked, and asked again while it cannot be
//!   reached) `rmb.version` for twin 0 is answered and other documents wait, popped but
//!   not lost: they are handled once the twin is known, or pushed back at shutdown;
//! - every request sent is recorded in the [`backlog`] in Redis (`msgbus.backlog.<uid>`,
//!   expiring with the request), so answers that arrive after a restart reach their caller;
//! - a request that cannot be sealed for a destination is not sent to it: the caller gets
//!   an error answer saying why;
//! - a request nobody answers gets no document at its expiry (callers keep their own
//!   deadline, as with the original), unless [`Config::timeout_errors`] asks for one error
//!   answer per silent destination with code [`TIMEOUT_CODE`] and a message starting with
//!   `timeout:`;
//! - a request for a service whose `msgbus.<cmd>` list already holds
//!   [`Config::max_queue_length`] documents is not pushed: the sender gets an error response
//!   (code 500, message starting with `queue full:`), and the refusal is logged and counted;
//!   nothing is ever trimmed from a list;
//! - while more than [`OUTBOX_HIGH`] envelopes wait for a relay, the gateway stops popping
//!   `msgbus.system.local`/`reply`, so callers' documents wait in Redis instead of memory;
//! - `rmb.version` requests from other twins are answered by the gateway itself with
//!   [`crate::VERSION`] as a JSON string; a local `rmb.version` request for twin 0 (this
//!   gateway) or for our own twin is answered locally.

pub mod backlog;
pub mod local;
pub mod messages;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Client, ClientLike as _};
use rmb_common::backoff::{BackoffPolicy, Jitter};
use rmb_identity::{ss58_address, Signer, TwinDirectory};
use rmb_proto::{codes, unix_now, Envelope, Kind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::direct::{new_uid, JSON_SCHEMA};
pub use crate::metrics::{DropReason, Metrics};
use crate::pool::{Pool, PoolSettings};
use crate::protocol::{
    Action, Answer, AnswerBody, Call, Delivery, Lookup, NewCall, Protocol, ProtocolError, Reply,
    Step,
};
use crate::shell::Lookups;
use backlog::{Caller, Tracked};
use local::{LocalItem, Pushed};
use messages::{
    command_queue, decode_data, encode_data, parse_address, AddressText, IncomingRequest,
    IncomingResponse, JsonError, OutgoingRequest, OutgoingResponse, DOC_VERSION, REPLY_QUEUE,
};

/// The error code of the response a caller gets, with [`Config::timeout_errors`], when a
/// destination did not answer before the request expired.
pub const TIMEOUT_CODE: u32 = codes::OTHER;
/// The error code a sender gets when the service's queue is full.
pub const QUEUE_FULL_CODE: u32 = codes::OTHER;
/// The command the gateway answers itself.
pub const VERSION_COMMAND: &str = "rmb.version";
/// The destination a local caller uses to ask this gateway itself (`rmb.version`).
pub const THIS_GATEWAY: u32 = 0;
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
/// Local documents held while our twin id is being resolved; beyond it the rest wait in Redis.
const HELD_MAX: usize = 10_000;
/// Longest wait between two attempts to resolve our twin.
/// Asking the directory for our twin again: from 1 s doubling up to 30 s.
const RESOLVE_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(30)).with_jitter(Jitter::None);
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
    /// The local Redis: `redis://host:port`, or a Unix socket (see [`crate::redis_url`]).
    pub redis_url: String,
    /// The relays (`ws://` or `wss://`), all used at once, and how sessions behave.
    pub relay: PoolSettings,
    /// Where twins' keys are looked up.
    pub directory: Arc<dyn TwinDirectory>,
    /// Most documents a service's `msgbus.<cmd>` list may hold before requests for it are
    /// refused (0: no bound).
    pub max_queue_length: usize,
    /// Push an error answer (code [`TIMEOUT_CODE`], `timeout: …`) on the caller's `ret` list
    /// for every destination that did not answer before the request expired. Off by default,
    /// as in the original: callers keep their own deadline.
    pub timeout_errors: bool,
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
/// account has no twin); a directory that cannot be reached is asked again until it answers,
/// and relay and Redis failures afterwards are retried.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    if config.relay.relays.is_empty() {
        return Err(GatewayError::NoRelay);
    }
    let redis_err = |e: fred::error::Error| GatewayError::Redis {
        url: crate::redis_url::masked(&config.redis_url),
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
        relays = ?relays,
        redis = %crate::redis_url::masked(&config.redis_url),
        "serving the local redis api; resolving our twin"
    );

    let (local_tx, mut local_rx) = mpsc::channel(QUEUE);
    let pop_cancel = CancellationToken::new();
    let metrics = config.metrics;
    let pop_task = tokio::spawn(local::pop_loop(
        pop,
        local_tx,
        metrics.clone(),
        pop_cancel.clone(),
    ));
    tokio::pin!(shutdown);

    let mut held = VecDeque::new();
    let resolved = until_resolved(
        &config.signer,
        config.twin,
        config.directory.clone(),
        &push,
        &metrics,
        &mut local_rx,
        &mut held,
        &mut shutdown,
    )
    .await;
    let twin = match resolved {
        Ok(Some(twin)) => twin,
        stopped => {
            // Stopped (or refused) before our twin was known: what was popped goes back.
            pop_cancel.cancel();
            let _ = pop_task.await;
            while let Ok(item) = local_rx.try_recv() {
                held.push_back(item);
            }
            local::give_back(&push, &metrics, held).await;
            let _ = push.quit().await;
            return stopped.map(|_| ());
        }
    };
    tracing::info!(twin, relays = ?relays, "gateway starting");

    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let pool = Pool::start(
        config.relay,
        config.signer.clone(),
        twin,
        in_tx,
        metrics.clone(),
    );
    let mut gateway = Gateway {
        protocol: Protocol::new(config.signer, twin),
        lookups: GatewayLookups {
            directory: config.directory,
            redis: push.clone(),
            metrics: metrics.clone(),
        },
        metrics,
        push: push.clone(),
        pool,
        max_queue_length: config.max_queue_length,
        timeout_errors: config.timeout_errors,
        last_queue_warning: None,
    };
    if gateway.timeout_errors {
        gateway.load_backlog().await;
    }
    for item in held {
        gateway.local_item(item).await;
    }
    let pool = gateway.run(local_rx, in_rx, shutdown, pop_cancel).await;
    let _ = pop_task.await;
    pool.shutdown(SHUTDOWN_GRACE).await;
    let _ = push.quit().await;
    tracing::info!(twin, "gateway stopped");
    Ok(())
}

/// Resolves our twin, retrying while the directory cannot be reached, and meanwhile serves
/// what needs no twin id (`rmb.version` for [`THIS_GATEWAY`]) and holds the other local
/// documents. `Ok(None)`: shutdown came first.
#[allow(clippy::too_many_arguments)]
async fn until_resolved(
    signer: &Signer,
    given: Option<u32>,
    directory: Arc<dyn TwinDirectory>,
    push: &Client,
    metrics: &Metrics,
    local: &mut mpsc::Receiver<LocalItem>,
    held: &mut VecDeque<LocalItem>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<u32>, GatewayError> {
    let resolving = resolve_with_retries(signer.clone(), given, directory);
    tokio::pin!(resolving);
    loop {
        tokio::select! {
            _ = shutdown.as_mut() => return Ok(None),
            resolved = &mut resolving => return resolved.map(Some),
            item = local.recv(), if held.len() < HELD_MAX => match item {
                Some(LocalItem::Request(doc)) => {
                    if !answer_version_locally(push, metrics, &doc, None).await {
                        held.push_back(LocalItem::Request(doc));
                    }
                }
                Some(reply) => held.push_back(reply),
                None => return Ok(None),
            },
        }
    }
}

/// [`resolve_twin`], asked again with backoff while the directory cannot be reached.
async fn resolve_with_retries(
    signer: Signer,
    given: Option<u32>,
    directory: Arc<dyn TwinDirectory>,
) -> Result<u32, GatewayError> {
    let mut backoff = RESOLVE_BACKOFF.start();
    loop {
        match resolve_twin(&signer, given, directory.as_ref()).await {
            Err(GatewayError::Directory(reason)) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    %reason,
                    retry_in = ?delay,
                    "cannot resolve our twin yet (is the chain reachable?); trying again"
                );
                tokio::time::sleep(delay).await;
            }
            resolved => return resolved,
        }
    }
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

/// Whether `twin` names this gateway in a local request: [`THIS_GATEWAY`] or our own twin.
fn is_this_gateway(twin: u32, me: Option<u32>) -> bool {
    twin == THIS_GATEWAY || Some(twin) == me
}

/// Answers a local `rmb.version` request addressed only to this gateway (see
/// [`is_this_gateway`]); returns whether it did.
async fn answer_version_locally(
    push: &Client,
    metrics: &Metrics,
    doc: &str,
    me: Option<u32>,
) -> bool {
    let Ok(req) = serde_json::from_str::<OutgoingRequest>(doc) else {
        return false;
    };
    let local =
        !req.destinations.is_empty() && req.destinations.iter().all(|&d| is_this_gateway(d, me));
    if req.command != VERSION_COMMAND || !local {
        return false;
    }
    let mut destinations = req.destinations.clone();
    destinations.dedup();
    for dst in destinations {
        push_doc(push, metrics, &req.reply_to, &version_answer(&req, dst)).await;
    }
    true
}

/// The answer to a local `rmb.version` request for `twin` (this gateway).
fn version_answer(req: &OutgoingRequest, twin: u32) -> IncomingResponse {
    IncomingResponse {
        version: DOC_VERSION,
        reference: req.reference.clone(),
        data: encode_data(&version_payload()),
        source: twin.to_string(),
        schema: Some(JSON_SCHEMA.to_string()),
        timestamp: unix_now(),
        error: None,
    }
}

/// [`crate::VERSION`] as a JSON string: what `rmb.version` answers.
fn version_payload() -> Vec<u8> {
    serde_json::to_vec(crate::VERSION).unwrap_or_default()
}

/// Pushes a document on `list` (nothing when `list` is empty: fire and forget).
async fn push_doc(push: &Client, metrics: &Metrics, list: &str, doc: &impl serde::Serialize) {
    if list.is_empty() {
        return;
    }
    match serde_json::to_string(doc) {
        Ok(text) => local::push(push, metrics, list, text).await,
        Err(e) => tracing::error!(error = %e, "cannot encode a document"),
    }
}

/// How the gateway answers the protocol core's questions: twins from the directory, calls
/// it does not hold from the backlog in Redis.
struct GatewayLookups {
    directory: Arc<dyn TwinDirectory>,
    redis: Client,
    metrics: Arc<Metrics>,
}

impl Lookups<Caller> for GatewayLookups {
    async fn twin(&self, twin: u32) -> Lookup {
        self.directory.twin(twin).await
    }

    async fn call(&self, uid: &str) -> Option<Call<Caller>> {
        match backlog::load(&self.redis, uid).await {
            Ok(Some(tracked)) => {
                tracing::debug!(uid, "answer to a request found in the backlog");
                Some(tracked.into_call(unix_now()))
            }
            Ok(None) => None,
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(uid, error = %e, "cannot read the backlog");
                None
            }
        }
    }
}

/// The gateway's task: the shell around the [`Protocol`] core. It owns the local Redis and
/// the relay sessions, feeds the core what arrives and carries out what it returns.
struct Gateway {
    protocol: Protocol<Caller>,
    lookups: GatewayLookups,
    metrics: Arc<Metrics>,
    push: Client,
    pool: Pool,
    max_queue_length: usize,
    timeout_errors: bool,
    last_queue_warning: Option<Instant>,
}

impl Gateway {
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
                    Some(item) => self.local_item(item).await,
                    None => return self.pool,
                },
                Some(env) = inbound.recv() => self.incoming(env).await,
                _ = tick.tick() => self.expire().await,
            }
        }
    }

    async fn local_item(&mut self, item: LocalItem) {
        match item {
            LocalItem::Request(doc) => self.local_request(&doc).await,
            LocalItem::Reply(doc) => self.local_reply(&doc).await,
        }
    }

    async fn push(&self, list: &str, doc: &impl serde::Serialize) {
        push_doc(&self.push, &self.metrics, list, doc).await;
    }

    /// Runs `step` of the core to its action.
    async fn drive(&self, step: Step<Caller>) -> Action<Caller> {
        crate::shell::drive(&self.protocol, step, &self.lookups).await
    }

    /// Carries out the actions every input may end in (send, refuse, drop); hands the
    /// others back.
    fn carry_out(&self, action: Action<Caller>) -> Option<Action<Caller>> {
        let left = crate::shell::carry_out(action, &self.metrics, |env| self.pool.send(env));
        self.metrics
            .pending
            .set(self.protocol.pending_calls() as i64);
        left
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

    /// Answers every destination of a request the caller will not get answers for.
    async fn refuse_request(
        &self,
        req: &OutgoingRequest,
        destinations: &[u32],
        code: u32,
        message: &str,
    ) {
        for dst in destinations {
            self.answer_caller_error(
                &req.reply_to,
                req.reference.clone(),
                dst.to_string(),
                code,
                message.to_string(),
            )
            .await;
        }
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
        if req.command == VERSION_COMMAND {
            let me = Some(self.protocol.me().twin);
            for &dst in destinations.iter().filter(|&&d| is_this_gateway(d, me)) {
                self.push(&req.reply_to, &version_answer(&req, dst)).await;
            }
            destinations.retain(|&d| !is_this_gateway(d, me));
            if destinations.is_empty() {
                return;
            }
        }
        let payload = match decode_data(&req.data) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.invalid_documents.inc();
                let message = format!("dat is not base64: {e}");
                self.refuse_request(&req, &destinations, codes::INVALID_PAYLOAD, &message)
                    .await;
                return;
            }
        };
        if self.protocol.pending_calls() >= MAX_PENDING {
            self.metrics.invalid_documents.inc();
            let message = format!("too many pending requests ({MAX_PENDING})");
            self.refuse_request(&req, &destinations, codes::OTHER, &message)
                .await;
            return;
        }
        let ttl = if req.expiration == 0 {
            DEFAULT_TTL_SECS
        } else {
            req.expiration
        };
        let now = unix_now();
        let new_call = NewCall {
            uid: new_uid(),
            command: req.command.clone(),
            tags: req.tags.clone(),
            schema: req.schema.clone(),
            timestamp: now,
            ttl,
        };
        let uid = &new_call.uid;
        if req.reply_to.is_empty() {
            tracing::debug!(%uid, "request without ret: answers will be dropped");
        } else {
            let caller = Caller {
                reference: req.reference.clone(),
                reply_to: req.reply_to.clone(),
            };
            let call = Call::new(destinations.clone(), now.saturating_add(ttl), ttl, caller);
            // Recorded before anything is sent, as the original does: an answer must always
            // find where it goes, even after a restart.
            if let Err(e) = backlog::store(&self.push, uid, &Tracked::of(&call)).await {
                self.metrics.redis_errors.inc();
                tracing::warn!(%uid, error = %e, "cannot record a request in the backlog; not sent");
                let message = format!("other: failed to store message tracking information: {e}");
                self.refuse_request(&req, &destinations, codes::OTHER, &message)
                    .await;
                return;
            }
            self.protocol.start_call(uid.clone(), call);
        }
        let mut refused = Vec::new();
        for &dst in &destinations {
            let step = self.protocol.request(&new_call, dst, payload.clone());
            let action = self.drive(step).await;
            let Some(Action::NotSent { why, .. }) = self.carry_out(action) else {
                continue;
            };
            let message = match why {
                ProtocolError::Directory { .. } => format!(
                    "{why}; the request was not sent (a twin that may publish an \
                     encryption key never gets plain text)"
                ),
                _ => format!("{why}; the request was not sent"),
            };
            self.answer_caller_error(
                &req.reply_to,
                req.reference.clone(),
                dst.to_string(),
                why.code(),
                message,
            )
            .await;
            refused.push(dst);
        }
        if !refused.is_empty() {
            // Those were answered already: nothing to wait for.
            if let Some(call) = self.protocol.settle(uid, &refused, unix_now()) {
                self.update_backlog(uid, &call).await;
            }
        }
        self.metrics
            .pending
            .set(self.protocol.pending_calls() as i64);
    }

    /// Records in the backlog which destinations of `uid` still wait.
    async fn update_backlog(&self, uid: &str, call: &Call<Caller>) {
        if let Err(e) = backlog::update(&self.push, uid, &Tracked::of(call)).await {
            self.metrics.redis_errors.inc();
            tracing::warn!(uid, error = %e, "cannot update the backlog");
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
        let answer = match (&reply.error, decode_data(&reply.data)) {
            (Some(err), _) => Reply::Error {
                code: err.code,
                message: err.message.clone(),
            },
            (None, Ok(data)) => Reply::Data {
                data,
                schema: reply.schema.clone(),
            },
            (None, Err(e)) => {
                self.metrics.invalid_documents.inc();
                Reply::Error {
                    code: codes::INVALID_PAYLOAD,
                    message: format!("the service's reply is not base64: {e}"),
                }
            }
        };
        let step = self.protocol.reply(uid, destination, answer, unix_now());
        let action = self.drive(step).await;
        self.carry_out(action);
    }

    async fn incoming(&mut self, env: Envelope) {
        let step = self.protocol.receive(env, unix_now());
        let action = self.drive(step).await;
        match self.carry_out(action) {
            Some(Action::Deliver(request)) => self.deliver(request).await,
            Some(Action::Answer(answer)) => self.answer(answer).await,
            _ => {}
        }
    }

    /// Hands a verified request to its service: `msgbus.<cmd>`, unless the service's queue is
    /// full; `rmb.version` is answered here.
    async fn deliver(&mut self, delivery: Delivery) {
        let Delivery {
            request: env,
            source,
            command,
            data,
        } = delivery;
        self.metrics.received(Kind::Request.as_str());
        if command == VERSION_COMMAND {
            let version = Reply::Data {
                data: version_payload(),
                schema: Some(JSON_SCHEMA.to_string()),
            };
            let step = self.protocol.reply(env.uid, source, version, unix_now());
            let action = self.drive(step).await;
            self.carry_out(action);
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
        let refusal = match local::push_capped(
            &self.push,
            &self.metrics,
            &queue,
            text,
            self.max_queue_length,
            env.ttl_remaining(unix_now()).saturating_add(60),
        )
        .await
        {
            Pushed::Stored(length) => {
                self.metrics.service_queue.observe(length as f64);
                return;
            }
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
                Reply::Error {
                    code: QUEUE_FULL_CODE,
                    message,
                }
            }
            Pushed::Failed => Reply::Error {
                code: codes::OTHER,
                message: "the peer's local redis is unavailable".to_string(),
            },
        };
        let step = self.protocol.reply(env.uid, source, refusal, unix_now());
        let action = self.drive(step).await;
        self.carry_out(action);
    }

    /// Hands an answer to its caller: on the caller's `ret` list, then records in the backlog
    /// that its source answered.
    async fn answer(&mut self, answer: Answer<Caller>) {
        let Answer {
            uid,
            from,
            kind,
            body,
            schema,
            timestamp,
            call,
        } = answer;
        let mut doc = IncomingResponse {
            version: DOC_VERSION,
            reference: call.context.reference.clone(),
            data: String::new(),
            source: AddressText(&from).to_string(),
            schema,
            timestamp,
            error: None,
        };
        match body {
            AnswerBody::Data(plain) => doc.data = encode_data(&plain),
            AnswerBody::Error { code, message } => doc.error = Some(JsonError { code, message }),
            AnswerBody::Unreadable(why) => {
                doc.error = Some(JsonError {
                    code: why.code(),
                    message: format!("cannot decrypt the response: {why}"),
                })
            }
        }
        self.metrics.received(kind.as_str());
        // Delivered first, then recorded as answered: a crash in between redelivers rather
        // than loses (the caller matches answers by ref).
        self.push(&call.context.reply_to, &doc).await;
        self.update_backlog(&uid, &call).await;
    }

    /// Loads the backlog into memory (at start, with [`Config::timeout_errors`], so requests
    /// sent before a restart still get their timeout answers).
    async fn load_backlog(&mut self) {
        let uids = match backlog::uids(&self.push, MAX_PENDING).await {
            Ok(uids) => uids,
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(error = %e, "cannot scan the backlog");
                return;
            }
        };
        for uid in uids {
            if let Some(call) = self.lookups.call(&uid).await {
                self.protocol.restore_call(uid, call, unix_now());
            }
        }
        self.metrics
            .pending
            .set(self.protocol.pending_calls() as i64);
    }

    /// Forgets expired requests; with [`Config::timeout_errors`], answers each destination
    /// that stayed silent with a timeout error.
    async fn expire(&mut self) {
        let expired = self.protocol.expire_calls(unix_now());
        if expired.is_empty() {
            return;
        }
        for (_, call) in expired {
            let mut waiting = call.waiting;
            waiting.sort_unstable();
            self.metrics.timeouts.inc_by(waiting.len() as u64);
            if !self.timeout_errors {
                continue;
            }
            for twin in waiting {
                let message = format!(
                    "timeout: twin {twin} did not answer within {} seconds",
                    call.ttl
                );
                self.answer_caller_error(
                    &call.context.reply_to,
                    call.context.reference.clone(),
                    twin.to_string(),
                    TIMEOUT_CODE,
                    message,
                )
                .await;
            }
        }
        self.metrics
            .pending
            .set(self.protocol.pending_calls() as i64);
    }
}
