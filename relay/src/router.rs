//! Routing one envelope a session sent: check it, answer it, or hand it to the backplane.
//!
//! Every refusal becomes an error envelope to the sender with the same uid, a distinct code
//! and message, and a metric. Only an undecodable frame is fatal to the session.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message as _;
use rmb_identity::{DirectoryError, Twin, TwinDirectory};
use rmb_proto::{codes, Envelope, Kind, RouteEnvelope};

use crate::backplane::{Backplane, BackplaneError, Delivery, Routed};
use crate::hub::{Hub, Queued, Receipt};
use crate::key::SessionKey;
use crate::limits::{RateExceeded, TwinRate};
use crate::metrics::{Limit, Metrics, Outcome, ReceivedTally};
use tracing::Instrument as _;

/// TTL of the error envelopes the relay sends.
const REPLY_TTL: u64 = 300;

/// Routes envelopes from sessions.
pub struct Router {
    backplane: Arc<dyn Backplane>,
    /// This pod's sessions: a local session of the destination is served first.
    local: Arc<Hub>,
    directory: Arc<dyn TwinDirectory>,
    domains: Vec<String>,
    max_ttl: u64,
    max_envelope_bytes: usize,
    metrics: Arc<Metrics>,
    federation: Option<Arc<rmb_federation::Federation>>,
}

/// The result of handling one frame.
#[derive(Debug)]
pub struct Handled {
    /// What happened, for metrics and tests.
    pub outcome: Outcome,
    /// A frame to send back to the sender (error or pong), if any.
    pub reply: Option<Bytes>,
}

/// The tracing target of the per-envelope span (`rmb.route`).
pub const ROUTE_SPAN_TARGET: &str = "rmb_relay::route";

/// What the router checks envelopes against.
pub struct RouterSettings {
    /// Our relay domains, lowercase. With none, every twin the directory knows is served
    /// here.
    pub domains: Vec<String>,
    /// Longest time to live an envelope may ask for, in seconds.
    pub max_ttl: u64,
    /// Largest envelope accepted.
    pub max_envelope_bytes: usize,
}

impl Router {
    /// A router over a backplane and a twin directory.
    pub fn new(
        settings: RouterSettings,
        backplane: Arc<dyn Backplane>,
        local: Arc<Hub>,
        directory: Arc<dyn TwinDirectory>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let RouterSettings {
            domains,
            max_ttl,
            max_envelope_bytes,
        } = settings;
        Router {
            backplane,
            local,
            directory,
            domains,
            max_ttl,
            max_envelope_bytes,
            metrics,
            federation: None,
        }
    }

    /// Envelopes for twins served by other relays go to `federation` instead of being
    /// refused as not served here.
    pub fn with_federation(mut self, federation: Option<Arc<rmb_federation::Federation>>) -> Self {
        self.federation = federation;
        self
    }

    /// Handles frames the session `from` sent, in order, routing the envelopes among them
    /// together: entries for one destination are stored in the order sent, and every answer
    /// (an error, or a pong) is given only once all envelopes before it are stored. Stops at
    /// the first frame that is not an envelope: the session must then be closed.
    pub async fn handle_many(
        &self,
        from: &SessionKey,
        rate: &TwinRate,
        frames: Vec<Bytes>,
        now: u64,
    ) -> HandledBatch {
        let mut steps = Vec::with_capacity(frames.len());
        let mut batch = BatchState::new(now);
        let mut malformed = None;
        for frame in frames {
            let env = match rmb_proto::decode_for_routing(&frame, self.max_envelope_bytes) {
                Ok(env) => env,
                Err(e) => {
                    self.metrics.malformed.inc();
                    malformed = Some(e);
                    break;
                }
            };
            let frame_len = frame.len() as u64;
            // Debug level: free unless logs or trace export ask for it (the binary's exporter
            // takes the relay's debug spans, see `telemetry.rs`).
            let span = tracing::debug_span!(
                target: ROUTE_SPAN_TARGET,
                "rmb.route",
                otel.kind = "server",
                rmb.source_twin = env.source_twin(),
                rmb.destination_twin = env.destination_twin(),
                rmb.kind = env.kind().as_str(),
                rmb.outcome = tracing::field::Empty,
            );
            let step = self
                .check_and_route(from, rate, &env, frame, &mut batch)
                .instrument(span.clone())
                .await;
            steps.push((env, span, frame_len, step));
        }
        let mut routed = batch.queue.flush_all(self.backplane.as_ref()).await;
        let mut tally = ReceivedTally::default();
        let handled = steps
            .into_iter()
            .map(|(env, span, frame_len, step)| {
                let result = match step {
                    Step::Decided(result) => result,
                    Step::Queued(at, dest) => self.delivered(&dest, routed.take(at)),
                };
                let handled = self.answer(from, env, span, result, now);
                tally.count(handled.outcome, frame_len);
                handled
            })
            .collect();
        self.metrics.received_batch(&tally);
        HandledBatch { handled, malformed }
    }

