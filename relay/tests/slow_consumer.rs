//! A session that stops reading is disconnected (4008) once its queue passes the bound; it
//! stalls nobody else, and what it did not confirm waits in its mailbox.

use std::collections::HashSet;
use std::time::Duration;

use rmb_proto::Address;
use rmb_testkit::client::{Received, WsClient};
use rmb_testkit::relay::{http_get, TestRelay};
use rmb_testkit::twins::twins;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_without_stalling_others() {
    let ts = twins(1, 4);
    let relay = TestRelay::start(
        &ts,
        &[
            "--outbound-queue",
            "64",
            "--max-unconfirmed",
            "128",
            "--rate-messages",
            "100000",
        ],
    )
    .await;
    let mut sender = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut slow = WsClient::connect(&relay.url, &ts[1], None).await;
    let mut c = WsClient::connect(&relay.url, &ts[2], None).await;
    let mut d = WsClient::connect(&relay.url, &ts[3], None).await;

    // The slow twin never reads while 400 envelopes are sent to it.
    let payload = vec![b'p'; 2048];
    let total = 400;
    for i in 0..total {
        sender
            .send(&sender.request(&format!("s-{i}"), Address::new(2, None), "x", &payload))
            .await;
    }
    // Meanwhile other twins are served promptly.
    c.send(&c.request("c-to-d", Address::new(4, None), "x", b"1"))
        .await;
    let got = tokio::time::timeout(Duration::from_secs(2), d.expect_envelope())
        .await
        .expect("other sessions are not stalled");
    assert_eq!(got.uid, "c-to-d");

    // The slow session was closed as a slow consumer. What it reads now before the close
    // frame was delivered to it (and may be confirmed by the pongs it sends while reading).
    let mut seen = HashSet::new();
    let mut closed_with = None;
    while let Some(rx) = slow.next(Duration::from_secs(5)).await {
        match rx {
            Received::Envelope(env) => {
                seen.insert(env.uid.clone());
            }
            Received::Closed(frame) => {
                closed_with = Some(frame.map(|f| u16::from(f.code)));
                break;
            }
        }
    }
    // A close without a code (a dropped connection) does not count: the relay must say why.
    assert_eq!(
        closed_with,
        Some(Some(4008)),
        "slow consumer was not closed with 4008"
    );
    let (_, metrics) = http_get(relay.addr, "/metrics").await.unwrap();
    assert!(metrics.contains("rmb_relay_limit_hits_total{limit=\"slow_consumer\"} 1"));

    // Reconnecting gets every other envelope: each is delivered at least once.
    let mut again = WsClient::connect(&relay.url, &ts[1], None).await;
    while seen.len() < total {
        match again.next(Duration::from_secs(5)).await {
            Some(Received::Envelope(env)) => {
                seen.insert(env.uid.clone());
            }
            other => panic!(
                "expected more envelopes after {} of {total}: {other:?}",
                seen.len()
            ),
        }
    }
}
