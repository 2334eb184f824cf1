//! Where twins are looked up: the chain in production, a file in private deployments and
//! tests, and a cache in front of either.

mod cache;
mod file;
#[cfg(feature = "substrate")]
mod substrate;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use cache::{CacheSettings, CacheStats, CachedDirectory};
pub use file::{FileDirectory, TwinsFileError};
#[cfg(feature = "substrate")]
pub use substrate::{SubstrateDirectory, SubstrateSettings, SubstrateStats, TwinPublication};

use crate::twin::Twin;

/// Why a lookup could not be answered. "Not found" is not an error: it is `Ok(None)`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    /// The backing store cannot be reached now; the caller should retry later (HTTP 503),
    /// not treat the twin as unknown (HTTP 401).
    #[error("twin directory unavailable: {0}")]
    Unavailable(String),
    /// The store answered with data we cannot decode.
    #[error("twin directory returned invalid data: {0}")]
    InvalidData(String),
}

/// A change notice: the twin with this id may have changed; `None` means "anything may have".
pub type TwinChange = Option<u32>;

/// Looks twins up by id or account. The seam between the relay/peer and identity storage.
#[async_trait]
pub trait TwinDirectory: Send + Sync + 'static {
    /// The twin with `id`, or `None` if it does not exist.
    async fn twin(&self, id: u32) -> Result<Option<Arc<Twin>>, DirectoryError>;

    /// The id of the twin whose account key is `account`, or `None`.
    async fn twin_id_by_account(&self, account: &[u8; 32]) -> Result<Option<u32>, DirectoryError>;

    /// A stream of change notices, for caches to invalidate; `None` if the source never
    /// changes or cannot tell.
    fn changes(&self) -> Option<broadcast::Receiver<TwinChange>> {
        None
    }
}

#[async_trait]
impl<T: TwinDirectory + ?Sized> TwinDirectory for Arc<T> {
    async fn twin(&self, id: u32) -> Result<Option<Arc<Twin>>, DirectoryError> {
        (**self).twin(id).await
    }

    async fn twin_id_by_account(&self, account: &[u8; 32]) -> Result<Option<u32>, DirectoryError> {
        (**self).twin_id_by_account(account).await
    }

    fn changes(&self) -> Option<broadcast::Receiver<TwinChange>> {
        (**self).changes()
    }
}
