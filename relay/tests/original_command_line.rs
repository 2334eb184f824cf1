//! The command lines operators run the original relay with start this relay, and it serves:
//! real processes, a local Redis and `rmb-testchain` in place of tfchain mainnet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rmb_identity::KeyType;
use rmb_proto::Address;
use rmb_testkit::client::WsClient;
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::{free_addr, http_get, wait_ready, RelayProcess};
use rmb_testkit::testchain::TestChain;
use rmb_testkit::twins::{write_twins_file, TestTwin};

const DOMAIN: &str = "relay.example";

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rmb-relay"))
}

/// Twin 1 sends to twin 2 over `url` and gets the answer.
async fn serves(url: &str, a: &TestTwin, b: &TestTwin) {
    let mut ca = WsClient::connect(url, a, None).await;
    let mut cb = WsClient::connect(url, b, None).await;
    let req = ca.request("hello", Address::new(b.id, None), "echo", b"drop-in");
    ca.send(&req).await;
    assert_eq!(cb.expect_envelope().await, req);
    cb.send(&cb.response_to(&req, b"answer")).await;
    assert_eq!(ca.expect_envelope().await.uid, "hello");
}

fn cast() -> Vec<TestTwin> {
    vec![
        TestTwin::new(1, KeyType::Ed25519).on_relays(&[DOMAIN]),
        TestTwin::new(2, KeyType::Sr25519).on_relays(&[DOMAIN]),
    ]
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The original Helm chart's command, with a local Redis and chain and a free port in place
/// of port 80 (same form: every IPv4 address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_charts_command_line_starts_and_serves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ts = cast();
    let chain = TestChain::for_twins(&write_twins_file(dir.path(), &ts)).await;
    let redis = RedisServer::start();
    let port = free_addr().port();
    let (listen, redis_url, chain_url) = (format!("0.0.0.0:{port}"), redis.url(), chain.url());
    let log = dir.path().join("relay.log");
    let args = [
        "-d", "--domain", DOMAIN, "-r", &redis_url, "-s", &chain_url, "-u", "1000", "-w", "500",
        "-l", &listen,
    ];
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let relay = RelayProcess::spawn_command(&binary(), addr, &args, &[], &log).await;
    wait_ready(addr).await;
    serves(&relay.url, &ts[0], &ts[1]).await;
    let text = log_of(&log);
    assert!(
        text.contains("--workers 500 x --user-per-worker 1000"),
        "{text}"
    );
    assert!(text.contains("DEBUG"), "-d turns debug logging on: {text}");
    // -w × -u became the connection cap.
    let out = Command::new(binary())
        .args(args)
        .arg("--check-config")
        .output()
        .expect("check-config");
    let effective: toml::Table = String::from_utf8_lossy(&out.stdout).parse().expect("toml");
    assert_eq!(effective["max_connections"].as_integer(), Some(500_000));
}

/// `rmb-relay --domain X --substrate URL`: no Redis (the in-memory backplane), dual-stack
/// default listen form, several domains after one flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_domains_after_one_flag_are_all_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ts = vec![
        TestTwin::new(1, KeyType::Ed25519).on_relays(&["first.example"]),
        TestTwin::new(2, KeyType::Sr25519).on_relays(&["second.example"]),
    ];
    let chain = TestChain::for_twins(&write_twins_file(dir.path(), &ts)).await;
    let port = free_addr().port();
    let (listen, chain_url) = (format!("[::]:{port}"), chain.url());
    let log = dir.path().join("relay.log");
    let args = [
        "--domain",
        "first.example",
        "second.example",
        "--substrate",
        &chain_url,
        "--listen",
        &listen,
    ];
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let relay = RelayProcess::spawn_command(&binary(), addr, &args, &[], &log).await;
    // Twin 2 is offline: as a twin of this relay (second domain) it gets mail, not federation.
    let mut a = WsClient::connect(&relay.url, &ts[0], None).await;
    let req = a.request("mail", Address::new(2, None), "x", b"for later");
    a.send(&req).await;
    a.expect_silence(Duration::from_millis(300)).await;
    let mut b = WsClient::connect(&relay.url, &ts[1], None).await;
    assert_eq!(b.expect_envelope().await, req);
    assert!(
        log_of(&log).contains("in-memory backplane"),
        "{}",
        log_of(&log)
    );
}

/// `[::]:PORT` (the default's form) takes IPv4 and IPv6 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_listen_form_is_dual_stack() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ts = cast();
    let file = write_twins_file(dir.path(), &ts);
    let port = free_addr().port();
    let listen = format!(":{port}");
    let args = ["--twins", file.to_str().expect("path"), "-l", &listen];
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let _relay =
        RelayProcess::spawn_command(&binary(), v4, &args, &[], &dir.path().join("log")).await;
    let v6: SocketAddr = format!("[::1]:{port}").parse().expect("v6");
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; only IPv4 checked");
        return;
    }
    assert_eq!(http_get(v6, "/healthz").await.map(|r| r.0), Some(200));
    serves(&format!("ws://{v6}"), &ts[0], &ts[1]).await;
    serves(&format!("ws://{v4}"), &ts[0], &ts[1]).await;
}

/// The README's command: a twins file, no Redis, nothing else (plus a free port instead of
/// 8080, which other tests on this machine may hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_command_runs_without_redis() {
    let twins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/twins.yaml");
    let out = Command::new(binary())
        .args(["--twins", twins.to_str().expect("path"), "--check-config"])
        .env_clear()
        .output()
        .expect("check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective: toml::Table = String::from_utf8_lossy(&out.stdout).parse().expect("toml");
    assert!(effective.get("redis").is_none());
    assert_eq!(effective["listen"].as_str(), Some("[::]:8080"));

    let dir = tempfile::tempdir().expect("temp dir");
    let addr = free_addr();
    let listen = addr.to_string();
    let args = [
        "--twins",
        twins.to_str().expect("path"),
        "--listen",
        &listen,
    ];
    let _relay =
        RelayProcess::spawn_command(&binary(), addr, &args, &[], &dir.path().join("log")).await;
    assert_eq!(http_get(addr, "/readyz").await.map(|r| r.0), Some(200));
}

/// With systemd's state directory and no Redis, the generated identity key survives a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_key_is_kept_in_the_state_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_twins_file(dir.path(), &cast());
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let state_env = state.to_str().expect("path").to_string();
    let kid = |addr| async move {
        let (_, body) = http_get(addr, "/.well-known/rmb/relay.json")
            .await
            .expect("key document");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
        doc["keys"][0]["kid"].as_str().expect("kid").to_string()
    };
    let mut kids = Vec::new();
    for round in 0..2 {
        let addr = free_addr();
        let listen = addr.to_string();
        let args = [
            "--twins",
            file.to_str().expect("path"),
            "--domain",
            DOMAIN,
            "--listen",
            &listen,
        ];
        let relay = RelayProcess::spawn_command(
            &binary(),
            addr,
            &args,
            &[("STATE_DIRECTORY", state_env.as_str())],
            &dir.path().join(format!("log-{round}")),
        )
        .await;
        kids.push(kid(addr).await);
        relay.signal("TERM");
        relay.wait(Duration::from_secs(30)).await;
    }
    assert_eq!(kids[0], kids[1], "the same key after a restart");
    assert!(state.join("identity.key").exists());
}
