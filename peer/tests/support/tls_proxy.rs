//! A tiny TLS-terminating proxy: `wss://127.0.0.1:port` in front of a plain `ws://` relay,
//! with a certificate from a throwaway CA (made by `openssl`, as the Redis TLS tests do).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use rmb_testkit::redis::TlsFiles;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A running proxy; stops on drop.
pub struct TlsProxy {
    /// `wss://127.0.0.1:port`.
    pub url: String,
    /// The CA certificate clients must trust.
    pub ca: std::path::PathBuf,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TlsProxy {
    /// Terminates TLS on a free loopback port and forwards every connection to `backend`.
    pub async fn start(backend: SocketAddr) -> TlsProxy {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::generate(dir.path());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsProxy {
            url: format!("wss://127.0.0.1:{}", addr.port()),
            ca: files.ca,
            task,
            _dir: dir,
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
