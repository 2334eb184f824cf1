//! Routing behaviour of a relay: delivery between sessions, the offline mailbox, confirmed
//! delivery, and every refusal, over real websockets.

use std::time::Duration;

use rmb_identity::KeyType;
use rmb_proto::{codes, Address, Message};
use rmb_testkit::client::{error_of, Received, WsClient};
use rmb_testkit::relay::Backing;
use rmb_testkit::twins::{twins, TestTwin};

const QUIET: Duration = Duration::from_millis(300);

rmb_testkit::on_both_backplanes!(
    twins_exchange_requests_and_responses_with_both_key_types,
    envelope_for_a_session_id_reaches_only_that_session,
    offline_twin_gets_mail_in_order_on_connect_and_expired_mail_never,
    unconfirmed_envelopes_are_delivered_again_after_reconnect,
    a_second_connection_replaces_the_first,
    spoofed_source_is_refused_and_the_session_keeps_working,
    refusals_carry_distinct_codes,
    envelope_ping_is_answered_with_a_pong,
    mailbox_bound_refuses_mail_beyond_it,
    rate_limit_refuses_the_excess_and_serves_others,
);

async fn twins_exchange_requests_and_responses_with_both_key_types(backing: Backing) {
    let ts = vec![
        TestTwin::new(1, KeyType::Ed25519),
        TestTwin::new(2, KeyType::Sr25519),
        TestTwin::new(3, KeyType::Sr25519),
    ];
    let relay = backing.relay(&ts, &[]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], Some("phone")).await;
    let mut c = WsClient::connect(&relay.url, &ts[2], None).await;

    let req = a.request(
        "u-1",
        Address::new(2, Some("phone".into())),
        "calc.add",
        b"[1,2]",
    );
    a.send(&req).await;
    let got = b.expect_envelope().await;
    assert_eq!(got, req, "delivered byte for byte, signature intact");

    let resp = b.response_to(&got, b"3");
    b.send(&resp).await;
    let back = a.expect_envelope().await;
    assert_eq!(back, resp);
    assert!(matches!(back.message, Some(Message::Response(_))));

    c.expect_silence(QUIET).await;
}

