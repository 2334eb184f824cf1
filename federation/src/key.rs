//! The relay's own identity: an ed25519 key kept in a file (or a Kubernetes secret mounted as
//! one), plus the public halves of retired keys so peers can still verify requests signed just
//! before a rotation. The public side is published as the key document
//! (`GET /.well-known/rmb/relay.json`).

use std::path::Path;

use rand::RngCore;
use rmb_identity::{Identity, KeyError, KeyType, Signer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read or written.
    #[error("relay key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a relay key file.
    #[error("relay key file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (never the secret itself).
        reason: String,
    },
}

/// Version of the key file format.
const FILE_VERSION: u32 = 1;

/// The key file as stored (JSON).
#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    current: CurrentEntry,
    #[serde(default)]
    previous: Vec<PublicKeyEntry>,
}

#[derive(Serialize, Deserialize)]
struct CurrentEntry {
    kid: String,
    /// Hex of the 32-byte ed25519 seed.
    secret: String,
    valid_from: u64,
}

/// A public key as published: current or retired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyEntry {
    /// Key id: hex of the first 8 bytes of SHA-256 over the public key.
    pub kid: String,
    /// Hex of the 32-byte ed25519 public key.
    pub public: String,
    /// Unix second from which signatures by this key are valid.
    pub valid_from: u64,
    /// Unix second after which signatures by this key are refused (`None`: no end).
    #[serde(default)]
    pub valid_until: Option<u64>,
}

/// The key id of a public key: short, stable, and derived from the key so it cannot lie.
pub fn key_id(public: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// The relay's signing key and its retired predecessors.
#[derive(Clone)]
pub struct RelayKey {
    seed: [u8; 32],
    signer: Signer,
    kid: String,
    valid_from: u64,
    previous: Vec<PublicKeyEntry>,
}

impl std::fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("RelayKey")
            .field("kid", &self.kid)
            .field("previous", &self.previous.len())
            .finish_non_exhaustive()
    }
}

impl Drop for RelayKey {
    fn drop(&mut self) {
        self.seed.fill(0);
    }
}

impl RelayKey {
    /// A fresh key from the operating system's random generator.
    pub fn generate(now: u64) -> RelayKey {
        loop {
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            // A seed that is not a valid secp256k1 scalar (~2^-128) is simply drawn again.
            if let Ok(key) = RelayKey::from_seed(&seed, now) {
                seed.fill(0);
                return key;
            }
        }
    }

    /// The key for a 32-byte ed25519 seed.
    pub fn from_seed(seed: &[u8; 32], valid_from: u64) -> Result<RelayKey, KeyError> {
        let identity = Identity::from_seed(seed)?;
        let signer = Signer::new(identity, KeyType::Ed25519);
        let kid = key_id(&signer.public_key());
        Ok(RelayKey {
            seed: *seed,
            signer,
            kid,
            valid_from,
            previous: Vec::new(),
        })
    }

