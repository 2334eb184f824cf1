//! Attack suite, mail budgets: junk session ids that would fill a twin's mailbox, and large
//! envelopes queued to offline twins until the per-twin and per-pod byte budgets refuse. On
//! both backplanes (memory and Redis).

use std::time::Duration;

use rmb_proto::{codes, Address, Envelope};
use rmb_testkit::client::{error_of, Received, WsClient};
use rmb_testkit::relay::{http_get, metric_value, Backing};
use rmb_testkit::twins::twins;

const QUIET: Duration = Duration::from_millis(500);

rmb_testkit::on_both_backplanes!(
    junk_session_ids_cannot_fill_a_twins_mailbox,
    large_mail_to_offline_twins_stops_at_the_byte_budgets_while_live_traffic_flows,
);

/// Every envelope that arrives until `QUIET` passes with none.
async fn drain(client: &mut WsClient) -> Vec<Envelope> {
    let mut out = Vec::new();
    while let Some(Received::Envelope(env)) = client.next(QUIET).await {
        out.push(*env);
    }
    out
}

async fn limit_hits(http: std::net::SocketAddr, limit: &str) -> f64 {
    let (_, body) = http_get(http, "/metrics")
        .await
        .unwrap_or_else(|| panic!("metrics endpoint answers"));
    metric_value(
        &body,
        &format!("rmb_relay_limit_hits_total{{limit=\"{limit}\"}}"),
    )
}

async fn junk_session_ids_cannot_fill_a_twins_mailbox(backing: Backing) {
    // Twin 1 is the victim, twin 2 the attacker, twin 3 an honest sender. The mailbox holds
    // 300 entries; the sub-quota for unused session ids is the default (256).
    let ts = twins(1, 3);
    let relay = backing.relay(&ts, &["--mailbox-max", "300"]).await;
    // The victim's real session id was used (attached, then left).
    WsClient::connect(&relay.url, &ts[0], Some("real"))
        .await
        .close()
        .await;
    let mut attacker = WsClient::connect(&relay.url, &ts[1], None).await;
    let mut honest = WsClient::connect(&relay.url, &ts[2], None).await;
    let junk = 400;
    for i in 0..junk {
        let to = Address::new(1, Some(format!("junk-{i}")));
        attacker
            .send(&attacker.request(&format!("junk-{i}"), to, "x", b"1"))
            .await;
    }
    let refused = drain(&mut attacker).await;
    assert_eq!(refused.len(), junk - 256, "all but the sub-quota refused");
    for err in &refused {
        let (code, text) = error_of(err);
        assert_eq!(code, codes::MAILBOX_FULL, "{err:?}");
        assert!(
            text.contains("not used recently"),
            "names the budget: {text}"
        );
    }

    // The victim's real mail is still accepted (no error comes back) and delivered.
    for (i, sid) in ["real", "real", ""].iter().enumerate() {
        let to = Address::new(1, (!sid.is_empty()).then(|| sid.to_string()));
        honest
            .send(&honest.request(&format!("mail-{i}"), to, "x", b"1"))
            .await;
    }
    honest.expect_silence(QUIET).await;
    let mut real = WsClient::connect(&relay.url, &ts[0], Some("real")).await;
    assert_eq!(real.expect_envelope().await.uid, "mail-0");
    assert_eq!(real.expect_envelope().await.uid, "mail-1");
    let mut plain = WsClient::connect(&relay.url, &ts[0], None).await;
    assert_eq!(plain.expect_envelope().await.uid, "mail-2");
    assert!(limit_hits(relay.addr, "unused_sid").await >= (junk - 256) as f64);
}