async fn envelope_for_a_session_id_reaches_only_that_session(backing: Backing) {
    let ts = twins(1, 2);
    let relay = backing.relay(&ts, &[]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b_plain = WsClient::connect(&relay.url, &ts[1], None).await;
    let mut b_s1 = WsClient::connect(&relay.url, &ts[1], Some("s1")).await;

    a.send(&a.request("to-s1", Address::new(2, Some("s1".into())), "x", b"1"))
        .await;
    a.send(&a.request("to-plain", Address::new(2, None), "x", b"2"))
        .await;
    assert_eq!(b_s1.expect_envelope().await.uid, "to-s1");
    assert_eq!(b_plain.expect_envelope().await.uid, "to-plain");
    b_s1.expect_silence(QUIET).await;
    b_plain.expect_silence(QUIET).await;
}

async fn offline_twin_gets_mail_in_order_on_connect_and_expired_mail_never(backing: Backing) {
    let ts = twins(1, 2);
    let relay = backing.relay(&ts, &[]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    for i in 0..20 {
        let mut env = a.request(&format!("m-{i}"), Address::new(2, None), "x", b"{}");
        if i == 5 {
            // A short-lived envelope that expires while the twin is away.
            env.expiration = 2;
            rmb_identity::sign_envelope(&mut env, &a.twin.signer);
        }
        a.send(&env).await;
    }
    a.expect_silence(QUIET).await; // nothing refused
    tokio::time::sleep(Duration::from_millis(3100)).await;

    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    let mut got = Vec::new();
    for _ in 0..19 {
        got.push(b.expect_envelope().await.uid);
    }
    let expected: Vec<String> = (0..20)
        .filter(|i| *i != 5)
        .map(|i| format!("m-{i}"))
        .collect();
    assert_eq!(got, expected);
    b.expect_silence(QUIET).await;
}

/// With `websocket-ping` confirmation (tcp-ack: tests/delivery_confirmation.rs).
async fn unconfirmed_envelopes_are_delivered_again_after_reconnect(backing: Backing) {
    let ts = twins(1, 2);
    let relay = backing
        .relay(&ts, &["--delivery-confirmation", "websocket-ping"])
        .await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    for i in 0..5 {
        a.send(&a.request(&format!("r-{i}"), Address::new(2, None), "x", b"1"))
            .await;
    }
    a.expect_silence(QUIET).await;
    // The five wait in the mailbox and go out as one batch followed by one confirmation
    // ping. Read the five frames, then die before reading the ping, so it is never answered.
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    for i in 0..5 {
        assert_eq!(b.expect_envelope().await.uid, format!("r-{i}"));
    }
    b.kill();
    tokio::time::sleep(QUIET).await;

    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    for i in 0..5 {
        assert_eq!(
            b.expect_envelope().await.uid,
            format!("r-{i}"),
            "redelivered in order"
        );
    }
    // Now confirmed (our client answers pings as it reads): a third session gets nothing.
    b.expect_silence(QUIET).await;
    b.close().await;
    tokio::time::sleep(QUIET).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    b.expect_silence(QUIET).await;
}

async fn a_second_connection_replaces_the_first(backing: Backing) {
    let ts = twins(1, 2);
    let relay = backing.relay(&ts, &[]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b1 = WsClient::connect(&relay.url, &ts[1], Some("s")).await;
    let mut b2 = WsClient::connect(&relay.url, &ts[1], Some("s")).await;
    assert_eq!(b1.expect_close().await, Some(4000));
    a.send(&a.request("after", Address::new(2, Some("s".into())), "x", b"1"))
        .await;
    assert_eq!(b2.expect_envelope().await.uid, "after");
}

async fn spoofed_source_is_refused_and_the_session_keeps_working(backing: Backing) {
    let ts = twins(1, 3);
    let relay = backing.relay(&ts, &[]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;

    let mut spoof = a.request("spoof", Address::new(2, None), "x", b"1");
    spoof.source = Some(Address::new(3, None));
    a.send(&spoof).await;
    let err = a.expect_envelope().await;
    assert_eq!(err.uid, "spoof");
    assert_eq!(error_of(&err).0, codes::SOURCE_MISMATCH);

    // A session id that is not ours is spoofing too.
    let mut spoof = a.request("spoof-sid", Address::new(2, None), "x", b"1");
    spoof.source = Some(Address::new(1, Some("other".into())));
    a.send(&spoof).await;
    assert_eq!(
        error_of(&a.expect_envelope().await).0,
        codes::SOURCE_MISMATCH
    );

    b.expect_silence(QUIET).await;
    a.send(&a.request("honest", Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, "honest");
}

async fn refusals_carry_distinct_codes(backing: Backing) {
    let mut ts = twins(1, 2);
    // Twin 9 lists no relay: not connected, and no relay to federate through (114). A twin
    // of another relay would be federated (relay/tests/federation_original_relay.rs).
    ts.push(TestTwin::new(9, KeyType::Ed25519));
    let relay = backing
        .relay(&ts, &["--domain", "relay.test", "--max-ttl", "600"])
        .await;
    // Twins 1 and 2 list no relays; with a domain configured they must list it to be ours.
    drop(relay);
    let ts: Vec<TestTwin> = ts
        .into_iter()
        .map(|t| {
            if t.id == 9 {
                t
            } else {
                t.on_relays(&["relay.test"])
            }
        })
        .collect();
    let relay = backing
        .relay(&ts, &["--domain", "relay.test", "--max-ttl", "600"])
        .await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;

    let mut expired = a.request("expired", Address::new(2, None), "x", b"1");
    expired.timestamp -= 1000;
    a.send(&expired).await;
    let mut long = a.request("long", Address::new(2, None), "x", b"1");
    long.expiration = 10_000;
    a.send(&long).await;
    a.send(&a.request("unknown", Address::new(77, None), "x", b"1"))
        .await;
    a.send(&a.request("foreign", Address::new(9, None), "x", b"1"))
        .await;
    let mut ff = a.request("ff", Address::new(2, None), "x", b"1");
    ff.tags = Some("fail-fast".into());
    a.send(&ff).await;
    let mut empty = a.request("empty", Address::new(2, None), "x", b"1");
    empty.message = None;
    a.send(&empty).await;

    let mut seen = Vec::new();
    for _ in 0..6 {
        let env = a.expect_envelope().await;
        let (code, message) = error_of(&env);
        assert!(!message.is_empty());
        assert_eq!(env.destination, Some(Address::new(1, None)));
        seen.push((env.uid.clone(), code));
    }
    seen.sort();
    let mut expected = vec![
        ("empty".to_string(), codes::INVALID_MESSAGE),
        ("expired".to_string(), codes::VALIDATION),
        ("ff".to_string(), codes::DESTINATION_OFFLINE),
        ("foreign".to_string(), codes::NOT_SERVED),
        ("long".to_string(), codes::VALIDATION),
        ("unknown".to_string(), codes::UNKNOWN_TWIN),
    ];
    expected.sort();
    assert_eq!(seen, expected);
}

async fn envelope_ping_is_answered_with_a_pong(backing: Backing) {
    let ts = twins(1, 1);
    let relay = backing.relay(&ts, &[]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut ping = a.request("p-1", Address::new(0, None), "", b"");
    ping.message = Some(Message::Ping(rmb_proto::Ping {}));
    a.send(&ping).await;
    let pong = a.expect_envelope().await;
    assert_eq!(pong.uid, "p-1");
    assert!(matches!(pong.message, Some(Message::Pong(_))));
    assert_eq!(pong.destination, Some(Address::new(1, None)));
}

async fn mailbox_bound_refuses_mail_beyond_it(backing: Backing) {
    let ts = twins(1, 2);
    let relay = backing.relay(&ts, &["--mailbox-max", "3"]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    for i in 0..4 {
        a.send(&a.request(&format!("mb-{i}"), Address::new(2, None), "x", b"1"))
            .await;
    }
    let err = a.expect_envelope().await;
    assert_eq!(err.uid, "mb-3");
    assert_eq!(error_of(&err).0, codes::MAILBOX_FULL);
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    for i in 0..3 {
        assert_eq!(b.expect_envelope().await.uid, format!("mb-{i}"));
    }
}

async fn rate_limit_refuses_the_excess_and_serves_others(backing: Backing) {
    let ts = twins(1, 3);
    let relay = backing.relay(&ts, &["--rate-messages", "5"]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    let mut c = WsClient::connect(&relay.url, &ts[2], None).await;
    // Burst is twice the rate: 10 pass, the rest are refused.
    for i in 0..15 {
        a.send(&a.request(&format!("burst-{i}"), Address::new(2, None), "x", b"1"))
            .await;
    }
    let mut limited = 0;
    while let Some(Received::Envelope(env)) = a.next(QUIET).await {
        assert_eq!(error_of(&env).0, codes::RATE_LIMITED);
        limited += 1;
    }
    assert!(limited >= 4, "expected about 5 refusals, got {limited}");
    let mut delivered = 0;
    while let Some(Received::Envelope(_)) = b.next(QUIET).await {
        delivered += 1;
    }
    assert_eq!(delivered + limited, 15);
    // Another twin is unaffected.
    c.send(&c.request("c-1", Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, "c-1");
}
