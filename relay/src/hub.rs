//! The pod-local hub: one ordered queue per session key, drained by the session that owns it.
//!
//! Every envelope for a key goes through its queue, whether the session is connected or not;
//! a connected session pulls batches from it, and entries written but not yet confirmed are
//! pushed back to the front when the session ends. One model gives in-order delivery, the
//! offline mailbox and at-least-once delivery. Queues of one twin share a shard, so the
//! per-twin bound is one counter under one lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::key::SessionKey;

const SHARDS: usize = 64;

/// One envelope waiting for (or in) delivery.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The envelope exactly as received: relays forward bytes, they do not re-encode.
    pub frame: Bytes,
    /// Unix second at which it must be dropped.
    pub expires_at: u64,
    /// When the relay accepted it (for the routing latency histogram).
    pub accepted: Instant,
    /// How to acknowledge it once the peer confirmed receipt.
    pub receipt: Receipt,
}

/// What a backplane needs to acknowledge a delivered entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Held only in this process: nothing to acknowledge.
    Local,
    /// An envelope of a Redis stream entry; the entry is acknowledged (and deleted) by id once
    /// its last envelope is confirmed (a session confirms in order, so all of them are).
    Stream {
        /// The stream key.
        stream: Arc<str>,
        /// The entry id.
        id: Arc<str>,
        /// Whether this is the entry's last envelope still to deliver.
        completes_entry: bool,
    },
    /// An entry of a twin's Redis mailbox, deleted by id; what it was charged to the twin's
    /// byte counter is given back on deletion.
    Mailbox {
        /// The mailbox stream key.
        stream: Arc<str>,
        /// The entry id.
        id: Arc<str>,
        /// Its envelope's length.
        bytes: u64,
        /// Whether it counts against the unused-session-id sub-quota.
        unused_sid: bool,
    },
}

/// Why a session is asked to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Still open.
    None = 0,
    /// The same `(twin, sid)` connected again.
    Replaced = 1,
    /// The session did not keep up with its queue.
    SlowConsumer = 2,
    /// The relay is draining.
    Draining = 3,
    /// The session's socket did not take a write in time, or its unsent replies passed
    /// their bound (a peer that stopped reading).
    Stuck = 4,
}

impl CloseReason {
    fn from_u8(v: u8) -> CloseReason {
        match v {
            1 => CloseReason::Replaced,
            2 => CloseReason::SlowConsumer,
            3 => CloseReason::Draining,
            4 => CloseReason::Stuck,
            _ => CloseReason::None,
        }
    }
}

/// How the hub wakes a session: new entries, or a request to close.
#[derive(Debug, Default)]
pub struct SessionSignal {
    notify: Notify,
    close: AtomicU8,
    aborted: CancellationToken,
}

impl SessionSignal {
    /// Waits until there is something to pull or a close was requested.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Wakes the session (stores a permit if it is not waiting).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Asks the session to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.close.compare_exchange(
            CloseReason::None as u8,
            reason as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if reason != CloseReason::Draining {
            self.aborted.cancel();
        }
        self.wake();
    }

    /// Resolves once the session must stop writing at once (replaced, slow consumer): a write
    /// blocked on a peer that does not read is abandoned.
    pub async fn aborted(&self) {
        self.aborted.cancelled().await;
    }

    /// The close requested, if any.
    pub fn close_reason(&self) -> CloseReason {
        CloseReason::from_u8(self.close.load(Ordering::Acquire))
    }
}

/// Byte budgets of a twin's mail, shared by both backplanes (the Redis one checks them in
/// its routing script).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailBudget {
    /// Most bytes queued for one twin across all its session ids.
    pub twin_bytes: u64,
    /// Most entries queued for session ids the twin has not used recently: junk session ids
    /// cannot fill the twin's mailbox.
    pub unused_sid_entries: usize,
    /// Most bytes queued for session ids the twin has not used recently.
    pub unused_sid_bytes: u64,
    /// How long a session id counts as used after a session with it attached or detached.
    pub recent_sid_seconds: u64,
}

impl MailBudget {
    /// No byte budget and no sub-quota (every session id counts as used).
    pub const UNLIMITED: MailBudget = MailBudget {
        twin_bytes: u64::MAX,
        unused_sid_entries: usize::MAX,
        unused_sid_bytes: u64::MAX,
        recent_sid_seconds: u64::MAX,
    };
}

/// Most session ids remembered as recently used per twin; the oldest is forgotten first.
pub const RECENT_SIDS_PER_TWIN: usize = 1024;

/// Which byte budget or sub-quota refused an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The twin's mail already holds `--mailbox-max-bytes`.
    TwinBytes,
    /// This process already queues `--pod-queue-max-bytes` (memory backplane).
    PodBytes,
    /// Mail for session ids the twin has not used recently is at its sub-quota.
    UnusedSid,
}

impl Budget {
    /// What the sender is told, naming the setting.
    pub fn describe(self, twin: u32) -> String {
        match self {
            Budget::TwinBytes => format!(
                "mailbox of twin {twin} is full: its byte budget (--mailbox-max-bytes) is used up"
            ),
            Budget::PodBytes => {
                "relay queue is full: its byte budget (--pod-queue-max-bytes) is used up".into()
            }
            Budget::UnusedSid => format!(
                "mailbox of twin {twin} is full for session ids it has not used recently (--unused-sid-mailbox-max, --unused-sid-mailbox-bytes)"
            ),
        }
    }
}

/// Whether mail to `sid` counts against the unused-session-id sub-quota: not for the no-sid
/// key, a connected session or a session id used within the window (`recent`).
pub fn counts_as_unused_sid(sid: Option<&str>, connected: bool, recent: bool) -> bool {
    sid.is_some() && !connected && !recent
}

/// The byte and entry bound a push would break, if any: the twin's byte budget, then the
/// unused-sid sub-quota (only for mail that counts against it).
pub fn over_budget(
    budget: &MailBudget,
    twin_bytes: u64,
    unused: Option<(usize, u64)>,
    len: u64,
) -> Option<Budget> {
    if twin_bytes.saturating_add(len) > budget.twin_bytes {
        return Some(Budget::TwinBytes);
    }
    match unused {
        Some((entries, bytes))
            if entries >= budget.unused_sid_entries
                || bytes.saturating_add(len) > budget.unused_sid_bytes =>
        {
            Some(Budget::UnusedSid)
        }
        _ => None,
    }
}

