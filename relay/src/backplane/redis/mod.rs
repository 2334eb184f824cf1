//! The Redis backplane: many relay pods acting as one relay.
//!
//! - Session ownership: `rmb:{t:<twin>}:s:<sid>` holds `<pod>/<session>`, with a lease the
//!   owning pod keeps extending; a dead pod's sessions simply expire.
//! - Forwarding: every envelope for a connected session is appended to its owner's inbox
//!   stream (`rmb:{p:<pod>}:inbox`, consumer group `relay`), even on the same pod, so a pod
//!   that dies loses nothing. The entry is acknowledged and deleted only when the peer's pong
//!   confirmed it.
//! - Mailbox: `rmb:{t:<twin>}:mb` holds mail for the twin's disconnected sessions, appended
//!   atomically with the ownership check, bounded, expiring with its newest entry; a session
//!   loads it page by page before newer mail and deletes entries as they are confirmed.
//! - Dead pods: every pod holds a lease in `rmb:pods`; a pod whose lease expired is taken
//!   over by a live one, which re-routes every entry left in its inbox.

mod entry;
mod in_hand;
mod inbox;
mod keys;
mod owners;
mod scripts;
mod streams;
mod takeover;
mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use parking_lot::Mutex;
use rmb_common::redis::ClientSettings;

use super::{AdmitError, Backplane, BackplaneError, Delivery, NotReady, Routed};
use crate::hub::{Attachment, Hub, Queued, Receipt};
use crate::key::SessionKey;
use crate::metrics::Metrics;
use scripts::Scripts;

/// How the Redis backplane is set up.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://`, `rediss://`, `redis-cluster://…` (credentials in the URL).
    pub url: String,
    /// This pod's unique name.
    pub pod: String,
    /// Pod and session lease: a pod silent this long is dead and its sessions offline.
    pub lease: Duration,
    /// Most envelopes in one twin's mailbox.
    pub mailbox_max: usize,
    /// Byte budget and unused-session-id sub-quota of one twin's mailbox, checked inside the
    /// routing script.
    pub budget: crate::hub::MailBudget,
    /// Safety cap on a pod's inbox stream length.
    pub inbox_max: u64,
    /// The longest envelope TTL accepted (bounds how long keys may live).
    pub max_ttl: u64,
    /// How long one Redis command may take before it counts as failed.
    pub command_timeout: Duration,
    /// Replicas that must acknowledge a write before it counts (0: do not wait).
    pub wait_replicas: u32,
    /// How long a session's owner pod learned from the routing script is reused without
    /// asking Redis again (zero: always ask).
    pub owner_cache_ttl: Duration,
}

/// The backplane handle.
pub struct RedisBackplane {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// State shared with the background tasks.
pub(crate) struct Inner {
    hub: Arc<Hub>,
    client: Client,
    reader: Client,
    settings: RedisSettings,
    inbox: Arc<str>,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    /// Sessions attached on this pod, for lease refresh: key → session number.
    locals: Mutex<HashMap<SessionKey, u64>>,
    /// Unix ms when our own delivery probe last came back through the inbox.
    probe_seen: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_warned: AtomicU64,
    /// Unix ms of the last failed command, connection error or reconnection: replies may
    /// have been lost around then.
    trouble_at: AtomicU64,
    /// Unix ms when the command client last (re)connected to Redis: other pods' leases are not
    /// judged for a while after (see [`takeover::may_judge_leases`]).
    reconnected_at: AtomicU64,
    stopping: AtomicBool,
    /// This value itself, for the tasks it starts on demand.
    me: std::sync::OnceLock<std::sync::Weak<Inner>>,
    /// Inbox appends in flight, by destination pod.
    appends: Mutex<HashMap<String, PodAppends>>,
    /// Envelopes in all Redis mailboxes, as last counted.
    mailbox_depth: AtomicU64,
    /// Confirmed entries waiting to be acknowledged in bulk.
    confirmed: tokio::sync::mpsc::UnboundedSender<Receipt>,
    /// Owners of sessions on other pods, learned from `ROUTE` replies.
    owners: owners::OwnerCache,
    /// Inbox entries read by this pod and not yet acknowledged.
    in_hand: in_hand::InHand,
    /// Pods that read packed inbox entries ([`keys::PACKED_READERS`]), as read at the last beat.
    packed_readers: parking_lot::RwLock<std::collections::HashSet<String>>,
}

impl RedisBackplane {
    /// Connects (retrying in the background if Redis is not reachable yet) and starts the
    /// lease, inbox, reclaim and takeover tasks.
    pub async fn start(
        settings: RedisSettings,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisBackplane>, BackplaneError> {
        let client = build_client(&settings, Duration::ZERO)?;
        // The inbox reader blocks server-side; its commands may take that much longer.
        let reader = build_client(&settings, INBOX_BLOCK)?;
        for c in [&client, &reader] {
            c.connect();
        }
        let (confirmed, confirmed_rx) = tokio::sync::mpsc::unbounded_channel();
        let owners = owners::OwnerCache::new(settings.owner_cache_ttl);
        let inner = Arc::new(Inner {
            hub,
            client,
            reader,
            inbox: Arc::from(keys::inbox(&settings.pod)),
            settings,
            scripts: Scripts::new(),
            metrics,
            locals: Mutex::default(),
            probe_seen: AtomicU64::new(0),
            last_error: Mutex::default(),
            last_warned: AtomicU64::new(0),
            trouble_at: AtomicU64::new(0),
            reconnected_at: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            mailbox_depth: AtomicU64::new(0),
            appends: Mutex::default(),
            me: std::sync::OnceLock::new(),
            confirmed,
            owners,
            in_hand: in_hand::InHand::default(),
            packed_readers: Default::default(),
        });
        let _ = inner.me.set(Arc::downgrade(&inner));
        let wait = inner.client.wait_for_connect();
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            tracing::warn!("redis not reachable yet; retrying in the background");
        } else {
            check_version(&inner.client).await?;
        }
        let tasks = vec![
            tokio::spawn(tasks::lease_loop(inner.clone())),
            tokio::spawn(tasks::heartbeat_loop(inner.clone())),
            tokio::spawn(inbox::inbox_loop(inner.clone())),
            tokio::spawn(inbox::reclaim_loop(inner.clone())),
            tokio::spawn(takeover::takeover_loop(inner.clone())),
            tokio::spawn(inbox::ack_loop(inner.clone(), confirmed_rx)),
            tokio::spawn(tasks::mailbox_depth_loop(inner.clone())),
            tokio::spawn(tasks::watch_connections(inner.clone())),
        ];
        tracing::info!(pod = %inner.settings.pod, "redis backplane started");
        Ok(Arc::new(RedisBackplane {
            inner,
            tasks: Mutex::new(tasks),
        }))
    }

