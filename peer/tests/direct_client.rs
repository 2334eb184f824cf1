//! The direct client against a real relay running in-process: calls between two twins,
//! envelope pings, refusals, and confirmed delivery on close.

use std::time::Duration;

use rmb_peer::direct::{remote_error, verify_from, ClientError, DirectClient};
use rmb_proto::{codes, Address, Kind, Message, Payload};
use rmb_testkit::relay::TestRelay;
use rmb_testkit::twins::{twins, TestTwin};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(relay: &TestRelay, twin: &TestTwin, sid: Option<&str>) -> DirectClient {
    DirectClient::connect(
        &relay.url,
        twin.signer.clone(),
        twin.id,
        sid.map(str::to_string),
    )
    .await
    .unwrap_or_else(|e| panic!("twin {} cannot connect: {e}", twin.id))
}

fn plain(env: &rmb_proto::Envelope) -> &[u8] {
    match &env.payload {
        Some(Payload::Plain(p)) => p,
        other => panic!("expected a plain payload, got {other:?}"),
    }
}

#[tokio::test]
async fn direct_client_calls_a_twin_through_a_relay() {
    // Twin 1 signs with sr25519 and twin 2 with ed25519: both key types on both ends.
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut caller = connect(&relay, &ts[0], None).await;
    let mut callee = connect(&relay, &ts[1], Some("worker")).await;

    let serve = tokio::spawn(async move {
        let req = callee.recv().await.expect("request arrives");
        assert_eq!(req.kind(), Kind::Request);
        assert_eq!(req.source, Some(Address::new(1, None)));
        assert_eq!(req.schema.as_deref(), Some("application/json"));
        let Some(Message::Request(r)) = &req.message else {
            panic!("not a request: {req:?}")
        };
        assert_eq!(r.command, "calc.add");
        verify_from(&req, &ts[0].signer.public_key()).expect("request signed by twin 1");
        let mut answer = b"sum of ".to_vec();
        answer.extend_from_slice(plain(&req));
        let resp = callee.response_to(&req, answer);
        callee.send(&resp).await.expect("response sent");
        callee.close().await.expect("callee closes");
        ts
    });

    let resp = caller
        .call(
            Address::new(2, Some("worker".into())),
            "calc.add",
            b"[1,2]".to_vec(),
            WAIT,
        )
        .await
        .expect("the call is answered");
    let ts = serve.await.expect("callee task");
    assert_eq!(resp.kind(), Kind::Response);
    assert_eq!(plain(&resp), b"sum of [1,2]");
    assert_eq!(resp.source, Some(Address::new(2, Some("worker".into()))));
    assert_eq!(resp.destination, Some(Address::new(1, None)));
    verify_from(&resp, &ts[1].signer.public_key()).expect("response signed by twin 2");
    assert!(
        verify_from(&resp, &ts[0].signer.public_key()).is_err(),
        "not by twin 1"
    );
    caller.close().await.expect("caller closes");
}

#[tokio::test]
async fn envelope_ping_gets_a_pong_with_the_same_uid() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    for (twin, sid) in [(&ts[0], None), (&ts[1], Some("s1"))] {
        let mut client = connect(&relay, twin, sid).await;
        let ping = client.ping();
        assert_eq!(ping.destination, Some(Address::new(0, None)));
        verify_from(&ping, &twin.signer.public_key()).expect("pings are signed");
        client.send(&ping).await.expect("ping sent");
        let pong = client
            .wait_for(&ping.uid, WAIT)
            .await
            .expect("pong arrives");
        assert_eq!(pong.uid, ping.uid);
        assert_eq!(pong.kind(), Kind::Pong);
        assert_eq!(
            pong.destination,
            Some(Address::new(twin.id, sid.map(str::to_string)))
        );
        client.close().await.expect("closes");
    }
}

#[tokio::test]
async fn call_to_an_unknown_twin_returns_the_relay_error() {
    let ts = twins(1, 1);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut client = connect(&relay, &ts[0], None).await;
    let answer = client
        .call(Address::new(77, None), "x.y", b"{}".to_vec(), WAIT)
        .await
        .expect("the relay answers");
    assert_eq!(answer.kind(), Kind::Error);
    let (code, message) = remote_error(&answer).expect("an error envelope");
    assert_eq!(code, codes::UNKNOWN_TWIN);
    assert!(message.contains("77"), "{message}");
    assert!(remote_error(&client.ping()).is_none());
}

