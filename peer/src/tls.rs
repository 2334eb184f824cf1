//! TLS for `wss://` relays: rustls with the `ring` provider (no C toolchain needed).
//!
//! Trusted roots are the bundled Mozilla roots (so a scratch container without a CA store
//! still reaches public relays), plus the system store when one is present (`SSL_CERT_FILE`
//! and `SSL_CERT_DIR` are honoured), plus any CA files given explicitly for private relays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A CA file could not be read or holds no usable certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file given.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

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
        static DEFAULT: OnceLock<Result<TlsSettings, String>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| TlsSettings::build(&[]).map_err(|e| e.to_string()))
            .clone()
            .map_err(TlsError::Config)
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
        let mut roots = bundled_roots();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "skipping part of the system certificate store");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system root certificates");
        for path in ca_files {
            add_ca_file(&mut roots, path)?;
        }
        Ok(TlsSettings {
            config: Arc::new(client_config(roots)?),
        })
    }

    /// The rustls configuration, for the websocket connector.
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

fn bundled_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn client_config(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    let fail = |reason: String| TlsError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".to_string()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
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
