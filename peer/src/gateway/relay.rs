//! The gateway's relay connection: one websocket session, re-established forever with
//! exponential backoff and jitter. Every attempt signs a fresh session token (the direct
//! client issues one per connect), so a long outage never leaves a stale token.
//!
//! Envelopes to send wait in a bounded channel while the session is down; the one envelope
//! whose send failed is kept and sent first on the next session, unless it expired meanwhile.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rmb_identity::Signer;
use rmb_proto::{unix_now, Envelope};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Stats;
use crate::direct::DirectClient;

/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often an envelope ping is sent to the relay to keep the session and prove it alive.
pub const KEEPALIVE: Duration = Duration::from_secs(20);
/// A session that received nothing (not even a pong) for this long is reopened.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(65);

/// Exponential backoff with "equal jitter": each delay is drawn from `[d/2, d]`, and `d`
/// doubles from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        let half = d / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    /// Starts over after a good session.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Why a session ended.
enum Ended {
    /// The gateway is shutting down.
    Shutdown,
    /// The session failed; reconnect.
    Failed(String),
}

/// Keeps a session with `url` open until cancelled: sends what arrives on `outbound`,
/// hands what the relay sends to `inbound`.
pub(crate) async fn run(
    url: String,
    signer: Signer,
    twin: u32,
    mut outbound: mpsc::Receiver<Envelope>,
    inbound: mpsc::Sender<Envelope>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut held: Option<Envelope> = None;
    loop {
        let connect = DirectClient::connect(&url, signer.clone(), twin, None);
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            attempt = connect => attempt,
        };
        match attempt {
            Ok(mut client) => {
                stats.count(&stats.relay_connects);
                tracing::info!(relay = %url, twin, "connected to relay");
                let opened = Instant::now();
                let ended = serve(&mut client, &mut outbound, &inbound, &mut held, &cancel).await;
                if opened.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                match ended {
                    Ended::Shutdown => {
                        let _ = client.close().await;
                        return;
                    }
                    Ended::Failed(reason) => {
                        tracing::warn!(relay = %url, reason, "relay session lost; reconnecting");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(relay = %url, error = %e, "cannot connect to relay");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn serve(
    client: &mut DirectClient,
    outbound: &mut mpsc::Receiver<Envelope>,
    inbound: &mpsc::Sender<Envelope>,
    held: &mut Option<Envelope>,
    cancel: &CancellationToken,
) -> Ended {
    let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    let mut last_heard = Instant::now();
    loop {
        if let Some(env) = held.take() {
            if env.is_expired(unix_now()) {
                tracing::debug!(uid = %env.uid, "dropping an envelope that expired before it was sent");
            } else if let Err(e) = client.send(&env).await {
                *held = Some(env);
                return Ended::Failed(e.to_string());
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ended::Shutdown,
            received = client.recv() => match received {
                Ok(env) => {
                    last_heard = Instant::now();
                    if inbound.send(env).await.is_err() {
                        return Ended::Shutdown;
                    }
                }
                Err(e) => return Ended::Failed(e.to_string()),
            },
            next = outbound.recv() => match next {
                Some(env) => *held = Some(env),
                None => return Ended::Shutdown,
            },
            _ = keepalive.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    return Ended::Failed("relay silent".to_string());
                }
                let ping = client.ping();
                if let Err(e) = client.send(&ping).await {
                    return Ended::Failed(e.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        let second = b.next_delay();
        assert!(second >= BACKOFF_MIN && second <= BACKOFF_MIN * 2);
        for _ in 0..40 {
            assert!(b.next_delay() <= BACKOFF_MAX);
        }
        assert!(b.next_delay() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }
}
