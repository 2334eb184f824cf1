//! `rmbctl relay-key`: the relay's federation identity key file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rmb_federation::RelayKey;
use serde_json::json;

use crate::output::Output;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a new relay identity key file (give it to the relay as --identity-key).
    ///
    /// With --rotate, the file's current key becomes a previous key (public half only),
    /// still published and accepted until --previous-valid-seconds from now.
    Generate(GenerateArgs),
    /// Print the public side of a key file: key ids, public keys, validity.
    Show(ShowArgs),
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Where to write the key file (created with owner-only permissions).
    #[arg(long)]
    out: PathBuf,
    /// Replace the key in an existing file, keeping the old one as a previous key.
    #[arg(long)]
    rotate: bool,
    /// How long a rotated-out key stays valid, in seconds.
    #[arg(long, default_value_t = 7 * 86_400)]
    previous_valid_seconds: u64,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// The key file.
    file: PathBuf,
}

pub fn run(cmd: Command, out: &Output) -> anyhow::Result<ExitCode> {
    let now = rmb_proto::unix_now();
    let key = match cmd {
        Command::Generate(args) => {
            let key = if args.rotate {
                let old =
                    RelayKey::load(&args.out).context("--rotate needs an existing key file")?;
                old.rotate(now, now + args.previous_valid_seconds)
            } else {
                if args.out.exists() {
                    anyhow::bail!(
                        "{} exists; use --rotate to replace its key",
                        args.out.display()
                    );
                }
                RelayKey::generate(now)
            };
            key.save(&args.out)?;
            key
        }
        Command::Show(args) => RelayKey::load(&args.file)?,
    };
    out.report(&json!({
        "kid": key.kid(),
        "public": hex::encode(key.public_key()),
        "keys": key.public_entries(),
    }));
    Ok(ExitCode::SUCCESS)
}
