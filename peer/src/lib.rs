//! RMB peer: a twin's side of the bus.
//!
//! - [`gateway`]: the `rmb-peer` gateway, which exposes a twin to services in any language
//!   through JSON documents in a local Redis (the API of ThreefoldTech's `rmb-peer`);
//! - [`sdk`]: the Rust SDK's direct client (`connect`, `call`, `serve` with a
//!   [`router::Router`]), and [`local_client`], the same through a running gateway's Redis;
//! - [`protocol`]: the rules both follow, in one sans-I/O core (verify, refuse, drop,
//!   deliver, match answers to calls, seal what goes out); the gateway and the SDK are thin
//!   shells around it;
//! - [`pool`]: sessions with every configured relay at once, shared by both;
//! - [`direct::DirectClient`]: one raw relay session (used by `rmbctl`);
//! - [`tls`] for `wss://` relays, [`redis_url`] for the local Redis URLs (TCP, TLS, Unix
//!   sockets) and [`metrics`] (Prometheus).
//!
//! `docs/peer.md` documents the Redis API, the flags and the metrics.

pub mod direct;
pub mod gateway;
pub mod local_client;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod redis_url;
pub mod router;
pub mod sdk;
mod shell;
pub mod tls;

/// This peer's version as `rmb.version` answers it and `--version` prints it: a release tag,
/// `v` and the crate version (`v0.1.0`), in the form of the original's tags (`v1.5.1`).
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

pub use direct::{remote_error, verify_from, ClientError, DirectClient};
