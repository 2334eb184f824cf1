//! Why an envelope from another twin is refused, or why a payload cannot be sent.

use rmb_identity::DirectoryError;
use rmb_proto::codes;

use crate::metrics::DropReason;

/// Why an envelope from another twin is refused, or why a payload cannot be sent: the
/// error codes and texts of the original `rmb-peer`, sent back to the twin that sent a
/// refused request, and to a local caller whose request could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The envelope expired (102).
    #[error("envelope validation error: {0}")]
    Validation(String),
    /// The directory knows no such twin (103).
    #[error("unknown twin id '{0}'")]
    UnknownTwin(u32),
    /// The envelope carries no signature (104).
    #[error("invalid envelope signature: message is not signed")]
    Unsigned,
    /// The signature does not verify against the twin's account key (104).
    #[error("invalid envelope signature: {0}")]
    InvalidSignature(String),
    /// A cipher payload from a twin that publishes no encryption key (105).
    #[error("sender twin has no public key")]
    NoPublicKey,
    /// Encryption or decryption failed (106).
    #[error("e2e error: {0}")]
    Crypto(String),
    /// The directory could not be asked (500).
    #[error("other: failed to get twin {twin} information: {reason}")]
    Directory {
        /// The twin looked up.
        twin: u32,
        /// What failed.
        reason: String,
    },
}

impl ProtocolError {
    /// The error code sent with it.
    pub fn code(&self) -> u32 {
        match self {
            ProtocolError::Validation(_) => codes::VALIDATION,
            ProtocolError::UnknownTwin(_) => codes::UNKNOWN_TWIN,
            ProtocolError::Unsigned | ProtocolError::InvalidSignature(_) => {
                codes::INVALID_SIGNATURE
            }
            ProtocolError::NoPublicKey => codes::NO_PUBLIC_KEY,
            ProtocolError::Crypto(_) => codes::CRYPTO,
            ProtocolError::Directory { .. } => codes::OTHER,
        }
    }

    /// How a refused incoming envelope is counted.
    pub fn drop_reason(&self) -> DropReason {
        match self {
            ProtocolError::Validation(_) => DropReason::Expired,
            ProtocolError::UnknownTwin(_) | ProtocolError::Directory { .. } => {
                DropReason::UnknownSource
            }
            ProtocolError::Unsigned => DropReason::Unsigned,
            ProtocolError::InvalidSignature(_) => DropReason::BadSignature,
            ProtocolError::NoPublicKey | ProtocolError::Crypto(_) => DropReason::Crypto,
        }
    }

    /// The refusal of an expired envelope.
    pub(crate) fn expired() -> ProtocolError {
        ProtocolError::Validation("message has expired".into())
    }

    /// The refusal when the directory failed to answer for `twin`.
    pub(crate) fn directory(twin: u32, error: &DirectoryError) -> ProtocolError {
        ProtocolError::Directory {
            twin,
            reason: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_original_codes_and_texts() {
        let cases = [
            (
                ProtocolError::expired(),
                102,
                "envelope validation error: message has expired",
            ),
            (ProtocolError::UnknownTwin(7), 103, "unknown twin id '7'"),
            (
                ProtocolError::Unsigned,
                104,
                "invalid envelope signature: message is not signed",
            ),
            (
                ProtocolError::NoPublicKey,
                105,
                "sender twin has no public key",
            ),
            (
                ProtocolError::Crypto("bad tag".into()),
                106,
                "e2e error: bad tag",
            ),
            (
                ProtocolError::directory(3, &DirectoryError::Unavailable("down".into())),
                500,
                "other: failed to get twin 3 information: twin directory unavailable: down",
            ),
        ];
        for (error, code, text) in cases {
            assert_eq!(error.code(), code);
            assert_eq!(error.to_string(), text);
        }
    }
}
