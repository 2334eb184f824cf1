//! Attack suite, transport: websocket fragmentation abuse, slowloris on the HTTP upgrade and
//! connection floods past the cap. Each abusive connection is refused or dropped alone and
//! honest sessions on the same relay keep exchanging.

use std::time::Duration;

use prost::Message as _;
use rmb_proto::Address;
use rmb_testkit::client::{Received, WsClient};
use rmb_testkit::relay::{http_get, metric_value, TestRelay};
use rmb_testkit::twins::{twins, TestTwin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Generous bound for the relay to act; the tests assert what happens, not how fast.
const PATIENCE: Duration = Duration::from_secs(15);

fn fragment(data: Vec<u8>, first: bool, last: bool) -> Message {
    let opcode = if first {
        OpCode::Data(Data::Binary)
    } else {
        OpCode::Data(Data::Continue)
    };
    Message::Frame(Frame::message(data, opcode, last))
}

async fn honest_exchange(url: &str, a: &TestTwin, b: &TestTwin, uid: &str) {
    // A fresh session id per exchange: an earlier exchange's unconfirmed envelope may
    // legitimately be delivered again to the same session (at-least-once delivery).
    let mut a = WsClient::connect(url, a, Some("honest")).await;
    let mut b = WsClient::connect(url, b, Some(uid)).await;
    a.send(&a.request(uid, b.address(), "x", b"1")).await;
    assert_eq!(b.expect_envelope().await.uid, uid);
}

/// Whether the relay ended the connection (close frame, error or EOF) within `PATIENCE`.
async fn closed(client: &mut WsClient) -> bool {
    loop {
        match client.next(PATIENCE).await {
            Some(Received::Closed(_)) => return true,
            Some(Received::Envelope(_)) => continue,
            None => return false,
        }
    }
}

#[tokio::test]
async fn a_fragmented_message_over_the_envelope_limit_closes_with_1009() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &["--max-envelope-bytes", "4096"]).await;
    let mut bad = WsClient::connect(&relay.url, &ts[0], None).await;
    // Every fragment is far below the limit; together they are five times over it.
    bad.send_frame(fragment(vec![0x0a; 1000], true, false))
        .await;
    for _ in 0..19 {
        if bad
            .try_send_frame(fragment(vec![0x0a; 1000], false, false))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = bad
        .try_send_frame(fragment(vec![0x0a; 1000], false, true))
        .await;
    assert_eq!(bad.expect_close().await, Some(1009));
    honest_exchange(&relay.url, &ts[0], &ts[1], "after-big-fragments").await;
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    assert!(metrics.contains("rmb_relay_limit_hits_total{limit=\"envelope_size\"} 1"));
}

#[tokio::test]
async fn thousands_of_tiny_fragments_reassemble_into_the_one_envelope_they_carry() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    let env = a.request("fragmented", Address::new(2, None), "x", b"payload");
    let bytes = env.encode_to_vec();
    // One byte per frame, with 2000 empty continuation frames after the first byte.
    a.send_frame(fragment(bytes[..1].to_vec(), true, false))
        .await;
    for _ in 0..2000 {
        a.send_frame(fragment(Vec::new(), false, false)).await;
    }
    let rest = &bytes[1..];
    for (i, byte) in rest.iter().enumerate() {
        a.send_frame(fragment(vec![*byte], false, i + 1 == rest.len()))
            .await;
    }
    let got = b.expect_envelope().await;
    assert_eq!(got, env);
    // The fragmenting session is still a normal session.
    a.send(&a.request("plain-after", Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, "plain-after");
}

