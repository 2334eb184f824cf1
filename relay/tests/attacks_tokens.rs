//! Attack suite, session tokens: tricks the existing handshake tests do not cover. Each case
//! is refused before the upgrade with 401 and its own metric reason, and honest twins keep
//! working on the same relay.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rmb_identity::{issue_token, Claims};
use rmb_proto::{unix_now, Address};
use rmb_testkit::client::WsClient;
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::{http_get, wait_ready, TestRelay};
use rmb_testkit::twins::{twins, TestTwin};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error as WsError;

async fn refused_status(url: &str, query: &str) -> u16 {
    match WsClient::connect_raw(url, query).await {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(()) => panic!("handshake with a forged token was accepted"),
    }
}

fn signed(twin: &TestTwin, claims: Claims) -> String {
    issue_token(&twin.signer, &claims)
}

fn claims(sub: u32, iat: u64, exp: u64, sid: Option<String>) -> Claims {
    Claims {
        sub,
        iat,
        exp,
        sid,
        aud: None,
    }
}

/// Re-signs nothing: swaps the header of a genuine token, keeping claims and signature.
fn with_header(token: &str, header_json: &str) -> String {
    let (_, rest) = token.split_once('.').expect("token has a header");
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header_json))
}

async fn failures(relay: &TestRelay, reason: &str) -> f64 {
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    let line = format!("rmb_relay_auth_failures_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn honest_twins_still_exchange(relay: &TestRelay, ts: &[TestTwin]) {
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    a.send(&a.request("honest", Address::new(ts[1].id, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, "honest");
}

#[tokio::test]
async fn alg_hs256_and_header_swaps_on_a_genuine_token_are_refused() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let now = unix_now();
    let genuine = signed(&ts[0], claims(1, now, now + 60, None));

    // HS256 with an HMAC over the signing input keyed with the (public) account key: the
    // classic confusion attack. Refused on the header alone.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":1,"iat":{now},"exp":{}}}"#, now + 60));
    let hs256 = format!("{header}.{body}.{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
    assert_eq!(refused_status(&relay.url, &hs256).await, 401);
    // The genuine signature under another alg label, and under a lowercase "rs512".
    assert_eq!(
        refused_status(&relay.url, &with_header(&genuine, r#"{"alg":"HS256"}"#)).await,
        401
    );
    assert_eq!(
        refused_status(&relay.url, &with_header(&genuine, r#"{"alg":"rs512"}"#)).await,
        401
    );
    // The right label but a header that is not the one signed: the signature covers the
    // header bytes, so a re-encoded (even equivalent) header breaks it.
    assert_eq!(
        refused_status(
            &relay.url,
            &with_header(&genuine, r#"{"typ":"JWT","alg":"RS512"}"#)
        )
        .await,
        401
    );
    // "none" with an empty and with a stripped signature segment.
    let none = with_header(&genuine, r#"{"alg":"none"}"#);
    let stripped = format!("{}.", none.rsplit_once('.').expect("three parts").0);
    assert_eq!(refused_status(&relay.url, &stripped).await, 401);

    assert_eq!(failures(&relay, "malformed_token").await, 4.0);
    assert_eq!(failures(&relay, "bad_signature").await, 1.0);
    honest_twins_still_exchange(&relay, &ts).await;
}

#[tokio::test]
async fn far_future_and_overflowing_times_are_refused() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let now = unix_now();
    // Properly signed, short-lived, but issued ten years from now.
    let ten_years = now + 10 * 365 * 86_400;
    let future = signed(&ts[0], claims(1, ten_years, ten_years + 60, None));
    assert_eq!(refused_status(&relay.url, &future).await, 401);
    // At the edge of u64: `iat + skew` and `exp + skew` must not wrap into validity.
    let edge = signed(&ts[0], claims(1, u64::MAX - 10, u64::MAX, None));
    assert_eq!(refused_status(&relay.url, &edge).await, 401);
    // exp before iat (negative lifetime), both around now.
    let backwards = signed(&ts[0], claims(1, now, now - 30, None));
    assert_eq!(refused_status(&relay.url, &backwards).await, 401);

    assert_eq!(failures(&relay, "token_not_yet_valid").await, 2.0);
    assert_eq!(failures(&relay, "token_lifetime").await, 1.0);
    honest_twins_still_exchange(&relay, &ts).await;
}

#[tokio::test]
async fn oversized_tokens_are_refused_even_when_properly_signed() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let now = unix_now();
    // A genuine signature over claims padded with a 5000-byte session id.
    let big = signed(&ts[0], claims(1, now, now + 60, Some("s".repeat(5000))));
    assert!(big.len() > rmb_identity::jwt::MAX_TOKEN_LEN);
    assert_eq!(refused_status(&relay.url, &big).await, 401);
    assert_eq!(failures(&relay, "malformed_token").await, 1.0);
    // A query far beyond any token (written by hand: websocket clients refuse to send it):
    // hyper refuses the head itself, nothing is parsed as a token, and the relay keeps serving.
    let mut stream = TcpStream::connect(relay.addr).await.expect("connect");
    let head = format!(
        "GET /?{} HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        "a".repeat(70_000)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut answer))
        .await
        .expect("relay answered")
        .unwrap_or(0);
    let status_line = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(
        status_line.starts_with("HTTP/1.1 4"),
        "unexpected answer {status_line:?}"
    );
    honest_twins_still_exchange(&relay, &ts).await;
}

#[tokio::test]
async fn a_token_replayed_after_expiry_is_refused_while_a_fresh_one_works() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &["--clock-skew", "0"]).await;
    let now = unix_now();
    // A token that was valid (an attacker captured it from a log or the wire), replayed after
    // its expiry. Its first use is allowed; once expired, the same bytes are refused.
    let captured = signed(&ts[0], claims(1, now - 120, now - 2, Some("s1".into())));
    assert_eq!(refused_status(&relay.url, &captured).await, 401);
    assert_eq!(failures(&relay, "expired_token").await, 1.0);
    // The same twin with a fresh token is let in on the same session id.
    let mut fresh = WsClient::connect(&relay.url, &ts[0], Some("s1")).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    b.send(&b.request("to-s1", Address::new(1, Some("s1".into())), "x", b"1"))
        .await;
    assert_eq!(fresh.expect_envelope().await.uid, "to-s1");
}

#[tokio::test]
async fn an_older_token_replayed_after_a_newer_one_cannot_take_the_session_over() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let now = unix_now();
    // The victim's session, opened with a token issued now.
    let mut victim = WsClient::connect(&relay.url, &ts[0], Some("s1")).await;
    // A token the victim issued half a minute ago, still valid, captured by an attacker
    // (a proxy log, a ws:// observer): it used to replace the victim's session.
    let captured = signed(&ts[0], claims(1, now - 30, now + 60, Some("s1".into())));
    assert_eq!(refused_status(&relay.url, &captured).await, 401);
    assert_eq!(failures(&relay, "stale_token").await, 1.0);
    // The victim's session is untouched: its mail still reaches it.
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    b.send(&b.request("still-mine", Address::new(1, Some("s1".into())), "x", b"1"))
        .await;
    assert_eq!(victim.expect_envelope().await.uid, "still-mine");
    // The same old token on another session id is another session: not refused as stale.
    let other_sid = signed(&ts[0], claims(1, now - 30, now + 60, Some("s2".into())));
    WsClient::connect_raw(&relay.url, &other_sid)
        .await
        .expect("an old but valid token opens a session nobody holds with a newer one");
    // The twin itself, reconnecting with a fresh token, still replaces its session.
    let mut again = WsClient::connect(&relay.url, &ts[0], Some("s1")).await;
    b.send(&b.request("reconnected", Address::new(1, Some("s1".into())), "x", b"2"))
        .await;
    assert_eq!(again.expect_envelope().await.uid, "reconnected");
}

/// Freshness is shared through Redis: a captured older token refused on the pod that saw
/// the newer one is refused on every other pod too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_token_replayed_to_another_pod_cannot_take_the_session_over() {
    let redis = RedisServer::start();
    let ts = twins(1, 2);
    let url = redis.url();
    let pod_a = TestRelay::start(&ts, &["--redis", &url]).await;
    let pod_b = TestRelay::start(&ts, &["--redis", &url]).await;
    for pod in [&pod_a, &pod_b] {
        wait_ready(pod.addr).await;
    }
    let now = unix_now();
    let mut victim = WsClient::connect(&pod_a.url, &ts[0], Some("s1")).await;
    let captured = signed(&ts[0], claims(1, now - 30, now + 60, Some("s1".into())));
    assert_eq!(refused_status(&pod_b.url, &captured).await, 401);
    assert_eq!(failures(&pod_b, "stale_token").await, 1.0);
    // The victim keeps its session, whichever pod its mail enters by.
    let mut b = WsClient::connect(&pod_b.url, &ts[1], None).await;
    b.send(&b.request("still-mine", Address::new(1, Some("s1".into())), "x", b"1"))
        .await;
    assert_eq!(victim.expect_envelope().await.uid, "still-mine");
    // The twin itself, reconnecting to the other pod with a fresh token, moves its session.
    let mut again = WsClient::connect(&pod_b.url, &ts[0], Some("s1")).await;
    b.send(&b.request("moved", Address::new(1, Some("s1".into())), "x", b"2"))
        .await;
    assert_eq!(again.expect_envelope().await.uid, "moved");
}

#[tokio::test]
async fn a_token_meant_for_another_relay_is_refused_and_one_for_this_relay_accepted() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &["--domain", "relay-a.example"]).await;
    let now = unix_now();
    let for_audience = |aud: &str| {
        let mut c = claims(1, now, now + 60, None);
        c.aud = Some(aud.to_string());
        signed(&ts[0], c)
    };
    // A token the twin gave relay b (whose operator can read it) is no key to relay a.
    assert_eq!(
        refused_status(&relay.url, &for_audience("relay-b.example")).await,
        401
    );
    assert_eq!(failures(&relay, "wrong_audience").await, 1.0);
    WsClient::connect_raw(&relay.url, &for_audience("Relay-A.example"))
        .await
        .expect("a token naming this relay's domain (any case) is accepted");
    honest_twins_still_exchange(&relay, &ts).await;
}
