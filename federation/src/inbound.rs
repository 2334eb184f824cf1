//! Inbound federation: the link check (origin key, destination, timestamp window, replay,
//! body hash) and then every envelope on its own (twin signature, source, destination served
//! here), so one bad envelope never fails a batch.

use bytes::{Buf, Bytes};
use prost::Message as _;
use rmb_identity::DirectoryError;
use rmb_proto::{codes, Envelope, Kind};
use serde::Serialize;

use crate::auth::{body_hash, LinkAuth, ENDPOINT};
use crate::discovery::KeyLookupError;
use crate::{is_host_name, Delivered, Federation};

/// An HTTP answer for the relay's server to send.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Content type of `body`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpAnswer {
    fn json(status: u16, value: &impl Serialize) -> HttpAnswer {
        HttpAnswer {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    fn text(status: u16, text: String) -> HttpAnswer {
        HttpAnswer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{text}\n").into_bytes(),
        }
    }
}

/// The verdict on one envelope, as the batch response reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Verdict {
    /// Taken: the sender is done with it.
    Accepted,
    /// Refused for good: sending it again (here) cannot succeed.
    Refused {
        /// The RMB error code for the source.
        code: u32,
        /// A snake_case reason (also the metric label).
        reason: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// Not taken now; send it again later.
    Retry {
        /// A snake_case reason.
        reason: &'static str,
        /// Human-readable detail.
        message: String,
    },
}

impl Verdict {
    fn refused(code: u32, reason: &'static str, message: impl Into<String>) -> Verdict {
        Verdict::Refused {
            code,
            reason,
            message: message.into(),
        }
    }

    fn retry(reason: &'static str, message: impl Into<String>) -> Verdict {
        Verdict::Retry {
            reason,
            message: message.into(),
        }
    }

    fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Verdict::Accepted => ("accepted", "ok"),
            Verdict::Refused { reason, .. } => ("refused", reason),
            Verdict::Retry { reason, .. } => ("retry", reason),
        }
    }
}

#[derive(Serialize)]
struct BatchAnswer {
    results: Vec<Verdict>,
}

#[derive(Serialize)]
struct LinkRefusal<'a> {
    error: &'a str,
    message: String,
}

impl Federation {
    /// Handles `POST /federation/v1/envelopes`: checks the link, then each envelope.
    pub async fn handle_batch(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Bytes,
    ) -> HttpAnswer {
        let auth = match self.check_link(method, path, authorization, &body).await {
            Ok(auth) => auth,
            Err((status, reason, message)) => {
                self.metrics
                    .inbound_requests
                    .with_label_values(&[reason])
                    .inc();
                tracing::info!(reason, %message, "federation request refused");
                return HttpAnswer::json(
                    status,
                    &LinkRefusal {
                        error: reason,
                        message,
                    },
                );
            }
        };
        let frames = match split_batch(body, self.settings.max_batch_envelopes) {
            Ok(frames) => frames,
            Err(e) => {
                self.metrics
                    .inbound_requests
                    .with_label_values(&["malformed_body"])
                    .inc();
                return HttpAnswer::json(
                    400,
                    &LinkRefusal {
                        error: "malformed_body",
                        message: e.to_string(),
                    },
                );
            }
        };
        self.metrics
            .inbound_requests
            .with_label_values(&["ok"])
            .inc();
        let mut results = Vec::with_capacity(frames.len());
        for frame in frames {
            let verdict = self.accept_envelope(frame).await;
            if !matches!(verdict, Verdict::Accepted) {
                tracing::debug!(origin = %auth.origin, ?verdict, "federated envelope not accepted");
            }
            results.push(verdict);
        }
        HttpAnswer::json(200, &BatchAnswer { results })
    }