    /// This pod's name.
    pub fn pod(&self) -> &str {
        &self.inner.settings.pod
    }
}

/// How long the inbox consumer blocks waiting for entries.
pub(crate) const INBOX_BLOCK: Duration = Duration::from_millis(500);

/// A client with bounded command times and detection of connections that stopped answering
/// (a frozen or partitioned Redis): those are closed and re-established.
/// Refuses Redis older than 7.0 (the scripts use `EXPIRETIME`), rather than failing on every
/// route later. A server that does not answer `INFO` is let through: the lease loop reports it.
async fn check_version(client: &Client) -> Result<(), BackplaneError> {
    let info: FredResult<String> = client.info(Some(fred::types::InfoKind::Server)).await;
    let Ok(info) = info else { return Ok(()) };
    let Some(version) = redis_version(&info) else {
        return Ok(());
    };
    if version.0 < 7 {
        return Err(BackplaneError::Unsupported(format!(
            "Redis {}.{} found; 7.0 or newer is required (EXPIRETIME, used by the routing scripts)",
            version.0, version.1
        )));
    }
    Ok(())
}

/// `(major, minor)` from the `redis_version:` line of `INFO server`.
fn redis_version(info: &str) -> Option<(u32, u32)> {
    let version = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))?;
    let mut parts = version.split('.').map(|p| p.trim().parse::<u32>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
}

fn build_client(settings: &RedisSettings, extra_time: Duration) -> Result<Client, BackplaneError> {
    let shared = ClientSettings::shared(settings.command_timeout + extra_time);
    rmb_common::redis::client(&settings.url, &shared)
        .map_err(|e| BackplaneError::Unavailable(e.to_string()))
}

/// One envelope waiting to be appended to a pod's inbox.
pub(crate) struct AppendJob {
    key: String,
    frame: bytes::Bytes,
    expires_at: u64,
}

impl AppendJob {
    fn new(key: &SessionKey, item: &Queued) -> Self {
        AppendJob {
            key: keys::encode_key(key),
            frame: item.frame.clone(),
            expires_at: item.expires_at,
        }
    }
}

/// Where a queued append's result goes.
type AppendWaiter = tokio::sync::oneshot::Sender<Result<(), BackplaneError>>;

/// Appends to one pod's inbox. While an append runs, later envelopes queue here and the next
/// append takes them all: a lone envelope is appended at once by its caller, batches form only
/// when there is a queue.
#[derive(Default)]
struct PodAppends {
    /// Envelopes waiting for the append in flight to finish.
    queued: Vec<(AppendJob, AppendWaiter)>,
}

/// Most envelopes in one append script call.
const APPEND_BATCH: usize = 256;

/// The turn of whoever appends to `pod` now; on drop (done, or the caller gone) the queue is
/// handed to a task, or the pod is marked idle.
struct AppendTurn<'a> {
    inner: &'a Inner,
    pod: &'a str,
}

impl Drop for AppendTurn<'_> {
    fn drop(&mut self) {
        self.inner.hand_over(self.pod);
    }
}

