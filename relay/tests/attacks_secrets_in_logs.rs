//! Secrets never reach the logs: a real relay process at the most verbose log level, with a
//! password-protected Redis, sees good and bad session tokens (query string and bearer
//! header); neither the tokens nor the Redis password appear anywhere in its output.

use std::process::{Command, Stdio};

use rmb_identity::{issue_token, Claims};
use rmb_proto::{unix_now, Address};
use rmb_testkit::client::WsClient;
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::{free_addr, wait_for_http};
use rmb_testkit::twins::{twins, write_twins_file, TestTwin};

const PASSWORD: &str = "pw-that-must-not-leak-9f3c";

/// The third segment of a token: enough to replay it, so it must never be printed.
fn signature_segment(token: &str) -> &str {
    token.rsplit('.').next().unwrap_or(token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_the_redis_password_never_appear_in_trace_logs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ts = twins(1, 2);
    let file = write_twins_file(dir.path(), &ts);
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port);
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let addr = free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rmb-relay"))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--twins")
        .arg(&file)
        .args(["--redis", &url])
        .env("RMB_LOG", "trace")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start rmb-relay");
    wait_for_http(addr, "/healthz").await;
    let ws = format!("ws://{addr}");

    // Honest sessions, by query string and by bearer header, exchanging an envelope.
    let mut seen_tokens = Vec::new();
    let mut a = WsClient::connect(&ws, &ts[0], Some("logs")).await;
    let mut b = WsClient::connect_bearer(&ws, &ts[1]).await.expect("bearer");
    a.send(&a.request("logged", Address::new(2, None), "x", b"1"))
        .await;
    assert_eq!(b.expect_envelope().await.uid, "logged");
    // Refused tokens: a stranger's signature, and an expired genuine one.
    let stranger = TestTwin::seeded(1, rmb_identity::KeyType::Ed25519, 77);
    let now = unix_now();
    for token in [
        issue_token(
            &stranger.signer,
            &Claims {
                sub: 1,
                iat: now,
                exp: now + 60,
                sid: None,
                aud: None,
            },
        ),
        issue_token(
            &ts[0].signer,
            &Claims {
                sub: 1,
                iat: now - 600,
                exp: now - 300,
                sid: None,
                aud: None,
            },
        ),
    ] {
        assert!(WsClient::connect_raw(&ws, &token).await.is_err());
        seen_tokens.push(token);
    }
    a.close().await;
    b.close().await;
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&log_path).expect("read log");
    assert!(!text.is_empty(), "trace logging produced nothing");
    assert!(
        !text.contains(PASSWORD),
        "the Redis password is in the logs"
    );
    // Every token starts with the same header segment: none may appear, whoever sent it.
    let header = seen_tokens[0].split('.').next().unwrap_or_default();
    assert!(!text.contains(header), "a session token is in the logs");
    for token in &seen_tokens {
        assert!(
            !text.contains(signature_segment(token)),
            "a session token is in the logs"
        );
    }
}
