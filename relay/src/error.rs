//! Why the relay could not start: one error type for the whole composition root, kept apart
//! so the parts that open resources (directory, backplane, federation) report through it
//! without importing the crate root.

use std::net::SocketAddr;

use crate::config::ConfigError;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The twins file is missing or invalid.
    #[error(transparent)]
    Twins(#[from] rmb_identity::TwinsFileError),
    /// The backplane cannot be set up (bad Redis URL).
    #[error(transparent)]
    Backplane(crate::backplane::BackplaneError),
    /// Federation cannot be set up (its store or its metrics).
    #[error(transparent)]
    Federation(rmb_federation::FederationError),
    /// A metric definition is wrong (a bug, reported rather than a panic).
    #[error(transparent)]
    Metrics(#[from] rmb_common::metrics::MetricError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl StartError {
    /// A setting that was well formed but could not be used (named as on the command line).
    pub(crate) fn setting(setting: &'static str, reason: impl Into<String>) -> StartError {
        StartError::Config(ConfigError::Invalid {
            setting,
            reason: reason.into(),
        })
    }
}
