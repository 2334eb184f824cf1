//! Calls a command on another twin straight through a relay, with the SDK's direct client.
//!
//! ```text
//! cargo run -p rmb-peer --example direct_call -- \
//!     --mnemonic "$MNEMONIC" --twins examples/twins.yaml --relay ws://127.0.0.1:8080 \
//!     --dst 2 --cmd calc.add --data '[1,2]'
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use rmb_identity::{CacheSettings, CachedDirectory, FileDirectory, KeyType, Signer};
use rmb_peer::metrics::Metrics;
use rmb_peer::pool::PoolSettings;
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
    /// Twin to call.
    #[arg(long)]
    dst: u32,
    /// Command to call.
    #[arg(long)]
    cmd: String,
    /// JSON payload.
    #[arg(long, default_value = "{}")]
    data: String,
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
    let answer = client
        .call(
            args.dst,
            &args.cmd,
            args.data.as_bytes(),
            Duration::from_secs(30),
        )
        .await;
    client.close().await;
    println!("{}", String::from_utf8_lossy(&answer?));
    Ok(())
}
