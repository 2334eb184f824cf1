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
//! The client keeps sessions with every configured relay (see [`crate::pool`]). It is a thin
//! shell around the protocol core ([`crate::protocol`]), the same as the gateway's: every
//! request and response is verified against the directory, payloads are encrypted end to
//! end when the destination publishes an encryption key, a response is accepted only from
//! the twin called, once, and each request uid is served once within its lifetime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rmb_identity::{Signer, TwinDirectory};
use rmb_proto::{unix_now, Envelope, Kind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::direct::{new_uid, JSON_SCHEMA};
use crate::gateway::{resolve_twin, GatewayError};
use crate::metrics::Metrics;
use crate::pool::{Outbox, Pool, PoolSettings};
use crate::protocol::{Action, AnswerBody, Call, Delivery, Lookup, NewCall, Protocol, Reply, Step};
pub use crate::router::CallError;
use crate::router::{Incoming, Router};
use crate::shell::Lookups;

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

/// Where a call's answer goes.
type AnswerSender = oneshot::Sender<Result<Vec<u8>, CallError>>;

/// How the client answers the protocol core's questions: twins from the directory. It keeps
/// no calls beyond memory.
struct SdkLookups {
    directory: Arc<dyn TwinDirectory>,
}

impl Lookups<()> for SdkLookups {
    async fn twin(&self, twin: u32) -> Lookup {
        self.directory.twin(twin).await
    }

    async fn call(&self, _uid: &str) -> Option<Call<()>> {
        None
    }
}

struct Inner {
    protocol: Protocol<()>,
    lookups: SdkLookups,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    /// Calls in progress: where each answer goes, by uid.
    waiting: Mutex<HashMap<String, AnswerSender>>,
    router: RwLock<Option<Router>>,
    closed: CancellationToken,
}

impl Inner {
    /// Runs `step` of the core to its action.
    async fn drive(&self, step: Step<()>) -> Action<()> {
        crate::shell::drive(&self.protocol, step, &self.lookups).await
    }

    /// Carries out what needs only the relays and the metrics; returns the rest.
    fn carry_out(&self, action: Action<()>) -> Option<Action<()>> {
        crate::shell::carry_out(action, &self.metrics, |env| self.outbox.push(env))
    }
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
            .field("twin", &self.twin())
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
            protocol: Protocol::new(config.signer, twin),
            lookups: SdkLookups {
                directory: config.directory,
            },
            outbox: pool.sender(),
            metrics: config.metrics,
            waiting: Mutex::new(HashMap::new()),
            router: RwLock::new(None),
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
        self.inner.protocol.me().twin
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
        let inner = &self.inner;
        let ttl = (timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)).max(1);
        let now = unix_now();
        let new_call = NewCall {
            uid: new_uid(),
            command: command.to_string(),
            tags: None,
            schema: Some(JSON_SCHEMA.to_string()),
            timestamp: now,
            ttl,
        };
        let uid = new_call.uid.clone();
        let (tx, rx) = oneshot::channel();
        inner.waiting.lock().insert(uid.clone(), tx);
        let call = Call::new(vec![twin], now.saturating_add(ttl), ttl, ());
        inner.protocol.start_call(uid.clone(), call);
        let _forget = CallGuard { inner, uid };
        let step = inner.protocol.request(&new_call, twin, payload.to_vec());
        match inner.carry_out(inner.drive(step).await) {
            Some(Action::NotSent { why, .. }) => Err(CallError::NotSent {
                code: why.code(),
                message: why.to_string(),
            }),
            _ => tokio::select! {
                answer = rx => answer.unwrap_or(Err(CallError::Closed)),
                _ = tokio::time::sleep(timeout) => Err(CallError::Timeout(timeout)),
                _ = inner.closed.cancelled() => Err(CallError::Closed),
            },
        }
    }

    /// Serves calls with `router` from now on (replacing any previous router). Requests that
    /// arrive while no router is installed are answered with an unknown-command error.
    pub fn set_router(&self, router: Router) {
        *self.inner.router.write() = Some(router);
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
        let pool = self.pool.lock().take();
        if let Some(pool) = pool {
            pool.shutdown(CLOSE_GRACE).await;
        }
        let dispatcher = self.dispatcher.lock().take();
        if let Some(task) = dispatcher {
            let _ = task.await;
        }
    }
}

/// Forgets a call when its [`Client::call`] ends, however it ends (answered, timed out,
/// closed, or dropped by its caller): later answers to it are replays.
struct CallGuard<'a> {
    inner: &'a Inner,
    uid: String,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.inner.waiting.lock().remove(&self.uid);
        self.inner.protocol.end_call(&self.uid, unix_now());
    }
}

async fn dispatch(inner: Arc<Inner>, mut inbound: mpsc::Receiver<Envelope>) {
    loop {
        let env = tokio::select! {
            _ = inner.closed.cancelled() => return,
            env = inbound.recv() => match env {
                Some(env) => env,
                None => return,
            },
        };
        if env.kind() == Kind::Request {
            // Handlers run concurrently; a slow one holds up nothing else.
            let inner = inner.clone();
            tokio::spawn(async move { serve_request(&inner, env).await });
        } else {
            answer(&inner, env).await;
        }
    }
}

/// Hands an answer to the call waiting for it.
async fn answer(inner: &Inner, env: Envelope) {
    let action = inner.drive(inner.protocol.receive(env, unix_now())).await;
    let Some(Action::Answer(answer)) = inner.carry_out(action) else {
        return;
    };
    let result = match answer.body {
        AnswerBody::Data(data) => Ok(data),
        AnswerBody::Error { code, message } => Err(CallError::Remote { code, message }),
        AnswerBody::Unreadable(why) => Err(CallError::Invalid(why.to_string())),
    };
    inner.metrics.received(answer.kind.as_str());
    if let Some(waiting) = inner.waiting.lock().remove(&answer.uid) {
        let _ = waiting.send(result);
    }
}

/// Serves a request with the router and sends the reply.
async fn serve_request(inner: &Inner, env: Envelope) {
    let action = inner.drive(inner.protocol.receive(env, unix_now())).await;
    let Some(Action::Deliver(delivery)) = inner.carry_out(action) else {
        return;
    };
    let Delivery {
        request,
        source,
        command,
        data,
    } = delivery;
    inner.metrics.received(Kind::Request.as_str());
    let router = inner.router.read().clone().unwrap_or_default();
    let incoming = Incoming {
        source: source.clone(),
        command,
        data,
        schema: request.schema.clone(),
    };
    let limit = Duration::from_secs(request.ttl_remaining(unix_now()).max(1));
    let reply = match router.handle(incoming, limit).await {
        Ok(data) => Reply::Data {
            data,
            schema: Some(JSON_SCHEMA.to_string()),
        },
        Err(e) => Reply::Error {
            code: e.code,
            message: e.message,
        },
    };
    let step = inner.protocol.reply(request.uid, source, reply, unix_now());
    let action = inner.drive(step).await;
    inner.carry_out(action);
}
