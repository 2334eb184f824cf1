//! Test helpers shared by every crate's integration tests: the interop vectors, and (as the
//! cluster work lands) launchers for Redis, Redis Cluster and relay processes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod vectors;
