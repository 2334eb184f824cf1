//! Attack suite, federation ingress: request smuggling between the legacy `POST /` (one raw
//! envelope) and the signed `POST /federation/v1/envelopes` (a signed batch). A request meant
//! for one endpoint never passes on the other, a header signed for one path never
//! authenticates the other, ambiguous HTTP framing cannot hide a second request behind the
//! first, and an envelope replayed through either endpoint is delivered once.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod federation_common;

use std::time::Duration;

use bytes::Bytes;
use federation_common::{http, start_pair, start_pair_with, test_twins, wait_series, A, B};
use prost::Message as _;
use rmb_federation::auth::{BATCH_CONTENT_TYPE, ENDPOINT};
use rmb_federation::{encode_batch, LinkAuth};
use rmb_testkit::client::{Received, WsClient};
use rmb_testkit::twins::TestTwin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QUIET: Duration = Duration::from_millis(500);

fn reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Writes `raw` on one connection and reads everything the relay answers until it closes
/// (a reset after the answer, for bytes the relay never read, also ends the read).
async fn raw_exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "relay kept the connection open: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn a_signed_batch_sent_to_the_legacy_endpoint_is_not_delivered() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    let alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    let env = alice.request("batch-on-legacy", bob.address(), "x", b"1");
    let body = encode_batch(std::slice::from_ref(&env));
    let now = rmb_proto::unix_now();
    let auth = LinkAuth::sign(&pair.a.key, "POST", ENDPOINT, A, B, now, &body);
    // The batch framing (a length prefix) is not an envelope: refused, nothing delivered,
    // and the link's Authorization does not make the legacy endpoint trust anything.
    let (status, text) = http(
        pair.b.addr,
        "POST",
        "/",
        &[("Authorization", auth.to_header())],
        &body,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    bob.expect_silence(QUIET).await;
    // The same request on its own endpoint is fine: the refusal above was not a replay mark.
    let (status, text) = http(
        pair.b.addr,
        "POST",
        ENDPOINT,
        &[
            ("Authorization", auth.to_header()),
            ("Content-Type", BATCH_CONTENT_TYPE.to_string()),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let got = bob.next(Duration::from_secs(10)).await;
    assert!(matches!(got, Some(Received::Envelope(e)) if e.uid == "batch-on-legacy"));
}

#[tokio::test]
async fn legacy_requests_and_headers_signed_for_another_path_do_not_pass_the_signed_endpoint() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    let alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    let env = alice.request("legacy-on-signed", bob.address(), "x", b"1");
    let raw = Bytes::from(env.encode_to_vec());
    let now = rmb_proto::unix_now();

    // A legacy request (one raw, twin-signed envelope, no link signature): refused by its
    // content type before the body is read, and with the batch content type by the link check.
    let (status, text) = http(pair.b.addr, "POST", ENDPOINT, &[], &raw).await;
    assert_eq!(status, 415, "{text}");
    let batch_type = [("Content-Type", BATCH_CONTENT_TYPE.to_string())];
    let (status, text) = http(pair.b.addr, "POST", ENDPOINT, &batch_type, &raw).await;
    assert_eq!(status, 401, "{text}");
    // A link header signed for `POST /` (as if the legacy path were part of the link).
    let batch = encode_batch(std::slice::from_ref(&env));
    let for_root = LinkAuth::sign(&pair.a.key, "POST", "/", A, B, now, &batch);
    let headers = [
        ("Authorization", for_root.to_header()),
        ("Content-Type", BATCH_CONTENT_TYPE.to_string()),
    ];
    let (status, text) = http(pair.b.addr, "POST", ENDPOINT, &headers, &batch).await;
    assert_eq!(
        (status, reason(&text).as_str()),
        (401, "bad_signature"),
        "{text}"
    );
    // The endpoint's path with a query or a trailing slash is not a second endpoint.
    let genuine = LinkAuth::sign(&pair.a.key, "POST", ENDPOINT, A, B, now, &batch);
    let headers = [
        ("Authorization", genuine.to_header()),
        ("Content-Type", BATCH_CONTENT_TYPE.to_string()),
    ];
    let slash = format!("{ENDPOINT}/");
    let (status, _) = http(pair.b.addr, "POST", &slash, &headers, &batch).await;
    assert_eq!(status, 404);
    bob.expect_silence(QUIET).await;
    // The genuine request is accepted once; bob's session was never disturbed.
    let (status, text) = http(pair.b.addr, "POST", ENDPOINT, &headers, &batch).await;
    assert_eq!(status, 200, "{text}");
    let got = bob.next(Duration::from_secs(10)).await;
    assert!(matches!(got, Some(Received::Envelope(e)) if e.uid == "legacy-on-signed"));
}

#[tokio::test]
async fn ambiguous_http_framing_cannot_hide_a_second_request() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    let alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    let hidden_env = alice.request("smuggled", bob.address(), "x", b"1");
    let hidden_body = hidden_env.encode_to_vec();
    let mut hidden = format!(
        "POST / HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n",
        hidden_body.len()
    )
    .into_bytes();
    hidden.extend_from_slice(&hidden_body);

    // TE.CL: chunked says the body is empty, Content-Length says it holds the hidden request.
    // A proxy trusting Content-Length forwards both as one; the relay must not then serve the
    // tail as a second request. hyper uses the chunked framing (dropping Content-Length), so
    // the ingress refuses it before the body (411: federation requests must give a length)
    // and closes the connection.
    let mut te_cl = format!(
        "POST / HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        hidden.len() + 5
    )
    .into_bytes();
    te_cl.extend_from_slice(&hidden);
    let answer = raw_exchange(pair.b.addr, &te_cl).await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");

    // Two different Content-Length values: refused outright.
    let mut two_cl = b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n".to_vec();
    two_cl.extend_from_slice(format!("Content-Length: {}\r\n\r\n", hidden.len()).as_bytes());
    two_cl.extend_from_slice(&hidden);
    let answer = raw_exchange(pair.b.addr, &two_cl).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");

    // A non-chunked Transfer-Encoding is refused rather than guessed at.
    let mut gzip = b"POST / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec();
    gzip.extend_from_slice(&hidden);
    let answer = raw_exchange(pair.b.addr, &gzip).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    bob.expect_silence(QUIET).await;
    // The hidden envelope is perfectly valid on its own: sent openly, it is delivered.
    let (status, text) = http(pair.b.addr, "POST", "/", &[], &hidden_body).await;
    assert_eq!(status, 202, "{text}");
    let got = bob.next(Duration::from_secs(10)).await;
    assert!(matches!(got, Some(Received::Envelope(e)) if e.uid == "smuggled"));
}

