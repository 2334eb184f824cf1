//! Relay settings: command-line flags, each also an `RMB_*` environment variable, and an
//! optional TOML file (`--config`). Precedence: flag, then environment, then file, then the
//! built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::limits::Rate;

/// The twin directory when neither --twins nor --substrate is given: tfchain mainnet, as the
/// original relay.
pub const MAINNET_SUBSTRATE: &str = "wss://tfchain.grid.tf:443";

/// Listen address default: every IPv6 and IPv4 address, as the original relay.
pub const DEFAULT_LISTEN: &str = "[::]:8080";

/// Largest envelope the relay accepts at all: the original relay's websocket message limit
/// (tungstenite's default message size).
pub const MAX_ENVELOPE_CAP: usize = 64 << 20;

/// Default of --max-envelope-bytes: tungstenite's default frame limit, which the original relay
/// and the original rmb-peer both enforce. Clients send one envelope per frame, so nothing
/// larger ever crossed the original network, and an original peer drops its connection on a
/// larger frame: delivering one would break the session on every redelivery until it expired.
pub const DEFAULT_MAX_ENVELOPE: usize = 16 << 20;

/// Why the settings are unusable. Always names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A value is out of range or inconsistent.
    #[error("setting `{setting}`: {reason}")]
    Invalid {
        /// The setting, as named on the command line.
        setting: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The command line or environment is wrong (clap's message names the flag).
    #[error("{0}")]
    Cli(#[from] clap::Error),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (production).
    Json,
}

/// The RMB relay: routes end-to-end encrypted envelopes between twins.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "rmb-relay", version, about, args_override_self = true)]
pub struct Config {
    /// TOML file with settings (keys are the long flag names, `-` or `_`).
    #[arg(long, env = "RMB_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Validate the settings, print them as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,

    /// Address to listen on for websocket sessions, federation, metrics and probes. The
    /// default `[::]:8080` takes IPv6 and IPv4 (dual-stack; IPv4 only where the host has no
    /// IPv6); `:PORT` alone means the same on PORT.
    #[arg(short = 'l', long, env = "RMB_LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// The relay domains this relay serves: several after one flag (`--domain a b`), repeated,
    /// or comma/space separated. Twins whose on-chain relays include one of these are ours.
    /// With none, every known twin is served (private deployments) and federation is off.
    #[arg(short = 'm', long = "domain", env = "RMB_DOMAIN", num_args = 1.., value_delimiter = ',')]
    pub domains: Vec<String>,

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

    /// Safety cap on a pod's inbox stream (entries).
    #[arg(long, env = "RMB_INBOX_MAX", default_value_t = 1_000_000)]
    pub inbox_max: u64,

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

    /// Seconds to drain on SIGTERM: sessions are closed (1012) paced over this window.
    #[arg(long, env = "RMB_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,

    /// Largest envelope (and websocket frame) accepted, in bytes; a larger frame closes the
    /// session with 1009. The default is the original relay's and peer's websocket frame limit.
    #[arg(long, env = "RMB_MAX_ENVELOPE_BYTES", default_value_t = DEFAULT_MAX_ENVELOPE)]
    pub max_envelope_bytes: usize,

    /// Longest time to live an envelope may ask for, in seconds.
    #[arg(long, env = "RMB_MAX_TTL", default_value_t = 86_400)]
    pub max_ttl: u64,

    /// Longest session token lifetime accepted (`exp - iat`), in seconds. The default is the
    /// longest a known client issues (TypeScript client 1000 s, Go SDK 60 s, rmb-peer 60-300 s):
    /// a stolen token is useful for that long at most.
    #[arg(long, env = "RMB_MAX_TOKEN_LIFETIME", default_value_t = rmb_identity::jwt::DEFAULT_MAX_LIFETIME)]
    pub max_token_lifetime: u64,

    /// Clock difference tolerated on token times, in seconds.
    #[arg(long, env = "RMB_CLOCK_SKEW", default_value_t = 60)]
    pub clock_skew: u64,

    /// Envelopes per second one twin may send to this pod (token bucket; burst is twice this).
    #[arg(long, env = "RMB_RATE_MESSAGES", default_value_t = 10_000)]
    pub rate_messages: u64,

    /// Bytes per second one twin may send to this pod (token bucket; burst is twice this).
    #[arg(long, env = "RMB_RATE_BYTES", default_value_t = 64 << 20)]
    pub rate_bytes: u64,

    /// The original relay's rate limit: each twin may send COUNT envelopes and SIZE bytes per
    /// minute (an envelope over SIZE never passes). Replaces --rate-messages and --rate-bytes.
    #[arg(long, num_args = 2, value_names = ["COUNT", "SIZE"], env = "RMB_LIMIT", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limit: Vec<u64>,

    /// Most websocket connections this pod holds; more get HTTP 503.
    #[arg(long, env = "RMB_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Most simultaneous sessions (distinct session ids) per twin on this pod; more get
    /// HTTP 429.
    #[arg(long, env = "RMB_MAX_SESSIONS_PER_TWIN", default_value_t = 1024)]
    pub max_sessions_per_twin: usize,

    /// Most envelopes queued for one twin (mailbox); more are refused with an error.
    #[arg(long, env = "RMB_MAILBOX_MAX", default_value_t = 10_000)]
    pub mailbox_max: usize,

    /// Most envelopes waiting for a connected session; beyond it the session is a slow
    /// consumer and is closed (4008), its envelopes kept in the mailbox.
    #[arg(long, env = "RMB_OUTBOUND_QUEUE", default_value_t = 4096)]
    pub outbound_queue: usize,

    /// Most envelopes written to a session and not yet confirmed by its Pong.
    #[arg(long, env = "RMB_MAX_UNCONFIRMED", default_value_t = 1024)]
    pub max_unconfirmed: usize,

    /// Bytes read from a session's socket per read call; also the buffer every session holds
    /// while idle. Smaller saves memory per idle session, larger saves syscalls under load.
    #[arg(long, env = "RMB_WS_READ_BUFFER", default_value_t = 4096)]
    pub ws_read_buffer: usize,

    /// Seconds between websocket pings to an idle session.
    #[arg(long, env = "RMB_PING_INTERVAL", default_value_t = 20)]
    pub ping_interval: u64,

    /// Seconds of silence (no frame, no pong) after which a session is closed.
    #[arg(long, env = "RMB_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,

    /// Seconds a client has to send its HTTP request headers.
    #[arg(long, env = "RMB_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub handshake_timeout: u64,

    /// Websocket handshakes per second one client address may start (token bucket, burst
    /// twice this; IPv6 counted per /64); more get HTTP 429. 0 (the default) turns it off:
    /// behind a load balancer every client shares the balancer's address.
    #[arg(long, env = "RMB_HANDSHAKE_RATE_PER_IP", default_value_t = 0)]
    pub handshake_rate_per_ip: u64,

    /// OTLP/HTTP collector to export traces to (one span per routed envelope), for example
    /// `http://otel-collector:4318`. Off when unset.
    #[arg(long, env = "RMB_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Log format.
    #[arg(long, env = "RMB_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing syntax, for example `info,rmb_relay=debug`).
    #[arg(long, env = "RMB_LOG", default_value = "info")]
    pub log: String,

    /// More logging, as the original relay: `-d` debug, `-dd` trace (for the relay; the
    /// libraries stay at info, so Redis commands and tokens never reach the log). An explicit
    /// --log wins.
    #[arg(short = 'd', long = "debug", action = clap::ArgAction::Count)]
    #[serde(skip)]
    pub debug: u8,

    // --- the original relay's flags without a setting of the same name here ---
    /// Original relay: switch workers (Redis readers). Here only `--workers` ×
    /// `--user-per-worker` matters: it becomes --max-connections (unless that is given).
    #[arg(short = 'w', long, env = "RMB_WORKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,

    /// Original relay: sessions per switch worker. See --workers.
    #[arg(short = 'u', long, env = "RMB_USER_PER_WORKER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_per_worker: Option<u32>,

    /// Seconds over which a remote relay's failed federation requests count against it when
    /// the twin's relays are ranked (fewest recent failures first), as the original's ranker.
    #[arg(short = 'p', long, env = "RMB_RANKER_PERIOD", default_value_t = 3600)]
    pub ranker_period: u64,

    /// Original relay: blocks of chain events to replay after a lost tfchain connection before
    /// dropping the twin cache instead. Accepted; this relay always drops the cache then.
    #[arg(long, env = "RMB_CATCHUP_THRESHOLD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catchup_threshold: Option<u64>,

    /// What the original relay's flags were turned into, logged once at start-up.
    #[arg(skip)]
    #[serde(skip)]
    pub notes: Vec<String>,

    // --- federation (relay-to-relay, docs/federation.md) ---
    /// Federate with other relays: twins served by other relays are reached through them
    /// (signed batches, or the original relay's `POST /`), and their envelopes are accepted
    /// here. On whenever --domain is given.
    #[arg(long, env = "RMB_FEDERATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub federation: bool,

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

impl Config {
    /// Parses the process arguments and environment, with the config file as defaults.
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(std::env::args_os().collect())
    }

    /// Parses `args` (first is the program name).
    pub fn load_from(args: Vec<std::ffi::OsString>) -> Result<Config, ConfigError> {
        let mut cmd = Config::command();
        if let Some(path) = config_path(&args) {
            cmd = apply_file_defaults(cmd, &path)?;
        }
        let matches: ArgMatches = cmd.try_get_matches_from(args)?;
        let mut config = Config::from_arg_matches(&matches)?;
        config.apply_original_flags(&matches)?;
        config.validate()?;
        Ok(config)
    }

    /// Turns the original relay's flags and defaults into this relay's settings, and records
    /// what was done in `notes` (logged once at start-up).
    fn apply_original_flags(&mut self, matches: &ArgMatches) -> Result<(), ConfigError> {
        self.domains = split_values(&self.domains);
        self.substrate = split_values(&self.substrate);
        if self.twins.is_none() && self.substrate.is_empty() {
            self.substrate = vec![MAINNET_SUBSTRATE.to_string()];
            self.notes.push(format!(
                "no --twins or --substrate: the twin directory is tfchain mainnet ({MAINNET_SUBSTRATE})"
            ));
        }
        if self.debug > 0 && !given(matches, "log") {
            self.log = debug_filter(self.debug);
        }
        if self.workers.is_some() || self.user_per_worker.is_some() {
            let workers = self.workers.unwrap_or(500);
            let per_worker = self.user_per_worker.unwrap_or(1000);
            if workers == 0 || per_worker == 0 {
                let setting = if workers == 0 {
                    "workers"
                } else {
                    "user-per-worker"
                };
                return Err(invalid(setting, "must be greater than 0"));
            }
            if given(matches, "max_connections") {
                self.notes.push(format!(
                    "--workers/--user-per-worker ignored: --max-connections {} is given",
                    self.max_connections
                ));
            } else {
                self.max_connections = workers as usize * per_worker as usize;
                self.notes.push(format!(
                    "--workers {workers} x --user-per-worker {per_worker}: at most {} connections (--max-connections); this relay has no switch workers, sessions run on the async runtime",
                    self.max_connections
                ));
            }
        }
        if let Some(blocks) = self.catchup_threshold {
            self.notes.push(format!(
                "--catchup-threshold {blocks} has no effect: after a lost tfchain connection this relay drops its twin cache and looks twins up again"
            ));
        }
        if let [count, size] = self.limit[..] {
            self.notes.push(format!(
                "--limit {count} {size}: each twin may send {count} envelopes and {size} bytes per minute (replaces --rate-messages/--rate-bytes)"
            ));
        }
        Ok(())
    }

    /// The per-twin message and byte rates in force: `--limit` (per minute, the whole
    /// minute's allowance usable at once) or `--rate-messages` / `--rate-bytes` (per second,
    /// burst twice that).
    pub fn twin_rates(&self) -> (Rate, Rate) {
        match self.limit[..] {
            [count, size] => (Rate::per_minute(count), Rate::per_minute(size)),
            _ => (
                Rate::per_second(self.rate_messages),
                Rate::per_second(self.rate_bytes),
            ),
        }
    }

    /// Exactly one twin directory, with usable endpoints.
    fn validate_directory(&self) -> Result<(), ConfigError> {
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
                if self.substrate_timeout_ms == 0 {
                    return Err(invalid("substrate-timeout-ms", "must be greater than 0"));
                }
                Ok(())
            }
            (Some(_), true) => Ok(()),
        }
    }

    /// Checks values clap cannot: ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 19] = [
            ("ws-read-buffer", self.ws_read_buffer as u64),
            ("mailbox-max", self.mailbox_max as u64),
            ("handshake-timeout", self.handshake_timeout),
            ("redis-lease-seconds", self.redis_lease_seconds),
            ("redis-timeout-ms", self.redis_timeout_ms),
            ("inbox-max", self.inbox_max),
            ("max-envelope-bytes", self.max_envelope_bytes as u64),
            ("max-ttl", self.max_ttl),
            ("rate-messages", self.rate_messages),
            ("rate-bytes", self.rate_bytes),
            ("max-connections", self.max_connections as u64),
            ("max-sessions-per-twin", self.max_sessions_per_twin as u64),
            ("outbound-queue", self.outbound_queue as u64),
            ("max-unconfirmed", self.max_unconfirmed as u64),
            ("ping-interval", self.ping_interval),
            ("twins-poll-ms", self.twins_poll_ms),
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
        ];
        for (setting, value) in positive {
            if value == 0 {
                return Err(invalid(setting, "must be greater than 0"));
            }
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(invalid(
                "idle-timeout",
                format!(
                    "must be longer than ping-interval ({}s), or every session would time out",
                    self.ping_interval
                ),
            ));
        }
        if self.max_envelope_bytes > MAX_ENVELOPE_CAP {
            return Err(invalid("max-envelope-bytes", "must be at most 64 MiB"));
        }
        match self.limit[..] {
            [] => {}
            [count, size] if count > 0 && size > 0 => {}
            [_, _] => return Err(invalid("limit", "COUNT and SIZE must be greater than 0")),
            _ => return Err(invalid("limit", "give --limit once, as COUNT SIZE")),
        }
        if self.ranker_period == 0 {
            return Err(invalid("ranker-period", "must be greater than 0"));
        }
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
        if let Some(endpoint) = &self.otlp_endpoint {
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return Err(invalid(
                    "otlp-endpoint",
                    "expected an http:// or https:// URL",
                ));
            }
        }
        self.validate_directory()?;
        for d in &self.domains {
            if d.is_empty() || d.contains(['/', ':', '_', ' ']) {
                return Err(invalid("domain", format!("{d:?} is not a bare host name")));
            }
        }
        self.validate_federation()?;
        Ok(())
    }

    /// The effective settings as TOML (for `--check-config`), with the Redis password
    /// masked: the output ends up in terminals and CI logs.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.redis = shown.redis.as_deref().map(redact_url);
        let notes: String = self.notes.iter().map(|n| format!("# {n}\n")).collect();
        let body = toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"));
        format!("{notes}{body}")
    }

    /// Federation settings: consistent, and every `--federation-resolve` well formed.
    fn validate_federation(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 6] = [
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
        ];
        for (setting, value) in positive {
            if value == 0 {
                return Err(invalid(setting, "must be greater than 0"));
            }
        }
        if self.identity_key.is_some() && self.domains.is_empty() {
            return Err(invalid(
                "identity-key",
                "federation needs this relay's domain: give --domain",
            ));
        }
        self.federation_resolve_map()?;
        Ok(())
    }

    /// `--federation-resolve` as domain → `host:port`.
    pub fn federation_resolve_map(
        &self,
    ) -> Result<std::collections::HashMap<String, String>, ConfigError> {
        let mut map = std::collections::HashMap::new();
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

    /// Ping interval as a duration.
    pub fn ping_every(&self) -> Duration {
        Duration::from_secs(self.ping_interval)
    }

    /// Idle timeout as a duration.
    pub fn idle_after(&self) -> Duration {
        Duration::from_secs(self.idle_timeout)
    }
}

