//! RMB identities.
//!
//! Everything that proves who a twin is: keys derived from a mnemonic, the prefixed signatures
//! over envelopes and session tokens, end-to-end encryption between twins, and the directory
//! that maps twin ids to their on-chain keys and relays.

pub mod directory;
pub mod e2e;
pub mod jwt;
pub mod keys;
pub mod signature;
pub mod twin;

pub use directory::{
    CacheSettings, CachedDirectory, DirectoryError, FileDirectory, TwinDirectory, TwinsFileError,
};
pub use e2e::{CryptoError, SharedKey};
pub use jwt::{issue_token, Claims, SessionToken, TokenError, TokenPolicy};
pub use keys::{parse_account_key, ss58_address, Identity, KeyError, KeyType, Signer};
pub use signature::{sign_envelope, verify_envelope, verify_prefixed, SignatureError};
pub use twin::Twin;
