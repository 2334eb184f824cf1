//! Relay-to-relay federation (docs/federation.md).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use rmb_federation::{ClientSettings, Settings};

use super::limits::LimitArgs;
use super::{invalid, require_positive, ConfigError, MAX_ENVELOPE_CAP};

/// Federation settings.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[command(next_help_heading = "Federation")]
pub struct FederationArgs {
    /// Federate with other relays: twins served by other relays are reached through them
    /// (signed batches, or the original relay's `POST /`), and their envelopes are accepted
    /// here. On whenever --domain is given.
    #[arg(id = "federation", long = "federation", env = "RMB_FEDERATION", default_value_t = true, action = clap::ArgAction::Set)]
    #[serde(rename = "federation")]
    pub enabled: bool,

    /// The relay's ed25519 identity key file (from `rmbctl relay-key generate`), which signs
    /// federation requests. Without it the key is generated: with --redis once for the whole
    /// cluster and kept in Redis; otherwise kept in `$STATE_DIRECTORY/identity.key` when
    /// systemd gives a state directory, else in memory (a new key after each restart).
    #[arg(long, env = "RMB_IDENTITY_KEY")]
    pub identity_key: Option<PathBuf>,

    /// Accept the legacy `POST /` of one raw envelope from relays of the existing
    /// implementation (same envelope checks, no link signature).
    #[arg(long, env = "RMB_FEDERATION_LEGACY", default_value_t = true, action = clap::ArgAction::Set)]
    pub federation_legacy: bool,

    /// Reach a relay domain at this address instead of its DNS name: `DOMAIN=HOST:PORT`
    /// (repeatable). For tests and private networks.
    #[arg(long, env = "RMB_FEDERATION_RESOLVE", value_delimiter = ',')]
    pub federation_resolve: Vec<String>,

    /// Talk plain HTTP instead of HTTPS to this relay domain only (repeatable). Never for a
    /// relay across an untrusted network: the key document is then unauthenticated.
    #[arg(long, env = "RMB_FEDERATION_INSECURE_HTTP", value_delimiter = ',')]
    pub federation_insecure_http: Vec<String>,

    /// Extra CA certificates (PEM) trusted for HTTPS to remote relays, besides the system's.
    #[arg(long, env = "RMB_FEDERATION_CA_FILE")]
    pub federation_ca_file: Option<PathBuf>,

    /// Largest difference, in seconds, between a federation request's timestamp and our
    /// clock; also how long its replay mark is kept (twice this plus a minute).
    #[arg(long, env = "RMB_FEDERATION_MAX_SKEW", default_value_t = 300)]
    pub federation_max_skew: u64,

    /// Seconds a remote relay's key document is trusted before it is fetched again (it is
    /// also fetched when a request names a key id it does not list).
    #[arg(long, env = "RMB_FEDERATION_KEY_CACHE_SECONDS", default_value_t = 600)]
    pub federation_key_cache_seconds: u64,

    /// Most envelopes in one request to a remote relay.
    #[arg(long, env = "RMB_FEDERATION_BATCH", default_value_t = 256)]
    pub federation_batch: usize,

    /// Longest wait, in seconds, between two attempts to send one envelope (exponential
    /// backoff with jitter up to this).
    #[arg(long, env = "RMB_FEDERATION_MAX_BACKOFF_SECONDS", default_value_t = 60)]
    pub federation_max_backoff_seconds: u64,

    /// Milliseconds a request to a remote relay may take, connecting included.
    #[arg(long, env = "RMB_FEDERATION_TIMEOUT_MS", default_value_t = 10_000)]
    pub federation_timeout_ms: u64,

    /// Largest federation request body accepted, in bytes. At least --max-envelope-bytes
    /// plus framing, or the largest envelopes could not arrive.
    #[arg(long, env = "RMB_FEDERATION_MAX_REQUEST_BYTES", default_value_t = MAX_ENVELOPE_CAP + (1 << 20))]
    pub federation_max_request_bytes: usize,

    /// Most envelopes queued for one remote relay domain; beyond it senders get error 503
    /// until the queue drains (a remote that stays down must not fill Redis).
    #[arg(long, env = "RMB_FEDERATION_QUEUE_MAX", default_value_t = 100_000)]
    pub federation_queue_max: u64,

