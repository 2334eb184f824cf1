//! Background upkeep of the Redis backplane: the pod lease and session leases, the heartbeat
//! (and which pods beat, for the owner cache), watching the Redis connections, and the mailbox
//! count. The inbox consumer is in `inbox.rs`, re-routing a stopped pod's inbox in
//! `takeover.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;

use super::{keys, now_ms, Inner, Periodic};
use crate::hub::CloseReason;
use crate::key::SessionKey;

/// Extends our pod lease and the leases of our sessions, and sends the delivery probe.
pub async fn lease_loop(inner: Arc<Inner>) {
    let mut tick = Periodic::every(Duration::from_secs(1));
    let lease = inner.settings.lease;
    let refresh_every = (lease.as_secs() / 3).max(1);
    let mut round: u64 = 0;
    loop {
        if !tick.next(&inner).await {
            return;
        }
        round += 1;
        inner.set_lease(now_ms() + lease.as_millis() as u64).await;
        let probe: Vec<(&str, Value)> =
            vec![("c", "probe".into()), ("t", (now_ms() as i64).into())];
        let r: FredResult<Value> = inner
            .client
            .xadd(&*inner.inbox, false, None::<()>, "*", probe)
            .await;
        let _ = inner.record("probe", r);
        stamp(&inner, keys::PACKED_READERS, "zadd_packed_readers").await;
        let keep = (inner.settings.max_ttl + lease.as_secs()) as i64;
        let r: FredResult<i64> = inner.client.expire(&*inner.inbox, keep, None).await;
        let _ = inner.record("expire_inbox", r);
        if round % refresh_every == 0 {
            refresh_sessions(&inner).await;
            update_gauges(&inner).await;
        }
    }
}

/// Extends every local session's ownership lease. A lease that had lapsed is recreated and
/// the session reloads its mailbox (mail may have gone there meanwhile); a session whose key
/// now names another owner was replaced elsewhere and is closed.
async fn refresh_sessions(inner: &Inner) {
    let sessions: Vec<(SessionKey, u64)> = inner
        .locals
        .lock()
        .iter()
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    let ttl = inner.settings.lease.as_millis() as i64;
    let calls = sessions.iter().map(|(key, n)| {
        let owner = inner.owner_value(*n);
        async move {
            let r: FredResult<i64> = inner
                .scripts
                .refresh
                .evalsha_with_reload(
                    &inner.client,
                    vec![keys::session(key)],
                    vec![Value::from(owner), ttl.into()],
                )
                .await;
            (key, *n, inner.record("refresh", r))
        }
    });
    for (key, n, result) in futures_util::future::join_all(calls).await {
        match result {
            Ok(2) => inner.hub.mailbox_changed(key, n),
            Ok(0) => inner.hub.close_session(key, n, CloseReason::Replaced),
            _ => {}
        }
    }
}

async fn update_gauges(inner: &Inner) {
    if let Ok(len) = inner.client.xlen::<i64, _>(&*inner.inbox).await {
        inner.metrics.inbox_depth.set(len);
    }
    let pending: FredResult<Value> = inner.client.xpending(&*inner.inbox, keys::GROUP, ()).await;
    if let Ok(Value::Array(summary)) = pending {
        if let Some(count) = summary.first().and_then(|v| v.as_i64()) {
            inner.metrics.inbox_pending.set(count);
        }
    }
}

/// Notes every connection error and reconnection of either client in `trouble_at` (a command
/// retried on a new connection may also have run on the old one, silently), and the command
/// client's reconnections in `reconnected_at`.
pub async fn watch_connections(inner: Arc<Inner>) {
    use tokio::sync::broadcast::error::RecvError;
    let [mut e1, mut e2] = [inner.client.error_rx(), inner.reader.error_rx()];
    let [mut r1, mut r2] = [inner.client.reconnect_rx(), inner.reader.reconnect_rx()];
    loop {
        let (closed, reconnected) = tokio::select! {
            e = e1.recv() => (matches!(e, Err(RecvError::Closed)), false),
            e = e2.recv() => (matches!(e, Err(RecvError::Closed)), false),
            r = r1.recv() => (matches!(r, Err(RecvError::Closed)), r.is_ok()),
            r = r2.recv() => (matches!(r, Err(RecvError::Closed)), false),
        };
        if closed {
            return;
        }
        let now = now_ms();
        inner.trouble_at.store(now, Ordering::Relaxed);
        if reconnected {
            inner.reconnected_at.store(now, Ordering::Relaxed);
        }
    }
}

/// How often a pod beats in [`keys::BEATS`].
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// A cached session owner is trusted while its pod beat within this many beats, as read at
/// most one beat ago: less than [`STALE_BEATS`], so senders stop appending to a stopped pod
/// before the per-session takeover scans its inbox.
pub(super) const LIVE_BEATS: u32 = 2;

