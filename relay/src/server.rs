//! The HTTP side: websocket upgrades (with authentication before the upgrade), probes and
//! metrics, the accept loop, and the drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rmb_identity::{DirectoryError, SessionToken, TokenPolicy, TwinDirectory};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument as _;

use crate::backplane::{AdmitError, Backplane, BackplaneError, NotReady};
use crate::hub::AttachError;
use crate::ingress::{self, Endpoint};
use crate::key::SessionKey;
use crate::limits::{ConnectionCap, ConnectionSlot, HandshakeLimiter, RateLimiter};
use crate::metrics::{Limit, Metrics};
use crate::session::{self, SessionContext};

pub(crate) type Body = Full<Bytes>;

/// State shared by every connection.
pub struct Shared {
    pub(crate) directory: Arc<dyn TwinDirectory>,
    pub(crate) directory_stats: Arc<rmb_identity::directory::CacheStats>,
    /// tfchain client metrics, when the directory is the chain.
    pub(crate) chain_metrics: Option<crate::directory::ChainMetrics>,
    /// This pod's session queues (the node owns them; the backplane feeds them).
    pub(crate) hub: Arc<crate::hub::Hub>,
    pub(crate) backplane: Arc<dyn Backplane>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) sessions: Arc<SessionContext>,
    pub(crate) token_policy: TokenPolicy,
    /// The relay domains a token's `aud` may name.
    pub(crate) audiences: Vec<String>,
    /// The newest token accepted per session key: an older one cannot replace the session.
    pub(crate) freshness: crate::freshness::Freshness,
    pub(crate) connections: ConnectionCap,
    pub(crate) rates: RateLimiter,
    /// Websocket handshakes per client address (`--handshake-rate-per-ip`).
    pub(crate) handshakes: HandshakeLimiter,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) handshake_timeout: Duration,
    pub(crate) draining: AtomicBool,
    /// Largest envelope accepted (bounds the legacy federation body).
    pub(crate) max_envelope_bytes: usize,
    /// Signed relay-to-relay links, when `--identity-key` is set.
    pub(crate) federation: Option<Arc<rmb_federation::Federation>>,
    /// Limits of the federation endpoints.
    pub(crate) ingress: crate::ingress::Ingress,
    /// Set once the relay has drained: HTTP connections still open (federation links,
    /// keep-alive probes) are closed gracefully.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Assembles what every connection shares from the settings and the opened parts.
    pub(crate) fn new(
        config: &crate::Config,
        opened: crate::directory::OpenedDirectory,
        hub: Arc<crate::hub::Hub>,
        backplane: Arc<dyn Backplane>,
        metrics: Arc<Metrics>,
        router: Arc<crate::router::Router>,
        federation: Option<Arc<rmb_federation::Federation>>,
    ) -> Shared {
        let (listen, limits) = (&config.listen, &config.limits);
        let (messages, bytes) = limits.twin_rates();
        Shared {
            directory: opened.directory,
            directory_stats: opened.cache_stats,
            chain_metrics: opened.chain,
            sessions: Arc::new(SessionContext {
                router,
                backplane: backplane.clone(),
                metrics: metrics.clone(),
                settings: listen
                    .session_settings(limits.max_unconfirmed, limits.max_envelope_bytes),
            }),
            hub,
            backplane,
            metrics,
            token_policy: limits.token_policy(),
            audiences: config.served_domains(),
            freshness: crate::freshness::Freshness::new(
                limits.max_token_lifetime,
                limits.clock_skew,
                crate::freshness::MAX_REMEMBERED_SESSIONS,
            ),
            connections: ConnectionCap::new(listen.max_connections),
            rates: RateLimiter::new(messages, bytes),
            handshakes: HandshakeLimiter::new(listen.handshake_rate_per_ip),
            ws_config: listen.ws_config(limits.max_envelope_bytes),
            handshake_timeout: listen.handshake_deadline(),
            draining: AtomicBool::new(false),
            max_envelope_bytes: limits.max_envelope_bytes,
            federation,
            ingress: crate::ingress::Ingress::new(&config.federation),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }
}

/// Accepts connections until `shutdown` resolves.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, peer, shared.clone()));
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let timeout = shared.handshake_timeout;
    let Some(protocol) = protocol_within(&stream, timeout).await else {
        tracing::debug!(%peer, "no request within the handshake timeout; closing");
        return;
    };
    let closing = shared.closing.subscribe();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, shared).await) }
    });
    // The protocol's own builder, not hyper-util's auto one: its connection hands the upgraded
    // socket back as the `TcpStream` itself, which delivery confirmation needs (session.rs).
    let io = TokioIo::new(stream);
    let result = match protocol {
        // HTTP/1.1 for websockets and probes.
        Protocol::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(io, service)
                .with_upgrades();
            until_closing(conn, |c| c.graceful_shutdown(), closing).await
        }
        // HTTP/2 (prior knowledge) for federation links.
        Protocol::Http2 => {
            // Federation links only: a few streams each (every stream also takes a
            // connection slot).
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS_PER_CONNECTION)
                .serve_connection(io, service);
            until_closing(conn, |c| c.graceful_shutdown(), closing).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

