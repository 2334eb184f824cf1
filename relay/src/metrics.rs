//! Prometheus metrics. One registry per relay instance (not the global one), so several
//! relays in one test process do not collide. Label values are resolved once at start-up:
//! the hot path only increments.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, MetricFamily};
use prometheus::{
    Encoder, Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, Registry, TextEncoder,
};
use rmb_common::metrics::{MetricError, Registrar};

rmb_common::label_enum! {
    /// What happened to an envelope a session sent (the `outcome` label). Declared in the
    /// order of `ALL`: the discriminant indexes the counters.
    pub enum Outcome {
        /// Queued for a connected session.
        Online = "online",
        /// Stored in an offline twin's mailbox.
        Mailbox = "mailbox",
        /// Answered by the relay (envelope ping).
        Pong = "pong",
        /// Refused: the source is not the session.
        Spoofed = "spoofed_source",
        /// Refused: expired or TTL over the cap.
        Invalid = "invalid",
        /// Refused: unknown destination twin.
        UnknownTwin = "unknown_twin",
        /// Refused: destination served by another relay.
        NotServed = "not_served",
        /// Refused: fail-fast and destination offline.
        Offline = "offline",
        /// Refused: mailbox full.
        MailboxFull = "mailbox_full",
        /// Refused: rate limit.
        RateLimited = "rate_limited",
        /// Refused: directory or backplane unavailable, or draining.
        Unavailable = "unavailable",
        /// Queued for a remote relay (federation).
        Federated = "federated",
    }
}

rmb_common::label_enum! {
    /// A limit that was hit (the `limit` label). Declared in the order of `ALL`: the
    /// discriminant indexes the counters.
    pub enum Limit {
        /// Frame or envelope over the size bound.
        EnvelopeSize = "envelope_size",
        /// TTL over the cap.
        Ttl = "ttl",
        /// Per-twin message rate.
        RateMessages = "rate_messages",
        /// Per-twin byte rate.
        RateBytes = "rate_bytes",
        /// Connections per pod.
        Connections = "connections",
        /// Sessions per twin.
        SessionsPerTwin = "sessions_per_twin",
        /// Mailbox per twin.
        Mailbox = "mailbox",
        /// Outbound queue of a connected session.
        SlowConsumer = "slow_consumer",
        /// A session whose socket did not take a write, or whose reader could not hand a
        /// reply to its writer, within --write-timeout; or whose unsent replies passed their
        /// byte bound.
        StuckSession = "stuck_session",
        /// A pod's inbox stream is at its bound.
        Inbox = "inbox",
        /// Websocket handshakes from one client address.
        HandshakeRate = "handshake_rate",
        /// Uncached twin directory lookups (`--directory-lookup-rate`).
        DirectoryLookups = "directory_lookups",
        /// Bytes of mail for one twin (`--mailbox-max-bytes`).
        MailboxBytes = "mailbox_bytes",
        /// Bytes queued in this process's hub (`--pod-queue-max-bytes`, memory backplane).
        PodQueueBytes = "pod_queue_bytes",
        /// Mail for session ids the twin has not used recently (`--unused-sid-mailbox-max`,
        /// `--unused-sid-mailbox-bytes`).
        UnusedSid = "unused_sid",
    }
}

impl From<crate::hub::Budget> for Limit {
    fn from(budget: crate::hub::Budget) -> Limit {
        match budget {
            crate::hub::Budget::TwinBytes => Limit::MailboxBytes,
            crate::hub::Budget::PodBytes => Limit::PodQueueBytes,
            crate::hub::Budget::UnusedSid => Limit::UnusedSid,
        }
    }
}

