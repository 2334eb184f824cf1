//! `rmb-relay`: the relay server binary.

use anyhow::Context;
use rmb_relay::config::LogFormat;
use rmb_relay::telemetry::Telemetry;
use rmb_relay::{Config, Relay};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// jemalloc: glibc malloc was a fifth of the relay's CPU with Redis (every envelope allocates
/// and frees buffers of a few KiB on two threads), and jemalloc also holds less per idle
/// session than glibc or mimalloc (docs/benchmarks.md, "Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Config::load() {
        Ok(config) => config,
        Err(rmb_relay::ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("rmb-relay: {e}");
            std::process::exit(2);
        }
    };
    if config.check_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let telemetry = Telemetry::from_args(&config.telemetry)?;
    init_logging(&config, &telemetry)?;
    raise_open_files_limit();
    let relay = Relay::bind(config).await.context("starting the relay")?;
    relay.serve(rmb_common::shutdown::requested()).await;
    // The exporter blocks while it flushes: keep it off the async workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    Ok(())
}

/// Logs (text or JSON, filtered by `--log`) and, with `--otlp-endpoint`, trace export: two
/// layers over one subscriber, so log lines and exported spans share their span context.
fn init_logging(config: &Config, telemetry: &Telemetry) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.telemetry.log)
        .with_context(|| format!("setting `log`: invalid filter {:?}", config.telemetry.log))?;
    let logs = match config.telemetry.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(telemetry.layer())
        .init();
    Ok(())
}

/// Raises the soft limit on open files to the hard limit, as the original relay does: every
/// session is a socket, and the usual soft limit (1024) would refuse connections long before
/// --max-connections. The hard limit is the operator's (systemd `LimitNOFILE=`, ulimit -Hn).
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current == limit.maximum {
            return;
        }
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(limit = ?limit.maximum, "open files limit raised"),
            Err(e) => {
                tracing::warn!(error = %e, soft = ?limit.current, "cannot raise the open files limit")
            }
        }
    }
}
