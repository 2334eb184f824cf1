//! Attack suite, hostile protobuf inside a well-formed websocket frame: lengths that lie,
//! unknown groups nested deeper than any stack should go, and envelopes stuffed with fields.
//! The relay never crashes; a frame it cannot decode closes that session with 1007.

use prost::Message as _;
use rmb_proto::Address;
use rmb_testkit::client::WsClient;
use rmb_testkit::relay::TestRelay;
use rmb_testkit::twins::{twins, TestTwin};
use tokio_tungstenite::tungstenite::Message;

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

async fn honest_exchange(url: &str, ts: &[TestTwin], uid: &str) {
    let mut a = WsClient::connect(url, &ts[0], Some("honest")).await;
    let mut b = WsClient::connect(url, &ts[1], None).await;
    a.send(&a.request(uid, Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, uid);
}

async fn closes_with(url: &str, twin: &TestTwin, frame: Vec<u8>) -> Option<u16> {
    let mut bad = WsClient::connect(url, twin, Some("bad")).await;
    bad.send_frame(Message::Binary(frame.into())).await;
    bad.expect_close().await
}

#[tokio::test]
async fn length_prefixes_that_lie_close_the_session_with_1007() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let honest = WsClient::connect(&relay.url, &ts[0], None).await;
    let valid = honest
        .request("lie", Address::new(2, None), "x", b"1")
        .encode_to_vec();
    // `plain` (field 13) claiming 4 GiB, then 2^63, after a valid envelope.
    for claim in [1u64 << 32, 1u64 << 63] {
        let mut frame = valid.clone();
        frame.push(0x6a);
        varint(claim, &mut frame);
        frame.extend_from_slice(b"short");
        assert_eq!(closes_with(&relay.url, &ts[0], frame).await, Some(1007));
    }
    // A varint that never ends (eleven continuation bytes).
    let mut frame = vec![0x18];
    frame.extend_from_slice(&[0xff; 11]);
    assert_eq!(closes_with(&relay.url, &ts[0], frame).await, Some(1007));
    honest_exchange(&relay.url, &ts, "after-lies").await;
}

#[tokio::test]
async fn unknown_groups_nested_thousands_deep_are_refused_without_recursion() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let honest = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut frame = honest
        .request("deep", Address::new(2, None), "x", b"1")
        .encode_to_vec();
    // Field 100, wire type 3 (start group) 20,000 times, then the matching end groups.
    let depth = 20_000;
    let (mut start, mut end) = (Vec::new(), Vec::new());
    varint((100 << 3) | 3, &mut start);
    varint((100 << 3) | 4, &mut end);
    for _ in 0..depth {
        frame.extend_from_slice(&start);
    }
    for _ in 0..depth {
        frame.extend_from_slice(&end);
    }
    assert_eq!(closes_with(&relay.url, &ts[0], frame).await, Some(1007));
    honest_exchange(&relay.url, &ts, "after-deep").await;
}

#[tokio::test]
async fn envelopes_stuffed_with_fields_within_the_size_limit_are_routed_intact() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    // 10,000 one-byte `relays` entries and a 30 kB `tags`: legal, so it must travel as is.
    let mut env = a.request("stuffed", Address::new(2, None), "x", b"1");
    env.relays = vec!["r".to_string(); 10_000];
    env.tags = Some("t ".repeat(15_000));
    rmb_identity::sign_envelope(&mut env, &a.twin.signer);
    a.send(&env).await;
    let got = b.expect_envelope().await;
    assert_eq!(got.relays.len(), 10_000);
    assert_eq!(got, env);
    // 20,000 unknown varint fields: skipped on decode, the session keeps working.
    let mut frame = a
        .request("unknown-fields", Address::new(2, None), "x", b"1")
        .encode_to_vec();
    for _ in 0..20_000 {
        frame.extend_from_slice(&[0xf8, 0x06, 0x01]); // field 111, varint 1
    }
    a.send_frame(Message::Binary(frame.into())).await;
    assert_eq!(b.expect_envelope().await.uid, "unknown-fields");
    honest_exchange(&relay.url, &ts, "after-stuffed").await;
}
