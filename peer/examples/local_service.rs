//! A service and a caller through a running `rmb-peer`'s local Redis, with the SDK's local
//! client: serves `calc.add`, and with `--call TWIN` calls `calc.add` on that twin instead.
//!
//! ```text
//! cargo run -p rmb-peer --example local_service -- --redis redis://127.0.0.1:6379
//! cargo run -p rmb-peer --example local_service -- --redis redis://127.0.0.1:6380 --call 1
//! ```

use std::time::Duration;

use clap::Parser;
use rmb_peer::local_client::LocalClient;
use rmb_peer::router::{HandlerError, Incoming, Router};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// The Redis the local rmb-peer serves.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Call calc.add on this twin instead of serving.
    #[arg(long)]
    call: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let local = LocalClient::connect(&args.redis).await?;
    if let Some(twin) = args.call {
        let sum = local
            .call(twin, "calc.add", b"[1,2,3]", Duration::from_secs(10))
            .await?;
        println!("calc.add [1,2,3] = {}", String::from_utf8_lossy(&sum));
        return Ok(());
    }
    let router = Router::new().route("calc.add", |req: Incoming| async move {
        let terms: Vec<i64> =
            serde_json::from_slice(&req.data).map_err(|e| HandlerError::new(101, e.to_string()))?;
        Ok(terms.iter().sum::<i64>().to_string().into_bytes())
    });
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stopper.cancel();
    });
    println!("serving calc.add through {}; Ctrl-C stops", args.redis);
    local.serve(router, stop).await?;
    Ok(())
}
