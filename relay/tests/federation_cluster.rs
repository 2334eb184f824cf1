//! Federation across pods and key changes: the outbound queue lives in Redis, so an envelope
//! queued by a pod that is then SIGKILLed is still delivered by another pod of the same
//! relay; and a relay that rotated its identity key is trusted again as soon as its new key
//! id shows up (the receiver fetches the key document again).

mod federation_common;

use std::time::Duration;

use federation_common::{start_pair, test_twins, wait_series, A, B};
use rmb_federation::RelayKey;
use rmb_testkit::client::{Received, WsClient};
use rmb_testkit::relay::RelayProcess;

async fn expect_uid(client: &mut WsClient, uid: &str, secs: u64) {
    match client.next(Duration::from_secs(secs)).await {
        Some(Received::Envelope(env)) => assert_eq!(env.uid, uid),
        other => panic!("twin {} expected {uid}, got {other:?}", client.twin.id),
    }
}

#[tokio::test]
async fn an_envelope_queued_by_a_killed_pod_is_sent_by_another_pod() {
    let twins = test_twins();
    let mut pair = start_pair(&twins, true, &[]).await;
    // A second pod of relay a, as a real process on the same Redis.
    let args: Vec<&str> = pair.a.args.iter().map(String::as_str).collect();
    let pod = RelayProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_rmb-relay")),
        &pair.a.twins_file,
        &args,
    )
    .await;
    pair.b.stop().await;

    let mut alice = WsClient::connect(&pod.url, &twins.alice, None).await;
    let req = alice.request(
        "survives",
        rmb_proto::Address::new(twins.bob.id, None),
        "x",
        b"queued in redis",
    );
    alice.send(&req).await;
    // Relay b never answered this pod: its queue counts under `other` until it does.
    wait_series(
        pod.addr,
        "rmb_federation_queued_total",
        &[("domain", "other")],
        1.0,
    )
    .await;
    pod.signal("KILL");
    drop(alice);

    pair.b.start().await;
    pair.wait_ready().await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    expect_uid(&mut bob, "survives", 90).await;
    wait_series(
        pair.a.addr,
        "rmb_federation_sent_total",
        &[("domain", B)],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_rotated_relay_key_is_fetched_again_on_its_new_key_id() {
    let twins = test_twins();
    let mut pair = start_pair(&twins, false, &[]).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    {
        let mut alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
        let req = alice.request("before", bob.address(), "x", b"");
        alice.send(&req).await;
        expect_uid(&mut bob, "before", 20).await;
    }

    // Relay a rotates its key and restarts; relay b still caches the old document.
    pair.a.stop().await;
    let now = rmb_proto::unix_now();
    let old = RelayKey::load(&pair.a.key_path).expect("key file");
    let rotated = old.rotate(now, now + 3600);
    rotated.save(&pair.a.key_path).expect("rotated key file");
    pair.a.start().await;

    let mut alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let req = alice.request("after", bob.address(), "x", b"");
    alice.send(&req).await;
    expect_uid(&mut bob, "after", 30).await;
    wait_series(
        pair.b.addr,
        "rmb_federation_key_fetches_total",
        &[("domain", A), ("result", "ok")],
        2.0,
    )
    .await;

    let (_, body) = rmb_testkit::relay::http_get(pair.a.addr, "/.well-known/rmb/relay.json")
        .await
        .expect("key document");
    let doc: rmb_federation::KeyDocument = serde_json::from_str(&body).expect("json");
    let kids: Vec<&str> = doc.keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids, vec![rotated.kid(), old.kid()]);
}
