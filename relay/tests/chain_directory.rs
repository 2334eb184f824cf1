//! A relay whose twin directory is tfchain (served by `rmb-testchain`): sessions authenticate
//! end to end, chain edits take effect without a restart, and a chain outage is a 503 for
//! twins not yet known, never a 401, while known twins keep working.

use std::path::Path;
use std::time::Duration;

use rmb_identity::KeyType;
use rmb_testkit::client::WsClient;
use rmb_testkit::relay::{http_get, metric_value, TestRelay};
use rmb_testkit::testchain::TestChain;
use rmb_testkit::twins::{twins, TestTwin};
use tokio_tungstenite::tungstenite::Error as WsError;

fn write_file(dir: &Path, twins: &[TestTwin]) -> std::path::PathBuf {
    rmb_testkit::twins::write_twins_file(dir, twins)
}

/// The HTTP status of a refused handshake, or 101 when accepted.
async fn handshake_status(url: &str, twin: &TestTwin) -> u16 {
    match WsClient::try_connect(url, twin, None).await {
        Ok(client) => {
            client.close().await;
            101
        }
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(other) => panic!("handshake failed without an HTTP status: {other}"),
    }
}

async fn eventually_status(url: &str, twin: &TestTwin, want: u16) {
    let mut last = 0;
    for _ in 0..150 {
        last = handshake_status(url, twin).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "twin {}: wanted handshake status {want}, last {last}",
        twin.id
    );
}

#[tokio::test]
async fn relay_on_the_chain_authenticates_and_routes_end_to_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ts = twins(1, 2);
    let chain = TestChain::for_twins(&write_file(tmp.path(), &ts)).await;
    let relay = TestRelay::start_with(chain.relay_config(&[])).await;

    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    let request = a.request("uid-1", b.address(), "echo", b"over the chain");
    a.send(&request).await;
    let got = b.expect_envelope().await;
    assert_eq!(got.uid, "uid-1");
    b.send(&b.response_to(&got, b"answered")).await;
    assert_eq!(a.expect_envelope().await.uid, "uid-1");

    // Chain metrics are refreshed once a second.
    let mut found = 0.0;
    for _ in 0..50 {
        let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
        found = metric_value(&metrics, "rmb_relay_chain_lookups_total{result=\"found\"}");
        if found >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found >= 2.0,
        "both twins were looked up on the chain, got {found}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_key_changed_on_chain_takes_effect_without_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ts = twins(1, 1);
    let path = write_file(tmp.path(), &ts);
    let chain = TestChain::for_twins(&path).await;
    let relay = TestRelay::start_with(chain.relay_config(&[])).await;
    assert_eq!(handshake_status(&relay.url, &ts[0]).await, 101);

    // Twin 1 rotates its account key on chain: the old key must stop working, the new one
    // must work, although the relay cached twin 1 for ten minutes.
    let rotated = TestTwin::seeded(1, KeyType::Ed25519, 7);
    write_file(tmp.path(), std::slice::from_ref(&rotated));
    eventually_status(&relay.url, &rotated, 101).await;
    assert_eq!(handshake_status(&relay.url, &ts[0]).await, 401);
    relay.shutdown().await;
}

#[tokio::test]
async fn chain_outage_is_503_for_unknown_twins_and_invisible_for_cached_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ts = twins(1, 2);
    let mut chain = TestChain::for_twins(&write_file(tmp.path(), &ts)).await;
    let relay = TestRelay::start_with(chain.relay_config(&[])).await;
    assert_eq!(handshake_status(&relay.url, &ts[0]).await, 101);

    chain.stop();
    assert_eq!(
        handshake_status(&relay.url, &ts[0]).await,
        101,
        "a cached twin still authenticates"
    );
    assert_eq!(
        handshake_status(&relay.url, &ts[1]).await,
        503,
        "an uncached twin cannot be checked: retry later, not 'unauthorized'"
    );

    chain.resume().await.expect("chain back");
    eventually_status(&relay.url, &ts[1], 101).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn handshakes_naming_unknown_twins_cannot_send_the_relay_to_the_chain_beyond_its_budget() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ts = twins(1, 2);
    let chain = TestChain::for_twins(&write_file(tmp.path(), &ts)).await;
    let relay = TestRelay::start_with(chain.relay_config(&["--directory-lookup-rate", "1"])).await;
    // Twin 1 is looked up once and then served from the cache.
    assert_eq!(handshake_status(&relay.url, &ts[0]).await, 101);
    // Anyone can sign a token naming any twin id: each unknown id used to be a chain lookup.
    let strangers: Vec<TestTwin> = (1000..1020)
        .map(|id| TestTwin::new(id, KeyType::Ed25519))
        .collect();
    let mut statuses = Vec::new();
    for stranger in &strangers {
        statuses.push(handshake_status(&relay.url, stranger).await);
    }
    // A burst of two, then one a second: most strangers get "retry later", not a lookup.
    assert!(
        statuses.iter().filter(|s| **s == 503).count() >= 10,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 503 || *s == 401),
        "{statuses:?}"
    );
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rmb_relay_limit_hits_total{limit=\"directory_lookups\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(refused >= 10.0, "the refusals are counted: {refused}");
    // The known twin is served from the cache, budget or not.
    assert_eq!(handshake_status(&relay.url, &ts[0]).await, 101);
}
