//! The shutdown request of a server process: SIGTERM (what systemd and Kubernetes send) or
//! SIGINT (Ctrl-C).

use std::future::Future;

/// Watches for a shutdown request from now on and resolves when one comes: SIGTERM or
/// SIGINT. The SIGTERM handler is installed before this returns, so a signal sent right
/// after is not missed (and does not kill the process). Where SIGTERM cannot be watched (not
/// Unix, or the handler cannot be installed) only Ctrl-C counts. Needs a Tokio runtime.
pub fn requested() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate())
            .inspect_err(|e| {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this process");
            })
            .ok()
    };
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        match term {
            Some(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            None => {
                let _ = ctrl_c.await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown requested");
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn sigterm_is_a_shutdown_request() {
        let requested = super::requested();
        let raised =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM);
        assert!(raised.is_ok(), "{raised:?}");
        let ended = tokio::time::timeout(Duration::from_secs(30), requested).await;
        assert!(ended.is_ok(), "SIGTERM did not end the wait");
    }
}
