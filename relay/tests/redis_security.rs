//! The Redis backplane works with a password, with an ACL user limited to the relay's own
//! keys, and over TLS; bad credentials show on /readyz instead of failing silently.

use std::path::Path;
use std::time::Duration;

use rmb_proto::Address;
use rmb_testkit::client::WsClient;
use rmb_testkit::redis::{RedisServer, TlsFiles};
use rmb_testkit::relay::{http_get, RelayProcess, TestRelay};
use rmb_testkit::twins::{twins, write_twins_file};

async fn ready_status(addr: std::net::SocketAddr) -> u16 {
    for _ in 0..100 {
        if let Some((200, _)) = http_get(addr, "/readyz").await {
            return 200;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    http_get(addr, "/readyz").await.map_or(0, |(s, _)| s)
}

async fn exchange(url: &str) {
    let ts = twins(1, 2);
    let mut a = WsClient::connect(url, &ts[0], None).await;
    let mut b = WsClient::connect(url, &ts[1], None).await;
    a.send(&a.request("secure", Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, "secure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_is_used_and_a_wrong_password_is_not_ready() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let good = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    let relay = TestRelay::start(&twins(1, 2), &["--redis", &good]).await;
    assert_eq!(ready_status(relay.addr).await, 200);
    exchange(&relay.url).await;

    let bad = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let relay = TestRelay::start(&twins(1, 2), &["--redis", &bad]).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, body) = http_get(relay.addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_limited_to_rmb_keys_is_enough() {
    let redis = RedisServer::start_with(&[
        "--user", "default", "off", "--user", "relay", "on", ">pw", "~rmb:*", "&*", "+@all",
    ]);
    let url = format!("redis://relay:pw@127.0.0.1:{}", redis.port);
    let relay = TestRelay::start(&twins(1, 2), &["--redis", &url]).await;
    assert_eq!(ready_status(relay.addr).await, 200);
    exchange(&relay.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_redis_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(dir.path());
    let redis = RedisServer::start_tls(&tls);
    assert!(redis.cli(&["ping"]).is_some_and(|r| r.contains("PONG")));
    let ts = twins(1, 2);
    let file = write_twins_file(dir.path(), &ts);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    // The relay trusts the system roots; SSL_CERT_FILE points it at the private CA.
    let relay = RelayProcess::spawn_with_env(
        Path::new(env!("CARGO_BIN_EXE_rmb-relay")),
        &file,
        &["--redis", &url],
        &[("SSL_CERT_FILE", tls.ca.to_str().unwrap())],
    )
    .await;
    assert_eq!(ready_status(relay.addr).await, 200);
    exchange(&relay.url).await;

    // A relay trusting another CA must not talk to this server: with certificate checks
    // off it would be ready, with them on it never is.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = TlsFiles::generate(other_dir.path());
    let untrusting = RelayProcess::spawn_with_env(
        Path::new(env!("CARGO_BIN_EXE_rmb-relay")),
        &file,
        &["--redis", &url],
        &[("SSL_CERT_FILE", other_ca.ca.to_str().unwrap())],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, body) = http_get(untrusting.addr, "/readyz").await.unwrap();
    assert_eq!(
        status, 503,
        "a server with an untrusted certificate was used: {body}"
    );
}
