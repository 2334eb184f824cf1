//! Background work of the Redis backplane: the pod lease and session leases, the inbox
//! consumer, reclaiming entries whose acknowledgement failed, and dead-pod takeover.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;

use super::{keys, now_ms, streams, Inner};
use crate::hub::CloseReason;
use crate::key::SessionKey;

/// Extends our pod lease and the leases of our sessions, and sends the delivery probe.
pub async fn lease_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lease = inner.settings.lease;
    let refresh_every = (lease.as_secs() / 3).max(1);
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        if inner.stopping.load(Ordering::Relaxed) {
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

async fn ensure_group(inner: &Inner) -> bool {
    let r: FredResult<Value> = inner
        .client
        .xgroup_create(&*inner.inbox, keys::GROUP, "0", true)
        .await;
    match r {
        Ok(_) => true,
        Err(e) if e.details().contains("BUSYGROUP") => true,
        Err(e) => {
            let _ = inner.record::<()>("xgroup_create", Err(e));
            false
        }
    }
}

/// How often the inbox consumer looks for entries a lost read reply left pending under our
/// name (see [`super::in_hand`]); a check costs one `XPENDING` while nothing was lost.
const LOST_READ_CHECK: Duration = Duration::from_secs(1);

/// A pending entry is judged only once it is this old, so a read on its way is not raced.
const LOST_READ_MIN_IDLE_MS: u64 = 1_000;

/// Reads our inbox and hands entries to local sessions (or re-routes them).
pub async fn inbox_loop(inner: Arc<Inner>) {
    let mut have_group = false;
    let mut checked = Instant::now();
    loop {
        if inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        if !have_group {
            have_group = ensure_group(&inner).await;
            if !have_group {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        }
        if checked.elapsed() >= LOST_READ_CHECK {
            checked = Instant::now();
            recover_lost_reads(&inner).await;
        }
        let read = streams::xreadgroup(
            &inner.reader,
            keys::GROUP,
            &inner.settings.pod,
            &inner.inbox,
            512,
            super::INBOX_BLOCK.as_millis() as u64,
        )
        .await;
        let entries = match inner.record("xreadgroup", read) {
            Ok(entries) => entries,
            Err(e) => {
                if e.to_string().contains("NOGROUP") {
                    have_group = false;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        inner
            .in_hand
            .seen(entries.iter().map(|(id, _)| id.as_str()));
        handle_entries(&inner, entries).await;
    }
}

/// For this long after a Redis failure the whole pending list is compared with what we
/// hold: a read sent before the failure may be executed by Redis only when it answers again.
const TROUBLE_WINDOW_MS: u64 = 10_000;

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

/// Handles the entries Redis gave to us in replies we never received: our pending list
/// minus what we hold. Without this they would wait for the minute-long reclaim. Cheap
/// unless Redis failed recently or more entries pend under our name than we hold.
async fn recover_lost_reads(inner: &Inner) {
    let pod = inner.settings.pod.as_str();
    let count = streams::pending_count(&inner.client, &inner.inbox, keys::GROUP, pod).await;
    let Ok(count) = inner.record("xpending", count) else {
        return;
    };
    let troubled =
        now_ms().saturating_sub(inner.trouble_at.load(Ordering::Relaxed)) <= TROUBLE_WINDOW_MS;
    if !troubled && count <= inner.in_hand.len() as u64 {
        return;
    }
    let mut pending = Vec::new();
    let mut start = "-".to_string();
    loop {
        let page =
            streams::pending_page(&inner.client, &inner.inbox, keys::GROUP, pod, &start, 512).await;
        let Ok(page) = inner.record("xpending", page) else {
            return;
        };
        let full = page.len() == 512;
        if let Some((last, _)) = page.last() {
            start = format!("({last}");
        }
        pending.extend(page);
        if !full {
            break;
        }
    }
    let lost = inner.in_hand.reconcile(&pending, LOST_READ_MIN_IDLE_MS);
    for ids in lost.chunks(256) {
        let claimed = streams::xclaim(&inner.client, &inner.inbox, keys::GROUP, pod, ids).await;
        let Ok(entries) = inner.record("xclaim", claimed) else {
            return;
        };
        inner.metrics.inbox_recovered.inc_by(entries.len() as u64);
        tracing::warn!(
            entries = entries.len(),
            "handling inbox entries whose read reply was lost"
        );
        inner
            .in_hand
            .seen(entries.iter().map(|(id, _)| id.as_str()));
        handle_entries(inner, entries).await;
    }
}

async fn handle_entries(inner: &Inner, entries: Vec<streams::Entry>) {
    let mut done = Vec::new();
    for (id, fields) in &entries {
        if inner.handle_entry(id, fields).await {
            done.push(id.clone());
        }
    }
    inner.ack_inbox(done).await;
}

/// Entries of ours idle for a minute were delivered but never acknowledged (an ack lost in
/// a Redis outage, or a session that ended while Redis was unreachable): handle them again.
pub async fn reclaim_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let claimed = streams::xautoclaim(
            &inner.client,
            &inner.inbox,
            keys::GROUP,
            &inner.settings.pod,
            60_000,
            256,
        )
        .await;
        if let Ok(entries) = inner.record("xautoclaim", claimed) {
            inner
                .in_hand
                .seen(entries.iter().map(|(id, _)| id.as_str()));
            let full_page = entries.len() == 256;
            handle_entries(&inner, entries).await;
            if full_page {
                tick.reset_immediately();
            }
        }
    }
}

/// How often a pod beats in [`keys::BEATS`].
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// Beats missed before a pod counts as stopped for the sessions that left it.
const STALE_BEATS: u32 = 3;

/// A cached session owner is trusted while its pod beat within this many beats, as read at
/// most one beat ago: less than [`STALE_BEATS`], so senders stop appending to a stopped pod
/// before the per-session takeover scans its inbox.
const LIVE_BEATS: u32 = 2;

/// Records that this pod is alive every [`HEARTBEAT`], and (with the owner cache) which pods
/// beat recently.
pub async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let beat = (now_ms() as f64, inner.settings.pod.as_str());
        let r: FredResult<i64> = inner
            .client
            .zadd(keys::BEATS, None, None, false, false, beat)
            .await;
        let _ = inner.record("zadd_beats", r);
        if inner.owners.enabled() {
            refresh_live_pods(&inner).await;
        }
    }
}

/// Reads the pods that beat within [`LIVE_BEATS`] into the owner cache. Unreadable: no pod
/// is trusted until the next beat (every envelope asks the routing script).
async fn refresh_live_pods(inner: &Inner) {
    let since = now_ms().saturating_sub((HEARTBEAT * LIVE_BEATS).as_millis() as u64);
    let live: FredResult<Vec<String>> = inner
        .client
        .zrangebyscore(keys::BEATS, since as f64, "+inf", false, None)
        .await;
    let live = inner.record("zrange_beats", live).unwrap_or_default();
    inner
        .owners
        .set_live(live.into_iter().map(|p| Arc::from(p.as_str())).collect());
}

/// Session `key` (our session `session`) moved here from `previous`: once that pod stopped
/// beating, re-routes the entries for `key` waiting in its inbox, without waiting for its
/// lease to run out and a whole-pod takeover. The whole-pod takeover may route the same entries
/// again (at-least-once); nothing is deleted before it was routed. A pod that still beats
/// after the move is alive and handles its inbox itself.
pub async fn take_over_session(inner: Arc<Inner>, key: SessionKey, session: u64, previous: String) {
    let moved_at = now_ms();
    let stale_ms = (HEARTBEAT * STALE_BEATS).as_millis() as u64;
    let give_up = Instant::now() + inner.settings.lease * 2;
    let mut tick = tokio::time::interval(HEARTBEAT / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let still_ours = inner.locals.lock().get(&key) == Some(&session);
        if inner.stopping.load(Ordering::Relaxed) || !still_ours || Instant::now() > give_up {
            return;
        }
        let beat: FredResult<Option<f64>> =
            inner.client.zscore(keys::BEATS, previous.as_str()).await;
        let Ok(beat) = inner.record("zscore_beats", beat) else {
            continue;
        };
        // No beat at all: a pod without heartbeats (or already taken over) is left to the
        // whole-pod takeover.
        let Some(beat) = beat.map(|b| b as u64) else {
            return;
        };
        if beat > moved_at {
            return; // alive after the move
        }
        if now_ms().saturating_sub(beat) > stale_ms {
            let mut moved = reroute_session_entries(&inner, &previous, &key).await;
            inner.metrics.session_takeover_entries.inc_by(moved);
            // Once more after senders' owner caches surely dropped the stopped pod: an append
            // decided just before that may have landed after the first pass.
            tokio::time::sleep(HEARTBEAT * (LIVE_BEATS + 2)).await;
            if inner.locals.lock().get(&key) == Some(&session) {
                let late = reroute_session_entries(&inner, &previous, &key).await;
                inner.metrics.session_takeover_entries.inc_by(late);
                moved += late;
            }
            if moved > 0 {
                tracing::warn!(pod = %previous, session = %key, entries = moved, "re-routed a moved session's mail from a stopped pod");
            }
            return;
        }
    }
}

/// Re-routes (then deletes) the entries for `key` in `dead`'s inbox; returns how many.
async fn reroute_session_entries(inner: &Inner, dead: &str, key: &SessionKey) -> u64 {
    let inbox = keys::inbox(dead);
    let wanted = keys::encode_key(key);
    let stale_prefix = format!("{dead}/");
    let mut start = "-".to_string();
    let mut moved = 0u64;
    loop {
        let page = streams::xrange(&inner.client, &inbox, &start, 256).await;
        let Ok(entries) = inner.record("session_takeover_read", page) else {
            return moved;
        };
        let Some((last, _)) = entries.last() else {
            return moved;
        };
        start = format!("({last}");
        let full = entries.len() == 256;
        let mut done = Vec::new();
        for (id, fields) in &entries {
            let mine = !fields.contains_key("c")
                && streams::text(fields, "k").is_some_and(|k| k == wanted);
            if mine && reroute_dead_entry(inner, fields, &stale_prefix).await {
                done.push(id.clone());
            }
        }
        moved += done.len() as u64;
        if !done.is_empty() {
            let r: FredResult<i64> = inner.client.xdel(&inbox, done).await;
            let _ = inner.record("session_takeover_del", r);
        }
        if !full {
            return moved;
        }
    }
}

/// Finds pods whose lease expired and re-routes what is left in their inboxes.
pub async fn takeover_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        // A pod is dead once its lease expired a whole lease ago: a Redis failover or a
        // slow refresh must not make live pods look dead.
        let lease = inner.settings.lease.as_millis() as u64;
        if !may_judge_leases(
            now_ms(),
            inner.reconnected_at.load(Ordering::Relaxed),
            lease,
        ) {
            continue;
        }
        let cutoff = now_ms().saturating_sub(lease) as f64;
        let dead: FredResult<Vec<(String, f64)>> = inner
            .client
            .zrangebyscore(keys::PODS, "-inf", cutoff, true, None)
            .await;
        let Ok(dead) = inner.record("zrangebyscore", dead) else {
            continue;
        };
        for (pod, expired_at) in dead.into_iter().filter(|(p, _)| *p != inner.settings.pod) {
            // Checked again per pod: the reconnection may have happened while we read.
            if !may_judge_leases(
                now_ms(),
                inner.reconnected_at.load(Ordering::Relaxed),
                lease,
            ) {
                break;
            }
            take_over(&inner, &pod, expired_at as u64).await;
        }
    }
}

