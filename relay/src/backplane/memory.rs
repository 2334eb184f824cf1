//! The embedded backplane: everything in this process. The default for a single relay; mail
//! for offline twins lives as long as the process does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Backplane, BackplaneError, Delivery, NotReady, Routed};
use crate::hub::{Attachment, Hub, Queued, Receipt};
use crate::key::SessionKey;

/// A backplane held in memory.
pub struct MemoryBackplane {
    hub: Arc<Hub>,
    draining: AtomicBool,
}

impl MemoryBackplane {
    /// A backplane over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBackplane {
            hub,
            draining: AtomicBool::new(false),
        }
    }
}

/// What a push refused as offline means while draining (it was pushed as fail-fast): the
/// relay cannot keep it, rather than the twin is offline.
fn while_draining(draining: bool, routed: Routed) -> Routed {
    match routed {
        Routed::Offline if draining => Routed::Draining,
        routed => routed,
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    async fn attach(&self, key: &SessionKey) -> Result<Attachment, BackplaneError> {
        Ok(self.hub.attach(key)?)
    }

    async fn detach(&self, att: Attachment, unconfirmed: Vec<Queued>) {
        self.hub.detach(&att, unconfirmed);
    }

    async fn route(
        &self,
        dest: &SessionKey,
        item: Queued,
        fail_fast: bool,
    ) -> Result<Routed, BackplaneError> {
        // While draining, mail for offline twins would die with the process: refuse it so the
        // sender knows, instead of accepting and losing it.
        let draining = self.draining.load(Ordering::Relaxed);
        Ok(while_draining(
            draining,
            self.hub.push(dest, item, fail_fast || draining),
        ))
    }

    async fn route_many(&self, deliveries: Vec<Delivery>) -> Vec<Result<Routed, BackplaneError>> {
        let draining = self.draining.load(Ordering::Relaxed);
        let entries = deliveries
            .into_iter()
            .map(|d| (d.dest, d.item, d.fail_fast || draining));
        self.hub
            .push_many(entries)
            .into_iter()
            .map(|routed| Ok(while_draining(draining, routed)))
            .collect()
    }

    async fn confirm(&self, _receipts: Vec<Receipt>) {}

    fn ready(&self) -> Result<(), NotReady> {
        Ok(())
    }

    fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn sweep(&self, now: u64) {
        self.hub.sweep(now);
    }
}
