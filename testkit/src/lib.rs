//! Test helpers shared by every crate's integration tests: the interop vectors, test twins,
//! a raw websocket client, and relays started in-process or as processes.

pub mod client;
pub mod ports;
pub mod process;
pub mod redis;
pub mod relay;
pub mod testchain;
pub mod traffic;
pub mod twins;
pub mod vectors;
