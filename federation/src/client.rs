//! HTTP client for relay-to-relay traffic: one keep-alive connection per remote domain,
//! HTTP/2 when the remote offers it (ALPN over TLS; prior knowledge on plain HTTP), HTTPS
//! with rustls (ring provider) unless the domain is explicitly allowed plain HTTP.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rmb_common::tls;
use rustls_pki_types::ServerName;

/// Largest response body read from a remote relay.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Most remote relays kept connected at once: remote domains come from twin records and from
/// request headers anyone can write, so the set must not grow without bound. Past it, the
/// connection used least recently is dropped (closed once its requests end).
pub const MAX_KEPT_CONNECTIONS: usize = 1024;

/// A kept connection unused this long is dropped at the next new connection.
const IDLE_DROP: Duration = Duration::from_secs(300);

/// Why a request to a remote relay did not produce a response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// Name resolution, TCP or TLS failed.
    #[error("cannot connect to {domain}: {reason}")]
    Connect {
        /// The remote domain.
        domain: String,
        /// What failed.
        reason: String,
    },
    /// The connection broke or the request timed out.
    #[error("request to {domain} failed: {reason}")]
    Request {
        /// The remote domain.
        domain: String,
        /// What failed.
        reason: String,
    },
}

impl LinkError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            LinkError::Connect { .. } => "connect",
            LinkError::Request { .. } => "request",
        }
    }
}

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra CA file cannot be read, or rustls refused the configuration.
    #[error("federation TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// How the client reaches remote relays.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// Domain → `host:port` overrides (tests, private networks).
    pub resolve: HashMap<String, String>,
    /// Domains reached over plain HTTP instead of HTTPS.
    pub insecure_http: HashSet<String>,
    /// Extra trust anchors (PEM) besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// Time limit for one request, connection included.
    pub timeout: Duration,
}

enum Conn {
    H2(http2::SendRequest<Full<Bytes>>),
    H1(Arc<tokio::sync::Mutex<http1::SendRequest<Full<Bytes>>>>),
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::H2(s) => s.is_closed(),
            Conn::H1(s) => s.try_lock().is_ok_and(|s| s.is_closed()),
        }
    }

    fn clone_handle(&self) -> Conn {
        match self {
            Conn::H2(s) => Conn::H2(s.clone()),
            Conn::H1(s) => Conn::H1(s.clone()),
        }
    }
}

/// A connection kept for reuse, with when it was last handed out.
struct Kept {
    conn: Conn,
    used: std::time::Instant,
}

/// A response: status and body.
#[derive(Debug)]
pub struct LinkResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// The body (at most 4 MiB).
    pub body: Bytes,
}

/// The relay-to-relay HTTP client; cheap to share.
pub struct HttpClient {
    settings: ClientSettings,
    tls: tokio_rustls::TlsConnector,
    conns: Mutex<HashMap<String, Kept>>,
    /// Serialises connection set-up per domain so a burst opens one connection, not many.
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl HttpClient {
    /// A client with the system's trust anchors plus `ca_file`.
    pub fn new(settings: ClientSettings) -> Result<HttpClient, ClientError> {
        let roots = tls::root_store(tls::Anchors::System, settings.ca_file.as_slice())?;
        if roots.is_empty() {
            tracing::warn!("no trusted CA certificates: HTTPS federation links will fail");
        }
        let mut config = tls::client_config(roots)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(HttpClient {
            settings,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            conns: Mutex::default(),
            connecting: Mutex::default(),
        })
    }

    /// Whether `domain` is reached over plain HTTP.
    pub fn is_insecure(&self, domain: &str) -> bool {
        self.settings.insecure_http.contains(domain)
    }

    /// Sends one request to `domain` and reads the whole response.
    pub async fn request(
        &self,
        domain: &str,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<LinkResponse, LinkError> {
        let timeout = self.settings.timeout;
        match tokio::time::timeout(
            timeout,
            self.request_inner(domain, method, path, headers, body),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => {
                self.forget(domain);
                Err(LinkError::Request {
                    domain: domain.to_string(),
                    reason: format!("no answer within {timeout:?}"),
                })
            }
        }
    }

    async fn request_inner(
        &self,
        domain: &str,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<LinkResponse, LinkError> {
        let conn = self.connection(domain).await?;
        let scheme = if self.is_insecure(domain) {
            "http"
        } else {
            "https"
        };
        let failed = |reason: String| LinkError::Request {
            domain: domain.to_string(),
            reason,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{scheme}://{domain}{path}"));
        if matches!(conn, Conn::H1(_)) {
            builder = builder.header(hyper::header::HOST, domain);
        }
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| failed(e.to_string()))?;
        let sent = match conn {
            Conn::H2(mut sender) => {
                sender.ready().await.map_err(|e| failed(e.to_string()))?;
                sender.send_request(req).await
            }
            Conn::H1(sender) => {
                let mut sender = sender.lock().await;
                sender.ready().await.map_err(|e| failed(e.to_string()))?;
                sender.send_request(req).await
            }
        };
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                self.forget(domain);
                return Err(failed(e.to_string()));
            }
        };
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| failed(format!("reading the response: {e}")))?
            .to_bytes();
        Ok(LinkResponse { status, body })
    }