/// Every metric the relay exports.
pub struct Metrics {
    registry: Registry,
    /// Open websocket connections.
    pub connections: IntGauge,
    /// Attached sessions.
    pub sessions: IntGauge,
    received: Vec<IntCounter>,
    /// Bytes of envelopes received from sessions.
    pub received_bytes: IntCounter,
    /// Envelopes written to sessions.
    pub sent: IntCounter,
    /// Bytes of envelopes written to sessions.
    pub sent_bytes: IntCounter,
    /// Envelopes whose receipt a peer confirmed.
    pub confirmed: IntCounter,
    /// Envelopes written but unconfirmed when their session ended (queued again).
    pub requeued: IntCounter,
    /// Time from acceptance to being written to the destination's socket.
    pub routing_seconds: Histogram,
    limits: Vec<IntCounter>,
    auth_failures: IntCounterVec,
    sessions_closed: IntCounterVec,
    /// Envelopes queued in the hub (online and mailbox).
    pub queued: IntGauge,
    /// Envelopes in mailboxes of disconnected twins.
    pub mailbox_depth: IntGauge,
    /// Envelopes dropped at their expiry while queued.
    pub expired: IntCounter,
    /// Twin directory lookups by result (hit, miss, error).
    pub directory_lookups: IntCounterVec,
    /// 1 while the relay is ready for traffic.
    pub ready: IntGauge,
    /// 1 while the relay drains.
    pub draining: IntGauge,
    /// Malformed frames (session closed).
    pub malformed: IntCounter,
    /// Latency of backplane routing operations (Redis round trips).
    pub backplane_seconds: Histogram,
    /// Frames a session had sent that were routed together (one read batch).
    pub read_batch_frames: Histogram,
    /// Redis command failures, by operation.
    pub redis_errors: IntCounterVec,
    /// Dead pods whose inbox this pod re-routed.
    pub takeovers: IntCounter,
    /// Inbox entries of a dead pod re-routed because their session reconnected to this pod.
    pub session_takeover_entries: IntCounter,
    /// Inbox entries Redis handed to this pod in a read reply that never arrived (a timeout,
    /// a dropped connection, a failed master), found in the pending list and handled.
    pub inbox_recovered: IntCounter,
    /// Envelopes for a session on another pod sent straight to that pod's inbox because its
    /// owner was cached (no routing script call).
    pub owner_cache_hits: IntCounter,
    /// Envelopes for a session not on this pod that needed the routing script (owner not
    /// cached, cache entry expired, or its pod stopped beating).
    pub owner_cache_misses: IntCounter,
    /// Entries waiting in this pod's inbox stream (read or not, not yet acknowledged).
    pub inbox_depth: IntGauge,
    /// Seconds the last delivery probe spent between being appended to our inbox and being
    /// read from it: how far behind the inbox consumer is.
    pub inbox_lag_seconds: Gauge,
    /// Entries pending in this pod's inbox consumer group (delivered, not yet confirmed).
    pub inbox_pending: IntGauge,
    /// Envelopes stored in Redis mailboxes by this pod.
    pub mailbox_stored: IntCounter,
    /// Envelopes loaded from Redis mailboxes for sessions on this pod.
    pub mailbox_loaded: IntCounter,
    /// The original relay's own counters (the rest of its names are aliases, see
    /// [`Metrics::alias`]).
    original: OriginalCounters,
}

/// Counters under the original relay's names that have no counterpart here to alias.
struct OriginalCounters {
    /// `relay_message_rx`: envelopes accepted for delivery to a twin of this relay.
    rx: IntCounter,
    /// `relay_message_rx_bytes`.
    rx_bytes: IntCounter,
    /// `relay_session_evictions_total{reason}`.
    evictions: IntCounterVec,
}

/// The counts of one batch of envelopes, added to the shared counters once per batch
/// ([`Metrics::received_batch`]): every worker thread adds to the same counters, and one add
/// per batch instead of several per envelope keeps their cache lines from moving between
/// cores for each envelope.
#[derive(Debug, Default)]
pub struct ReceivedTally {
    outcomes: [u64; Outcome::ALL.len()],
    bytes: u64,
    accepted: u64,
    accepted_bytes: u64,
}

