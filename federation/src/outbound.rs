//! Outbound federation: envelopes for twins served elsewhere wait in a queue per remote
//! domain (in the store, so any pod sends them and none is lost with a pod); every pod runs a
//! sender per domain that claims due envelopes, posts them in signed batches and settles
//! each one by the remote's per-envelope answer: done, tried at another relay of the twin,
//! retried after a backoff with jitter, or given up with a signed error to the source.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use prost::Message as _;
use rmb_common::backoff::BackoffPolicy;
use rmb_identity::Twin;
use rmb_proto::{codes, Envelope, Kind};
use serde::Deserialize;

use crate::auth::{LinkAuth, BATCH_CONTENT_TYPE, ENDPOINT};
use crate::inbound::join_batch;
use crate::store::{Health, Outbound, StoreError};
use crate::{now_ms, Federation};

/// How long a claimed batch stays hidden from other pods' senders.
const CLAIM_LEASE_MS: u64 = 30_000;
/// How often an idle sender looks for due envelopes.
const POLL: Duration = Duration::from_millis(200);
/// An idle sender retires after this long (it is started again when needed).
const IDLE_RETIRE: Duration = Duration::from_secs(30);
/// Largest outbound request body; larger batches are split.
const MAX_BODY: usize = 4 << 20;
/// Time to live of the relay's error envelopes.
const ERROR_TTL: u64 = 300;
/// How long a remote without the batch endpoint is sent legacy requests before the batch
/// endpoint is tried again (it may have been upgraded).
const LEGACY_MEMORY: Duration = Duration::from_secs(600);

/// Most failures remembered per remote relay: beyond this many in one ranker period, more
/// do not change its rank.
const RANKER_MEMORY: usize = 1000;

/// Recent failed requests per remote relay, as the original relay's ranker: a twin's relays
/// are tried fewest failures (within the period) first. Kept per pod, as the original kept
/// it per process; the down window shared through the store comes first.
pub(crate) struct Ranker {
    period: Duration,
    failures:
        parking_lot::Mutex<std::collections::HashMap<String, std::collections::VecDeque<Instant>>>,
}

impl Ranker {
    pub(crate) fn new(period: Duration) -> Ranker {
        Ranker {
            period,
            failures: Default::default(),
        }
    }

    /// A request to `domain` failed.
    pub(crate) fn failed(&self, domain: &str) {
        let now = Instant::now();
        let mut failures = self.failures.lock();
        let times = failures.entry(domain.to_string()).or_default();
        times.push_back(now);
        while times.len() > RANKER_MEMORY
            || times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= self.period)
        {
            times.pop_front();
        }
    }

    /// Failed requests to `domain` within the period.
    pub(crate) fn recent_failures(&self, domain: &str) -> usize {
        let now = Instant::now();
        let failures = self.failures.lock();
        failures.get(domain).map_or(0, |times| {
            times
                .iter()
                .filter(|t| now.saturating_duration_since(**t) < self.period)
                .count()
        })
    }
}

/// The remote's answer to one envelope.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum RemoteVerdict {
    Accepted,
    Refused {
        #[serde(default)]
        code: u32,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        message: String,
    },
    Retry {
        #[serde(default)]
        message: String,
    },
}

#[derive(Deserialize)]
struct RemoteAnswer {
    results: Vec<RemoteVerdict>,
}

