//! Prometheus metrics. One registry per relay instance (not the global one), so several
//! relays in one test process do not collide. Label values are resolved once at start-up:
//! the hot path only increments.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, MetricFamily};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// What happened to an envelope a session sent. Declared in the order of `ALL`: the
/// discriminant indexes the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Queued for a connected session.
    Online,
    /// Stored in an offline twin's mailbox.
    Mailbox,
    /// Answered by the relay (envelope ping).
    Pong,
    /// Refused: the source is not the session.
    Spoofed,
    /// Refused: expired or TTL over the cap.
    Invalid,
    /// Refused: unknown destination twin.
    UnknownTwin,
    /// Refused: destination served by another relay.
    NotServed,
    /// Refused: fail-fast and destination offline.
    Offline,
    /// Refused: mailbox full.
    MailboxFull,
    /// Refused: rate limit.
    RateLimited,
    /// Refused: directory or backplane unavailable, or draining.
    Unavailable,
    /// Queued for a remote relay (federation).
    Federated,
}

impl Outcome {
    const ALL: [Outcome; 12] = [
        Outcome::Online,
        Outcome::Mailbox,
        Outcome::Pong,
        Outcome::Spoofed,
        Outcome::Invalid,
        Outcome::UnknownTwin,
        Outcome::NotServed,
        Outcome::Offline,
        Outcome::MailboxFull,
        Outcome::RateLimited,
        Outcome::Unavailable,
        Outcome::Federated,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Online => "online",
            Outcome::Mailbox => "mailbox",
            Outcome::Pong => "pong",
            Outcome::Spoofed => "spoofed_source",
            Outcome::Invalid => "invalid",
            Outcome::UnknownTwin => "unknown_twin",
            Outcome::NotServed => "not_served",
            Outcome::Offline => "offline",
            Outcome::MailboxFull => "mailbox_full",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unavailable => "unavailable",
            Outcome::Federated => "federated",
        }
    }
}

/// A limit that was hit. Declared in the order of `ALL`: the discriminant indexes the
/// counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Frame or envelope over the size bound.
    EnvelopeSize,
    /// TTL over the cap.
    Ttl,
    /// Per-twin message rate.
    RateMessages,
    /// Per-twin byte rate.
    RateBytes,
    /// Connections per pod.
    Connections,
    /// Sessions per twin.
    SessionsPerTwin,
    /// Mailbox per twin.
    Mailbox,
    /// Outbound queue of a connected session.
    SlowConsumer,
    /// A pod's inbox stream is at its bound.
    Inbox,
    /// Websocket handshakes from one client address.
    HandshakeRate,
    /// Uncached twin directory lookups (`--directory-lookup-rate`).
    DirectoryLookups,
}

