//! Attack suite, one twin against others: session ids chosen to collide with another twin's,
//! and one twin flooding another's mailbox. On both backplanes (memory and Redis).

use std::time::Duration;

use rmb_proto::{codes, Address};
use rmb_testkit::client::{error_of, WsClient};
use rmb_testkit::relay::Backing;
use rmb_testkit::twins::twins;

const QUIET: Duration = Duration::from_millis(300);

rmb_testkit::on_both_backplanes!(
    the_same_session_id_on_two_twins_neither_replaces_nor_receives_the_other,
    flooding_one_twins_mailbox_is_bounded_and_leaves_other_mailboxes_alone,
);

async fn the_same_session_id_on_two_twins_neither_replaces_nor_receives_the_other(
    backing: Backing,
) {
    let ts = twins(1, 3);
    let relay = backing.relay(&ts, &[]).await;
    // Twin 2 picks twin 1's session id, and one shaped like a storage key of twin 1.
    for sid in ["shared", "1:shared", "}:s:shared"] {
        let mut victim = WsClient::connect(&relay.url, &ts[0], Some(sid)).await;
        let mut squatter = WsClient::connect(&relay.url, &ts[1], Some(sid)).await;
        let mut sender = WsClient::connect(&relay.url, &ts[2], None).await;

        let to_victim = format!("to-victim-{sid}");
        sender
            .send(&sender.request(&to_victim, Address::new(1, Some(sid.into())), "x", b"1"))
            .await;
        assert_eq!(victim.expect_envelope().await.uid, to_victim);
        squatter.expect_silence(QUIET).await;

        let to_squatter = format!("to-squatter-{sid}");
        sender
            .send(&sender.request(&to_squatter, Address::new(2, Some(sid.into())), "x", b"1"))
            .await;
        assert_eq!(squatter.expect_envelope().await.uid, to_squatter);
        // The victim was neither replaced (no close 4000) nor handed the other twin's mail.
        victim.expect_silence(QUIET).await;
        victim
            .send(&victim.request("victim-alive", Address::new(3, None), "x", b"1"))
            .await;
        assert_eq!(sender.expect_envelope().await.uid, "victim-alive");
        victim.close().await;
        squatter.close().await;
        sender.close().await;
    }
}

async fn flooding_one_twins_mailbox_is_bounded_and_leaves_other_mailboxes_alone(backing: Backing) {
    // Twins 2 and 4 are offline; twin 1 floods twin 2, twin 3 mails twin 4 normally.
    let ts = twins(1, 4);
    let relay = backing.relay(&ts, &["--mailbox-max", "5"]).await;
    let mut flooder = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut honest = WsClient::connect(&relay.url, &ts[2], None).await;
    for i in 0..25 {
        flooder
            .send(&flooder.request(&format!("flood-{i}"), Address::new(2, None), "x", b"1"))
            .await;
    }
    // Every envelope beyond the bound comes back to the flooder as "mailbox full".
    let mut refused = Vec::new();
    for _ in 0..20 {
        let err = flooder.expect_envelope().await;
        assert_eq!(error_of(&err).0, codes::MAILBOX_FULL, "{err:?}");
        refused.push(err.uid);
    }
    flooder.expect_silence(QUIET).await;
    assert!(refused.iter().all(|u| u.starts_with("flood-")));

    // Another twin's offline mail is untouched by the flood: all accepted, all delivered.
    for i in 0..5 {
        honest
            .send(&honest.request(&format!("mail-{i}"), Address::new(4, None), "x", b"1"))
            .await;
    }
    honest.expect_silence(QUIET).await;
    let mut four = WsClient::connect(&relay.url, &ts[3], None).await;
    for i in 0..5 {
        assert_eq!(four.expect_envelope().await.uid, format!("mail-{i}"));
    }
    // The flooded twin gets exactly the bound, oldest first, and then live traffic.
    let mut two = WsClient::connect(&relay.url, &ts[1], None).await;
    for i in 0..5 {
        assert_eq!(two.expect_envelope().await.uid, format!("flood-{i}"));
    }
    honest
        .send(&honest.request("live", Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(two.expect_envelope().await.uid, "live");
}

/// Calls of `command` Redis has run so far (scripts' calls included).
fn redis_calls(server: &rmb_testkit::redis::RedisServer, command: &str) -> u64 {
    let stats = server
        .cli(&["INFO", "commandstats"])
        .unwrap_or_else(|| panic!("redis-cli INFO failed"));
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Every tiny envelope to a full mailbox used to make the routing script read up to 256
/// whole entries (XRANGE) inside Redis; the scan for expired entries now runs at most once
/// per second per twin, and every refused envelope still gets its error 111.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_to_a_full_mailbox_does_not_rescan_it_per_envelope() {
    let ts = twins(1, 2);
    let backing = Backing::redis();
    let relay = backing.relay(&ts, &["--mailbox-max", "3"]).await;
    let Backing::Redis(server) = &backing else {
        unreachable!("a Redis backing")
    };
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let flood = 200;
    for i in 0..3 + flood {
        a.send(&a.request(&format!("f-{i}"), Address::new(2, None), "x", b"1"))
            .await;
    }
    for _ in 0..flood {
        let err = a.expect_envelope().await;
        assert_eq!(error_of(&err).0, codes::MAILBOX_FULL);
    }
    // One scan per second at most: 200 envelopes sent back to back span a few seconds at
    // worst on a loaded machine, far from 200 scans.
    let scans = redis_calls(server, "xrange");
    assert!(
        scans <= 20,
        "{scans} mailbox scans for {flood} refused envelopes"
    );
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    for i in 0..3 {
        assert_eq!(b.expect_envelope().await.uid, format!("f-{i}"));
    }
}