/// Why an envelope could not be queued for another relay.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnqueueError {
    /// The twin lists no relay other than ours.
    #[error("twin {0} lists no other relay")]
    NoRelay(u32),
    /// The queue of that relay is at `--federation-queue-max`.
    #[error("the outbound queue for relay {0} is full; retry later")]
    Full(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a whole request failed.
struct RequestFailure {
    reason: String,
    detail: String,
}

impl Federation {
    /// Queues an envelope for `twin`, which none of our domains serves. Goes to the queue of
    /// the healthiest of the twin's relays.
    pub async fn enqueue(
        &self,
        twin: &Twin,
        frame: Bytes,
        expires_at: u64,
    ) -> Result<(), EnqueueError> {
        let relays: Vec<String> = twin
            .relays
            .iter()
            .map(|r| r.to_ascii_lowercase())
            .filter(|r| !self.settings.domains.contains(r))
            .collect();
        let Some(domain) = self.healthiest(&relays, &[]).await else {
            return Err(EnqueueError::NoRelay(twin.id));
        };
        // The depth this pod's sender saw last: cheap, and close enough for a safety bound.
        let depth = self.depths.lock().get(&domain).copied().unwrap_or(0);
        if depth >= self.settings.queue_max {
            self.metrics
                .failed
                .with_label_values(&[self.metrics.labels.label(&domain), "queue_full"])
                .inc();
            return Err(EnqueueError::Full(domain));
        }
        let item = Outbound {
            frame,
            expires_at,
            relays,
            refused: Vec::new(),
            attempts: 0,
            last_error: String::new(),
        };
        let id = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        self.store.push(&domain, &id, &item, now_ms()).await?;
        self.metrics
            .queued
            .with_label_values(&[self.metrics.labels.label(&domain)])
            .inc();
        self.wake.notify_waiters();
        Ok(())
    }

    /// The twin's relay to use next: not refused, not `except`, healthiest first (not down,
    /// then fewest failures within the ranker period, then fewest consecutive failures, then
    /// chain order).
    async fn healthiest(&self, relays: &[String], except: &[&str]) -> Option<String> {
        let candidates: Vec<String> = relays
            .iter()
            .filter(|r| !except.contains(&r.as_str()))
            .cloned()
            .collect();
        if candidates.len() <= 1 {
            return candidates.into_iter().next();
        }
        let health = self
            .store
            .health(&candidates)
            .await
            .unwrap_or_else(|_| vec![Health::default(); candidates.len()]);
        let now = now_ms();
        candidates
            .into_iter()
            .zip(health)
            .enumerate()
            .min_by_key(|(i, (d, h))| {
                (
                    h.down_until_ms > now,
                    self.ranker.recent_failures(d),
                    h.failures,
                    *i,
                )
            })
            .map(|(_, (d, _))| d)
    }

    /// Starts the dispatcher that runs one sender per remote domain with queued envelopes.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        let task = tokio::spawn(async move { me.dispatch().await });
        *self.dispatcher.lock() = Some(task);
    }

    /// Stops the senders. Queued envelopes stay in the store (with Redis, other pods send
    /// them; envelopes claimed by this pod become due again after the claim lease).
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(task) = self.dispatcher.lock().take() {
            task.abort();
        }
        for (_, task) in self.workers.lock().drain() {
            task.abort();
        }
    }

    async fn dispatch(self: Arc<Self>) {
        let mut failures_logged = false;
        while !self.stopping.load(Ordering::Relaxed) {
            match self.store.domains().await {
                Ok(domains) => {
                    failures_logged = false;
                    let mut workers = self.workers.lock();
                    workers.retain(|_, task| !task.is_finished());
                    for domain in domains {
                        if !workers.contains_key(&domain) {
                            let me = self.clone();
                            let d = domain.clone();
                            workers
                                .insert(domain, tokio::spawn(async move { me.send_loop(d).await }));
                        }
                    }
                }
                Err(e) if !failures_logged => {
                    failures_logged = true;
                    tracing::warn!(error = %e, "federation: cannot list outbound queues");
                }
                Err(_) => {}
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    /// The sender of one remote domain on this pod.
    async fn send_loop(self: Arc<Self>, domain: String) {
        let mut idle_since = Instant::now();
        while !self.stopping.load(Ordering::Relaxed) {
            let now = now_ms();
            let claimed = self
                .store
                .claim(&domain, now, self.settings.batch_max, now + CLAIM_LEASE_MS)
                .await;
            self.update_depth(&domain).await;
            match claimed {
                Err(e) => {
                    tracing::debug!(%domain, error = %e, "federation claim failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(items) if items.is_empty() => {
                    if idle_since.elapsed() > IDLE_RETIRE {
                        let _ = self.store.retire_if_empty(&domain).await;
                        return;
                    }
                    let _ = tokio::time::timeout(POLL, self.wake.notified()).await;
                }
                Ok(items) => {
                    idle_since = Instant::now();
                    self.settle_batch(&domain, items).await;
                }
            }
        }
    }

    /// Records the depth of `domain`'s queue; its gauge is its own, or, for a domain without
    /// a label of its own, the `other` gauge, the sum over all such domains.
    async fn update_depth(&self, domain: &str) {
        let Ok(depth) = self.store.depth(domain).await else {
            return;
        };
        let labels = &self.metrics.labels;
        let unlabeled_total = {
            let mut depths = self.depths.lock();
            if depth == 0 {
                depths.remove(domain);
            } else {
                depths.insert(domain.to_string(), depth);
            }
            (!labels.has_own(domain)).then(|| {
                depths
                    .iter()
                    .filter(|(d, _)| !labels.has_own(d))
                    .map(|(_, n)| *n)
                    .sum::<u64>()
            })
        };
        let (label, value) = match unlabeled_total {
            None => (domain, depth),
            Some(total) => (crate::metrics::OTHER_DOMAIN, total),
        };
        self.metrics
            .queue_depth
            .with_label_values(&[label])
            .set(value as i64);
    }

    async fn settle_batch(&self, domain: &str, items: Vec<(String, Outbound)>) {
        let now = rmb_proto::unix_now();
        let mut live = Vec::with_capacity(items.len());
        for (id, item) in items {
            if item.expires_at <= now {
                self.metrics
                    .failed
                    .with_label_values(&[self.metrics.labels.label(domain), "expired"])
                    .inc();
                self.give_up(&item, codes::VALIDATION, "expired", &expired_message(&item))
                    .await;
                let _ = self.store.remove(domain, &[id]).await;
            } else {
                live.push((id, item));
            }
        }
        // A relay known to be down gets no request; envelopes with a healthy alternative go
        // there now, the rest wait.
        let health = self
            .store
            .health(&[domain.to_string()])
            .await
            .ok()
            .and_then(|h| h.first().copied())
            .unwrap_or_default();
        if health.down_until_ms > now_ms() {
            for (id, item) in live {
                self.metrics
                    .failed
                    .with_label_values(&[self.metrics.labels.label(domain), "relay_down"])
                    .inc();
                self.after_failure(domain, id, item, "relay_down", "relay is marked down")
                    .await;
            }
            return;
        }
        // Split into requests of bounded size.
        let mut chunk: Vec<(String, Outbound)> = Vec::new();
        let mut size = 0;
        for entry in live {
            let len = entry.1.frame.len() + 10;
            if !chunk.is_empty() && size + len > MAX_BODY {
                self.send_chunk(domain, std::mem::take(&mut chunk)).await;
                size = 0;
            }
            size += len;
            chunk.push(entry);
        }
        if !chunk.is_empty() {
            self.send_chunk(domain, chunk).await;
        }
    }

    async fn send_chunk(&self, domain: &str, chunk: Vec<(String, Outbound)>) {
        if self.is_legacy_remote(domain) {
            return self.send_legacy(domain, chunk).await;
        }
        let body = join_batch(chunk.iter().map(|(_, item)| &item.frame));
        let started = Instant::now();
        let answer = self.post_batch(domain, body, chunk.len()).await;
        self.metrics
            .request_seconds
            .with_label_values(&[self.metrics.labels.label(domain)])
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(results) => {
                let _ = self.store.report(domain, true, now_ms()).await;
                self.settle(domain, chunk, results).await;
            }
            // No batch endpoint: a relay of the existing implementation. Send it what it
            // understands, one raw envelope per `POST /`, and remember that for a while.
            Err(failure) if matches!(failure.reason.as_str(), "http_404" | "http_405") => {
                tracing::info!(%domain, "remote relay has no batch endpoint; using the legacy POST /");
                self.legacy_remotes
                    .lock()
                    .insert(domain.to_string(), Instant::now() + LEGACY_MEMORY);
                self.send_legacy(domain, chunk).await;
            }
            Err(failure) => self.fail_chunk(domain, chunk, failure).await,
        }
    }

    /// Whether `domain` recently answered as a relay without the batch endpoint.
    fn is_legacy_remote(&self, domain: &str) -> bool {
        let mut legacy = self.legacy_remotes.lock();
        match legacy.get(domain) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                legacy.remove(domain);
                false
            }
            None => false,
        }
    }

    /// One `POST /` per envelope, as relays of the existing implementation federate: 2xx is
    /// accepted, another 4xx refused, anything else fails this and the remaining envelopes.
    async fn send_legacy(&self, domain: &str, chunk: Vec<(String, Outbound)>) {
        let mut verdicts = Vec::with_capacity(chunk.len());
        let mut failure = None;
        for (_, item) in &chunk {
            let started = Instant::now();
            let sent = self
                .client
                .request(
                    domain,
                    Method::POST,
                    "/",
                    &[("content-type", "application/x-protobuf".to_string())],
                    item.frame.clone(),
                )
                .await;
            self.metrics
                .request_seconds
                .with_label_values(&[self.metrics.labels.label(domain)])
                .observe(started.elapsed().as_secs_f64());
            match sent {
                Ok(resp) if resp.status.is_success() => verdicts.push(RemoteVerdict::Accepted),
                // The original relay's answer to a fail-fast envelope whose destination has
                // no session there.
                Ok(resp) if resp.status.as_u16() == 404 && wants_fail_fast(&item.frame) => verdicts
                    .push(RemoteVerdict::Refused {
                        code: codes::DESTINATION_OFFLINE,
                        reason: "offline".into(),
                        message: "destination offline (fail-fast)".into(),
                    }),
                Ok(resp)
                    if resp.status.is_client_error()
                        && !matches!(resp.status.as_u16(), 404 | 405 | 408 | 429) =>
                {
                    let text = String::from_utf8_lossy(&resp.body[..resp.body.len().min(512)]);
                    verdicts.push(RemoteVerdict::Refused {
                        code: codes::OTHER,
                        reason: format!("legacy_http_{}", resp.status.as_u16()),
                        message: text.trim().to_string(),
                    });
                }
                Ok(resp) => {
                    failure = Some(RequestFailure {
                        reason: format!("http_{}", resp.status.as_u16()),
                        detail: String::from_utf8_lossy(&resp.body[..resp.body.len().min(512)])
                            .to_string(),
                    });
                    break;
                }
                Err(e) => {
                    failure = Some(RequestFailure {
                        reason: e.label().to_string(),
                        detail: e.to_string(),
                    });
                    break;
                }
            }
        }
        let mut answered = chunk;
        let rest = answered.split_off(verdicts.len());
        if !answered.is_empty() {
            let _ = self.store.report(domain, true, now_ms()).await;
            self.settle(domain, answered, verdicts).await;
        }
        if let Some(failure) = failure {
            self.fail_chunk(domain, rest, failure).await;
        }
    }

    /// A request failed: the relay counts as down; each envelope goes to another relay of
    /// its twin or waits.
    async fn fail_chunk(
        &self,
        domain: &str,
        chunk: Vec<(String, Outbound)>,
        failure: RequestFailure,
    ) {
        let _ = self.store.report(domain, false, now_ms()).await;
        self.ranker.failed(domain);
        tracing::warn!(%domain, reason = %failure.reason, detail = %failure.detail, envelopes = chunk.len(), "federation request failed");
        for (id, item) in chunk {
            self.metrics
                .failed
                .with_label_values(&[self.metrics.labels.label(domain), &failure.reason])
                .inc();
            self.after_failure(domain, id, item, &failure.reason, &failure.detail)
                .await;
        }
    }

    /// Settles each envelope by the remote's verdict on it.
    async fn settle(
        &self,
        domain: &str,
        chunk: Vec<(String, Outbound)>,
        results: Vec<RemoteVerdict>,
    ) {
        let mut done = Vec::new();
        for ((id, mut item), verdict) in chunk.into_iter().zip(results) {
            match verdict {
                RemoteVerdict::Accepted => {
                    // A relay that accepts mail is real: it earns a label of its own.
                    self.metrics.labels.admit(domain);
                    self.metrics
                        .sent
                        .with_label_values(&[self.metrics.labels.label(domain)])
                        .inc();
                    done.push(id);
                }
                RemoteVerdict::Retry { message } => {
                    self.metrics
                        .failed
                        .with_label_values(&[self.metrics.labels.label(domain), "retry"])
                        .inc();
                    item.last_error = format!("{domain}: {message}");
                    self.reschedule(domain, &id, item).await;
                }
                RemoteVerdict::Refused {
                    code,
                    reason,
                    message,
                } => {
                    self.metrics
                        .failed
                        .with_label_values(&[self.metrics.labels.label(domain), "refused"])
                        .inc();
                    item.refused.push(domain.to_string());
                    item.last_error = format!("relay {domain} refused it ({reason}): {message}");
                    let except: Vec<&str> = item.refused.iter().map(String::as_str).collect();
                    match self.healthiest(&item.relays, &except).await {
                        Some(next) => {
                            item.attempts = 0;
                            self.move_to(domain, &next, id, item).await;
                        }
                        None => {
                            let code = if code == 0 { codes::OTHER } else { code };
                            let text = item.last_error.clone();
                            self.give_up(&item, code, "refused", &text).await;
                            done.push(id);
                        }
                    }
                }
            }
        }
        let _ = self.store.remove(domain, &done).await;
    }

    /// Posts one signed batch; `Ok` holds one verdict per envelope.
    async fn post_batch(
        &self,
        domain: &str,
        body: Bytes,
        count: usize,
    ) -> Result<Vec<RemoteVerdict>, RequestFailure> {
        let auth = LinkAuth::sign(
            &self.key(),
            "POST",
            ENDPOINT,
            self.origin(),
            domain,
            rmb_proto::unix_now(),
            &body,
        );
        let headers = [
            ("authorization", auth.to_header()),
            ("content-type", BATCH_CONTENT_TYPE.to_string()),
        ];
        let resp = self
            .client
            .request(domain, Method::POST, ENDPOINT, &headers, body)
            .await
            .map_err(|e| RequestFailure {
                reason: e.label().to_string(),
                detail: e.to_string(),
            })?;
        if resp.status != hyper::StatusCode::OK {
            let detail =
                String::from_utf8_lossy(&resp.body[..resp.body.len().min(512)]).to_string();
            return Err(RequestFailure {
                reason: format!("http_{}", resp.status.as_u16()),
                detail,
            });
        }
        let answer: RemoteAnswer =
            serde_json::from_slice(&resp.body).map_err(|e| RequestFailure {
                reason: "bad_response".into(),
                detail: e.to_string(),
            })?;
        if answer.results.len() != count {
            return Err(RequestFailure {
                reason: "bad_response".into(),
                detail: format!("{} results for {count} envelopes", answer.results.len()),
            });
        }
        Ok(answer.results)
    }

    /// After a failed request: another healthy relay of the twin if there is one, else a
    /// later attempt here.
    async fn after_failure(
        &self,
        domain: &str,
        id: String,
        mut item: Outbound,
        reason: &str,
        detail: &str,
    ) {
        item.last_error = format!("relay {domain}: {reason}: {detail}");
        let mut except: Vec<&str> = item.refused.iter().map(String::as_str).collect();
        except.push(domain);
        if let Some(next) = self.healthiest(&item.relays, &except).await {
            let healthy = self
                .store
                .health(std::slice::from_ref(&next))
                .await
                .ok()
                .and_then(|h| h.first().copied())
                .is_some_and(|h| h.down_until_ms <= now_ms());
            if healthy {
                self.move_to(domain, &next, id, item).await;
                return;
            }
        }
        self.reschedule(domain, &id, item).await;
    }

    async fn reschedule(&self, domain: &str, id: &str, mut item: Outbound) {
        item.attempts = item.attempts.saturating_add(1);
        let delay = retry_backoff(self.settings.max_backoff).delay(item.attempts);
        // Never later than just after its expiry, so the source hears about it promptly.
        let due = (now_ms() + delay.as_millis() as u64).min(item.expires_at * 1000 + 1);
        if let Err(e) = self.store.push(domain, id, &item, due).await {
            // Still claimed in the store: it comes back after the claim lease.
            tracing::warn!(%domain, error = %e, "federation: cannot reschedule; it will be retried after the claim lease");
        }
    }

    async fn move_to(&self, from: &str, to: &str, id: String, item: Outbound) {
        tracing::debug!(%from, %to, "federation: trying the twin's next relay");
        // Add first, then remove: a failure in between gives a duplicate, never a loss.
        match self.store.push(to, &id, &item, now_ms()).await {
            Ok(()) => {
                self.metrics
                    .queued
                    .with_label_values(&[self.metrics.labels.label(to)])
                    .inc();
                let _ = self.store.remove(from, &[id]).await;
                self.wake.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(%to, error = %e, "federation: cannot move an envelope");
                self.reschedule(from, &id, item).await;
            }
        }
    }

    /// Tells the local source that its envelope will not be delivered: an error envelope
    /// with the same uid, signed by this relay's identity.
    async fn give_up(&self, item: &Outbound, code: u32, reason: &str, message: &str) {
        for relay in &item.relays {
            self.metrics
                .original_error
                .with_label_values(&[self.metrics.labels.label(relay)])
                .inc();
        }
        let Ok(original) = Envelope::decode(item.frame.clone()) else {
            return;
        };
        // Never answer an error with an error (no loops between relays).
        if original.kind() == Kind::Error {
            return;
        }
        let Some(source) = original.source.clone() else {
            return;
        };
        self.metrics
            .errors_returned
            .with_label_values(&[reason])
            .inc();
        let now = rmb_proto::unix_now();
        let key = self.key();
        let mut env = Envelope::error_reply(&original, code, message, now, ERROR_TTL)
            .with_tags(Some(format!("relay:{} kid:{}", self.origin(), key.kid())));
        rmb_identity::sign_envelope(&mut env, key.signer());
        let sid = source.connection.as_deref().filter(|s| !s.is_empty());
        let delivered = self
            .local
            .deliver(
                source.twin,
                sid,
                Bytes::from(env.encode_to_vec()),
                now + ERROR_TTL,
                false,
            )
            .await;
        if delivered != crate::Delivered::Accepted {
            tracing::debug!(
                twin = source.twin,
                ?delivered,
                "federation: error envelope not delivered"
            );
        }
    }
}

