//! The `rmb-peer` binary with `--substrate`: it finds its own twin id by account on the chain
//! (no `--twin`), authenticates to a relay that also reads the chain, and accepts a response
//! only after checking the responder's signature against the key the chain holds; then it
//! publishes its relay host on chain (`update_twin`), as it does unless `--no-update`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use fred::prelude::*;
use rmb_testkit::client::WsClient;
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::TestRelay;
use rmb_testkit::testchain::TestChain;
use rmb_testkit::twins::{twins, write_twins_file};
use serde_json::Value;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_on_the_chain_calls_a_twin_and_verifies_its_response() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ts = twins(1, 2);
    let chain = TestChain::for_twins(&write_twins_file(tmp.path(), &ts)).await;
    let relay = TestRelay::start_with(chain.relay_config(&[])).await;
    let redis = RedisServer::start();

    let key_type = format!("{:?}", ts[0].signer.key_type()).to_ascii_lowercase();
    let _peer = Command::new(env!("CARGO_BIN_EXE_rmb-peer"))
        .args(["--mnemonic", &ts[0].secret, "--key-type", &key_type])
        .args(["--redis", &redis.url(), "--relay", &relay.url])
        .args(["--substrate", &chain.url()])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("rmb-peer starts");
    let mut service = WsClient::connect(&relay.url, &ts[1], None).await;

    let caller = Builder::from_config(Config::from_url(&redis.url()).expect("url"))
        .build()
        .expect("client");
    caller.init().await.expect("redis");
    let request = support::request("ref-1", "chain.echo", &[2], "caller.ret", 30, b"hi");
    let _: i64 = caller
        .lpush("msgbus.system.local", request.to_string())
        .await
        .expect("push");

    // The gateway needed the chain to learn it is twin 1; the relay to authenticate it.
    let got = tokio::time::timeout(Duration::from_secs(20), service.expect_envelope())
        .await
        .expect("request reaches twin 2");
    assert_eq!(got.source.as_ref().map(|s| s.twin), Some(1));
    service.send(&service.response_to(&got, b"\"hello\"")).await;

    let popped: Option<(String, String)> = caller.brpop("caller.ret", 20.0).await.expect("brpop");
    let (_, doc) = popped.expect("response arrives");
    let response: Value = serde_json::from_str(&doc).expect("json");
    assert_eq!(response["ref"], "ref-1");
    assert_eq!(response["src"], "2");
    assert_eq!(response["err"], Value::Null);

    // Without --no-update the peer publishes its relay host and key on chain.
    let mut published = Vec::new();
    for _ in 0..100 {
        published = chain.chain().twins()[0].relays.clone();
        if !published.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published, vec!["127.0.0.1"]);
    relay.shutdown().await;
}
