//! What both shells of the protocol core (the gateway and the SDK client) do alike with its
//! actions: send, count and log. Delivering requests and answers is theirs.

use rmb_proto::Envelope;

use crate::metrics::{DropReason, Metrics};
use crate::protocol::Action;

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