impl ReceivedTally {
    /// Counts one envelope of `frame_len` bytes and what became of it.
    pub fn count(&mut self, outcome: Outcome, frame_len: u64) {
        if let Some(n) = self.outcomes.get_mut(outcome as usize) {
            *n += 1;
        }
        self.bytes += frame_len;
        if matches!(outcome, Outcome::Online | Outcome::Mailbox) {
            self.accepted += 1;
            self.accepted_bytes += frame_len;
        }
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Arc<Metrics>, MetricError> {
        let registry = Registry::new();
        let r = Registrar::new(&registry);
        let received_vec = r.counter_vec(
            "rmb_relay_envelopes_received_total",
            "Envelopes received from sessions, by outcome",
            &["outcome"],
        )?;
        let limits_vec = r.counter_vec(
            "rmb_relay_limit_hits_total",
            "Times a limit refused or closed something, by limit",
            &["limit"],
        )?;
        let metrics = Metrics {
            connections: r.gauge("rmb_relay_connections", "Open websocket connections")?,
            sessions: r.gauge("rmb_relay_sessions", "Attached sessions")?,
            received: Outcome::ALL
                .iter()
                .map(|o| received_vec.with_label_values(&[o.as_str()]))
                .collect(),
            received_bytes: r.counter(
                "rmb_relay_received_bytes_total",
                "Bytes of envelopes received from sessions",
            )?,
            sent: r.counter(
                "rmb_relay_envelopes_sent_total",
                "Envelopes written to sessions",
            )?,
            sent_bytes: r.counter(
                "rmb_relay_sent_bytes_total",
                "Bytes of envelopes written to sessions",
            )?,
            confirmed: r.counter(
                "rmb_relay_envelopes_confirmed_total",
                "Envelopes whose receipt the peer confirmed (TCP acknowledgement or websocket pong)",
            )?,
            requeued: r.counter(
                "rmb_relay_envelopes_requeued_total",
                "Envelopes written but unconfirmed when their session ended, queued again",
            )?,
            routing_seconds: r.histogram(
                "rmb_relay_routing_seconds",
                "Time from accepting an envelope to writing it to the destination session",
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )?,
            limits: Limit::ALL
                .iter()
                .map(|l| limits_vec.with_label_values(&[l.as_str()]))
                .collect(),
            auth_failures: r.counter_vec(
                "rmb_relay_auth_failures_total",
                "Refused websocket handshakes, by reason",
                &["reason"],
            )?,
            sessions_closed: r.counter_vec(
                "rmb_relay_sessions_closed_total",
                "Ended sessions, by reason",
                &["reason"],
            )?,
            queued: r.gauge(
                "rmb_relay_queued_envelopes",
                "Envelopes queued in this relay (for connected and disconnected twins)",
            )?,
            mailbox_depth: r.gauge(
                "rmb_relay_mailbox_envelopes",
                "Envelopes waiting in mailboxes of disconnected twins",
            )?,
            expired: r.counter(
                "rmb_relay_envelopes_expired_total",
                "Envelopes dropped at their expiry while queued in this relay",
            )?,
            directory_lookups: r.counter_vec(
                "rmb_relay_directory_lookups_total",
                "Twin directory lookups, by result (hit: cache, miss: directory, error)",
                &["result"],
            )?,
            ready: r.gauge("rmb_relay_ready", "1 while the relay accepts traffic")?,
            draining: r.gauge("rmb_relay_draining", "1 while the relay drains")?,
            malformed: r.counter(
                "rmb_relay_malformed_frames_total",
                "Frames that were not envelopes (text or undecodable); the session was closed",
            )?,
            backplane_seconds: r.histogram(
                "rmb_relay_backplane_seconds",
                "Latency of backplane routing operations (Redis round trips)",
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ],
            )?,
            read_batch_frames: r.histogram(
                "rmb_relay_read_batch_frames",
                "Frames of one session routed together: what it had sent and the relay could \
                 read at once (at most 64)",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            )?,
            redis_errors: r.counter_vec(
                "rmb_relay_redis_errors_total",
                "Failed Redis commands, by operation",
                &["op"],
            )?,
            takeovers: r.counter(
                "rmb_relay_takeovers_total",
                "Dead pods whose inbox this pod took over and re-routed",
            )?,
            session_takeover_entries: r.counter(
                "rmb_relay_session_takeover_entries_total",
                "Entries of a dead pod's inbox re-routed because their session reconnected here",
            )?,
            inbox_recovered: r.counter(
                "rmb_relay_inbox_recovered_total",
                "Inbox entries handed to this pod in a read reply that was lost, then recovered",
            )?,
            owner_cache_hits: r.counter(
                "rmb_relay_owner_cache_hits_total",
                "Envelopes sent to another pod's inbox on a cached session owner (no ROUTE script)",
            )?,
            owner_cache_misses: r.counter(
                "rmb_relay_owner_cache_misses_total",
                "Envelopes for a session not on this pod that needed the ROUTE script",
            )?,
            inbox_depth: r.gauge(
                "rmb_relay_inbox_entries",
                "Entries in this pod's inbox stream not yet acknowledged and deleted",
            )?,
            inbox_lag_seconds: r.float_gauge(
                "rmb_relay_inbox_lag_seconds",
                "Time the last delivery probe waited in this pod's inbox before being read",
            )?,
            inbox_pending: r.gauge(
                "rmb_relay_inbox_pending",
                "Inbox entries handed to sessions and awaiting the peer's confirmation",
            )?,
            mailbox_stored: r.counter(
                "rmb_relay_mailbox_stored_total",
                "Envelopes this pod stored in Redis mailboxes of disconnected twins",
            )?,
            mailbox_loaded: r.counter(
                "rmb_relay_mailbox_loaded_total",
                "Envelopes this pod loaded from Redis mailboxes for its sessions",
            )?,
            original: OriginalCounters {
                rx: r.counter(
                    "relay_message_rx",
                    "number of messages received by relay (original relay name: envelopes accepted for delivery to twins of this relay, from sessions and other relays)",
                )?,
                rx_bytes: r.counter(
                    "relay_message_rx_bytes",
                    "size of messages received by relay in bytes (original relay name)",
                )?,
                evictions: r.counter_vec(
                    "relay_session_evictions_total",
                    "Total number of session evictions from the relay, labeled by reason (original relay name: closed = connection lost, back_pressure_timeout = slow consumer, cancelled = any other end)",
                    &["reason"],
                )?,
            },
            registry,
        };
        // Every reason from the start, so dashboards see zeros rather than no series.
        for reason in ["closed", "back_pressure_timeout", "cancelled"] {
            metrics.original.evictions.with_label_values(&[reason]);
        }
        metrics.alias(
            Box::new(metrics.sent.clone()),
            "relay_message_tx",
            "number of messages forwarded by relay (original relay name of rmb_relay_envelopes_sent_total)",
            &[],
            None,
        )?;
        metrics.alias(
            Box::new(metrics.sent_bytes.clone()),
            "relay_message_tx_bytes",
            "size of messages forwarded by relay in bytes (original relay name of rmb_relay_sent_bytes_total)",
            &[],
            None,
        )?;
        metrics.alias(
            Box::new(metrics.sessions.clone()),
            "relay_worker_connections",
            "number of connections handled by this worker (original relay name of rmb_relay_sessions; this relay has one worker, \"0\")",
            &[("worker", "0")],
            None,
        )?;
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = metrics.registry.register(Box::new(pc));
        }
        Ok(Arc::new(metrics))
    }

    /// Adds the counts of one batch of envelopes a session sent.
    pub fn received_batch(&self, tally: &ReceivedTally) {
        for (counter, &n) in self.received.iter().zip(&tally.outcomes) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        self.received_bytes.inc_by(tally.bytes);
        if tally.accepted > 0 {
            self.original.rx.inc_by(tally.accepted);
            self.original.rx_bytes.inc_by(tally.accepted_bytes);
        }
    }

    /// The counter of `limit`, for code that counts without holding the metrics.
    pub fn limit_counter(&self, limit: Limit) -> Option<IntCounter> {
        self.limits.get(limit as usize).cloned()
    }

    /// Counts a limit hit.
    pub fn limit(&self, limit: Limit) {
        if let Some(counter) = self.limits.get(limit as usize) {
            counter.inc();
        }
    }

    /// Counts a failed Redis command.
    pub fn redis_error(&self, op: &str) {
        self.redis_errors.with_label_values(&[op]).inc();
    }

    /// Counts a refused handshake.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Counts an ended session (reason: a snake_case label).
    pub fn session_closed(&self, reason: &str) {
        self.sessions_closed.with_label_values(&[reason]).inc();
        self.original
            .evictions
            .with_label_values(&[eviction_reason(reason)])
            .inc();
    }

    /// Counts an envelope accepted for delivery to a twin of this relay (its session or
    /// mailbox), from a session or another relay: the original relay's `relay_message_rx`.
    pub fn accepted_for_delivery(&self, bytes: u64) {
        self.original.rx.inc();
        self.original.rx_bytes.inc_by(bytes);
    }

    /// Exports `source` (a counter or gauge family) a second time as `name`, read at scrape
    /// time so the two never disagree: the original relay's metric names. `labels` are added
    /// to every series; `rename` renames one label.
    pub fn alias(
        &self,
        source: Box<dyn Collector>,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        rename: Option<(&str, &str)>,
    ) -> Result<(), MetricError> {
        let variable = match rename {
            Some((_, to)) => vec![to.to_string()],
            None => Vec::new(),
        };
        let constant = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let desc = Desc::new(name.to_string(), help.to_string(), variable, constant).map_err(
            |source| MetricError {
                name: name.to_string(),
                source,
            },
        )?;
        let alias = Alias {
            source,
            desc,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            rename: rename.map(|(from, to)| (from.to_string(), to.to_string())),
        };
        // A second relay registering the same alias in one registry cannot happen: one
        // registry per relay.
        let _ = self.registry.register(Box::new(alias));
        Ok(())
    }

    /// Brings a counter up to a running total kept elsewhere (an atomic in a library that
    /// does not know Prometheus).
    pub fn sync_counter(counter: &IntCounter, total: u64) {
        let current = counter.get();
        if total > current {
            counter.inc_by(total - current);
        }
    }

    /// The registry, for components that register their own metrics (federation).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The exposition text for `/metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The original relay's eviction reason for a session that ended with `reason` here. The
