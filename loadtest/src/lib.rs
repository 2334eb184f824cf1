//! `rmb-loadtest`: load generator and benchmark reporter for any RMB v2 relay. It speaks
//! only the wire protocol, so it measures ours and any other implementation alike.

pub mod conn;
pub mod cpu;
pub mod forwarder;
pub mod html;
pub mod identities;
pub mod report;
pub mod rpc;
pub mod scenario;
pub mod stats;
