//! Sessions with every configured relay at once, shared by the gateway and the SDK client.
//!
//! - One task per relay keeps a session open: reconnect with exponential backoff and jitter
//!   ([`RECONNECT_BACKOFF`]), a freshly signed session token per attempt, an envelope ping every
//!   [`PoolSettings::keepalive`] and a reconnect when the relay stays silent (no frame at all,
//!   not even the relay's websocket pings) for [`PoolSettings::silence_limit`].
//! - Sending goes through one shared outbox: each open session takes the next envelope
//!   when it is ready to write, so a slow relay takes less and never holds up the others, and
//!   while no relay is reachable envelopes wait. An envelope whose write fails or does not
//!   finish within [`PoolSettings::send_timeout`] goes back to the head of the outbox for
//!   another session. Envelopes leave the outbox only when written to a relay or when they
//!   expire (counted as `expired_unsent`), never silently.
//! - Written is not yet delivered: after writing, a session sends an envelope ping, and the
//!   relay's pong (it handles a session's frames in order) confirms everything written
//!   before it. A session lost before the pong gives its unconfirmed envelopes back to the
//!   outbox for another session; receivers suppress the duplicates by uid. A session with
//!   [`UNCONFIRMED_WINDOW`] envelopes unconfirmed takes no more, so a stalled relay soon
//!   carries nothing.
//! - Everything the relays send is handed to one inbound channel; the consumer suppresses
//!   duplicates by uid.
//! - Several URLs may be pods of one cluster behind different addresses: the relay then
//!   keeps a single session per `(twin, sid)` and closes the older one with code 4000
//!   (replaced). A session replaced while another of ours is open waits on standby and
//!   reconnects when no other session is open (or after [`STANDBY_RETRY`]), so two of our
//!   sessions never evict each other in a loop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rmb_common::backoff::BackoffPolicy;
use rmb_identity::Signer;
use rmb_proto::{unix_now, Envelope, Kind};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::direct::{ClientError, DirectClient};
use crate::metrics::{relay_label, Disconnect, DropReason, Metrics};
use crate::tls::TlsSettings;

/// Reconnect delays: from 100 ms doubling up to 30 s, each drawn from `[d/2, d]`.
pub const RECONNECT_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(30));

/// Longest a replaced session waits on standby while another session is open.
pub const STANDBY_RETRY: Duration = Duration::from_secs(300);

/// How the relay sessions behave.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Relay URLs, `ws://` or `wss://`; a session is kept with each.
    pub relays: Vec<String>,
    /// TLS roots for `wss://` relays; bundled and system roots when `None`.
    pub tls: Option<TlsSettings>,
    /// How often an envelope ping is sent on an idle session.
    pub keepalive: Duration,
    /// A session that hears nothing for this long is reopened.
    pub silence_limit: Duration,
    /// A write that does not finish within this is abandoned and the session reopened; the
    /// envelope goes to another session.
    pub send_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            relays: Vec::new(),
            tls: None,
            keepalive: Duration::from_secs(20),
            silence_limit: Duration::from_secs(65),
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// Envelopes waiting for a relay session, shared by all sessions.
pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Envelope>>,
    ready: Notify,
    metrics: Arc<Metrics>,
}

