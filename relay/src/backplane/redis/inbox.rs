//! The pod's inbox consumer: reading its inbox stream, handing entries to local sessions or
//! routing them on, acknowledging what was confirmed, reclaiming what was never acknowledged,
//! and finding entries whose read reply was lost.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;

use super::{entry, in_hand, keys, now_ms, streams, Inner, Periodic};
use crate::hub::{Queued, Receipt};

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
    let mut tick = Periodic::every(Duration::from_secs(15));
    loop {
        if !tick.next(&inner).await {
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

impl Inner {
    /// Acknowledges and deletes inbox entries: both commands in one round trip.
    pub(super) async fn ack_inbox(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let held: Vec<in_hand::EntryId> =
            ids.iter().filter_map(|id| in_hand::parse_id(id)).collect();
        let pipeline = self.client.pipeline();
        let queued: FredResult<()> = pipeline.xack(&*self.inbox, keys::GROUP, ids.clone()).await;
        let _ = self.record("xack", queued);
        let queued: FredResult<()> = pipeline.xdel(&*self.inbox, ids).await;
        let _ = self.record("xdel", queued);
        let mut results = pipeline.try_all::<i64>().await.into_iter();
        if let Some(acked) = results.next() {
            if self.record("xack", acked).is_ok() {
                self.in_hand.acked(held);
            }
        }
        if let Some(deleted) = results.next() {
            let _ = self.record("xdel", deleted);
        }
    }

    /// Handles one inbox entry; returns whether it can be acknowledged now (otherwise a
    /// session holds it until its peer confirms).
    async fn handle_entry(&self, id: &str, fields: &HashMap<String, Value>) -> bool {
        let text = |name: &str| streams::text(fields, name);
        match text("c").as_deref() {
            Some("probe") => {
                let now = now_ms();
                self.probe_seen.store(now, Ordering::Relaxed);
                if let Some(sent) = text("t").and_then(|t| t.parse::<u64>().ok()) {
                    let lag = now.saturating_sub(sent) as f64 / 1000.0;
                    self.metrics.inbox_lag_seconds.set(lag);
                }
                return true;
            }
            Some("evict") => {
                let key = text("k").and_then(|k| keys::decode_key(&k));
                let session = text("n").and_then(|n| n.parse().ok());
                if let (Some(key), Some(n)) = (key, session) {
                    self.owners.forget(&key);
                    self.hub
                        .close_session(&key, n, crate::hub::CloseReason::Replaced);
                }
                return true;
            }
            _ => {}
        }
        let Some(key) = text("k").and_then(|k| keys::decode_key(&k)) else {
            return true;
        };
        let live = match entry::live(fields, rmb_proto::unix_now()) {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(entry = id, error = %e, "dropping an unreadable inbox entry");
                return true;
            }
        };
        let Some(last) = live.len().checked_sub(1) else {
            return true;
        };
        let id: Arc<str> = Arc::from(id);
        let accepted = Instant::now();
        let items: Vec<Queued> = live
            .into_iter()
            .enumerate()
            .map(|(i, e)| Queued {
                frame: e.frame,
                expires_at: e.expires_at,
                accepted,
                receipt: Receipt::Stream {
                    stream: self.inbox.clone(),
                    id: id.clone(),
                    completes_entry: i == last,
                },
            })
            .collect();
        match self.hub.push_all_if_online(&key, items) {
            // Acknowledged once the session confirms the last of them.
            Ok(()) => false,
            Err(items) => {
                // The session is not here (any more): send them where it belongs now. The
                // entry is done once every one of them is stored again.
                self.reroute_all(&key, &items, None).await
            }
        }
    }
}
