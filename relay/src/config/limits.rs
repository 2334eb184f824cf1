//! What one twin, one session and one envelope may cost this relay.

use rmb_identity::TokenPolicy;

use super::{invalid, require_positive, ConfigError, DEFAULT_MAX_ENVELOPE, MAX_ENVELOPE_CAP};
use crate::hub::{HubLimits, MailBudget};
use crate::limits::Rate;

/// Limits settings.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Largest envelope (and websocket frame) accepted, in bytes; a larger frame closes the
    /// session with 1009. The default is the original relay's and peer's websocket frame limit.
    #[arg(long, env = "RMB_MAX_ENVELOPE_BYTES", default_value_t = DEFAULT_MAX_ENVELOPE)]
    pub max_envelope_bytes: usize,

    /// Longest time to live an envelope may ask for, in seconds.
    #[arg(long, env = "RMB_MAX_TTL", default_value_t = 86_400)]
    pub max_ttl: u64,

    /// Longest session token lifetime accepted (`exp - iat`), in seconds. The default is the
    /// longest a known client issues (TypeScript client 1000 s, Go SDK 60 s, rmb-peer 60-300 s):
    /// a stolen token is useful for that long at most.
    #[arg(long, env = "RMB_MAX_TOKEN_LIFETIME", default_value_t = rmb_identity::jwt::DEFAULT_MAX_LIFETIME)]
    pub max_token_lifetime: u64,

    /// Clock difference tolerated on token times, in seconds.
    #[arg(long, env = "RMB_CLOCK_SKEW", default_value_t = 60)]
    pub clock_skew: u64,

    /// Envelopes per second one twin may send to this pod (token bucket; burst is twice this).
    #[arg(long, env = "RMB_RATE_MESSAGES", default_value_t = 10_000)]
    pub rate_messages: u64,

    /// Bytes per second one twin may send to this pod (token bucket; burst is twice this).
    #[arg(long, env = "RMB_RATE_BYTES", default_value_t = 64 << 20)]
    pub rate_bytes: u64,

    /// The original relay's rate limit: each twin may send COUNT envelopes and SIZE bytes per
    /// minute (an envelope over SIZE never passes). Replaces --rate-messages and --rate-bytes.
    #[arg(long, num_args = 2, value_names = ["COUNT", "SIZE"], env = "RMB_LIMIT", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limit: Vec<u64>,

    /// Most simultaneous sessions (distinct session ids) per twin on this pod; more get
    /// HTTP 429.
    #[arg(long, env = "RMB_MAX_SESSIONS_PER_TWIN", default_value_t = 1024)]
    pub max_sessions_per_twin: usize,

    /// Most envelopes queued for one twin (mailbox); more are refused with an error.
    #[arg(long, env = "RMB_MAILBOX_MAX", default_value_t = 10_000)]
    pub mailbox_max: usize,

    /// Most bytes of mail for one twin, all its session ids together (memory backplane: all
    /// its queued envelopes; Redis: its mailbox); more are refused with error 111. At least
    /// --max-envelope-bytes, so an envelope of the largest size always fits an empty mailbox.
    #[arg(long, env = "RMB_MAILBOX_MAX_BYTES", default_value_t = 256 << 20)]
    pub mailbox_max_bytes: u64,

    /// Most bytes queued in this process's hub, all twins together (the memory backplane's
    /// guard against running out of memory); more are refused with error 111. At least
    /// --max-envelope-bytes. Keep it well below the pod's memory limit.
    #[arg(long, env = "RMB_POD_QUEUE_MAX_BYTES", default_value_t = 512 << 20)]
    pub pod_queue_max_bytes: u64,

    /// Most envelopes queued for session ids the twin has not used recently (no session
    /// with that id attached within --recent-sid-seconds): junk session ids cannot fill the
    /// twin's mailbox. The no-sid key and connected session ids never count.
    #[arg(long, env = "RMB_UNUSED_SID_MAILBOX_MAX", default_value_t = 256)]
    pub unused_sid_mailbox_max: usize,

    /// Most bytes queued for session ids the twin has not used recently. At least
    /// --max-envelope-bytes.
    #[arg(long, env = "RMB_UNUSED_SID_MAILBOX_BYTES", default_value_t = 32 << 20)]
    pub unused_sid_mailbox_bytes: u64,

    /// How long a session id counts as used after a session with it attached or ended, in
    /// seconds.
    #[arg(long, env = "RMB_RECENT_SID_SECONDS", default_value_t = 86_400)]
    pub recent_sid_seconds: u64,

    /// Most envelopes waiting for a connected session; beyond it the session is a slow
    /// consumer and is closed (4008), its envelopes kept in the mailbox.
    #[arg(long, env = "RMB_OUTBOUND_QUEUE", default_value_t = 4096)]
    pub outbound_queue: usize,

    /// Most envelopes written to a session and not yet confirmed as received.
    #[arg(long, env = "RMB_MAX_UNCONFIRMED", default_value_t = 1024)]
    pub max_unconfirmed: usize,
}