/// Whether other pods' leases can be judged now (unix ms `now`, our client's last reconnection
/// at `reconnected_at`, the lease in ms). After an outage every pod's lease looks expired, and
/// the others need their reconnection backoff (up to 2 s) and a lease tick to renew it: until a
/// lease (at least 5 s) after our own reconnection, nobody is taken over, or every pod would take
/// every live pod over after each outage longer than a lease.
pub(crate) fn may_judge_leases(now: u64, reconnected_at: u64, lease_ms: u64) -> bool {
    now.saturating_sub(reconnected_at) >= lease_ms.max(5_000)
}

/// Re-routes everything in a dead pod's inbox. The pod stays registered (and its inbox is
/// drained again each round) until three leases after its lease expired: by then every
/// session key naming it has expired, so nothing can still be appended to its inbox.
async fn take_over(inner: &Inner, dead: &str, expired_at_ms: u64) {
    let lock = keys::takeover_lock(dead);
    let got: FredResult<Option<String>> = inner
        .client
        .set(
            &lock,
            inner.settings.pod.as_str(),
            Some(Expiration::PX(60_000)),
            Some(SetOptions::NX),
            false,
        )
        .await;
    if !matches!(inner.record("takeover_lock", got), Ok(Some(_))) {
        return;
    }
    let inbox = keys::inbox(dead);
    let stale_prefix = format!("{dead}/");
    let mut moved = 0u64;
    loop {
        let page = streams::xrange(&inner.client, &inbox, "-", 256).await;
        let Ok(entries) = inner.record("takeover_read", page) else {
            return; // lock expires; another round retries
        };
        if entries.is_empty() {
            break;
        }
        let mut done = Vec::new();
        for (id, fields) in &entries {
            if reroute_dead_entry(inner, fields, &stale_prefix).await {
                done.push(id.clone());
                moved += 1;
            }
        }
        if done.is_empty() {
            return;
        }
        let r: FredResult<i64> = inner.client.xdel(&inbox, done).await;
        if inner.record("takeover_del", r).is_err() {
            return;
        }
    }
    if moved > 0 {
        tracing::warn!(
            pod = dead,
            entries = moved,
            "re-routed the inbox of a dead pod"
        );
    }
    let settled =
        now_ms().saturating_sub(expired_at_ms) > 3 * inner.settings.lease.as_millis() as u64;
    if settled && inbox_dropped(inner, &inbox).await {
        let _: FredResult<i64> = inner.client.zrem(keys::PODS, dead).await;
        let _: FredResult<i64> = inner.client.zrem(keys::BEATS, dead).await;
        inner.metrics.takeovers.inc();
        tracing::warn!(pod = dead, "dead pod taken over");
    }
    let _: FredResult<i64> = inner.client.del(&lock).await;
}

