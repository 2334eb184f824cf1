//! Re-routing what a stopped pod left in its inbox: per session, as soon as a twin that moved
//! here finds its old pod silent; and for the whole pod, once its lease has run out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;

use super::tasks::{HEARTBEAT, LIVE_BEATS};
use super::{entry, keys, now_ms, streams, Inner, Periodic};
use crate::key::SessionKey;

/// Beats missed before a pod counts as stopped for the sessions that left it.
const STALE_BEATS: u32 = 3;

/// Session `key` (our session `session`) moved here from `previous`: once that pod stopped
/// beating, re-routes the entries for `key` waiting in its inbox, without waiting for its
/// lease to run out and a whole-pod takeover. The whole-pod takeover may route the same entries
/// again (at-least-once); nothing is deleted before it was routed. A pod that still beats
/// after the move is alive and handles its inbox itself.
pub async fn take_over_session(inner: Arc<Inner>, key: SessionKey, session: u64, previous: String) {
    let moved_at = now_ms();
    let stale_ms = (HEARTBEAT * STALE_BEATS).as_millis() as u64;
    let give_up = Instant::now() + inner.settings.lease * 2;
    let mut tick = Periodic::every(HEARTBEAT / 2);
    loop {
        let running = tick.next(&inner).await;
        let still_ours = inner.locals.lock().get(&key) == Some(&session);
        if !running || !still_ours || Instant::now() > give_up {
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
    let mut tick = Periodic::every(Duration::from_secs(1));
    loop {
        if !tick.next(&inner).await {
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
        let _: FredResult<i64> = inner.client.zrem(keys::PACKED_READERS, dead).await;
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

/// Re-routes the envelopes of one entry of a dead pod's inbox; whether all were stored again
/// (the entry may be deleted). Control entries are dropped.
async fn reroute_dead_entry(
    inner: &Inner,
    fields: &std::collections::HashMap<String, Value>,
    stale_prefix: &str,
) -> bool {
    if fields.contains_key("c") {
        return true;
    }
    let Some(key) = streams::text(fields, "k").and_then(|k| keys::decode_key(&k)) else {
        return true;
    };
    let Ok(live) = entry::live(fields, rmb_proto::unix_now()) else {
        return true;
    };
    let accepted = std::time::Instant::now();
    let items: Vec<crate::hub::Queued> = live
        .into_iter()
        .map(|e| crate::hub::Queued {
            frame: e.frame,
            expires_at: e.expires_at,
            accepted,
            receipt: crate::hub::Receipt::Local,
        })
        .collect();
    // Local sessions get them through our own inbox like any other entry.
    inner.reroute_all(&key, &items, Some(stale_prefix)).await
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
