//! Building fred Redis clients: one place for timeouts, the reconnect policy and socket
//! options, used by the relay's backplane, the federation store and the peer's local Redis.
//!
//! Every TCP connection has Nagle's algorithm off (`TCP_NODELAY`): commands are small and
//! latency-bound, and waiting to coalesce them only adds delay to each round trip. The URL
//! decides standalone or cluster (`redis-cluster://`, `?node=`) and TLS (`rediss://`).

use std::time::Duration;

use fred::prelude::{Builder, Client, Config, ReconnectPolicy};

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RedisClientError {
    /// The URL is not a Redis URL fred understands.
    #[error("redis url: {0}")]
    Url(#[source] fred::error::Error),
    /// fred refused the configuration.
    #[error("redis client: {0}")]
    Build(#[source] fred::error::Error),
}

/// How a client behaves. `None` leaves fred's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// Longest one command may take before it fails.
    pub command_timeout: Option<Duration>,
    /// Longest one connection attempt may take.
    pub connection_timeout: Option<Duration>,
    /// How many times a command is tried (across reconnections).
    pub max_command_attempts: Option<u32>,
    /// How often connections are checked for a server that stopped answering (frozen or
    /// partitioned); one silent for longer than the command timeout and a second is closed
    /// and established again. Needs `command_timeout`.
    pub unresponsive_check: Option<Duration>,
    /// Reconnect delays grow from 100 ms, doubling, up to this; reconnection never stops.
    pub reconnect_max: Duration,
}

impl Default for ClientSettings {
    /// fred's defaults, reconnecting from 100 ms up to 5 s apart.
    fn default() -> Self {
        ClientSettings {
            command_timeout: None,
            connection_timeout: None,
            max_command_attempts: None,
            unresponsive_check: None,
            reconnect_max: Duration::from_secs(5),
        }
    }
}

impl ClientSettings {
    /// For a Redis shared by the pods of a relay (backplane, federation store): commands
    /// bounded by `command_timeout`, tried twice, connection attempts bounded by 2 s,
    /// unresponsive connections checked every 500 ms, reconnects up to 2 s apart.
    pub fn shared(command_timeout: Duration) -> ClientSettings {
        ClientSettings {
            command_timeout: Some(command_timeout),
            connection_timeout: Some(Duration::from_secs(2)),
            max_command_attempts: Some(2),
            unresponsive_check: Some(Duration::from_millis(500)),
            reconnect_max: Duration::from_secs(2),
        }
    }
}

/// fred's configuration for `url` (`redis://`, `rediss://`, `redis-cluster://`, …).
pub fn config_from_url(url: &str) -> Result<Config, RedisClientError> {
    Config::from_url(url).map_err(RedisClientError::Url)
}

/// A builder for `config` with `settings` applied; callers may adjust it further.
pub fn builder(config: Config, settings: &ClientSettings) -> Builder {
    let mut builder = Builder::from_config(config);
    builder.with_connection_config(|c| {
        c.tcp.nodelay = Some(true);
        if let Some(timeout) = settings.connection_timeout {
            c.connection_timeout = timeout;
        }
        if let Some(attempts) = settings.max_command_attempts {
            c.max_command_attempts = attempts;
        }
        if let (Some(interval), Some(timeout)) =
            (settings.unresponsive_check, settings.command_timeout)
        {
            c.unresponsive.max_timeout = Some(timeout + Duration::from_secs(1));
            c.unresponsive.interval = interval;
        }
    });
    if let Some(timeout) = settings.command_timeout {
        builder.with_performance_config(|p| p.default_command_timeout = timeout);
    }
    let max_ms = u32::try_from(settings.reconnect_max.as_millis()).unwrap_or(u32::MAX);
    builder.set_policy(ReconnectPolicy::new_exponential(0, 100, max_ms, 2));
    builder
}

/// A client (not yet connected) for `config`.
pub fn client_for(config: Config, settings: &ClientSettings) -> Result<Client, RedisClientError> {
    builder(config, settings)
        .build()
        .map_err(RedisClientError::Build)
}

/// A client (not yet connected) for `url`.
pub fn client(url: &str, settings: &ClientSettings) -> Result<Client, RedisClientError> {
    client_for(config_from_url(url)?, settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::config::ServerConfig;

    fn built(url: &str, settings: &ClientSettings) -> Builder {
        match config_from_url(url) {
            Ok(config) => builder(config, settings),
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn nagle_is_off_on_every_client() {
        for settings in [
            ClientSettings::default(),
            ClientSettings::shared(Duration::ZERO),
        ] {
            let b = built("redis://127.0.0.1:6379", &settings);
            assert_eq!(b.get_connection_config().tcp.nodelay, Some(true));
        }
    }

    #[test]
    fn shared_settings_bound_commands_connections_and_silence() {
        let b = built(
            "redis://127.0.0.1:6379",
            &ClientSettings::shared(Duration::from_millis(1500)),
        );
        let c = b.get_connection_config();
        assert_eq!(c.connection_timeout, Duration::from_secs(2));
        assert_eq!(c.max_command_attempts, 2);
        assert_eq!(
            c.unresponsive.max_timeout,
            Some(Duration::from_millis(2500))
        );
        assert_eq!(c.unresponsive.interval, Duration::from_millis(500));
        assert_eq!(
            b.get_performance_config().default_command_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            b.get_policy(),
            Some(&ReconnectPolicy::new_exponential(0, 100, 2000, 2))
        );
    }

    #[test]
    fn default_settings_keep_freds_defaults_and_reconnect_forever() {
        let b = built("redis://127.0.0.1:6379", &ClientSettings::default());
        let fred_default = fred::types::config::ConnectionConfig::default();
        let c = b.get_connection_config();
        assert_eq!(c.connection_timeout, fred_default.connection_timeout);
        assert_eq!(c.max_command_attempts, fred_default.max_command_attempts);
        assert_eq!(
            c.unresponsive.max_timeout,
            fred_default.unresponsive.max_timeout
        );
        assert_eq!(
            b.get_policy(),
            Some(&ReconnectPolicy::new_exponential(0, 100, 5000, 2))
        );
    }

    #[test]
    fn the_url_chooses_standalone_or_cluster() {
        let standalone = built("redis://127.0.0.1:6379", &ClientSettings::default());
        assert!(matches!(
            standalone.get_config().map(|c| &c.server),
            Some(ServerConfig::Centralized { .. })
        ));
        let cluster = built(
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001",
            &ClientSettings::default(),
        );
        assert!(matches!(
            cluster.get_config().map(|c| &c.server),
            Some(ServerConfig::Clustered { .. })
        ));
    }

    #[test]
    fn rediss_urls_get_tls() {
        let b = built("rediss://127.0.0.1:6380", &ClientSettings::default());
        assert!(b.get_config().is_some_and(|c| c.tls.is_some()));
        let plain = built("redis://127.0.0.1:6379", &ClientSettings::default());
        assert!(plain.get_config().is_some_and(|c| c.tls.is_none()));
    }

    #[test]
    fn a_bad_url_is_a_url_error() {
        assert!(matches!(
            client("http//nonsense", &ClientSettings::default()),
            Err(RedisClientError::Url(_))
        ));
    }
}