/// Serves `conn` to its end; once the relay is closing, shuts it down gracefully.
async fn until_closing<C, E>(
    conn: C,
    graceful: fn(std::pin::Pin<&mut C>),
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    let closed = async move { closing.wait_for(|closing| *closing).await.is_ok() };
    tokio::select! {
        result = conn.as_mut() => result,
        true = closed => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// Starts with the HTTP/2 connection preface.
    Http2,
}

/// HTTP/2 streams one connection may have open at once (hyper's default is 200, each of which
/// could read a 16 MiB body).
const H2_MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// Waits until the client has sent enough bytes to tell HTTP/1 from the HTTP/2 preface.
/// hyper's header timeout only starts once a connection is served: without this, a
/// connection that sends nothing (or a prefix of the HTTP/2 preface) would be held forever,
/// outside `--max-connections`. `None`: close it.
async fn protocol_within(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<Protocol> {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let known = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Ok(Some(Protocol::Http1));
            }
            if n == H2_PREFACE.len() {
                return Ok(Some(Protocol::Http2));
            }
            // A strict prefix of the HTTP/2 preface: peek again once more may have arrived.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(timeout, known).await.ok()?.ok()?
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, shared: Arc<Shared>) -> Response<Body> {
    if let Some(federation) = shared.federation.clone() {
        use rmb_federation::auth::{ENDPOINT, KEY_DOCUMENT_PATH};
        match (req.method(), req.uri().path()) {
            (&Method::GET, KEY_DOCUMENT_PATH) => {
                let mut resp = Response::new(Body::from(federation.key_document()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return resp;
            }
            (&Method::POST, ENDPOINT) => {
                return ingress::serve(req, Endpoint::Batch, peer, shared, federation).await
            }
            (&Method::POST, "/") if federation.legacy_enabled() => {
                return ingress::serve(req, Endpoint::Legacy, peer, shared, federation).await
            }
            _ => {}
        }
    }
    route(req, peer, shared).await
}

async fn route(req: Request<Incoming>, peer: SocketAddr, shared: Arc<Shared>) -> Response<Body> {
    // Websocket upgrades on any path, as the original relay (clients configured with a
    // relay URL that has a path keep working).
    if req.method() == Method::GET && is_websocket_upgrade(&req) {
        return upgrade(req, peer, shared).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Body::from(shared.metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => match readiness(&shared) {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, &reason.to_string()),
        },
        (&Method::GET, "/") => text(
            StatusCode::UPGRADE_REQUIRED,
            "RMB relay: connect with a websocket",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Ready when not draining and the backplane can take traffic.
pub(crate) fn readiness(shared: &Shared) -> Result<(), NotReady> {
    if shared.draining.load(Ordering::Relaxed) {
        return Err(NotReady::Draining);
    }
    shared.backplane.ready()
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(format!("{body}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    header_has(req, header::CONNECTION, "upgrade") && header_has(req, header::UPGRADE, "websocket")
}

/// A refused handshake: status, metric reason, and the text the client gets.
struct Refused(StatusCode, &'static str, String);

impl Refused {
    fn into_response(self, shared: &Shared, peer: SocketAddr) -> Response<Body> {
        shared.metrics.auth_failure(self.1);
        tracing::debug!(%peer, reason = self.1, detail = %self.2, "websocket handshake refused");
        text(self.0, &self.2)
    }
}

async fn upgrade(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Response<Body> {
    // Before any token work: signature checks are what a handshake flood would burn.
    if !shared.handshakes.allow(peer.ip()) {
        shared.metrics.limit(Limit::HandshakeRate);
        return Refused(
            StatusCode::TOO_MANY_REQUESTS,
            "handshake_rate",
            "too many handshakes from this address; retry later".into(),
        )
        .into_response(&shared, peer);
    }
    let accepted = match admit(&req, &shared).await {
        Ok(accepted) => accepted,
        Err(refused) => return refused.into_response(&shared, peer),
    };
    let (slot, key, rate_twin) = accepted;
    let Some(accept) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let att = match shared.backplane.attach(&key).await {
        Ok(att) => att,
        Err(BackplaneError::Attach(AttachError::TooManySessions(n))) => {
            shared.metrics.limit(Limit::SessionsPerTwin);
            return Refused(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                format!("twin {} already has {n} sessions", key.twin),
            )
            .into_response(&shared, peer);
        }
        Err(e) => {
            // The detail can name Redis hosts: logged, not answered.
            tracing::warn!(%peer, error = %e, "session attach failed");
            return Refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "relay unavailable, retry later".into(),
            )
            .into_response(&shared, peer);
        }
    };
    shared.metrics.sessions.inc();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shared2 = shared.clone();
    // Every log line of the session, and every envelope it routes, nests in this span.
    let span = tracing::info_span!("rmb.session", twin = att.key.twin, session = %att.key, %peer);
    tokio::spawn(
        async move {
            let _slot: ConnectionSlot = slot;
            shared2.metrics.connections.inc();
            match on_upgrade.await {
                Ok(upgraded) => {
                    tracing::debug!("session opened");
                    let rate = shared2.rates.for_twin(rate_twin);
                    let ctx = shared2.sessions.clone();
                    let config = Some(shared2.ws_config);
                    // The socket itself when hyper gives it back (always, over plain HTTP/1.1):
                    // the session then confirms delivery by TCP acknowledgements.
                    match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
                        Ok(parts) => {
                            let (stream, probe) = rmb_net::track(parts.io.into_inner());
                            let ws = WebSocketStream::from_partially_read(
                                stream,
                                parts.read_buf.to_vec(),
                                Role::Server,
                                config,
                            )
                            .await;
                            session::run(ws, Some(probe), att, rate, ctx).await;
                        }
                        Err(upgraded) => {
                            let io = TokioIo::new(upgraded);
                            let ws =
                                WebSocketStream::from_raw_socket(io, Role::Server, config).await;
                            session::run(ws, None, att, rate, ctx).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "upgrade failed");
                    shared2.metrics.sessions.dec();
                    shared2.backplane.detach(att, Vec::new()).await;
                }
            }
            shared2.metrics.connections.dec();
        }
        .instrument(span),
    );
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// Checks capacity and the session token; returns the connection slot and session key.
async fn admit(
    req: &Request<Incoming>,
    shared: &Shared,
) -> Result<(ConnectionSlot, SessionKey, u32), Refused> {
    if shared.draining.load(Ordering::Relaxed) {
        return Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "relay is draining; connect to another pod".into(),
        ));
    }
    let Some(slot) = shared.connections.try_acquire() else {
        shared.metrics.limit(Limit::Connections);
        return Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection_limit",
            "relay is at its connection limit".into(),
        ));
    };
    let raw = token_of(req).ok_or_else(|| {
        Refused(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "missing session token: give it as the query string or a Bearer header".into(),
        )
    })?;
    let unauthorized =
        |reason: &'static str, detail: String| Refused(StatusCode::UNAUTHORIZED, reason, detail);
    let token = SessionToken::parse(raw)
        .map_err(|e| unauthorized("malformed_token", format!("invalid token: {e}")))?;
    let claims = token.claims().clone();
    let twin = match shared.directory.twin(claims.sub).await {
        Ok(Some(twin)) => twin,
        Ok(None) => {
            return Err(unauthorized(
                "unknown_twin",
                format!("unknown twin {}", claims.sub),
            ))
        }
        Err(DirectoryError::Unavailable(e) | DirectoryError::InvalidData(e)) => {
            // The detail can name chain endpoints: logged, not answered.
            tracing::warn!(error = %e, "twin directory unavailable during a handshake");
            return Err(Refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "directory_unavailable",
                "twin directory unavailable, retry later".into(),
            ));
        }
    };
    let now = rmb_proto::unix_now();
    token
        .verify(&twin.account, now, &shared.token_policy)
        .and_then(|claims| claims.check_audience(&shared.audiences))
        .map_err(|e| unauthorized(token_failure_reason(&e), format!("invalid token: {e}")))?;
    let key = SessionKey::new(claims.sub, claims.sid.as_deref());
    shared
        .freshness
        .admit(&key, claims.iat, now)
        .map_err(|e| unauthorized("stale_token", format!("invalid token: {e}")))?;
    // Other pods may have admitted a newer token for this key.
    match shared
        .backplane
        .admit_token(&key, claims.iat, shared.freshness.keep_secs())
        .await
    {
        Ok(()) => {}
        Err(AdmitError::Stale(e)) => {
            return Err(unauthorized("stale_token", format!("invalid token: {e}")))
        }
        Err(AdmitError::Unavailable(e)) => {
            // The detail can name Redis hosts: logged, not answered.
            tracing::warn!(error = %e, "token freshness check failed");
            return Err(Refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "relay unavailable, retry later".into(),
            ));
        }
    }
    Ok((slot, key, claims.sub))
}

fn token_failure_reason(e: &rmb_identity::TokenError) -> &'static str {
    use rmb_identity::TokenError as E;
    match e {
        E::Signature(_) => "bad_signature",
        E::Expired { .. } => "expired_token",
        E::NotYetValid { .. } => "token_not_yet_valid",
        E::LifetimeTooLong { .. } => "token_lifetime",
        E::WrongAudience(_) => "wrong_audience",
        _ => "malformed_token",
    }
}

/// The token: the whole query string (compatibility), or an `Authorization: Bearer` header
/// (keeps it out of access logs).
fn token_of(req: &Request<Incoming>) -> Option<&str> {
    if let Some(q) = req.uri().query().filter(|q| !q.is_empty()) {
        return Some(q);
    }
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}