impl Outbox {
    fn new(metrics: Arc<Metrics>) -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            metrics,
        }
    }

    /// Queues `env` behind the others.
    pub(crate) fn push(&self, env: Envelope) {
        self.insert(env, VecDeque::push_back);
    }

    /// Puts back an envelope whose write failed, ahead of the others.
    fn retry(&self, env: Envelope) {
        self.insert(env, VecDeque::push_front);
    }

    fn insert(&self, env: Envelope, put: fn(&mut VecDeque<Envelope>, Envelope)) {
        let len = {
            let mut q = self.queue.lock();
            put(&mut q, env);
            q.len()
        };
        self.metrics.outbox.set(len as i64);
        self.ready.notify_one();
    }

    /// Envelopes waiting.
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().len()
    }

    /// The next envelope that has not expired. Cancel safe: an envelope is taken only when
    /// this returns it.
    async fn next(&self) -> Envelope {
        loop {
            let notified = self.ready.notified();
            let (taken, left) = {
                let mut q = self.queue.lock();
                (q.pop_front(), q.len())
            };
            if let Some(env) = taken {
                self.metrics.outbox.set(left as i64);
                if left > 0 {
                    // Let another idle session take the next one in parallel.
                    self.ready.notify_one();
                }
                if env.is_expired(unix_now()) {
                    self.metrics.drop_one(DropReason::ExpiredUnsent);
                    tracing::warn!(uid = %env.uid, "envelope expired before any relay took it");
                    continue;
                }
                return env;
            }
            notified.await;
        }
    }

    /// Counts and drops what is left (at shutdown).
    fn abandon(&self) -> usize {
        let left: Vec<Envelope> = self.queue.lock().drain(..).collect();
        for _ in &left {
            self.metrics.drop_one(DropReason::Shutdown);
        }
        self.metrics.outbox.set(0);
        left.len()
    }
}

/// Sessions with every configured relay.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    tasks: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    open: watch::Sender<usize>,
}

struct Shared {
    signer: Signer,
    twin: u32,
    settings: PoolSettings,
    outbox: Arc<Outbox>,
    inbound: mpsc::Sender<Envelope>,
    metrics: Arc<Metrics>,
    /// How many sessions are open now.
    open: watch::Sender<usize>,
    /// Envelopes written to some session and not yet confirmed by its relay.
    unconfirmed: AtomicUsize,
    cancel: CancellationToken,
}

impl Pool {
    /// Starts one session task per relay. What the relays send goes to `inbound`.
    pub(crate) fn start(
        settings: PoolSettings,
        signer: Signer,
        twin: u32,
        inbound: mpsc::Sender<Envelope>,
        metrics: Arc<Metrics>,
    ) -> Pool {
        let outbox = Arc::new(Outbox::new(metrics.clone()));
        let cancel = CancellationToken::new();
        let (open, _) = watch::channel(0usize);
        let shared = Arc::new(Shared {
            signer,
            twin,
            settings,
            outbox: outbox.clone(),
            inbound,
            metrics,
            open: open.clone(),
            unconfirmed: AtomicUsize::new(0),
            cancel: cancel.clone(),
        });
        let tasks = shared
            .settings
            .relays
            .iter()
            .map(|url| tokio::spawn(keep_session(url.clone(), shared.clone())))
            .collect();
        Pool {
            shared,
            outbox,
            tasks,
            cancel,
            open,
        }
    }

    /// Queues an envelope for the next relay session ready to write.
    pub(crate) fn send(&self, env: Envelope) {
        self.outbox.push(env);
    }

    /// A handle that queues envelopes, for tasks that do not own the pool.
    pub(crate) fn sender(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }

    /// A receiver of the number of sessions open now.
    pub(crate) fn open_sessions(&self) -> watch::Receiver<usize> {
        self.open.subscribe()
    }

    /// The shared outbox (for its length).
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Gives the sessions up to `grace` to send what is queued and have it confirmed, then
    /// closes them.
    pub(crate) async fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let busy = || self.outbox.len() > 0 || self.shared.unconfirmed.load(Ordering::Relaxed) > 0;
        while busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let left = self.outbox.abandon();
        if left > 0 {
            tracing::warn!(
                envelopes = left,
                "stopping with envelopes no relay took; they are lost"
            );
        }
    }
}

/// How a session ended.
enum Ended {
    Shutdown,
    Lost(Disconnect, String),
}

