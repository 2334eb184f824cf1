//! RMB peer: a twin's side of the bus.
//!
//! For now this holds [`direct::DirectClient`], a client that talks to one relay over a
//! websocket: it signs the session token and every envelope with the twin's keys, and reads
//! envelopes back while confirming their delivery to the relay, and [`gateway`], the
//! `rmb-peer` gateway that exposes a twin to services in any language through queues in a
//! local Redis. The full Rust SDK grows on top of them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod direct;
pub mod gateway;
mod keys;
pub mod local_client;
pub mod metrics;
pub mod pool;
pub mod router;
pub mod sdk;
pub mod tls;

/// This crate's version, as answered to `rmb.version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use direct::{remote_error, verify_from, ClientError, DirectClient};
