//! Cluster guarantees with real relay processes over Redis: a pod killed with SIGKILL or
//! restarted under traffic loses no accepted envelope.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rmb_testkit::redis::{RedisCluster, RedisServer};
use rmb_testkit::relay::{free_addr, http_get, wait_ready, RelayProcess};
use rmb_testkit::traffic::{pods, receive, send_all, sent_by, Pods};
use rmb_testkit::twins::{twins, write_twins_file, TestTwin};

fn relay_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rmb-relay"))
}

/// One relay pod on `addr` over `redis_url`: lease `lease_seconds`, quick drain, no rate
/// limit, and the flags `extra`.
async fn spawn_pod_with_lease(
    addr: SocketAddr,
    twins_file: &Path,
    redis_url: &str,
    lease_seconds: &str,
    extra: &[String],
) -> RelayProcess {
    let mut args = vec![
        "--redis",
        redis_url,
        "--redis-lease-seconds",
        lease_seconds,
        "--drain-seconds",
        "1",
        "--rate-messages",
        "100000",
    ];
    args.extend(extra.iter().map(String::as_str));
    RelayProcess::spawn_at(addr, relay_bin(), twins_file, &args).await
}

/// Relay processes sharing one Redis, restartable on their addresses.
struct Pods3 {
    procs: Vec<Option<RelayProcess>>,
    addrs: Vec<SocketAddr>,
    twins_file: PathBuf,
    redis_url: String,
    /// `--redis-lease-seconds` of every pod.
    lease: String,
    /// Further flags of every pod.
    extra: Vec<String>,
    urls: Pods,
    _dir: tempfile::TempDir,
}

impl Pods3 {
    async fn start(n: usize, redis_url: String, twins: &[TestTwin]) -> Pods3 {
        Pods3::start_with_lease(n, redis_url, twins, "2").await
    }

    async fn start_with_lease(
        n: usize,
        redis_url: String,
        twins: &[TestTwin],
        lease: &str,
    ) -> Pods3 {
        Pods3::start_with(n, redis_url, twins, lease, &[]).await
    }

    async fn start_with(
        n: usize,
        redis_url: String,
        twins: &[TestTwin],
        lease: &str,
        extra: &[&str],
    ) -> Pods3 {
        let dir = tempfile::tempdir().unwrap();
        let twins_file = write_twins_file(dir.path(), twins);
        let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let mut pods3 = Pods3 {
            procs: Vec::new(),
            urls: pods(addrs.iter().map(|a| format!("ws://{a}")).collect()),
            addrs,
            twins_file,
            redis_url,
            lease: lease.to_string(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            _dir: dir,
        };
        for i in 0..n {
            let p = pods3.spawn(i).await;
            pods3.procs.push(Some(p));
        }
        for i in 0..n {
            pods3.wait_ready(i).await;
        }
        pods3
    }

    async fn spawn(&self, i: usize) -> RelayProcess {
        spawn_pod_with_lease(
            self.addrs[i],
            &self.twins_file,
            &self.redis_url,
            &self.lease,
            &self.extra,
        )
        .await
    }

    async fn wait_ready(&self, i: usize) {
        wait_ready(self.addrs[i]).await;
    }
}

/// Four senders to four receivers; the receivers start on pod `victim`. Returns what
/// `disrupt` returned (pods it started, to be stopped at the end of the test).
async fn run_traffic_with<T>(
    pods3: &mut Pods3,
    victim: usize,
    disrupt: impl std::future::Future<Output = T>,
) -> T {
    run_traffic_for(pods3, victim, 400, Duration::from_millis(60), disrupt).await
}

/// [`run_traffic_with`], each sender sending `total` envelopes in batches of 20 with `pause`
/// between batches.
async fn run_traffic_for<T>(
    pods3: &mut Pods3,
    victim: usize,
    total: usize,
    pause: Duration,
    disrupt: impl std::future::Future<Output = T>,
) -> T {
    let ts = twins(1, 8);
    let mut receivers = Vec::new();
    for t in &ts[4..] {
        receivers.push(receive(t.clone(), pods3.urls.clone(), victim));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let senders: Vec<_> = ts[..4]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            tokio::spawn(send_all(
                t.clone(),
                t.id + 4,
                pods3.urls.clone(),
                i,
                total,
                20,
                pause,
            ))
        })
        .collect();
    let kept = disrupt.await;
    for (sender, receiver) in senders.into_iter().zip(receivers) {
        let sent = sent_by(sender, Duration::from_secs(120)).await;
        receiver.expect_all(&sent, Duration::from_secs(40)).await;
    }
    kept
}

