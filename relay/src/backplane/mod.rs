//! The backplane: where envelopes wait and how they reach the pod that holds their session.
//!
//! `memory` keeps everything in this process (one relay, no Redis). `redis` shares session
//! ownership, inboxes and mailboxes through Redis so any number of pods act as one relay.
//! The node (the relay process) owns the [`Hub`], one queue per session key on this pod, and
//! hands it to the backplane it opens: the backplane decides ownership and routing and pushes
//! entries that reach this pod (from its own inbox, a durable mailbox) into the hub, its one
//! callback into the node. Sessions drain their queue through the [`Attachment`] that
//! [`Backplane::attach`] returns; nothing outside a backplane reaches its internals, and the
//! backplane hands none of them out.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

#[cfg(doc)]
use crate::hub::Hub;
pub use crate::hub::Routed;
use crate::hub::{AttachError, Attachment, Queued, Receipt};
use crate::key::SessionKey;

pub use memory::MemoryBackplane;
pub use redis::{RedisBackplane, RedisSettings};

/// A backplane failure; the envelope was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackplaneError {
    /// The session could not attach.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The shared store cannot be reached now.
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    /// The shared store lacks something the backplane needs (a too old Redis).
    #[error("backplane unsupported: {0}")]
    Unsupported(String),
}

/// Why a session token was not admitted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmitError {
    /// A newer token was already admitted for the session key.
    #[error(transparent)]
    Stale(#[from] crate::freshness::StaleToken),
    /// The shared record could not be read.
    #[error(transparent)]
    Unavailable(#[from] BackplaneError),
}

/// Why the relay cannot take traffic now: the body of a 503 from `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The relay is draining.
    #[error("draining")]
    Draining,
    /// Our own delivery probe has not come back through the pod's inbox for a while.
    #[error(
        "redis: no delivery probe through the inbox for {seconds}s{}",
        .last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )]
    NoProbe {
        /// Seconds since the probe last came back.
        seconds: u64,
        /// The last Redis error seen, if any.
        last_error: Option<String>,
    },
}

/// One envelope to route: what [`Backplane::route`] takes, for [`Backplane::route_many`].
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its destination session key.
    pub dest: SessionKey,
    /// The envelope.
    pub item: Queued,
    /// Refuse rather than keep it in a mailbox when the destination is offline.
    pub fail_fast: bool,
}

/// The seam between sessions and shared state.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Claims `key` for a new session on this pod, evicting any older session with the same
    /// key (cluster-wide where the backplane is shared). The attachment is the session's
    /// handle on its queue in the node's hub.
    async fn attach(&self, key: &SessionKey) -> Result<Attachment, BackplaneError>;

    /// Token freshness shared by every pod: refuses a token for `key` issued (`iat`) before
    /// the newest one admitted for it anywhere, remembering the newest for `keep_secs`. The
    /// node checks its own record first; a backplane local to one process has nothing to add.
    async fn admit_token(
        &self,
        _key: &SessionKey,
        _iat: u64,
        _keep_secs: u64,
    ) -> Result<(), AdmitError> {
        Ok(())
    }

    /// Ends a session; entries it did not get confirmed stay queued for the next one.
    async fn detach(&self, att: Attachment, unconfirmed: Vec<Queued>);

    /// Routes an envelope to `dest`, connected anywhere or not at all.
    async fn route(
        &self,
        dest: &SessionKey,
        item: Queued,
        fail_fast: bool,
    ) -> Result<Routed, BackplaneError>;

    /// Routes envelopes one session sent, in the order given: entries for the same
    /// destination are stored in that order. One result per delivery, in the same order. The
    /// default routes them one after another; a shared backplane issues them together.
    async fn route_many(&self, deliveries: Vec<Delivery>) -> Vec<Result<Routed, BackplaneError>> {
        let mut routed = Vec::with_capacity(deliveries.len());
        for Delivery {
            dest,
            item,
            fail_fast,
        } in deliveries
        {
            routed.push(self.route(&dest, item, fail_fast).await);
        }
        routed
    }

    /// Loads the next page of the session's durable mailbox into its hub backlog, from
    /// `cursor`. Backplanes without a durable mailbox never ask for it.
    async fn refill(&self, _att: &Attachment, _cursor: Arc<str>) {}

    /// The peer confirmed receipt of these entries.
    async fn confirm(&self, receipts: Vec<Receipt>);

    /// Whether the backplane can take traffic (for `/readyz`), with a reason when not.
    fn ready(&self) -> Result<(), NotReady>;

    /// The relay started draining: refuse what cannot outlive this process.
    fn begin_drain(&self);

    /// Envelopes waiting in mailboxes of disconnected twins, when the backplane keeps them
    /// outside this process (`None`: the local hub's count is the answer).
    fn mailbox_depth(&self) -> Option<u64> {
        None
    }

    /// Periodic housekeeping (expiry).
    fn sweep(&self, now: u64);

    /// The relay is about to exit: hand remaining work to other pods.
    async fn shutdown(&self) {}
}