/// Deletes a drained inbox if nothing was appended since it was read empty.
async fn inbox_dropped(inner: &Inner, inbox: &str) -> bool {
    let r: FredResult<i64> = inner
        .scripts
        .inbox_drop
        .evalsha_with_reload(&inner.client, vec![inbox.to_string()], Vec::<Value>::new())
        .await;
    matches!(inner.record("takeover_drop", r), Ok(1))
}

/// Re-routes one entry of a dead pod's inbox; control entries are dropped.
async fn reroute_dead_entry(
    inner: &Inner,
    fields: &std::collections::HashMap<String, Value>,
    stale_prefix: &str,
) -> bool {
    if fields.contains_key("c") {
        return true;
    }
    let key = streams::text(fields, "k").and_then(|k| keys::decode_key(&k));
    let frame = streams::bytes(fields, "e");
    let expires_at = streams::number(fields, "x").unwrap_or(0);
    let (Some(key), Some(frame)) = (key, frame) else {
        return true;
    };
    if expires_at <= rmb_proto::unix_now() {
        return true;
    }
    let item = crate::hub::Queued {
        frame,
        expires_at,
        accepted: std::time::Instant::now(),
        receipt: crate::hub::Receipt::Local,
    };
    // Local sessions get it through our own inbox like any other entry.
    let routed = inner
        .route_durable(&key, &item, false, Some(stale_prefix))
        .await;
    super::stored(&inner.metrics, routed)
}

