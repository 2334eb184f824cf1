//! Key material of one twin, derived from a single secret.
//!
//! A BIP39 mnemonic (or a 0x hex seed) yields the substrate 32-byte mini-secret; that one value
//! seeds the ed25519 and sr25519 signing pairs and is also the secp256k1 secret used for
//! end-to-end encryption. This is what every RMB client does, so one mnemonic means the same
//! twin everywhere.

use std::fmt;
use std::str::FromStr;

use sp_core::crypto::{Ss58Codec, Zeroize};
use sp_core::{ed25519, sr25519, Pair as _};

/// Why a secret could not be turned into keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not a valid English BIP39 phrase (wrong word, wrong checksum, wrong word count).
    #[error("invalid mnemonic: not a valid English BIP39 phrase")]
    InvalidMnemonic,
    /// A 0x seed that is not 32 bytes of hex.
    #[error("invalid hex seed: expected 0x followed by 64 hex digits")]
    InvalidSeed,
    /// The seed is not a valid secp256k1 secret (probability ~2^-128, but it is checked).
    #[error("seed is not a valid secp256k1 secret key")]
    InvalidSecp256k1Secret,
    /// A key type name other than `ed25519` or `sr25519`.
    #[error("unknown key type {0:?}: expected ed25519 or sr25519")]
    UnknownKeyType(String),
    /// A public key of the wrong length or encoding.
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
}

/// The signature scheme of a twin's account key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// Edwards-curve signatures: deterministic.
    Ed25519,
    /// Schnorr signatures on Ristretto with the "substrate" context: randomized.
    Sr25519,
}

impl KeyType {
    /// The scheme byte that prefixes every signature on the wire.
    pub fn prefix(self) -> u8 {
        match self {
            KeyType::Ed25519 => b'e',
            KeyType::Sr25519 => b's',
        }
    }

    /// The scheme a signature prefix byte names, if any.
    pub fn from_prefix(byte: u8) -> Option<KeyType> {
        match byte {
            b'e' => Some(KeyType::Ed25519),
            b's' => Some(KeyType::Sr25519),
            _ => None,
        }
    }

    /// The lowercase name used on the command line and in config.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Sr25519 => "sr25519",
        }
    }
}

impl FromStr for KeyType {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(KeyType::Ed25519),
            "sr25519" => Ok(KeyType::Sr25519),
            _ => Err(KeyError::UnknownKeyType(s.to_string())),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// All keys of one twin. `Debug` shows public keys only.
#[derive(Clone)]
pub struct Identity {
    ed25519: ed25519::Pair,
    sr25519: sr25519::Pair,
    secp256k1: k256::SecretKey,
}

impl Identity {
    /// Derives the keys from a BIP39 mnemonic or a `0x`-prefixed 32-byte hex seed.
    pub fn from_secret(secret: &str) -> Result<Identity, KeyError> {
        let mut seed = seed_from_secret(secret)?;
        let identity = Identity::from_seed(&seed);
        seed.zeroize();
        identity
    }

    /// Derives the keys from the 32-byte mini-secret.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Identity, KeyError> {
        let secp256k1 =
            k256::SecretKey::from_slice(seed).map_err(|_| KeyError::InvalidSecp256k1Secret)?;
        Ok(Identity {
            ed25519: ed25519::Pair::from_seed(seed),
            sr25519: sr25519::Pair::from_seed(seed),
            secp256k1,
        })
    }

    /// The 32-byte account public key for `key_type`.
    pub fn public_key(&self, key_type: KeyType) -> [u8; 32] {
        match key_type {
            KeyType::Ed25519 => self.ed25519.public().0,
            KeyType::Sr25519 => self.sr25519.public().0,
        }
    }

    /// The SS58 address (generic substrate prefix 42) of the account key for `key_type`.
    pub fn ss58(&self, key_type: KeyType) -> String {
        match key_type {
            KeyType::Ed25519 => self.ed25519.public().to_ss58check(),
            KeyType::Sr25519 => self.sr25519.public().to_ss58check(),
        }
    }

