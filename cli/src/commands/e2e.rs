//! `rmbctl e2e encrypt|decrypt`: reproduce or inspect an end-to-end encrypted payload.

use std::process::ExitCode;

use anyhow::Context;
use rmb_identity::SharedKey;
use serde_json::json;

use super::SecretArgs;
use crate::input::{bytes_arg, text_arg};
use crate::output::Output;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Encrypt data for a peer; prints the cipher field (nonce || ciphertext || tag) as hex.
    Encrypt {
        #[command(flatten)]
        secret: SecretArgs,
        /// The peer's secp256k1 public key (hex, compressed or uncompressed).
        #[arg(long)]
        peer_pk: String,
        /// The plaintext ("-" reads standard input).
        data: String,
    },
    /// Decrypt a cipher field (hex or base64) received from a peer.
    Decrypt {
        #[command(flatten)]
        secret: SecretArgs,
        /// The peer's secp256k1 public key (hex, compressed or uncompressed).
        #[arg(long)]
        peer_pk: String,
        /// The cipher field as hex or base64 ("-" reads standard input).
        data: String,
    },
}

pub fn run(cmd: Command, out: &Output) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Encrypt {
            secret,
            peer_pk,
            data,
        } => {
            let key = shared_key(&secret, &peer_pk)?;
            let field = key.encrypt(text_arg(&data)?.as_bytes());
            out.report(&json!({ "cipher": hex::encode(field) }));
        }
        Command::Decrypt {
            secret,
            peer_pk,
            data,
        } => {
            let key = shared_key(&secret, &peer_pk)?;
            let plain = key.decrypt(&bytes_arg(&data)?)?;
            out.report(&json!({
                "plaintext": String::from_utf8_lossy(&plain),
                "plaintext_hex": hex::encode(&plain),
            }));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn shared_key(secret: &SecretArgs, peer_pk: &str) -> anyhow::Result<SharedKey> {
    let peer =
        hex::decode(peer_pk.trim().trim_start_matches("0x")).context("peer key is not hex")?;
    Ok(SharedKey::derive(&secret.identity()?, &peer)?)
}
