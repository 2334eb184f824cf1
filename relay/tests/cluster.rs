//! Several relay pods over one Redis (standalone or Cluster) behave as one relay.

use std::time::Duration;

use rmb_proto::{codes, Address, Message};
use rmb_testkit::client::{error_of, WsClient};
use rmb_testkit::redis::{RedisCluster, RedisServer};
use rmb_testkit::relay::{http_get, metric_value, wait_ready, TestRelay};
use rmb_testkit::traffic::{pods, receive, send_all, sent_by};
use rmb_testkit::twins::twins;

const QUIET: Duration = Duration::from_millis(300);

async fn pods_on(
    url: &str,
    ts: &[rmb_testkit::twins::TestTwin],
    n: usize,
    extra: &[&str],
) -> Vec<TestRelay> {
    let mut args = vec![
        "--redis",
        url,
        "--redis-lease-seconds",
        "2",
        "--rate-messages",
        "100000",
    ];
    args.extend_from_slice(extra);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TestRelay::start(ts, &args).await);
    }
    for pod in &out {
        wait_ready(pod.addr).await;
    }
    out
}

/// `(calls, rejected_calls)` of XREADGROUP on one node; a `MOVED` counts as rejected.
fn xreadgroup_calls(node: &RedisServer) -> (u64, u64) {
    let stats = node.cli(&["info", "commandstats"]).unwrap_or_default();
    let Some(line) = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_xreadgroup:"))
    else {
        return (0, 0);
    };
    let field = |name: &str| -> u64 {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("calls="), field("rejected_calls="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_reads_its_inbox_from_the_node_that_owns_it() {
    let cluster = RedisCluster::start(3, 0);
    let ts = twins(1, 2);
    let p = pods_on(&cluster.url(), &ts, 3, &[]).await;
    let mut a = WsClient::connect(&p[0].url, &ts[0], None).await;
    let mut b = WsClient::connect(&p[1].url, &ts[1], None).await;
    a.send(&a.request("across", Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, "across");
    // Each pod's consumer blocks at most 500 ms per read: a few seconds make many reads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (calls, rejected) = cluster
        .nodes
        .iter()
        .map(xreadgroup_calls)
        .fold((0, 0), |(c, r), (nc, nr)| (c + nc, r + nr));
    assert!(calls >= 3, "every pod reads its inbox ({calls} reads)");
    assert_eq!(
        rejected, 0,
        "reads sent to a node not owning the inbox (MOVED)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_on_three_pods_exchange_both_ways_over_redis_cluster() {
    let cluster = RedisCluster::start(3, 1);
    let ts = twins(1, 3);
    let p = pods_on(&cluster.url(), &ts, 3, &[]).await;
    let mut clients = Vec::new();
    for (i, t) in ts.iter().enumerate() {
        clients.push(WsClient::connect(&p[i].url, t, None).await);
    }
    // Every ordered pair, request and response.
    for from in 0..3 {
        for to in 0..3 {
            if from == to {
                continue;
            }
            let uid = format!("{from}-{to}");
            let req = clients[from].request(&uid, Address::new(ts[to].id, None), "x", b"{}");
            clients[from].send(&req).await;
            let got = clients[to].expect_envelope().await;
            assert_eq!(got, req, "byte-identical across pods");
            let resp = clients[to].response_to(&got, b"ok");
            clients[to].send(&resp).await;
            assert_eq!(clients[from].expect_envelope().await.uid, uid);
        }
    }
    for c in &mut clients {
        c.expect_silence(QUIET).await;
    }
}

/// What one session pipelines is routed as a batch (one inbox append per pod): every
/// envelope still reaches its destination once and in order, on the sender's pod as on
/// another, and the ping after a burst is answered only once the burst is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_burst_arrives_in_order_on_this_pod_and_across_pods() {
    let cluster = RedisCluster::start(3, 0);
    let ts = twins(1, 3);
    let p = pods_on(&cluster.url(), &ts, 2, &[]).await;
    let mut a = WsClient::connect(&p[0].url, &ts[0], None).await;
    let mut across = WsClient::connect(&p[1].url, &ts[1], None).await;
    let mut here = WsClient::connect(&p[0].url, &ts[2], None).await;
    // Until pod 0 has seen pod 1 beat, it asks the routing script for every envelope to it;
    // the bursts below are to go straight to pod 1's inbox, batched, as in steady state.
    let mut warm = 0;
    loop {
        warm += 1;
        let uid = format!("warm-{warm}");
        a.send(&a.request(&uid, Address::new(ts[1].id, None), "x", b"{}"))
            .await;
        assert_eq!(across.expect_envelope().await.uid, uid);
        let (_, metrics) = http_get(p[0].addr, "/metrics").await.unwrap_or_default();
        if metric_value(&metrics, "rmb_relay_owner_cache_hits_total") > 0.0 {
            break;
        }
        assert!(warm < 100, "pod 0 never trusted the owner cache");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for round in 0..3 {
        let mut burst = Vec::new();
        for i in 0..200 {
            let to = ts[1 + i % 2].id;
            let uid = format!("{round}-{to}-{i}");
            burst.push(a.request(&uid, Address::new(to, None), "x", b"{}"));
        }
        burst.push(a.relay_ping(&format!("ping-{round}")));
        a.send_pipelined(&burst).await;
        let pong = a.expect_envelope().await;
        assert_eq!(pong.uid, format!("ping-{round}"));
        assert!(matches!(pong.message, Some(Message::Pong(_))), "{pong:?}");
        for (client, twin) in [(&mut across, &ts[1]), (&mut here, &ts[2])] {
            let prefix = format!("{round}-{}-", twin.id);
            let want: Vec<String> = burst
                .iter()
                .map(|env| env.uid.clone())
                .filter(|uid| uid.starts_with(&prefix))
                .collect();
            let mut got = Vec::new();
            while got.len() < want.len() {
                got.push(client.expect_envelope().await.uid);
            }
            assert_eq!(got, want, "twin {} in round {round}", twin.id);
        }
    }
    for c in [&mut a, &mut across, &mut here] {
        c.expect_silence(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_twin_gets_its_mail_in_order_on_any_pod() {
    let cluster = RedisCluster::start(3, 1);
    let ts = twins(1, 2);
    let p = pods_on(&cluster.url(), &ts, 3, &[]).await;
    let mut a = WsClient::connect(&p[0].url, &ts[0], None).await;
    // Mail while twin 2 is away; it connects on pod 2, reads everything (confirming it).
    for i in 0..25 {
        a.send(&a.request(&format!("m-{i}"), Address::new(2, None), "x", b"{}"))
            .await;
    }
    a.expect_silence(QUIET).await;
    let mut b = WsClient::connect(&p[2].url, &ts[1], None).await;
    let mut got = Vec::new();
    for _ in 0..25 {
        got.push(b.expect_envelope().await.uid);
    }
    b.expect_silence(QUIET).await;
    b.close().await;
    // Once it is gone (its session released), more mail; now it shows up on pod 1.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 25..50 {
        a.send(&a.request(&format!("m-{i}"), Address::new(2, None), "x", b"{}"))
            .await;
    }
    a.expect_silence(QUIET).await;
    let mut b = WsClient::connect(&p[1].url, &ts[1], None).await;
    while got.len() < 50 {
        got.push(b.expect_envelope().await.uid);
    }
    let expected: Vec<String> = (0..50).map(|i| format!("m-{i}")).collect();
    assert_eq!(got, expected, "in order, each once");
    b.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_another_pod_replaces_the_first_cluster_wide() {
    let redis = RedisServer::start();
    let ts = twins(1, 2);
    let p = pods_on(&redis.url(), &ts, 2, &[]).await;
    let mut a = WsClient::connect(&p[0].url, &ts[0], None).await;
    let mut b_old = WsClient::connect(&p[0].url, &ts[1], Some("s")).await;
    let mut b_new = WsClient::connect(&p[1].url, &ts[1], Some("s")).await;
    assert_eq!(b_old.expect_close().await, Some(4000));
    a.send(&a.request("after", Address::new(2, Some("s".into())), "x", b"1"))
        .await;
    assert_eq!(b_new.expect_envelope().await.uid, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_returns_to_baseline_after_traffic_and_expiry() {
    let redis = RedisServer::start();
    let ts = twins(1, 4);
    // The record of b's recently used session id lives `--recent-sid-seconds` after b left:
    // short here, so it too is gone within the test.
    let p = pods_on(&redis.url(), &ts, 2, &["--recent-sid-seconds", "2"]).await;
    let baseline = keys(&redis);
    {
        let mut a = WsClient::connect(&p[0].url, &ts[0], None).await;
        let mut b = WsClient::connect(&p[1].url, &ts[1], Some("x")).await;
        for i in 0..20 {
            // Short-lived: what stays queued (mail for twins that never connect, and
            // deliveries unconfirmed when b closes) expires within the test.
            let live = (format!("live-{i}"), Address::new(2, Some("x".into())));
            let mail = (format!("mail-{i}"), Address::new(3 + i % 2, None));
            for (uid, to) in [live, mail] {
                let mut env = a.request(&uid, to, "x", b"1");
                env.expiration = 2;
                rmb_identity::sign_envelope(&mut env, &a.twin.signer);
                a.send(&env).await;
            }
        }
        for _ in 0..20 {
            b.expect_envelope().await;
        }
        a.close().await;
        b.close().await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = keys(&redis);
    if after != baseline {
        for k in &after {
            eprintln!(
                "{k}: ttl {:?} len {:?} range {:?}",
                redis.cli(&["ttl", k]),
                redis.cli(&["xlen", k]),
                redis.cli(&["xrange", k, "-", "+", "COUNT", "2"])
            );
        }
    }
    assert_eq!(after, baseline, "leaked keys");
    // Token freshness markers outlive the traffic on purpose, but never past the longest
    // token lifetime plus twice the clock skew (1000 + 2 × 60 s by default).
    let markers = token_markers(&redis);
    assert!(!markers.is_empty(), "no token freshness marker was written");
    for k in &markers {
        let ttl: i64 = redis
            .cli(&["ttl", k])
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(-1);
        assert!((1..=1120).contains(&ttl), "{k}: ttl {ttl}");
    }
    // The baseline is the pod registry, the heartbeats, the packed-entry readers and one
    // inbox per pod.
    assert_eq!(baseline.len(), 5, "{baseline:?}");
    for registry in ["rmb:pods", "rmb:beats", "rmb:inbox-packed"] {
        assert!(baseline.contains(&registry.to_string()), "{baseline:?}");
    }
}

/// Every key but the published mailbox statistics (refreshed on its own schedule) and the
/// token freshness markers (checked on their own).
fn keys(redis: &RedisServer) -> Vec<String> {
    let text = redis.cli(&["--scan", "--pattern", "*"]).unwrap_or_default();
    let mut keys: Vec<String> = text
        .lines()
        .filter(|k| !k.starts_with("rmb:stats:") && !k.contains(":iat:"))
        .map(str::to_string)
        .collect();
    keys.sort();
    keys
}

fn token_markers(redis: &RedisServer) -> Vec<String> {
    let text = redis
        .cli(&["--scan", "--pattern", "rmb:{t:*}:iat:*"])
        .unwrap_or_default();
    text.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_sessions_reports_not_ready_and_loses_nothing() {
    let redis = RedisServer::start();
    let ts = twins(1, 4);
    let p = pods_on(&redis.url(), &ts, 2, &["--redis-timeout-ms", "500"]).await;
    let urls = pods(p.iter().map(|x| x.url.clone()).collect());
    let receiver = receive(ts[1].clone(), urls.clone(), 1);
    let mut bystander = WsClient::connect(&p[0].url, &ts[2], None).await;
    tokio::time::sleep(QUIET).await;

    let sender = tokio::spawn(send_all(
        ts[0].clone(),
        2,
        urls.clone(),
        0,
        300,
        10,
        Duration::from_millis(30),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.pause();
    // Not ready while Redis does not answer; sessions stay up; envelopes are refused with 503.
    let mut not_ready = false;
    for _ in 0..100 {
        if http_get(p[0].addr, "/readyz")
            .await
            .is_some_and(|(s, _)| s == 503)
        {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_ready, "readyz stayed 200 during the outage");
    bystander
        .send(&bystander.request("during", Address::new(4, None), "x", b"1"))
        .await;
    let err = bystander.expect_envelope().await;
    assert_eq!(error_of(&err).0, codes::UNAVAILABLE);

    redis.resume();
    wait_ready(p[0].addr).await;
    wait_ready(p[1].addr).await;
    let sent = sent_by(sender, Duration::from_secs(90)).await;
    receiver.expect_all(&sent, Duration::from_secs(30)).await;
    // The bystander's session survived the outage.
    bystander
        .send(&bystander.request("after", Address::new(4, None), "x", b"1"))
        .await;
    let mut d = WsClient::connect(&p[1].url, &ts[3], None).await;
    // "during" was refused with 503, but its write may still have reached Redis when it
    // resumed: the sender was told to retry, a duplicate is allowed, loss is not.
    let mut first = d.expect_envelope().await.uid;
    if first == "during" {
        first = d.expect_envelope().await.uid;
    }
    assert_eq!(first, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_master_failover_is_survived_without_loss_when_writes_wait_for_a_replica() {
    let mut cluster = RedisCluster::start(3, 1);
    let ts = twins(1, 4);
    let p = pods_on(
        &cluster.url(),
        &ts,
        2,
        &["--redis-wait-replicas", "1", "--redis-timeout-ms", "1000"],
    )
    .await;
    let urls = pods(p.iter().map(|x| x.url.clone()).collect());
    let mut receivers = Vec::new();
    for t in &ts[2..] {
        receivers.push(receive(t.clone(), urls.clone(), 1));
    }
    tokio::time::sleep(QUIET).await;
    let senders: Vec<_> = ts[..2]
        .iter()
        .map(|t| {
            tokio::spawn(send_all(
                t.clone(),
                t.id + 2,
                urls.clone(),
                0,
                300,
                10,
                Duration::from_millis(40),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let master = cluster.masters()[0];
    cluster.nodes[master].kill();
    // The replica is promoted after the node timeout; the relay follows by itself. Writes
    // to the promoted master's slots wait for a replica again: the old master rejoins as one.
    cluster.wait_healthy(Duration::from_secs(30));
    cluster.nodes[master].restart();
    cluster.wait_replicas(3, Duration::from_secs(30));
    for (sender, receiver) in senders.into_iter().zip(receivers) {
        let sent = sent_by(sender, Duration::from_secs(120)).await;
        receiver.expect_all(&sent, Duration::from_secs(30)).await;
    }
    for pod in &p {
        wait_ready(pod.addr).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_depth_is_counted_across_the_cluster() {
    let redis = RedisServer::start();
    let ts = twins(1, 3);
    let p = pods_on(&redis.url(), &ts, 2, &[]).await;
    let mut a = WsClient::connect(&p[0].url, &ts[0], None).await;
    for i in 0..7 {
        let to = Address::new(2 + i % 2, None);
        a.send(&a.request(&format!("mb-{i}"), to, "x", b"1")).await;
    }
    a.expect_silence(QUIET).await;
    // Counted every three leases (6 s here) by one pod, read by all.
    let mut depths = [0.0; 2];
    for _ in 0..150 {
        for (i, pod) in p.iter().enumerate() {
            let (_, text) = http_get(pod.addr, "/metrics").await.unwrap();
            depths[i] = rmb_testkit::relay::metric_value(&text, "rmb_relay_mailbox_envelopes");
        }
        if depths == [7.0, 7.0] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(depths, [7.0, 7.0]);
}
