//! Relays for tests: in-process (fast, many per test) or as a real `rmb-relay` process
//! (for signals and crashes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rmb_relay::{Config, Relay};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::ports::free_addr;
use crate::twins::{write_twins_file, TestTwin};

/// A relay running inside the test process.
pub struct TestRelay {
    /// The bound address.
    pub addr: SocketAddr,
    /// `ws://addr`.
    pub url: String,
    /// `http://addr`.
    pub http: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _dir: Option<TempDir>,
}

/// A temporary directory that is removed on drop.
pub use tempfile::TempDir;

/// Relay settings for tests: loopback, a free port, the given twins file, extra flags.
pub fn test_config(twins_file: &Path, extra: &[&str]) -> Config {
    let mut args: Vec<std::ffi::OsString> = vec![
        "rmb-relay".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--twins".into(),
        twins_file.into(),
        "--twins-poll-ms".into(),
        "50".into(),
        "--drain-seconds".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(Into::into));
    Config::load_from(args).unwrap_or_else(|e| panic!("test relay config: {e}"))
}

impl TestRelay {
    /// Starts a relay serving `twins`, with extra command-line flags.
    pub async fn start(twins: &[TestTwin], extra: &[&str]) -> TestRelay {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let file = write_twins_file(dir.path(), twins);
        let mut relay = TestRelay::start_with(test_config(&file, extra)).await;
        relay._dir = Some(dir);
        relay
    }

    /// Starts a relay with a full config.
    pub async fn start_with(config: Config) -> TestRelay {
        let relay = Relay::bind(config)
            .await
            .unwrap_or_else(|e| panic!("test relay does not start: {e}"));
        let addr = relay.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(relay.serve(async {
            let _ = stopped.await;
        }));
        TestRelay {
            addr,
            url: format!("ws://{addr}"),
            http: format!("http://{addr}"),
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    /// Triggers the drain and waits for the relay to stop.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A real `rmb-relay` process.
pub struct RelayProcess {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `ws://addr`.
    pub url: String,
    /// `http://addr`.
    pub http: String,
}

impl RelayProcess {
    /// Spawns `binary` (pass `env!("CARGO_BIN_EXE_rmb-relay")`) on a free port with `args`,
    /// and waits until it answers `/healthz`.
    pub async fn spawn(binary: &Path, twins_file: &Path, args: &[&str]) -> RelayProcess {
        RelayProcess::spawn_at(free_addr(), binary, twins_file, args).await
    }

    /// Like [`RelayProcess::spawn`] with extra environment variables.
    pub async fn spawn_with_env(
        binary: &Path,
        twins_file: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> RelayProcess {
        RelayProcess::launch(free_addr(), binary, twins_file, args, env).await
    }

    /// Like [`RelayProcess::spawn`] on a given address (to restart a pod on its port).
    pub async fn spawn_at(
        addr: SocketAddr,
        binary: &Path,
        twins_file: &Path,
        args: &[&str],
    ) -> RelayProcess {
        RelayProcess::launch(addr, binary, twins_file, args, &[]).await
    }

    async fn launch(
        addr: SocketAddr,
        binary: &Path,
        twins_file: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> RelayProcess {
        let child = Command::new(binary)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--twins")
            .arg(twins_file)
            .args(args)
            .envs(env.iter().copied())
            .env("RMB_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        RelayProcess::started(child, addr).await
    }

    /// Spawns `binary` with exactly `args` (nothing added: the command line under test must
    /// name its own listen address, reachable at `addr`), its output written to `log`, and
    /// waits until it answers `/healthz` on `addr`.
    pub async fn spawn_command(
        binary: &Path,
        addr: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> RelayProcess {
        let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("relay log file: {e}"));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("relay log file: {e}"));
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RMB_LOG")
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        RelayProcess::started(child, addr).await
    }

    async fn started(child: Child, addr: SocketAddr) -> RelayProcess {
        let process = RelayProcess {
            child,
            addr,
            url: format!("ws://{addr}"),
            http: format!("http://{addr}"),
        };
        wait_for_http(addr, "/healthz").await;
        process
    }

    /// Sends a signal (for example `"TERM"` or `"KILL"`) to the process.
    pub fn signal(&self, name: &str) {
        crate::process::signal(&self.child, name);
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait(mut self, limit: Duration) -> Option<i32> {
        crate::process::wait(&mut self.child, limit).await
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 10 s) until `GET path` on `addr` answers.
pub async fn wait_for_http(addr: SocketAddr, path: &str) {
    for _ in 0..500 {
        if http_get(addr, path).await.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing answers http://{addr}{path}");
}

/// Waits (up to 10 s) until `/readyz` on `addr` answers 200 (for Redis: its own delivery
/// probe came back through its inbox).
pub async fn wait_ready(addr: SocketAddr) {
    for _ in 0..500 {
        if let Some((200, _)) = http_get(addr, "/readyz").await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("relay at {addr} never became ready");
}

/// A minimal HTTP/1.1 GET: returns the status code and body, or `None` if unreachable.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of an unlabelled metric (or the sum over a metric's label sets) in a
/// Prometheus text exposition.
pub fn metric_value(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Path of a twins file in `dir` (for relay processes).
pub fn twins_file_in(dir: &TempDir, twins: &[TestTwin]) -> PathBuf {
    write_twins_file(dir.path(), twins)
}

/// Which backplane a test relay uses; routing behaviour tests run against each.
pub enum Backing {
    /// The in-process backplane.
    Memory,
    /// A Redis server started for the test.
    Redis(crate::redis::RedisServer),
}

impl Backing {
    /// The in-memory backplane.
    pub fn memory() -> Backing {
        Backing::Memory
    }

    /// A fresh standalone Redis.
    pub fn redis() -> Backing {
        Backing::Redis(crate::redis::RedisServer::start())
    }

    /// Starts a relay (a pod, with Redis) serving `twins`, with extra flags.
    pub async fn relay(&self, twins: &[TestTwin], extra: &[&str]) -> TestRelay {
        match self {
            Backing::Memory => TestRelay::start(twins, extra).await,
            Backing::Redis(server) => {
                let url = server.url();
                let mut args = vec!["--redis", url.as_str(), "--redis-lease-seconds", "2"];
                args.extend_from_slice(extra);
                TestRelay::start(twins, &args).await
            }
        }
    }
}

/// Runs each behaviour against the memory backplane and against a Redis backplane: every
/// name is an `async fn(Backing)` of the calling test file, and becomes `memory::name` and
/// `redis::name` tests.
#[macro_export]
macro_rules! on_both_backplanes {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::relay::Backing::memory()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::relay::Backing::redis()).await
                }
            )*
        }
    };
}
