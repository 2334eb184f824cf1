//! Federation metrics, registered in the relay's registry so they appear on its `/metrics`.
//! Labels: `domain` (and the original's `relay`) is a remote relay domain — its own name
//! only once it proved to be a relay, at most [`MAX_LABELED_DOMAINS`] of them, `other` for the
//! rest ([`DomainLabels`]); `reason` a fixed snake_case word.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Registry};
use rmb_common::metrics::{MetricError, Registrar};

/// Most remote domains with a metric label of their own; later ones count under `other`.
pub const MAX_LABELED_DOMAINS: usize = 256;

/// The label of domains without one of their own.
pub const OTHER_DOMAIN: &str = "other";

/// Which remote domains get a metric label of their own. Domain names come from twin records
/// and request headers anyone can write: a label (a time series in every scraper) is given
/// only to a domain that proved to be a relay — it served its key document or accepted a
/// request — and to at most [`MAX_LABELED_DOMAINS`]; everything else counts under `other`.
#[derive(Debug, Default)]
pub struct DomainLabels {
    labeled: Mutex<HashSet<String>>,
}

impl DomainLabels {
    /// The label for `domain`: its own name once admitted, otherwise `other`.
    pub fn label<'a>(&self, domain: &'a str) -> &'a str {
        if self.labeled.lock().contains(domain) {
            domain
        } else {
            OTHER_DOMAIN
        }
    }

    /// Gives `domain`, which just proved to be a relay, its own label while fewer than
    /// [`MAX_LABELED_DOMAINS`] have one.
    pub fn admit(&self, domain: &str) {
        let mut labeled = self.labeled.lock();
        if !labeled.contains(domain) && labeled.len() < MAX_LABELED_DOMAINS {
            labeled.insert(domain.to_string());
        }
    }

    /// Whether `domain` has a label of its own.
    pub fn has_own(&self, domain: &str) -> bool {
        self.labeled.lock().contains(domain)
    }
}

/// Every federation metric.
#[derive(Clone)]
pub struct FederationMetrics {
    /// The `domain` label each remote domain is counted under.
    pub labels: Arc<DomainLabels>,
    /// Envelopes queued for a remote domain.
    pub queue_depth: IntGaugeVec,
    /// Envelopes handed to a remote domain's queue.
    pub queued: IntCounterVec,
    /// Envelopes a remote relay accepted.
    pub sent: IntCounterVec,
    /// Failed deliveries or attempts, by domain and reason.
    pub failed: IntCounterVec,
    /// Duration of batch requests to a remote relay.
    pub request_seconds: HistogramVec,
    /// Key document fetches, by origin domain and result.
    pub key_fetches: IntCounterVec,
    /// Envelopes received over federation, by result (accepted, refused, retry) and reason.
    pub inbound: IntCounterVec,
    /// Federation requests received, by outcome (ok or the reason they were refused).
    pub inbound_requests: IntCounterVec,
    /// Error envelopes sent back to local sources for undeliverable envelopes.
    pub errors_returned: IntCounterVec,
    /// The original relay's `federation_message_error{relay}`: for each envelope given up,
    /// one for every relay of its destination twin. (`federation_message_success` is an
    /// alias of `sent`, registered by the relay.)
    pub original_error: IntCounterVec,
}

impl FederationMetrics {
    /// Creates the metrics and registers them in `registry` (a name already registered
    /// there is kept unregistered, so a second federation in one registry still works).
    pub fn new(registry: &Registry) -> Result<FederationMetrics, MetricError> {
        let r = Registrar::keeping_duplicates(registry);
        Ok(FederationMetrics {
            labels: Arc::default(),
            queue_depth: r.gauge_vec(
                "rmb_federation_queue_envelopes",
                "Envelopes waiting in the outbound queue of a remote relay domain",
                &["domain"],
            )?,
            queued: r.counter_vec(
                "rmb_federation_queued_total",
                "Envelopes queued for a remote relay domain",
                &["domain"],
            )?,
            sent: r.counter_vec(
                "rmb_federation_sent_total",
                "Envelopes a remote relay accepted, by domain",
                &["domain"],
            )?,
            failed: r.counter_vec(
                "rmb_federation_failed_total",
                "Failed federation deliveries and attempts, by domain and reason",
                &["domain", "reason"],
            )?,
            request_seconds: r.histogram_vec(
                "rmb_federation_request_seconds",
                "Duration of batch requests to a remote relay, by domain",
                &["domain"],
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )?,
            key_fetches: r.counter_vec(
                "rmb_federation_key_fetches_total",
                "Fetches of a remote relay's key document, by domain and result",
                &["domain", "result"],
            )?,
            inbound: r.counter_vec(
                "rmb_federation_inbound_envelopes_total",
                "Envelopes received from remote relays, by result and reason",
                &["result", "reason"],
            )?,
            inbound_requests: r.counter_vec(
                "rmb_federation_inbound_requests_total",
                "Federation requests received, by outcome (ok or why the link was refused)",
                &["outcome"],
            )?,
            errors_returned: r.counter_vec(
                "rmb_federation_errors_returned_total",
                "Error envelopes sent to local sources for envelopes that could not be delivered, by reason",
                &["reason"],
            )?,
            original_error: r.counter_vec(
                "federation_message_error",
                "number of messages that failed to send via federation (original relay name: envelopes given up, counted once for each relay of the destination twin)",
                &["relay"],
            )?,
        })
    }
}
