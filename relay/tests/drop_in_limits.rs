//! Default limits no user of the original relay hits: its 16 MiB frame size, no rate
//! limit unless `--limit`, no cap on a twin's sessions. Beyond a limit the sender is told (an
//! error envelope, or close code 1009 for a frame too large to read), never silently dropped.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use prost::Message as _;
use rmb_proto::{codes, Address};
use rmb_testkit::client::{error_of, Received, WsClient};
use rmb_testkit::relay::{http_get, TestRelay};
use rmb_testkit::twins::twins;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const MIB: usize = 1 << 20;

async fn limit_hits(relay: &TestRelay, limit: &str) -> String {
    let (_, text) = http_get(relay.addr, "/metrics").await.expect("metrics");
    let prefix = format!("rmb_relay_limit_hits_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or("0")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_over_the_16_mib_default_closes_its_session_with_1009_and_nothing_else() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut sender = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut receiver = WsClient::connect(&relay.url, &ts[1], None).await;
    let huge = sender.request("huge", Address::new(2, None), "x", &vec![b'x'; 16 * MIB]);
    assert!(huge.encoded_len() > 16 * MIB);
    // The relay stops reading at the frame header: the write may fail half way.
    let _ = sender
        .try_send_frame(WsMessage::Binary(huge.encode_to_vec().into()))
        .await;
    match sender.next(Duration::from_secs(30)).await {
        // The close frame, or (when the rest of the frame was still being written) the
        // connection dropped under the writer: both end the session, and clients reconnect.
        Some(Received::Closed(frame)) => {
            let code = frame.map(|f| u16::from(f.code));
            assert!(matches!(code, Some(1009) | None), "close code {code:?}");
        }
        other => panic!("expected the session to end, got {other:?}"),
    }
    assert_eq!(limit_hits(&relay, "envelope_size").await, "1");
    receiver.expect_silence(Duration::from_millis(300)).await;
    // The twin reconnects and carries on; the receiver's session was never touched.
    let mut sender = WsClient::connect(&relay.url, &ts[0], None).await;
    let next = sender.request("after", Address::new(2, None), "x", b"small");
    sender.send(&next).await;
    assert_eq!(receiver.expect_envelope().await, next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_and_bursts_the_old_defaults_refused_now_pass() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    // 8 MiB: over the old 1 MiB limit, under the original network's 16 MiB frame limit.
    let big = a.request("big", b.address(), "x", &vec![b'y'; 8 * MIB]);
    a.send(&big).await;
    assert_eq!(b.expect_envelope().await, big, "delivered byte for byte");
    // 3000 envelopes at once: over the old 1000/s (burst 2000).
    let burst = 3000;
    for i in 0..burst {
        a.send(&a.request(&format!("b-{i}"), b.address(), "x", b"1"))
            .await;
    }
    for i in 0..burst {
        let env = b.expect_envelope().await;
        assert_eq!(env.uid, format!("b-{i}"));
    }
    a.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(limit_hits(&relay, "rate_messages").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_may_hold_more_sessions_than_the_old_cap() {
    let ts = twins(1, 1);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut sessions = Vec::new();
    for i in 0..40 {
        let sid = format!("s{i}");
        sessions.push(WsClient::connect(&relay.url, &ts[0], Some(&sid)).await);
    }
    assert_eq!(limit_hits(&relay, "sessions_per_twin").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_limit_flag_refuses_with_an_error_envelope() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &["--limit", "3", "2000"]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    // Over SIZE on its own: never passes.
    a.send(&a.request("too-big", b.address(), "x", &[b'z'; 4000]))
        .await;
    let refused = a.expect_envelope().await;
    assert_eq!(refused.uid, "too-big");
    assert_eq!(error_of(&refused).0, codes::RATE_LIMITED);
    // COUNT a minute: three pass, the fourth is refused, by name.
    for i in 0..4 {
        a.send(&a.request(&format!("m-{i}"), b.address(), "x", b"1"))
            .await;
    }
    for i in 0..3 {
        assert_eq!(b.expect_envelope().await.uid, format!("m-{i}"));
    }
    let refused = a.expect_envelope().await;
    assert_eq!(refused.uid, "m-3");
    assert_eq!(error_of(&refused).0, codes::RATE_LIMITED);
    b.expect_silence(Duration::from_millis(300)).await;
}