impl Limit {
    const ALL: [Limit; 11] = [
        Limit::EnvelopeSize,
        Limit::Ttl,
        Limit::RateMessages,
        Limit::RateBytes,
        Limit::Connections,
        Limit::SessionsPerTwin,
        Limit::Mailbox,
        Limit::SlowConsumer,
        Limit::Inbox,
        Limit::HandshakeRate,
        Limit::DirectoryLookups,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::EnvelopeSize => "envelope_size",
            Limit::Ttl => "ttl",
            Limit::RateMessages => "rate_messages",
            Limit::RateBytes => "rate_bytes",
            Limit::Connections => "connections",
            Limit::SessionsPerTwin => "sessions_per_twin",
            Limit::Mailbox => "mailbox",
            Limit::SlowConsumer => "slow_consumer",
            Limit::Inbox => "inbox",
            Limit::HandshakeRate => "handshake_rate",
            Limit::DirectoryLookups => "directory_lookups",
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
    /// Redis command failures, by operation.
    pub redis_errors: IntCounterVec,
    /// Dead pods whose inbox this pod re-routed.
    pub takeovers: IntCounter,
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

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let r = &registry;
        let received_vec = counter_vec(
            r,
            "rmb_relay_envelopes_received_total",
            "Envelopes received from sessions, by outcome",
            &["outcome"],
        );
        let limits_vec = counter_vec(
            r,
            "rmb_relay_limit_hits_total",
            "Times a limit refused or closed something, by limit",
            &["limit"],
        );
        let metrics = Metrics {
            connections: gauge(r, "rmb_relay_connections", "Open websocket connections"),
            sessions: gauge(r, "rmb_relay_sessions", "Attached sessions"),
            received: Outcome::ALL
                .iter()
                .map(|o| received_vec.with_label_values(&[o.as_str()]))
                .collect(),
            received_bytes: counter(
                r,
                "rmb_relay_received_bytes_total",
                "Bytes of envelopes received from sessions",
            ),
            sent: counter(
                r,
                "rmb_relay_envelopes_sent_total",
                "Envelopes written to sessions",
            ),
            sent_bytes: counter(
                r,
                "rmb_relay_sent_bytes_total",
                "Bytes of envelopes written to sessions",
            ),
            confirmed: counter(
                r,
                "rmb_relay_envelopes_confirmed_total",
                "Envelopes whose receipt the peer confirmed (websocket pong)",
            ),
            requeued: counter(
                r,
                "rmb_relay_envelopes_requeued_total",
                "Envelopes written but unconfirmed when their session ended, queued again",
            ),
            routing_seconds: histogram(r),
            limits: Limit::ALL
                .iter()
                .map(|l| limits_vec.with_label_values(&[l.as_str()]))
                .collect(),
            auth_failures: counter_vec(
                r,
                "rmb_relay_auth_failures_total",
                "Refused websocket handshakes, by reason",
                &["reason"],
            ),
            sessions_closed: counter_vec(
                r,
                "rmb_relay_sessions_closed_total",
                "Ended sessions, by reason",
                &["reason"],
            ),
            queued: gauge(
                r,
                "rmb_relay_queued_envelopes",
                "Envelopes queued in this relay (for connected and disconnected twins)",
            ),
            mailbox_depth: gauge(
                r,
                "rmb_relay_mailbox_envelopes",
                "Envelopes waiting in mailboxes of disconnected twins",
            ),
            expired: counter(
                r,
                "rmb_relay_envelopes_expired_total",
                "Envelopes dropped at their expiry while queued in this relay",
            ),
            directory_lookups: counter_vec(
                r,
                "rmb_relay_directory_lookups_total",
                "Twin directory lookups, by result (hit: cache, miss: directory, error)",
                &["result"],
            ),
            ready: gauge(r, "rmb_relay_ready", "1 while the relay accepts traffic"),
            draining: gauge(r, "rmb_relay_draining", "1 while the relay drains"),
            malformed: counter(
                r,
                "rmb_relay_malformed_frames_total",
                "Frames that were not envelopes (text or undecodable); the session was closed",
            ),
            backplane_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "rmb_relay_backplane_seconds",
                    "Latency of backplane routing operations (Redis round trips)",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ]),
            )
            .unwrap_or_else(|e| panic!("metric rmb_relay_backplane_seconds: {e}")),
            redis_errors: counter_vec(
                r,
                "rmb_relay_redis_errors_total",
                "Failed Redis commands, by operation",
                &["op"],
            ),
            takeovers: counter(
                r,
                "rmb_relay_takeovers_total",
                "Dead pods whose inbox this pod took over and re-routed",
            ),
            inbox_depth: gauge(
                r,
                "rmb_relay_inbox_entries",
                "Entries in this pod's inbox stream not yet acknowledged and deleted",
            ),
            inbox_lag_seconds: {
                let name = "rmb_relay_inbox_lag_seconds";
                let g = Gauge::new(
                    name,
                    "Time the last delivery probe waited in this pod's inbox before being read",
                )
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
                g
            },
            inbox_pending: gauge(
                r,
                "rmb_relay_inbox_pending",
                "Inbox entries handed to sessions and awaiting the peer's confirmation",
            ),
            mailbox_stored: counter(
                r,
                "rmb_relay_mailbox_stored_total",
                "Envelopes this pod stored in Redis mailboxes of disconnected twins",
            ),
            mailbox_loaded: counter(
                r,
                "rmb_relay_mailbox_loaded_total",
                "Envelopes this pod loaded from Redis mailboxes for its sessions",
            ),
            original: OriginalCounters {
                rx: counter(
                    r,
                    "relay_message_rx",
                    "number of messages received by relay (original relay name: envelopes accepted for delivery to twins of this relay, from sessions and other relays)",
                ),
                rx_bytes: counter(
                    r,
                    "relay_message_rx_bytes",
                    "size of messages received by relay in bytes (original relay name)",
                ),
                evictions: counter_vec(
                    r,
                    "relay_session_evictions_total",
                    "Total number of session evictions from the relay, labeled by reason (original relay name: closed = connection lost, back_pressure_timeout = slow consumer, cancelled = any other end)",
                    &["reason"],
                ),
            },
            registry,
        };
        let _ = metrics
            .registry
            .register(Box::new(metrics.backplane_seconds.clone()));
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
        );
        metrics.alias(
            Box::new(metrics.sent_bytes.clone()),
            "relay_message_tx_bytes",
            "size of messages forwarded by relay in bytes (original relay name of rmb_relay_sent_bytes_total)",
            &[],
            None,
        );
        metrics.alias(
            Box::new(metrics.sessions.clone()),
            "relay_worker_connections",
            "number of connections handled by this worker (original relay name of rmb_relay_sessions; this relay has one worker, \"0\")",
            &[("worker", "0")],
            None,
        );
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = metrics.registry.register(Box::new(pc));
        }
        Arc::new(metrics)
    }

    /// Counts an envelope received, by outcome (called once per envelope: a direct index).
    pub fn received(&self, outcome: Outcome) {
        if let Some(counter) = self.received.get(outcome as usize) {
            counter.inc();
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
    ) {
        let variable = match rename {
            Some((_, to)) => vec![to.to_string()],
            None => Vec::new(),
        };
        let constant = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let desc = Desc::new(name.to_string(), help.to_string(), variable, constant)
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
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

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn histogram(r: &Registry) -> Histogram {
    let name = "rmb_relay_routing_seconds";
    let opts = HistogramOpts::new(
        name,
        "Time from accepting an envelope to writing it to the destination session",
    )
    .buckets(vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]);
    let h = Histogram::with_opts(opts).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
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
        let m = Metrics::new();
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
