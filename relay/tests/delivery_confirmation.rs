//! Delivery confirmation by TCP acknowledgement (`--delivery-confirmation tcp-ack`, the
//! default): no frames are added to the wire, so clients that leave Nagle's algorithm on (the
//! original rmb-peer, tokio-tungstenite's defaults) are not stalled by delayed ACKs, and what a
//! client's TCP never acknowledged is delivered again after it drops.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rmb_identity::sign_envelope;
use rmb_proto::{unix_now, Address, Envelope, Message, Payload, Request, Response};
use rmb_testkit::client::connect_shaped;
use rmb_testkit::relay::Backing;
use rmb_testkit::twins::{twins, TestTwin};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::WebSocketStream;

rmb_testkit::on_both_backplanes!(
    a_client_with_nagle_on_gets_round_trips_without_delayed_ack_stalls,
    mail_a_client_never_acknowledged_is_delivered_again_after_it_drops,
);

/// A round trip this slow is a delayed-ACK stall (Linux delays ACKs by 40 ms); loopback round
/// trips take well under a millisecond.
const SLOW: Duration = Duration::from_millis(30);
const WAIT: Duration = Duration::from_secs(10);

/// A websocket session over a socket whose options the test chooses.
struct Raw {
    ws: WebSocketStream<TcpStream>,
    twin: TestTwin,
}

impl Raw {
    /// Connects with Nagle's algorithm on or off and, if given, a small receive buffer (set
    /// before connecting, so the advertised window stays small).
    async fn connect(addr: SocketAddr, twin: &TestTwin, nagle: bool, rcvbuf: Option<usize>) -> Raw {
        Raw {
            ws: connect_shaped(addr, twin, nagle, rcvbuf).await,
            twin: twin.clone(),
        }
    }

    async fn send(&mut self, env: &Envelope) {
        let frame = Ws::Binary(env.encode_to_vec().into());
        self.ws.send(frame).await.unwrap();
    }

    /// The next envelope (control frames are answered by tungstenite and skipped).
    async fn envelope(&mut self) -> Envelope {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next()).await;
            match next {
                Ok(Some(Ok(Ws::Binary(bytes)))) => return Envelope::decode(bytes).unwrap(),
                Ok(Some(Ok(Ws::Ping(_) | Ws::Pong(_) | Ws::Frame(_)))) => continue,
                other => panic!("twin {} expected an envelope, got {other:?}", self.twin.id),
            }
        }
    }

    fn signed(&self, mut env: Envelope) -> Envelope {
        env.timestamp = unix_now();
        env.expiration = 300;
        env.source = Some(Address::new(self.twin.id, None));
        sign_envelope(&mut env, &self.twin.signer);
        env
    }

    fn request(&self, uid: String, to: u32, data: Vec<u8>) -> Envelope {
        self.signed(Envelope {
            uid,
            destination: Some(Address::new(to, None)),
            message: Some(Message::Request(Request {
                command: "bench".into(),
            })),
            payload: Some(Payload::Plain(data)),
            ..Default::default()
        })
    }

    fn response(&self, req: &Envelope) -> Envelope {
        self.signed(Envelope {
            uid: req.uid.clone(),
            destination: req.source.clone(),
            message: Some(Message::Response(Response {})),
            payload: req.payload.clone(),
            ..Default::default()
        })
    }
}

const ROUND_TRIPS: usize = 200;

/// Runs sequential round trips between two clients with Nagle on; how many were slow.
async fn slow_round_trips(addr: SocketAddr, ts: &[TestTwin]) -> usize {
    let mut a = Raw::connect(addr, &ts[0], true, None).await;
    let mut b = Raw::connect(addr, &ts[1], true, None).await;
    let mut slow = 0;
    for i in 0..ROUND_TRIPS {
        let started = Instant::now();
        a.send(&a.request(format!("rt-{i}"), 2, vec![7u8; 1024]))
            .await;
        let req = b.envelope().await;
        b.send(&b.response(&req)).await;
        let resp = a.envelope().await;
        assert_eq!(resp.uid, format!("rt-{i}"));
        if started.elapsed() >= SLOW {
            slow += 1;
        }
    }
    slow
}

async fn a_client_with_nagle_on_gets_round_trips_without_delayed_ack_stalls(backing: Backing) {
    let ts = twins(1, 2);
    let relay = backing.relay(&ts, &[]).await;
    let slow = slow_round_trips(relay.addr, &ts).await;
    // Stalls would make nearly every round trip slow; a busy machine makes a few slow.
    assert!(
        slow <= ROUND_TRIPS / 10,
        "{slow} of {ROUND_TRIPS} round trips took {SLOW:?} or more"
    );
}