/// Appends what queued for `pod` meanwhile, a batch per script call, until nothing is left.
async fn append_queued(inner: Arc<Inner>, pod: String) {
    loop {
        let batch: Vec<(AppendJob, AppendWaiter)> = {
            let mut appends = inner.appends.lock();
            let Some(pending) = appends.get_mut(&pod) else {
                return;
            };
            if pending.queued.is_empty() {
                appends.remove(&pod);
                return;
            }
            let n = pending.queued.len().min(APPEND_BATCH);
            pending.queued.drain(..n).collect()
        };
        let (jobs, waiters): (Vec<AppendJob>, Vec<AppendWaiter>) = batch.into_iter().unzip();
        let result = inner.append_batch(&pod, &jobs).await;
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Splits appends into runs of one session's envelopes, each run in the order given and at
/// most [`entry::MAX_PACKED_BYTES`] long (a longer one continues in the next run); runs of
/// different sessions keep the order of their first envelope.
fn runs_by_session(jobs: &[AppendJob]) -> Vec<Vec<&AppendJob>> {
    let mut runs: Vec<Vec<&AppendJob>> = Vec::new();
    // Per session key: the run being filled and its size.
    let mut open: HashMap<&str, (usize, usize)> = HashMap::new();
    for job in jobs {
        let len = job.frame.len();
        match open.get_mut(job.key.as_str()) {
            Some((run, bytes)) if *bytes + len <= entry::MAX_PACKED_BYTES => {
                runs[*run].push(job);
                *bytes += len;
            }
            _ => {
                open.insert(job.key.as_str(), (runs.len(), len));
                runs.push(vec![job]);
            }
        }
    }
    runs
}

/// Envelopes of one `route_many` call whose destination's pod is known here, grouped by pod:
/// each group is one inbox append.
#[derive(Default)]
struct InboxBatch {
    pods: Vec<PodBatch>,
}

/// The envelopes of an [`InboxBatch`] for one pod, in the order they were routed.
struct PodBatch {
    pod: String,
    jobs: Vec<AppendJob>,
    /// Per job: its place in the caller's list, its destination, and whether the pod came
    /// from the owner cache (to be forgotten if the append fails).
    targets: Vec<(usize, SessionKey, bool)>,
}

impl InboxBatch {
    fn push(&mut self, pod: &str, at: usize, dest: SessionKey, item: &Queued, cached: bool) {
        let job = AppendJob::new(&dest, item);
        let group = match self.pods.iter().position(|p| p.pod == pod) {
            Some(i) => &mut self.pods[i],
            None => {
                self.pods.push(PodBatch {
                    pod: pod.to_string(),
                    jobs: Vec::new(),
                    targets: Vec::new(),
                });
                let last = self.pods.len() - 1;
                &mut self.pods[last]
            }
        };
        group.jobs.push(job);
        group.targets.push((at, dest, cached));
    }

    /// Appends everything batched so far, one append per pod, and fills in its results.
    async fn append(
        &mut self,
        inner: &Inner,
        routed: &mut [Option<Result<Routed, BackplaneError>>],
    ) {
        if self.pods.is_empty() {
            return;
        }
        let mut pods = std::mem::take(&mut self.pods);
        let started = Instant::now();
        let jobs: Vec<Vec<AppendJob>> = pods
            .iter_mut()
            .map(|p| std::mem::take(&mut p.jobs))
            .collect();
        let appended = futures_util::future::join_all(
            pods.iter()
                .zip(jobs)
                .map(|(p, jobs)| inner.to_inbox_many(&p.pod, jobs)),
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        for (pod, results) in pods.into_iter().zip(appended) {
            for ((at, dest, cached), result) in pod.targets.into_iter().zip(results) {
                routed[at] = Some(match result {
                    Ok(()) => {
                        if cached {
                            inner.metrics.owner_cache_hits.inc();
                        }
                        inner.metrics.backplane_seconds.observe(seconds);
                        Ok(Routed::Online)
                    }
                    Err(e) => {
                        if cached {
                            inner.owners.forget(&dest);
                        }
                        Err(e)
                    }
                });
            }
        }
    }
}

/// A mailbox entry to delete and what it was charged to the twin's budget.
struct MailboxEntry {
    id: String,
    bytes: u64,
    unused_sid: bool,
}

/// Whether a re-routed entry is stored durably again (so its old copy may be deleted). A
/// full mailbox or an unreachable Redis keeps the old copy; it is counted, never dropped.
pub(crate) fn stored(metrics: &Metrics, routed: Result<Routed, BackplaneError>) -> bool {
    match routed {
        Ok(Routed::Online | Routed::Mailbox) => true,
        Ok(Routed::MailboxFull) => {
            metrics.limit(crate::metrics::Limit::Mailbox);
            false
        }
        Ok(Routed::OverBudget(budget)) => {
            metrics.limit(budget.into());
            false
        }
        Ok(Routed::Offline | Routed::Draining) | Err(_) => false,
    }
}

pub(crate) use rmb_common::now_ms;

/// The clock of a periodic background task: a tick every `period` (a late tick is delayed,
/// not bunched up with the next) for as long as the backplane runs.
pub(crate) struct Periodic {
    tick: tokio::time::Interval,
}

impl Periodic {
    pub(crate) fn every(period: Duration) -> Periodic {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Periodic { tick }
    }

    /// Makes the next tick come at once (more work is waiting).
    pub(crate) fn reset_immediately(&mut self) {
        self.tick.reset_immediately();
    }

    /// Waits for the next tick; `false` once the backplane is stopping.
    pub(crate) async fn next(&mut self, inner: &Inner) -> bool {
        self.tick.tick().await;
        !inner.stopping.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn owner_value(&self, session: u64) -> String {
        keys::owner(&self.settings.pod, session)
    }

    fn record<T>(&self, op: &str, result: FredResult<T>) -> Result<T, BackplaneError> {
        result.map_err(|e| {
            self.trouble_at.store(now_ms(), Ordering::Relaxed);
            self.metrics.redis_error(op);
            let text = format!("redis {op}: {e}");
            // At most one warning a second: an outage must not flood the log.
            let now = now_ms();
            let last = self.last_warned.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000
                && self
                    .last_warned
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(error = %text, "redis command failed");
            } else {
                tracing::debug!(error = %text, "redis command failed");
            }
            *self.last_error.lock() = Some(text.clone());
            BackplaneError::Unavailable(text)
        })
    }

    /// Sets our pod's lease expiry (unix ms) in the pod registry; 0 marks us gone.
    async fn set_lease(&self, expiry_ms: u64) {
        let entry = (expiry_ms as f64, self.settings.pod.as_str());
        let r: FredResult<i64> = self
            .client
            .zadd(keys::PODS, None, None, false, false, entry)
            .await;
        let _ = self.record("zadd_pods", r);
    }

    /// Appends an envelope to a pod's inbox, refusing (not trimming) when it is full.
    async fn to_inbox(
        &self,
        pod: &str,
        key: &SessionKey,
        item: &Queued,
    ) -> Result<(), BackplaneError> {
        let job = AppendJob::new(key, item);
        let mut results = self.to_inbox_many(pod, vec![job]).await;
        results
            .pop()
            .unwrap_or_else(|| Err(BackplaneError::Unavailable("inbox append dropped".into())))
    }

    /// Appends envelopes to a pod's inbox in the order given, with one script call when no
    /// other append to that pod runs; the result of each. The order is fixed before the
    /// first await: later appends to the pod queue behind these.
    async fn to_inbox_many(
        &self,
        pod: &str,
        jobs: Vec<AppendJob>,
    ) -> Vec<Result<(), BackplaneError>> {
        let queued = {
            let mut appends = self.appends.lock();
            match appends.get_mut(pod) {
                Some(pending) => {
                    let waits: Vec<_> = jobs
                        .into_iter()
                        .map(|job| {
                            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                            pending.queued.push((job, done_tx));
                            done_rx
                        })
                        .collect();
                    Err(waits)
                }
                None => {
                    appends.insert(pod.to_string(), PodAppends::default());
                    Ok(jobs)
                }
            }
        };
        let mut results = Vec::with_capacity(match &queued {
            Ok(jobs) => jobs.len(),
            Err(waits) => waits.len(),
        });
        match queued {
            Ok(jobs) => {
                let _turn = AppendTurn { inner: self, pod };
                for chunk in jobs.chunks(APPEND_BATCH) {
                    let result = self.append_batch(pod, chunk).await;
                    results.extend(std::iter::repeat_n(result, chunk.len()));
                }
            }
            Err(waits) => {
                for done_rx in waits {
                    results.push(done_rx.await.unwrap_or_else(|_| {
                        Err(BackplaneError::Unavailable("inbox append dropped".into()))
                    }));
                }
            }
        }
        results
    }

    /// Ends an append turn for `pod`: what queued meanwhile goes to a task that appends it.
    fn hand_over(&self, pod: &str) {
        let mut appends = self.appends.lock();
        if appends.get(pod).is_none_or(|p| p.queued.is_empty()) {
            appends.remove(pod);
            return;
        }
        let me = self.me.get().and_then(std::sync::Weak::upgrade);
        match (me, tokio::runtime::Handle::try_current()) {
            (Some(me), Ok(runtime)) => {
                runtime.spawn(append_queued(me, pod.to_string()));
            }
            // Shutting down: the waiters learn their append was dropped.
            _ => {
                appends.remove(pod);
            }
        }
    }

    /// Appends one batch with one script call; all succeed or all fail. To a pod that reads
    /// packed entries, each session's envelopes go into one entry (in the order given);
    /// otherwise each envelope is an entry of its own.
    async fn append_batch(&self, pod: &str, jobs: &[AppendJob]) -> Result<(), BackplaneError> {
        let inbox = keys::inbox(pod);
        let packed = pod == self.settings.pod || self.packed_readers.read().contains(pod);
        let mut args: Vec<Value> = Vec::with_capacity(1 + jobs.len() * 4);
        args.push((self.settings.inbox_max as i64).into());
        if packed {
            for run in runs_by_session(jobs) {
                let Some(first) = run.first() else { continue };
                let expires_at = run.iter().map(|j| j.expires_at).max().unwrap_or(0);
                args.push(first.key.as_str().into());
                args.push("b".into());
                args.push(Value::Bytes(entry::pack(
                    run.iter().map(|j| (j.expires_at, &j.frame)),
                )));
                args.push((expires_at as i64).into());
            }
        } else {
            for job in jobs {
                args.push(job.key.as_str().into());
                args.push("e".into());
                args.push(Value::Bytes(job.frame.clone()));
                args.push((job.expires_at as i64).into());
            }
        }
        let r: FredResult<i64> = self
            .scripts
            .inbox_append
            .evalsha_with_reload(&self.client, vec![inbox.clone()], args)
            .await;
        if self.record("inbox_append", r)? == 0 {
            self.metrics.limit(crate::metrics::Limit::Inbox);
            return Err(BackplaneError::Unavailable(format!(
                "inbox of pod {pod} is full"
            )));
        }
        self.replicated(&inbox).await
    }

    /// With `wait_replicas`, waits until that many replicas hold the writes made so far on
    /// the connection serving `key`'s slot; otherwise the write is not counted as accepted.
    async fn replicated(&self, key: &str) -> Result<(), BackplaneError> {
        let wanted = self.settings.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let cmd = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false);
        let timeout = (self.settings.command_timeout.as_millis() / 2) as i64;
        let args: Vec<Value> = vec![(wanted as i64).into(), timeout.into()];
        let acked: i64 = self.record("wait", self.client.custom(cmd, args).await)?;
        if acked < wanted as i64 {
            self.metrics.redis_error("wait_replicas");
            return Err(BackplaneError::Unavailable(format!(
                "write reached {acked} of {wanted} replicas"
            )));
        }
        Ok(())
    }

    /// Routes each of `items` for `key` durably again ([`Inner::route_durable`]); whether
    /// every one was stored, so the copy they came from may go.
    async fn reroute_all(&self, key: &SessionKey, items: &[Queued], stale: Option<&str>) -> bool {
        let mut stored_all = true;
        for item in items {
            let routed = self.route_durable(key, item, false, stale).await;
            stored_all &= stored(&self.metrics, routed);
        }
        stored_all
    }

    /// Routes durably: to the owner's inbox, or the mailbox. `stale` is an owner value (or
    /// prefix) known to be gone, to be ignored and cleared.
    async fn route_durable(
        &self,
        dest: &SessionKey,
        item: &Queued,
        fail_fast: bool,
        stale: Option<&str>,
    ) -> Result<Routed, BackplaneError> {
        let started = Instant::now();
        let mut stale = stale.map(str::to_string);
        let budget = &self.settings.budget;
        for _ in 0..2 {
            let args: Vec<Value> = vec![
                dest.sid.as_deref().unwrap_or("").into(),
                Value::Bytes(item.frame.clone()),
                (item.expires_at as i64).into(),
                (self.settings.mailbox_max as i64).into(),
                if fail_fast { "1" } else { "0" }.into(),
                stale.clone().unwrap_or_default().into(),
                (rmb_proto::unix_now() as i64).into(),
                budget.twin_bytes.to_string().into(),
                budget.unused_sid_entries.to_string().into(),
                budget.unused_sid_bytes.to_string().into(),
                budget.recent_sid_seconds.to_string().into(),
            ];
            let keys = vec![
                keys::session(dest),
                keys::mailbox(dest.twin),
                keys::mailbox_scanned(dest.twin),
                keys::mailbox_budget(dest.twin),
                keys::recent_sids(dest.twin),
            ];
            let r: FredResult<Vec<Value>> = self
                .scripts
                .route
                .evalsha_with_reload(&self.client, keys, args)
                .await;
            let reply = self.record("route", r)?;
            let code = reply.first().and_then(|v| v.as_i64()).unwrap_or(-1);
            let routed = match code {
                1 => {
                    let owner = reply.get(1).and_then(|v| v.as_string()).unwrap_or_default();
                    let pod = keys::owner_pod(&owner);
                    if pod == self.settings.pod && !self.hub.is_online(dest) {
                        // Our own key without a local session: a leftover; clear and retry.
                        stale = Some(owner.clone());
                        continue;
                    }
                    if let Err(e) = self.to_inbox(pod, dest, item).await {
                        self.owners.forget(dest);
                        return Err(e);
                    }
                    self.owners.learned(dest, pod);
                    Routed::Online
                }
                0 => {
                    self.replicated(&keys::mailbox(dest.twin)).await?;
                    self.metrics.mailbox_stored.inc();
                    Routed::Mailbox
                }
                2 => Routed::Offline,
                3 => Routed::MailboxFull,
                4 => Routed::OverBudget(crate::hub::Budget::TwinBytes),
                5 => Routed::OverBudget(crate::hub::Budget::UnusedSid),
                _ => return Err(BackplaneError::Unavailable("unexpected route reply".into())),
            };
            self.metrics
                .backplane_seconds
                .observe(started.elapsed().as_secs_f64());
            return Ok(routed);
        }
        Err(BackplaneError::Unavailable("route did not settle".into()))
    }

    /// Deletes confirmed entries from their streams (acknowledging inbox entries first).
    async fn delete_confirmed(&self, receipts: Vec<Receipt>) {
        let mut inbox = Vec::new();
        let mut mailboxes: HashMap<Arc<str>, Vec<MailboxEntry>> = HashMap::new();
        for receipt in receipts {
            match receipt {
                Receipt::Stream {
                    stream,
                    id,
                    completes_entry: true,
                } if stream == self.inbox => inbox.push(id.to_string()),
                Receipt::Mailbox {
                    stream,
                    id,
                    bytes,
                    unused_sid,
                } => mailboxes.entry(stream).or_default().push(MailboxEntry {
                    id: id.to_string(),
                    bytes,
                    unused_sid,
                }),
                Receipt::Stream { .. } | Receipt::Local => {}
            }
        }
        let calls = mailboxes
            .into_iter()
            .map(|(stream, entries)| async move { self.delete_mail(&stream, &entries).await });
        futures_util::future::join(self.ack_inbox(inbox), futures_util::future::join_all(calls))
            .await;
    }

    /// Deletes entries of a twin's mailbox, giving their bytes back to its budget.
    async fn delete_mail(&self, mailbox: &str, entries: &[MailboxEntry]) {
        let Some(twin) = keys::mailbox_twin(mailbox) else {
            return;
        };
        let mut args: Vec<Value> = Vec::with_capacity(entries.len() * 3);
        for e in entries {
            args.push(e.id.as_str().into());
            args.push((e.bytes as i64).into());
            args.push(if e.unused_sid { "1" } else { "0" }.into());
        }
        let r: FredResult<i64> = self
            .scripts
            .mailbox_delete
            .evalsha_with_reload(
                &self.client,
                vec![mailbox.to_string(), keys::mailbox_budget(twin)],
                args,
            )
            .await;
        let _ = self.record("xdel_mailbox", r);
    }

    /// Records that a session used its session id now: mail to it is not held to the
    /// unused-session-id sub-quota for the next `recent_sid_seconds`.
    async fn mark_sid_used(&self, key: &SessionKey) {
        let Some(sid) = key.sid.as_deref() else {
            return;
        };
        // EXPIRE takes at most a few decades; longer windows are as good as forever.
        let window = self.settings.budget.recent_sid_seconds.min(1 << 30) as i64;
        let args: Vec<Value> = vec![
            sid.into(),
            (rmb_proto::unix_now() as i64).into(),
            window.into(),
            (crate::hub::RECENT_SIDS_PER_TWIN as i64).into(),
        ];
        let r: FredResult<i64> = self
            .scripts
            .sid_used
            .evalsha_with_reload(&self.client, vec![keys::recent_sids(key.twin)], args)
            .await;
        let _ = self.record("sid_used", r);
    }

    /// Loads the next page of a session's mailbox into its backlog.
    async fn refill(&self, key: &SessionKey, session: u64, cursor: Arc<str>) {
        const PAGE: u64 = 256;
        let mailbox = keys::mailbox(key.twin);
        let start = if &*cursor == "-" {
            "-".to_string()
        } else {
            format!("({cursor}")
        };
        let r = streams::xrange(&self.client, &mailbox, &start, PAGE).await;
        let entries = match self.record("xrange_mailbox", r) {
            Ok(entries) => entries,
            Err(_) => {
                // Keep the cursor; the writer asks again after a pause.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
        };
        let now = rmb_proto::unix_now();
        let stream: Arc<str> = Arc::from(mailbox.as_str());
        let sid = key.sid.as_deref().unwrap_or("");
        let mut items = Vec::new();
        let mut expired = Vec::new();
        for (id, fields) in &entries {
            if streams::text(fields, "s").unwrap_or_default() != sid {
                continue;
            }
            let expires_at = streams::number(fields, "x").unwrap_or(0);
            match streams::bytes(fields, "e") {
                Some(frame) if expires_at > now => items.push(Queued {
                    receipt: Receipt::Mailbox {
                        stream: stream.clone(),
                        id: Arc::from(id.as_str()),
                        bytes: frame.len() as u64,
                        unused_sid: streams::text(fields, "u").is_some(),
                    },
                    frame,
                    expires_at,
                    accepted: Instant::now(),
                }),
                frame => expired.push(MailboxEntry {
                    id: id.clone(),
                    bytes: frame.map_or(0, |f| f.len() as u64),
                    unused_sid: streams::text(fields, "u").is_some(),
                }),
            }
        }
        if !expired.is_empty() {
            self.delete_mail(&mailbox, &expired).await;
        }
        let last_read: Option<Arc<str>> = entries.last().map(|(id, _)| Arc::from(id.as_str()));
        let next = (entries.len() as u64 == PAGE)
            .then(|| last_read.clone())
            .flatten();
        self.metrics.mailbox_loaded.inc_by(items.len() as u64);
        self.hub.fill_backlog(key, session, items, next, last_read);
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn attach(&self, key: &SessionKey) -> Result<Attachment, BackplaneError> {
        let inner = &self.inner;
        let att = inner.hub.attach(key)?;
        let owner = inner.owner_value(att.id);
        let lease = inner.settings.lease.as_millis() as i64;
        let r: FredResult<Option<String>> = inner
            .client
            .set(
                keys::session(key),
                owner,
                Some(Expiration::PX(lease)),
                None,
                true,
            )
            .await;
        let previous = match inner.record("attach", r) {
            Ok(previous) => previous,
            Err(e) => {
                inner.hub.release(&att, Vec::new());
                return Err(e);
            }
        };
        if let Some(previous) = &previous {
            let pod = keys::owner_pod(previous);
            if pod != inner.settings.pod {
                if let Some(n) = keys::owner_session(previous) {
                    let fields: Vec<(&str, Value)> = vec![
                        ("c", "evict".into()),
                        ("k", keys::encode_key(key).into()),
                        ("n", (n as i64).into()),
                    ];
                    let r: FredResult<Value> = inner
                        .client
                        .xadd(keys::inbox(pod), false, None::<()>, "*", fields)
                        .await;
                    let _ = inner.record("evict", r);
                }
            }
        }
        inner.locals.lock().insert(key.clone(), att.id);
        inner.mark_sid_used(key).await;
        inner.owners.forget(key);
        inner.hub.set_refill(key, att.id, Arc::from("-"));
        // Mail that waited for it on a pod that stopped follows it here within seconds.
        if let Some(pod) = previous.as_deref().map(keys::owner_pod) {
            if pod != inner.settings.pod {
                tokio::spawn(takeover::take_over_session(
                    inner.clone(),
                    key.clone(),
                    att.id,
                    pod.to_string(),
                ));
            }
        }
        Ok(att)
    }

    async fn admit_token(
        &self,
        key: &SessionKey,
        iat: u64,
        keep_secs: u64,
    ) -> Result<(), AdmitError> {
        let inner = &self.inner;
        let args: Vec<Value> = vec![(iat as i64).into(), (keep_secs.max(1) as i64).into()];
        let r: FredResult<Vec<Value>> = inner
            .scripts
            .token_fresh
            .evalsha_with_reload(&inner.client, vec![keys::token_iat(key)], args)
            .await;
        let reply = inner.record("token_fresh", r)?;
        match (
            reply.first().and_then(Value::as_i64),
            reply.get(1).and_then(Value::as_u64),
        ) {
            (Some(1), _) => Ok(()),
            (Some(0), Some(newest)) => Err(crate::freshness::StaleToken { iat, newest }.into()),
            _ => Err(BackplaneError::Unavailable("unexpected token_fresh reply".into()).into()),
        }
    }

    async fn detach(&self, att: Attachment, unconfirmed: Vec<Queued>) {
        let inner = &self.inner;
        {
            let mut locals = inner.locals.lock();
            if locals.get(&att.key) == Some(&att.id) {
                locals.remove(&att.key);
            }
        }
        inner.owners.forget(&att.key);
        let mut items = unconfirmed;
        items.extend(inner.hub.take_all(&att));
        let Some(items) = inner.hub.release(&att, items) else {
            return; // a newer session on this pod took them
        };
        let owner = inner.owner_value(att.id);
        let r: FredResult<i64> = inner
            .scripts
            .release
            .evalsha_with_reload(
                &inner.client,
                vec![keys::session(&att.key)],
                vec![owner.clone()],
            )
            .await;
        let _ = inner.record("release", r);
        inner.mark_sid_used(&att.key).await;
        // Per inbox entry: whether every envelope of it held here was stored again. An entry
        // is acknowledged only then; otherwise it stays pending and is reclaimed later.
        let mut entries: HashMap<Arc<str>, bool> = HashMap::new();
        for item in items {
            match &item.receipt {
                Receipt::Stream { stream, id, .. } if *stream == inner.inbox => {
                    let routed = inner
                        .route_durable(&att.key, &item, false, Some(&owner))
                        .await;
                    let ok = stored(&inner.metrics, routed);
                    *entries.entry(id.clone()).or_insert(true) &= ok;
                }
                // Still stored in the mailbox: the next session loads it again.
                Receipt::Stream { .. } | Receipt::Mailbox { .. } => {}
                Receipt::Local => {
                    let _ = inner
                        .route_durable(&att.key, &item, false, Some(&owner))
                        .await;
                }
            }
        }
        let acked = entries
            .into_iter()
            .filter(|(_, all)| *all)
            .map(|(id, _)| id.to_string())
            .collect();
        inner.ack_inbox(acked).await;
    }

    async fn route(
        &self,
        dest: &SessionKey,
        item: Queued,
        fail_fast: bool,
    ) -> Result<Routed, BackplaneError> {
        let delivery = Delivery {
            dest: dest.clone(),
            item,
            fail_fast,
        };
        let mut routed = self.route_many(vec![delivery]).await;
        routed
            .pop()
            .unwrap_or_else(|| Err(BackplaneError::Unavailable("route dropped".into())))
    }

    async fn route_many(&self, deliveries: Vec<Delivery>) -> Vec<Result<Routed, BackplaneError>> {
        let inner = &self.inner;
        let mut routed: Vec<Option<Result<Routed, BackplaneError>>> = vec![None; deliveries.len()];
        let mut batch = InboxBatch::default();
        for (at, delivery) in deliveries.into_iter().enumerate() {
            let Delivery {
                dest,
                item,
                fail_fast,
            } = delivery;
            if inner.hub.is_online(&dest) {
                // Ours: still through our own inbox, so a crash of this pod loses nothing.
                batch.push(&inner.settings.pod, at, dest, &item, false);
                continue;
            }
            if let Some(pod) = inner.owners.get(&dest) {
                // Owned by a pod that still beats, as the routing script said a moment ago.
                batch.push(&pod, at, dest, &item, true);
                continue;
            }
            if inner.owners.enabled() {
                inner.metrics.owner_cache_misses.inc();
            }
            // The script decides; what came before is stored first, so the entries for one
            // destination keep their order.
            batch.append(inner, &mut routed).await;
            routed[at] = Some(inner.route_durable(&dest, &item, fail_fast, None).await);
        }
        batch.append(inner, &mut routed).await;
        routed
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BackplaneError::Unavailable("route dropped".into()))))
            .collect()
    }

    async fn refill(&self, att: &Attachment, cursor: Arc<str>) {
        self.inner.refill(&att.key, att.id, cursor).await;
    }

    async fn confirm(&self, receipts: Vec<Receipt>) {
        // Handed to the acknowledger task, which batches them across sessions: one XACK and
        // one XDEL per stream per round instead of a pair per pong.
        for receipt in receipts {
            if receipt != Receipt::Local {
                let _ = self.inner.confirmed.send(receipt);
            }
        }
    }

    fn ready(&self) -> Result<(), NotReady> {
        let age = now_ms().saturating_sub(self.inner.probe_seen.load(Ordering::Relaxed));
        if age <= 5_000 {
            return Ok(());
        }
        Err(NotReady::NoProbe {
            seconds: age / 1000,
            last_error: self.inner.last_error.lock().clone(),
        })
    }

    fn begin_drain(&self) {}

    fn mailbox_depth(&self) -> Option<u64> {
        Some(self.inner.mailbox_depth.load(Ordering::Relaxed))
    }

    fn sweep(&self, now: u64) {
        self.inner.hub.sweep(now);
    }

    async fn shutdown(&self) {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::Relaxed);
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        // Mark our lease expired now so a live pod re-routes what is left in our inbox.
        inner.set_lease(now_ms()).await;
        let _ = inner.client.quit().await;
        let _ = inner.reader.quit().await;
    }
}

