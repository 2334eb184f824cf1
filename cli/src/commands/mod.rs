//! One module per command group.

pub mod e2e;
pub mod envelope;
pub mod keys;
pub mod net;
pub mod relay_key;
pub mod token;

use clap::Args as ClapArgs;
use rmb_identity::{Identity, KeyType, Signer};

/// The secret a twin signs with. Taken from the environment by default so it stays out of
/// shell history and process listings.
#[derive(ClapArgs, Clone)]
pub struct SecretArgs {
    /// BIP39 mnemonic or 0x-prefixed 32-byte hex seed.
    #[arg(short = 'm', long, env = "RMB_MNEMONIC", hide_env_values = true)]
    pub mnemonic: String,
}

impl SecretArgs {
    pub fn identity(&self) -> anyhow::Result<Identity> {
        Ok(Identity::from_secret(&self.mnemonic)?)
    }

    pub fn signer(&self, key_type: KeyType) -> anyhow::Result<Signer> {
        Ok(Signer::new(self.identity()?, key_type))
    }
}
