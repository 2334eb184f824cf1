//! `rmb-peer`: holds a twin's keys, keeps sessions with its relays, and serves the local
//! Redis queue API of the existing ThreefoldTech `rmb-peer`, so services in any language can
//! call and serve other twins.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use rmb_identity::directory::{SubstrateDirectory, SubstrateSettings, TwinPublication};
use rmb_identity::{
    CacheSettings, CachedDirectory, DirectoryError, FileDirectory, KeyType, Signer, TwinDirectory,
};
use rmb_peer::gateway::{self, Config, DEFAULT_MAX_QUEUE_LENGTH};
use rmb_peer::metrics::Metrics;
use rmb_peer::pool::PoolSettings;
use rmb_peer::tls::TlsSettings;
use tokio_util::sync::CancellationToken;

/// How often the twins file is checked for changes.
const TWINS_POLL: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(
    name = "rmb-peer",
    version,
    about = "RMB peer: a twin's gateway to the relay, served over a local Redis"
)]
struct Args {
    /// The twin's BIP39 mnemonic or 0x hex seed.
    #[arg(short = 'm', long, env = "RMB_MNEMONIC", hide_env_values = true)]
    mnemonic: String,

    /// Key type of the twin's account: sr25519 or ed25519.
    #[arg(short = 'k', long = "key-type", default_value = "sr25519")]
    key_type: KeyType,

    /// The local Redis the queues live in.
    #[arg(short = 'r', long, default_value = "redis://localhost:6379")]
    redis: String,

    /// Relay websocket URL (wss://host or ws://host:port). Repeatable: a session is kept
    /// with every relay at once, and envelopes go out through whichever is ready.
    #[arg(long = "relay", required = true)]
    relays: Vec<String>,

    /// Extra CA certificate (PEM) trusted for wss:// relays, on top of the bundled and
    /// system roots. Repeatable.
    #[arg(long = "relay-ca", value_name = "FILE", env = "RMB_RELAY_CA")]
    relay_ca: Vec<PathBuf>,

    /// Serve Prometheus metrics on http://ADDR/metrics (for example 127.0.0.1:9102).
    #[arg(
        long = "metrics-listen",
        value_name = "ADDR",
        env = "RMB_METRICS_LISTEN"
    )]
    metrics_listen: Option<SocketAddr>,

    /// Most requests a service's msgbus.<cmd> list may hold; further requests are refused
    /// with an error to the sender (0: no bound).
    #[arg(long = "max-queue-length", value_name = "N", default_value_t = DEFAULT_MAX_QUEUE_LENGTH)]
    max_queue_length: usize,

    /// Seconds between keepalive pings on an idle relay session; a session silent for three
    /// times as long (plus five seconds) is reopened.
    #[arg(long = "keepalive-seconds", value_name = "S", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    keepalive_seconds: u64,

    /// Twin directory from a YAML twins file (reloaded when it changes).
    #[arg(long = "twins", value_name = "FILE")]
    twins: Option<PathBuf>,

    /// Our twin id, for when the directory cannot resolve our account key.
    #[arg(long = "twin", value_name = "ID")]
    twin: Option<u32>,

    /// tfchain RPC URL (ws:// or wss://), used as the twin directory. Repeatable: tried in
    /// order, the next one taking over when one fails. Not together with --twins.
    #[arg(short = 's', long)]
    substrate: Vec<String>,

    /// Do not publish the relay domains (the hosts of --relay) and the encryption key on
    /// chain. Without it, and with --substrate, the peer submits `update_twin` in the
    /// background when the chain lists something else.
    #[arg(long = "no-update")]
    no_update: bool,

    /// Debug logging (RUST_LOG overrides).
    #[arg(short = 'd', long)]
    debug: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let default_level = if args.debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let source = directory_source(&args)?;
    let publish_relays: Vec<String> = args.relays.iter().filter_map(|r| relay_host(r)).collect();
    let signer =
        Signer::from_secret(&args.mnemonic, args.key_type).context("invalid --mnemonic")?;

    let tls = if args.relay_ca.is_empty() {
        None
    } else {
        Some(TlsSettings::with_ca_files(&args.relay_ca).context("--relay-ca")?)
    };
    for relay in &args.relays {
        // Refuse a bad URL at start rather than retrying it forever.
        let scheme = relay.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("ws" | "wss")) {
            bail!("--relay {relay}: expected wss://host or ws://host:port");
        }
    }
    let keepalive = Duration::from_secs(args.keepalive_seconds);
    let relay = PoolSettings {
        relays: args.relays,
        tls,
        keepalive,
        silence_limit: keepalive * 3 + Duration::from_secs(5),
        ..PoolSettings::default()
    };

    tokio::runtime::Runtime::new()?.block_on(async move {
        let (directory, chain) = open_directory(source)?;
        if let (Some(chain), false) = (chain, args.no_update) {
            tokio::spawn(publish_twin(chain, signer.clone(), publish_relays));
        }
        let metrics = Arc::new(Metrics::new());
        let stop_metrics = CancellationToken::new();
        if let Some(addr) = args.metrics_listen {
            let bound =
                rmb_peer::metrics::spawn_server(addr, metrics.clone(), stop_metrics.clone())
                    .await
                    .with_context(|| format!("--metrics-listen {addr}"))?;
            tracing::info!(%bound, "serving metrics on /metrics");
        }
        let config = Config {
            signer,
            twin: args.twin,
            redis_url: args.redis,
            relay,
            directory,
            max_queue_length: args.max_queue_length,
            metrics,
        };
        let result = gateway::run(config, shutdown_signal()).await;
        stop_metrics.cancel();
        result?;
        Ok(())
    })
}