    /// The answer to one envelope, recorded on its span.
    fn answer(
        &self,
        from: &SessionKey,
        env: RouteEnvelope,
        span: tracing::Span,
        result: Result<Outcome, Refusal>,
        now: u64,
    ) -> Handled {
        let _entered = span.enter();
        let handled = match result {
            Ok(outcome) => Handled {
                outcome,
                reply: None,
            },
            Err(Refusal::Pong) => Handled {
                outcome: Outcome::Pong,
                reply: Some(pong(&env, now)),
            },
            Err(Refusal::Error(outcome, code, message)) => {
                tracing::debug!(session = %from, uid = %env.uid, code, %message, "envelope refused");
                Handled {
                    outcome,
                    reply: Some(error_reply(&env.uid, from, code, message, now)),
                }
            }
        };
        span.record("rmb.outcome", handled.outcome.as_str());
        handled
    }

    /// Checks an envelope and decides its route. An envelope for a twin served here joins
    /// the batch's queue, routed with the rest of the batch; any other backplane or
    /// federation step first routes what the queue holds, so a destination's entries keep
    /// their order.
    async fn check_and_route(
        &self,
        from: &SessionKey,
        rate: &TwinRate,
        env: &RouteEnvelope,
        frame: Bytes,
        batch: &mut BatchState,
    ) -> Step {
        let dest = match self.check(from, rate, env, frame.len(), batch) {
            Ok(dest) => dest,
            Err(refusal) => return Step::Decided(Err(refusal)),
        };
        let item = Queued {
            frame: frame.clone(),
            expires_at: env.expires_at(),
            accepted: batch.clock,
            receipt: Receipt::Local,
        };
        let queue = &mut batch.queue;
        // Local session first, as the original relay: a session of the destination on this
        // pod gets it whatever the directory says of the twin's relays.
        let known_local = batch.local_dest.as_ref() == Some(&dest);
        if !known_local && self.local.is_online(&dest) {
            batch.local_dest = Some(dest.clone());
        } else if !known_local {
            match self.destination(dest.twin).await {
                Ok(Destination::Here) => {}
                // A twin the directory does not know cannot have authenticated a session.
                Err(refusal) if refusal.is(Outcome::UnknownTwin) => {
                    return Step::Decided(Err(refusal))
                }
                // Not ours by the directory, or it cannot tell: a session anywhere in the
                // cluster still counts as local; only without one is the directory followed.
                found => {
                    queue.flush(self.backplane.as_ref()).await;
                    if let Ok(Routed::Online) =
                        self.backplane.route(&dest, item.clone(), true).await
                    {
                        return Step::Decided(Ok(Outcome::Online));
                    }
                    match found {
                        Ok(Destination::Elsewhere(twin)) => {
                            return Step::Decided(self.federate(&twin, env, frame).await)
                        }
                        Err(refusal) => return Step::Decided(Err(refusal)),
                        Ok(Destination::Here) => {}
                    }
                }
            }
        }
        let fail_fast = env.wants_fail_fast();
        let at = queue.push(Delivery {
            dest: dest.clone(),
            item,
            fail_fast,
        });
        Step::Queued(at, dest)
    }

    /// The checks every envelope passes before it is routed; its destination if it does.
    fn check(
        &self,
        from: &SessionKey,
        rate: &TwinRate,
        env: &RouteEnvelope,
        frame_len: usize,
        batch: &BatchState,
    ) -> Result<SessionKey, Refusal> {
        if let Err(which) = rate.take(frame_len, batch.clock) {
            let (limit, what) = match which {
                RateExceeded::Messages => (Limit::RateMessages, "envelopes"),
                RateExceeded::Bytes => (Limit::RateBytes, "bytes"),
            };
            self.metrics.limit(limit);
            return Err(Refusal::Error(
                Outcome::RateLimited,
                codes::RATE_LIMITED,
                format!("rate limit exceeded: too many {what} per second"),
            ));
        }
        if !from.matches(env.source.as_ref()) {
            return Err(Refusal::Error(
                Outcome::Spoofed,
                codes::SOURCE_MISMATCH,
                format!("envelope source does not match the session {from}"),
            ));
        }
        if env.kind() == Kind::Ping {
            return Err(Refusal::Pong);
        }
        self.check_envelope(env, batch.now)?;
        let dest = env
            .destination
            .as_ref()
            .map(SessionKey::from_address)
            .ok_or_else(|| invalid_message("envelope has no destination"))?;
        if dest.twin == 0 {
            return Err(invalid_message("envelope has no destination twin"));
        }
        Ok(dest)
    }