/// Records that this pod is alive every [`HEARTBEAT`], and (with the owner cache) which pods
/// beat recently.
pub async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut tick = Periodic::every(HEARTBEAT);
    loop {
        if !tick.next(&inner).await {
            return;
        }
        stamp(&inner, keys::BEATS, "zadd_beats").await;
        if inner.owners.enabled() {
            refresh_live_pods(&inner).await;
        }
        refresh_packed_readers(&inner).await;
    }
}

/// Scores this pod with the time now in the sorted set `set` (a beat, an announcement).
async fn stamp(inner: &Inner, set: &str, op: &str) {
    let entry = (now_ms() as f64, inner.settings.pod.as_str());
    let r: FredResult<i64> = inner
        .client
        .zadd(set, None, None, false, false, entry)
        .await;
    let _ = inner.record(op, r);
}

/// The pods stamped in `set` within the last `within`; none if Redis does not answer.
async fn stamped_within(inner: &Inner, set: &str, within: Duration, op: &str) -> Vec<String> {
    let since = now_ms().saturating_sub(within.as_millis() as u64);
    let pods: FredResult<Vec<String>> = inner
        .client
        .zrangebyscore(set, since as f64, "+inf", false, None)
        .await;
    inner.record(op, pods).unwrap_or_default()
}

/// Reads the pods that beat within [`LIVE_BEATS`] into the owner cache. Unreadable: no pod
/// is trusted until the next beat (every envelope asks the routing script).
async fn refresh_live_pods(inner: &Inner) {
    let live = stamped_within(inner, keys::BEATS, HEARTBEAT * LIVE_BEATS, "zrange_beats").await;
    inner
        .owners
        .set_live(live.into_iter().map(|p| Arc::from(p.as_str())).collect());
}

/// Reads which pods said within the last three seconds that they read packed inbox entries
/// (they say so every second). Unreadable: every other pod gets one envelope per entry.
async fn refresh_packed_readers(inner: &Inner) {
    let within = Duration::from_secs(3);
    let pods = stamped_within(inner, keys::PACKED_READERS, within, "zrange_packed_readers").await;
    *inner.packed_readers.write() = pods.into_iter().collect();
}

/// Every three leases (30 s by default) one pod, whoever takes the lock, counts the envelopes
/// in every mailbox and publishes the total; every pod reads it into
/// `rmb_relay_mailbox_envelopes`. A SCAN of the keyspace is too heavy for each scrape, fine
/// twice a minute.
pub async fn mailbox_depth_loop(inner: Arc<Inner>) {
    let mut tick = Periodic::every(inner.settings.lease * 3);
    loop {
        if !tick.next(&inner).await {
            return;
        }
        let got: FredResult<Option<String>> = inner
            .client
            .set(
                keys::STATS_LOCK,
                inner.settings.pod.as_str(),
                Some(Expiration::PX(25_000)),
                Some(SetOptions::NX),
                false,
            )
            .await;
        if matches!(inner.record("stats_lock", got), Ok(Some(_))) {
            if let Some(total) = count_mailboxes(&inner).await {
                let r: FredResult<()> = inner
                    .client
                    .set(
                        keys::STATS_MAILBOX,
                        total as i64,
                        Some(Expiration::EX(90)),
                        None,
                        false,
                    )
                    .await;
                let _ = inner.record("stats_set", r);
            }
            let _: FredResult<i64> = inner.client.del(keys::STATS_LOCK).await;
        }
        let total: FredResult<Option<String>> = inner.client.get(keys::STATS_MAILBOX).await;
        if let Ok(Some(total)) = inner.record("stats_get", total) {
            if let Ok(total) = total.parse::<u64>() {
                inner.mailbox_depth.store(total, Ordering::Relaxed);
            }
        }
    }
}

async fn count_mailboxes(inner: &Inner) -> Option<u64> {
    use futures_util::TryStreamExt;
    let pattern = keys::MAILBOX_PATTERN;
    let keys: Vec<fred::types::Key> = if inner.client.is_clustered() {
        inner
            .client
            .scan_cluster_buffered(pattern, Some(1000), None)
            .try_collect()
            .await
    } else {
        inner
            .client
            .scan_buffered(pattern, Some(1000), None)
            .try_collect()
            .await
    }
    .ok()?;
    let mut total = 0u64;
    for chunk in keys.chunks(256) {
        let lens = futures_util::future::join_all(
            chunk.iter().map(|k| inner.client.xlen::<u64, _>(k.clone())),
        )
        .await;
        total += lens.into_iter().filter_map(Result::ok).sum::<u64>();
    }
    Some(total)
}
