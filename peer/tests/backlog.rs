//! The backlog in Redis (`msgbus.backlog.<uid>`, expiring with the request): answers to
//! requests sent before an `rmb-peer` restart reach their caller's `ret` list, and so do
//! answers to requests an original `rmb-peer` recorded before it was replaced by this one.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use fred::prelude::*;
use rmb_peer::direct::DirectClient;
use rmb_proto::{Address, Kind};
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::{RelayProcess, TestRelay};
use rmb_testkit::twins::{twins, write_twins_file};
use serde_json::Value;
use support::process::PeerProcess;
use support::{relay_binary, request, unb64, Side};

const START: Duration = Duration::from_secs(30);

/// The next request envelope `raw` receives.
async fn next_request(raw: &mut DirectClient) -> rmb_proto::Envelope {
    loop {
        let env = tokio::time::timeout(Duration::from_secs(20), raw.recv())
            .await
            .expect("a request arrives")
            .expect("session open");
        if env.kind() == Kind::Request {
            return env;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_to_a_request_sent_before_a_peer_restart_reaches_its_caller() {
    let ts = twins(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let relay = RelayProcess::spawn(&relay_binary(), &file, &[]).await;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let file_arg = file.display().to_string();
    let args = [
        "-m",
        ts[0].secret.as_str(),
        "-k",
        "sr25519",
        "-r",
        redis_url.as_str(),
        "--relay",
        relay.url.as_str(),
        "--twins",
        file_arg.as_str(),
    ];
    let mut peer = PeerProcess::spawn(&args, &[]);
    peer.wait_for_log("connected to relay", START).await;
    let mut service = DirectClient::connect(&relay.url, ts[1].signer.clone(), ts[1].id, None)
        .await
        .unwrap();

    let caller = Builder::from_config(Config::from_url(&redis_url).unwrap())
        .build()
        .unwrap();
    caller.init().await.unwrap();
    let doc = request("before", "svc.slow", &[ts[1].id], "restart.ret", 60, b"?");
    let _: i64 = caller
        .lpush("msgbus.system.local", doc.to_string())
        .await
        .unwrap();
    let req = next_request(&mut service).await;
    let key = format!("msgbus.backlog.{}", req.uid);
    let ttl: i64 = caller.ttl(&key).await.unwrap();
    assert!(
        (1..=60).contains(&ttl),
        "tracked until the request expires: ttl {ttl}"
    );

    // The peer dies with the request in flight and comes back.
    peer.signal("KILL");
    peer.wait(Duration::from_secs(10)).await;
    let mut peer = PeerProcess::spawn(&args, &[]);
    peer.wait_for_log("connected to relay", START).await;

    // Only now does the service answer (twice: a redelivery is not delivered twice).
    let answer = service.response_to(&req, b"\"after the restart\"".to_vec());
    service.send(&answer).await.unwrap();
    service.send(&answer).await.unwrap();
    let popped: Option<(String, String)> = caller.brpop("restart.ret", 20.0).await.unwrap();
    let (_, doc) = popped.expect("the answer reaches ret after the restart");
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["ref"], "before", "the caller's ref, from the backlog");
    assert_eq!(doc["src"], ts[1].id.to_string());
    assert_eq!(doc["err"], Value::Null);
    assert_eq!(unb64(&doc["dat"]), b"\"after the restart\"");

    // Every destination answered: the entry is gone, and the copy went nowhere.
    for _ in 0..500 {
        let exists: i64 = caller.exists(&key).await.unwrap();
        if exists == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exists: i64 = caller.exists(&key).await.unwrap();
    assert_eq!(exists, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left: i64 = caller.llen("restart.ret").await.unwrap();
    assert_eq!(left, 0, "answered once");
    peer.signal("TERM");
    assert_eq!(peer.wait(Duration::from_secs(10)).await, Some(0));
}

/// Protobuf bytes of the original peer's backlog entry: `uid`=1, `reference`=2,
/// `reply_to`=3 (strings), `ttl`=4 (varint).
fn original_entry(uid: &str, reference: &str, reply_to: &str, ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (field, text) in [(1u8, uid), (2, reference), (3, reply_to)] {
        out.push(field << 3 | 2);
        out.push(u8::try_from(text.len()).unwrap());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&[4 << 3, ttl & 0x7f]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_to_a_request_the_original_peer_recorded_reaches_its_caller() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let gateway = Side::start(&relay.url, &ts[0], &file).await;
    let mut service = DirectClient::connect(&relay.url, ts[1].signer.clone(), ts[1].id, None)
        .await
        .unwrap();

    // What the original rmb-peer left in Redis for a request it sent to twin 2.
    let uid = "4f6c1f0e-2b7a-4a57-9d11-0c2c55c1e9a1";
    let key = format!("msgbus.backlog.{uid}");
    let entry = original_entry(uid, "old-ref", "legacy.ret", 100);
    let _: () = gateway
        .redis
        .set(
            &key,
            entry.as_slice(),
            Some(Expiration::EX(100)),
            None,
            false,
        )
        .await
        .unwrap();

    let mut sent = service.request(ts[0].id, None, "svc.any", Vec::new(), 100);
    sent.uid = uid.to_string();
    sent.source = Some(Address::new(ts[0].id, None));
    let answer = service.response_to(&sent, b"\"late\"".to_vec());
    service.send(&answer).await.unwrap();

    let doc = gateway.pop("legacy.ret").await;
    assert_eq!(doc["ref"], "old-ref");
    assert_eq!(doc["src"], ts[1].id.to_string());
    assert_eq!(unb64(&doc["dat"]), b"\"late\"");
    let exists: i64 = gateway.redis.exists(&key).await.unwrap();
    assert_eq!(
        exists, 1,
        "the original's entry is left to expire, as it does"
    );
}
