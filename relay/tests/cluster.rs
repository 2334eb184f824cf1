//! Several relay pods over one Redis (standalone or Cluster) behave as one relay.

use std::time::Duration;

use rmb_proto::Address;
use rmb_testkit::client::WsClient;
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::TestRelay;
use rmb_testkit::twins::twins;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_on_different_pods_exchange_envelopes() {
    let redis = RedisServer::start();
    let ts = twins(1, 3);
    let url = redis.url();
    let args = ["--redis", url.as_str(), "--redis-lease-seconds", "2"];
    let pods = [
        TestRelay::start(&ts, &args).await,
        TestRelay::start(&ts, &args).await,
        TestRelay::start(&ts, &args).await,
    ];
    let mut a = WsClient::connect(&pods[0].url, &ts[0], None).await;
    let mut b = WsClient::connect(&pods[1].url, &ts[1], None).await;
    let mut c = WsClient::connect(&pods[2].url, &ts[2], None).await;
    a.send(&a.request("a-b", Address::new(2, None), "x", b"1"))
        .await;
    let got = b.expect_envelope().await;
    assert_eq!(got.uid, "a-b");
    b.send(&b.response_to(&got, b"2")).await;
    assert_eq!(a.expect_envelope().await.uid, "a-b");
    c.send(&c.request("c-a", Address::new(1, None), "x", b"3"))
        .await;
    assert_eq!(a.expect_envelope().await.uid, "c-a");
    b.expect_silence(QUIET).await;
}