/// Sum of a metric over the pods still running.
async fn metric_sum(addrs: &[SocketAddr], name: &str) -> f64 {
    let mut sum = 0.0;
    for addr in addrs {
        if let Some((_, text)) = http_get(*addr, "/metrics").await {
            sum += rmb_testkit::relay::metric_value(&text, name);
        }
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_killed_with_sigkill_during_traffic_loses_no_envelope() {
    let cluster = RedisCluster::start(3, 1);
    let ts = twins(1, 8);
    let mut p = Pods3::start(3, cluster.url(), &ts).await;
    for i in 0..3 {
        p.wait_ready(i).await;
    }
    let victim = p.procs[2].take().unwrap();
    let scenario = run_traffic_with(&mut p, 2, async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        victim.signal("KILL");
        drop(victim);
    });
    tokio::time::timeout(Duration::from_secs(120), scenario)
        .await
        .expect("scenario finishes");
    // A surviving pod takes the dead pod's inbox over once its lease expired.
    let mut takeovers = 0.0;
    for _ in 0..150 {
        takeovers = metric_sum(&p.addrs[..2], "rmb_relay_takeovers_total").await;
        if takeovers >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(takeovers, 1.0, "exactly one pod takes the dead pod over");
}

/// With a lease far longer than the test, the whole-pod takeover cannot happen in time: the
/// mail that waited in the killed pod's inbox reaches the receivers (who reconnected to a
/// surviving pod) only through the per-session takeover on their reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_of_twins_that_reconnect_elsewhere_follows_them_before_the_dead_pods_lease_ends() {
    let cluster = RedisCluster::start(3, 1);
    let ts = twins(1, 8);
    let mut p = Pods3::start_with_lease(3, cluster.url(), &ts, "120").await;
    for i in 0..3 {
        p.wait_ready(i).await;
    }
    let victim = p.procs[2].take().unwrap();
    let survivors = p.addrs[..2].to_vec();
    let scenario = run_traffic_with(&mut p, 2, async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        // Frozen first, so mail for the receivers surely waits in its inbox when it dies.
        victim.signal("STOP");
        let stopped = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(700)).await;
        victim.signal("KILL");
        drop(victim);
        // For docs/benchmarks.md (printed, not asserted): when the first waiting mail moved.
        for _ in 0..300 {
            if metric_sum(&survivors, "rmb_relay_session_takeover_entries_total").await >= 1.0 {
                eprintln!(
                    "session takeover {:.2} s after the pod stopped beating",
                    stopped.elapsed().as_secs_f64()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(120), scenario)
        .await
        .expect("scenario finishes");
    // Counted right after the entries were routed again, so possibly a moment after delivery.
    let mut moved = 0.0;
    for _ in 0..50 {
        moved = metric_sum(&p.addrs[..2], "rmb_relay_session_takeover_entries_total").await;
        if moved >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        moved >= 1.0,
        "the reconnected sessions' mail was taken over"
    );
    let takeovers = metric_sum(&p.addrs[..2], "rmb_relay_takeovers_total").await;
    assert_eq!(takeovers, 0.0, "the dead pod's lease has not run out yet");
}

/// Senders' pods cache the receivers' owner (pod 2) for a minute, far longer than the test:
/// once pod 2 is killed and the receivers reconnect elsewhere, only dropping the entries of a
/// pod that stopped beating keeps the senders' mail from piling up in the dead pod's inbox,
/// which (lease 120 s) nobody would take over in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_moved_off_a_killed_pod_get_every_envelope_despite_cached_owners() {
    let cluster = RedisCluster::start(3, 0);
    let ts = twins(1, 8);
    let cache = ["--redis-owner-cache-ms", "60000"];
    let mut p = Pods3::start_with(3, cluster.url(), &ts, "120", &cache).await;
    let victim = p.procs[2].take().unwrap();
    // Sending goes on for about ten seconds, well past the per-session takeover's passes.
    let pause = Duration::from_millis(100);
    let scenario = run_traffic_for(&mut p, 2, 1600, pause, async move {
        tokio::time::sleep(Duration::from_millis(900)).await;
        victim.signal("KILL");
        drop(victim);
    });
    tokio::time::timeout(Duration::from_secs(120), scenario)
        .await
        .expect("scenario finishes");
    let hits = metric_sum(&p.addrs[..2], "rmb_relay_owner_cache_hits_total").await;
    assert!(hits >= 1.0, "the senders' pods used cached owners ({hits})");
    let takeovers = metric_sum(&p.addrs[..2], "rmb_relay_takeovers_total").await;
    assert_eq!(takeovers, 0.0, "the dead pod's lease has not run out yet");
}

/// Pods restarted one by one while their owners are cached for a minute: a session that
/// moves from a live pod to another is still reached through the old pod, which re-routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_moved_between_live_pods_get_every_envelope_despite_cached_owners() {
    let cluster = RedisCluster::start(3, 0);
    rolling_restart_under_traffic(cluster.url(), &["--redis-owner-cache-ms", "60000"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_pod_under_traffic_loses_no_envelope() {
    let redis = RedisServer::start();
    rolling_restart_under_traffic(redis.url(), &[]).await;
}

/// Every pod (flags `extra`) drained with SIGTERM and started again, one after the other,
/// while senders send to receivers on pod 0: nothing is lost.
async fn rolling_restart_under_traffic(redis_url: String, extra: &[&str]) {
    let ts = twins(1, 8);
    let mut p = Pods3::start_with(3, redis_url, &ts, "2", extra).await;
    let mut procs: Vec<RelayProcess> = p.procs.iter_mut().map(|x| x.take().unwrap()).collect();
    let restarter = {
        let addrs = p.addrs.clone();
        let file = p.twins_file.clone();
        let url = p.redis_url.clone();
        let extra = p.extra.clone();
        async move {
            let mut fresh_pods = Vec::new();
            for (i, proc_) in procs.drain(..).enumerate() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                proc_.signal("TERM");
                assert_eq!(
                    proc_.wait(Duration::from_secs(20)).await,
                    Some(0),
                    "pod {i} drained"
                );
                fresh_pods.push(spawn_pod_with_lease(addrs[i], &file, &url, "2", &extra).await);
            }
            fresh_pods
        }
    };
    let scenario = run_traffic_with(&mut p, 0, restarter);
    let fresh_pods = tokio::time::timeout(Duration::from_secs(120), scenario)
        .await
        .expect("scenario finishes");
    drop(fresh_pods);
}

/// Two ready relay processes on `redis` named `pod-a` and `pod-b` (so tests can name their
/// Redis keys), with lease `lease` and the flags `extra`; the directory holds their twins
/// file.
async fn named_pods(
    redis: &RedisServer,
    ts: &[TestTwin],
    lease: &str,
    extra: &[&str],
) -> (Vec<RelayProcess>, [SocketAddr; 2], tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let twins_file = write_twins_file(dir.path(), ts);
    let addrs = [free_addr(), free_addr()];
    let mut procs = Vec::new();
    for (addr, pod) in addrs.iter().zip(["pod-a", "pod-b"]) {
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--pod-id".to_string(), pod.to_string()]);
        procs.push(spawn_pod_with_lease(*addr, &twins_file, &redis.url(), lease, &extra).await);
    }
    for addr in addrs {
        wait_ready(addr).await;
    }
    (procs, addrs, dir)
}

/// Twin 1 connected to `pod-a`, twin 2 to `pod-b`, after one envelope between them.
async fn sender_on_a_receiver_on_b(
    addrs: [SocketAddr; 2],
    ts: &[TestTwin],
) -> (rmb_testkit::client::WsClient, rmb_testkit::client::WsClient) {
    use rmb_testkit::client::WsClient;
    let mut sender = WsClient::connect(&format!("ws://{}", addrs[0]), &ts[0], None).await;
    let mut receiver = WsClient::connect(&format!("ws://{}", addrs[1]), &ts[1], None).await;
    let warm = sender.request("warm", rmb_proto::Address::new(2, None), "x", b"1");
    sender.send(&warm).await;
    assert_eq!(receiver.expect_envelope().await.uid, "warm");
    (sender, receiver)
}

/// Redis moves an entry into a pod's pending list when it *runs* the pod's read, whether or
/// not the reply arrives: a read that timed out while the pod or Redis stalled, a command
/// retried on a new connection, a reply lost with a failed master. Here the test takes that
/// read itself while the pod is stopped. The pod finds such an entry and delivers it within
/// seconds, instead of after the minute-long reclaim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_read_reply_was_lost_is_delivered_within_seconds() {
    use rmb_proto::Address;
    use rmb_testkit::client::Received;

    let redis = RedisServer::start();
    let ts = twins(1, 2);
    // A long lease: the stopped pod keeps its session; only the read reply goes missing.
    let (procs, addrs, _dir) = named_pods(&redis, &ts, "30", &[]).await;
    let (mut sender, mut receiver) = sender_on_a_receiver_on_b(addrs, &ts).await;

    procs[1].signal("STOP");
    // Its blocking read (500 ms) ends inside Redis; no new one can start.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sender
        .send(&sender.request("lost-reply", Address::new(2, None), "x", b"1"))
        .await;
    let inbox = "rmb:{p:pod-b}:inbox";
    let mut taken = false;
    for _ in 0..50 {
        let read = redis.cli(&[
            "XREADGROUP",
            "GROUP",
            "relay",
            "pod-b",
            "COUNT",
            "10",
            "STREAMS",
            inbox,
            ">",
        ]);
        if read.is_some_and(|r| r.contains("lost-reply")) {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    procs[1].signal("CONT");
    assert!(taken, "the envelope never reached pod-b's inbox");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match receiver.next(left).await {
            Some(Received::Envelope(env)) if env.uid == "lost-reply" => break,
            Some(Received::Envelope(_)) => {}
            other => panic!("the entry whose read reply was lost never arrived: {other:?}"),
        }
    }
    assert!(metric_sum(&addrs[1..], "rmb_relay_inbox_recovered_total").await >= 1.0);
}

/// Right after its own connection to Redis came back, a pod does not judge other pods by
/// their leases: after an outage every lease looks expired, and the others need a moment to
/// renew theirs. Without that, every pod takes every live pod over after each outage longer
/// than a lease. A pod that stays silent is still taken over once the grace has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_just_reconnected_to_redis_does_not_take_other_pods_over_at_once() {
    let redis = RedisServer::start();
    let ts = twins(1, 2);
    let (procs, addrs, _dir) = named_pods(&redis, &ts, "2", &[]).await;
    // pod-b falls silent and pod-a's connections to Redis drop and come back...
    procs[1].signal("STOP");
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...while pod-b's lease looks long expired, as after an outage of many leases.
    let long_ago = (rmb_proto::unix_now() - 30) * 1000;
    redis.cli(&["ZADD", "rmb:pods", &long_ago.to_string(), "pod-b"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let early = metric_sum(&addrs[..1], "rmb_relay_takeovers_total").await;
    assert_eq!(
        early, 0.0,
        "pod-a judged pod-b right after its own reconnection"
    );
    // pod-b stays silent: once pod-a has been connected for a while, it takes pod-b over.
    let mut taken = 0.0;
    for _ in 0..100 {
        taken = metric_sum(&addrs[..1], "rmb_relay_takeovers_total").await;
        if taken >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    procs[1].signal("CONT");
    assert_eq!(taken, 1.0, "a pod that stays silent is still taken over");
}

/// `--inbox-max` bounds a pod's inbox (in entries): while a stopped pod's inbox is full,
/// envelopes for its sessions are refused with an error instead of stored (nothing stored is
/// trimmed), and what was accepted is delivered once the pod runs again. Each envelope is sent
/// alone and answered (ping) before the next, so each is an entry of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_refuses_mail_and_loses_none_of_what_it_accepted() {
    use rmb_proto::{codes, Address, Message};
    use rmb_testkit::client::error_of;

    let redis = RedisServer::start();
    let ts = twins(1, 2);
    let (procs, addrs, _dir) = named_pods(&redis, &ts, "30", &["--inbox-max", "40"]).await;
    let (mut sender, mut receiver) = sender_on_a_receiver_on_b(addrs, &ts).await;

    procs[1].signal("STOP");
    let mut accepted = std::collections::BTreeSet::new();
    let mut refused = 0;
    for round in 0..100 {
        let mut burst: Vec<_> = (0..1)
            .map(|i| {
                let uid = format!("m-{round}-{i}");
                sender.request(&uid, Address::new(2, None), "x", b"1")
            })
            .collect();
        burst.push(sender.relay_ping(&format!("ping-{round}")));
        sender.send_pipelined(&burst).await;
        let mut refused_now = std::collections::HashSet::new();
        loop {
            let answer = sender.expect_envelope().await;
            if matches!(answer.message, Some(Message::Pong(_))) {
                break;
            }
            let (code, message) = error_of(&answer);
            assert_eq!(code, codes::UNAVAILABLE, "{message}");
            assert!(message.contains("is full"), "{message}");
            refused_now.insert(answer.uid);
        }
        refused += refused_now.len();
        for env in &burst[..1] {
            if !refused_now.contains(&env.uid) {
                accepted.insert(env.uid.clone());
            }
        }
    }
    let length: usize = redis
        .cli(&["XLEN", "rmb:{p:pod-b}:inbox"])
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(usize::MAX);
    procs[1].signal("CONT");
    assert!(refused > 0, "nothing was refused");
    assert!(
        (30..=40).contains(&length),
        "inbox of {length} entries against a bound of 40"
    );
    assert!(accepted.len() >= 30, "only {} accepted", accepted.len());
    let mut delivered = std::collections::BTreeSet::new();
    while delivered.len() < accepted.len() {
        let env = receiver.expect_envelope().await;
        assert!(accepted.contains(&env.uid), "{} was refused", env.uid);
        delivered.insert(env.uid);
    }
}

/// Counts the `e` (one envelope) and `b` (packed envelopes) fields of a stream's entries.
fn inbox_fields(redis: &RedisServer, inbox: &str) -> (usize, usize) {
    const COUNT: &str = "local e, b = 0, 0 \
        for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do \
          local f = entry[2] \
          for i = 1, #f, 2 do \
            if f[i] == 'e' then e = e + 1 elseif f[i] == 'b' then b = b + 1 end \
          end \
        end \
        return {e, b}";
    let out = redis.cli(&["EVAL", COUNT, "1", inbox]).unwrap_or_default();
    let mut n = out.lines().filter_map(|l| l.trim().parse::<usize>().ok());
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

/// Envelopes are packed into one inbox entry per session only for pods that say (every
/// second) that they read such entries; a pod that stopped saying so, like a pod of an older
/// version during a rolling upgrade, gets one envelope per entry, which every version reads.
/// Either way every envelope arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pods_that_read_packed_entries_get_them_and_every_envelope_arrives_in_order() {
    use rmb_proto::{Address, Message};

    let redis = RedisServer::start();
    let ts = twins(1, 2);
    let (procs, addrs, _dir) = named_pods(&redis, &ts, "30", &[]).await;
    let (mut sender, mut receiver) = sender_on_a_receiver_on_b(addrs, &ts).await;
    let inbox = "rmb:{p:pod-b}:inbox";

    let burst = |sender: &rmb_testkit::client::WsClient, tag: &str| {
        let mut burst: Vec<_> = (0..10)
            .map(|i| sender.request(&format!("{tag}-{i}"), Address::new(2, None), "x", b"1"))
            .collect();
        burst.push(sender.relay_ping(&format!("{tag}-ping")));
        burst
    };
    // pod-a reads who reads packed entries every 500 ms: let it see pod-b's word once.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // pod-b said it reads packed entries less than a second ago.
    procs[1].signal("STOP");
    let fresh = burst(&sender, "fresh");
    sender.send_pipelined(&fresh).await;
    let pong = sender.expect_envelope().await;
    assert!(matches!(pong.message, Some(Message::Pong(_))), "{pong:?}");
    let (single, packed) = inbox_fields(&redis, inbox);
    assert!(
        single == 0 && packed >= 1,
        "pod-b reads packed entries: {single} single, {packed} packed"
    );

    // Silent for over three seconds: pod-b may be an older version now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stale = burst(&sender, "stale");
    sender.send_pipelined(&stale).await;
    let pong = sender.expect_envelope().await;
    assert!(matches!(pong.message, Some(Message::Pong(_))), "{pong:?}");
    let (single_now, packed_now) = inbox_fields(&redis, inbox);
    assert_eq!(
        (single_now, packed_now),
        (10, packed),
        "pod-b stopped saying it reads packed entries"
    );

    procs[1].signal("CONT");
    let expected: Vec<String> = fresh[..10]
        .iter()
        .chain(&stale[..10])
        .map(|e| e.uid.clone())
        .collect();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(receiver.expect_envelope().await.uid);
    }
    assert_eq!(got, expected);
}

/// Envelopes appended together for one session share one inbox entry. The entry stays in the
/// inbox until the session confirmed the last of them: when the pod is killed while its peer
/// has confirmed only the first few, the rest reach the twin on the pod it reconnects to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_entry_outlives_the_pod_until_its_last_envelope_is_confirmed() {
    use rmb_proto::Address;
    use rmb_testkit::client::WsClient;

    const MAIL: usize = 60;
    let redis = RedisServer::start();
    let ts = twins(1, 2);
    // A long lease: only the per-session takeover can move the entry in time. Two envelopes
    // per write: the first ones are confirmed while most of the entry is not.
    let (procs, addrs, _dir) = named_pods(&redis, &ts, "120", &["--max-unconfirmed", "2"]).await;
    // pod-a must have seen pod-b say it reads packed entries.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut sender = WsClient::connect(&format!("ws://{}", addrs[0]), &ts[0], None).await;
    // A session that never reads, with a receive buffer of a few KiB.
    let stalled = rmb_testkit::client::connect_shaped(addrs[1], &ts[1], true, Some(4096)).await;
    let burst: Vec<_> = (0..MAIL)
        .map(|i| {
            let uid = format!("m-{i:03}");
            sender.request(&uid, Address::new(2, None), "x", &[7u8; 1024])
        })
        .collect();
    sender.send_pipelined(&burst).await;
    // pod-b writes what the stalled session's window takes; its TCP acknowledges a few.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (single, packed) = inbox_fields(&redis, "rmb:{p:pod-b}:inbox");
    assert!(
        single == 0 && packed >= 1,
        "the burst is held in packed entries: {single} single, {packed} packed"
    );
    procs[1].signal("KILL");
    drop(stalled);

    let mut receiver = WsClient::connect(&format!("ws://{}", addrs[0]), &ts[1], None).await;
    let first = receiver.expect_envelope().await.uid;
    let skipped: usize = first["m-".len()..].parse().unwrap();
    assert!(
        skipped <= 32,
        "only what fit the stalled session's receive buffer may count as confirmed; redelivery starts at {first}"
    );
    let mut missing: std::collections::BTreeSet<String> =
        (skipped + 1..MAIL).map(|i| format!("m-{i:03}")).collect();
    while !missing.is_empty() {
        let uid = receiver.expect_envelope().await.uid;
        missing.remove(&uid);
    }
}
