//! The Rust SDK's direct client: a twin talks to other twins through its relays without a
//! gateway or a local Redis.
//!
//! ```no_run
//! # async fn demo(config: rmb_peer::sdk::ClientConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use rmb_peer::router::{Incoming, Router};
//! use rmb_peer::sdk::Client;
//!
//! let client = Client::connect(config).await?;
//! let answer = client.call(7, "calc.add", b"[1,2]", Duration::from_secs(10)).await?;
//! let router = Router::new().route("calc.echo", |req: Incoming| async move { Ok(req.data) });
//! client.set_router(router); // serve from now on (or: client.serve(router).await)
//! # Ok(()) }
//! ```
//!
//! The client keeps sessions with every configured relay (see [`crate::pool`]); it verifies
//! every request and response against the directory, encrypts end to end when both twins
//! publish an encryption key, accepts a response only from the twin called, once, and
//! serves each request uid once within its lifetime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmb_identity::{Signer, TwinDirectory};
use rmb_proto::{unix_now, Address, Envelope, Kind, Message, Payload, Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::direct::{new_uid, JSON_SCHEMA, REPLY_TTL_SECS};
use crate::gateway::{resolve_twin, GatewayError};
use crate::keys::Keys;
use crate::metrics::{DropReason, Metrics};
use crate::pool::{Outbox, Pool, PoolSettings};
pub use crate::router::CallError;
use crate::router::{Incoming, Router};

/// How long [`Client::connect`] waits for the first relay session.
pub const CONNECT_WAIT: Duration = Duration::from_secs(15);
/// How long the relay sessions get to send what is queued when closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What a direct client needs.
pub struct ClientConfig {
    /// The twin's keys.
    pub signer: Signer,
    /// The twin id; looked up in the directory by the account key when `None`.
    pub twin: Option<u32>,
    /// Where other twins' keys are looked up.
    pub directory: Arc<dyn TwinDirectory>,
    /// The relays (all used at once) and session behaviour.
    pub relay: PoolSettings,
    /// Metrics (sent, received, dropped, relay state).
    pub metrics: Arc<Metrics>,
}

/// Why a client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Our twin could not be resolved or checked.
    #[error(transparent)]
    Twin(#[from] GatewayError),
    /// No relay session opened in time.
    #[error("no relay session opened within {0:?}")]
    NoSession(Duration),
}

struct Waiting {
    twin: u32,
    answer: oneshot::Sender<Result<Vec<u8>, CallError>>,
}

struct Inner {
    keys: Keys,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    waiting: Mutex<HashMap<String, Waiting>>,
    router: RwLock<Option<Router>>,
    /// Requests served: (source twin, uid) → unix time they expire.
    seen: Mutex<HashMap<(u32, String), u64>>,
    closed: CancellationToken,
}

/// A twin's direct connection to the bus: calls out, and serves calls with a [`Router`].
pub struct Client {
    inner: Arc<Inner>,
    pool: Mutex<Option<Pool>>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("twin", &self.inner.keys.me.twin)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Resolves our twin, opens sessions with every relay, and returns once one is open.
    pub async fn connect(config: ClientConfig) -> Result<Client, ConnectError> {
        let twin = resolve_twin(&config.signer, config.twin, config.directory.as_ref()).await?;
        let (in_tx, in_rx) = mpsc::channel(1024);
        let pool = Pool::start(
            config.relay,
            config.signer.clone(),
            twin,
            in_tx,
            config.metrics.clone(),
        );
        let mut open = pool.open_sessions();
        let inner = Arc::new(Inner {
            keys: Keys::new(
                config.signer,
                Address::new(twin, None),
                config.directory,
                config.metrics.clone(),
            ),
            outbox: pool.sender(),
            metrics: config.metrics,
            waiting: Mutex::new(HashMap::new()),
            router: RwLock::new(None),
            seen: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
        });
        let dispatcher = tokio::spawn(dispatch(inner.clone(), in_rx));
        let client = Client {
            inner,
            pool: Mutex::new(Some(pool)),
            dispatcher: Mutex::new(Some(dispatcher)),
        };
        let opened = tokio::time::timeout(CONNECT_WAIT, open.wait_for(|n| *n > 0)).await;
        if !matches!(opened, Ok(Ok(_))) {
            client.close().await;
            return Err(ConnectError::NoSession(CONNECT_WAIT));
        }
        Ok(client)
    }

    /// Our twin id.
    pub fn twin(&self) -> u32 {
        self.inner.keys.me.twin
    }

    /// Calls `command` on `twin` with `payload`; waits up to `timeout` for the response.
    /// The request lives as long as the timeout (at least a second).
    pub async fn call(
        &self,
        twin: u32,
        command: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        if self.inner.closed.is_cancelled() {
            return Err(CallError::Closed);
        }
        let ttl = (timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)).max(1);
        let uid = new_uid();
        let sealed = match self.inner.keys.seal(twin, payload.to_vec()).await {
            Ok(sealed) => sealed,
            Err(why) => {
                self.inner.metrics.not_sent.inc();
                return Err(CallError::NotSent {
                    code: why.code(),
                    message: why.to_string(),
                });
            }
        };
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.waiting).insert(uid.clone(), Waiting { twin, answer: tx });
        let env = self.inner.keys.sign(Envelope {
            uid: uid.clone(),
            timestamp: unix_now(),
            expiration: ttl,
            source: Some(self.inner.keys.me.clone()),
            destination: Some(Address::new(twin, None)),
            message: Some(Message::Request(Request {
                command: command.to_string(),
            })),
            schema: Some(JSON_SCHEMA.to_string()),
            payload: Some(sealed),
            ..Default::default()
        });
        self.inner.outbox.push(env);
        let result = tokio::select! {
            answer = rx => answer.unwrap_or(Err(CallError::Closed)),
            _ = tokio::time::sleep(timeout) => Err(CallError::Timeout(timeout)),
            _ = self.inner.closed.cancelled() => Err(CallError::Closed),
        };
        lock(&self.inner.waiting).remove(&uid);
        result
    }

    /// Serves calls with `router` from now on (replacing any previous router). Requests that
    /// arrive while no router is installed are answered with an unknown-command error.
    pub fn set_router(&self, router: Router) {
        *self.inner.router.write().unwrap_or_else(|p| p.into_inner()) = Some(router);
    }

    /// Serves calls with `router` until the client is closed: [`Client::set_router`], then
    /// waits. The router is installed when this future is first polled; call `set_router`
    /// first when requests may already be on their way.
    pub async fn serve(&self, router: Router) {
        self.set_router(router);
        self.inner.closed.cancelled().await;
    }

    /// Sends what is queued (briefly), then closes every relay session. Pending calls fail
    /// with [`CallError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.cancel();
        let pool = lock(&self.pool).take();
        if let Some(pool) = pool {
            pool.shutdown(CLOSE_GRACE).await;
        }
        let dispatcher = lock(&self.dispatcher).take();
        if let Some(task) = dispatcher {
            let _ = task.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn dispatch(inner: Arc<Inner>, mut inbound: mpsc::Receiver<Envelope>) {
    let mut received = 0u64;
    loop {
        let env = tokio::select! {
            _ = inner.closed.cancelled() => return,
            env = inbound.recv() => match env {
                Some(env) => env,
                None => return,
            },
        };
        let now = unix_now();
        match env.kind() {
            Kind::Response | Kind::Error if env.is_expired(now) => {
                inner.metrics.drop_one(DropReason::Expired);
            }
            Kind::Response | Kind::Error => answer(&inner, env).await,
            Kind::Request => {
                // Handlers run concurrently; a slow one holds up nothing else.
                let inner = inner.clone();
                tokio::spawn(async move { request(&inner, env, now).await });
            }
            _ => {}
        }
        received += 1;
        if received % 1024 == 0 {
            lock(&inner.seen).retain(|_, expires| *expires >= now);
        }
    }
}

async fn answer(inner: &Inner, env: Envelope) {
    let Some(expected) = lock(&inner.waiting).get(&env.uid).map(|w| w.twin) else {
        inner.metrics.drop_one(DropReason::Unexpected);
        return;
    };
    let source = env.source.as_ref().map_or(0, |s| s.twin);
    if source == 0 {
        // The relay's own errors are unsigned; accepted only as errors.
        if env.kind() != Kind::Error {
            inner.metrics.drop_one(DropReason::Unsigned);
            return;
        }
    } else if source != expected {
        inner.metrics.drop_one(DropReason::WrongSource);
        tracing::warn!(uid = %env.uid, twin = source, expected, "dropping an answer from another twin");
        return;
    } else if !inner.keys.verified(&env, source).await {
        return;
    }
    let result = match &env.message {
        Some(Message::Error(e)) => Err(CallError::Remote {
            code: e.code,
            message: e.message.clone(),
        }),
        _ => inner
            .keys
            .payload(expected, &env)
            .await
            .map_err(|why| CallError::Invalid(why.to_string())),
    };
    let Some(waiting) = lock(&inner.waiting).remove(&env.uid) else {
        inner.metrics.drop_one(DropReason::Replayed);
        return;
    };
    inner.metrics.received(env.kind().as_str());
    let _ = waiting.answer.send(result);
}

async fn request(inner: &Inner, env: Envelope, now: u64) {
    let Some(source) = env.source.clone().filter(|s| s.twin != 0) else {
        inner.metrics.drop_one(DropReason::Unsigned);
        return;
    };
    // Refused requests are answered with the original's error codes (102-106).
    let data = match inner.keys.check_request(&env, source.twin, now).await {
        Ok(data) => data,
        Err(why) => {
            inner.keys.refused(&env, source.twin, &why);
            inner.outbox.push(inner.keys.refusal(&env, &why));
            return;
        }
    };
    {
        let mut seen = lock(&inner.seen);
        let key = (source.twin, env.uid.clone());
        if seen.contains_key(&key) {
            inner.metrics.drop_one(DropReason::Replayed);
            return;
        }
        seen.insert(key, env.expires_at().max(now));
    }
    let Some(Message::Request(Request { command })) = env.message.clone() else {
        return;
    };
    inner.metrics.received(Kind::Request.as_str());
    let reply = |message: Message, payload: Option<Payload>| {
        inner.keys.sign(Envelope {
            uid: env.uid.clone(),
            timestamp: unix_now(),
            expiration: REPLY_TTL_SECS,
            source: Some(inner.keys.me.clone()),
            destination: Some(source.clone()),
            message: Some(message),
            schema: payload.as_ref().map(|_| JSON_SCHEMA.to_string()),
            payload,
            ..Default::default()
        })
    };
    let router = inner
        .router
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default();
    let incoming = Incoming {
        source: source.clone(),
        command,
        data,
        schema: env.schema.clone(),
    };
    let limit = Duration::from_secs(env.expires_at().saturating_sub(unix_now()).max(1));
    let envelope = match router.handle(incoming, limit).await {
        Ok(data) => match inner.keys.seal(source.twin, data).await {
            Ok(payload) => reply(Message::Response(Response {}), Some(payload)),
            Err(why) => {
                // The answer cannot go out safely: the caller learns why instead.
                inner.metrics.not_sent.inc();
                let error = rmb_proto::Error {
                    code: why.code(),
                    message: format!("the reply was not sent: {why}"),
                };
                reply(Message::Error(error), None)
            }
        },
        Err(e) => reply(
            Message::Error(rmb_proto::Error {
                code: e.code,
                message: e.message,
            }),
            None,
        ),
    };
    inner.outbox.push(envelope);
}