#[tokio::test]
async fn broken_fragment_sequences_drop_only_that_connection() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    // A continuation with no message started.
    let mut orphan = WsClient::connect(&relay.url, &ts[0], Some("orphan")).await;
    orphan
        .send_frame(fragment(vec![1, 2, 3], false, true))
        .await;
    assert!(closed(&mut orphan).await, "orphan continuation kept open");
    // A new data frame while a fragmented message is still open.
    let mut interleaved = WsClient::connect(&relay.url, &ts[0], Some("interleaved")).await;
    interleaved
        .send_frame(fragment(vec![0x0a, 0x01], true, false))
        .await;
    interleaved
        .send_frame(fragment(vec![0x0a, 0x01], true, true))
        .await;
    assert!(closed(&mut interleaved).await, "interleaved data kept open");
    // A fragmented control frame (ping with FIN clear) is a protocol error too.
    let mut control = WsClient::connect(&relay.url, &ts[0], Some("control")).await;
    let mut ping = Frame::ping(vec![1u8; 4]);
    ping.header_mut().is_final = false;
    control.send_frame(Message::Frame(ping)).await;
    assert!(closed(&mut control).await, "fragmented ping kept open");
    honest_exchange(&relay.url, &ts[0], &ts[1], "after-broken-fragments").await;
}

/// Reads until the relay closes the connection; returns what it sent (maybe a 408).
async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&buf).into_owned()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn slowloris_upgrades_are_cut_by_the_handshake_timeout() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &["--handshake-timeout", "1"]).await;
    // Silent connections, connections that stop halfway through the request head, and ones
    // that stop inside the HTTP/2 preface (before HTTP/1 and HTTP/2 can be told apart).
    let mut silent = Vec::new();
    let mut partial = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(relay.addr).await.expect("connect"));
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        s.write_all(b"GET /?token HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n")
            .await
            .expect("write partial head");
        partial.push(s);
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        s.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
        partial.push(s);
    }
    // While they hang, honest twins connect and exchange.
    honest_exchange(&relay.url, &ts[0], &ts[1], "during-slowloris").await;
    for s in partial.iter_mut().chain(silent.iter_mut()) {
        let answer = read_until_closed(s).await;
        let answer = answer.expect("relay never closed a slow handshake");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "unexpected answer {answer:?}"
        );
    }
    // A drip-feeder that keeps sending one header byte at a time is cut too: the timeout
    // bounds the whole head, not the gap between bytes.
    let mut drip = TcpStream::connect(relay.addr).await.expect("connect");
    drip.write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
        .await
        .expect("write");
    let mut cut = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if drip.write_all(b"a").await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), drip.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => {
                cut = true; // 408 sent: the relay is closing
                break;
            }
            Err(_) => {}
        }
    }
    assert!(cut, "a drip-fed head was never cut off");
    honest_exchange(&relay.url, &ts[0], &ts[1], "after-slowloris").await;
}

#[tokio::test]
async fn a_connection_flood_past_the_cap_gets_503_and_leaks_no_slot() {
    let ts = twins(1, 4);
    let relay = TestRelay::start(&ts, &["--max-connections", "3"]).await;
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    let c = WsClient::connect(&relay.url, &ts[2], None).await;
    // 40 concurrent attempts, valid tokens and all: every one is refused with 503.
    let mut attempts = Vec::new();
    for i in 0..40 {
        let url = relay.url.clone();
        let twin = ts[3].clone();
        attempts.push(tokio::spawn(async move {
            let sid = format!("flood-{i}");
            match WsClient::try_connect(&url, &twin, Some(&sid)).await {
                Err(WsError::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("flood attempt failed oddly: {e}"),
                Ok(_) => 101,
            }
        }));
    }
    for attempt in attempts {
        assert_eq!(attempt.await.expect("attempt task"), 503);
    }
    let (_, metrics) = http_get(relay.addr, "/metrics").await.expect("metrics");
    assert!(
        metric_value(
            &metrics,
            "rmb_relay_limit_hits_total{limit=\"connections\"}"
        ) >= 40.0,
        "connection limit hits not counted"
    );
    // The honest sessions held their slots and still exchange.
    a.send(&a.request("held", Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, "held");
    // A slot given back is usable again: the refusals leaked none.
    c.close().await;
    let mut retry = None;
    for _ in 0..100 {
        match WsClient::try_connect(&relay.url, &ts[3], None).await {
            Ok(client) => {
                retry = Some(client);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut d = retry.expect("the freed slot was never usable");
    a.send(&a.request("to-d", Address::new(4, None), "x", b"1"))
        .await;
    assert_eq!(d.expect_envelope().await.uid, "to-d");
}