#[tokio::test]
async fn call_times_out_when_nobody_answers() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut client = connect(&relay, &ts[0], None).await;
    // Twin 2 is known but offline: the request waits in its mailbox, no answer comes.
    let err = client
        .call(
            Address::new(2, None),
            "x.y",
            b"{}".to_vec(),
            Duration::from_millis(300),
        )
        .await
        .expect_err("no answer");
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn call_ignores_envelopes_with_other_uids() {
    let ts = twins(1, 3);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut caller = connect(&relay, &ts[0], None).await;
    let mut callee = connect(&relay, &ts[1], None).await;
    let mut other = connect(&relay, &ts[2], None).await;

    let serve = tokio::spawn(async move {
        let req = callee.recv().await.expect("request arrives");
        // Noise first: an unrelated request from twin 3 and a stale response from twin 2.
        let noise = other.request(1, None, "noise", b"1".to_vec(), 60);
        other.send(&noise).await.expect("noise sent");
        let mut stale = callee.response_to(&req, b"stale".to_vec());
        stale.uid = "some-other-uid".into();
        rmb_identity::sign_envelope(&mut stale, callee.signer());
        callee.send(&stale).await.expect("stale sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
        callee
            .send(&callee.response_to(&req, b"real".to_vec()))
            .await
            .expect("response sent");
        (callee, other)
    });
    let resp = caller
        .call(Address::new(2, None), "x", b"{}".to_vec(), WAIT)
        .await
        .expect("answered");
    assert_eq!(plain(&resp), b"real");
    drop(serve.await.expect("callee task"));
}

#[tokio::test]
async fn closing_confirms_what_was_read_so_nothing_comes_twice() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut sender = connect(&relay, &ts[0], None).await;
    let first = sender.request(2, None, "x", b"1".to_vec(), 60);
    sender.send(&first).await.expect("sent");

    let mut receiver = connect(&relay, &ts[1], None).await;
    assert_eq!(receiver.recv().await.expect("delivered").uid, first.uid);
    receiver.close().await.expect("closes");

    let second = sender.request(2, None, "x", b"2".to_vec(), 60);
    sender.send(&second).await.expect("sent");
    let mut receiver = connect(&relay, &ts[1], None).await;
    let next = tokio::time::timeout(WAIT, receiver.recv())
        .await
        .expect("delivered in time")
        .expect("an envelope");
    assert_eq!(next.uid, second.uid, "the first one was confirmed on close");
}

#[tokio::test]
async fn refused_sessions_and_bad_urls_are_typed_errors() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts[..1], &[]).await;
    // Twin 2 is not in the relay's directory: the handshake is refused with 401.
    let err = DirectClient::connect(&relay.url, ts[1].signer.clone(), 2, None)
        .await
        .expect_err("refused");
    match err {
        ClientError::Refused { status, reason } => {
            assert_eq!(status, 401);
            assert!(reason.contains("unknown twin"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    // A token signed by the wrong key.
    let err = DirectClient::connect(&relay.url, ts[1].signer.clone(), 1, None)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ClientError::Refused { status: 401, .. }),
        "{err}"
    );
    let err = DirectClient::connect("https://relay.example", ts[0].signer.clone(), 1, None)
        .await
        .expect_err("not a websocket url");
    assert!(matches!(err, ClientError::InvalidUrl { .. }), "{err}");
}

#[tokio::test]
async fn a_replaced_session_reports_the_close() {
    let ts = twins(1, 1);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut first = connect(&relay, &ts[0], Some("s")).await;
    let _second = connect(&relay, &ts[0], Some("s")).await;
    let err = tokio::time::timeout(WAIT, first.recv())
        .await
        .expect("closed in time")
        .expect_err("closed");
    assert!(
        matches!(
            err,
            ClientError::Closed {
                code: Some(4000),
                ..
            }
        ),
        "{err}"
    );
}
