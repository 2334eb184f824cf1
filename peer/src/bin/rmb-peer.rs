//! `rmb-peer`: holds a twin's keys, keeps a session with a relay, and serves the local Redis
//! queue API of the existing ThreefoldTech `rmb-peer`, so services in any language can call
//! and serve other twins.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use rmb_identity::{CacheSettings, CachedDirectory, FileDirectory, KeyType, Signer};
use rmb_peer::gateway::{self, Config, Stats};

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

    /// Relay websocket URL (ws://host:port). Repeatable; this version uses only the first.
    #[arg(long = "relay", required = true)]
    relays: Vec<String>,

    /// Twin directory from a YAML twins file (reloaded when it changes).
    #[arg(long = "twins", value_name = "FILE")]
    twins: Option<PathBuf>,

    /// Our twin id, for when the directory cannot resolve our account key.
    #[arg(long = "twin", value_name = "ID")]
    twin: Option<u32>,

    /// tfchain RPC URL. Not yet supported: use --twins.
    #[arg(short = 's', long)]
    substrate: Option<String>,

    /// Accepted for compatibility with the existing rmb-peer (it skips updating the twin's
    /// on-chain relay and public key); this version never updates the chain.
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

    if args.substrate.is_some() {
        bail!("--substrate is not yet supported by this rmb-peer: give a twins file with --twins");
    }
    let Some(twins) = args.twins.clone() else {
        bail!("a twin directory is required: --twins FILE (--substrate is not yet supported)");
    };
    let _ = args.no_update;
    let signer =
        Signer::from_secret(&args.mnemonic, args.key_type).context("invalid --mnemonic")?;

    tokio::runtime::Runtime::new()?.block_on(async move {
        let file = FileDirectory::open(&twins).context("loading the twins file")?;
        let _watch = file.watch(TWINS_POLL);
        let directory = CachedDirectory::new(file, CacheSettings::default());
        let config = Config {
            signer,
            twin: args.twin,
            redis_url: args.redis,
            relays: args.relays,
            directory,
            stats: Arc::new(Stats::default()),
        };
        gateway::run(config, shutdown_signal()).await?;
        Ok(())
    })
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
