//! The RMB relay.
//!
//! Twins connect over websockets with a signed session token; the relay routes the envelopes
//! they send to other twins' sessions, keeps mail for offline twins until it expires, and
//! confirms every delivery (the peer's TCP acknowledged it, or a websocket ping was answered)
//! before forgetting it. Shared state lives behind the [`backplane::Backplane`] trait, so one
//! process or a cluster of pods look the same to a client.

pub mod backplane;
pub mod config;
mod directory;
mod error;
mod federation;
mod freshness;
pub mod hub;
mod ingress;
pub mod key;
pub mod limits;
mod listener;
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

use tokio::net::TcpListener;

use crate::backplane::{Backplane, MemoryBackplane, RedisBackplane};
pub use crate::config::{Config, ConfigError};
pub use crate::error::StartError;
use crate::hub::{CloseReason, Hub};
use crate::metrics::Metrics;
use crate::router::{Router, RouterSettings};
use crate::server::Shared;

/// A relay bound to its address, ready to serve.
pub struct Relay {
    config: Config,
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Relay {
    /// Builds every component from `config` and binds the listen address.
    pub async fn bind(config: Config) -> Result<Relay, StartError> {
        config.validate()?;
        for note in &config.notes {
            tracing::info!("{note}");
        }
        let metrics = Metrics::new()?;
        let opened = directory::open(&config.directory, &metrics)?;
        let (hub, backplane) = open_backplane(&config, &metrics).await?;
        let federation = federation::open(&config, &opened.directory, &backplane, &metrics).await?;
        let router = Arc::new(
            Router::new(
                RouterSettings {
                    domains: config.served_domains(),
                    max_ttl: config.limits.max_ttl,
                    max_envelope_bytes: config.limits.max_envelope_bytes,
                },
                backplane.clone(),
                hub.clone(),
                opened.directory.clone(),
                metrics.clone(),
            )
            .with_federation(federation.clone()),
        );
        let shared = Arc::new(Shared::new(
            &config, opened, hub, backplane, metrics, router, federation,
        ));
        let listener = listener::bind(config.listen.addr).map_err(|source| StartError::Listen {
            addr: config.listen.addr,
            source,
        })?;
        Ok(Relay {
            config,
            listener,
            shared,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.config.listen.addr)
    }

    /// Serves until `shutdown` resolves, then drains: readiness goes false, no new sessions
    /// are accepted, sessions are closed with 1012 paced over the drain window after their
    /// queued envelopes are delivered and confirmed.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Relay {
            config,
            listener,
            shared,
        } = self;
        shared.metrics.ready.set(1);
        tracing::info!(addr = %config.listen.addr, domains = ?config.domains, "relay listening");
        let housekeeping = tokio::spawn(housekeeping(shared.clone()));
        if let Some(federation) = &shared.federation {
            federation.start();
        }
        server::accept_loop(listener, shared.clone(), shutdown).await;
        drain(&shared, Duration::from_secs(config.listen.drain_seconds)).await;
        housekeeping.abort();
        if let Some(federation) = &shared.federation {
            federation.shutdown().await;
        }
        shared.closing.send_replace(true);
        shared.backplane.shutdown().await;
        tracing::info!("relay stopped");
    }
}

/// The node's hub and the backplane that feeds it.
type Opened = (Arc<Hub>, Arc<dyn Backplane>);

async fn open_backplane(config: &Config, metrics: &Arc<Metrics>) -> Result<Opened, StartError> {
    let mut limits = config.limits.hub_limits();
    let Some(settings) = config.backplane.redis_settings(&config.limits) else {
        tracing::info!(
            "no --redis: in-memory backplane; this process alone holds sessions and mail (give -r redis://HOST:6379 to share them between relay processes)"
        );
        let hub = Arc::new(Hub::new(limits));
        return Ok((hub.clone(), Arc::new(MemoryBackplane::new(hub))));
    };
    // Mail is bounded in Redis; the local hub only holds what connected sessions drain.
    limits.mailbox_per_twin = usize::MAX;
    let hub = Arc::new(Hub::new(limits));
    let backplane = RedisBackplane::start(settings, hub.clone(), metrics.clone())
        .await
        .map_err(StartError::Backplane)?;
    Ok((hub, backplane))
}

/// Expiry sweeps and gauge updates, once a second.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        shared.backplane.sweep(rmb_proto::unix_now());
        let stats = shared.hub.stats();
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
    let hub = &shared.hub;
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
