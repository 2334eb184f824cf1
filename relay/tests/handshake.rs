//! Session authentication happens before the websocket upgrade: every bad token gets its
//! HTTP status and reason, and the relay keeps serving honest twins.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rmb_identity::{issue_token, Claims, KeyType};
use rmb_proto::{unix_now, Address};
use rmb_testkit::client::WsClient;
use rmb_testkit::relay::{http_get, metric_value, TestRelay};
use rmb_testkit::twins::{twins, TestTwin};
use tokio_tungstenite::tungstenite::Error as WsError;

/// The HTTP status of a refused upgrade with this query string.
async fn refused_status(url: &str, query: &str) -> u16 {
    match WsClient::connect_raw(url, query).await {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(()) => panic!("handshake with {query:?} was accepted"),
    }
}

fn token(twin: &TestTwin, sub: u32, iat: u64, exp: u64) -> String {
    issue_token(
        &twin.signer,
        &Claims {
            sub,
            iat,
            exp,
            sid: None,
            aud: None,
        },
    )
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let ts = twins(1, 2);
    let stranger = TestTwin::seeded(1, KeyType::Ed25519, 99);
    let relay = TestRelay::start(&ts, &[]).await;
    let now = unix_now();

    // Expired, not yet valid, too long-lived.
    assert_eq!(
        refused_status(&relay.url, &token(&ts[0], 1, now - 600, now - 300)).await,
        401
    );
    assert_eq!(
        refused_status(&relay.url, &token(&ts[0], 1, now + 600, now + 700)).await,
        401
    );
    assert_eq!(
        refused_status(&relay.url, &token(&ts[0], 1, now, now + 7200)).await,
        401
    );
    // Forged: right claims, another key.
    assert_eq!(
        refused_status(&relay.url, &token(&stranger, 1, now, now + 60)).await,
        401
    );
    // Another twin's key, claiming twin 1.
    assert_eq!(
        refused_status(&relay.url, &token(&ts[1], 1, now, now + 60)).await,
        401
    );
    // Unknown twin.
    assert_eq!(
        refused_status(&relay.url, &token(&ts[0], 42, now, now + 60)).await,
        401
    );
    // Garbage and alg tricks.
    assert_eq!(refused_status(&relay.url, "not-a-token").await, 401);
    let none_alg = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":1,"iat":{now},"exp":{}}}"#, now + 60))
    );
    assert_eq!(refused_status(&relay.url, &none_alg).await, 401);
    assert_eq!(refused_status(&relay.url, &"a".repeat(5000)).await, 401);
    // Missing token.
    assert_eq!(refused_status(&relay.url, "").await, 401);

    let (_, metrics) = http_get(relay.addr, "/metrics").await.unwrap();
    for reason in [
        "expired_token",
        "token_not_yet_valid",
        "token_lifetime",
        "bad_signature",
        "unknown_twin",
        "malformed_token",
        "missing_token",
    ] {
        let line = format!("rmb_relay_auth_failures_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "metric for {reason} missing");
    }
    assert_eq!(
        metric_value(&metrics, "rmb_relay_auth_failures_total"),
        10.0
    );

    // Honest twins still get through.
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    a.send(&a.request("ok", Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, "ok");
}

#[tokio::test]
async fn bearer_header_is_accepted_instead_of_the_query_string() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut a = WsClient::connect_bearer(&relay.url, &ts[0]).await.unwrap();
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    b.send(&b.request("to-a", Address::new(1, None), "x", b"1"))
        .await;
    assert_eq!(a.expect_envelope().await.uid, "to-a");
}

#[tokio::test]
async fn connection_cap_answers_503_and_sessions_per_twin_429() {
    let ts = twins(1, 3);
    let relay = TestRelay::start(
        &ts,
        &["--max-connections", "2", "--max-sessions-per-twin", "1"],
    )
    .await;
    let _a = WsClient::connect(&relay.url, &ts[0], None).await;
    match WsClient::try_connect(&relay.url, &ts[0], Some("second")).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    let _b = WsClient::connect(&relay.url, &ts[1], None).await;
    match WsClient::try_connect(&relay.url, &ts[2], None).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn replacing_a_session_does_not_count_against_the_session_limit() {
    let ts = twins(1, 1);
    let relay = TestRelay::start(&ts, &["--max-sessions-per-twin", "1"]).await;
    let mut first = WsClient::connect(&relay.url, &ts[0], None).await;
    let _second = WsClient::connect(&relay.url, &ts[0], None).await;
    assert_eq!(first.expect_close().await, Some(4000));
}

#[tokio::test]
async fn upgrades_are_accepted_on_any_path_as_by_the_original_relay() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    // A relay URL with a path (`wss://relay.example/ws`), as some clients are configured.
    let mut a = WsClient::connect(&format!("{}/ws", relay.url), &ts[0], None).await;
    let mut b = WsClient::connect(&format!("{}/api/v1", relay.url), &ts[1], None).await;
    let req = a.request("any-path", Address::new(2, None), "x", b"1");
    a.send(&req).await;
    assert_eq!(b.expect_envelope().await, req);
    // Still authenticated on every path.
    assert_eq!(
        refused_status(&format!("{}/ws", relay.url), "garbage").await,
        401
    );
    // Plain requests keep their routes.
    assert_eq!(http_get(relay.addr, "/ws").await.map(|r| r.0), Some(404));
}