#[tokio::test]
async fn an_envelope_replayed_across_both_endpoints_is_delivered_once() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    let alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    let env = alice.request("replayed-uid", bob.address(), "x", b"1");
    let raw = env.encode_to_vec();

    let (status, text) = http(pair.b.addr, "POST", "/", &[], &raw).await;
    assert_eq!(status, 202, "{text}");
    let got = bob.next(Duration::from_secs(10)).await;
    assert!(matches!(got, Some(Received::Envelope(e)) if e.uid == "replayed-uid"));

    // The same bytes again on the legacy endpoint, then inside a fresh, correctly signed
    // batch (new nonce, so the link-level replay check cannot catch it): both are answered
    // "accepted" (a sender that lost the answer may resend) and neither is delivered again.
    let (status, text) = http(pair.b.addr, "POST", "/", &[], &raw).await;
    assert_eq!(status, 202, "{text}");
    let batch = encode_batch(std::slice::from_ref(&env));
    let auth = LinkAuth::sign(
        &pair.a.key,
        "POST",
        ENDPOINT,
        A,
        B,
        rmb_proto::unix_now(),
        &batch,
    );
    let headers = [
        ("Authorization", auth.to_header()),
        ("Content-Type", BATCH_CONTENT_TYPE.to_string()),
    ];
    let (status, text) = http(pair.b.addr, "POST", ENDPOINT, &headers, &batch).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("accepted"), "{text}");
    bob.expect_silence(QUIET).await;

    // A new envelope from the same twin still flows.
    let fresh = alice.request("fresh-uid", bob.address(), "x", b"2");
    let (status, text) = http(pair.b.addr, "POST", "/", &[], &fresh.encode_to_vec()).await;
    assert_eq!(status, 202, "{text}");
    let got = bob.next(Duration::from_secs(10)).await;
    assert!(matches!(got, Some(Received::Envelope(e)) if e.uid == "fresh-uid"));
}

