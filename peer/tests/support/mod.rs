//! Helpers shared by the peer's integration tests: a gateway with its own redis-server and a
//! plain Redis client acting as a caller or service, as a Go or Python program would.
#![allow(dead_code)]
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod fake_relay;
pub mod process;
pub mod tls_proxy;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use fred::prelude::*;
use rmb_identity::{CacheSettings, CachedDirectory, FileDirectory, TwinDirectory};
use rmb_peer::gateway::{self, Metrics, DEFAULT_MAX_QUEUE_LENGTH};
use rmb_peer::pool::PoolSettings;
use rmb_peer::sdk::{Client as SdkClient, ClientConfig};
use rmb_testkit::redis::RedisServer;
use rmb_testkit::twins::TestTwin;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for a document that should come.
pub const WAIT: f64 = 10.0;

/// One twin's side: its redis-server, its gateway, and a plain Redis client.
pub struct Side {
    pub server: RedisServer,
    pub redis: Client,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), gateway::GatewayError>>,
}

/// A direct SDK client for `twin` on `relay`, reading twins from `twins_file`.
pub async fn sdk_client(relay: PoolSettings, twin: &TestTwin, twins_file: &Path) -> SdkClient {
    SdkClient::connect(ClientConfig {
        signer: twin.signer.clone(),
        twin: None,
        directory: directory(twins_file),
        relay,
        metrics: Arc::new(Metrics::new().expect("valid metrics")),
    })
    .await
    .unwrap_or_else(|e| panic!("sdk client for twin {}: {e}", twin.id))
}

/// Pool settings for tests: the given relays, default timings.
pub fn relays(urls: &[&str]) -> PoolSettings {
    PoolSettings {
        relays: urls.iter().map(|u| u.to_string()).collect(),
        ..PoolSettings::default()
    }
}

/// A directory over a twins file, as the binary builds it.
pub fn directory(twins_file: &Path) -> Arc<CachedDirectory<FileDirectory>> {
    CachedDirectory::new(
        FileDirectory::open(twins_file).unwrap(),
        CacheSettings::default(),
    )
}

impl Side {
    /// A gateway for `twin` on the relay at `url`.
    pub async fn start(url: &str, twin: &TestTwin, twins_file: &Path) -> Side {
        Side::start_with(relays(&[url]), twin, twins_file, DEFAULT_MAX_QUEUE_LENGTH).await
    }

    /// A gateway with full relay settings and a service queue bound.
    pub async fn start_with(
        relay: PoolSettings,
        twin: &TestTwin,
        twins_file: &Path,
        max_queue_length: usize,
    ) -> Side {
        let server = RedisServer::start();
        Side::start_custom(twin, directory(twins_file), server, |config| {
            config.relay = relay;
            config.max_queue_length = max_queue_length;
        })
        .await
    }

    /// A gateway that answers every destination that stays silent past a request's expiry
    /// with a `timeout:` error (`--timeout-errors`), so every call ends with a document.
    pub async fn start_with_timeouts(
        relay: PoolSettings,
        twin: &TestTwin,
        twins_file: &Path,
    ) -> Side {
        Side::start_custom(
            twin,
            directory(twins_file),
            RedisServer::start(),
            |config| {
                config.relay = relay;
                config.timeout_errors = true;
            },
        )
        .await
    }

    /// A gateway for `twin` on its own `server` (reached at `server.url()` unless `tweak`
    /// changes `config.redis_url`), with the test defaults changed by `tweak` (relays are
    /// required: set `config.relay`).
    pub async fn start_custom(
        twin: &TestTwin,
        directory: Arc<dyn TwinDirectory>,
        server: RedisServer,
        tweak: impl FnOnce(&mut gateway::Config),
    ) -> Side {
        let metrics = Arc::new(Metrics::new().expect("valid metrics"));
        let mut config = gateway::Config {
            signer: twin.signer.clone(),
            twin: None,
            redis_url: server.url(),
            relay: PoolSettings::default(),
            directory,
            max_queue_length: DEFAULT_MAX_QUEUE_LENGTH,
            timeout_errors: false,
            metrics: metrics.clone(),
        };
        tweak(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::run(config, async {
            let _ = stopped.await;
        }));
        let redis = Builder::from_config(fred::prelude::Config::from_url(&server.url()).unwrap())
            .set_policy(ReconnectPolicy::new_constant(0, 100))
            .build()
            .unwrap();
        redis.init().await.unwrap();
        let side = Side {
            server,
            redis,
            metrics,
            stop: Some(stop),
            task,
        };
        side.wait_connects(1).await;
        side
    }

    /// Waits until the gateway opened `n` relay sessions in total.
    pub async fn wait_connects(&self, n: u64) {
        for _ in 0..1500 {
            if self.metrics.relay_connects(None) >= n {
                return;
            }
            assert!(!self.task.is_finished(), "gateway stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gateway did not open {n} relay sessions");
    }

    /// Pushes a document on `list`, as callers and services do.
    pub async fn push(&self, list: &str, doc: Value) {
        let _: i64 = self.redis.lpush(list, doc.to_string()).await.unwrap();
    }

    /// Pops the next document from `list`, failing after a while.
    pub async fn pop(&self, list: &str) -> Value {
        self.pop_within(list, WAIT).await
    }

    /// Pops the next document from `list`, failing after `secs`.
    pub async fn pop_within(&self, list: &str, secs: f64) -> Value {
        let popped: Option<(String, String)> = self.redis.brpop(list, secs).await.unwrap();
        let (_, doc) = popped.unwrap_or_else(|| panic!("nothing arrived on {list}"));
        serde_json::from_str(&doc).unwrap()
    }

    pub async fn len(&self, list: &str) -> i64 {
        self.redis.llen(list).await.unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("gateway stops in time")
            .expect("gateway task does not panic");
        result.expect("gateway ran cleanly");
    }
}

/// The `rmb-relay` binary, built next to this test's directory: `cargo test --workspace`
/// builds it (the relay's own tests need it); with `-p rmb-peer` alone, build it first with
/// `cargo build -p rmb-relay`.
pub fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join(format!("rmb-relay{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "no rmb-relay binary at {}: run `cargo build -p rmb-relay` first \
         (cargo test --workspace builds it)",
        binary.display()
    );
    binary
}

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(v: &Value) -> Vec<u8> {
    STANDARD
        .decode(v.as_str().expect("dat is a string"))
        .unwrap()
}

/// A caller's request document.
pub fn request(reference: &str, cmd: &str, dst: &[u32], ret: &str, exp: u64, dat: &[u8]) -> Value {
    json!({
        "ver": 1, "ref": reference, "cmd": cmd, "exp": exp, "dat": b64(dat), "tag": null,
        "dst": dst, "ret": ret, "shm": "application/json", "now": rmb_proto::unix_now(),
    })
}

/// Serves one request for `cmd` on `side`: checks it and answers with `answer`.
pub async fn serve_one(side: &Side, cmd: &str, answer: impl FnOnce(&Value) -> Value) -> Value {
    let req = side.pop(&format!("msgbus.{cmd}")).await;
    assert_eq!(req["cmd"], cmd);
    assert_eq!(req["ret"], "msgbus.system.reply");
    let reply = answer(&req);
    side.push("msgbus.system.reply", reply).await;
    req
}

/// An echo answer to a request document.
pub fn echo(req: &Value) -> Value {
    json!({"ver": 1, "ref": req["ref"], "dat": req["dat"], "dst": req["src"]})
}

/// The value of the series of `name` with exactly `labels` (like `reason="bad_signature"`)
/// in a Prometheus text exposition.
pub fn series(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}