/// original counted `closed` when writing to the connection failed, `back_pressure_timeout`
/// for a connection that did not read for a minute, and `cancelled` for every other end
/// (client gone, same session connected again).
fn eviction_reason(reason: &str) -> &'static str {
    match reason {
        "connection_lost" => "closed",
        "slow_consumer" => "back_pressure_timeout",
        _ => "cancelled",
    }
}

/// See [`Metrics::alias`].
struct Alias {
    source: Box<dyn Collector>,
    desc: Desc,
    labels: Vec<(String, String)>,
    rename: Option<(String, String)>,
}

impl Collector for Alias {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.source.collect();
        for family in &mut families {
            family.set_name(self.desc.fq_name.clone());
            family.set_help(self.desc.help.clone());
            for metric in family.mut_metric() {
                let mut pairs = metric.take_label();
                if let Some((from, to)) = &self.rename {
                    for pair in pairs.iter_mut().filter(|p| p.name() == from) {
                        pair.set_name(to.clone());
                    }
                }
                for (name, value) in &self.labels {
                    let mut pair = LabelPair::default();
                    pair.set_name(name.clone());
                    pair.set_value(value.clone());
                    pairs.push(pair);
                }
                pairs.sort_by(|a, b| a.name().cmp(b.name()));
                metric.set_label(pairs);
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::{eviction_reason, Limit, Metrics, Outcome};

    #[test]
    fn discriminants_index_the_counter_lists() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
        for (i, l) in Limit::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i, "{l:?}");
        }
    }

    #[test]
    fn session_ends_map_to_the_original_eviction_reasons() {
        assert_eq!(eviction_reason("connection_lost"), "closed");
        assert_eq!(eviction_reason("slow_consumer"), "back_pressure_timeout");
        for ours in [
            "replaced",
            "closed_by_peer",
            "idle",
            "draining",
            "frame_too_large",
        ] {
            assert_eq!(eviction_reason(ours), "cancelled", "{ours}");
        }
    }

    #[test]
    fn aliases_follow_their_source_and_carry_the_original_labels() {
        let m = Metrics::new().expect("valid metrics");
        m.sent.inc_by(3);
        m.sessions.set(2);
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains("relay_message_tx 3"), "{text}");
        assert!(text.contains("# TYPE relay_message_tx counter"), "{text}");
        assert!(
            text.contains("relay_worker_connections{worker=\"0\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE relay_worker_connections gauge"),
            "{text}"
        );
        m.sent.inc();
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains("relay_message_tx 4"), "{text}");
    }
}
