//! Logs and traces.

use super::{invalid, ConfigError, LogFormat};

/// Logs and traces settings.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[command(next_help_heading = "Logs and traces")]
pub struct TelemetryArgs {
    /// OTLP/HTTP collector to export traces to (a span per session and per routed envelope), for example
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
}

impl TelemetryArgs {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.otlp_endpoint {
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return Err(invalid(
                    "otlp-endpoint",
                    "expected an http:// or https:// URL",
                ));
            }
        }
        Ok(())
    }
}

/// The log filter for `-d` (debug) or `-dd` (trace): the relay's own crates only, so the
/// libraries (Redis client, HTTP, websockets) never log commands, URLs or tokens.
pub(super) fn debug_filter(count: u8) -> String {
    let level = if count == 1 { "debug" } else { "trace" };
    format!("info,rmb_relay={level},rmb_federation={level},rmb_identity={level}")
}
