//! A session that stops reading cannot pin the relay: its writes have a deadline, the
//! replies it asks for (envelope pings echo their `tags`) are bounded in bytes, and once it
//! is closed (4008) its lease is released and mail for its twin reaches its next session.

use std::time::Duration;

use prost::Message as _;
use rmb_identity::sign_envelope;
use rmb_proto::{Address, Message};
use rmb_testkit::client::{Received, WsClient};
use rmb_testkit::relay::{http_get, metric_value, Backing};
use rmb_testkit::twins::twins;
use tokio_tungstenite::tungstenite::Message as WsMessage;

rmb_testkit::on_both_backplanes!(
    pings_with_huge_tags_from_a_client_that_never_reads_end_its_session,
    a_client_that_stops_reading_its_mail_is_closed_after_the_write_timeout,
);

const STUCK: &str = "rmb_relay_limit_hits_total{limit=\"stuck_session\"}";

/// Waits until the relay counted a stuck session.
async fn await_stuck_metric(addr: std::net::SocketAddr) {
    for _ in 0..400 {
        if let Some((_, metrics)) = http_get(addr, "/metrics").await {
            if metric_value(&metrics, STUCK) >= 1.0 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the stuck session was never closed");
}

/// Reads what the closed session still has in its buffers; returns the close code.
async fn close_code_after_backlog(client: &mut WsClient) -> Option<u16> {
    loop {
        match client.next(Duration::from_secs(10)).await {
            Some(Received::Envelope(_)) => continue,
            Some(Received::Closed(frame)) => return frame.map(|f| u16::from(f.code)),
            None => panic!("no close frame after the backlog"),
        }
    }
}

async fn pings_with_huge_tags_from_a_client_that_never_reads_end_its_session(backing: Backing) {
    let ts = twins(1, 2);
    // Replies are bounded to 2 × the largest envelope: 4 MiB here.
    let relay = backing
        .relay(
            &ts,
            &[
                "--max-envelope-bytes",
                "2097152",
                "--rate-bytes",
                "1073741824",
            ],
        )
        .await;
    let mut attacker = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut sender = WsClient::connect(&relay.url, &ts[1], None).await;

    // 32 pings of 1 MiB tags; the attacker does not read the pongs. The write timeout is
    // the default (30 s): only the bound on unsent replies ends the session before the
    // metric wait gives up (10 s).
    let tags = "t".repeat(1 << 20);
    for i in 0..32 {
        let mut ping = attacker.request(&format!("p-{i}"), Address::new(0, None), "", b"");
        ping.message = Some(Message::Ping(rmb_proto::Ping {}));
        ping.tags = Some(tags.clone());
        sign_envelope(&mut ping, &ts[0].signer);
        let frame = WsMessage::Binary(ping.encode_to_vec().into());
        let send = attacker.try_send_frame(frame);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(2), send).await,
            Ok(Ok(()))
        ) {
            break;
        }
    }
    await_stuck_metric(relay.addr).await;

    // Mail for the attacker's twin, sent after the stuck session ended, reaches its next
    // session (with Redis, only once the old session's lease was released).
    sender
        .send(&sender.request("after", Address::new(1, None), "x", b"1"))
        .await;
    assert_eq!(close_code_after_backlog(&mut attacker).await, Some(4008));
    let mut again = WsClient::connect(&relay.url, &ts[0], None).await;
    assert_eq!(again.expect_envelope().await.uid, "after");
}

async fn a_client_that_stops_reading_its_mail_is_closed_after_the_write_timeout(backing: Backing) {
    let ts = twins(1, 2);
    let relay = backing
        .relay(
            &ts,
            &[
                "--write-timeout",
                "2",
                "--max-envelope-bytes",
                "2097152",
                "--rate-bytes",
                "1073741824",
            ],
        )
        .await;
    let mut frozen = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut sender = WsClient::connect(&relay.url, &ts[1], None).await;

    // 48 MiB of mail, far more than the loopback socket buffers hold: the relay's write
    // blocks, within the outbound queue and unconfirmed bounds (no slow-consumer close).
    let payload = vec![b'm'; 1 << 20];
    for i in 0..48 {
        sender
            .send(&sender.request(&format!("m-{i}"), Address::new(1, None), "x", &payload))
            .await;
    }
    await_stuck_metric(relay.addr).await;
    let (_, metrics) = http_get(relay.addr, "/metrics").await.unwrap_or_default();
    assert_eq!(
        metric_value(
            &metrics,
            "rmb_relay_limit_hits_total{limit=\"slow_consumer\"}"
        ),
        0.0
    );

    // The frozen client thaws: what reached it, then the close code.
    let mut seen = std::collections::HashSet::new();
    let code = loop {
        match frozen.next(Duration::from_secs(10)).await {
            Some(Received::Envelope(env)) => {
                seen.insert(env.uid);
            }
            Some(Received::Closed(frame)) => break frame.map(|f| u16::from(f.code)),
            None => panic!("no close frame"),
        }
    };
    assert_eq!(code, Some(4008));

    // Nothing lost: what the frozen session did not get comes to its next session.
    let mut again = WsClient::connect(&relay.url, &ts[0], None).await;
    while seen.len() < 48 {
        match again.next(Duration::from_secs(10)).await {
            Some(Received::Envelope(env)) => {
                seen.insert(env.uid);
            }
            other => panic!("{} of 48 envelopes, then {other:?}", seen.len()),
        }
    }
}
