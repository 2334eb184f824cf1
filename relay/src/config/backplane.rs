//! Where sessions and mail are shared between pods: nothing (memory) or Redis.

use std::time::Duration;

use super::limits::LimitArgs;
use super::{invalid, require_positive, ConfigError};
use crate::backplane::RedisSettings;

/// Backplane settings.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[command(next_help_heading = "Backplane")]
pub struct BackplaneArgs {
    /// Redis backplane (`redis://`, `rediss://`, `redis-cluster://host:port?node=host:port`),
    /// credentials in the URL; pods sharing it act as one relay. Without it (unlike the
    /// original relay, which assumed `redis://localhost:6379`) the in-memory backplane serves
    /// one relay process.
    #[arg(short = 'r', long, env = "RMB_REDIS")]
    pub redis: Option<String>,

    /// This pod's unique name in the cluster (default: host name plus a random suffix).
    #[arg(long, env = "RMB_POD_ID")]
    pub pod_id: Option<String>,

    /// Seconds of silence after which a pod counts as dead and its sessions as offline.
    #[arg(long, env = "RMB_REDIS_LEASE_SECONDS", default_value_t = 10)]
    pub redis_lease_seconds: u64,

    /// Milliseconds one Redis command may take before it counts as failed.
    #[arg(long, env = "RMB_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,

    /// Replicas that must confirm each write before an envelope counts as accepted (Redis
    /// `WAIT`). 0 trusts asynchronous replication: a failover can then lose the last writes.
    #[arg(long, env = "RMB_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// Milliseconds a pod reuses the owner of a session on another pod, learned from the
    /// routing script, before asking Redis again (0: ask for every envelope). Entries are also
    /// dropped when ownership may have changed (attach, detach, evict, a failed append, the
    /// owner pod missing heartbeats); a stale one costs a detour through the old pod.
    #[arg(long, env = "RMB_REDIS_OWNER_CACHE_MS", default_value_t = 1000)]
    pub redis_owner_cache_ms: u64,

    /// Safety cap on a pod's inbox stream (entries).
    #[arg(long, env = "RMB_INBOX_MAX", default_value_t = 1_000_000)]
    pub inbox_max: u64,
}

impl BackplaneArgs {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        require_positive(&[
            ("redis-lease-seconds", self.redis_lease_seconds),
            ("redis-timeout-ms", self.redis_timeout_ms),
            ("inbox-max", self.inbox_max),
        ])?;
        if let Some(url) = &self.redis {
            let known = [
                "redis://",
                "rediss://",
                "redis-cluster://",
                "rediss-cluster://",
                "redis-sentinel://",
            ];
            if !known.iter().any(|p| url.starts_with(p)) {
                return Err(invalid(
                    "redis",
                    "expected a redis://, rediss:// or redis-cluster:// URL",
                ));
            }
        }
        Ok(())
    }

    /// How long one Redis command may take.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// The Redis backplane's settings, or `None` for the in-memory backplane.
    pub(crate) fn redis_settings(&self, limits: &LimitArgs) -> Option<RedisSettings> {
        let url = self.redis.clone()?;
        Some(RedisSettings {
            url,
            pod: self.pod_id.clone().unwrap_or_else(default_pod_id),
            lease: Duration::from_secs(self.redis_lease_seconds),
            mailbox_max: limits.mailbox_max,
            budget: limits.mail_budget(),
            inbox_max: self.inbox_max,
            max_ttl: limits.max_ttl,
            command_timeout: self.command_timeout(),
            wait_replicas: self.redis_wait_replicas,
            owner_cache_ttl: Duration::from_millis(self.redis_owner_cache_ms),
        })
    }
}

/// Host name plus a random suffix: unique even when a pod restarts under the same name.
fn default_pod_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_string());
    format!("{host}-{:08x}", rand::random::<u32>())
}
