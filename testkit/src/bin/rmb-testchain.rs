//! `rmb-testchain`: serves a twins file as a tfchain-compatible Substrate node (JSON-RPC
//! over websocket), so the whole RMB stack runs on a laptop without a chain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rmb_testkit::testchain::{TestChain, TestChainConfig};

/// A local stand-in for tfchain: twins from a file, blocks when it changes.
#[derive(Debug, Parser)]
#[command(name = "rmb-testchain", version)]
struct Args {
    /// Websocket JSON-RPC listen address.
    #[arg(long, env = "RMB_TESTCHAIN_LISTEN", default_value = "127.0.0.1:9944")]
    listen: SocketAddr,
    /// YAML twins file (the relay's file-directory format); edits seal a new block.
    #[arg(long, env = "RMB_TESTCHAIN_TWINS")]
    twins: PathBuf,
    /// SCALE-encoded metadata (raw or 0x-hex) to serve instead of the built-in one.
    #[arg(long, env = "RMB_TESTCHAIN_METADATA")]
    metadata: Option<PathBuf>,
    /// How often to check the twins file, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// Seal an empty block this often, in milliseconds (0: only when twins change).
    #[arg(long, default_value_t = 6000)]
    block_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = TestChainConfig::new(args.listen, &args.twins);
    config.metadata = args.metadata;
    config.poll = Duration::from_millis(args.poll_ms.max(10));
    config.block_interval = (args.block_ms > 0).then(|| Duration::from_millis(args.block_ms));
    let chain = TestChain::start(config)
        .await
        .context("rmb-testchain cannot start")?;
    tracing::info!(url = %chain.url(), twins = %args.twins.display(), "serving");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    drop(chain);
    Ok(())
}