    /// Most envelopes in one inbound federation batch; a bigger batch is refused whole (HTTP
    /// 400) before any envelope is checked.
    #[arg(
        long,
        env = "RMB_FEDERATION_MAX_BATCH_ENVELOPES",
        default_value_t = 1024
    )]
    pub federation_max_batch_envelopes: usize,

    /// Most federation requests (batch and legacy `POST /`) handled at once by this pod; more
    /// get HTTP 503 at once, before their body is read.
    #[arg(long, env = "RMB_FEDERATION_MAX_INFLIGHT", default_value_t = 256)]
    pub federation_max_inflight: usize,

    /// Milliseconds a federation request body may take to arrive, in whole; slower senders
    /// get HTTP 408.
    #[arg(long, env = "RMB_FEDERATION_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub federation_body_timeout_ms: u64,

    /// Legacy `POST /` requests per second one client address may send (token bucket, burst
    /// twice this; IPv6 per /64); more get HTTP 429. 0 turns it off.
    #[arg(
        long,
        env = "RMB_FEDERATION_LEGACY_RATE_PER_IP",
        default_value_t = 1000
    )]
    pub federation_legacy_rate_per_ip: u64,

    /// Legacy `POST /` envelopes per second from one source twin (token bucket, burst twice
    /// this); more get HTTP 429. 0 turns it off.
    #[arg(
        long,
        env = "RMB_FEDERATION_LEGACY_RATE_PER_TWIN",
        default_value_t = 100
    )]
    pub federation_legacy_rate_per_twin: u64,

    /// Seconds over which a remote relay's failed federation requests count against it when
    /// the twin's relays are ranked (fewest recent failures first), as the original's ranker.
    #[arg(short = 'p', long, env = "RMB_RANKER_PERIOD", default_value_t = 3600)]
    pub ranker_period: u64,
}

impl FederationArgs {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        require_positive(&[
            ("federation-queue-max", self.federation_queue_max),
            ("federation-max-skew", self.federation_max_skew),
            ("federation-batch", self.federation_batch as u64),
            (
                "federation-max-backoff-seconds",
                self.federation_max_backoff_seconds,
            ),
            ("federation-timeout-ms", self.federation_timeout_ms),
            (
                "federation-max-request-bytes",
                self.federation_max_request_bytes as u64,
            ),
            ("ranker-period", self.ranker_period),
            (
                "federation-max-batch-envelopes",
                self.federation_max_batch_envelopes as u64,
            ),
            (
                "federation-max-inflight",
                self.federation_max_inflight as u64,
            ),
            (
                "federation-body-timeout-ms",
                self.federation_body_timeout_ms,
            ),
        ])?;
        self.resolve_map()?;
        Ok(())
    }

    /// `--federation-resolve` as domain → `host:port`.
    pub fn resolve_map(&self) -> Result<HashMap<String, String>, ConfigError> {
        let mut map = HashMap::new();
        for entry in &self.federation_resolve {
            let parsed = entry.split_once('=').and_then(|(domain, addr)| {
                let (host, port) = addr.rsplit_once(':')?;
                (!domain.is_empty() && !host.is_empty() && port.parse::<u16>().is_ok())
                    .then(|| (domain.trim().to_ascii_lowercase(), addr.trim().to_string()))
            });
            let Some((domain, addr)) = parsed else {
                return Err(invalid(
                    "federation-resolve",
                    format!("{entry:?} is not DOMAIN=HOST:PORT"),
                ));
            };
            map.insert(domain, addr);
        }
        Ok(map)
    }

    /// The federation's settings for a relay serving `domains` (lowercase) under `limits`.
    pub(crate) fn settings(
        &self,
        domains: Vec<String>,
        limits: &LimitArgs,
    ) -> Result<Settings, ConfigError> {
        Ok(Settings {
            domains,
            client: ClientSettings {
                resolve: self.resolve_map()?,
                insecure_http: self
                    .federation_insecure_http
                    .iter()
                    .map(|d| d.trim().to_ascii_lowercase())
                    .collect(),
                ca_file: self.federation_ca_file.clone(),
                timeout: Duration::from_millis(self.federation_timeout_ms),
            },
            max_skew: self.federation_max_skew,
            key_cache_ttl: Duration::from_secs(self.federation_key_cache_seconds),
            batch_max: self.federation_batch,
            max_backoff: Duration::from_secs(self.federation_max_backoff_seconds),
            max_envelope_bytes: limits.max_envelope_bytes,
            max_ttl: limits.max_ttl,
            // A request must be able to carry the largest envelope, whatever the setting says.
            max_request_bytes: self
                .federation_max_request_bytes
                .max(limits.max_envelope_bytes + 16),
            max_batch_envelopes: self.federation_max_batch_envelopes,
            legacy: self.federation_legacy,
            queue_max: self.federation_queue_max,
            ranker_period: Duration::from_secs(self.ranker_period),
        })
    }
}
