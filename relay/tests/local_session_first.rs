//! Local session first, as the original relay: a twin with a session on this relay (any pod of
//! the cluster) receives its envelopes even when its directory record names another relay or
//! none (`--no-update`, a record not updated yet, a local set-up). Only a twin without a
//! session is placed by the directory: federated, or refused.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rmb_identity::KeyType;
use rmb_proto::{codes, Address};
use rmb_testkit::client::{error_of, WsClient};
use rmb_testkit::relay::{http_get, Backing, TestRelay};
use rmb_testkit::twins::TestTwin;

const OURS: &str = "relay.test";
const ELSEWHERE: &str = "elsewhere.example";

rmb_testkit::on_both_backplanes!(
    a_connected_twin_receives_although_its_record_names_another_relay,
    without_a_session_the_directory_decides,
    in_a_pipelined_batch_each_destination_is_looked_up_for_a_session,
);

fn cast() -> Vec<TestTwin> {
    vec![
        TestTwin::new(1, KeyType::Ed25519).on_relays(&[OURS]),
        // Its record names another relay only.
        TestTwin::new(2, KeyType::Sr25519).on_relays(&[ELSEWHERE]),
        // Its record names no relay at all.
        TestTwin::new(3, KeyType::Ed25519),
    ]
}

/// The value of `name{outcome="…"}`.
async fn outcome_count(relay: &TestRelay, outcome: &str) -> f64 {
    let (_, text) = http_get(relay.addr, "/metrics").await.expect("metrics");
    let prefix = format!("rmb_relay_envelopes_received_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn a_connected_twin_receives_although_its_record_names_another_relay(backing: Backing) {
    let ts = cast();
    let relay = backing.relay(&ts, &["--domain", OURS]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    let mut c = WsClient::connect(&relay.url, &ts[2], Some("laptop")).await;

    let to_b = a.request("to-b", b.address(), "echo", b"1");
    a.send(&to_b).await;
    assert_eq!(
        b.expect_envelope().await,
        to_b,
        "delivered to the local session"
    );
    let to_c = a.request("to-c", Address::new(3, Some("laptop".into())), "echo", b"2");
    a.send(&to_c).await;
    assert_eq!(c.expect_envelope().await, to_c);
    // And the answer goes back the usual way.
    b.send(&b.response_to(&to_b, b"ok")).await;
    assert_eq!(a.expect_envelope().await.uid, "to-b");
    // Received envelopes are counted once routed, which with Redis may finish after the
    // delivery it caused: wait for the count.
    let mut online = 0.0;
    for _ in 0..100 {
        online = outcome_count(&relay, "online").await;
        if online >= 3.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(online, 3.0);
    assert_eq!(outcome_count(&relay, "federated").await, 0.0);
    assert_eq!(outcome_count(&relay, "not_served").await, 0.0);
}

async fn without_a_session_the_directory_decides(backing: Backing) {
    let ts = cast();
    let relay = backing.relay(&ts, &["--domain", OURS]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    // Twin 2 is connected, but under another session id: not the destination's session.
    let mut b_phone = WsClient::connect(&relay.url, &ts[1], Some("phone")).await;

    a.send(&a.request("to-b", Address::new(2, None), "echo", b"1"))
        .await;
    a.send(&a.request("to-c", Address::new(3, None), "echo", b"2"))
        .await;
    let refused = a.expect_envelope().await;
    assert_eq!(refused.uid, "to-c");
    assert_eq!(error_of(&refused).0, codes::NOT_SERVED);
    b_phone.expect_silence(Duration::from_millis(300)).await;
    // Twin 2's record names another relay: queued for it, not refused.
    assert_eq!(outcome_count(&relay, "federated").await, 1.0);
    assert_eq!(outcome_count(&relay, "not_served").await, 1.0);
}

/// A batch remembers the last destination it found a session for: envelopes after it to other
/// destinations (another twin, another session id of the same twin) are still looked up.
async fn in_a_pipelined_batch_each_destination_is_looked_up_for_a_session(backing: Backing) {
    let ts = cast();
    let relay = backing.relay(&ts, &["--domain", OURS]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;

    let burst = vec![
        a.request("to-b-1", b.address(), "echo", b"1"),
        a.request("to-b-2", b.address(), "echo", b"2"),
        // No session of twin 3 and no relay in its record: refused.
        a.request("to-c", Address::new(3, None), "echo", b"3"),
        // Twin 2 has no session "phone": its record names another relay.
        a.request(
            "to-b-phone",
            Address::new(2, Some("phone".into())),
            "echo",
            b"4",
        ),
        a.relay_ping("barrier"),
    ];
    a.send_pipelined(&burst).await;
    let refused = a.expect_envelope().await;
    assert_eq!(refused.uid, "to-c");
    assert_eq!(error_of(&refused).0, codes::NOT_SERVED);
    assert_eq!(a.expect_envelope().await.uid, "barrier");
    assert_eq!(b.expect_envelope().await.uid, "to-b-1");
    assert_eq!(b.expect_envelope().await.uid, "to-b-2");
    b.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(outcome_count(&relay, "federated").await, 1.0);
    assert_eq!(outcome_count(&relay, "online").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_another_pod_of_the_cluster_counts_as_local() {
    let backing = Backing::redis();
    let ts = cast();
    let pod_a = backing.relay(&ts, &["--domain", OURS]).await;
    let pod_b = backing.relay(&ts, &["--domain", OURS]).await;
    for pod in [&pod_a, &pod_b] {
        for _ in 0..250 {
            if let Some((200, _)) = http_get(pod.addr, "/readyz").await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut a = WsClient::connect(&pod_a.url, &ts[0], None).await;
    let mut b = WsClient::connect(&pod_b.url, &ts[1], None).await;
    let mut c = WsClient::connect(&pod_b.url, &ts[2], None).await;

    let to_b = a.request("to-b", b.address(), "echo", b"across pods");
    a.send(&to_b).await;
    assert_eq!(b.expect_envelope().await, to_b);
    let to_c = a.request("to-c", c.address(), "echo", b"no relay at all");
    a.send(&to_c).await;
    assert_eq!(c.expect_envelope().await, to_c);
    b.send(&b.response_to(&to_b, b"back")).await;
    assert_eq!(a.expect_envelope().await.uid, "to-b");
    assert_eq!(outcome_count(&pod_a, "online").await, 2.0);
    assert_eq!(outcome_count(&pod_a, "federated").await, 0.0);
}
