//! The original relay's metric names, types and labels are on `/metrics` beside ours, and
//! move with traffic, so existing dashboards and alerts keep working. (The federation names,
//! `federation_message_success` / `federation_message_error`, are checked in
//! federation_original_relay.rs, where federation traffic flows.)
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rmb_testkit::client::WsClient;
use rmb_testkit::relay::{http_get, Backing, TestRelay};
use rmb_testkit::twins::twins;

rmb_testkit::on_both_backplanes!(original_names_move_with_traffic);

/// `name{labels}` → value, for one exact series.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn type_of<'a>(text: &'a str, family: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# TYPE {family} ")))
}

async fn scrape(relay: &TestRelay) -> String {
    http_get(relay.addr, "/metrics").await.expect("metrics").1
}

/// Scrapes until `series` reaches `want` (session ends are counted after the close).
async fn eventually(relay: &TestRelay, series: &str, want: f64) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(relay).await;
        if value(&text, series) == Some(want) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{series} never reached {want}:\n{text}");
}

async fn original_names_move_with_traffic(backing: Backing) {
    let ts = twins(1, 2);
    let relay = backing.relay(&ts, &[]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    let text = eventually(&relay, "relay_worker_connections{worker=\"0\"}", 2.0).await;
    for (family, kind) in [
        ("relay_message_rx", "counter"),
        ("relay_message_rx_bytes", "counter"),
        ("relay_message_tx", "counter"),
        ("relay_message_tx_bytes", "counter"),
        ("relay_worker_connections", "gauge"),
        ("relay_session_evictions_total", "counter"),
    ] {
        assert_eq!(type_of(&text, family), Some(kind), "{family}");
    }
    assert_eq!(value(&text, "relay_message_rx"), Some(0.0));

    let req = a.request("m-1", b.address(), "x", b"payload");
    a.send(&req).await;
    let got = b.expect_envelope().await;
    let resp = b.response_to(&got, b"answer");
    b.send(&resp).await;
    a.expect_envelope().await;
    let bytes = (prost::Message::encoded_len(&req) + prost::Message::encoded_len(&resp)) as f64;

    // Received envelopes are counted once routed, which with Redis may finish after the
    // delivery it caused: wait for both.
    eventually(&relay, "relay_message_tx", 2.0).await;
    let text = eventually(&relay, "relay_message_rx", 2.0).await;
    assert_eq!(value(&text, "relay_message_rx_bytes"), Some(bytes));
    assert_eq!(value(&text, "relay_message_tx_bytes"), Some(bytes));
    // Ours and the original's agree.
    assert_eq!(value(&text, "rmb_relay_envelopes_sent_total"), Some(2.0));

    b.close().await;
    let text = eventually(
        &relay,
        "relay_session_evictions_total{reason=\"cancelled\"}",
        1.0,
    )
    .await;
    assert!(text.contains("relay_worker_connections"));
    // The eviction is counted as the session ends, the connection once its task is done.
    eventually(&relay, "relay_worker_connections{worker=\"0\"}", 1.0).await;
}
