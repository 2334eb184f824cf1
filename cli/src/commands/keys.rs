//! `rmbctl keys`: what public keys a mnemonic stands for.

use std::process::ExitCode;

use rmb_identity::KeyType;
use serde_json::json;

use super::SecretArgs;
use crate::output::Output;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    secret: SecretArgs,
}

pub fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let id = args.secret.identity()?;
    out.report(&json!({
        "ed25519_public": hex::encode(id.public_key(KeyType::Ed25519)),
        "ed25519_ss58": id.ss58(KeyType::Ed25519),
        "sr25519_public": hex::encode(id.public_key(KeyType::Sr25519)),
        "sr25519_ss58": id.ss58(KeyType::Sr25519),
        "secp256k1_public": hex::encode(id.encryption_public_key()),
    }));
    Ok(ExitCode::SUCCESS)
}
