//! `rmb-peer`: holds a twin's keys, keeps sessions with its relays, and serves the local
//! Redis queue API of the existing ThreefoldTech `rmb-peer`, so services in any language can
//! call and serve other twins.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgGroup, CommandFactory as _, FromArgMatches as _, Parser};
use rmb_common::backoff::{BackoffPolicy, Jitter};
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

/// The original's default relay (mainnet).
const DEFAULT_RELAY: &str = "wss://relay.grid.tf:443";
/// The original's default chain (mainnet).
const DEFAULT_SUBSTRATE: &str = "wss://tfchain.grid.tf:443";

#[derive(Parser, Debug)]
#[command(
    name = "rmb-peer",
    version = rmb_peer::VERSION,
    about = "RMB peer: a twin's gateway to the relay, served over a local Redis",
    group(ArgGroup::new("secret").required(true).multiple(false)
        .args(["mnemonic", "mnemonics", "seed"])),
)]
struct Args {
    /// The twin's secret: a BIP39 mnemonic, or a hex seed starting with 0x.
    #[arg(short = 'm', long, env = "RMB_MNEMONIC", hide_env_values = true)]
    mnemonic: Option<String>,

    /// [deprecated] the same as --mnemonic (the original's older spelling).
    #[arg(long, value_name = "MNEMONIC")]
    mnemonics: Option<String>,

    /// [deprecated] the same as --mnemonic: a 0x hex seed (or a mnemonic).
    #[arg(long, value_name = "SEED")]
    seed: Option<String>,

    /// Key type of the twin's account: sr25519 or ed25519.
    #[arg(short = 'k', long = "key-type", default_value = "sr25519")]
    key_type: KeyType,

    /// The local Redis the queues live in: redis://host:port[/db], rediss://…, or a Unix
    /// socket as unix:///path or redis+unix:///path (?db=N&pass=… for the database and
    /// password).
    #[arg(
        short = 'r',
        long,
        env = "RMB_REDIS",
        hide_env_values = true,
        default_value = "redis://localhost:6379"
    )]
    redis: String,

    /// tfchain RPC URLs (ws:// or wss://), the twin directory; several may follow one flag,
    /// and the flag may repeat: tried in order, the next one taking over when one fails.
    /// Not together with --twins.
    #[arg(short = 's', long, num_args = 1.., default_value = DEFAULT_SUBSTRATE, value_name = "URL")]
    substrate: Vec<String>,

    /// Relay websocket URLs (wss://host or ws://host:port); several may follow one flag, and
    /// the flag may repeat. A session is kept with every relay at once, and envelopes go out
    /// through whichever is ready.
    #[arg(long = "relay", num_args = 1.., default_value = DEFAULT_RELAY, value_name = "URL")]
    relays: Vec<String>,

    /// Do not publish the relay domains (the hosts of --relay) and the encryption key on
    /// chain. Without it, and with the chain as directory, the peer submits `update_twin` in
    /// the background when the chain lists something else.
    #[arg(long = "no-update")]
    no_update: bool,

    /// Debug logging; twice (-dd) for trace logging (RUST_LOG overrides).
    #[arg(short = 'd', long, action = ArgAction::Count)]
    debug: u8,

    /// Accepted for the original's command lines and ignored: this peer does not serve file
    /// uploads (the original's upload feature is disabled too).
    #[arg(short = 'u', long, value_name = "DIR")]
    uploads: Option<PathBuf>,

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

    /// Twin directory from a YAML twins file (reloaded when it changes) instead of the chain.
    #[arg(long = "twins", value_name = "FILE")]
    twins: Option<PathBuf>,

    /// Our twin id, for when the directory cannot resolve our account key.
    #[arg(long = "twin", value_name = "ID")]
    twin: Option<u32>,

    /// When a request expires with destinations that did not answer, push for each of them
    /// an error answer (code 500, message `timeout: …`) on the caller's ret list. Off by
    /// default, as in the original rmb-peer: callers keep their own deadline.
    #[arg(long = "timeout-errors", env = "RMB_TIMEOUT_ERRORS")]
    timeout_errors: bool,
}

impl Args {
    /// The secret, from whichever of its spellings was given.
    fn secret(&self) -> anyhow::Result<&str> {
        for (flag, value) in [("--mnemonics", &self.mnemonics), ("--seed", &self.seed)] {
            if value.is_some() {
                tracing::warn!("{flag} is deprecated: use -m/--mnemonic (same meaning)");
            }
        }
        self.mnemonic
            .as_deref()
            .or(self.mnemonics.as_deref())
            .or(self.seed.as_deref())
            .context("a secret is required: -m/--mnemonic")
    }
}

/// The log filter for `-d` given `count` times (RUST_LOG overrides it).
fn log_filter(count: u8) -> &'static str {
    match count {
        0 => "info",
        1 => "info,rmb_peer=debug,rmb_identity=debug",
        _ => "debug,rmb_peer=trace,rmb_identity=trace",
    }
}

fn main() -> anyhow::Result<()> {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(args.debug)));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    tracing::info!(
        version = rmb_peer::VERSION,
        log = log_filter(args.debug),
        "rmb-peer starting"
    );

    let substrate_given = matches.value_source("substrate") == Some(ValueSource::CommandLine);
    let source = directory_source(&args, substrate_given)?;
    if let Some(dir) = &args.uploads {
        tracing::warn!(
            dir = %dir.display(),
            "-u/--uploads is accepted and ignored: this peer has no upload feature \
             (the original's is disabled too)"
        );
    }
    let publish_relays: Vec<String> = args.relays.iter().filter_map(|r| relay_host(r)).collect();
    let signer = Signer::from_secret(args.secret()?, args.key_type)
        .context("invalid secret (-m/--mnemonic: a BIP39 mnemonic or a 0x hex seed)")?;

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

    tracing::info!(relays = ?relay.relays, "relays");
    tokio::runtime::Runtime::new()?.block_on(async move {
        let (directory, chain) = open_directory(source)?;
        if let (Some(chain), false) = (chain, args.no_update) {
            tokio::spawn(publish_twin(chain, signer.clone(), publish_relays));
        }
        let metrics = Arc::new(Metrics::new().context("peer metrics")?);
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
            timeout_errors: args.timeout_errors,
            metrics,
        };
        let result = gateway::run(config, rmb_common::shutdown::requested()).await;
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

/// The twin directory: `--twins FILE`, or the chain (`--substrate`, mainnet by default).
fn directory_source(args: &Args, substrate_given: bool) -> anyhow::Result<DirectorySource> {
    match &args.twins {
        Some(_) if substrate_given => {
            bail!("--twins and --substrate are both set: choose one twin directory")
        }
        Some(file) => Ok(DirectorySource::File(file.clone())),
        None => {
            if let Some(url) = args
                .substrate
                .iter()
                .find(|u| !u.starts_with("ws://") && !u.starts_with("wss://"))
            {
                bail!("--substrate {url}: expected a ws:// or wss:// URL");
            }
            Ok(DirectorySource::Chain(args.substrate.clone()))
        }
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
            tracing::info!(?urls, "twin directory: tfchain (substrate)");
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
    let mut backoff = BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(60))
        .with_jitter(Jitter::None)
        .start();
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
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "twin update failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