impl LimitArgs {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        require_positive(&[
            ("mailbox-max", self.mailbox_max as u64),
            ("max-envelope-bytes", self.max_envelope_bytes as u64),
            ("max-ttl", self.max_ttl),
            ("rate-messages", self.rate_messages),
            ("rate-bytes", self.rate_bytes),
            ("max-sessions-per-twin", self.max_sessions_per_twin as u64),
            ("outbound-queue", self.outbound_queue as u64),
            ("max-unconfirmed", self.max_unconfirmed as u64),
            ("unused-sid-mailbox-max", self.unused_sid_mailbox_max as u64),
            ("recent-sid-seconds", self.recent_sid_seconds),
        ])?;
        if self.max_envelope_bytes > MAX_ENVELOPE_CAP {
            return Err(invalid("max-envelope-bytes", "must be at most 64 MiB"));
        }
        for (setting, value) in [
            ("mailbox-max-bytes", self.mailbox_max_bytes),
            ("pod-queue-max-bytes", self.pod_queue_max_bytes),
            ("unused-sid-mailbox-bytes", self.unused_sid_mailbox_bytes),
        ] {
            if value < self.max_envelope_bytes as u64 {
                return Err(invalid(
                    setting,
                    format!(
                        "must be at least --max-envelope-bytes ({}), or an envelope of the largest size could never be queued",
                        self.max_envelope_bytes
                    ),
                ));
            }
        }
        match self.limit[..] {
            [] => Ok(()),
            [count, size] if count > 0 && size > 0 => Ok(()),
            [_, _] => Err(invalid("limit", "COUNT and SIZE must be greater than 0")),
            _ => Err(invalid("limit", "give --limit once, as COUNT SIZE")),
        }
    }

    /// The per-twin message and byte rates in force: `--limit` (per minute, the whole
    /// minute's allowance usable at once) or `--rate-messages` / `--rate-bytes` (per second,
    /// burst twice that).
    pub fn twin_rates(&self) -> (Rate, Rate) {
        match self.limit[..] {
            [count, size] => (Rate::per_minute(count), Rate::per_minute(size)),
            _ => (
                Rate::per_second(self.rate_messages),
                Rate::per_second(self.rate_bytes),
            ),
        }
    }

    /// The bounds the hub keeps per twin and per session.
    pub fn hub_limits(&self) -> HubLimits {
        HubLimits {
            mailbox_per_twin: self.mailbox_max,
            budget: self.mail_budget(),
            pod_bytes: self.pod_queue_max_bytes,
            outbound_queue: self.outbound_queue,
            sessions_per_twin: self.max_sessions_per_twin,
        }
    }

    /// The byte budget and unused-session-id sub-quota of one twin's mail.
    pub fn mail_budget(&self) -> MailBudget {
        MailBudget {
            twin_bytes: self.mailbox_max_bytes,
            unused_sid_entries: self.unused_sid_mailbox_max,
            unused_sid_bytes: self.unused_sid_mailbox_bytes,
            recent_sid_seconds: self.recent_sid_seconds,
        }
    }

    /// What a session token must satisfy.
    pub fn token_policy(&self) -> TokenPolicy {
        TokenPolicy {
            max_lifetime: self.max_token_lifetime,
            clock_skew: self.clock_skew,
        }
    }
}
