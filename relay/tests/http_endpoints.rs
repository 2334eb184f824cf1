//! Probes, metrics and what plain HTTP clients get.

use rmb_testkit::relay::{http_get, TestRelay};
use rmb_testkit::twins::twins;

#[tokio::test]
async fn probes_and_metrics_answer() {
    let relay = TestRelay::start(&twins(1, 1), &[]).await;
    assert_eq!(http_get(relay.addr, "/healthz").await.unwrap().0, 200);
    let (status, body) = http_get(relay.addr, "/readyz").await.unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));
    let (status, metrics) = http_get(relay.addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "rmb_relay_connections",
        "rmb_relay_sessions",
        "rmb_relay_envelopes_received_total",
        "rmb_relay_envelopes_sent_total",
        "rmb_relay_received_bytes_total",
        "rmb_relay_sent_bytes_total",
        "rmb_relay_routing_seconds_bucket",
        "rmb_relay_mailbox_envelopes",
        "rmb_relay_limit_hits_total",
        "rmb_relay_ready 1",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(http_get(relay.addr, "/nope").await.unwrap().0, 404);
    assert_eq!(http_get(relay.addr, "/").await.unwrap().0, 426);
}
