//! `rmb-relay`: the relay server binary.

use anyhow::Context;
use rmb_relay::config::LogFormat;
use rmb_relay::{Config, Relay};
use tracing_subscriber::EnvFilter;

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
    init_logging(&config)?;
    raise_open_files_limit();
    let relay = Relay::bind(config).await.context("starting the relay")?;
    relay.serve(rmb_common::shutdown::requested()).await;
    Ok(())
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("setting `log`: invalid filter {:?}", config.log))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
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