    /// What a backplane's answer for an envelope to a twin served here means for its sender.
    fn delivered(
        &self,
        dest: &SessionKey,
        routed: Result<Routed, BackplaneError>,
    ) -> Result<Outcome, Refusal> {
        let routed = routed.map_err(|e| unavailable(e.to_string()))?;
        match routed {
            Routed::Online => Ok(Outcome::Online),
            Routed::Mailbox => Ok(Outcome::Mailbox),
            Routed::Offline => Err(Refusal::Error(
                Outcome::Offline,
                codes::DESTINATION_OFFLINE,
                format!("destination {dest} is offline (fail-fast)"),
            )),
            Routed::MailboxFull => {
                self.metrics.limit(Limit::Mailbox);
                Err(Refusal::Error(
                    Outcome::MailboxFull,
                    codes::MAILBOX_FULL,
                    format!("mailbox of twin {} is full", dest.twin),
                ))
            }
            Routed::OverBudget(budget) => {
                self.metrics.limit(budget.into());
                Err(Refusal::Error(
                    Outcome::MailboxFull,
                    codes::MAILBOX_FULL,
                    budget.describe(dest.twin),
                ))
            }
            Routed::Draining => Err(unavailable(
                "relay is shutting down; send again through another relay".into(),
            )),
        }
    }

    fn check_envelope(&self, env: &RouteEnvelope, now: u64) -> Result<(), Refusal> {
        if env.kind() == Kind::Empty {
            return Err(invalid_message("envelope carries no message"));
        }
        if env.is_expired(now) {
            return Err(Refusal::Error(
                Outcome::Invalid,
                codes::VALIDATION,
                format!("envelope expired at {}", env.expires_at()),
            ));
        }
        if env.ttl_remaining(now) > self.max_ttl {
            self.metrics.limit(Limit::Ttl);
            return Err(Refusal::Error(
                Outcome::Invalid,
                codes::VALIDATION,
                format!("time to live exceeds the relay's cap of {}s", self.max_ttl),
            ));
        }
        Ok(())
    }

