//! `rmbctl envelope decode|verify`: look inside an envelope captured from the wire or a log.

use std::process::ExitCode;

use anyhow::Context;
use rmb_identity::parse_account_key;
use rmb_proto::{challenge, Address, Envelope, Message, Payload};
use serde_json::{json, Value};

use crate::input::bytes_arg;
use crate::output::Output;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print every field of an envelope and its signature challenge.
    Decode {
        /// Protobuf bytes as hex or base64 ("-" reads standard input).
        envelope: String,
    },
    /// Check the envelope's signature; exit 0 if valid for the key, 1 if not.
    Verify {
        /// Protobuf bytes as hex or base64 ("-" reads standard input).
        envelope: String,
        /// The signer's account public key: hex (32 bytes) or SS58 address.
        #[arg(long)]
        public_key: String,
    },
}

pub fn run(cmd: Command, out: &Output) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Decode { envelope } => {
            let env = decode(&envelope)?;
            out.report(&describe(&env));
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            envelope,
            public_key,
        } => {
            let env = decode(&envelope)?;
            let key = parse_account_key(&public_key)?;
            let report = match rmb_identity::verify_envelope(&env, &key) {
                Ok(kt) => json!({ "valid": true, "key_type": kt.as_str(), "uid": env.uid }),
                Err(e) => json!({ "valid": false, "reason": e.to_string(), "uid": env.uid }),
            };
            Ok(out.verdict(report["valid"] == true, &report))
        }
    }
}

fn decode(arg: &str) -> anyhow::Result<Envelope> {
    let bytes = bytes_arg(arg)?;
    rmb_proto::decode_envelope(&bytes, usize::MAX).context("not an RMB envelope")
}

fn address(addr: &Option<Address>) -> Value {
    match addr {
        Some(a) => json!({ "twin": a.twin, "connection": a.connection }),
        None => Value::Null,
    }
}

fn describe(env: &Envelope) -> Value {
    let message = match &env.message {
        Some(Message::Request(r)) => json!({ "command": r.command }),
        Some(Message::Error(e)) => json!({ "code": e.code, "message": e.message }),
        _ => Value::Null,
    };
    let (payload_kind, payload) = match &env.payload {
        Some(Payload::Plain(p)) => ("plain", Some(p)),
        Some(Payload::Cipher(c)) => ("cipher", Some(c)),
        None => ("none", None),
    };
    json!({
        "uid": env.uid,
        "kind": env.kind().as_str(),
        "tags": env.tags,
        "timestamp": env.timestamp,
        "expiration": env.expiration,
        "expires_at": env.expires_at(),
        "source": address(&env.source),
        "destination": address(&env.destination),
        "message": message,
        "schema": env.schema,
        "federation": env.federation,
        "payload_kind": payload_kind,
        "payload_hex": payload.map(hex::encode),
        "payload_text": payload.and_then(|p| std::str::from_utf8(p).ok()),
        "relays": env.relays,
        "signature": env.signature.as_ref().map(hex::encode),
        "challenge": hex::encode(challenge(env)),
    })
}
