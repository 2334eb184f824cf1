//! SIGTERM drains a real relay process: readiness goes false, connected clients get 1012
//! after everything queued for them was delivered, and the process exits 0.

use std::time::Duration;

use rmb_proto::Address;
use rmb_testkit::client::{Received, WsClient};
use rmb_testkit::relay::{http_get, RelayProcess};
use rmb_testkit::twins::{twins, write_twins_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_with_1012_and_loses_no_accepted_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let ts = twins(1, 2);
    let file = write_twins_file(dir.path(), &ts);
    let relay = RelayProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_rmb-relay")),
        &file,
        &["--drain-seconds", "2"],
    )
    .await;
    assert_eq!(http_get(relay.addr, "/readyz").await.unwrap().0, 200);

    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    let total = 300;
    for i in 0..total {
        a.send(&a.request(&format!("d-{i}"), Address::new(2, None), "x", b"{}"))
            .await;
    }
    // Make sure the relay has read them all (a ping envelope is answered in order).
    let mut ping = a.request("sync", Address::new(0, None), "", b"");
    ping.message = Some(rmb_proto::Message::Ping(rmb_proto::Ping {}));
    a.send(&ping).await;
    assert_eq!(a.expect_envelope().await.uid, "sync");

    relay.signal("TERM");
    let mut received = 0;
    let mut b_close = None;
    while b_close.is_none() {
        match b.next(Duration::from_secs(10)).await {
            Some(Received::Envelope(_)) => received += 1,
            Some(Received::Closed(frame)) => b_close = Some(frame.map(|f| u16::from(f.code))),
            None => panic!("no close from the draining relay"),
        }
    }
    assert_eq!(b_close, Some(Some(1012)), "service restart close code");
    assert!(received >= total, "received {received} of {total}");
    assert_eq!(a.expect_close().await, Some(1012));
    assert_eq!(
        relay.wait(Duration::from_secs(15)).await,
        Some(0),
        "exit status 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    let ts = twins(1, 1);
    let file = write_twins_file(dir.path(), &ts);
    let relay = RelayProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_rmb-relay")),
        &file,
        &["--drain-seconds", "3"],
    )
    .await;
    // A connected session keeps the drain going for its paced window.
    let _a = WsClient::connect(&relay.url, &ts[0], None).await;
    relay.signal("TERM");
    // The listener closes at once; readiness is reported false (or the port refuses).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = http_get(relay.addr, "/readyz").await.map(|(s, _)| s);
    assert!(
        status.is_none() || status == Some(503),
        "readyz during drain: {status:?}"
    );
}
