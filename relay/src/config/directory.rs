//! Which twin directory the relay reads (a twins file or tfchain) and the cache in front of it.

use std::path::PathBuf;
use std::time::Duration;

use rmb_identity::CacheSettings;

use super::{invalid, require_positive, ConfigError};

/// Twin directory settings.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[command(next_help_heading = "Twin directory")]
pub struct DirectoryArgs {
    /// YAML twins file used as the twin directory (reloaded on change).
    #[arg(long, env = "RMB_TWINS")]
    pub twins: Option<PathBuf>,

    /// tfchain RPC endpoints used as the twin directory (`ws://` or `wss://`; several after one
    /// flag, repeated, or comma separated; tried in order, the next one taking over when one
    /// fails). Default when --twins is not given: tfchain mainnet, `wss://tfchain.grid.tf:443`.
    #[arg(short = 's', long = "substrate", env = "RMB_SUBSTRATE", num_args = 1.., value_delimiter = ',')]
    pub substrate: Vec<String>,

    /// Milliseconds one tfchain lookup (or connection) may take on one endpoint before the
    /// next endpoint is tried.
    #[arg(long, env = "RMB_SUBSTRATE_TIMEOUT_MS", default_value_t = 5000)]
    pub substrate_timeout_ms: u64,

    /// How often the twins file is checked for changes, in milliseconds.
    #[arg(long, env = "RMB_TWINS_POLL_MS", default_value_t = 1000)]
    pub twins_poll_ms: u64,

    /// Seconds a found twin stays cached.
    #[arg(long, env = "RMB_TWIN_CACHE_TTL", default_value_t = 600)]
    pub twin_cache_ttl: u64,

    /// Seconds an unknown twin stays cached as unknown.
    #[arg(long, env = "RMB_TWIN_CACHE_NEGATIVE_TTL", default_value_t = 10)]
    pub twin_cache_negative_ttl: u64,

    /// Most twins kept in the cache.
    #[arg(long, env = "RMB_TWIN_CACHE_CAPACITY", default_value_t = 100_000)]
    pub twin_cache_capacity: u64,

    /// Original relay: blocks of chain events to replay after a lost tfchain connection before
    /// dropping the twin cache instead. Accepted; this relay always drops the cache then.
    #[arg(long, env = "RMB_CATCHUP_THRESHOLD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catchup_threshold: Option<u64>,

    /// Uncached twin directory lookups per second this pod makes for unauthenticated input
    /// (handshake tokens, federated envelopes); past it such requests are answered "retry
    /// later" instead of reaching the chain. 0 turns it off.
    #[arg(long, env = "RMB_DIRECTORY_LOOKUP_RATE", default_value_t = 200)]
    pub directory_lookup_rate: u64,

    /// Accept `ws://` (unencrypted) --substrate endpoints on other than loopback addresses.
    /// The chain is the trust anchor for every twin key: off, only `wss://` (or `ws://` to
    /// 127.0.0.1, ::1, localhost) is accepted.
    #[arg(long, env = "RMB_SUBSTRATE_INSECURE", default_value_t = false)]
    pub substrate_insecure: bool,
}

impl DirectoryArgs {
    /// Exactly one twin directory, with usable endpoints.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        require_positive(&[("twins-poll-ms", self.twins_poll_ms)])?;
        match (&self.twins, self.substrate.is_empty()) {
            (None, true) => Err(invalid(
                "twins",
                "no twin directory configured: give --twins FILE or --substrate URL",
            )),
            (Some(_), false) => Err(invalid(
                "substrate",
                "both --twins and --substrate are set: choose one twin directory",
            )),
            (None, false) => {
                if let Some(url) = self
                    .substrate
                    .iter()
                    .find(|u| !u.starts_with("ws://") && !u.starts_with("wss://"))
                {
                    return Err(invalid(
                        "substrate",
                        format!("{url:?} is not a ws:// or wss:// URL"),
                    ));
                }
                if let Some(url) = self
                    .substrate
                    .iter()
                    .find(|u| !self.substrate_insecure && !is_trusted_chain_url(u))
                {
                    return Err(invalid(
                        "substrate",
                        format!(
                            "{url:?} is not encrypted: use wss://, or give --substrate-insecure \
                             (ws:// is accepted without it only to a loopback address)"
                        ),
                    ));
                }
                require_positive(&[("substrate-timeout-ms", self.substrate_timeout_ms)])
            }
            (Some(_), true) => Ok(()),
        }
    }

    /// The twin cache in front of the directory.
    pub(crate) fn cache_settings(&self) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_secs(self.twin_cache_ttl),
            negative_ttl: Duration::from_secs(self.twin_cache_negative_ttl),
            capacity: self.twin_cache_capacity,
        }
    }
}

/// Whether a chain endpoint may be used without `--substrate-insecure`: `wss://`, or `ws://`
/// to a loopback address (a local test or development chain, where nobody sits in between).
pub fn is_trusted_chain_url(url: &str) -> bool {
    if url.starts_with("wss://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("ws://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