/// Whether `id` was set on the command line or in the environment (file values are defaults).
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// The log filter for `-d` (debug) or `-dd` (trace): the relay's own crates only, so the
/// libraries (Redis client, HTTP, websockets) never log commands, URLs or tokens.
fn debug_filter(count: u8) -> String {
    let level = if count == 1 { "debug" } else { "trace" };
    format!("info,rmb_relay={level},rmb_federation={level},rmb_identity={level}")
}

/// Values given as `a,b c` or as separate values, split and without empties.
fn split_values(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split([',', ' ', '\t', '\n']))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// A listen address: `HOST:PORT`, `[V6]:PORT`, or `:PORT` for every address (dual-stack).
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?}: {port:?} is not a port"))?;
        return Ok(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?} is not HOST:PORT: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let masked = if userinfo.contains(':') { ":***" } else { "" };
    format!("{scheme}://{user}{masked}@{host}")
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// Finds `--config PATH`, `--config=PATH` or `RMB_CONFIG` before clap runs.
fn config_path(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("RMB_CONFIG").map(PathBuf::from)
}

/// Installs the file's values as the defaults of the matching flags, so flags and the
/// environment still override them.
fn apply_file_defaults(
    mut cmd: clap::Command,
    path: &std::path::Path,
) -> Result<clap::Command, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| file_error(format!("cannot read: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_error(e.to_string()))?;
    for (key, value) in table {
        let long = key.replace('_', "-");
        let long = if long == "domains" {
            "domain".to_string()
        } else {
            long
        };
        let Some(id) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .map(|a| a.get_id().clone())
        else {
            return Err(file_error(format!("unknown setting `{key}`")));
        };
        if matches!(long.as_str(), "config" | "check-config" | "debug") {
            return Err(file_error(format!(
                "`{key}` cannot be set in the config file{}",
                if long == "debug" { " (set `log`)" } else { "" }
            )));
        }
        let values = toml_values(&value)
            .ok_or_else(|| file_error(format!("setting `{key}`: unsupported value {value}")))?;
        cmd = cmd.mut_arg(id, |a| a.default_values(values));
    }
    Ok(cmd)
}

fn toml_values(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| toml_values(v).and_then(|mut v| v.pop()))
            .collect(),
        _ => None,
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
