//! `rmbctl keys`: what public keys a mnemonic stands for, or a fresh mnemonic.

use std::process::ExitCode;

use anyhow::Context;
use rand::RngCore;
use rmb_identity::{Identity, KeyType};
use serde_json::{json, Map, Value};

use crate::output::Output;

const MNEMONIC_ENV: &str = "RMB_MNEMONIC";

#[derive(clap::Args)]
pub struct Args {
    /// BIP39 mnemonic or 0x-prefixed 32-byte hex seed [env: RMB_MNEMONIC].
    // The environment is read by hand, not by clap: with clap a mnemonic exported in the
    // shell would conflict with --generate.
    #[arg(short = 'm', long)]
    mnemonic: Option<String>,
    /// Generate a fresh 12-word BIP39 mnemonic and print it with its public keys.
    /// Keep the mnemonic secret: it is the twin's identity.
    #[arg(long, conflicts_with = "mnemonic")]
    generate: bool,
}

pub fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let mut report = Map::new();
    let id = if args.generate {
        let phrase = generate_mnemonic()?;
        let id = Identity::from_secret(&phrase)?;
        report.insert("mnemonic".into(), Value::String(phrase));
        id
    } else {
        let Some(secret) = args.mnemonic.or_else(|| std::env::var(MNEMONIC_ENV).ok()) else {
            clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                format!(
                    "give --mnemonic <MNEMONIC> (or set {MNEMONIC_ENV}), or --generate for a new one\n"
                ),
            )
            .exit()
        };
        Identity::from_secret(&secret)?
    };
    let public = json!({
        "ed25519_public": hex::encode(id.public_key(KeyType::Ed25519)),
        "ed25519_ss58": id.ss58(KeyType::Ed25519),
        "sr25519_public": hex::encode(id.public_key(KeyType::Sr25519)),
        "sr25519_ss58": id.ss58(KeyType::Sr25519),
        "secp256k1_public": hex::encode(id.encryption_public_key()),
    });
    if let Value::Object(keys) = public {
        report.extend(keys);
    }
    out.report(&Value::Object(report));
    Ok(ExitCode::SUCCESS)
}

/// 128 bits from the operating system's generator, as a 12-word English phrase.
fn generate_mnemonic() -> anyhow::Result<String> {
    let mut entropy = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut entropy);
    let mnemonic = bip39::Mnemonic::from_entropy(&entropy).context("building the mnemonic")?;
    entropy.fill(0);
    Ok(mnemonic.to_string())
}