    /// The compressed (33-byte) secp256k1 public key peers encrypt to.
    pub fn encryption_public_key(&self) -> [u8; 33] {
        use k256::elliptic_curve::sec1::ToEncodedPoint;
        let point = self.secp256k1.public_key().to_encoded_point(true);
        let mut out = [0u8; 33];
        out.copy_from_slice(point.as_bytes());
        out
    }

    /// Signs `message` with the `key_type` key: 1 scheme byte followed by 64 signature bytes.
    pub fn sign(&self, key_type: KeyType, message: &[u8]) -> [u8; 65] {
        let raw: [u8; 64] = match key_type {
            KeyType::Ed25519 => self.ed25519.sign(message).0,
            KeyType::Sr25519 => self.sr25519.sign(message).0,
        };
        let mut out = [0u8; 65];
        out[0] = key_type.prefix();
        out[1..].copy_from_slice(&raw);
        out
    }

    pub(crate) fn secp256k1(&self) -> &k256::SecretKey {
        &self.secp256k1
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("ed25519", &self.ss58(KeyType::Ed25519))
            .field("sr25519", &self.ss58(KeyType::Sr25519))
            .finish_non_exhaustive()
    }
}

/// A twin's identity with the key type it signs with: what a client holds.
#[derive(Clone, Debug)]
pub struct Signer {
    identity: Identity,
    key_type: KeyType,
}

impl Signer {
    /// Pairs an identity with the key type registered on chain for its twin.
    pub fn new(identity: Identity, key_type: KeyType) -> Self {
        Signer { identity, key_type }
    }

    /// Convenience: derive keys from a mnemonic or hex seed and pick `key_type`.
    pub fn from_secret(secret: &str, key_type: KeyType) -> Result<Self, KeyError> {
        Ok(Signer::new(Identity::from_secret(secret)?, key_type))
    }

    /// The key type this signer uses.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The account public key signatures verify against.
    pub fn public_key(&self) -> [u8; 32] {
        self.identity.public_key(self.key_type)
    }

    /// The underlying identity (for encryption keys).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A prefixed 65-byte signature over `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 65] {
        self.identity.sign(self.key_type, message)
    }
}

/// Turns a mnemonic or a `0x` hex seed into the 32-byte mini-secret.
fn seed_from_secret(secret: &str) -> Result<[u8; 32], KeyError> {
    let secret = secret.trim();
    if let Some(hex_seed) = secret.strip_prefix("0x") {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hex_seed, &mut seed).map_err(|_| KeyError::InvalidSeed)?;
        return Ok(seed);
    }
    // Normalise white space so a pasted phrase with a double space still works.
    let mut phrase = secret.split_whitespace().collect::<Vec<_>>().join(" ");
    let result = sr25519::Pair::from_phrase(&phrase, None)
        .map(|(_, seed)| seed)
        .map_err(|_| KeyError::InvalidMnemonic);
    phrase.zeroize();
    result
}

/// Parses a 32-byte account key from `0x` hex, plain hex, or an SS58 address.
pub fn parse_account_key(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let hex_part = text.strip_prefix("0x").unwrap_or(text);
    if hex_part.len() == 64 && hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|e| KeyError::InvalidPublicKey(e.to_string()))?;
        return Ok(out);
    }
    sp_core::crypto::AccountId32::from_ss58check(text)
        .map(|id| id.into())
        .map_err(|e| {
            KeyError::InvalidPublicKey(format!(
                "{text:?} is neither 32 bytes of hex nor an SS58 address ({e:?})"
            ))
        })
}

/// The SS58 address (prefix 42) of a 32-byte account key.
pub fn ss58_address(account: &[u8; 32]) -> String {
    sp_core::crypto::AccountId32::new(*account).to_ss58check()
}