async fn large_mail_to_offline_twins_stops_at_the_byte_budgets_while_live_traffic_flows(
    backing: Backing,
) {
    // Envelopes of ~60 KB: a twin's mailbox takes 4 (256 KiB), the pod's hub 8 (512 KiB).
    let ts = twins(1, 6);
    let relay = backing
        .relay(
            &ts,
            &[
                "--max-envelope-bytes",
                "65536",
                "--mailbox-max-bytes",
                "262144",
                "--pod-queue-max-bytes",
                "524288",
            ],
        )
        .await;
    let big = vec![7u8; 60_000];
    let mut flooder = WsClient::connect(&relay.url, &ts[0], None).await;
    let mut alice = WsClient::connect(&relay.url, &ts[4], None).await;
    let mut bob = WsClient::connect(&relay.url, &ts[5], None).await;
    // One small envelope for another session id of twin 2: it stays in the mailbox, so the
    // byte counter is checked against a non-empty mailbox at the end.
    flooder
        .send(&flooder.request("keep", Address::new(2, Some("other".into())), "x", b"1"))
        .await;
    let mut refusals = Vec::new();
    for twin in 2..=4 {
        for i in 0..6 {
            let uid = format!("big-{twin}-{i}");
            flooder
                .send(&flooder.request(&uid, Address::new(twin, None), "x", &big))
                .await;
        }
        refusals.extend(drain(&mut flooder).await);
    }
    let texts: Vec<String> = refusals
        .iter()
        .map(|e| {
            let (code, text) = error_of(e);
            assert_eq!(code, codes::MAILBOX_FULL, "{e:?}");
            text.to_string()
        })
        .collect();
    let refused_to = |twin: u32| {
        refusals
            .iter()
            .filter(|e| e.uid.starts_with(&format!("big-{twin}-")))
            .count()
    };
    assert_eq!(
        refused_to(2),
        2,
        "4 of 6 fit twin 2's byte budget: {texts:?}"
    );
    assert!(texts[0].contains("--mailbox-max-bytes"), "{texts:?}");
    assert!(limit_hits(relay.addr, "mailbox_bytes").await >= 2.0);
    let memory = matches!(backing, Backing::Memory);
    if memory {
        // 4 + 4 fill the pod's 512 KiB; twin 4 gets nothing in.
        assert_eq!(refused_to(4), 6, "{texts:?}");
        assert!(texts.iter().any(|t| t.contains("--pod-queue-max-bytes")));
        assert!(limit_hits(relay.addr, "pod_queue_bytes").await >= 6.0);
    } else {
        // Redis keeps mailboxes outside the pod: only the per-twin budget applies.
        assert_eq!(refused_to(4), 2, "{texts:?}");
    }

    // Meanwhile the relay serves an honest pair, large envelopes included.
    alice
        .send(&alice.request("hello", bob.address(), "x", &big))
        .await;
    assert_eq!(bob.expect_envelope().await.uid, "hello");

    // Twin 2 takes its mail: the budget is given back and new mail fits again.
    let mut two = WsClient::connect(&relay.url, &ts[1], None).await;
    for i in 0..4 {
        assert_eq!(two.expect_envelope().await.uid, format!("big-2-{i}"));
    }
    two.expect_silence(QUIET).await; // answers the relay's pings: the mail is confirmed
    two.close().await;
    if let Backing::Redis(server) = &backing {
        // The counter holds exactly what is left in the mailbox: the small envelope.
        let stored = stored_bytes(server, 2);
        assert!(stored > 0 && stored < 1_000, "{stored}");
        let mut counted = 0;
        for _ in 0..50 {
            counted = counted_bytes(server, 2);
            if counted == stored {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(counted, stored, "the byte counter follows the mailbox");
    }
    for i in 0..4 {
        let uid = format!("again-{i}");
        flooder
            .send(&flooder.request(&uid, Address::new(2, None), "x", &big))
            .await;
    }
    let again = drain(&mut flooder).await;
    assert!(
        again.is_empty(),
        "the freed budget takes 4 again: {again:?}"
    );
}

/// Redis only: the byte counter is never read from the mailbox, so a counter that drifted
/// (here: set by hand far above the budget) must not block the twin past its next empty
/// mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_byte_counter_blocks_a_twin_only_until_its_mailbox_is_empty() {
    let ts = twins(1, 2);
    let backing = Backing::redis();
    let relay = backing.relay(&ts, &[]).await;
    let Backing::Redis(server) = &backing else {
        unreachable!("a Redis backing")
    };
    let drift = |server: &rmb_testkit::redis::RedisServer| {
        server.cli(&["HSET", "rmb:{t:2}:mbb", "b", "999999999999"]);
    };
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    // Counter without a mailbox: reset by the routing script, the mail is stored.
    drift(server);
    a.send(&a.request("first", Address::new(2, None), "x", b"1"))
        .await;
    a.expect_silence(QUIET).await;
    // Counter drifted while mail waits: refused, until the twin takes its mail.
    drift(server);
    a.send(&a.request("refused", Address::new(2, None), "x", b"1"))
        .await;
    let err = a.expect_envelope().await;
    assert_eq!(error_of(&err).0, codes::MAILBOX_FULL, "{err:?}");
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    assert_eq!(b.expect_envelope().await.uid, "first");
    b.expect_silence(QUIET).await;
    b.close().await;
    for _ in 0..50 {
        if counted_bytes(server, 2) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.send(&a.request("after", Address::new(2, None), "x", b"1"))
        .await;
    a.expect_silence(QUIET).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    assert_eq!(b.expect_envelope().await.uid, "after");
}

/// The `b` field of twin's mailbox byte counter (0 when absent).
fn counted_bytes(server: &rmb_testkit::redis::RedisServer, twin: u32) -> u64 {
    let key = format!("rmb:{{t:{twin}}}:mbb");
    server
        .cli(&["HGET", &key, "b"])
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Envelope bytes actually stored in the twin's mailbox (read here, by the test).
fn stored_bytes(server: &rmb_testkit::redis::RedisServer, twin: u32) -> u64 {
    const SUM: &str = "local n = 0 for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do \
        for i = 1, #e[2], 2 do if e[2][i] == 'e' then n = n + #e[2][i + 1] end end end return n";
    let key = format!("rmb:{{t:{twin}}}:mb");
    server
        .cli(&["EVAL", SUM, "1", &key])
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
