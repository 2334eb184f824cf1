//! With `--otlp-endpoint`, the relay binary exports its spans over OTLP/HTTP to a collector:
//! one per routed envelope (twin ids and outcome, never payloads or uids) inside one per
//! session, with the log events of those spans.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmb_proto::Address;
use rmb_testkit::client::WsClient;
use rmb_testkit::relay::RelayProcess;
use rmb_testkit::twins::{twins, write_twins_file};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A minimal OTLP/HTTP receiver: records every request body posted to /v1/traces.
async fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = bodies.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    let mut length = 0usize;
                    let mut path = String::new();
                    // Request line and headers.
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if path.is_empty() {
                            path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if path == "/v1/traces" {
                        store.lock().unwrap().push(body);
                    }
                    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if reader.get_mut().write_all(resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), bodies)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_envelopes_are_exported_as_spans_without_payloads() {
    let (endpoint, bodies) = collector().await;
    let ts = twins(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let relay = RelayProcess::spawn(
        env!("CARGO_BIN_EXE_rmb-relay").as_ref(),
        &file,
        &["--otlp-endpoint", &endpoint, "--drain-seconds", "1"],
    )
    .await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    a.send(&a.request(
        "uid-not-exported",
        Address::new(2, None),
        "x",
        b"secret-payload-xyz",
    ))
    .await;
    b.expect_envelope().await;
    a.send(&a.request("to-nobody", Address::new(77, None), "x", b"1"))
        .await;
    a.expect_envelope().await;

    let mut exported = Vec::new();
    for _ in 0..100 {
        exported = bodies.lock().unwrap().concat();
        if contains(&exported, b"unknown_twin") && contains(&exported, b"online") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(contains(&exported, b"rmb.route"), "span name exported");
    assert!(contains(&exported, b"rmb.outcome"));
    assert!(contains(&exported, b"online"), "delivered envelope's span");
    assert!(
        contains(&exported, b"unknown_twin"),
        "refused envelope's span"
    );
    assert!(contains(&exported, b"rmb.source_twin"));
    // A session's span ends, and is exported, when the session does.
    drop((a, b));
    for _ in 0..100 {
        exported = bodies.lock().unwrap().concat();
        if contains(&exported, b"rmb.session") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        contains(&exported, b"rmb.session"),
        "the session span, parent of the envelopes' spans"
    );
    assert!(
        !contains(&exported, b"secret-payload-xyz"),
        "payloads never leave the relay"
    );
    assert!(
        !contains(&exported, b"uid-not-exported"),
        "uids are not exported"
    );
    relay.signal("TERM");
    relay.wait(Duration::from_secs(15)).await;
}
