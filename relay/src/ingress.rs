//! The federation ingress: the HTTP endpoints other relays call (`POST /federation/v1/envelopes`
//! and the legacy `POST /` of one raw envelope), built from tower layers so that each defence
//! is one layer, in the order a request meets them:
//!
//! 1. load shedding over a pod-wide concurrency limit (`--federation-max-inflight`): a flood
//!    gets 503 at once instead of queueing;
//! 2. header checks before the body: `Content-Length` present and within the request limit,
//!    the content type of the endpoint, and (legacy) the rate per client address;
//! 3. the handler: a connection slot for the request (so HTTP/2 streams count against
//!    `--max-connections`), the body read under a total deadline
//!    (`--federation-body-timeout-ms`), the legacy rate per source twin, then the federation
//!    checks of `rmb-federation`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use rmb_federation::auth::BATCH_CONTENT_TYPE;
use rmb_federation::{Federation, HttpAnswer};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use crate::config::FederationArgs;
use crate::limits::{HandshakeLimiter, KeyedLimiter};
use crate::server::{text, Body, Shared};

/// The two federation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /federation/v1/envelopes`: a signed batch.
    Batch,
    /// Legacy `POST /`: one raw envelope from a relay of the original implementation.
    Legacy,
}

/// Ingress state shared by every request of the pod.
pub(crate) struct Ingress {
    inflight: Arc<tokio::sync::Semaphore>,
    body_timeout: Duration,
    legacy_per_ip: HandshakeLimiter,
    legacy_per_twin: KeyedLimiter<u32>,
}

impl Ingress {
    pub(crate) fn new(config: &FederationArgs) -> Ingress {
        Ingress {
            inflight: Arc::new(tokio::sync::Semaphore::new(config.federation_max_inflight)),
            body_timeout: Duration::from_millis(config.federation_body_timeout_ms),
            legacy_per_ip: HandshakeLimiter::new(config.federation_legacy_rate_per_ip),
            legacy_per_twin: KeyedLimiter::new(config.federation_legacy_rate_per_twin),
        }
    }

    /// Forgets rate buckets that refilled (housekeeping).
    pub(crate) fn prune(&self) {
        self.legacy_per_ip.prune();
        self.legacy_per_twin.prune();
    }
}

/// A request turned away by a layer: status, metric reason, text for the caller.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: &'static str,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message)
    }
}

impl std::error::Error for Refusal {}

fn refuse(status: StatusCode, reason: &'static str, message: &'static str) -> BoxError {
    Box::new(Refusal {
        status,
        reason,
        message,
    })
}

/// Serves one federation request through the layers.
pub(crate) async fn serve(
    mut req: Request<Incoming>,
    endpoint: Endpoint,
    peer: SocketAddr,
    shared: Arc<Shared>,
    federation: Arc<Federation>,
) -> Response<Body> {
    req.extensions_mut().insert(peer);
    let limit = match endpoint {
        Endpoint::Batch => federation.max_request_bytes(),
        Endpoint::Legacy => shared.max_envelope_bytes,
    };
    let checks = shared.clone();
    let handler = shared.clone();
    let service = ServiceBuilder::new()
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(
            shared.ingress.inflight.clone(),
        ))
        .filter(move |req: Request<Incoming>| {
            check_headers(&req, endpoint, limit)?;
            if endpoint == Endpoint::Legacy && !checks.ingress.legacy_per_ip.allow(peer.ip()) {
                return Err(refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited_address",
                    "too many requests from this address; retry later",
                ));
            }
            Ok::<_, BoxError>(req)
        })
        .service_fn({
            let federation = federation.clone();
            move |req| handle(req, endpoint, limit, handler.clone(), federation.clone())
        });
    let answered: Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>> =
        Box::pin(service.oneshot(req));
    answered
        .await
        .unwrap_or_else(|e| refusal_response(&federation, e))
}

/// Header checks, before a byte of the body is read.
fn check_headers(
    req: &Request<Incoming>,
    endpoint: Endpoint,
    limit: usize,
) -> Result<(), BoxError> {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            refuse(
                StatusCode::LENGTH_REQUIRED,
                "missing_content_length",
                "a Content-Length header is required",
            )
        })?;
    if length > limit as u64 {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body too large",
        ));
    }
    let media_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim());
    if !content_type_fits(endpoint, media_type) {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "unsupported content type for this endpoint",
        ));
    }
    Ok(())
}

/// The batch endpoint takes its own media type only; the legacy endpoint takes raw protobuf
/// with or without a type (the original relay sends none).
fn content_type_fits(endpoint: Endpoint, media_type: Option<&str>) -> bool {
    let is = |expected: &str| media_type.is_some_and(|t| t.eq_ignore_ascii_case(expected));
    match endpoint {
        Endpoint::Batch => is(BATCH_CONTENT_TYPE),
        Endpoint::Legacy => {
            media_type.is_none() || is("application/x-protobuf") || is("application/octet-stream")
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    endpoint: Endpoint,
    limit: usize,
    shared: Arc<Shared>,
    federation: Arc<Federation>,
) -> Result<Response<Body>, BoxError> {
    // Each request, HTTP/2 streams included, holds a connection slot while it runs.
    let Some(_slot) = shared.connections.try_acquire() else {
        shared.metrics.limit(crate::metrics::Limit::Connections);
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection_limit",
            "relay is at its connection limit; retry later",
        ));
    };
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read_body(req, limit, shared.ingress.body_timeout).await?;
    let answer = match endpoint {
        Endpoint::Batch => {
            federation
                .handle_batch(&method, &path, authorization.as_deref(), body)
                .await
        }
        Endpoint::Legacy => {
            // The source twin is read (not yet trusted) to charge its rate before the
            // directory lookup and signature check the envelope costs.
            if let Ok(env) = rmb_proto::decode_envelope(&body, limit) {
                if !shared.ingress.legacy_per_twin.take(env.source_twin()) {
                    return Err(refuse(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited_twin",
                        "too many envelopes from this source twin; retry later",
                    ));
                }
            }
            federation.handle_legacy(body).await
        }
    };
    Ok(http_answer(answer))
}

/// Reads the whole body, at most `limit` bytes, within `deadline`.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BoxError> {
    use http_body_util::BodyExt;
    let collect = http_body_util::Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(deadline, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "federation request body refused");
            Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "request body too large or cut short",
            ))
        }
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "request body not received in time",
        )),
    }
}

fn http_answer(a: HttpAnswer) -> Response<Body> {
    let mut resp = Response::new(Body::from(a.body));
    *resp.status_mut() =
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    resp
}

/// The answer for a request a layer refused, counted by reason.
fn refusal_response(federation: &Federation, e: BoxError) -> Response<Body> {
    let (status, reason, message) = if let Some(r) = e.downcast_ref::<Refusal>() {
        (r.status, r.reason, r.message)
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "relay is busy with other federation requests; retry later",
        )
    } else {
        tracing::warn!(error = %e, "federation request failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; retry later",
        )
    };
    federation
        .metrics()
        .inbound_requests
        .with_label_values(&[reason])
        .inc();
    text(status, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_takes_its_own_content_types() {
        assert!(content_type_fits(Endpoint::Batch, Some(BATCH_CONTENT_TYPE)));
        assert!(!content_type_fits(Endpoint::Batch, None));
        assert!(!content_type_fits(Endpoint::Batch, Some("text/plain")));
        assert!(content_type_fits(Endpoint::Legacy, None));
        assert!(content_type_fits(
            Endpoint::Legacy,
            Some("application/x-protobuf")
        ));
        assert!(!content_type_fits(Endpoint::Legacy, Some("text/html")));
    }
}
