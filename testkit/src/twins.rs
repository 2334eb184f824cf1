//! Test identities: deterministic twins and the twins file that describes them.

use std::path::{Path, PathBuf};

use rmb_identity::{Identity, KeyType, Signer};

/// A twin a test controls: its id and keys.
#[derive(Clone, Debug)]
pub struct TestTwin {
    /// The twin id.
    pub id: u32,
    /// The signer (key type as registered in the twins file).
    pub signer: Signer,
    /// The hex seed the keys derive from (a valid `--mnemonic` value).
    pub secret: String,
    /// Relay domains listed for the twin.
    pub relays: Vec<String>,
}

impl TestTwin {
    /// Twin `id` with keys derived deterministically from `id` and `seed`.
    pub fn new(id: u32, key_type: KeyType) -> TestTwin {
        TestTwin::seeded(id, key_type, 0)
    }

    /// Like [`TestTwin::new`] with a different key family per `seed`.
    pub fn seeded(id: u32, key_type: KeyType, seed: u64) -> TestTwin {
        let mut bytes = [0x5au8; 32];
        bytes[..4].copy_from_slice(&id.to_be_bytes());
        bytes[4..12].copy_from_slice(&seed.to_be_bytes());
        let secret = format!("0x{}", hex::encode(bytes));
        let identity = Identity::from_secret(&secret)
            .unwrap_or_else(|e| panic!("test seed for twin {id} is invalid: {e}"));
        TestTwin {
            id,
            signer: Signer::new(identity, key_type),
            secret,
            relays: Vec::new(),
        }
    }

    /// The same twin, listed on `relays`.
    pub fn on_relays(mut self, relays: &[&str]) -> TestTwin {
        self.relays = relays.iter().map(|r| r.to_string()).collect();
        self
    }

    /// The twin's entry in a twins file.
    pub fn yaml_entry(&self) -> String {
        format!(
            "  - id: {}\n    account: 0x{}\n    relays: [{}]\n    pk: 0x{}\n",
            self.id,
            hex::encode(self.signer.public_key()),
            self.relays.join(", "),
            hex::encode(self.signer.identity().encryption_public_key()),
        )
    }
}

/// `n` twins with ids `first..first+n`, alternating ed25519 and sr25519 keys.
pub fn twins(first: u32, n: u32) -> Vec<TestTwin> {
    (first..first + n)
        .map(|id| {
            let kt = if id % 2 == 0 {
                KeyType::Ed25519
            } else {
                KeyType::Sr25519
            };
            TestTwin::new(id, kt)
        })
        .collect()
}

/// Writes a twins file for `twins` into `dir`; returns its path.
pub fn write_twins_file(dir: &Path, twins: &[TestTwin]) -> PathBuf {
    let mut text = String::from("twins:\n");
    for t in twins {
        text.push_str(&t.yaml_entry());
    }
    let path = dir.join("twins.yaml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing twins file: {e}"));
    path
}
