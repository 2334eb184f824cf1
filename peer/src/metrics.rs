//! Prometheus metrics of a peer (gateway or SDK client), and the `/metrics` endpoint.
//!
//! Every label takes values from a fixed set (kinds, drop reasons, the configured relay
//! URLs), never from what a remote twin sends, so the series count stays bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder as _, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder,
};
use rmb_common::metrics::{MetricError, Registrar};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

rmb_common::label_enum! {
    /// Why an envelope or document was dropped instead of being delivered (the `reason`
    /// label).
    pub enum DropReason {
        /// The signature does not verify against the source twin's key.
        BadSignature = "bad_signature",
        /// The source twin is unknown to the directory (or the directory failed).
        UnknownSource = "unknown_source",
        /// A request or response without a signature (or without a source).
        Unsigned = "unsigned",
        /// A response from a twin the request did not go to.
        WrongSource = "wrong_source",
        /// A response to no request we sent.
        Unexpected = "unexpected",
        /// A response or request whose uid was already handled (a replay or a redelivery).
        Replayed = "replayed",
        /// Received after its expiration.
        Expired = "expired",
        /// Expired while waiting for a relay connection (never sent).
        ExpiredUnsent = "expired_unsent",
        /// Still waiting for a relay when the peer stopped.
        Shutdown = "shutdown",
        /// The local service's queue was full: the sender got an error instead.
        LocalQueueFull = "local_queue_full",
        /// A cipher payload that could not be decrypted.
        Crypto = "crypto",
    }
}

rmb_common::label_enum! {
    /// Why a relay session ended (the `reason` label of disconnects).
    pub enum Disconnect {
        /// The connection or handshake failed.
        ConnectFailed = "connect_failed",
        /// The relay closed the session or the connection dropped.
        Closed = "closed",
        /// Another session of this twin took over (close code 4000).
        Replaced = "replaced",
        /// The relay is restarting or draining (close code 1012).
        Restart = "restart",
        /// Nothing was heard from the relay for too long.
        Silent = "silent",
        /// A write did not complete in time.
        SendTimeout = "send_timeout",
        /// A protocol error (bad frame).
        Error = "error",
    }
}

