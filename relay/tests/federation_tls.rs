//! Federation over HTTPS: relay b sits behind a TLS terminator (as behind an ingress) with a
//! certificate from a private CA that relay a trusts through `--federation-ca-file`; envelopes
//! flow over HTTP/2 when the terminator offers it by ALPN, over HTTP/1.1 keep-alive when it
//! does not, and not at all when the CA is not trusted.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod federation_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use federation_common::{metrics, series, wait_series, A};
use rmb_federation::RelayKey;
use rmb_identity::KeyType;
use rmb_testkit::client::{Received, WsClient};
use rmb_testkit::redis::TlsFiles;
use rmb_testkit::relay::{free_addr, test_config, TestRelay};
use rmb_testkit::twins::{write_twins_file, TestTwin};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The test certificate is for `localhost`, so that is relay b's domain here.
const B_TLS: &str = "localhost";

/// Terminates TLS on `listen` and pipes every connection to `backend`; offers `alpn`.
fn terminate_tls(
    files: &TlsFiles,
    listen: std::net::TcpListener,
    backend: SocketAddr,
    alpn: &[&[u8]],
) -> tokio::task::JoinHandle<()> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .expect("certificate file")
        .collect::<Result<_, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_file(&files.key).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    listen.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listen).expect("listener");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    })
}

/// Relay a (plain HTTP, trusted CA optional) and relay b behind the TLS terminator; alice on
/// a sends to bob on b. Returns whether bob got it and relay a's metrics.
async fn send_over_tls(alpn: &[&[u8]], trust_ca: bool) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::generate(dir.path());
    let alice = TestTwin::new(20, KeyType::Ed25519).on_relays(&[A]);
    let bob = TestTwin::new(21, KeyType::Ed25519).on_relays(&[B_TLS]);
    let file = write_twins_file(dir.path(), &[alice.clone(), bob.clone()]);
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let tls_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let tls_addr = tls_listener.local_addr().expect("addr");
    let proxy = terminate_tls(&tls, tls_listener, addr_b, alpn);

    let now = rmb_proto::unix_now();
    let mut relays = Vec::new();
    for (domain, addr) in [(A, addr_a), (B_TLS, addr_b)] {
        let key_path = dir.path().join(format!("{domain}.key"));
        RelayKey::generate(now).save(&key_path).expect("key");
        let resolve = format!("{A}={addr_a},{B_TLS}={tls_addr}");
        let (listen, key_arg) = (addr.to_string(), key_path.display().to_string());
        let ca = tls.ca.display().to_string();
        let mut args = vec![
            "--listen",
            &listen,
            "--domain",
            domain,
            "--identity-key",
            &key_arg,
            "--federation-resolve",
            &resolve,
            "--federation-insecure-http",
            A,
            "--federation-timeout-ms",
            "3000",
        ];
        if trust_ca {
            args.extend(["--federation-ca-file", ca.as_str()]);
        }
        relays.push(TestRelay::start_with(test_config(&file, &args)).await);
    }
    let mut a_session = WsClient::connect(&format!("ws://{addr_a}"), &alice, None).await;
    let mut b_session = WsClient::connect(&format!("ws://{addr_b}"), &bob, None).await;
    let req = a_session.request("over-tls", b_session.address(), "x", b"hello");
    a_session.send(&req).await;
    let delivered = matches!(
        b_session.next(Duration::from_secs(if trust_ca { 20 } else { 3 })).await,
        Some(Received::Envelope(env)) if env.uid == "over-tls"
    );
    if delivered {
        wait_series(
            addr_a,
            "rmb_federation_sent_total",
            &[("domain", B_TLS)],
            1.0,
        )
        .await;
    }
    let text = metrics(addr_a).await;
    proxy.abort();
    drop(relays);
    (delivered, text)
}

#[tokio::test]
async fn federation_goes_over_https_with_http2() {
    let (delivered, _) = send_over_tls(&[b"h2", b"http/1.1"], true).await;
    assert!(delivered, "not delivered over HTTPS with HTTP/2");
}

#[tokio::test]
async fn federation_falls_back_to_http1_over_https() {
    let (delivered, _) = send_over_tls(&[b"http/1.1"], true).await;
    assert!(delivered, "not delivered over HTTPS with HTTP/1.1");
}

#[tokio::test]
async fn an_untrusted_certificate_stops_federation() {
    let (delivered, text) = send_over_tls(&[b"h2"], false).await;
    assert!(!delivered);
    assert!(
        series(
            &text,
            "rmb_federation_failed_total",
            &[("domain", "other"), ("reason", "connect")]
        ) >= 1.0
            || series(
                &text,
                "rmb_federation_queue_envelopes",
                &[("domain", "other")]
            ) >= 1.0,
        "{text}"
    );
}