    /// Reads a key file written by `rmbctl relay-key generate`.
    pub fn load(path: &Path) -> Result<RelayKey, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        warn_if_readable_by_others(path);
        RelayKey::from_json(&text, &path.display().to_string())
    }

    /// Parses the key file format; `source` names where it came from in errors.
    pub fn from_json(text: &str, source: &str) -> Result<RelayKey, KeyFileError> {
        let invalid = |reason: String| KeyFileError::Invalid {
            path: source.to_string(),
            reason,
        };
        let file: FileFormat = serde_json::from_str(text)
            .map_err(|e| invalid(format!("not a relay key file: {e}")))?;
        if file.version != FILE_VERSION {
            return Err(invalid(format!(
                "version {} is not supported (expected {FILE_VERSION})",
                file.version
            )));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(file.current.secret.trim(), &mut seed)
            .map_err(|_| invalid("`current.secret` must be 64 hex digits".into()))?;
        let mut key = RelayKey::from_seed(&seed, file.current.valid_from)
            .map_err(|e| invalid(e.to_string()))?;
        seed.fill(0);
        if key.kid != file.current.kid {
            return Err(invalid(format!(
                "`current.kid` is {} but the secret's key id is {}",
                file.current.kid, key.kid
            )));
        }
        for entry in &file.previous {
            let public = parse_public(&entry.public)
                .ok_or_else(|| invalid(format!("previous key {}: bad public key", entry.kid)))?;
            if key_id(&public) != entry.kid {
                return Err(invalid(format!(
                    "previous key {}: kid does not match its public key",
                    entry.kid
                )));
            }
        }
        key.previous = file.previous;
        Ok(key)
    }

    /// The key file format (secret included: keep it where secrets are kept).
    pub fn to_json(&self) -> String {
        let file = FileFormat {
            version: FILE_VERSION,
            current: CurrentEntry {
                kid: self.kid.clone(),
                secret: hex::encode(self.seed),
                valid_from: self.valid_from,
            },
            previous: self.previous.clone(),
        };
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    /// Writes the key file (owner-only permissions on unix).
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let text = self.to_json();
        write_private(path, format!("{text}\n").as_bytes()).map_err(|source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// A new current key; this one becomes a previous key valid until `previous_until`.
    /// Previous keys already past their end (at `now`) are dropped.
    pub fn rotate(&self, now: u64, previous_until: u64) -> RelayKey {
        let mut next = RelayKey::generate(now);
        next.previous = self
            .previous
            .iter()
            .filter(|p| p.valid_until.is_none_or(|t| t > now))
            .cloned()
            .collect();
        next.previous.insert(
            0,
            PublicKeyEntry {
                kid: self.kid.clone(),
                public: hex::encode(self.public_key()),
                valid_from: self.valid_from,
                valid_until: Some(previous_until),
            },
        );
        next
    }

    /// The current key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The current public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signer.public_key()
    }

    /// Signs `message`; returns the raw 64-byte ed25519 signature.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let prefixed = self.signer.sign(message);
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&prefixed[1..]);
        raw
    }

    /// The signer, for envelopes the relay itself originates (error envelopes).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Every published key: current first, then the previous ones.
    pub fn public_entries(&self) -> Vec<PublicKeyEntry> {
        let mut all = vec![PublicKeyEntry {
            kid: self.kid.clone(),
            public: hex::encode(self.public_key()),
            valid_from: self.valid_from,
            valid_until: None,
        }];
        all.extend(self.previous.iter().cloned());
        all
    }

    /// The key document this relay publishes for its domains.
    pub fn document(&self, domains: &[String]) -> KeyDocument {
        KeyDocument {
            version: 1,
            domains: domains.to_vec(),
            keys: self.public_entries(),
            endpoint: crate::wire::ENDPOINT.to_string(),
        }
    }
}

/// `GET /.well-known/rmb/relay.json`: who this relay is and which keys sign its requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyDocument {
    /// Format version (1).
    pub version: u32,
    /// The domains this relay serves.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Current key first, then previous keys.
    pub keys: Vec<PublicKeyEntry>,
    /// Path of the federation endpoint.
    #[serde(default)]
    pub endpoint: String,
}

impl KeyDocument {
    /// The 32-byte public key with `kid`, if published and valid at `at` (unix seconds).
    pub fn key(&self, kid: &str, at: u64) -> Option<[u8; 32]> {
        self.keys
            .iter()
            .filter(|k| k.kid == kid)
            .filter(|k| k.valid_from <= at.saturating_add(crate::wire::FUTURE_KEY_SLACK))
            .filter(|k| k.valid_until.is_none_or(|t| at <= t))
            .find_map(|k| parse_public(&k.public).filter(|p| key_id(p) == k.kid))
    }
}

fn parse_public(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        // Group-readable is how Kubernetes mounts secrets (fsGroup); world-readable never is.
        if meta.permissions().mode() & 0o007 != 0 {
            tracing::warn!(path = %path.display(), "relay key file is readable by others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}