/// Acknowledges confirmed entries in bulk: whatever arrived since the last round, grouped by
/// stream. While Redis is slow, rounds simply grow larger.
pub async fn ack_loop(
    inner: Arc<Inner>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::hub::Receipt>,
) {
    let mut buf = Vec::with_capacity(4096);
    while rx.recv_many(&mut buf, 4096).await > 0 {
        inner.delete_confirmed(std::mem::take(&mut buf)).await;
    }
}

/// Every three leases (30 s by default) one pod, whoever takes the lock, counts the envelopes
/// in every mailbox and publishes the total; every pod reads it into
/// `rmb_relay_mailbox_envelopes`. A SCAN of the keyspace is too heavy for each scrape, fine
/// twice a minute.
pub async fn mailbox_depth_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.settings.lease * 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.stopping.load(Ordering::Relaxed) {
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

#[cfg(test)]
mod tests {
    use super::may_judge_leases;

    #[test]
    fn other_pods_leases_are_judged_only_a_while_after_our_own_reconnection() {
        let lease = 10_000;
        assert!(may_judge_leases(1_000_000, 0, lease), "never reconnected");
        assert!(
            !may_judge_leases(1_000_000, 995_000, lease),
            "reconnected 5 s ago"
        );
        assert!(
            may_judge_leases(1_000_000, 990_000, lease),
            "a whole lease ago"
        );
        // Short test leases still wait 5 s: the others' reconnect backoff reaches 2 s.
        assert!(!may_judge_leases(1_000_000, 996_000, 2_000));
        assert!(may_judge_leases(1_000_000, 995_000, 2_000));
    }
}
