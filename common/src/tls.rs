//! TLS client trust: which root certificates a connection believes, and the rustls client
//! configuration (the `ring` provider: no C toolchain needed).
//!
//! The peer trusts Mozilla's roots bundled in the binary (a scratch container without a CA
//! store still reaches public relays) and the system store; federation links trust the
//! system store only. Both add CA files given for private deployments.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why trust could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
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

/// Where trusted roots come from, besides the CA files given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchors {
    /// The system's certificate store (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
    System,
    /// Mozilla's roots bundled in the binary, and the system's store.
    BundledAndSystem,
}

/// The trusted roots: `anchors` and every certificate in `ca_files` (PEM). A CA file that
/// cannot be read or holds no certificate is an error; an unusable system certificate is
/// skipped.
pub fn root_store(anchors: Anchors, ca_files: &[PathBuf]) -> Result<RootCertStore, TlsError> {
    let mut roots = match anchors {
        Anchors::System => RootCertStore::empty(),
        Anchors::BundledAndSystem => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipping part of the system certificate store");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates");
    for path in ca_files {
        add_ca_file(&mut roots, path)?;
    }
    Ok(roots)
}

/// Adds every certificate of the PEM file at `path` to `roots`; returns how many.
pub fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<usize, TlsError> {
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
    let count = certs.len();
    for cert in certs {
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    Ok(count)
}

/// A client configuration trusting `roots`: the `ring` provider, its safe default protocol
/// versions, no client certificate.
pub fn client_config(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_CA: &str = include_str!("testdata/test-ca.pem");

    #[test]
    fn bundled_anchors_hold_the_mozilla_roots() -> Result<(), TlsError> {
        let bundled = root_store(Anchors::BundledAndSystem, &[])?;
        assert!(bundled.len() >= webpki_roots::TLS_SERVER_ROOTS.len());
        let system = root_store(Anchors::System, &[])?;
        assert!(bundled.len() >= system.len());
        Ok(())
    }

    #[test]
    fn a_ca_file_adds_its_certificates() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, TEST_CA)?;
        let mut roots = RootCertStore::empty();
        assert_eq!(add_ca_file(&mut roots, &path)?, 1);
        assert_eq!(roots.len(), 1);
        let system = root_store(Anchors::System, &[])?.len();
        assert_eq!(root_store(Anchors::System, &[path])?.len(), system + 1);
        client_config(roots)?;
        Ok(())
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() -> Result<(), std::io::Error> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("nope.pem");
        let err = root_store(Anchors::System, &[missing]).err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("nope.pem"), "{text}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n")?;
        let err = root_store(Anchors::System, &[empty]).err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("no PEM certificate"), "{text}");
        Ok(())
    }
}