    /// Handles the legacy `POST /` of one raw envelope (relays of the existing
    /// implementation): no link signature, the same envelope checks.
    pub async fn handle_legacy(&self, body: Bytes) -> HttpAnswer {
        let verdict = self.accept_envelope(body).await;
        match verdict {
            Verdict::Accepted => HttpAnswer::text(202, "accepted".into()),
            Verdict::Refused {
                code,
                reason,
                message,
            } => HttpAnswer::text(400, format!("refused ({reason}, code {code}): {message}")),
            Verdict::Retry { reason, message } => {
                HttpAnswer::text(503, format!("retry later ({reason}): {message}"))
            }
        }
    }

    /// The link checks, in order; `Err` is (HTTP status, reason label, detail).
    async fn check_link(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<LinkAuth, (u16, &'static str, String)> {
        if path != ENDPOINT {
            return Err((
                404,
                "wrong_path",
                format!("no federation endpoint at {path}"),
            ));
        }
        let auth = LinkAuth::parse(authorization)
            .map_err(|e| (401, "malformed_authorization", e.to_string()))?;
        if !is_host_name(&auth.origin) {
            return Err((
                401,
                "malformed_authorization",
                "origin is not a host name".into(),
            ));
        }
        if !self.settings.domains.contains(&auth.destination) {
            return Err((
                421,
                "wrong_destination",
                format!(
                    "this relay serves {:?}, not {}",
                    self.settings.domains, auth.destination
                ),
            ));
        }
        if self.settings.domains.contains(&auth.origin) {
            return Err((
                401,
                "forged_origin",
                "origin is this relay's own domain".into(),
            ));
        }
        let now = rmb_proto::unix_now();
        if now.abs_diff(auth.ts) > self.settings.max_skew {
            return Err((
                401,
                "stale_timestamp",
                format!(
                    "timestamp {} is more than {}s from this relay's clock ({now})",
                    auth.ts, self.settings.max_skew
                ),
            ));
        }
        if body_hash(body) != auth.body_sha256 {
            return Err((
                401,
                "body_hash_mismatch",
                "body-sha256 does not match the body".into(),
            ));
        }
        // A replayed request is turned away before its key lookup and signature check: the
        // mark only exists for a request that verified, so this tells an attacker nothing.
        let mark = format!("link:{}:{}", auth.origin, auth.nonce);
        match self.store.seen(&mark).await {
            Ok(false) => {}
            Ok(true) => return Err((409, "replayed", "this request was already received".into())),
            Err(e) => return Err(store_unavailable(e)),
        }
        let public = match self.keys.key(&auth.origin, &auth.kid, auth.ts).await {
            Ok(key) => key,
            Err(e @ KeyLookupError::Unknown { .. }) => {
                return Err((401, "unknown_key", e.to_string()))
            }
            Err(e @ KeyLookupError::Unavailable { .. }) => {
                // The reason can name the addresses this relay dials: logged, not answered.
                tracing::info!(error = %e, "federation: origin key document unavailable");
                return Err((
                    503,
                    "key_unavailable",
                    "the origin's key document is unavailable; retry later".into(),
                ));
            }
        };
        if !auth.verify(method, path, &public) {
            return Err((
                401,
                "bad_signature",
                format!(
                    "signature does not verify with {}'s key {}",
                    auth.origin, auth.kid
                ),
            ));
        }
        // Only verified requests leave a mark, so nobody can poison the cache.
        let ttl_ms = (2 * self.settings.max_skew + 60) * 1000;
        match self.store.first_seen(&mark, ttl_ms).await {
            Ok(true) => Ok(auth),
            Ok(false) => Err((409, "replayed", "this request was already received".into())),
            Err(e) => Err(store_unavailable(e)),
        }
    }

    /// Every check on one envelope from another relay, then delivery.
    pub(crate) async fn accept_envelope(&self, frame: Bytes) -> Verdict {
        let verdict = self.check_and_deliver(frame).await;
        let (result, reason) = verdict.labels();
        self.metrics
            .inbound
            .with_label_values(&[result, reason])
            .inc();
        verdict
    }

    async fn check_and_deliver(&self, frame: Bytes) -> Verdict {
        let env = match rmb_proto::decode_envelope(&frame, self.settings.max_envelope_bytes) {
            Ok(env) => env,
            Err(e) => return Verdict::refused(codes::INVALID_MESSAGE, "malformed", e.to_string()),
        };
        let now = rmb_proto::unix_now();
        if let Err(v) = self.check_fields(&env, now) {
            return v;
        }
        let source = env.source_twin();
        // The same envelope again (a retry after a lost answer, or a replay) is answered as
        // before from its mark alone: no directory lookup, no signature check, no delivery.
        // The mark is set only once the signature verified, so a forgery cannot plant one.
        let mark = format!("env:{source}:{}", hex::encode(rmb_proto::challenge(&env)));
        match self.store.seen(&mark).await {
            Ok(false) => {}
            Ok(true) => return Verdict::Accepted,
            Err(e) => return store_retry(e),
        }
        let twin = match self.directory.twin(source).await {
            Ok(Some(twin)) => twin,
            Ok(None) => {
                return Verdict::refused(
                    codes::UNKNOWN_TWIN,
                    "unknown_source",
                    format!("unknown source twin {source}"),
                )
            }
            Err(e) => return directory_retry(e),
        };
        if let Err(e) = rmb_identity::verify_envelope(&env, &twin.account) {
            return Verdict::refused(
                codes::INVALID_SIGNATURE,
                "bad_signature",
                format!("envelope signature: {e}"),
            );
        }
        let dest_id = env.destination_twin();
        let dest = match self.directory.twin(dest_id).await {
            Ok(Some(twin)) => twin,
            Ok(None) => {
                return Verdict::refused(
                    codes::UNKNOWN_TWIN,
                    "unknown_destination",
                    format!("unknown destination twin {dest_id}"),
                )
            }
            Err(e) => return directory_retry(e),
        };
        // A twin the directory does not place here still gets it if it has a session here
        // (the original relay's local-session-first: a chain record not updated yet).
        let connected_only = !dest.served_by_any(&self.settings.domains);
        // Two copies racing past the check above: still delivered once.
        let ttl_ms = env.ttl_remaining(now).max(1) * 1000;
        match self.store.first_seen(&mark, ttl_ms).await {
            Ok(true) => {}
            Ok(false) => return Verdict::Accepted,
            Err(e) => return store_retry(e),
        }
        let (dest_twin, dest_sid) = env
            .destination
            .as_ref()
            .map(|a| (a.twin, a.connection.as_deref().filter(|s| !s.is_empty())))
            .unwrap_or((dest_id, None));
        let delivered = self
            .local
            .deliver(
                dest_twin,
                dest_sid,
                frame,
                env.expires_at(),
                connected_only || env.wants_fail_fast(),
            )
            .await;
        let verdict = match delivered {
            Delivered::Accepted => return Verdict::Accepted,
            Delivered::Offline if connected_only => Verdict::refused(
                codes::NOT_SERVED,
                "not_served",
                format!(
                    "twin {dest_id} is served by {:?}, not by {:?}",
                    dest.relays, self.settings.domains
                ),
            ),
            Delivered::Offline => Verdict::refused(
                codes::DESTINATION_OFFLINE,
                "offline",
                format!("destination twin {dest_twin} is offline (fail-fast)"),
            ),
            Delivered::Full => Verdict::retry(
                "mailbox_full",
                format!("mailbox of twin {dest_twin} is full"),
            ),
            Delivered::Unavailable(e) => {
                tracing::warn!(error = %e, "federation: local delivery unavailable");
                Verdict::retry("unavailable", "relay unavailable; retry later")
            }
        };
        // Not delivered: a later attempt must not be taken for a duplicate.
        let _ = self.store.unsee(&mark).await;
        verdict
    }

    fn check_fields(&self, env: &Envelope, now: u64) -> Result<(), Verdict> {
        match env.kind() {
            Kind::Empty => {
                return Err(Verdict::refused(
                    codes::INVALID_MESSAGE,
                    "no_message",
                    "envelope carries no message",
                ))
            }
            Kind::Ping | Kind::Pong => {
                return Err(Verdict::refused(
                    codes::INVALID_MESSAGE,
                    "ping",
                    "envelope pings are answered by the sender's own relay",
                ))
            }
            _ => {}
        }
        if env.is_expired(now) {
            return Err(Verdict::refused(
                codes::VALIDATION,
                "expired",
                format!("envelope expired at {}", env.expires_at()),
            ));
        }
        if env.ttl_remaining(now) > self.settings.max_ttl {
            return Err(Verdict::refused(
                codes::VALIDATION,
                "ttl",
                format!("time to live exceeds {}s", self.settings.max_ttl),
            ));
        }
        if env.source_twin() == 0 {
            return Err(Verdict::refused(
                codes::INVALID_MESSAGE,
                "source_twin_zero",
                "envelopes from twin 0 are not accepted over federation",
            ));
        }
        if env.signature.as_ref().is_none_or(|s| s.is_empty()) {
            return Err(Verdict::refused(
                codes::INVALID_SIGNATURE,
                "unsigned",
                "unsigned envelopes are not accepted over federation",
            ));
        }
        if env.destination_twin() == 0 {
            return Err(Verdict::refused(
                codes::INVALID_MESSAGE,
                "no_destination",
                "envelope has no destination twin",
            ));
        }
        Ok(())
    }
}

fn directory_retry(e: DirectoryError) -> Verdict {
    tracing::warn!(error = %e, "federation: twin directory unavailable");
    Verdict::retry(
        "directory_unavailable",
        "twin directory unavailable; retry later",
    )
}

/// The store is internal: its error (hosts, ports) goes to the log, not to the caller.
fn store_retry(e: crate::StoreError) -> Verdict {
    tracing::warn!(error = %e, "federation: store unavailable");
    Verdict::retry("store_unavailable", "relay store unavailable; retry later")
}

fn store_unavailable(e: crate::StoreError) -> (u16, &'static str, String) {
    tracing::warn!(error = %e, "federation: store unavailable");
    (
        503,
        "store_unavailable",
        "relay store unavailable; retry later".into(),
    )
}

/// Why a batch body cannot be split into envelopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed batch body: {0}")]
pub struct BatchError(String);

/// Splits a batch body: envelopes, each prefixed by its length as a protobuf varint. More
/// than `max_envelopes` is refused as a whole, before anything is checked: the answer holds
/// one verdict per envelope, and 16 MiB of empty frames must not become millions of them.
pub fn split_batch(mut body: Bytes, max_envelopes: usize) -> Result<Vec<Bytes>, BatchError> {
    let mut frames = Vec::new();
    while body.has_remaining() {
        if frames.len() >= max_envelopes {
            return Err(BatchError(format!(
                "more than {max_envelopes} envelopes in one request"
            )));
        }
        let len = prost::encoding::decode_varint(&mut body)
            .map_err(|e| BatchError(format!("bad length prefix: {e}")))?;
        let len = usize::try_from(len).map_err(|_| BatchError("length prefix too large".into()))?;
        if len > body.remaining() {
            return Err(BatchError(format!(
                "envelope of {len} bytes runs past the end of the body"
            )));
        }
        frames.push(body.split_to(len));
    }
    Ok(frames)
}

/// Builds a batch body from envelope frames.
pub(crate) fn join_batch<'a>(frames: impl Iterator<Item = &'a Bytes>) -> Bytes {
    let mut out = Vec::new();
    for frame in frames {
        prost::encoding::encode_varint(frame.len() as u64, &mut out);
        out.extend_from_slice(frame);
    }
    Bytes::from(out)
}

/// A batch body from decoded envelopes (for tools and tests that build requests by hand).
pub fn encode_batch(envelopes: &[Envelope]) -> Bytes {
    let frames: Vec<Bytes> = envelopes
        .iter()
        .map(|e| Bytes::from(e.encode_to_vec()))
        .collect();
    join_batch(frames.iter())
}
