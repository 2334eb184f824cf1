//! Federation between two relays with different domains on loopback: envelopes for twins
//! served by the other relay travel over the signed link, both ways, encrypted or not; a
//! relay that is down gets its mail once it is back; expired mail and mail no relay accepts
//! turn into signed error envelopes to the source; a twin's second relay is used when its
//! first is down.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod federation_common;

use std::time::Duration;

use federation_common::{metrics, start_pair, test_twins, wait_series, A, B};
use rmb_identity::{sign_envelope, SharedKey};
use rmb_proto::{codes, Envelope, Message, Payload};
use rmb_testkit::client::{error_of, WsClient};

/// Waits for the next envelope, up to `secs` seconds.
async fn next_envelope(client: &mut WsClient, secs: u64) -> Envelope {
    match client.next(Duration::from_secs(secs)).await {
        Some(rmb_testkit::client::Received::Envelope(env)) => *env,
        other => panic!(
            "twin {} expected an envelope, got {other:?}",
            client.twin.id
        ),
    }
}

fn plain(env: &Envelope) -> &[u8] {
    match &env.payload {
        Some(Payload::Plain(p)) => p,
        other => panic!("expected a plain payload, got {other:?}"),
    }
}

async fn requests_and_responses_flow_both_ways(redis: bool) {
    let twins = test_twins();
    let pair = start_pair(&twins, redis, &[]).await;
    let mut alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;

    // a → b, plain request, plain response.
    let req = alice.request("plain-1", bob.address(), "calc.add", b"{\"a\":1}");
    alice.send(&req).await;
    let got = next_envelope(&mut bob, 20).await;
    assert_eq!(got, req, "the envelope arrives exactly as sent");
    let resp = bob.response_to(&got, b"2");
    bob.send(&resp).await;
    let answer = next_envelope(&mut alice, 20).await;
    assert_eq!(answer.uid, "plain-1");
    assert!(matches!(answer.message, Some(Message::Response(_))));
    assert_eq!(plain(&answer), b"2");

    // b → a, encrypted request and response: the relays only ever see ciphertext.
    let to_alice = SharedKey::derive(
        twins.bob.signer.identity(),
        &twins.alice.signer.identity().encryption_public_key(),
    )
    .expect("shared key");
    let mut req = bob.request("cipher-1", alice.address(), "secret.echo", b"");
    req.payload = Some(Payload::Cipher(to_alice.encrypt(b"top secret")));
    sign_envelope(&mut req, &twins.bob.signer);
    bob.send(&req).await;
    let got = next_envelope(&mut alice, 20).await;
    assert_eq!(got.uid, "cipher-1");
    let from_bob = SharedKey::derive(
        twins.alice.signer.identity(),
        &twins.bob.signer.identity().encryption_public_key(),
    )
    .expect("shared key");
    let Some(Payload::Cipher(cipher)) = &got.payload else {
        panic!("expected a cipher payload, got {:?}", got.payload);
    };
    assert_eq!(from_bob.decrypt(cipher).expect("decrypts"), b"top secret");
    let mut resp = alice.response_to(&got, b"");
    resp.payload = Some(Payload::Cipher(from_bob.encrypt(b"echo: top secret")));
    sign_envelope(&mut resp, &twins.alice.signer);
    alice.send(&resp).await;
    let answer = next_envelope(&mut bob, 20).await;
    let Some(Payload::Cipher(cipher)) = &answer.payload else {
        panic!("expected a cipher payload");
    };
    assert_eq!(
        to_alice.decrypt(cipher).expect("decrypts"),
        b"echo: top secret"
    );

    wait_series(
        pair.a.addr,
        "rmb_federation_sent_total",
        &[("domain", B)],
        2.0,
    )
    .await;
    wait_series(
        pair.a.addr,
        "rmb_federation_key_fetches_total",
        &[("domain", B), ("result", "ok")],
        1.0,
    )
    .await;
    wait_series(
        pair.a.addr,
        "rmb_federation_inbound_envelopes_total",
        &[("result", "accepted")],
        2.0,
    )
    .await;
    let text = metrics(pair.a.addr).await;
    assert!(text.contains("rmb_federation_request_seconds_bucket"));
    assert!(text.contains("rmb_federation_queue_envelopes"));
}

#[tokio::test]
async fn requests_and_responses_flow_both_ways_over_redis() {
    requests_and_responses_flow_both_ways(true).await;
}

#[tokio::test]
async fn requests_and_responses_flow_both_ways_in_memory() {
    requests_and_responses_flow_both_ways(false).await;
}