/// Bounds the hub enforces.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Most entries queued for one twin across its session keys (the mailbox bound).
    pub mailbox_per_twin: usize,
    /// Byte budgets per twin and for unused session ids.
    pub budget: MailBudget,
    /// Most bytes queued in this hub (the memory backplane's guard against running out of
    /// memory).
    pub pod_bytes: u64,
    /// Most entries waiting for a connected session before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// Most sessions one twin may hold at once.
    pub sessions_per_twin: usize,
}

/// What became of a queued (routed) envelope. The hub answers the first four; a backplane
/// adds `Draining`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Queued for a connected session.
    Online,
    /// Stored in the destination's mailbox until it connects or the envelope expires.
    Mailbox,
    /// Refused: destination offline and the sender asked to fail fast.
    Offline,
    /// Refused: the destination's mailbox is full.
    MailboxFull,
    /// Refused: the relay is shutting down and can no longer keep mail.
    Draining,
    /// Refused: a byte budget or the unused-session-id sub-quota is used up.
    OverBudget(Budget),
}

/// A session's claim on its queue, and the handle it drains that queue through: a session
/// never needs the hub itself (nor the backplane's internals) to read its mail.
pub struct Attachment {
    /// The session key.
    pub key: SessionKey,
    /// Distinguishes this session from an earlier or later one with the same key.
    pub id: u64,
    /// Wake-ups and close requests for this session.
    pub signal: Arc<SessionSignal>,
    queues: Arc<Hub>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("key", &self.key)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Attachment {
    /// Takes the next batch of this session's queue; see [`Hub::pull`].
    pub fn pull(&self, max: usize, now: u64, out: &mut Vec<Queued>) -> Pulled {
        self.queues.pull(self, max, now, out)
    }
}

/// Why a session could not attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The twin already holds the most sessions allowed.
    #[error("twin already has {0} sessions")]
    TooManySessions(usize),
}

/// Gauges the hub keeps current.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Entries queued, all keys.
    pub queued: AtomicU64,
    /// Bytes of the entries queued, all keys (bounded by `pod_bytes`).
    pub queued_bytes: AtomicU64,
    /// Entries queued for keys with no session (the mailbox).
    pub mailbox: AtomicU64,
    /// Entries dropped at their expiry.
    pub expired: AtomicU64,
}

/// The hub.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    limits: HubLimits,
    next_id: AtomicU64,
    stats: HubStats,
}

#[derive(Default)]
struct Shard {
    twins: HashMap<u32, TwinQueues>,
    /// Per twin: session ids a session attached or detached with, and the unix second it
    /// last did. Bounded per twin and swept after the window.
    recent_sids: HashMap<u32, HashMap<Arc<str>, u64>>,
}

/// The shard holding the queues of `twin`.
fn shard_index(twin: u32) -> usize {
    twin as usize % SHARDS
}

impl Shard {
    /// Wakes the session attached for `key`, if there is one.
    fn wake_owner(&self, key: &SessionKey) {
        let owner = self
            .twins
            .get(&key.twin)
            .and_then(|t| t.queues.get(&key.sid))
            .and_then(|q| q.owner.as_ref());
        if let Some((_, signal)) = owner {
            signal.wake();
        }
    }

    /// Whether a session for `key` is attached in this shard.
    fn is_online(&self, key: &SessionKey) -> bool {
        self.twins
            .get(&key.twin)
            .and_then(|t| t.queues.get(&key.sid))
            .is_some_and(|q| q.owner.is_some())
    }

    fn sid_is_recent(&self, twin: u32, sid: Option<&Arc<str>>) -> bool {
        sid.is_some_and(|sid| {
            self.recent_sids
                .get(&twin)
                .is_some_and(|sids| sids.contains_key(sid))
        })
    }

    /// Remembers that a session used `sid` now, forgetting the twin's oldest one past the cap.
    fn mark_sid_used(&mut self, twin: u32, sid: Option<&Arc<str>>) {
        let Some(sid) = sid else { return };
        let sids = self.recent_sids.entry(twin).or_default();
        if !sids.contains_key(sid) && sids.len() >= RECENT_SIDS_PER_TWIN {
            if let Some(oldest) = sids.iter().min_by_key(|(_, t)| **t).map(|(s, _)| s.clone()) {
                sids.remove(&oldest);
            }
        }
        sids.insert(sid.clone(), rmb_proto::unix_now());
    }
}

#[derive(Default)]
struct TwinQueues {
    queued: usize,
    /// Bytes of the entries counted in `queued`.
    bytes: u64,
    /// Entries and bytes in queues of unused session ids (the sub-quota).
    unused_entries: usize,
    unused_bytes: u64,
    sessions: usize,
    queues: HashMap<Option<Arc<str>>, Queue>,
}

/// Total frame bytes of `items`.
pub(crate) fn frame_bytes<'a>(items: impl IntoIterator<Item = &'a Queued>) -> u64 {
    items.into_iter().map(|q| q.frame.len() as u64).sum()
}

#[derive(Default)]
struct Queue {
    /// Entries loaded from a durable mailbox; delivered before `items`.
    backlog: VecDeque<Queued>,
    /// Where to continue loading the durable mailbox, while it may hold more.
    refill: Option<Arc<str>>,
    /// The last durable mailbox entry loaded: new mail is stored after it.
    mailbox_read: Option<Arc<str>>,
    /// New mail reached the durable mailbox while a load was under way: look again after it.
    recheck: bool,
    /// Live entries.
    items: VecDeque<Queued>,
    owner: Option<(u64, Arc<SessionSignal>)>,
    /// Created for a session id the twin had not used recently: its entries count against
    /// the sub-quota until a session with that id attaches.
    unused_sid: bool,
}

