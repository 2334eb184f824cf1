//! Short runs of every scenario against a real relay: the report's accounting must add up
//! (sent = delivered + lost, duplicates counted), whatever the speed.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rmb_identity::{KeyType, Signer};
use rmb_loadtest::identities::{self, LoadIdentity};
use rmb_loadtest::report::Report;
use rmb_loadtest::scenario::{run, RunConfig, Scenario};
use rmb_testkit::relay::{test_config, TestRelay};

struct Setup {
    relay: TestRelay,
    ids: Vec<(LoadIdentity, Signer)>,
    _dir: tempfile::TempDir,
}

async fn setup(count: u32, extra: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let generated = identities::generate(count, 7, 100, KeyType::Ed25519);
    let twins = dir.path().join("twins.yaml");
    std::fs::write(
        &twins,
        identities::twins_yaml(&generated, KeyType::Ed25519, None),
    )
    .unwrap();
    let private: Vec<LoadIdentity> = generated.into_iter().map(|(l, _)| l).collect();
    let ids_file = dir.path().join("ids.json");
    identities::write_identities(&ids_file, &private).unwrap();
    let ids = identities::read_identities(&ids_file).unwrap();
    let relay = TestRelay::start_with(test_config(&twins, extra)).await;
    Setup {
        relay,
        ids,
        _dir: dir,
    }
}

fn config(s: &Setup, scenario: Scenario, connections: usize, rate: u64) -> RunConfig {
    RunConfig {
        relays: vec![s.relay.url.clone()],
        identities: s.ids.clone(),
        scenario,
        rate,
        duration: Duration::from_millis(800),
        payload_bytes: 256,
        connections,
        source_ips: Vec::new(),
        sign: false,
        grace: Duration::from_secs(5),
        progress: false,
    }
}

fn assert_accounting(r: &Report) {
    assert!(r.sent > 0, "nothing sent: {r:?}");
    assert_eq!(r.sent, r.delivered + r.lost, "sent = delivered + lost");
    let json = serde_json::to_value(r).unwrap();
    for key in [
        "sent",
        "delivered",
        "lost",
        "duplicates",
        "errors",
        "throughput_per_s",
        "latency_ms",
        "relay_rss_bytes",
    ] {
        assert!(json.get(key).is_some(), "report lacks {key}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(json["latency_ms"].get(p).is_some(), "latency lacks {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_accounts_for_every_envelope() {
    let s = setup(8, &["--rate-messages", "100000"]).await;
    let (r, buckets) = run(config(&s, Scenario::Echo, 8, 400)).await.unwrap();
    assert_accounting(&r);
    assert_eq!(r.lost, 0, "{}", r.summary());
    assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.max >= r.latency_ms.p99);
    assert!(!buckets.is_empty());
    assert!(r.relay_rss_bytes.unwrap_or(0) > 0, "RSS read from /metrics");
    let html = rmb_loadtest::html::render(&r, &buckets);
    assert!(html.contains("<svg") && html.contains("polyline"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_and_errors_are_reported_not_hidden() {
    // A rate limit of 5/s per twin refuses most of the load: those envelopes are lost and
    // counted as errors by code.
    let s = setup(4, &["--rate-messages", "5"]).await;
    let (r, _) = run(config(&s, Scenario::Echo, 4, 400)).await.unwrap();
    assert_accounting(&r);
    assert!(r.lost > 0);
    assert!(
        r.errors.get(&112).copied().unwrap_or(0) > 0,
        "rate-limit errors: {:?}",
        r.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_destination() {
    let s = setup(6, &["--rate-messages", "100000"]).await;
    let (r, _) = run(config(&s, Scenario::Fanout, 6, 50)).await.unwrap();
    assert_accounting(&r);
    assert_eq!(r.lost, 0, "{}", r.summary());
    assert_eq!(r.sent % 5, 0, "each message goes to the 5 other twins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_drains_to_late_receivers() {
    let s = setup(8, &["--rate-messages", "100000"]).await;
    let (r, _) = run(config(&s, Scenario::Mailbox, 8, 200)).await.unwrap();
    assert_accounting(&r);
    assert_eq!(r.lost, 0, "{}", r.summary());
    assert!(r.extra.contains_key("drain_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_keeps_echo_traffic_whole() {
    let s = setup(8, &["--rate-messages", "100000"]).await;
    let (r, _) = run(config(&s, Scenario::Churn, 8, 200)).await.unwrap();
    assert_accounting(&r);
    assert_eq!(r.lost, 0, "{}", r.summary());
    assert!(r.extra["churn_connects_per_s"] > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reports_memory_per_session() {
    let s = setup(50, &[]).await;
    let mut cfg = config(&s, Scenario::Idle, 50, 0);
    cfg.duration = Duration::from_millis(300);
    let (r, _) = run(cfg).await.unwrap();
    assert_eq!(r.extra["sessions"], 50.0);
    assert!(r.extra.contains_key("relay_bytes_per_session"));
}

#[test]
fn identities_are_deterministic() {
    let a = identities::generate(3, 42, 1, KeyType::Sr25519);
    let b = identities::generate(3, 42, 1, KeyType::Sr25519);
    let c = identities::generate(3, 43, 1, KeyType::Sr25519);
    let seeds = |v: &[(LoadIdentity, rmb_identity::Identity)]| {
        v.iter().map(|x| x.0.seed.clone()).collect::<Vec<_>>()
    };
    assert_eq!(seeds(&a), seeds(&b));
    assert_ne!(seeds(&a), seeds(&c));
    assert_eq!(
        a.iter().map(|x| x.0.twin).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}