/// With a Ping per batch, the client's Pong must be acknowledged at once (`TCP_QUICKACK`), or
/// the client's next write waits for a delayed ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_confirmation_acknowledges_pongs_at_once_for_nagle_clients() {
    let ts = twins(1, 2);
    let relay =
        rmb_testkit::relay::TestRelay::start(&ts, &["--delivery-confirmation", "websocket-ping"])
            .await;
    let slow = slow_round_trips(relay.addr, &ts).await;
    assert!(
        slow <= ROUND_TRIPS / 10,
        "{slow} of {ROUND_TRIPS} round trips took {SLOW:?} or more"
    );
}

async fn mail_a_client_never_acknowledged_is_delivered_again_after_it_drops(backing: Backing) {
    const MAIL: usize = 600;
    let ts = twins(1, 2);
    let relay = backing.relay(&ts, &[]).await;
    let mut a = Raw::connect(relay.addr, &ts[0], false, None).await;
    // B reads nothing, with a receive window of a few KiB: the relay's writes stop once it is
    // full, and what it wrote stays unacknowledged in the relay's send queue.
    let b = Raw::connect(relay.addr, &ts[1], false, Some(4096)).await;
    for i in 0..MAIL {
        a.send(&a.request(format!("m-{i:04}"), 2, vec![1u8; 1024]))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Whatever B's TCP acknowledged sat in its receive buffer (a few envelopes): gone with it.
    // Everything after arrives, in order, nothing missing.
    let mut b = Raw::connect(relay.addr, &ts[1], false, None).await;
    let first = b.envelope().await.uid;
    let skipped: usize = first["m-".len()..].parse().unwrap();
    assert!(
        skipped <= 32,
        "only what fits B's receive buffer may count as delivered; redelivery starts at {first}"
    );
    for i in skipped + 1..MAIL {
        assert_eq!(b.envelope().await.uid, format!("m-{i:04}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_client_gets_pong_heartbeats_and_no_pings() {
    let ts = twins(1, 2);
    let relay =
        rmb_testkit::relay::TestRelay::start(&ts, &["--ping-interval", "1", "--idle-timeout", "4"])
            .await;
    let mut a = Raw::connect(relay.addr, &ts[0], true, None).await;
    let mut b = Raw::connect(relay.addr, &ts[1], true, None).await;
    let (mut pings, mut pongs) = (0, 0);
    let until = Instant::now() + Duration::from_secs(4);
    let mut i = 0;
    while Instant::now() < until {
        a.send(&a.request(format!("k-{i}"), 2, vec![1u8; 64])).await;
        i += 1;
        // B reads its envelope and counts the control frames before it.
        loop {
            match tokio::time::timeout(WAIT, b.ws.next()).await {
                Ok(Some(Ok(Ws::Binary(_)))) => break,
                Ok(Some(Ok(Ws::Ping(_)))) => pings += 1,
                Ok(Some(Ok(Ws::Pong(_)))) => pongs += 1,
                Ok(Some(Ok(_))) => {}
                other => panic!("expected an envelope, got {other:?}"),
            }
        }
        // Only B receives: it speaks every 200 ms (an empty Pong frame, like a client's
        // own keep-alive), so it is never silent.
        b.ws.send(Ws::Pong(Vec::new().into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pings, 0, "no ping to a client that is not silent");
    assert!(pongs >= 2, "a pong heartbeat each period, got {pongs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_pinged_and_stays_connected() {
    let ts = twins(1, 2);
    let relay =
        rmb_testkit::relay::TestRelay::start(&ts, &["--ping-interval", "1", "--idle-timeout", "3"])
            .await;
    let mut b = Raw::connect(relay.addr, &ts[1], true, None).await;
    let mut pings = 0;
    // Silent for twice the idle timeout: tungstenite answers each ping as it is read.
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while let Ok(next) = tokio::time::timeout_at(until, b.ws.next()).await {
        match next {
            Some(Ok(Ws::Ping(_))) => pings += 1,
            Some(Ok(Ws::Pong(_))) => {}
            other => panic!("expected control frames only, got {other:?}"),
        }
    }
    assert!(pings >= 2, "pinged while silent, got {pings}");
    let mut a = Raw::connect(relay.addr, &ts[0], true, None).await;
    a.send(&a.request("after".into(), 2, vec![1])).await;
    assert_eq!(b.envelope().await.uid, "after", "still connected");
}
