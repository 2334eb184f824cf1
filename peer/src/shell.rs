//! What both shells of the protocol core (the gateway and the SDK client) do alike: answer
//! its questions ([`drive`] over their [`Lookups`]), and carry out the actions that need only
//! a relay and the metrics ([`carry_out`]). Delivering requests and answers is theirs.

use std::future::Future;

use rmb_proto::{unix_now, Envelope};

use crate::metrics::{DropReason, Metrics};
use crate::protocol::{Action, Call, Lookup, Protocol, Step};

/// Carries out `action` where it needs only a relay (`send`) and the metrics: sends
/// envelopes, counts and logs refusals, drops and payloads not sent (sending the error answer
/// that replaces a reply). Returns what is left for the shell: deliveries, answers, and a
/// request not sent (the caller must learn why).
pub(crate) fn carry_out<C>(
    action: Action<C>,
    metrics: &Metrics,
    send: impl Fn(Envelope),
) -> Option<Action<C>> {
    match action {
        Action::Send(env) => send(env),
        Action::Refuse { reply, why } => {
            metrics.drop_one(why.drop_reason());
            tracing::warn!(
                uid = %reply.uid,
                twin = reply.destination_twin(),
                code = why.code(),
                reason = %why,
                "refusing a request"
            );
            send(reply);
        }
        Action::Drop(dropped) => {
            metrics.drop_one(dropped.reason);
            let (uid, twin, reason) = (&dropped.uid, dropped.twin, dropped.reason.as_str());
            match (&dropped.why, dropped.reason) {
                (Some(why), _) => {
                    tracing::warn!(uid, twin, reason, why = %why, "dropping an envelope")
                }
                (None, DropReason::Unsigned | DropReason::WrongSource) => {
                    tracing::warn!(uid, twin, reason, "dropping an envelope")
                }
                (None, _) => tracing::debug!(uid, twin, reason, "dropping an envelope"),
            }
        }
        Action::NotSent {
            uid,
            twin,
            why,
            instead: Some(error),
        } => {
            // A reply that cannot go out safely: the caller learns why instead.
            metrics.not_sent.inc();
            tracing::warn!(uid, twin, reason = %why, "not sending a reply");
            send(error);
        }
        Action::NotSent { uid, twin, why, .. } => {
            metrics.not_sent.inc();
            tracing::warn!(uid, twin, reason = %why, "not sending a request");
            return Some(Action::NotSent {
                uid,
                twin,
                why,
                instead: None,
            });
        }
        Action::Ignore => {}
        left @ (Action::Deliver(_) | Action::Answer(_)) => return Some(left),
    }
    None
}

/// The I/O a shell answers the core's questions with.
pub(crate) trait Lookups<C>: Sync {
    /// The directory's answer for `twin`.
    fn twin(&self, twin: u32) -> impl Future<Output = Lookup> + Send;
    /// A call of ours the core does not hold (from the gateway's backlog); `None`: no such
    /// call.
    fn call(&self, uid: &str) -> impl Future<Output = Option<Call<C>>> + Send;
}

/// Runs `step` to its action, answering the core's questions with `lookups`.
pub(crate) async fn drive<C: Clone>(
    protocol: &Protocol<C>,
    mut step: Step<C>,
    lookups: &impl Lookups<C>,
) -> Action<C> {
    loop {
        step = match step {
            Step::Done(action) => return action,
            Step::NeedTwin(twin, wait) => {
                let lookup = lookups.twin(twin).await;
                return protocol.with_twin(wait, lookup, unix_now());
            }
            Step::NeedCall(uid, wait) => {
                let call = lookups.call(&uid).await;
                protocol.with_call(wait, call, unix_now())
            }
        };
    }
}
