//! RMB peer: a twin's side of the bus.
//!
//! For now this holds [`direct::DirectClient`], a client that talks to one relay over a
//! websocket: it signs the session token and every envelope with the twin's keys, and reads
//! envelopes back while confirming their delivery to the relay. The gateway that exposes a
//! twin to other languages through a local Redis, and the full Rust SDK, grow on top of it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod direct;

pub use direct::{remote_error, verify_from, ClientError, DirectClient};