/// The peer's metrics. Shared (`Arc`) between the parts of a peer and whoever reads them.
pub struct Metrics {
    registry: Registry,
    sent: IntCounterVec,
    received: IntCounterVec,
    dropped: IntCounterVec,
    /// Destinations that did not answer before the request expired.
    pub(crate) timeouts: IntCounter,
    /// Local documents that could not be parsed or used.
    pub(crate) invalid_documents: IntCounter,
    /// Payloads not sent because the destination could not be looked up or encrypted for.
    pub(crate) not_sent: IntCounter,
    /// Failed Redis commands.
    pub(crate) redis_errors: IntCounter,
    /// Envelopes waiting for a relay connection.
    pub(crate) outbox: IntGauge,
    /// Requests sent and waiting for answers.
    pub(crate) pending: IntGauge,
    /// Length of a service's `msgbus.<cmd>` list after each request pushed on it.
    pub(crate) service_queue: Histogram,
    relay_up: IntGaugeVec,
    relay_connects: IntCounterVec,
    relay_disconnects: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Fresh metrics in their own registry.
    pub fn new() -> Result<Metrics, MetricError> {
        let registry = Registry::new();
        let r = Registrar::new(&registry);
        let sent = r.counter_vec(
            "rmb_peer_envelopes_sent_total",
            "Envelopes written to a relay, by kind.",
            &["kind"],
        )?;
        let received = r.counter_vec(
            "rmb_peer_envelopes_received_total",
            "Envelopes received from relays and accepted (verified), by kind.",
            &["kind"],
        )?;
        let dropped = r.counter_vec(
            "rmb_peer_envelopes_dropped_total",
            "Envelopes dropped instead of delivered, by reason.",
            &["reason"],
        )?;
        for reason in DropReason::ALL {
            dropped.with_label_values(&[reason.as_str()]);
        }
        for kind in ["request", "response", "error"] {
            sent.with_label_values(&[kind]);
            received.with_label_values(&[kind]);
        }
        Ok(Metrics {
            sent,
            received,
            dropped,
            timeouts: r.counter(
                "rmb_peer_request_timeouts_total",
                "Destinations that did not answer a request before it expired.",
            )?,
            invalid_documents: r.counter(
                "rmb_peer_invalid_documents_total",
                "Local JSON documents that could not be parsed or used.",
            )?,
            not_sent: r.counter(
                "rmb_peer_not_sent_total",
                "Payloads not sent (the caller got an error instead) because the destination \
                 could not be looked up in the twin directory or encrypted for.",
            )?,
            redis_errors: r.counter(
                "rmb_peer_redis_errors_total",
                "Failed commands to the local Redis.",
            )?,
            outbox: r.gauge(
                "rmb_peer_outbox_envelopes",
                "Envelopes waiting for a relay connection.",
            )?,
            pending: r.gauge(
                "rmb_peer_pending_requests",
                "Requests sent and waiting for answers.",
            )?,
            service_queue: r.histogram(
                "rmb_peer_service_queue_length",
                "Length of a service's msgbus.<cmd> list after each request pushed on it.",
                &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0],
            )?,
            relay_up: r.gauge_vec(
                "rmb_peer_relay_connected",
                "1 while a session with the relay is open.",
                &["relay"],
            )?,
            relay_connects: r.counter_vec(
                "rmb_peer_relay_connects_total",
                "Sessions opened with the relay.",
                &["relay"],
            )?,
            relay_disconnects: r.counter_vec(
                "rmb_peer_relay_disconnects_total",
                "Sessions lost or connection attempts failed, by reason.",
                &["relay", "reason"],
            )?,
            registry,
        })
    }

    pub(crate) fn sent(&self, kind: &str) {
        self.sent.with_label_values(&[kind]).inc();
    }

    pub(crate) fn received(&self, kind: &str) {
        self.received.with_label_values(&[kind]).inc();
    }

    pub(crate) fn drop_one(&self, reason: DropReason) {
        self.dropped.with_label_values(&[reason.as_str()]).inc();
    }

    pub(crate) fn relay_state(&self, relay: &str, up: bool) {
        self.relay_up.with_label_values(&[relay]).set(i64::from(up));
    }

    pub(crate) fn relay_connected(&self, relay: &str) {
        self.relay_connects.with_label_values(&[relay]).inc();
    }

    pub(crate) fn relay_lost(&self, relay: &str, why: Disconnect) {
        self.relay_disconnects
            .with_label_values(&[relay, why.as_str()])
            .inc();
    }

    /// Envelopes dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.with_label_values(&[reason.as_str()]).get()
    }

    /// Payloads refused before sending (directory lookup or encryption failed).
    pub fn not_sent_count(&self) -> u64 {
        self.not_sent.get()
    }

    /// Envelopes of `kind` (`request`, `response`, `error`, `ping`) written to relays.
    pub fn sent_count(&self, kind: &str) -> u64 {
        self.sent.with_label_values(&[kind]).get()
    }

    /// Envelopes of `kind` received and accepted.
    pub fn received_count(&self, kind: &str) -> u64 {
        self.received.with_label_values(&[kind]).get()
    }

    /// Destinations that timed out so far.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.get()
    }

    /// Sessions opened with `relay` (as configured) so far; all relays when `None`.
    pub fn relay_connects(&self, relay: Option<&str>) -> u64 {
        match relay {
            Some(r) => self
                .relay_connects
                .with_label_values(&[relay_label(r).as_str()])
                .get(),
            None => self
                .registry
                .gather()
                .iter()
                .filter(|f| f.name() == "rmb_peer_relay_connects_total")
                .flat_map(|f| f.get_metric().iter())
                .map(|m| m.get_counter().value() as u64)
                .sum(),
        }
    }

    /// Relays with an open session now.
    pub fn relays_connected(&self) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "rmb_peer_relay_connected")
            .flat_map(|f| f.get_metric().iter())
            .map(|m| m.get_gauge().value() as u64)
            .sum()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// A relay URL as shown in labels and logs: without credentials, query or trailing slash.
pub fn relay_label(url: &str) -> String {
    let url = url.trim().split(['?', '#']).next().unwrap_or_default();
    rmb_common::without_userinfo(url.trim_end_matches('/'))
}

/// Serves `GET /metrics` (and `/healthz`) on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection failed");
            }
        });
    }
}

fn answer(req: &Request<hyper::body::Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        ("GET", "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Binds `addr` and serves metrics there in the background until `cancel`; returns the
/// bound address.
pub async fn spawn_server(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, metrics, cancel));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_labels_hide_credentials_and_queries() {
        assert_eq!(
            relay_label("wss://user:secret@relay.example:443/?x"),
            "wss://relay.example:443"
        );
        assert_eq!(relay_label("ws://127.0.0.1:1/"), "ws://127.0.0.1:1");
    }

    #[test]
    fn every_drop_reason_is_exposed_from_the_start() {
        let m = Metrics::new().expect("valid metrics");
        m.drop_one(DropReason::Replayed);
        let text = m.render();
        for reason in DropReason::ALL {
            assert!(text.contains(&format!("reason=\"{}\"", reason.as_str())));
        }
        assert_eq!(m.dropped(DropReason::Replayed), 1);
    }
}
