//! Calls in flight while relays fail: a relay process killed and restarted, and a relay pod
//! lost in cluster mode (Redis Cluster, two relay processes, gateways configured with both).
//! Every call must end, with its response or a timeout error (the callers' gateways run with
//! `--timeout-errors`), never hang.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use rmb_testkit::redis::RedisCluster;
use rmb_testkit::relay::{free_addr, RelayProcess};
use rmb_testkit::twins::{twins, write_twins_file};
use serde_json::Value;
use support::{echo, relay_binary, relays, request, Side};

/// Pushes `n` calls to `cmd` on `dst`, references `{tag}-{i}`, living `exp` seconds.
async fn push_calls(caller: &Side, tag: &str, cmd: &str, dst: u32, n: usize, exp: u64) {
    for i in 0..n {
        caller
            .push(
                "msgbus.system.local",
                request(
                    &format!("{tag}-{i}"),
                    cmd,
                    &[dst],
                    "inflight.ret",
                    exp,
                    b"[0]",
                ),
            )
            .await;
    }
}

/// Collects one answer per call from the caller's `ret` list; every call must end by its
/// expiry (plus slack) with a response or a timeout error. Returns (answered, timed out).
async fn collect(caller: &Side, n: usize, exp: u64) -> (usize, usize) {
    let mut seen: HashMap<String, Value> = HashMap::new();
    while seen.len() < n {
        let resp = caller.pop_within("inflight.ret", (exp + 5) as f64).await;
        let reference = resp["ref"].as_str().expect("ref").to_string();
        assert!(
            seen.insert(reference.clone(), resp.clone()).is_none(),
            "{reference} answered twice"
        );
    }
    let timed_out = seen
        .values()
        .filter(|r| !r["err"].is_null())
        .inspect(|r| {
            let message = r["err"]["message"].as_str().unwrap_or_default();
            assert!(message.starts_with("timeout:"), "unexpected error {r}");
        })
        .count();
    (n - timed_out, timed_out)
}

