//! Remote domains come from twin records and request headers anyone can write: the outbound
//! client keeps at most `MAX_KEPT_CONNECTIONS` connections however many domains it is sent to,
//! and a domain whose connection was dropped is reached again on demand.
#![allow(clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rmb_federation::client::{ClientSettings, HttpClient, MAX_KEPT_CONNECTIONS};

/// A plain-HTTP server (HTTP/1.1 and HTTP/2 prior knowledge) answering 200 to everything;
/// returns its address and the number of connections open to it now.
async fn answering_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let addr = listener.local_addr().expect("local address").to_string();
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let open = counter.clone();
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_many_attacker_named_domains_stay_within_the_cap() {
    let (addr, open) = answering_server().await;
    let extra = 76;
    let domains: Vec<String> = (0..MAX_KEPT_CONNECTIONS + extra)
        .map(|i| format!("made-up-{i}.example"))
        .collect();
    let settings = ClientSettings {
        resolve: domains
            .iter()
            .map(|d| (d.clone(), addr.clone()))
            .collect::<HashMap<_, _>>(),
        insecure_http: domains.iter().cloned().collect::<HashSet<_>>(),
        ca_file: None,
        timeout: Duration::from_secs(10),
    };
    let client = HttpClient::new(settings).expect("client");
    for domain in &domains {
        let answer = client
            .request(domain, Method::GET, "/", &[], Bytes::new())
            .await
            .expect("the local server answers");
        assert_eq!(answer.status, StatusCode::OK);
        assert!(client.kept_connections() <= MAX_KEPT_CONNECTIONS);
    }
    assert_eq!(client.kept_connections(), MAX_KEPT_CONNECTIONS);

    // Dropped connections are closed, not only forgotten: the server sees them go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open.load(Ordering::SeqCst) > MAX_KEPT_CONNECTIONS
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open.load(Ordering::SeqCst), MAX_KEPT_CONNECTIONS);

    // The first domain's connection went first (least recently used); it is reached again.
    let answer = client
        .request(&domains[0], Method::GET, "/", &[], Bytes::new())
        .await
        .expect("a dropped domain is reconnected");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(client.kept_connections(), MAX_KEPT_CONNECTIONS);
}