async fn keep_session(url: String, shared: Arc<Shared>) {
    let label = relay_label(&url);
    shared.metrics.relay_state(&label, false);
    let mut backoff = RECONNECT_BACKOFF.start();
    let mut standby = false;
    loop {
        if standby {
            // Replaced by another of our own sessions (pods of one cluster): wait until no
            // session is open before taking over again.
            let mut open = shared.open.subscribe();
            tracing::info!(relay = %label, "standby: another session of this twin is open");
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = open.wait_for(|n| *n == 0) => {}
                // Replaced by someone else (another device of this twin on a relay that is
                // not a pod of our other relay's cluster): try again now and then.
                _ = tokio::time::sleep(STANDBY_RETRY) => {}
            }
            standby = false;
        }
        let connect = match &shared.settings.tls {
            Some(tls) => {
                let signer = shared.signer.clone();
                let fut = DirectClient::connect_with(&url, signer, shared.twin, None, tls);
                futures_util::future::Either::Left(fut)
            }
            None => futures_util::future::Either::Right(DirectClient::connect(
                &url,
                shared.signer.clone(),
                shared.twin,
                None,
            )),
        };
        let attempt = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            attempt = connect => attempt,
        };
        match attempt {
            Ok(mut client) => {
                shared.metrics.relay_state(&label, true);
                shared.open.send_modify(|n| *n += 1);
                shared.metrics.relay_connected(&label);
                tracing::info!(relay = %label, twin = shared.twin, "connected to relay");
                let opened = Instant::now();
                let ended = serve(&mut client, &shared).await;
                shared.open.send_modify(|n| *n = n.saturating_sub(1));
                shared.metrics.relay_state(&label, false);
                if opened.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                match ended {
                    Ended::Shutdown => {
                        let _ = client.close().await;
                        return;
                    }
                    Ended::Lost(why, reason) => {
                        shared.metrics.relay_lost(&label, why);
                        tracing::warn!(relay = %label, reason, "relay session lost; reconnecting");
                        match why {
                            Disconnect::Replaced => standby = *shared.open.borrow() > 0,
                            // A draining pod: reconnect at once (to another pod).
                            Disconnect::Restart => backoff.reset(),
                            _ => {}
                        }
                    }
                }
            }
            Err(e) => {
                shared.metrics.relay_lost(&label, Disconnect::ConnectFailed);
                tracing::warn!(relay = %label, error = %e, "cannot connect to relay");
            }
        }
        if standby {
            continue;
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn classify(e: &ClientError) -> Disconnect {
    match e {
        ClientError::Closed {
            code: Some(4000), ..
        } => Disconnect::Replaced,
        ClientError::Closed {
            code: Some(1012), ..
        } => Disconnect::Restart,
        ClientError::Closed { .. } => Disconnect::Closed,
        _ => Disconnect::Error,
    }
}

/// Envelopes written to a session and not yet confirmed by the relay; over this many the
/// session takes no more from the outbox, so a slow relay leaves the traffic to the others.
pub const UNCONFIRMED_WINDOW: usize = 256;

/// What a session wrote and the relay has not confirmed yet. The relay handles a session's
/// frames in order, so its pong to an envelope ping confirms every envelope written before
/// that ping. On a lost session the unconfirmed envelopes go back to the outbox for another
/// session (receivers suppress the duplicates by uid).
#[derive(Default)]
struct Unconfirmed {
    written: Vec<Envelope>,
    /// The ping in flight and how many of `written` it confirms.
    ping: Option<(String, usize)>,
}

impl Unconfirmed {
    /// Puts every unconfirmed envelope back at the head of the outbox, in order.
    fn give_back(&mut self, outbox: &Outbox) {
        for env in self.written.drain(..).rev() {
            outbox.retry(env);
        }
        self.ping = None;
    }
}

/// Sends an envelope ping; returns its uid.
async fn send_ping(client: &mut DirectClient, limit: Duration) -> Result<String, Ended> {
    let ping = client.ping();
    match tokio::time::timeout(limit, client.send(&ping)).await {
        Ok(Ok(())) => Ok(ping.uid),
        Ok(Err(e)) => Err(Ended::Lost(classify(&e), e.to_string())),
        Err(_) => Err(Ended::Lost(
            Disconnect::SendTimeout,
            "ping write timed out".into(),
        )),
    }
}

async fn serve(client: &mut DirectClient, shared: &Shared) -> Ended {
    let mut unconfirmed = Unconfirmed::default();
    let ended = serve_session(client, shared, &mut unconfirmed).await;
    let left = unconfirmed.written.len();
    shared.unconfirmed.fetch_sub(left, Ordering::Relaxed);
    if matches!(ended, Ended::Lost(..)) && left > 0 {
        tracing::debug!(
            envelopes = left,
            "resending what the lost session did not confirm"
        );
        unconfirmed.give_back(&shared.outbox);
    }
    ended
}

async fn serve_session(
    client: &mut DirectClient,
    shared: &Shared,
    unconfirmed: &mut Unconfirmed,
) -> Ended {
    let settings = &shared.settings;
    let period = settings.keepalive;
    let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keepalive_uid = String::new();
    loop {
        let room = unconfirmed.written.len() < UNCONFIRMED_WINDOW;
        tokio::select! {
            _ = shared.cancel.cancelled() => return Ended::Shutdown,
            received = client.recv() => match received {
                Ok(env) if env.kind() == Kind::Pong => {
                    let confirmed = match &unconfirmed.ping {
                        Some((uid, n)) if *uid == env.uid => Some(*n),
                        _ => None,
                    };
                    if let Some(n) = confirmed {
                        unconfirmed.written.drain(..n);
                        unconfirmed.ping = None;
                        shared.unconfirmed.fetch_sub(n, Ordering::Relaxed);
                        if !unconfirmed.written.is_empty() {
                            match send_ping(client, settings.send_timeout).await {
                                Ok(uid) => unconfirmed.ping = Some((uid, unconfirmed.written.len())),
                                Err(ended) => return ended,
                            }
                        }
                    } else if env.uid != keepalive_uid {
                        let _ = shared.inbound.send(env).await;
                    }
                }
                Ok(env) => {
                    if shared.inbound.send(env).await.is_err() {
                        // The consumer stopped (shutting down): keep sending what is queued
                        // until cancelled; nothing is left to deliver this to.
                        tracing::debug!("inbound envelope after the consumer stopped");
                    }
                }
                Err(e) => return Ended::Lost(classify(&e), e.to_string()),
            },
            env = shared.outbox.next(), if room => {
                match tokio::time::timeout(settings.send_timeout, client.send(&env)).await {
                    Ok(Ok(())) => {
                        shared.metrics.sent(env.kind().as_str());
                        unconfirmed.written.push(env);
                        shared.unconfirmed.fetch_add(1, Ordering::Relaxed);
                        if unconfirmed.ping.is_none() {
                            match send_ping(client, settings.send_timeout).await {
                                Ok(uid) => unconfirmed.ping = Some((uid, unconfirmed.written.len())),
                                Err(ended) => return ended,
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        shared.outbox.retry(env);
                        return Ended::Lost(classify(&e), e.to_string());
                    }
                    Err(_) => {
                        shared.outbox.retry(env);
                        return Ended::Lost(Disconnect::SendTimeout, "write timed out".into());
                    }
                }
            }
            _ = keepalive.tick() => {
                if client.last_heard().elapsed() > settings.silence_limit {
                    return Ended::Lost(Disconnect::Silent, "relay silent".into());
                }
                if unconfirmed.ping.is_none() {
                    match send_ping(client, settings.send_timeout).await {
                        Ok(uid) => keepalive_uid = uid,
                        Err(ended) => return ended,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outbox_skips_expired_envelopes_and_counts_them() {
        let metrics = Arc::new(Metrics::new().expect("valid metrics"));
        let outbox = Outbox::new(metrics.clone());
        let mut old = Envelope {
            uid: "old".into(),
            timestamp: unix_now() - 100,
            expiration: 10,
            ..Default::default()
        };
        outbox.push(old.clone());
        old.uid = "fresh".into();
        old.timestamp = unix_now();
        outbox.push(old);
        assert_eq!(outbox.next().await.uid, "fresh");
        assert_eq!(metrics.dropped(DropReason::ExpiredUnsent), 1);
        assert_eq!(outbox.len(), 0);
    }
}
