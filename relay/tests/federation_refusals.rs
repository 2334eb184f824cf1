//! What a relay refuses from other relays: every link check (forged origin, wrong
//! destination domain, stale timestamp, replayed request, tampered body) and every envelope
//! check (unsigned, source twin 0, twin not served here), each with its reason and nothing
//! delivered; and the legacy `POST /` of one raw envelope.

mod federation_common;

use std::time::Duration;

use bytes::Bytes;
use federation_common::{http, metrics, series, start_pair, test_twins, Pair, A, B};
use prost::Message as _;
use rmb_federation::auth::{BATCH_CONTENT_TYPE, ENDPOINT};
use rmb_federation::{encode_batch, LinkAuth, RelayKey};
use rmb_proto::Envelope;
use rmb_testkit::client::WsClient;

/// Posts `body` to relay b's batch endpoint with a header signed by `key` as `origin`.
#[allow(clippy::too_many_arguments)]
async fn post_signed(
    pair: &Pair,
    key: &RelayKey,
    origin: &str,
    destination: &str,
    ts: u64,
    signed_body: &Bytes,
    sent_body: &Bytes,
) -> (u16, String) {
    let auth = LinkAuth::sign(key, "POST", ENDPOINT, origin, destination, ts, signed_body);
    post_with(pair, &auth, sent_body).await
}

async fn post_with(pair: &Pair, auth: &LinkAuth, body: &Bytes) -> (u16, String) {
    http(
        pair.b.addr,
        "POST",
        ENDPOINT,
        &[
            ("Authorization", auth.to_header()),
            ("Content-Type", BATCH_CONTENT_TYPE.to_string()),
        ],
        body,
    )
    .await
}

fn error_reason(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"].as_str().unwrap_or_default().to_string()
}

