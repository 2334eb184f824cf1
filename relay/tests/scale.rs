//! A thousand concurrent sessions exchanging traffic through one relay.

use std::time::Duration;

use futures_util::future::join_all;
use rmb_proto::Address;
use rmb_testkit::client::WsClient;
use rmb_testkit::relay::{http_get, metric_value, TestRelay};
use rmb_testkit::twins::twins;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_exchange_traffic() {
    let n = 1000u32;
    let ts = twins(1, n);
    let relay = TestRelay::start(&ts, &[]).await;
    let url = relay.url.clone();
    let clients = join_all(ts.iter().map(|t| {
        let url = url.clone();
        let t = t.clone();
        async move { WsClient::connect(&url, &t, None).await }
    }))
    .await;
    let (_, metrics) = http_get(relay.addr, "/metrics").await.unwrap();
    assert_eq!(metric_value(&metrics, "rmb_relay_sessions"), n as f64);

    // Each twin i sends one request to twin (i % n) + 1 and answers the one it receives.
    let tasks = clients.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let me = c.twin.id;
            let peer = me % n + 1;
            c.send(&c.request(&format!("req-{me}"), Address::new(peer, None), "x", b"{}"))
                .await;
            let mut got_request = false;
            let mut got_response = false;
            while !(got_request && got_response) {
                let env = c.expect_envelope().await;
                match env.message {
                    Some(rmb_proto::Message::Request(_)) => {
                        c.send(&c.response_to(&env, b"ok")).await;
                        got_request = true;
                    }
                    Some(rmb_proto::Message::Response(_)) => {
                        assert_eq!(env.uid, format!("req-{me}"));
                        got_response = true;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            c
        })
    });
    let done = tokio::time::timeout(Duration::from_secs(60), join_all(tasks))
        .await
        .expect("all exchanges finish");
    assert_eq!(done.iter().filter(|r| r.is_ok()).count(), n as usize);
}