impl Queue {
    /// Where to load the durable mailbox from to find mail stored since the last load.
    fn after_last_read(&self) -> Arc<str> {
        self.mailbox_read.clone().unwrap_or_else(|| Arc::from("-"))
    }

    fn len(&self) -> usize {
        self.backlog.len() + self.items.len()
    }

    fn owned_by(&self, att: &Attachment) -> bool {
        self.owner.as_ref().is_some_and(|(id, _)| *id == att.id)
    }
}

/// What [`Hub::pull`] found.
#[derive(Debug, Default)]
pub struct Pulled {
    /// Entries remain queued.
    pub more: bool,
    /// The durable mailbox must be loaded from this cursor before live entries flow.
    pub refill: Option<Arc<str>>,
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits) -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            limits,
            next_id: AtomicU64::new(1),
            stats: HubStats::default(),
        }
    }

    /// Gauges and counters.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// The limits in force.
    pub fn limits(&self) -> HubLimits {
        self.limits
    }

    fn shard(&self, twin: u32) -> MutexGuard<'_, Shard> {
        self.shards[shard_index(twin)].lock()
    }

    /// Claims `key` for a new session; a previous session with the same key is asked to close
    /// (replaced). Its queue, mailbox included, now drains to the new session.
    pub fn attach(self: &Arc<Self>, key: &SessionKey) -> Result<Attachment, AttachError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(SessionSignal::default());
        let mut shard = self.shard(key.twin);
        let twin = shard.twins.entry(key.twin).or_default();
        let replacing = twin.queues.get(&key.sid).is_some_and(|q| q.owner.is_some());
        if !replacing && twin.sessions >= self.limits.sessions_per_twin {
            return Err(AttachError::TooManySessions(twin.sessions));
        }
        let queue = twin.queues.entry(key.sid.clone()).or_default();
        if std::mem::take(&mut queue.unused_sid) {
            // The id is in use now: its mail leaves the sub-quota.
            twin.unused_entries = twin.unused_entries.saturating_sub(queue.len());
            twin.unused_bytes = twin
                .unused_bytes
                .saturating_sub(frame_bytes(queue.backlog.iter().chain(&queue.items)));
        }
        if let Some((_, old)) = queue.owner.replace((id, signal.clone())) {
            old.close(CloseReason::Replaced);
        } else {
            twin.sessions += 1;
            self.stats
                .mailbox
                .fetch_sub(queue.len() as u64, Ordering::Relaxed);
        }
        if queue.len() > 0 {
            signal.wake();
        }
        shard.mark_sid_used(key.twin, key.sid.as_ref());
        Ok(Attachment {
            key: key.clone(),
            id,
            signal,
            queues: self.clone(),
        })
    }

    /// Ends a session: entries it pulled but the peer did not confirm go back to the front of
    /// the queue, in order, for the next session with this key.
    pub fn detach(&self, att: &Attachment, unconfirmed: Vec<Queued>) {
        let mut shard = self.shard(att.key.twin);
        let twin = shard.twins.entry(att.key.twin).or_default();
        let returned = unconfirmed.len();
        let returned_bytes = frame_bytes(&unconfirmed);
        twin.queued += returned;
        twin.bytes += returned_bytes;
        let queue = twin.queues.entry(att.key.sid.clone()).or_default();
        self.stats
            .queued
            .fetch_add(returned as u64, Ordering::Relaxed);
        self.stats
            .queued_bytes
            .fetch_add(returned_bytes, Ordering::Relaxed);
        for item in unconfirmed.into_iter().rev() {
            queue.items.push_front(item);
        }
        let owned_by_us = queue.owner.as_ref().is_some_and(|(id, _)| *id == att.id);
        if owned_by_us {
            // Everything in the queue becomes mailbox.
            queue.owner = None;
            twin.sessions = twin.sessions.saturating_sub(1);
            self.stats
                .mailbox
                .fetch_add(queue.len() as u64, Ordering::Relaxed);
        } else if let Some((_, next)) = &queue.owner {
            // Replaced: the new session gets our unconfirmed entries first.
            next.wake();
        } else {
            self.stats
                .mailbox
                .fetch_add(returned as u64, Ordering::Relaxed);
        }
        let empty = queue.len() == 0 && queue.owner.is_none();
        if empty {
            twin.queues.remove(&att.key.sid);
        }
        if twin.queues.is_empty() {
            shard.twins.remove(&att.key.twin);
        }
        shard.mark_sid_used(att.key.twin, att.key.sid.as_ref());
    }

    /// Queues `item` for `key`. With `fail_fast`, an entry for a disconnected key is refused
    /// instead of entering the mailbox.
    pub fn push(&self, key: &SessionKey, item: Queued, fail_fast: bool) -> Routed {
        let mut shard = self.shard(key.twin);
        let routed = self.push_locked(&mut shard, key, item, fail_fast, true);
        if routed == Routed::Online {
            shard.wake_owner(key);
        }
        routed
    }

    /// Queues envelopes one session sent, in order, as [`Hub::push`] would one by one, with
    /// one shard lock for each run of entries to the same shard and each session woken once
    /// for its run instead of once per entry (a woken session would otherwise take the lock
    /// for one entry at a time while the run is still being pushed).
    pub fn push_many(
        &self,
        entries: impl IntoIterator<Item = (SessionKey, Queued, bool)>,
    ) -> Vec<Routed> {
        let entries = entries.into_iter();
        let mut routed = Vec::with_capacity(entries.size_hint().0);
        let mut locked: Option<(usize, MutexGuard<'_, Shard>)> = None;
        let mut unwoken: Option<SessionKey> = None;
        for (key, item, fail_fast) in entries {
            if let (Some(previous), Some((_, shard))) = (&unwoken, &locked) {
                if *previous != key {
                    shard.wake_owner(previous);
                    unwoken = None;
                }
            }
            let index = shard_index(key.twin);
            if locked.as_ref().is_some_and(|(i, _)| *i != index) {
                // One lock at a time: released before the next is taken.
                locked = None;
            }
            let (_, shard) = locked.get_or_insert_with(|| (index, self.shards[index].lock()));
            let result = self.push_locked(shard, &key, item, fail_fast, true);
            if result == Routed::Online {
                unwoken = Some(key);
            }
            routed.push(result);
        }
        if let (Some(last), Some((_, shard))) = (&unwoken, &locked) {
            shard.wake_owner(last);
        }
        routed
    }

    /// [`Hub::push`] on the shard of `key.twin`, already locked, without waking the session
    /// (the caller wakes it once it pushed what it had for it). `budgets` false skips the
    /// byte budgets and the sub-quota (entries the Redis backplane already stored durably
    /// within its own budgets).
    fn push_locked(
        &self,
        shard: &mut Shard,
        key: &SessionKey,
        item: Queued,
        fail_fast: bool,
        budgets: bool,
    ) -> Routed {
        let len = item.frame.len() as u64;
        let recent = shard.sid_is_recent(key.twin, key.sid.as_ref());
        let twin = shard.twins.entry(key.twin).or_default();
        let existing = twin.queues.get(&key.sid);
        let online = existing.and_then(|q| q.owner.as_ref()).is_some();
        if !online && fail_fast {
            drop_if_empty(shard, key.twin);
            return Routed::Offline;
        }
        if twin.queued >= self.limits.mailbox_per_twin {
            drop_if_empty(shard, key.twin);
            return Routed::MailboxFull;
        }
        let unused = match existing {
            Some(queue) => queue.unused_sid,
            None => counts_as_unused_sid(key.sid.as_deref(), online, recent),
        };
        let sub_quota = unused.then_some((twin.unused_entries, twin.unused_bytes));
        let refused = budgets
            .then(|| over_budget(&self.limits.budget, twin.bytes, sub_quota, len))
            .flatten()
            // Mail for a connected session is drained at once (and bounded by the slow
            // consumer rule): the pod budget refuses only what would wait in a mailbox, so a
            // mailbox flood does not stop live traffic.
            .or_else(|| self.take_pod_bytes(len, budgets && !online).err());
        if let Some(budget) = refused {
            drop_if_empty(shard, key.twin);
            return Routed::OverBudget(budget);
        }
        twin.queued += 1;
        twin.bytes += len;
        if unused {
            twin.unused_entries += 1;
            twin.unused_bytes += len;
        }
        let queue = twin.queues.entry(key.sid.clone()).or_default();
        queue.unused_sid = unused;
        queue.items.push_back(item);
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match &queue.owner {
            Some((_, signal)) => {
                if queue.items.len() > self.limits.outbound_queue {
                    signal.close(CloseReason::SlowConsumer);
                }
                Routed::Online
            }
            None => {
                self.stats.mailbox.fetch_add(1, Ordering::Relaxed);
                Routed::Mailbox
            }
        }
    }

    /// Counts `len` more bytes queued in this hub; with `enforce`, refuses instead when that
    /// passes the pod budget.
    fn take_pod_bytes(&self, len: u64, enforce: bool) -> Result<(), Budget> {
        let before = self.stats.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if enforce && before.saturating_add(len) > self.limits.pod_bytes {
            self.stats.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(Budget::PodBytes);
        }
        Ok(())
    }

    /// Moves up to `max` live entries for the attached session into `out`, dropping expired
    /// ones: first the mailbox backlog, then live entries. When the backlog is used up and
    /// the durable mailbox may hold more, live entries wait and `refill` says where to load
    /// from, so the mailbox is delivered before newer mail.
    pub fn pull(&self, att: &Attachment, max: usize, now: u64, out: &mut Vec<Queued>) -> Pulled {
        let mut shard = self.shard(att.key.twin);
        let Some(twin) = shard.twins.get_mut(&att.key.twin) else {
            return Pulled::default();
        };
        let Some(queue) = twin.queues.get_mut(&att.key.sid) else {
            return Pulled::default();
        };
        if !queue.owned_by(att) {
            return Pulled::default();
        }
        let mut taken = 0;
        let mut expired = 0;
        let mut removed_bytes = 0;
        let mut refill = None;
        while taken < max {
            let item = match queue.backlog.pop_front() {
                Some(item) => item,
                None if queue.refill.is_some() => {
                    refill = queue.refill.clone();
                    break;
                }
                None => match queue.items.pop_front() {
                    Some(item) => item,
                    None => break,
                },
            };
            removed_bytes += item.frame.len() as u64;
            if item.expires_at <= now {
                expired += 1;
            } else {
                out.push(item);
                taken += 1;
            }
        }
        let removed = taken + expired;
        twin.queued = twin.queued.saturating_sub(removed);
        twin.bytes = twin.bytes.saturating_sub(removed_bytes);
        self.stats
            .queued
            .fetch_sub(removed as u64, Ordering::Relaxed);
        self.stats
            .queued_bytes
            .fetch_sub(removed_bytes, Ordering::Relaxed);
        self.stats
            .expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        Pulled {
            more: queue.len() > 0,
            refill,
        }
    }

    /// The queue of `key` if session `id` owns it.
    fn owned_queue<'a>(shard: &'a mut Shard, key: &SessionKey, id: u64) -> Option<&'a mut Queue> {
        shard
            .twins
            .get_mut(&key.twin)?
            .queues
            .get_mut(&key.sid)
            .filter(|q| q.owner.as_ref().is_some_and(|(o, _)| *o == id))
    }

    /// Marks the durable mailbox of session `id` on `key` as possibly non-empty, to be
    /// loaded from `cursor` before live entries.
    pub fn set_refill(&self, key: &SessionKey, id: u64, cursor: Arc<str>) {
        let mut shard = self.shard(key.twin);
        if let Some(queue) = Self::owned_queue(&mut shard, key, id) {
            queue.refill = Some(cursor);
            queue.mailbox_read = None;
            queue.recheck = false;
            if let Some((_, signal)) = &queue.owner {
                signal.wake();
            }
        }
    }

    /// Mail may have reached the durable mailbox of session `id` on `key` since it was last
    /// loaded (its ownership had lapsed): the session loads what follows the last entry it
    /// read. A load under way would overwrite a new cursor when it lands, so it is told to
    /// look again instead.
    pub fn mailbox_changed(&self, key: &SessionKey, id: u64) {
        let mut shard = self.shard(key.twin);
        if let Some(queue) = Self::owned_queue(&mut shard, key, id) {
            if queue.refill.is_some() {
                queue.recheck = true;
            } else {
                queue.refill = Some(queue.after_last_read());
            }
            if let Some((_, signal)) = &queue.owner {
                signal.wake();
            }
        }
    }

    /// Appends entries loaded from the durable mailbox of session `id` on `key`; `next` is
    /// where to continue, or `None` when it is exhausted; `last_read` is the last entry the
    /// load read (for any session id).
    pub fn fill_backlog(
        &self,
        key: &SessionKey,
        id: u64,
        items: Vec<Queued>,
        next: Option<Arc<str>>,
        last_read: Option<Arc<str>>,
    ) {
        let mut shard = self.shard(key.twin);
        let added = items.len();
        let added_bytes = frame_bytes(&items);
        let Some(queue) = Self::owned_queue(&mut shard, key, id) else {
            return;
        };
        queue.backlog.extend(items);
        if last_read.is_some() {
            queue.mailbox_read = last_read;
        }
        let recheck = std::mem::take(&mut queue.recheck);
        queue.refill = match next {
            // Continuing page by page reaches whatever was stored meanwhile.
            Some(next) => Some(next),
            None if recheck => Some(queue.after_last_read()),
            None => None,
        };
        if let Some((_, signal)) = &queue.owner {
            signal.wake();
        }
        if let Some(twin) = shard.twins.get_mut(&key.twin) {
            twin.queued += added;
            twin.bytes += added_bytes;
        }
        self.stats.queued.fetch_add(added as u64, Ordering::Relaxed);
        self.stats
            .queued_bytes
            .fetch_add(added_bytes, Ordering::Relaxed);
    }

    /// Asks session `id` on `key` to close, if it is still attached here.
    pub fn close_session(&self, key: &SessionKey, id: u64, reason: CloseReason) {
        let mut shard = self.shard(key.twin);
        if let Some((_, signal)) =
            Self::owned_queue(&mut shard, key, id).and_then(|q| q.owner.as_ref())
        {
            signal.close(reason);
        }
    }

    /// Queues `items` (one inbox entry's envelopes, in order) for `key` if its session is
    /// attached here: all of them, or none (handed back).
    pub fn push_all_if_online(
        &self,
        key: &SessionKey,
        items: Vec<Queued>,
    ) -> Result<(), Vec<Queued>> {
        // One lock for the check and every push: a detach cannot come in between.
        let mut shard = self.shard(key.twin);
        if !shard.is_online(key) {
            return Err(items);
        }
        for item in items {
            self.push_locked(&mut shard, key, item, false, false);
        }
        shard.wake_owner(key);
        Ok(())
    }

    /// Removes every entry queued for the attached session (backlog and live).
    pub fn take_all(&self, att: &Attachment) -> Vec<Queued> {
        let mut shard = self.shard(att.key.twin);
        let Some(twin) = shard.twins.get_mut(&att.key.twin) else {
            return Vec::new();
        };
        let Some(queue) = twin
            .queues
            .get_mut(&att.key.sid)
            .filter(|q| q.owned_by(att))
        else {
            return Vec::new();
        };
        let mut out: Vec<Queued> = queue.backlog.drain(..).collect();
        out.extend(queue.items.drain(..));
        queue.refill = None;
        let bytes = frame_bytes(&out);
        twin.queued = twin.queued.saturating_sub(out.len());
        twin.bytes = twin.bytes.saturating_sub(bytes);
        self.stats
            .queued
            .fetch_sub(out.len() as u64, Ordering::Relaxed);
        self.stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        out
    }

    /// Ends a session without keeping anything locally: if another local session has taken
    /// the key over, `items` go to it and `None` is returned; otherwise the key is released
    /// and the items are handed back for the caller to store durably.
    pub fn release(&self, att: &Attachment, items: Vec<Queued>) -> Option<Vec<Queued>> {
        let taken_over = {
            let shard = self.shard(att.key.twin);
            shard
                .twins
                .get(&att.key.twin)
                .and_then(|t| t.queues.get(&att.key.sid))
                .is_some_and(|q| q.owner.is_some() && !q.owned_by(att))
        };
        if taken_over {
            self.detach(att, items);
            None
        } else {
            self.detach(att, Vec::new());
            Some(items)
        }
    }

    /// Drops expired entries everywhere and forgets empty queues. Called periodically.
    pub fn sweep(&self, now: u64) {
        let window = self.limits.budget.recent_sid_seconds;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.recent_sids.retain(|_, sids| {
                sids.retain(|_, used| now.saturating_sub(*used) <= window);
                !sids.is_empty()
            });
            shard.twins.retain(|_, twin| {
                let mut dropped_total = 0;
                let mut dropped_bytes = 0;
                twin.queues.retain(|_, queue| {
                    let before = queue.len();
                    let mut bytes = 0;
                    let mut keep = |item: &Queued| {
                        let live = item.expires_at > now;
                        if !live {
                            bytes += item.frame.len() as u64;
                        }
                        live
                    };
                    queue.items.retain(&mut keep);
                    queue.backlog.retain(&mut keep);
                    let dropped = before - queue.len();
                    dropped_total += dropped;
                    dropped_bytes += bytes;
                    if queue.unused_sid {
                        twin.unused_entries = twin.unused_entries.saturating_sub(dropped);
                        twin.unused_bytes = twin.unused_bytes.saturating_sub(bytes);
                    }
                    if queue.owner.is_none() {
                        self.stats
                            .mailbox
                            .fetch_sub(dropped as u64, Ordering::Relaxed);
                    }
                    queue.len() > 0 || queue.owner.is_some()
                });
                twin.queued -= dropped_total;
                twin.bytes = twin.bytes.saturating_sub(dropped_bytes);
                self.stats
                    .queued
                    .fetch_sub(dropped_total as u64, Ordering::Relaxed);
                self.stats
                    .queued_bytes
                    .fetch_sub(dropped_bytes, Ordering::Relaxed);
                self.stats
                    .expired
                    .fetch_add(dropped_total as u64, Ordering::Relaxed);
                !twin.queues.is_empty()
            });
        }
    }

    /// Asks every connected session to close with `reason`; returns how many were asked.
    pub fn close_all(&self, reason: CloseReason) -> usize {
        self.signals().iter().map(|s| s.close(reason)).count()
    }

    /// Signals of every connected session (for paced draining).
    pub fn signals(&self) -> Vec<Arc<SessionSignal>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for twin in shard.twins.values() {
                for queue in twin.queues.values() {
                    if let Some((_, signal)) = &queue.owner {
                        out.push(signal.clone());
                    }
                }
            }
        }
        out
    }

    /// Whether a session for `key` is attached here.
    pub fn is_online(&self, key: &SessionKey) -> bool {
        self.shard(key.twin).is_online(key)
    }
}

