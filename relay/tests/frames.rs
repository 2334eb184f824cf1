//! Frames that are not envelopes close only the session that sent them, each with its own
//! close code; everyone else keeps being served.

use rmb_proto::Address;
use rmb_testkit::client::WsClient;
use rmb_testkit::relay::{http_get, metric_value, TestRelay};
use rmb_testkit::twins::twins;
use tokio_tungstenite::tungstenite::Message;

async fn honest_exchange_still_works(url: &str, ts: &[rmb_testkit::twins::TestTwin]) {
    let mut a = WsClient::connect(url, &ts[0], Some("honest")).await;
    let mut b = WsClient::connect(url, &ts[1], None).await;
    a.send(&a.request("still-ok", Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, "still-ok");
}

#[tokio::test]
async fn text_frame_closes_the_session_with_1003() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut bad = WsClient::connect(&relay.url, &ts[0], None).await;
    bad.send_frame(Message::Text("hello".into())).await;
    assert_eq!(bad.expect_close().await, Some(1003));
    honest_exchange_still_works(&relay.url, &ts).await;
}

#[tokio::test]
async fn garbage_frame_closes_the_session_with_1007() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut bad = WsClient::connect(&relay.url, &ts[0], None).await;
    bad.send_frame(Message::Binary(vec![0xff; 64].into())).await;
    assert_eq!(bad.expect_close().await, Some(1007));
    honest_exchange_still_works(&relay.url, &ts).await;
    let (_, metrics) = http_get(relay.addr, "/metrics").await.unwrap();
    assert_eq!(
        metric_value(&metrics, "rmb_relay_malformed_frames_total"),
        1.0
    );
}

#[tokio::test]
async fn oversized_frame_closes_the_session_with_1009() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &["--max-envelope-bytes", "4096"]).await;
    let mut bad = WsClient::connect(&relay.url, &ts[0], None).await;
    let big = bad.request("big", Address::new(2, None), "x", &vec![b'x'; 8192]);
    bad.send(&big).await;
    assert_eq!(bad.expect_close().await, Some(1009));
    honest_exchange_still_works(&relay.url, &ts).await;
    let (_, metrics) = http_get(relay.addr, "/metrics").await.unwrap();
    assert!(metrics.contains("rmb_relay_limit_hits_total{limit=\"envelope_size\"} 1"));
}
