//! Prefixed signatures: one scheme byte, then 64 bytes, verified against a 32-byte account key.
//!
//! The same format signs envelopes (over their MD5 challenge) and session tokens (over the
//! ASCII `header.claims`).

use rmb_proto::{challenge, Envelope};
use sp_core::{ed25519, sr25519, Pair as _};

use crate::keys::{KeyType, Signer};

/// Length of a prefixed signature on the wire.
pub const SIGNATURE_LEN: usize = 65;

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The envelope carries no signature.
    #[error("signature missing")]
    Missing,
    /// The signature is not 65 bytes.
    #[error("signature must be {SIGNATURE_LEN} bytes, got {0}")]
    BadLength(usize),
    /// The first byte names no scheme we know.
    #[error("unknown signature scheme byte 0x{0:02x} (expected 'e' or 's')")]
    UnknownScheme(u8),
    /// Well formed, but not made by this key over this message.
    #[error("signature does not verify against the account key")]
    Invalid,
}

/// Verifies a prefixed signature over `message` against `account` (32-byte public key).
pub fn verify_prefixed(
    account: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> Result<KeyType, SignatureError> {
    if signature.len() != SIGNATURE_LEN {
        return Err(SignatureError::BadLength(signature.len()));
    }
    let key_type =
        KeyType::from_prefix(signature[0]).ok_or(SignatureError::UnknownScheme(signature[0]))?;
    let mut raw = [0u8; 64];
    raw.copy_from_slice(&signature[1..]);
    let ok = match key_type {
        KeyType::Ed25519 => ed25519::Pair::verify(
            &ed25519::Signature::from_raw(raw),
            message,
            &ed25519::Public::from_raw(*account),
        ),
        KeyType::Sr25519 => sr25519::Pair::verify(
            &sr25519::Signature::from_raw(raw),
            message,
            &sr25519::Public::from_raw(*account),
        ),
    };
    if ok {
        Ok(key_type)
    } else {
        Err(SignatureError::Invalid)
    }
}

/// Signs `env` in place: computes the challenge and sets `signature`.
pub fn sign_envelope(env: &mut Envelope, signer: &Signer) {
    let digest = challenge(env);
    env.signature = Some(signer.sign(&digest).to_vec());
}

/// Verifies the envelope's signature against the source twin's account key.
pub fn verify_envelope(env: &Envelope, account: &[u8; 32]) -> Result<KeyType, SignatureError> {
    let signature = env.signature.as_deref().ok_or(SignatureError::Missing)?;
    verify_prefixed(account, &challenge(env), signature)
}
