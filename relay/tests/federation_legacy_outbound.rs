//! Sending to a relay of the existing implementation: it has no batch endpoint (404), so our
//! relay falls back to what it understands, one raw envelope per `POST /`, and keeps doing so.
//! The old relay here is a small HTTP server that records what it is given.

mod federation_common;

use std::time::Duration;

use bytes::Bytes;
use federation_common::{old_relay, wait_series, A};
use prost::Message as _;
use rmb_federation::RelayKey;
use rmb_identity::KeyType;
use rmb_testkit::client::WsClient;
use rmb_testkit::relay::{free_addr, test_config, TestRelay};
use rmb_testkit::twins::{write_twins_file, TestTwin};
use tokio::sync::mpsc;

const OLD: &str = "old.example";

#[tokio::test]
async fn envelopes_for_an_old_relay_fall_back_to_legacy_post() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let old = old_relay(tx).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = TestTwin::new(30, KeyType::Ed25519).on_relays(&[A]);
    let olga = TestTwin::new(31, KeyType::Sr25519).on_relays(&[OLD]);
    let file = write_twins_file(dir.path(), &[alice.clone(), olga.clone()]);
    let key_path = dir.path().join("a.key");
    RelayKey::generate(rmb_proto::unix_now())
        .save(&key_path)
        .expect("key");
    let addr = free_addr();
    let (listen, key_arg, resolve) = (
        addr.to_string(),
        key_path.display().to_string(),
        format!("{OLD}={old}"),
    );
    let relay = TestRelay::start_with(test_config(
        &file,
        &[
            "--listen",
            &listen,
            "--domain",
            A,
            "--identity-key",
            &key_arg,
            "--federation-resolve",
            &resolve,
            "--federation-insecure-http",
            OLD,
        ],
    ))
    .await;

    let mut session = WsClient::connect(&relay.url, &alice, None).await;
    let to = rmb_proto::Address::new(olga.id, None);
    for uid in ["old-1", "old-2"] {
        let req = session.request(uid, to.clone(), "x", b"for an old relay");
        session.send(&req).await;
        let (path, body) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the old relay got a request in time")
            .expect("channel open");
        assert_eq!(path, "/");
        assert_eq!(
            body,
            Bytes::from(req.encode_to_vec()),
            "the raw envelope, as sent"
        );
    }
    wait_series(
        relay.addr,
        "rmb_federation_sent_total",
        &[("domain", OLD)],
        2.0,
    )
    .await;
    session.expect_silence(Duration::from_millis(300)).await;
}