#[tokio::test]
async fn key_document_lists_the_current_key() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    let (status, body) = rmb_testkit::relay::http_get(pair.a.addr, "/.well-known/rmb/relay.json")
        .await
        .expect("key document");
    assert_eq!(status, 200);
    let doc: rmb_federation::KeyDocument = serde_json::from_str(&body).expect("json");
    assert_eq!(doc.domains, vec![A.to_string()]);
    assert_eq!(doc.keys[0].kid, pair.a.key.kid());
    assert_eq!(doc.keys[0].public, hex::encode(pair.a.key.public_key()));
    assert_eq!(doc.keys[0].valid_until, None);
}

#[tokio::test]
async fn queued_envelopes_reach_a_relay_that_comes_back_and_expired_ones_return_errors() {
    let twins = test_twins();
    let mut pair = start_pair(&twins, true, &[]).await;
    let mut alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    pair.b.stop().await;

    let keep = alice.request(
        "while-down",
        rmb_proto::Address::new(twins.bob.id, None),
        "x",
        b"kept",
    );
    alice.send(&keep).await;
    let mut short = alice.request(
        "expires",
        rmb_proto::Address::new(twins.bob.id, None),
        "x",
        b"late",
    );
    short.expiration = 3;
    sign_envelope(&mut short, &twins.alice.signer);
    alice.send(&short).await;

    // The short one expires while b is down: a signed error from relay a comes back.
    let err = next_envelope(&mut alice, 30).await;
    assert_eq!(err.uid, "expires");
    let (code, message) = error_of(&err);
    assert_eq!(code, codes::VALIDATION, "{message}");
    assert!(message.contains("expired"), "{message}");
    rmb_identity::verify_envelope(&err, &pair.a.key.public_key())
        .expect("the error envelope is signed by relay a's identity key");
    assert!(err.tags.as_deref().unwrap_or("").contains(A));

    // Relay b comes back (same Redis): the kept envelope is delivered.
    pair.b.start().await;
    pair.wait_ready().await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    let got = next_envelope(&mut bob, 60).await;
    assert_eq!(got.uid, "while-down");
    assert_eq!(plain(&got), b"kept");
    bob.expect_silence(Duration::from_secs(1)).await;

    // Those failures happened before relay b ever answered this relay: they count under
    // `other` (a domain earns a label of its own once it accepts mail).
    wait_series(
        pair.a.addr,
        "rmb_federation_failed_total",
        &[("domain", "other"), ("reason", "expired")],
        1.0,
    )
    .await;
    wait_series(
        pair.a.addr,
        "rmb_federation_failed_total",
        &[("domain", "other"), ("reason", "connect")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_twins_second_relay_is_used_when_its_first_is_down() {
    let twins = test_twins();
    let pair = start_pair(&twins, true, &[]).await;
    let mut alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut carol = WsClient::connect(&pair.b.url(), &twins.carol, None).await;
    let req = alice.request("via-second", carol.address(), "x", b"hi");
    alice.send(&req).await;
    let got = next_envelope(&mut carol, 30).await;
    assert_eq!(got, req);
    wait_series(
        pair.a.addr,
        "rmb_federation_failed_total",
        &[("domain", "other")],
        1.0,
    )
    .await;
    wait_series(
        pair.a.addr,
        "rmb_federation_sent_total",
        &[("domain", B)],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn an_envelope_no_relay_accepts_returns_a_signed_error() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    let mut alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    // Bob's relay refuses an envelope whose signature was made by another key.
    let mut req = alice.request(
        "forged",
        rmb_proto::Address::new(twins.bob.id, None),
        "x",
        b"",
    );
    sign_envelope(&mut req, &twins.dave.signer);
    req.source = Some(alice.address());
    alice.send(&req).await;
    let err = next_envelope(&mut alice, 30).await;
    assert_eq!(err.uid, "forged");
    let (code, message) = error_of(&err);
    assert_eq!(code, codes::INVALID_SIGNATURE, "{message}");
    assert!(message.contains(B), "{message}");
    rmb_identity::verify_envelope(&err, &pair.a.key.public_key()).expect("signed by relay a");
}

#[tokio::test]
async fn a_full_outbound_queue_refuses_new_envelopes_with_503() {
    let twins = test_twins();
    let mut pair = start_pair(&twins, false, &["--federation-queue-max", "1"]).await;
    pair.b.stop().await;
    let mut alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let bob = rmb_proto::Address::new(twins.bob.id, None);
    let first = alice.request("first", bob.clone(), "x", b"");
    alice.send(&first).await;
    // Relay b never answered this relay: it has no label of its own yet (made-up domains
    // named by twin records look the same), so its queue counts under `other`.
    wait_series(
        pair.a.addr,
        "rmb_federation_queue_envelopes",
        &[("domain", "other")],
        1.0,
    )
    .await;
    let second = alice.request("second", bob, "x", b"");
    alice.send(&second).await;
    let err = next_envelope(&mut alice, 10).await;
    assert_eq!(err.uid, "second");
    let (code, message) = error_of(&err);
    assert_eq!(code, codes::UNAVAILABLE, "{message}");
    assert!(message.contains("full"), "{message}");
}
