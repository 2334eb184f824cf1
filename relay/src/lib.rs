//! The RMB relay.
//!
//! Twins connect over websockets with a signed session token; the relay routes the envelopes
//! they send to other twins' sessions, keeps mail for offline twins until it expires, and
//! confirms every delivery with a websocket ping before forgetting it. Shared state lives
//! behind the [`backplane::Backplane`] trait, so one process or a cluster of pods look the
//! same to a client.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backplane;
pub mod config;
mod directory;
mod federation;
mod freshness;
pub mod hub;
mod ingress;
pub mod key;
pub mod limits;
pub mod metrics;
pub mod router;
mod server;
pub mod session;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rmb_identity::TokenPolicy;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::backplane::{Backplane, MemoryBackplane, RedisBackplane, RedisSettings};
pub use crate::config::{Config, ConfigError};
use crate::hub::{CloseReason, Hub, HubLimits};
use crate::limits::{ConnectionCap, HandshakeLimiter, RateLimiter};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::server::Shared;
use crate::session::{SessionContext, SessionSettings};
use crate::telemetry::Telemetry;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The twins file is missing or invalid.
    #[error(transparent)]
    Twins(#[from] rmb_identity::TwinsFileError),
    /// The backplane cannot be set up (bad Redis URL).
    #[error(transparent)]
    Backplane(crate::backplane::BackplaneError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A relay bound to its address, ready to serve.
pub struct Relay {
    config: Config,
    listener: TcpListener,
    shared: Arc<Shared>,
    telemetry: Arc<Telemetry>,
}

impl Relay {
    /// Builds every component from `config` and binds the listen address.
    pub async fn bind(config: Config) -> Result<Relay, StartError> {
        config.validate()?;
        for note in &config.notes {
            tracing::info!("{note}");
        }
        if config.redis.is_none() {
            tracing::info!(
                "no --redis: in-memory backplane; this process alone holds sessions and mail (give -r redis://HOST:6379 to share them between relay processes)"
            );
        }
        let metrics = Metrics::new();
        let opened = directory::open(&config, &metrics)?;
        let directory = opened.directory.clone();
        let backplane = open_backplane(&config, &metrics).await?;
        let telemetry = Arc::new(match &config.otlp_endpoint {
            Some(endpoint) => Telemetry::otlp(endpoint, "rmb-relay").map_err(|e| {
                StartError::Config(ConfigError::Invalid {
                    setting: "otlp-endpoint",
                    reason: e.to_string(),
                })
            })?,
            None => Telemetry::off(),
        });
        let federation = federation::open(&config, &directory, &backplane, &metrics).await?;
        let router = Arc::new(
            Router::new(
                backplane.clone(),
                directory.clone(),
                config
                    .domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                config.max_ttl,
                config.max_envelope_bytes,
                metrics.clone(),
                telemetry.clone(),
            )
            .with_federation(federation.clone()),
        );
        let sessions = Arc::new(SessionContext {
            router,
            backplane: backplane.clone(),
            metrics: metrics.clone(),
            settings: SessionSettings {
                ping_every: config.ping_every(),
                idle_after: config.idle_after(),
                max_unconfirmed: config.max_unconfirmed,
                batch: 256,
                drain_confirm: Duration::from_secs(5),
            },
        });
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.ws_read_buffer)
            .write_buffer_size(0)
            .max_message_size(Some(config.max_envelope_bytes))
            .max_frame_size(Some(config.max_envelope_bytes));
        let shared = Arc::new(Shared {
            directory,
            directory_stats: opened.cache_stats,
            chain_metrics: opened.chain,
            backplane,
            metrics,
            sessions,
            token_policy: TokenPolicy {
                max_lifetime: config.max_token_lifetime,
                clock_skew: config.clock_skew,
            },
            audiences: config.domains.clone(),
            freshness: freshness::Freshness::new(
                config.max_token_lifetime,
                config.clock_skew,
                freshness::MAX_REMEMBERED_SESSIONS,
            ),
            connections: ConnectionCap::new(config.max_connections),
            rates: {
                let (messages, bytes) = config.twin_rates();
                RateLimiter::new(messages, bytes)
            },
            handshakes: HandshakeLimiter::new(config.handshake_rate_per_ip),
            ws_config,
            handshake_timeout: Duration::from_secs(config.handshake_timeout),
            draining: Default::default(),
            max_envelope_bytes: config.max_envelope_bytes,
            federation,
            ingress: ingress::Ingress::new(&config),
            closing: tokio::sync::watch::Sender::new(false),
        });
        let listener = bind_listener(config.listen).map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        Ok(Relay {
            config,
            listener,
            shared,
            telemetry,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` resolves, then drains: readiness goes false, no new sessions
    /// are accepted, sessions are closed with 1012 paced over the drain window after their
    /// queued envelopes are delivered and confirmed.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Relay {
            config,
            listener,
            shared,
            telemetry,
        } = self;
        shared.metrics.ready.set(1);
        tracing::info!(addr = %config.listen, domains = ?config.domains, "relay listening");
        let housekeeping = tokio::spawn(housekeeping(shared.clone()));
        if let Some(federation) = &shared.federation {
            federation.start();
        }
        server::accept_loop(listener, shared.clone(), shutdown).await;
        drain(&shared, Duration::from_secs(config.drain_seconds)).await;
        housekeeping.abort();
        if let Some(federation) = &shared.federation {
            federation.shutdown().await;
        }
        shared.closing.send_replace(true);
        shared.backplane.shutdown().await;
        // The exporter blocks while it flushes: keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        tracing::info!("relay stopped");
    }
}

/// Binds the listen socket. The unspecified IPv6 address is bound dual-stack (IPV6_V6ONLY
/// off, whatever the host's default), so IPv4 clients reach it too; on a host without IPv6 it
/// falls back to the IPv4 unspecified address on the same port, with a log line.
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match bind_socket(addr) {
        Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(%addr, fallback = %v4, error = %e, "IPv6 unavailable on this host; listening on IPv4 only");
            bind_socket(v4)
        }
        other => other,
    }
}

fn ipv6_unavailable(e: &std::io::Error) -> bool {
    // EAFNOSUPPORT (no IPv6 in the kernel) or EADDRNOTAVAIL (IPv6 disabled).
    matches!(e.raw_os_error(), Some(97 | 99)) || e.kind() == std::io::ErrorKind::AddrNotAvailable
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

async fn open_backplane(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Backplane>, StartError> {
    let mut limits = HubLimits {
        mailbox_per_twin: config.mailbox_max,
        outbound_queue: config.outbound_queue,
        sessions_per_twin: config.max_sessions_per_twin,
    };
    let Some(url) = &config.redis else {
        return Ok(Arc::new(MemoryBackplane::new(Arc::new(Hub::new(limits)))));
    };
    // Mail is bounded in Redis; the local hub only holds what connected sessions drain.
    limits.mailbox_per_twin = usize::MAX;
    let settings = RedisSettings {
        url: url.clone(),
        pod: config.pod_id.clone().unwrap_or_else(default_pod_id),
        lease: Duration::from_secs(config.redis_lease_seconds),
        mailbox_max: config.mailbox_max,
        inbox_max: config.inbox_max,
        max_ttl: config.max_ttl,
        command_timeout: Duration::from_millis(config.redis_timeout_ms),
        wait_replicas: config.redis_wait_replicas,
    };
    let backplane = RedisBackplane::start(settings, Arc::new(Hub::new(limits)), metrics.clone())
        .await
        .map_err(StartError::Backplane)?;
    Ok(backplane)
}

/// Host name plus a random suffix: unique even when a pod restarts under the same name.
fn default_pod_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_string());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// Expiry sweeps and gauge updates, once a second.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        shared.backplane.sweep(rmb_proto::unix_now());
        let stats = shared.backplane.hub().stats();
        let m = &shared.metrics;
        m.queued.set(stats.queued.load(Ordering::Relaxed) as i64);
        let mailbox = shared
            .backplane
            .mailbox_depth()
            .unwrap_or_else(|| stats.mailbox.load(Ordering::Relaxed));
        m.mailbox_depth.set(mailbox as i64);
        Metrics::sync_counter(&m.expired, stats.expired.load(Ordering::Relaxed));
        for (label, value) in [
            ("hit", &shared.directory_stats.hits),
            ("miss", &shared.directory_stats.misses),
            ("error", &shared.directory_stats.errors),
        ] {
            let counter = m.directory_lookups.with_label_values(&[label]);
            Metrics::sync_counter(&counter, value.load(Ordering::Relaxed));
        }
        if let Some(chain) = &shared.chain_metrics {
            chain.sync();
        }
        shared.rates.prune();
        shared.handshakes.prune();
        shared.ingress.prune();
        m.ready.set(i64::from(server::readiness(&shared).is_ok()));
    }
}

async fn drain(shared: &Shared, window: Duration) {
    shared.draining.store(true, Ordering::Relaxed);
    shared.metrics.ready.set(0);
    shared.metrics.draining.set(1);
    shared.backplane.begin_drain();
    let hub = shared.backplane.hub();
    let signals = hub.signals();
    tracing::info!(sessions = signals.len(), window = ?window, "draining");
    let pace = window
        .checked_div(signals.len().max(1) as u32)
        .unwrap_or_default();
    let last = signals.len().saturating_sub(1);
    for (i, signal) in signals.into_iter().enumerate() {
        signal.close(CloseReason::Draining);
        if i < last && !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    // Sessions that attached while we were pacing.
    hub.close_all(CloseReason::Draining);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while shared.connections.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
