//! Serves commands straight from a relay session with the SDK's direct client and a router:
//! `calc.add` sums a JSON array of integers, `calc.echo` returns its payload.
//!
//! ```text
//! cargo run -p rmb-peer --example direct_serve -- \
//!     --mnemonic "$MNEMONIC" --twins examples/twins.yaml --relay ws://127.0.0.1:8080
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use rmb_identity::{CacheSettings, CachedDirectory, FileDirectory, KeyType, Signer};
use rmb_peer::metrics::Metrics;
use rmb_peer::pool::PoolSettings;
use rmb_peer::router::{HandlerError, Incoming, Router};
use rmb_peer::sdk::{Client, ClientConfig};

#[derive(Parser)]
struct Args {
    /// Our mnemonic or 0x seed.
    #[arg(long, env = "RMB_MNEMONIC", hide_env_values = true)]
    mnemonic: String,
    /// Key type of our account.
    #[arg(long, default_value = "sr25519")]
    key_type: KeyType,
    /// Twins file (the directory).
    #[arg(long)]
    twins: PathBuf,
    /// Relay URL (repeatable).
    #[arg(long = "relay", required = true)]
    relays: Vec<String>,
}

async fn add(req: Incoming) -> Result<Vec<u8>, HandlerError> {
    let terms: Vec<i64> =
        serde_json::from_slice(&req.data).map_err(|e| HandlerError::new(101, e.to_string()))?;
    Ok(terms.iter().sum::<i64>().to_string().into_bytes())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let signer = Signer::from_secret(&args.mnemonic, args.key_type).context("--mnemonic")?;
    let directory = CachedDirectory::new(
        FileDirectory::open(&args.twins).context("--twins")?,
        CacheSettings::default(),
    );
    let client = Client::connect(ClientConfig {
        signer,
        twin: None,
        directory,
        relay: PoolSettings {
            relays: args.relays,
            ..PoolSettings::default()
        },
        metrics: Arc::new(Metrics::new()?),
    })
    .await?;
    let router = Router::new()
        .route("calc.add", add)
        .route("calc.echo", |req: Incoming| async move { Ok(req.data) });
    println!(
        "twin {} serving calc.add and calc.echo; Ctrl-C stops",
        client.twin()
    );
    client.set_router(router);
    tokio::signal::ctrl_c().await?;
    client.close().await;
    Ok(())
}
