//! Plumbing shared by the RMB crates, each rule written once: exponential backoff, wall-clock
//! time, URL redaction, metric label enums, and behind features the Prometheus registration
//! helpers (`metrics`), the fred client builder (`redis`), TLS trust (`tls`) and the shutdown
//! signal (`shutdown`). It knows nothing of envelopes or twins: protocol rules live in
//! `rmb-proto` and the crates above it.

pub mod backoff;
pub mod labels;
pub mod time;
pub mod url;

#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "shutdown")]
pub mod shutdown;
#[cfg(feature = "tls")]
pub mod tls;

pub use backoff::{Backoff, BackoffPolicy, Jitter};
pub use time::{now_ms, now_secs};
pub use url::{redact_url, without_userinfo};
