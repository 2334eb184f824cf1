//! `rmbctl token issue|verify`: make a session token, or find out why one is refused.

use std::process::ExitCode;

use rmb_identity::{issue_token, parse_account_key, Claims, KeyType, SessionToken, TokenPolicy};
use rmb_proto::unix_now;
use serde_json::json;

use super::SecretArgs;
use crate::input::text_arg;
use crate::output::Output;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Issue a session token for a twin.
    Issue {
        #[command(flatten)]
        secret: SecretArgs,
        /// The key type registered on chain for the twin.
        #[arg(short = 'k', long, default_value = "sr25519")]
        key_type: KeyType,
        /// The twin id (`sub` claim).
        #[arg(long)]
        twin: u32,
        /// Session id (`sid` claim).
        #[arg(long)]
        sid: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 60)]
        ttl: u64,
    },
    /// Verify a token against a twin's account key; exit 0 if valid, 1 if not.
    Verify {
        /// The token ("-" reads standard input).
        token: String,
        /// The twin's account public key: hex (32 bytes) or SS58 address.
        #[arg(long)]
        public_key: String,
        /// Check validity as of this unix time instead of now (to debug old tokens).
        #[arg(long)]
        at: Option<u64>,
        /// Longest accepted token lifetime, in seconds.
        #[arg(long, default_value_t = TokenPolicy::default().max_lifetime)]
        max_lifetime: u64,
        /// Tolerated clock difference, in seconds.
        #[arg(long, default_value_t = TokenPolicy::default().clock_skew)]
        clock_skew: u64,
    },
}

pub fn run(cmd: Command, out: &Output) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Issue {
            secret,
            key_type,
            twin,
            sid,
            ttl,
        } => {
            let iat = unix_now();
            let claims = Claims {
                sub: twin,
                iat,
                exp: iat.saturating_add(ttl),
                sid,
                aud: None,
            };
            let token = issue_token(&secret.signer(key_type)?, &claims);
            out.report(&json!({ "token": token, "claims": claims }));
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            token,
            public_key,
            at,
            max_lifetime,
            clock_skew,
        } => {
            let token = SessionToken::parse(&text_arg(&token)?)?;
            let key = parse_account_key(&public_key)?;
            let policy = TokenPolicy {
                max_lifetime,
                clock_skew,
            };
            let now = at.unwrap_or_else(unix_now);
            let report = match token.verify(&key, now, &policy) {
                Ok(claims) => json!({ "valid": true, "claims": claims, "checked_at": now }),
                Err(e) => json!({
                    "valid": false,
                    "reason": e.to_string(),
                    "claims": token.claims(),
                    "checked_at": now,
                }),
            };
            Ok(out.verdict(report["valid"] == true, &report))
        }
    }
}