/// Where twins are read from.
enum DirectorySource {
    File(PathBuf),
    Chain(Vec<String>),
}

fn directory_source(args: &Args) -> anyhow::Result<DirectorySource> {
    match (&args.twins, args.substrate.is_empty()) {
        (Some(_), false) => {
            bail!("--twins and --substrate are both set: choose one twin directory")
        }
        (Some(file), true) => Ok(DirectorySource::File(file.clone())),
        (None, false) => {
            if let Some(url) = args
                .substrate
                .iter()
                .find(|u| !u.starts_with("ws://") && !u.starts_with("wss://"))
            {
                bail!("--substrate {url}: expected a ws:// or wss:// URL");
            }
            Ok(DirectorySource::Chain(args.substrate.clone()))
        }
        (None, true) => bail!("a twin directory is required: --substrate URL or --twins FILE"),
    }
}

/// Opens the directory behind a cache (needs the runtime: both start background tasks).
/// The cached directory the gateway reads, and the chain client when it is the chain.
type OpenedDirectory = (Arc<dyn TwinDirectory>, Option<Arc<SubstrateDirectory>>);

/// Opens the directory behind a cache (needs the runtime: both start background tasks).
fn open_directory(source: DirectorySource) -> anyhow::Result<OpenedDirectory> {
    Ok(match source {
        DirectorySource::File(path) => {
            let file = FileDirectory::open(&path).context("loading the twins file")?;
            file.watch(TWINS_POLL);
            (CachedDirectory::new(file, CacheSettings::default()), None)
        }
        DirectorySource::Chain(urls) => {
            tracing::info!(?urls, "twin directory: tfchain");
            let chain = SubstrateDirectory::start(SubstrateSettings::new(urls));
            (
                CachedDirectory::new(chain.clone(), CacheSettings::default()),
                Some(chain),
            )
        }
    })
}

/// The host of a relay URL, as the chain's relay field lists it (`wss://r.example:443/x`
/// → `r.example`).
fn relay_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let host = rest.split(['/', '?']).next()?;
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Publishes our relays and encryption key on chain, retrying while the chain is unreachable;
/// runs beside messaging and never blocks it.
async fn publish_twin(chain: Arc<SubstrateDirectory>, signer: Signer, relays: Vec<String>) {
    let pk = signer.identity().encryption_public_key();
    let mut backoff = Duration::from_secs(1);
    loop {
        match chain.publish_twin(&signer, &relays, Some(&pk)).await {
            Ok(TwinPublication::UpToDate) => {
                tracing::info!(?relays, "twin on chain is up to date");
                return;
            }
            Ok(TwinPublication::Submitted) => {
                tracing::info!(?relays, "submitted update_twin (relays and pk) to tfchain");
                return;
            }
            Ok(TwinPublication::NoTwin) => {
                tracing::warn!("no twin on chain for this key: nothing to update");
                return;
            }
            Err(DirectoryError::InvalidData(reason)) => {
                tracing::error!(%reason, "twin update refused; not retrying");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "twin update failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