    fn forget(&self, domain: &str) {
        self.conns.lock().remove(domain);
    }

    fn cached(&self, domain: &str) -> Option<Conn> {
        let mut conns = self.conns.lock();
        match conns.get_mut(domain) {
            Some(kept) if !kept.conn.is_closed() => {
                kept.used = std::time::Instant::now();
                Some(kept.conn.clone_handle())
            }
            Some(_) => {
                conns.remove(domain);
                None
            }
            None => None,
        }
    }

    /// Keeps `conn` for `domain`, first dropping idle or closed connections and, at the cap,
    /// the one used least recently.
    fn keep(&self, domain: &str, conn: Conn) {
        let now = std::time::Instant::now();
        let mut conns = self.conns.lock();
        conns.retain(|_, kept| {
            !kept.conn.is_closed() && now.saturating_duration_since(kept.used) < IDLE_DROP
        });
        if conns.len() >= MAX_KEPT_CONNECTIONS {
            let oldest = conns
                .iter()
                .min_by_key(|(_, kept)| kept.used)
                .map(|(d, _)| d.clone());
            if let Some(oldest) = oldest {
                conns.remove(&oldest);
            }
        }
        conns.insert(domain.to_string(), Kept { conn, used: now });
    }

    /// Remote relays with a kept connection now.
    pub fn kept_connections(&self) -> usize {
        self.conns.lock().len()
    }

    async fn connection(&self, domain: &str) -> Result<Conn, LinkError> {
        if let Some(c) = self.cached(domain) {
            return Ok(c);
        }
        let gate = self
            .connecting
            .lock()
            .entry(domain.to_string())
            .or_default()
            .clone();
        let held = gate.lock().await;
        let result = match self.cached(domain) {
            Some(c) => Ok(c),
            None => self.connect(domain).await.map(|conn| {
                let handle = conn.clone_handle();
                self.keep(domain, conn);
                handle
            }),
        };
        drop(held);
        // Forget the gate once nobody else waits on it: domains come and go.
        let mut connecting = self.connecting.lock();
        if connecting
            .get(domain)
            .is_some_and(|g| Arc::ptr_eq(g, &gate) && Arc::strong_count(g) == 2)
        {
            connecting.remove(domain);
        }
        result
    }

    async fn connect(&self, domain: &str) -> Result<Conn, LinkError> {
        let fail = |reason: String| LinkError::Connect {
            domain: domain.to_string(),
            reason,
        };
        let h2_failed = |e: hyper::Error| fail(format!("HTTP/2 handshake: {e}"));
        let insecure = self.is_insecure(domain);
        let target = match self.settings.resolve.get(domain) {
            Some(addr) => addr.clone(),
            None => format!("{domain}:{}", if insecure { 80 } else { 443 }),
        };
        let tcp = tokio::net::TcpStream::connect(&target)
            .await
            .map_err(|e| fail(format!("{target}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if insecure {
            // Plain HTTP only between our own relays (tests, private networks): HTTP/2 with
            // prior knowledge.
            return h2_handshake(TokioIo::new(tcp)).await.map_err(h2_failed);
        }
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| fail(format!("bad server name: {e}")))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            h2_handshake(io).await.map_err(h2_failed)
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| fail(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn::H1(Arc::new(tokio::sync::Mutex::new(sender))))
        }
    }
}

async fn h2_handshake<T>(io: TokioIo<T>) -> Result<Conn, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "federation connection ended");
        }
    });
    Ok(Conn::H2(sender))
}
