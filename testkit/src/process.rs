//! Child processes the tests start (relays, peers): signals and a bounded wait for the exit,
//! written once for all of them.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Sends the signal `name` (for example `"TERM"` or `"KILL"`) to `child`.
pub fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status();
}

/// Waits up to `limit` for `child` to exit; its exit code (`None`: still running after
/// `limit`, or ended by a signal).
pub async fn wait(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