/// Serves `cmd` on `side` with echo answers until `stop`.
fn echo_service(
    side: &Side,
    cmd: &str,
) -> (
    tokio::task::JoinHandle<usize>,
    tokio_util::sync::CancellationToken,
) {
    let redis = side.redis.clone();
    let list = format!("msgbus.{cmd}");
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        use fred::prelude::ListInterface as _;
        let mut served = 0;
        while !stopped.is_cancelled() {
            let popped: Result<Option<(String, String)>, _> = redis.brpop(list.as_str(), 0.2).await;
            let Ok(Some((_, doc))) = popped else { continue };
            let req: Value = serde_json::from_str(&doc).unwrap();
            let _: Result<i64, _> = redis
                .lpush("msgbus.system.reply", echo(&req).to_string())
                .await;
            served += 1;
        }
        served
    });
    (task, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_end_with_an_answer_or_a_timeout_when_the_relay_restarts() {
    const N: usize = 20;
    const EXP: u64 = 4;
    let binary = relay_binary();
    let ts = twins(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let addr = free_addr();
    let relay = RelayProcess::spawn_at(addr, &binary, &file, &[]).await;
    let caller = Side::start_with_timeouts(relays(&[&relay.url]), &ts[0], &file).await;
    let service = Side::start(&relay.url, &ts[1], &file).await;

    // Calls go out; the service is not serving yet, so they are in flight when the relay dies.
    push_calls(&caller, "before", "svc.slow", ts[1].id, N, EXP).await;
    for _ in 0..500 {
        if service.len("msgbus.svc.slow").await >= (N / 2) as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.signal("KILL");
    drop(relay);
    let relay = RelayProcess::spawn_at(addr, &binary, &file, &[]).await;
    let (server, stop) = echo_service(&service, "svc.slow");
    let (answered, timed_out) = collect(&caller, N, EXP).await;
    eprintln!("relay restart: {answered} calls answered, {timed_out} timed out");
    assert_eq!(answered + timed_out, N);

    // Both gateways are back on the restarted relay: new calls are answered.
    caller.wait_connects(2).await;
    service.wait_connects(2).await;
    push_calls(&caller, "after", "svc.slow", ts[1].id, 5, 10).await;
    let (answered, timed_out) = collect(&caller, 5, 10).await;
    assert_eq!((answered, timed_out), (5, 0));
    stop.cancel();
    let _ = server.await;
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_end_and_the_gateway_fails_over_when_a_cluster_pod_is_lost() {
    const N: usize = 20;
    const EXP: u64 = 8;
    let binary = relay_binary();
    let cluster = RedisCluster::start(3, 0);
    let redis_url = cluster.url();
    let ts = twins(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let args = [
        "--redis",
        redis_url.as_str(),
        "--redis-lease-seconds",
        "2",
        "--drain-seconds",
        "1",
    ];
    let mut pods = [
        Some(RelayProcess::spawn(&binary, &file, &args).await),
        Some(RelayProcess::spawn(&binary, &file, &args).await),
    ];
    let urls: Vec<String> = pods.iter().flatten().map(|p| p.url.clone()).collect();
    let both = relays(&[&urls[0], &urls[1]]);
    let caller = Side::start_with_timeouts(both.clone(), &ts[0], &file).await;
    let service = Side::start_with(both, &ts[1], &file, 1000).await;
    // One session per twin survives (the relay keeps one per twin cluster-wide); the other
    // waits on standby.
    // The pod holding a side's only open session, once both sessions have opened once.
    let active = |side: &Side| -> Option<usize> {
        let text = side.metrics.render();
        let up: Vec<usize> = (0..2)
            .filter(|i| {
                support::series(
                    &text,
                    "rmb_peer_relay_connected",
                    &format!("relay=\"{}\"", urls[*i]),
                ) == Some(1.0)
            })
            .collect();
        match up.as_slice() {
            [one] if side.metrics.relay_connects(None) >= 2 => Some(*one),
            _ => None,
        }
    };
    let mut victim = None;
    for _ in 0..1000 {
        victim = active(&caller);
        if victim.is_some() && active(&service).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim = victim.expect("the caller has an open session");

    // Calls go out; the service answers only after the caller's pod is lost, so every
    // answer must find the caller through the surviving pod.
    push_calls(&caller, "inflight", "svc.work", ts[1].id, N, EXP).await;
    for _ in 0..500 {
        if service.len("msgbus.svc.work").await >= (N / 2) as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(pod) = pods[victim].take() {
        pod.signal("KILL");
        drop(pod);
    }
    let (server, stop) = echo_service(&service, "svc.work");
    let (answered, timed_out) = collect(&caller, N, EXP).await;
    eprintln!("pod {victim} lost: {answered} calls answered, {timed_out} timed out");
    assert_eq!(answered + timed_out, N);

    // The caller now talks through the surviving pod.
    let survivor = 1 - victim;
    for _ in 0..1000 {
        if active(&caller) == Some(survivor) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(active(&caller), Some(survivor), "failed over");
    push_calls(&caller, "after", "svc.work", ts[1].id, 5, 15).await;
    let (answered, timed_out) = collect(&caller, 5, 15).await;
    assert_eq!((answered, timed_out), (5, 0));
    stop.cancel();
    let _ = server.await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_relay_is_detected_and_its_unconfirmed_envelopes_go_through_another() {
    const N: usize = 20;
    const EXP: u64 = 20;
    let binary = relay_binary();
    let ts = twins(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let stalled = RelayProcess::spawn(&binary, &file, &[]).await;
    let healthy = RelayProcess::spawn(&binary, &file, &[]).await;
    // Two independent relays; both twins hold a session with each. Quick silence detection.
    let settings = rmb_peer::pool::PoolSettings {
        keepalive: Duration::from_millis(500),
        silence_limit: Duration::from_secs(2),
        ..relays(&[&stalled.url, &healthy.url])
    };
    let caller = Side::start_with_timeouts(settings.clone(), &ts[0], &file).await;
    let service = Side::start_with(settings, &ts[1], &file, 1000).await;
    caller.wait_connects(2).await;
    service.wait_connects(2).await;

    // The relay freezes: its sockets stay open, it reads and answers nothing.
    stalled.signal("STOP");
    let (server, stop) = echo_service(&service, "svc.echo");
    push_calls(&caller, "stall", "svc.echo", ts[1].id, N, EXP).await;
    let (answered, timed_out) = collect(&caller, N, EXP).await;
    assert_eq!(
        (answered, timed_out),
        (N, 0),
        "what the frozen relay took was sent again through the other"
    );
    // The frozen relay's session is given up for silence (its pings get no pong).
    let label = format!("reason=\"silent\",relay=\"{}\"", stalled.url);
    let mut silent = None;
    for _ in 0..1000 {
        silent = support::series(
            &caller.metrics.render(),
            "rmb_peer_relay_disconnects_total",
            &label,
        );
        if silent.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(silent, Some(1.0), "{}", caller.metrics.render());
    stop.cancel();
    let _ = server.await;
    stalled.signal("CONT");
}
