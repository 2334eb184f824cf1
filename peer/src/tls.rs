//! TLS for `wss://` relays: rustls with the `ring` provider (no C toolchain needed).
//!
//! Trusted roots are the bundled Mozilla roots (so a scratch container without a CA store
//! still reaches public relays), plus the system store when one is present (`SSL_CERT_FILE`
//! and `SSL_CERT_DIR` are honoured), plus any CA files given explicitly for private relays.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rmb_common::tls::{client_config, root_store, Anchors};
use rustls::ClientConfig;

/// Why TLS settings could not be built.
pub use rmb_common::tls::TlsError;

/// The TLS client configuration used for `wss://` relays. Cheap to clone.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings").finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Bundled and system roots, shared by every connection of the process (the system
    /// store is read once).
    pub fn system() -> Result<TlsSettings, TlsError> {
        static DEFAULT: OnceLock<Result<TlsSettings, TlsError>> = OnceLock::new();
        DEFAULT.get_or_init(|| TlsSettings::build(&[])).clone()
    }

    /// Bundled and system roots plus the CA certificates in `ca_files` (PEM), for relays
    /// behind a private CA.
    pub fn with_ca_files(ca_files: &[PathBuf]) -> Result<TlsSettings, TlsError> {
        if ca_files.is_empty() {
            return TlsSettings::system();
        }
        TlsSettings::build(ca_files)
    }

    fn build(ca_files: &[PathBuf]) -> Result<TlsSettings, TlsError> {
        let roots = root_store(Anchors::BundledAndSystem, ca_files)?;
        Ok(TlsSettings {
            config: Arc::new(client_config(roots)?),
        })
    }

    /// The rustls configuration, for the websocket connector.
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = TlsSettings::with_ca_files(&[missing]).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsSettings::with_ca_files(&[empty]).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}
