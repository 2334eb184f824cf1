//! Relay settings: command-line flags, each also an `RMB_*` environment variable, and an
//! optional TOML file (`--config`). Precedence: flag, then environment, then file, then the
//! built-in default.
//!
//! The flags come in groups (`#[command(flatten)]`), one per part of the relay: listen,
//! directory, backplane, limits, federation, telemetry. Each group checks its own values and
//! turns them into the settings its part takes; [`Config::validate`] adds the checks across
//! groups. Flag, environment and file names are the same as before the grouping.

mod backplane;
mod directory;
mod federation;
mod file;
mod limits;
mod listen;
mod telemetry;

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

pub use backplane::BackplaneArgs;
pub use directory::{is_trusted_chain_url, DirectoryArgs};
pub use federation::FederationArgs;
pub use limits::LimitArgs;
pub use listen::{DeliveryConfirmation, ListenArgs, ListenError};
pub use telemetry::TelemetryArgs;

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

    /// The relay domains this relay serves: several after one flag (`--domain a b`), repeated,
    /// or comma/space separated. Twins whose on-chain relays include one of these are ours.
    /// With none, every known twin is served (private deployments) and federation is off.
    #[arg(short = 'm', long = "domain", env = "RMB_DOMAIN", num_args = 1.., value_delimiter = ',')]
    pub domains: Vec<String>,

    /// Where the relay listens; how sessions live on their connection.
    #[command(flatten)]
    #[serde(flatten)]
    pub listen: ListenArgs,

    /// The twin directory.
    #[command(flatten)]
    #[serde(flatten)]
    pub directory: DirectoryArgs,

    /// Memory or Redis.
    #[command(flatten)]
    #[serde(flatten)]
    pub backplane: BackplaneArgs,

    /// Per twin, per session and per envelope limits.
    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitArgs,

    /// Relay-to-relay federation.
    #[command(flatten)]
    #[serde(flatten)]
    pub federation: FederationArgs,

    /// Logs and traces.
    #[command(flatten)]
    #[serde(flatten)]
    pub telemetry: TelemetryArgs,

    /// What the original relay's flags were turned into, logged once at start-up.
    #[arg(skip)]
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl Config {
    /// Parses the process arguments and environment, with the config file as defaults.
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(std::env::args_os().collect())
    }

    /// Parses `args` (first is the program name).
    pub fn load_from(args: Vec<std::ffi::OsString>) -> Result<Config, ConfigError> {
        let mut cmd = Config::command();
        if let Some(path) = file::config_path(&args) {
            cmd = file::apply_file_defaults(cmd, &path)?;
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
        let directory = &mut self.directory;
        directory.substrate = split_values(&directory.substrate);
        if directory.twins.is_none() && directory.substrate.is_empty() {
            directory.substrate = vec![MAINNET_SUBSTRATE.to_string()];
            self.notes.push(format!(
                "no --twins or --substrate: the twin directory is tfchain mainnet ({MAINNET_SUBSTRATE})"
            ));
        }
        let telemetry = &mut self.telemetry;
        if telemetry.debug > 0 && !given(matches, "log") {
            telemetry.log = telemetry::debug_filter(telemetry.debug);
        }
        let listen = &mut self.listen;
        if listen.workers.is_some() || listen.user_per_worker.is_some() {
            let workers = listen.workers.unwrap_or(500);
            let per_worker = listen.user_per_worker.unwrap_or(1000);
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
                    listen.max_connections
                ));
            } else {
                listen.max_connections = workers as usize * per_worker as usize;
                self.notes.push(format!(
                    "--workers {workers} x --user-per-worker {per_worker}: at most {} connections (--max-connections); this relay has no switch workers, sessions run on the async runtime",
                    listen.max_connections
                ));
            }
        }
        if let Some(blocks) = self.directory.catchup_threshold {
            self.notes.push(format!(
                "--catchup-threshold {blocks} has no effect: after a lost tfchain connection this relay drops its twin cache and looks twins up again"
            ));
        }
        if let [count, size] = self.limits.limit[..] {
            self.notes.push(format!(
                "--limit {count} {size}: each twin may send {count} envelopes and {size} bytes per minute (replaces --rate-messages/--rate-bytes)"
            ));
        }
        Ok(())
    }

    /// Checks values clap cannot: ranges and consistency, group by group, then across groups.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen.validate()?;
        self.directory.validate()?;
        self.backplane.validate()?;
        self.limits.validate()?;
        self.federation.validate()?;
        self.telemetry.validate()?;
        for d in &self.domains {
            if d.is_empty() || d.contains(['/', ':', '_', ' ']) {
                return Err(invalid("domain", format!("{d:?} is not a bare host name")));
            }
        }
        if self.federation.identity_key.is_some() && self.domains.is_empty() {
            return Err(invalid(
                "identity-key",
                "federation needs this relay's domain: give --domain",
            ));
        }
        Ok(())
    }

    /// This relay's domains, lowercase (the form routing and federation compare).
    pub fn served_domains(&self) -> Vec<String> {
        self.domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect()
    }

    /// The effective settings as TOML (for `--check-config`), with the Redis password
    /// masked: the output ends up in terminals and CI logs.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.backplane.redis = shown.backplane.redis.as_deref().map(redact_url);
        let notes: String = self.notes.iter().map(|n| format!("# {n}\n")).collect();
        let body = toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"));
        format!("{notes}{body}")
    }
}

/// Whether `id` was set on the command line or in the environment (file values are defaults).
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
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

pub use rmb_common::redact_url;

pub(super) fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// Refuses the first of `values` that is 0, by its setting name.
pub(super) fn require_positive(values: &[(&'static str, u64)]) -> Result<(), ConfigError> {
    match values.iter().find(|(_, value)| *value == 0) {
        Some((setting, _)) => Err(invalid(setting, "must be greater than 0")),
        None => Ok(()),
    }
}
