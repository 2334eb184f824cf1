//! Federation metrics, registered in the relay's registry so they appear on its `/metrics`.
//! Labels: `domain` is a remote relay domain (bounded by the relays twins name), `reason` a
//! fixed snake_case word.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Every federation metric.
#[derive(Clone)]
pub struct FederationMetrics {
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
    /// Creates the metrics and registers them in `registry` (errors are ignored there, so a
    /// second federation in one registry still works, unregistered).
    pub fn new(registry: &Registry) -> FederationMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "rmb_federation_queue_envelopes",
                "Envelopes waiting in the outbound queue of a remote relay domain",
            ),
            &["domain"],
        )
        .unwrap_or_else(|e| panic!("metric rmb_federation_queue_envelopes: {e}"));
        let _ = registry.register(Box::new(queue_depth.clone()));
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "rmb_federation_request_seconds",
                "Duration of batch requests to a remote relay, by domain",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["domain"],
        )
        .unwrap_or_else(|e| panic!("metric rmb_federation_request_seconds: {e}"));
        let _ = registry.register(Box::new(request_seconds.clone()));
        FederationMetrics {
            queue_depth,
            queued: counter(
                "rmb_federation_queued_total",
                "Envelopes queued for a remote relay domain",
                &["domain"],
            ),
            sent: counter(
                "rmb_federation_sent_total",
                "Envelopes a remote relay accepted, by domain",
                &["domain"],
            ),
            failed: counter(
                "rmb_federation_failed_total",
                "Failed federation deliveries and attempts, by domain and reason",
                &["domain", "reason"],
            ),
            request_seconds,
            key_fetches: counter(
                "rmb_federation_key_fetches_total",
                "Fetches of a remote relay's key document, by domain and result",
                &["domain", "result"],
            ),
            inbound: counter(
                "rmb_federation_inbound_envelopes_total",
                "Envelopes received from remote relays, by result and reason",
                &["result", "reason"],
            ),
            inbound_requests: counter(
                "rmb_federation_inbound_requests_total",
                "Federation requests received, by outcome (ok or why the link was refused)",
                &["outcome"],
            ),
            errors_returned: counter(
                "rmb_federation_errors_returned_total",
                "Error envelopes sent to local sources for envelopes that could not be delivered, by reason",
                &["reason"],
            ),
            original_error: counter(
                "federation_message_error",
                "number of messages that failed to send via federation (original relay name: envelopes given up, counted once for each relay of the destination twin)",
                &["relay"],
            ),
        }
    }
}
