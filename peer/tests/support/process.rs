//! A real `rmb-peer` process started from a command line, its logs kept in a file the test
//! reads.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `rmb-peer`; killed on drop.
pub struct PeerProcess {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PeerProcess {
    /// Starts `rmb-peer args…` with extra environment variables (and none of the `RMB_*` or
    /// `RUST_LOG` of the test's own environment).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> PeerProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("rmb-peer.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_rmb-peer"));
        for (name, _) in std::env::vars() {
            if name.starts_with("RMB_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        let child = command
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        PeerProcess {
            child,
            log,
            _dir: dir,
        }
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (up to `limit`); fails with the log if not, or
    /// if the process exits first.
    pub async fn wait_for_log(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "rmb-peer exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "rmb-peer did not log {needle:?} in {limit:?}:\n{}",
            self.log()
        );
    }

    /// Sends a signal (`"TERM"`, `"KILL"`).
    pub fn signal(&self, name: &str) {
        rmb_testkit::process::signal(&self.child, name);
    }

    /// Waits for the process to exit; its exit code (`None`: still running, or killed by a
    /// signal).
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        rmb_testkit::process::wait(&mut self.child, limit).await
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