fn drop_if_empty(shard: &mut Shard, twin: u32) {
    if shard.twins.get(&twin).is_some_and(|t| t.queues.is_empty()) {
        shard.twins.remove(&twin);
    }
}

#[cfg(test)]
mod tests {
    //! The hub alone: no socket, no Redis; time is tokio's paused clock where waiting matters.
    use std::time::Duration;

    use super::*;

    const NOW: u64 = 1_000;

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new(HubLimits {
            mailbox_per_twin: 4,
            budget: MailBudget::UNLIMITED,
            pod_bytes: u64::MAX,
            outbound_queue: 3,
            sessions_per_twin: 2,
        }))
    }

    /// A hub with a mailbox of 100 entries and the given byte budgets.
    fn budgeted(twin_bytes: u64, unused: (usize, u64), pod_bytes: u64) -> Arc<Hub> {
        Arc::new(Hub::new(HubLimits {
            mailbox_per_twin: 100,
            budget: MailBudget {
                twin_bytes,
                unused_sid_entries: unused.0,
                unused_sid_bytes: unused.1,
                recent_sid_seconds: 60,
            },
            pod_bytes,
            outbound_queue: 100,
            sessions_per_twin: 10,
        }))
    }

    fn sized(len: usize) -> Queued {
        Queued {
            frame: Bytes::from(vec![0u8; len]),
            expires_at: NOW + 60,
            accepted: Instant::now(),
            receipt: Receipt::Local,
        }
    }

    fn item(tag: &'static str, expires_at: u64) -> Queued {
        Queued {
            frame: Bytes::from_static(tag.as_bytes()),
            expires_at,
            accepted: Instant::now(),
            receipt: Receipt::Local,
        }
    }

    fn key(twin: u32, sid: Option<&str>) -> SessionKey {
        SessionKey::new(twin, sid)
    }

    fn pull_all(hub: &Hub, att: &Attachment) -> Vec<Bytes> {
        let mut out = Vec::new();
        hub.pull(att, usize::MAX, NOW, &mut out);
        out.into_iter().map(|q| q.frame).collect()
    }

    fn refill_of(hub: &Hub, att: &Attachment) -> Option<String> {
        let mut out = Vec::new();
        hub.pull(att, usize::MAX, NOW, &mut out)
            .refill
            .map(|r| r.to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn an_entrys_envelopes_are_queued_all_in_order_or_handed_back_all() {
        let hub = hub();
        let k = key(1, None);
        let entry = || vec![item("a", NOW + 9), item("b", NOW + 9)];
        let back = hub.push_all_if_online(&k, entry()).unwrap_err();
        assert_eq!(back.len(), 2, "nobody attached: all handed back");
        let att = hub.attach(&k).unwrap();
        assert!(!woken_within(&att.signal, Duration::ZERO).await);
        assert!(hub.push_all_if_online(&k, entry()).is_ok());
        assert!(
            woken_within(&att.signal, Duration::ZERO).await,
            "the session is woken for the entry"
        );
        assert_eq!(
            pull_all(&hub, &att),
            vec![Bytes::from("a"), Bytes::from("b")]
        );
        hub.release(&att, Vec::new());
        assert_eq!(hub.push_all_if_online(&k, entry()).unwrap_err().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_queued_in_order_and_wakes_every_session_that_got_some() {
        let hub = hub();
        // Twins 1 and 65 share a shard; 2 and 3 have no session.
        let (a, b, c, d) = (key(1, None), key(65, None), key(2, None), key(3, None));
        let att_a = hub.attach(&a).unwrap();
        let att_b = hub.attach(&b).unwrap();
        // a's runs end before other entries; b's only run ends the batch.
        let batch = [
            (&a, "a1", false),
            (&a, "a2", false),
            (&c, "c1", false),
            (&a, "a3", false),
            (&d, "d1", true),
            (&b, "b1", false),
            (&b, "b2", false),
        ];
        let routed = hub.push_many(
            batch
                .iter()
                .map(|(k, tag, fail_fast)| ((*k).clone(), item(tag, NOW + 9), *fail_fast)),
        );
        use Routed::{Mailbox, Offline, Online};
        assert_eq!(
            routed,
            [Online, Online, Mailbox, Online, Offline, Online, Online]
        );
        assert!(woken_within(&att_a.signal, Duration::ZERO).await, "a woken");
        assert!(woken_within(&att_b.signal, Duration::ZERO).await, "b woken");
        assert_eq!(pull_all(&hub, &att_a), ["a1", "a2", "a3"]);
        assert_eq!(pull_all(&hub, &att_b), ["b1", "b2"]);
        assert_eq!(hub.stats().mailbox.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn mail_stored_while_the_mailbox_loads_is_loaded_after_it() {
        let hub = hub();
        let k = key(1, None);
        let att = hub.attach(&k).unwrap();
        hub.set_refill(&k, att.id, Arc::from("-"));
        assert_eq!(refill_of(&hub, &att).as_deref(), Some("-"));
        // The load is under way when the ownership lapse is noticed.
        hub.mailbox_changed(&k, att.id);
        hub.fill_backlog(
            &k,
            att.id,
            vec![item("a", NOW + 9)],
            None,
            Some(Arc::from("7-0")),
        );
        let mut out = Vec::new();
        let pulled = hub.pull(&att, usize::MAX, NOW, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            pulled.refill.as_deref(),
            Some("7-0"),
            "looks again after what it read"
        );
        hub.fill_backlog(&k, att.id, Vec::new(), None, None);
        assert_eq!(
            refill_of(&hub, &att),
            None,
            "done once nothing new was found"
        );
        // Noticed while idle: loads what follows the last entry read.
        hub.mailbox_changed(&k, att.id);
        assert_eq!(refill_of(&hub, &att).as_deref(), Some("7-0"));
    }

    /// Resolves within `limit` of (paused, auto-advancing) time, or not at all.
    async fn woken_within(signal: &SessionSignal, limit: Duration) -> bool {
        tokio::time::timeout(limit, signal.wait()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn mail_for_an_offline_session_waits_and_wakes_it_on_attach_in_order() {
        let hub = hub();
        let k = key(7, None);
        assert_eq!(hub.push(&k, item("a", NOW + 60), false), Routed::Mailbox);
        assert_eq!(hub.push(&k, item("b", NOW + 60), false), Routed::Mailbox);
        assert_eq!(hub.stats().mailbox.load(Ordering::Relaxed), 2);
        let att = hub.attach(&k).unwrap();
        assert!(
            woken_within(&att.signal, Duration::ZERO).await,
            "a permit waits"
        );
        assert_eq!(hub.stats().mailbox.load(Ordering::Relaxed), 0);
        assert_eq!(pull_all(&hub, &att), ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_sleeps_until_mail_arrives() {
        let hub = hub();
        let k = key(7, Some("s"));
        let att = hub.attach(&k).unwrap();
        assert!(!woken_within(&att.signal, Duration::from_secs(3600)).await);
        assert_eq!(hub.push(&k, item("x", NOW + 60), false), Routed::Online);
        assert!(woken_within(&att.signal, Duration::ZERO).await);
    }

    #[test]
    fn the_mailbox_bound_counts_every_session_id_of_a_twin() {
        let hub = hub();
        for sid in ["a", "b", "c", "d"] {
            assert_eq!(
                hub.push(&key(9, Some(sid)), item("m", NOW + 60), false),
                Routed::Mailbox
            );
        }
        assert_eq!(
            hub.push(&key(9, Some("e")), item("m", NOW + 60), false),
            Routed::MailboxFull
        );
        assert_eq!(
            hub.push(&key(10, None), item("m", NOW + 60), false),
            Routed::Mailbox,
            "other twins are not affected"
        );
    }

    #[test]
    fn the_byte_budget_counts_every_session_id_and_is_given_back_on_delivery() {
        let hub = budgeted(100, (100, 100), u64::MAX);
        let k = key(9, None);
        assert_eq!(hub.push(&k, sized(60), false), Routed::Mailbox);
        assert_eq!(
            hub.push(&key(9, Some("other")), sized(41), false),
            Routed::OverBudget(Budget::TwinBytes),
            "60 + 41 bytes pass the twin's 100"
        );
        assert_eq!(hub.push(&key(10, None), sized(60), false), Routed::Mailbox);
        let att = hub.attach(&k).unwrap();
        assert_eq!(pull_all(&hub, &att).len(), 1);
        assert_eq!(hub.push(&k, sized(100), false), Routed::Online, "freed");
        assert_eq!(hub.stats().queued_bytes.load(Ordering::Relaxed), 160);
    }

    #[test]
    fn the_pod_byte_budget_refuses_mailbox_mail_but_not_mail_for_a_connected_session() {
        let hub = budgeted(1_000, (100, 1_000), 100);
        assert_eq!(hub.push(&key(1, None), sized(60), false), Routed::Mailbox);
        assert_eq!(
            hub.push(&key(2, None), sized(41), false),
            Routed::OverBudget(Budget::PodBytes)
        );
        let att = hub.attach(&key(3, None)).unwrap();
        assert_eq!(hub.push(&key(3, None), sized(41), false), Routed::Online);
        assert_eq!(hub.stats().queued_bytes.load(Ordering::Relaxed), 101);
        pull_all(&hub, &att);
        hub.sweep(NOW + 61);
        assert_eq!(hub.stats().queued_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(hub.push(&key(2, None), sized(100), false), Routed::Mailbox);
    }

    #[test]
    fn mail_for_unused_session_ids_gets_only_a_sub_quota() {
        let hub = budgeted(10_000, (2, 1_000), u64::MAX);
        let used = key(4, Some("real"));
        hub.detach(&hub.attach(&used).unwrap(), Vec::new());
        for junk in ["j1", "j2"] {
            assert_eq!(
                hub.push(&key(4, Some(junk)), sized(1), false),
                Routed::Mailbox
            );
        }
        assert_eq!(
            hub.push(&key(4, Some("j3")), sized(1), false),
            Routed::OverBudget(Budget::UnusedSid)
        );
        assert_eq!(
            hub.push(&key(4, Some("j1")), sized(1), false),
            Routed::OverBudget(Budget::UnusedSid),
            "an existing junk queue counts too"
        );
        for _ in 0..5 {
            assert_eq!(hub.push(&used, sized(1), false), Routed::Mailbox);
            assert_eq!(hub.push(&key(4, None), sized(1), false), Routed::Mailbox);
        }
        assert_eq!(
            hub.push(&key(5, Some("j1")), sized(1), false),
            Routed::Mailbox,
            "per twin"
        );
    }

    #[test]
    fn attaching_with_a_session_id_takes_its_mail_out_of_the_sub_quota() {
        let hub = budgeted(10_000, (1, 1_000), u64::MAX);
        let late = key(6, Some("late"));
        assert_eq!(hub.push(&late, sized(1), false), Routed::Mailbox);
        assert_eq!(
            hub.push(&key(6, Some("other")), sized(1), false),
            Routed::OverBudget(Budget::UnusedSid)
        );
        let att = hub.attach(&late).unwrap();
        assert_eq!(pull_all(&hub, &att).len(), 1);
        assert_eq!(
            hub.push(&key(6, Some("other")), sized(1), false),
            Routed::Mailbox
        );
    }

    #[test]
    fn a_session_id_counts_as_used_only_within_the_window() {
        let hub = budgeted(10_000, (1, 1_000), u64::MAX);
        let k = key(7, Some("old"));
        hub.detach(&hub.attach(&k).unwrap(), Vec::new());
        assert!(hub.shard(7).sid_is_recent(7, k.sid.as_ref()));
        hub.sweep(rmb_proto::unix_now() + 61);
        assert!(!hub.shard(7).sid_is_recent(7, k.sid.as_ref()));
        assert_eq!(hub.push(&k, sized(1), false), Routed::Mailbox);
        assert_eq!(
            hub.push(&k, sized(1), false),
            Routed::OverBudget(Budget::UnusedSid)
        );
    }

    #[test]
    fn recently_used_session_ids_are_bounded_per_twin() {
        let hub = budgeted(10_000, (1, 1_000), u64::MAX);
        for i in 0..RECENT_SIDS_PER_TWIN + 10 {
            let k = SessionKey::new(8, Some(&format!("s{i}")));
            hub.detach(&hub.attach(&k).unwrap(), Vec::new());
        }
        assert_eq!(hub.shard(8).recent_sids[&8].len(), RECENT_SIDS_PER_TWIN);
    }

    #[test]
    fn fail_fast_to_an_offline_session_queues_nothing() {
        let hub = hub();
        let k = key(3, None);
        assert_eq!(hub.push(&k, item("x", NOW + 60), true), Routed::Offline);
        assert_eq!(hub.stats().queued.load(Ordering::Relaxed), 0);
        let att = hub.attach(&k).unwrap();
        assert!(pull_all(&hub, &att).is_empty());
    }

    #[test]
    fn unconfirmed_entries_go_back_in_front_of_newer_mail() {
        let hub = hub();
        let k = key(4, None);
        let att = hub.attach(&k).unwrap();
        hub.push(&k, item("1", NOW + 60), false);
        hub.push(&k, item("2", NOW + 60), false);
        let mut written = Vec::new();
        hub.pull(&att, 2, NOW, &mut written);
        hub.push(&k, item("3", NOW + 60), false);
        hub.detach(&att, written);
        assert!(!hub.is_online(&k));
        assert_eq!(hub.stats().mailbox.load(Ordering::Relaxed), 3);
        let again = hub.attach(&k).unwrap();
        assert_eq!(pull_all(&hub, &again), ["1", "2", "3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_session_is_aborted_and_its_unconfirmed_mail_goes_to_the_new_one() {
        let hub = hub();
        let k = key(5, Some("s"));
        let old = hub.attach(&k).unwrap();
        hub.push(&k, item("1", NOW + 60), false);
        let mut written = Vec::new();
        hub.pull(&old, 1, NOW, &mut written);
        let new = hub.attach(&k).unwrap();
        assert_eq!(old.signal.close_reason(), CloseReason::Replaced);
        assert!(
            tokio::time::timeout(Duration::ZERO, old.signal.aborted())
                .await
                .is_ok(),
            "the old session's blocked writes are abandoned"
        );
        hub.detach(&old, written);
        assert!(hub.is_online(&k), "the new session still owns the queue");
        assert!(woken_within(&new.signal, Duration::ZERO).await);
        assert_eq!(pull_all(&hub, &new), ["1"]);
        assert!(pull_all(&hub, &old).is_empty(), "the old one pulls nothing");
    }

    #[test]
    fn a_session_that_falls_behind_is_closed_as_a_slow_consumer() {
        let hub = hub();
        let k = key(6, None);
        let att = hub.attach(&k).unwrap();
        for _ in 0..3 {
            assert_eq!(hub.push(&k, item("m", NOW + 60), false), Routed::Online);
        }
        assert_eq!(att.signal.close_reason(), CloseReason::None);
        hub.push(&k, item("m", NOW + 60), false);
        assert_eq!(att.signal.close_reason(), CloseReason::SlowConsumer);
    }

    #[test]
    fn draining_asks_to_close_without_aborting_writes() {
        let hub = hub();
        let att = hub.attach(&key(8, None)).unwrap();
        assert_eq!(hub.close_all(CloseReason::Draining), 1);
        assert_eq!(att.signal.close_reason(), CloseReason::Draining);
        assert!(!att.signal.aborted.is_cancelled());
        att.signal.close(CloseReason::Replaced);
        assert_eq!(
            att.signal.close_reason(),
            CloseReason::Draining,
            "the first reason wins"
        );
    }

    #[test]
    fn sessions_per_twin_are_capped_but_a_replacement_is_not_a_new_session() {
        let hub = hub();
        let _a = hub.attach(&key(2, Some("a"))).unwrap();
        let _b = hub.attach(&key(2, Some("b"))).unwrap();
        assert_eq!(
            hub.attach(&key(2, Some("c"))).unwrap_err(),
            AttachError::TooManySessions(2)
        );
        assert!(hub.attach(&key(2, Some("a"))).is_ok());
        assert!(hub.attach(&key(1, Some("c"))).is_ok(), "per twin");
    }

    #[test]
    fn expired_mail_is_never_delivered_and_is_counted() {
        let hub = hub();
        let k = key(11, None);
        hub.push(&k, item("old", NOW), false);
        hub.push(&k, item("new", NOW + 1), false);
        let att = hub.attach(&k).unwrap();
        assert_eq!(pull_all(&hub, &att), ["new"]);
        assert_eq!(hub.stats().expired.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn sweeping_drops_expired_mailbox_entries_and_forgets_empty_twins() {
        let hub = hub();
        let k = key(12, None);
        hub.push(&k, item("a", NOW + 5), false);
        hub.push(&k, item("b", NOW + 50), false);
        hub.sweep(NOW + 10);
        assert_eq!(hub.stats().mailbox.load(Ordering::Relaxed), 1);
        assert_eq!(hub.stats().expired.load(Ordering::Relaxed), 1);
        hub.sweep(NOW + 100);
        assert_eq!(hub.stats().queued.load(Ordering::Relaxed), 0);
        assert!(hub.shard(12).twins.is_empty(), "nothing kept for the twin");
    }
}