#[tokio::test]
async fn requests_naming_made_up_origins_neither_grow_the_metrics_nor_stop_real_relays() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    let mut alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    // Real traffic first: relay b learns relay a's key document.
    alice
        .send(&alice.request("before", bob.address(), "x", b"1"))
        .await;
    let got = bob.next(Duration::from_secs(30)).await;
    assert!(matches!(got, Some(Received::Envelope(e)) if e.uid == "before"));

    // Anyone can write a well-formed header naming any origin; each one used to make relay b
    // fetch that origin's key document and add a metric series for it.
    let intruder = rmb_federation::RelayKey::generate(rmb_proto::unix_now());
    let env = alice.request("intruder", bob.address(), "x", b"1");
    let body = encode_batch(std::slice::from_ref(&env));
    for i in 0..30 {
        let origin = format!("made-up-{i}.invalid");
        let now = rmb_proto::unix_now();
        let auth = LinkAuth::sign(&intruder, "POST", ENDPOINT, &origin, B, now, &body);
        let headers = [
            ("Authorization", auth.to_header()),
            ("Content-Type", BATCH_CONTENT_TYPE.to_string()),
        ];
        let (status, text) = http(pair.b.addr, "POST", ENDPOINT, &headers, &body).await;
        // No document can be had for a name that does not resolve (or the fetch budget for
        // new origins is spent): "retry later", with no resolver or address detail.
        assert_eq!(
            (status, reason(&text).as_str()),
            (503, "key_unavailable"),
            "{text}"
        );
        assert!(
            !text.contains("invalid") && !text.contains("127.0.0.1"),
            "{text}"
        );
    }
    let metrics = federation_common::metrics(pair.b.addr).await;
    assert!(
        !metrics.contains("made-up-"),
        "a made-up origin became a metric label"
    );
    bob.expect_silence(QUIET).await;

    // The real relay is unaffected: its document is cached, no fetch budget needed.
    alice
        .send(&alice.request("after", bob.address(), "x", b"2"))
        .await;
    let got = bob.next(Duration::from_secs(30)).await;
    assert!(matches!(got, Some(Received::Envelope(e)) if e.uid == "after"));
}

#[tokio::test]
async fn twins_naming_made_up_relay_domains_get_no_metric_series_of_their_own() {
    // Anyone can register twins whose records name any relay domain; each used to add
    // outbound metric series (queued, failed, depth, request time) of its own.
    let twins = test_twins();
    let made_up: Vec<TestTwin> = (0..40u32)
        .map(|i| {
            TestTwin::new(200 + i, rmb_identity::KeyType::Ed25519)
                .on_relays(&[&format!("made-up-relay-{i}.invalid")])
        })
        .collect();
    let pair = start_pair_with(&twins, &made_up, false, &[]).await;
    let mut alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    for twin in &made_up {
        let dest = rmb_proto::Address::new(twin.id, None);
        alice.send(&alice.request("nowhere", dest, "x", b"1")).await;
    }
    // A real relay that accepts mail earns its own label.
    alice
        .send(&alice.request("real", bob.address(), "x", b"2"))
        .await;
    let got = bob.next(Duration::from_secs(30)).await;
    assert!(matches!(got, Some(Received::Envelope(e)) if e.uid == "real"));
    wait_series(
        pair.a.addr,
        "rmb_federation_queued_total",
        &[("domain", "other")],
        40.0,
    )
    .await;
    wait_series(
        pair.a.addr,
        "rmb_federation_sent_total",
        &[("domain", B)],
        1.0,
    )
    .await;
    let metrics = federation_common::metrics(pair.a.addr).await;
    assert!(
        !metrics.contains("made-up-relay-"),
        "a made-up relay domain became a metric label"
    );
}