/// Whether the envelope asks to fail fast when its destination is offline.
fn wants_fail_fast(frame: &Bytes) -> bool {
    Envelope::decode(frame.clone()).is_ok_and(|env| env.wants_fail_fast())
}

fn expired_message(item: &Outbound) -> String {
    if item.last_error.is_empty() {
        "envelope expired before a relay of its destination accepted it".into()
    } else {
        format!(
            "envelope expired before a relay of its destination accepted it (last error: {})",
            item.last_error
        )
    }
}

/// Waits between attempts at one envelope: between half and all of
/// `min(0.5 s × 2^attempts, max)`.
pub(crate) fn retry_backoff(max: Duration) -> BackoffPolicy {
    BackoffPolicy::new(Duration::from_millis(500), max)
}

#[cfg(test)]
mod ranker_tests {
    use super::Ranker;
    use std::time::Duration;

    #[test]
    fn failures_count_within_the_period_per_relay() {
        let ranker = Ranker::new(Duration::from_secs(3600));
        ranker.failed("a.example");
        ranker.failed("a.example");
        ranker.failed("b.example");
        assert_eq!(ranker.recent_failures("a.example"), 2);
        assert_eq!(ranker.recent_failures("b.example"), 1);
        assert_eq!(ranker.recent_failures("c.example"), 0);
    }

    #[test]
    fn failures_older_than_the_period_no_longer_count() {
        let ranker = Ranker::new(Duration::from_millis(1));
        ranker.failed("a.example");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ranker.recent_failures("a.example"), 0, "healed");
    }

    #[test]
    fn memory_per_relay_is_bounded() {
        let ranker = Ranker::new(Duration::from_secs(3600));
        for _ in 0..super::RANKER_MEMORY + 50 {
            ranker.failed("a.example");
        }
        assert_eq!(ranker.recent_failures("a.example"), super::RANKER_MEMORY);
    }
}
