//! Attack suite, handshake floods from one address: with `--handshake-rate-per-ip`, one
//! client address gets 429 beyond its bucket before any token is checked, while sessions
//! already open and clients from other addresses are served as usual.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use prost::Message as _;
use rmb_proto::{Address, Envelope};
use rmb_testkit::client::{token_for, WsClient};
use rmb_testkit::relay::{http_get, metric_value, TestRelay};
use rmb_testkit::twins::{twins, TestTwin};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// A handshake as `twin` from the local address `from` (any 127.0.0.0/8 address works on
/// Linux loopback); the open websocket, or the HTTP status it was refused with.
async fn open_from(
    relay: &TestRelay,
    from: &str,
    twin: &TestTwin,
    sid: &str,
) -> Result<WebSocketStream<TcpStream>, u16> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind");
    let stream = socket.connect(relay.addr).await.expect("connect");
    let url = format!("{}/?{}", relay.url, token_for(twin, Some(sid)));
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed oddly: {e}"),
    }
}

async fn handshake_from(relay: &TestRelay, from: &str, twin: &TestTwin, sid: &str) -> u16 {
    match open_from(relay, from, twin, sid).await {
        Ok(_) => 101,
        Err(status) => status,
    }
}

#[tokio::test]
async fn a_handshake_flood_from_one_address_gets_429_and_spares_everyone_else() {
    let ts = twins(1, 3);
    let relay = TestRelay::start(&ts, &["--handshake-rate-per-ip", "2"]).await;
    // An honest session opened before the flood, from the flooding address itself.
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;

    let mut refused = 0;
    for i in 0..30 {
        match handshake_from(&relay, "127.0.0.1", &ts[2], &format!("flood-{i}")).await {
            429 => refused += 1,
            101 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    // A burst of 4 and 2 more a second: most of 30 back-to-back handshakes are refused.
    assert!(refused >= 20, "only {refused} of 30 refused");
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    assert_eq!(
        metric_value(
            &metrics,
            "rmb_relay_limit_hits_total{limit=\"handshake_rate\"}"
        ),
        refused as f64
    );
    assert_eq!(
        metric_value(
            &metrics,
            "rmb_relay_auth_failures_total{reason=\"handshake_rate\"}"
        ),
        refused as f64
    );

    // Another address has its own bucket: it connects and is reached by the session opened
    // before the flood, which kept working throughout.
    let mut other = open_from(&relay, "127.0.0.2", &ts[1], "other")
        .await
        .expect("another address is not limited");
    a.send(&a.request(
        "after-flood",
        Address::new(2, Some("other".into())),
        "x",
        b"1",
    ))
    .await;
    let frame = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match other.next().await {
                Some(Ok(Message::Binary(bytes))) => return bytes,
                Some(Ok(_)) => continue,
                other => panic!("session from 127.0.0.2 ended: {other:?}"),
            }
        }
    })
    .await
    .expect("envelope in time");
    let env = Envelope::decode(frame).expect("an envelope");
    assert_eq!(env.uid, "after-flood");
}
