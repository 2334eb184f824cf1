//! End-to-end encryption between two twins.
//!
//! Shared key = SHA-256 of the x coordinate of the secp256k1 ECDH point; the cipher field is a
//! 12-byte random nonce followed by the AES-256-GCM ciphertext and tag. Relays in between see
//! only the cipher field.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::keys::Identity;

/// Length of the nonce that prefixes every cipher field.
pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why encryption or decryption failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The peer's key is not a valid secp256k1 public key (33 or 65 bytes, on the curve).
    #[error("invalid secp256k1 public key of {0} bytes")]
    InvalidPeerKey(usize),
    /// The cipher field is shorter than nonce + tag.
    #[error("cipher field of {0} bytes is shorter than nonce and tag")]
    TooShort(usize),
    /// Authentication failed: wrong key, or the ciphertext was tampered with.
    #[error("decryption failed: wrong key or tampered ciphertext")]
    Decrypt,
}

/// A 32-byte key shared by two twins.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedKey([u8; 32]);

impl SharedKey {
    /// Derives the key `me` shares with the owner of `peer_public` (SEC1 bytes).
    pub fn derive(me: &Identity, peer_public: &[u8]) -> Result<SharedKey, CryptoError> {
        let peer = k256::PublicKey::from_sec1_bytes(peer_public)
            .map_err(|_| CryptoError::InvalidPeerKey(peer_public.len()))?;
        let point =
            k256::ecdh::diffie_hellman(me.secp256k1().to_nonzero_scalar(), peer.as_affine());
        Ok(SharedKey(Sha256::digest(point.raw_secret_bytes()).into()))
    }

    /// The raw key bytes (for tests and debugging tools).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Encrypts `plain` under a fresh random nonce; returns nonce || ciphertext || tag.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        self.encrypt_with_nonce(&nonce, plain)
    }

    /// Encrypts with a caller-chosen nonce. A nonce must never be reused with the same key;
    /// this exists for reproducing test vectors.
    pub fn encrypt_with_nonce(&self, nonce: &[u8; NONCE_LEN], plain: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new(&self.0.into());
        // AES-GCM encryption fails only past 64 GiB, far beyond any envelope bound.
        let sealed = cipher
            .encrypt(Nonce::from_slice(nonce), plain)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a cipher field (nonce || ciphertext || tag).
    pub fn decrypt(&self, field: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if field.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::TooShort(field.len()));
        }
        let (nonce, sealed) = field.split_at(NONCE_LEN);
        Aes256Gcm::new(&self.0.into())
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| CryptoError::Decrypt)
    }
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKey(..)")
    }
}