#[cfg(test)]
mod version_tests {
    use super::redis_version;

    #[test]
    fn reads_the_server_version_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(redis_version(info), Some((7, 0)));
        assert_eq!(redis_version("redis_version:6.2.14"), Some((6, 2)));
        assert_eq!(redis_version("no version here"), None);
        assert_eq!(redis_version("redis_version:garbage"), None);
    }
}

#[cfg(test)]
mod append_tests {
    use super::{entry, runs_by_session, AppendJob};

    fn job(key: &str, tag: &str, len: usize) -> AppendJob {
        let mut frame = tag.as_bytes().to_vec();
        frame.resize(len.max(tag.len()), 0);
        AppendJob {
            key: key.to_string(),
            frame: frame.into(),
            expires_at: 1,
        }
    }

    fn tags(runs: &[Vec<&AppendJob>]) -> Vec<Vec<String>> {
        runs.iter()
            .map(|run| {
                run.iter()
                    .map(|j| String::from_utf8_lossy(&j.frame[..2]).into_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn each_session_gets_one_run_in_the_order_its_envelopes_came() {
        let jobs = vec![
            job("1:", "a1", 2),
            job("2:", "b1", 2),
            job("1:", "a2", 2),
            job("3:x", "c1", 2),
            job("2:", "b2", 2),
            job("1:", "a3", 2),
        ];
        assert_eq!(
            tags(&runs_by_session(&jobs)),
            vec![vec!["a1", "a2", "a3"], vec!["b1", "b2"], vec!["c1"]]
        );
    }

    #[test]
    fn a_run_past_the_entry_size_continues_in_a_later_run() {
        let big = entry::MAX_PACKED_BYTES / 2;
        let jobs = vec![
            job("1:", "a1", big),
            job("1:", "a2", big),
            job("1:", "a3", big),
            job("1:", "a4", 10),
        ];
        // a3 does not fit after a1 and a2; a4 joins the run a3 opened.
        assert_eq!(
            tags(&runs_by_session(&jobs)),
            vec![vec!["a1", "a2"], vec!["a3", "a4"]]
        );
    }
}
