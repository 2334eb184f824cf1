//! The twin model: what the directory knows about a twin.

use std::fmt;

/// A twin as recorded on chain (or in a twins file).
#[derive(Clone, PartialEq, Eq)]
pub struct Twin {
    /// The twin id.
    pub id: u32,
    /// The 32-byte account public key its signatures verify against.
    pub account: [u8; 32],
    /// The relay domains that serve this twin (bare host names).
    pub relays: Vec<String>,
    /// Compressed secp256k1 public key for end-to-end encryption, when published.
    pub pk: Option<Vec<u8>>,
}

impl Twin {
    /// Whether any of `domains` is one of this twin's relays (case-insensitive).
    pub fn served_by_any(&self, domains: &[String]) -> bool {
        self.relays
            .iter()
            .any(|r| domains.iter().any(|d| d.eq_ignore_ascii_case(r)))
    }
}

impl fmt::Debug for Twin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Twin")
            .field("id", &self.id)
            .field("account", &hex::encode(self.account))
            .field("relays", &self.relays)
            .field("pk", &self.pk.as_ref().map(hex::encode))
            .finish()
    }
}

/// Splits the on-chain relay field (bare host names joined with `_`) into domains.
pub fn split_relays(field: &str) -> Vec<String> {
    field
        .split('_')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Joins relay domains the way the chain stores them.
pub fn join_relays(relays: &[String]) -> String {
    relays.join("_")
}