    /// Hands an envelope for a twin served elsewhere to the federation queues.
    async fn federate(
        &self,
        twin: &Twin,
        env: &RouteEnvelope,
        frame: Bytes,
    ) -> Result<Outcome, Refusal> {
        let not_served = |why: String| {
            Refusal::Error(
                Outcome::NotServed,
                codes::NOT_SERVED,
                format!("twin {} {why}", twin.id),
            )
        };
        let Some(federation) = &self.federation else {
            return Err(not_served(format!(
                "is served by relays {:?}, not this relay (federation is off)",
                twin.relays
            )));
        };
        if env.signature.as_ref().is_none_or(|s| s.is_empty()) {
            return Err(Refusal::Error(
                Outcome::Invalid,
                codes::INVALID_SIGNATURE,
                "unsigned envelopes cannot be sent to another relay".into(),
            ));
        }
        match federation.enqueue(twin, frame, env.expires_at()).await {
            Ok(()) => Ok(Outcome::Federated),
            Err(rmb_federation::EnqueueError::NoRelay(_)) => Err(not_served(
                "is not connected and lists no relay to reach it through".into(),
            )),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// Where the directory says twin `twin_id` is served.
    async fn destination(&self, twin_id: u32) -> Result<Destination, Refusal> {
        let twin = match self.directory.twin(twin_id).await {
            Ok(Some(twin)) => twin,
            Ok(None) => {
                return Err(Refusal::Error(
                    Outcome::UnknownTwin,
                    codes::UNKNOWN_TWIN,
                    format!("unknown destination twin {twin_id}"),
                ))
            }
            Err(DirectoryError::Unavailable(e) | DirectoryError::InvalidData(e)) => {
                return Err(unavailable(format!("twin directory: {e}")))
            }
        };
        if self.domains.is_empty() || twin.served_by_any(&self.domains) {
            Ok(Destination::Here)
        } else {
            Ok(Destination::Elsewhere(twin))
        }
    }
}

/// The frames of one read, handled: an answer per envelope, in order, up to the first frame
/// that was not an envelope.
#[derive(Debug)]
pub struct HandledBatch {
    /// One per envelope handled.
    pub handled: Vec<Handled>,
    /// Why the frame after the last handled one could not be read, if one could not.
    pub malformed: Option<rmb_proto::DecodeError>,
}

/// What became of one envelope of a batch while the batch is handled.
enum Step {
    /// Answered or routed already.
    Decided(Result<Outcome, Refusal>),
    /// Waiting in the batch's [`DeliveryQueue`] at this place, for this destination.
    Queued(usize, SessionKey),
}

/// What the envelopes of one batch share while it is checked and routed.
struct BatchState {
    /// Unix seconds, for expiry.
    now: u64,
    /// The clock read once for the batch: rate buckets and routing latency.
    clock: Instant,
    queue: DeliveryQueue,
    /// The last destination found to have a session on this pod: a batch mostly goes to
    /// one destination, and its later envelopes need not look again (a session that leaves
    /// meanwhile gets them in its mailbox, as it would a moment later).
    local_dest: Option<SessionKey>,
}

impl BatchState {
    fn new(now: u64) -> BatchState {
        BatchState {
            now,
            clock: Instant::now(),
            queue: DeliveryQueue::default(),
            local_dest: None,
        }
    }
}

/// Envelopes of one batch for twins served here, routed together by the backplane.
#[derive(Default)]
struct DeliveryQueue {
    waiting: Vec<Delivery>,
    routed: Vec<Option<Result<Routed, BackplaneError>>>,
}

impl DeliveryQueue {
    /// Adds a delivery; its place, to take its result by once routed.
    fn push(&mut self, delivery: Delivery) -> usize {
        self.waiting.push(delivery);
        self.routed.len() + self.waiting.len() - 1
    }

    /// Routes what waits, in order.
    async fn flush(&mut self, backplane: &dyn Backplane) {
        if self.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting);
        let count = waiting.len();
        let mut routed = backplane.route_many(waiting).await;
        // One result per delivery, whatever the backplane returned.
        routed.resize_with(count, || {
            Err(BackplaneError::Unavailable("route dropped".into()))
        });
        self.routed.extend(routed.into_iter().map(Some));
    }

    /// Routes what waits; the results by place.
    async fn flush_all(mut self, backplane: &dyn Backplane) -> RoutedResults {
        self.flush(backplane).await;
        RoutedResults(self.routed)
    }
}

/// The backplane's answers for a [`DeliveryQueue`], by place.
struct RoutedResults(Vec<Option<Result<Routed, BackplaneError>>>);

impl RoutedResults {
    fn take(&mut self, at: usize) -> Result<Routed, BackplaneError> {
        self.0
            .get_mut(at)
            .and_then(Option::take)
            .unwrap_or_else(|| Err(BackplaneError::Unavailable("route dropped".into())))
    }
}

/// Where a destination twin is served, by the directory.
enum Destination {
    /// By this relay (one of its domains, or it serves every twin).
    Here,
    /// By other relays only.
    Elsewhere(Arc<Twin>),
}

/// Why an envelope was answered by the relay instead of routed.
enum Refusal {
    /// A ping: answered with a pong.
    Pong,
    /// Refused with an error envelope.
    Error(Outcome, u32, String),
}

impl Refusal {
    fn is(&self, outcome: Outcome) -> bool {
        matches!(self, Refusal::Error(o, ..) if *o == outcome)
    }
}

fn invalid_message(message: &str) -> Refusal {
    Refusal::Error(
        Outcome::Invalid,
        codes::INVALID_MESSAGE,
        message.to_string(),
    )
}

fn unavailable(message: String) -> Refusal {
    Refusal::Error(Outcome::Unavailable, codes::UNAVAILABLE, message)
}

/// The relay's answer to an envelope ping: a pong with the same uid, back to the sender.
fn pong(ping: &RouteEnvelope, now: u64) -> Bytes {
    Bytes::from(Envelope::pong_for(&ping.to_wire(), now, REPLY_TTL).encode_to_vec())
}

/// An error envelope from the relay. Like the existing relay's, it has no source: peers
/// accept unsigned errors only from the relay they are connected to.
pub fn error_reply(uid: &str, to: &SessionKey, code: u32, message: String, now: u64) -> Bytes {
    let env = Envelope::error(
        uid.to_string(),
        Some(to.to_address()),
        code,
        message,
        now,
        REPLY_TTL,
    );
    Bytes::from(env.encode_to_vec())
}