fn results(body: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["results"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn link_checks_refuse_forged_misdirected_stale_replayed_and_tampered_requests() {
    let twins = test_twins();
    let pair = start_pair(&twins, true, &[]).await;
    let alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    let env = alice.request("link-1", bob.address(), "x", b"hello");
    let body = encode_batch(std::slice::from_ref(&env));
    let now = rmb_proto::unix_now();

    // Forged origin: a key relay a never published, claiming to be relay a.
    let intruder = RelayKey::generate(now);
    let (status, text) = post_signed(&pair, &intruder, A, B, now, &body, &body).await;
    assert_eq!(
        (status, error_reason(&text).as_str()),
        (401, "unknown_key"),
        "{text}"
    );

    // Forged origin: relay a's key id, someone else's signature.
    let mut auth = LinkAuth::sign(&intruder, "POST", ENDPOINT, A, B, now, &body);
    auth.kid = pair.a.key.kid().to_string();
    let (status, text) = post_with(&pair, &auth, &body).await;
    assert_eq!(
        (status, error_reason(&text).as_str()),
        (401, "bad_signature"),
        "{text}"
    );

    // Signed for another relay.
    let (status, text) = post_signed(&pair, &pair.a.key, A, "c.example", now, &body, &body).await;
    assert_eq!(
        (status, error_reason(&text).as_str()),
        (421, "wrong_destination"),
        "{text}"
    );

    // Outside the timestamp window.
    let (status, text) = post_signed(&pair, &pair.a.key, A, B, now - 3600, &body, &body).await;
    assert_eq!(
        (status, error_reason(&text).as_str()),
        (401, "stale_timestamp"),
        "{text}"
    );

    // Body changed after signing.
    let mut other = env.clone();
    other.uid = "link-tampered".into();
    let tampered = encode_batch(&[other]);
    let (status, text) = post_signed(&pair, &pair.a.key, A, B, now, &body, &tampered).await;
    assert_eq!(
        (status, error_reason(&text).as_str()),
        (401, "body_hash_mismatch"),
        "{text}"
    );

    // None of those delivered anything.
    bob.expect_silence(Duration::from_millis(500)).await;

    // A good request is delivered once; the same request again is a replay.
    let auth = LinkAuth::sign(&pair.a.key, "POST", ENDPOINT, A, B, now, &body);
    let (status, text) = post_with(&pair, &auth, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(results(&text)[0]["status"], "accepted");
    let got = bob.next(Duration::from_secs(10)).await;
    assert!(matches!(got, Some(rmb_testkit::client::Received::Envelope(e)) if e.uid == "link-1"));
    let (status, text) = post_with(&pair, &auth, &body).await;
    assert_eq!(
        (status, error_reason(&text).as_str()),
        (409, "replayed"),
        "{text}"
    );
    bob.expect_silence(Duration::from_millis(500)).await;

    let text = metrics(pair.b.addr).await;
    for reason in [
        "unknown_key",
        "bad_signature",
        "wrong_destination",
        "stale_timestamp",
        "body_hash_mismatch",
        "replayed",
        "ok",
    ] {
        assert!(
            series(
                &text,
                "rmb_federation_inbound_requests_total",
                &[("outcome", reason)]
            ) >= 1.0,
            "{reason} not counted"
        );
    }
}

#[tokio::test]
async fn envelope_checks_refuse_each_bad_envelope_alone() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    let mut alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;

    let good = alice.request("good", bob.address(), "x", b"ok");
    let mut unsigned = alice.request("unsigned", bob.address(), "x", b"");
    unsigned.signature = None;
    let mut twin_zero = alice.request("zero", bob.address(), "x", b"");
    twin_zero.source = Some(rmb_proto::Address::new(0, None));
    let mut bad_sig = alice.request("bad-sig", bob.address(), "x", b"");
    bad_sig.uid = "bad-sig-changed".into();
    // For twin 10, which relay a serves, not relay b.
    let not_here = bob.request("not-here", alice.address(), "x", b"");
    let batch = [good, unsigned, twin_zero, bad_sig, not_here];
    let body = encode_batch(&batch);
    let now = rmb_proto::unix_now();
    let (status, text) = post_signed(&pair, &pair.a.key, A, B, now, &body, &body).await;
    assert_eq!(status, 200, "{text}");
    let results = results(&text);
    let verdicts: Vec<(String, String)> = results
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap_or_default().to_string(),
                r["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        vec![
            ("accepted".into(), "".into()),
            ("refused".into(), "unsigned".into()),
            ("refused".into(), "source_twin_zero".into()),
            ("refused".into(), "bad_signature".into()),
            ("refused".into(), "not_served".into()),
        ]
    );
    assert_eq!(results[1]["code"], 104);
    assert_eq!(results[4]["code"], 114);

    // Only the good one arrives; nothing reaches alice either.
    let got = bob.next(Duration::from_secs(10)).await;
    assert!(matches!(got, Some(rmb_testkit::client::Received::Envelope(e)) if e.uid == "good"));
    bob.expect_silence(Duration::from_millis(500)).await;
    alice.expect_silence(Duration::from_millis(200)).await;

    let text = metrics(pair.b.addr).await;
    for reason in [
        "unsigned",
        "source_twin_zero",
        "bad_signature",
        "not_served",
    ] {
        assert!(
            series(
                &text,
                "rmb_federation_inbound_envelopes_total",
                &[("result", "refused"), ("reason", reason)]
            ) >= 1.0,
            "{reason} not counted"
        );
    }
}

#[tokio::test]
async fn legacy_post_delivers_a_signed_envelope_and_refuses_an_unsigned_one() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    let alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;

    let signed = alice.request("legacy-1", bob.address(), "x", b"old relay");
    let (status, text) = http(pair.b.addr, "POST", "/", &[], &signed.encode_to_vec()).await;
    assert_eq!(status, 202, "{text}");
    let got = bob.next(Duration::from_secs(10)).await;
    assert!(matches!(got, Some(rmb_testkit::client::Received::Envelope(e)) if *e == signed));

    let mut unsigned: Envelope = alice.request("legacy-2", bob.address(), "x", b"");
    unsigned.signature = None;
    let (status, text) = http(pair.b.addr, "POST", "/", &[], &unsigned.encode_to_vec()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("unsigned"), "{text}");

    // Signed, but not what was signed: the payload changed on the way, or the signature is
    // someone else's (bob signing as alice). Only the signature check tells these apart.
    let mut tampered = alice.request("legacy-3", bob.address(), "x", b"original");
    tampered.payload = Some(rmb_proto::Payload::Plain(b"changed".to_vec()));
    let mut impostor = alice.request("legacy-4", bob.address(), "x", b"");
    impostor.signature = bob.request("legacy-4", bob.address(), "x", b"").signature;
    for forged in [tampered, impostor] {
        let (status, text) = http(pair.b.addr, "POST", "/", &[], &forged.encode_to_vec()).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("bad_signature"), "{text}");
    }
    bob.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn legacy_post_is_refused_when_turned_off() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &["--federation-legacy", "false"]).await;
    let alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    let signed = alice.request("legacy-off", bob.address(), "x", b"");
    let (status, _) = http(pair.b.addr, "POST", "/", &[], &signed.encode_to_vec()).await;
    assert_eq!(status, 404);
    bob.expect_silence(Duration::from_millis(300)).await;
}
